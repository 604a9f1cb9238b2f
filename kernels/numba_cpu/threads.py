"""Control of the two thread pools this backend touches: Numba's and the BLAS behind np.dot.

Two pools busy-waiting on two cores oversubscribe (measured: ~10x slower), so exactly one pool
owns the cores at a time and the count is recorded with every result.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits

from ..cpu_features import usable_cpus

_limits = None  # keeps the threadpoolctl limit alive for the process


def configure_threads(threads: int | None) -> int:
    """Use ``threads`` (default: the CPUs this process may use) for BLAS GEMMs; returns the
    count in force (no more than Numba's pool holds: a larger count asked for is not what
    runs)."""
    global _limits
    import numba

    n = threads or usable_cpus()
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    _limits = threadpool_limits(limits=n, user_api="blas")
    return n
