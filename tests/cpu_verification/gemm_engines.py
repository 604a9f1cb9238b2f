"""The GEMM engines a CPU step could call, one thread each, at the VAE step's 11 GEMM shapes,
timed interleaved (issue 42: which engine to choose per CPU, measured before chosen).

Run as ``python -m cpu_verification.gemm_engines [BATCH ...] [--repeats N]`` (tests/ on the
path). Engines, each where it can be loaded, else listed with the reason:
- ``openblas``: NumPy's BLAS (``np.dot``, limited to one thread by threadpoolctl);
- ``onemkl`` / ``onemkl-bf16``: ``cblas_sgemm`` / ``cblas_gemm_bf16bf16f32`` of the ``mkl``
  wheel (the ``[bf16]`` extra), the pooled Numba step's engine (``kernels/numba_cpu/onemkl.py``);
- ``onednn`` / ``onednn-bf16``: ``dnnl_sgemm`` / ``dnnl_gemm_bf16bf16f32`` of Debian's
  ``libdnnl2`` (oneDNN 2.6), the bf16 step's engine on AMD Zen 4
  (``kernels/numba_cpu/onednn.py`` says how they are called). A status other than dnnl_success (0)
  is reported, not timed: oneDNN 2.6 has no bf16 GEMM below AVX-512 (status 3,
  dnnl_unimplemented, on an AVX2 CPU).

Each engine's first GEMM is checked against float64 (bf16 inputs are truncated, so their
error is bf16's, not the engine's). Operands are contiguous and untransposed: the ranking of
the engines' kernels is the question, not the step's exact calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

ROW_MAJOR, NO_TRANS = 101, 111  # mkl_cblas.h: CBLAS_LAYOUT, CBLAS_TRANSPOSE


def step_shapes(batch: int, input_dim: int = 784, hidden: int = 512, latent: int = 20):
    """(M, K, N) of the training step's 11 GEMMs, forward then backward (as
    bench.throughput.step_gemms multiplies them)."""
    b, d, h, z2 = batch, input_dim, hidden, 2 * latent
    return [
        (b, d, h),
        (b, h, z2),
        (b, latent, h),
        (b, h, d),
        (d, b, h),
        (b, d, h),
        (h, b, latent),
        (b, h, latent),
        (z2, b, h),
        (b, z2, h),
        (h, b, d),
    ]


def operands(batch: int, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    ops = []
    for m, k, n in step_shapes(batch):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        # bf16 by truncation: the engines' inputs, whatever rounding made them.
        a16, b16 = ((v.view(np.uint32) >> 16).astype(np.uint16) for v in (a, b))
        ops.append((m, k, n, a, b, np.empty((m, n), np.float32), a16, b16))
    return ops


def _onemkl() -> dict[str, Callable] | str:
    from kernels.numba_cpu import onemkl

    problem = onemkl.library_problem()
    if problem:
        return problem
    lib = ctypes.CDLL(onemkl.load()["library"])  # the library the pooled step calls
    lib.MKL_Set_Num_Threads(1)
    c_int, c_float, ptr = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    args = [c_int] * 6 + [c_float, ptr, c_int, ptr, c_int, c_float, ptr, c_int]
    lib.cblas_sgemm.argtypes = lib.cblas_gemm_bf16bf16f32.argtypes = args

    def call(gemm, bf16):
        def run(ops):
            for m, k, n, a, b, c, a16, b16 in ops:
                left, right = (a16, b16) if bf16 else (a, b)
                gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, 1.0, left.ctypes.data, k,
                     right.ctypes.data, n, 0.0, c.ctypes.data, n)  # fmt: skip

        return run

    return {
        "onemkl": call(lib.cblas_sgemm, False),
        "onemkl-bf16": call(lib.cblas_gemm_bf16bf16f32, True),
    }


def _onednn() -> dict[str, Callable] | str:
    from kernels.numba_cpu import onednn

    problem = onednn.library_problem()
    if problem:
        return problem
    lib = onednn.library()  # the library the pooled step calls, its GEMMs declared
    gomp = ctypes.util.find_library("gomp")
    if gomp:  # Debian's oneDNN threads with GNU OpenMP
        ctypes.CDLL(gomp).omp_set_num_threads(1)

    def call(gemm, bf16):
        def run(ops):
            for m, k, n, a, b, c, a16, b16 in ops:
                left, right = (a16, b16) if bf16 else (a, b)
                status = gemm(b"N", b"N", m, n, k, 1.0, left.ctypes.data, k,
                              right.ctypes.data, n, 0.0, c.ctypes.data, n)  # fmt: skip
                if status != 0:
                    raise RuntimeError(f"dnnl status {status} (3: unimplemented on this CPU)")

        return run

    return {
        "onednn": call(lib.dnnl_sgemm, False),
        "onednn-bf16": call(lib.dnnl_gemm_bf16bf16f32, True),
    }


def engines() -> tuple[dict[str, Callable], dict[str, str]]:
    """The engines that load here, and why each other one does not."""

    def openblas(ops):
        for _m, _k, _n, a, b, c, _a16, _b16 in ops:
            np.dot(a, b, c)

    ready: dict[str, Callable] = {"openblas": openblas}
    missing: dict[str, str] = {}
    for names, load in ((("onemkl", "onemkl-bf16"), _onemkl), (("onednn", "onednn-bf16"), _onednn)):
        loaded = load()
        if isinstance(loaded, str):
            missing.update(dict.fromkeys(names, loaded))
        else:
            ready.update(loaded)
    return ready, missing


def compare(batch: int, repeats: int) -> list[str]:
    """One line per engine: its median milliseconds for the 11 GEMMs, its speed against
    OpenBLAS's, its first GEMM's largest error against float64; or why it did not run."""
    ready, missing = engines()
    ops = operands(batch)
    lines, errors = [], {}
    for name, run in list(ready.items()):
        try:
            run(ops)
        except RuntimeError as failure:
            missing[name] = str(failure)
            del ready[name]
            continue
        m, k, n, a, b, c, _a16, _b16 = ops[0]
        errors[name] = float(np.abs(c - a.astype(np.float64) @ b.astype(np.float64)).max())
    times: dict[str, list[float]] = {name: [] for name in ready}
    for _ in range(repeats):
        for name, run in ready.items():
            start = time.perf_counter()
            run(ops)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["openblas"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        lines.append(
            f"batch {batch:>5} {name:<12} {median * 1e3:9.3f} ms {base / median:6.2f}x openblas"
            f"   first GEMM max error {errors[name]:.2g}"
        )
    lines += [f"batch {batch:>5} {name:<12} not run: {why}" for name, why in missing.items()]
    return lines


def main(argv: list[str]) -> int:
    import argparse

    from threadpoolctl import threadpool_limits

    from kernels.cpu_features import cpu_isa, cpu_vendor

    parser = argparse.ArgumentParser(prog="python -m cpu_verification.gemm_engines")
    parser.add_argument("batches", nargs="*", type=int, default=[128, 1024], metavar="BATCH")
    parser.add_argument("--repeats", type=int, default=9, help="rounds of every engine")
    args = parser.parse_args(argv)
    print(f"# {cpu_vendor()}, {' '.join(cpu_isa() or [])}; one thread per engine, z 20")
    with threadpool_limits(1):
        for batch in args.batches:
            print("\n".join(compare(batch, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
