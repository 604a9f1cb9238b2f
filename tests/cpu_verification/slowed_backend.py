"""A backend made slower on purpose, to show that ``vae-bench compare`` catches a real
regression on real noise (issue 22): the same code, each training step followed by a sleep
that stretches it so the backend runs at ``1 - fraction`` of its own throughput.

Run as ``python -m cpu_verification.slowed_backend NAME FRACTION vae-bench-args...`` (tests/
on the path), e.g. ``... numba 0.3 run --backends torch numba --out DIR``: the registry's
``NAME`` is replaced, in this process only, by the slowed one, under the same name, and
``vae-bench`` runs with the rest of the arguments. The gate runs the slowed code too (its
numbers are the original's: only the time changes). The added time is a busy wait on the
calling thread, not a sleep: on these VMs a process that sleeps a few milliseconds each step
loses its core's warmth (frequency, caches, the BLAS workers parked), and a sleeping backend
measured 0.3-0.6x of its throughput instead of the 0.7x asked, dragging the backends timed
after it down too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def spin(seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
    """Keep this thread busy for ``seconds``."""
    end = clock() + seconds
    while clock() < end:
        pass


def slowed(
    factory: Callable,
    fraction: float,
    *,
    sleep: Callable[[float], None] = spin,
    clock: Callable[[], float] = time.perf_counter,
) -> Callable:
    """``factory`` whose backends take 1 / (1 - fraction) times as long per training step."""
    if not 0 <= fraction < 1:
        raise ValueError(f"a slowdown is a fraction in [0, 1), got {fraction}")
    stretch = 1 / (1 - fraction) - 1

    def make(**options):
        backend = factory(**options)
        step = backend.train_step

        def train_step(*args, **kwargs):
            start = clock()
            result = step(*args, **kwargs)
            backend.synchronize()  # a GPU step's time is its device's
            sleep((clock() - start) * stretch)
            return result

        backend.train_step = train_step
        return backend

    return make


def main(argv: list[str]) -> int:
    import kernels
    from bench.cli import main as vae_bench

    if len(argv) < 3:
        print(
            "usage: python -m cpu_verification.slowed_backend NAME FRACTION vae-bench-args...",
            file=sys.stderr,
        )
        return 2
    name, fraction, rest = argv[0], float(argv[1]), argv[2:]
    if name not in kernels.BACKENDS:
        print(f"slowed_backend: {name!r} is not a built-in backend", file=sys.stderr)
        return 2
    kernels.BACKENDS[name] = slowed(kernels.BACKENDS[name], fraction)
    return vae_bench(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
