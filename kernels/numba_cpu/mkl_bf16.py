"""The bf16 GEMM engine of the mixed-precision Numba step: oneMKL's ``cblas_gemm_bf16bf16f32``
(bf16 inputs, float32 accumulation and output), called by symbol from the compiled step.

Why oneMKL: on a Xeon with AMX it runs the bf16 GEMMs on the tile unit (measured: several
times its float32 GEMMs at the step's shapes, where MKL's float32 ``sgemm`` is only about
OpenBLAS's speed), and the ``mkl`` wheel on PyPI ships it (``pip install mkl``, the ``[bf16]``
extra). SciPy's OpenBLAS has no ``sbgemm`` in the wheels, and torch links its MKL statically
(no symbol to call).

The library is loaded into LLVM's symbol table (``llvmlite.binding.load_library_permanently``)
before the step compiles, so the step calls the C function directly, with no Python or ctypes
in between, and Numba's on-disk cache stays valid: the call is by name, resolved at load time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import statistics
import sys
from pathlib import Path

from ..cpu_features import bf16_emulated_reason

# oneMKL's CBLAS enums (mkl_cblas.h: CBLAS_LAYOUT, CBLAS_TRANSPOSE).
ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112
GEMM_SYMBOL = "cblas_gemm_bf16bf16f32"


def library_candidates() -> list[Path]:
    """Where libmkl_rt may be: the ``mkl`` wheel puts it in the environment's ``lib/``
    (a data file, not a package), conda and system installs on the loader's path."""
    found = [Path(sys.prefix) / "lib" / name for name in ("libmkl_rt.so.3", "libmkl_rt.so.2",
                                                          "libmkl_rt.so")]
    system = ctypes.util.find_library("mkl_rt")
    return [p for p in found if p.exists()] + ([Path(system)] if system else [])


class _Version(ctypes.Structure):
    # mkl_types.h: MKLVersion (oneMKL 2024 and later; PatchVersion came in 2024.0).
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("update", ctypes.c_int),
                ("patch", ctypes.c_int), ("status", ctypes.c_char_p), ("build", ctypes.c_char_p),
                ("processor", ctypes.c_char_p), ("platform", ctypes.c_char_p)]


@functools.cache
def _library() -> tuple[ctypes.CDLL, Path] | str:
    """The loaded libmkl_rt and its path, or why there is none."""
    candidates = library_candidates()
    if not candidates:
        return "oneMKL is not installed (pip install mkl, or the [bf16] extra)"
    errors = []
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as error:
            errors.append(f"{path}: {error}")
            continue
        if not hasattr(lib, GEMM_SYMBOL) or not hasattr(lib, "MKL_Get_Version"):
            errors.append(f"{path} has no {GEMM_SYMBOL}")
            continue
        return lib, path
    return "oneMKL could not be loaded: " + "; ".join(errors)


def unavailable_reason(flags: list[str] | None = None) -> str | None:
    """Why bf16 GEMMs cannot run at bf16 speed here (None: they can). ``flags``: the CPU's
    instruction sets, default this CPU's. Whether oneMKL then uses the hardware is measured
    and said with the numbers (``speed_warning``), not made a refusal: see there."""
    return bf16_emulated_reason(flags) or library_problem()


def library_problem() -> str | None:
    """Why oneMKL's bf16 GEMM cannot be called here (None: it can), whatever the CPU."""
    library = _library()
    return library if isinstance(library, str) else None


# Whether oneMKL ran its bf16 GEMM on the CPU's bf16 hardware is measured in the process that
# times it, and the numbers are labelled by it. A library picks its code path by more than the
# CPU's flags, and without a bf16 path it converts to float32 and runs no faster than its own
# sgemm. Measured, one thread, at PROBE_SHAPES: AMD EPYC Zen 4 (AVX512_BF16, no AMX; oneMKL
# names only its generic "Intel(R) Architecture processors" path there) 1.6-1.9x in most
# processes, but ~1.0x in every round of one process in five and in the last rounds of
# another: the same hardware, contended on a shared VM. So a low figure does not refuse the
# mode (availability would flip from run to run); it says, with the numbers, that they are
# not bf16 hardware's. Intel Xeon with AMX: 3.65x over OpenBLAS at batch 128, which oneMKL's
# sgemm matches within 10%.
SPEEDUP_FLOOR = 1.25
# (m, n, k) of the probe's GEMMs (row-major, B transposed, as the step's forward GEMMs): the
# encoder's and the output layer's at batch 512, large enough to be bound by arithmetic, which
# is what bf16 hardware changes.
PROBE_SHAPES = ((512, 512, 784), (512, 784, 512))
PROBE_ROUNDS, PROBE_CALLS = 9, 2


def speed_warning(speedup: float, code_path: str) -> str | None:
    """What to say beside numbers timed while oneMKL's bf16 GEMM measured ``speedup`` times
    its float32 sgemm (None: nothing, the bf16 hardware was at work). ``code_path``: the path
    oneMKL says it dispatched to."""
    if speedup >= SPEEDUP_FLOOR:
        return None
    return (f"oneMKL's bf16 GEMM ran at only {speedup:.2f}x its float32 sgemm in this process "
            f"(bf16 hardware gives {SPEEDUP_FLOOR}x or more; its code path: {code_path!r}): "
            "emulated, or the hardware contended, so these are not bf16 hardware's numbers")


def probe_speedups() -> list[float]:
    """oneMKL's bf16 GEMM over its float32 sgemm on ``PROBE_SHAPES``, one thread: one ratio
    per round, each of a round's two timings (every shape, ``PROBE_CALLS`` calls each) taken
    back to back, in alternating order. Taken apart, the fastest of each kind over the rounds
    once gave 1.3x where its rounds' median was 1.8x (a 2-core VM, others busy)."""
    import time

    import numpy as np

    lib, _ = _library()
    args = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                 ctypes.c_void_p, ctypes.c_int, ctypes.c_float,
                                 ctypes.c_void_p, ctypes.c_int]
    gemm = {"bf16": getattr(lib, GEMM_SYMBOL), "float32": lib.cblas_sgemm}
    for function in gemm.values():
        function.argtypes, function.restype = args, None
    rng = np.random.default_rng(0)
    calls = {kind: [] for kind in gemm}
    for m, n, k in PROBE_SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((n, k), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        operands = {"float32": (a, b),  # bf16: the upper halves (truncation will do here)
                    "bf16": tuple((x.view(np.uint32) >> 16).astype(np.uint16) for x in (a, b))}
        for kind, (x, y) in operands.items():
            calls[kind].append((ROW_MAJOR, NO_TRANS, TRANS, m, n, k, 1.0, x.ctypes.data, k,
                                y.ctypes.data, k, 0.0, c.ctypes.data, n, x, y, c))

    def seconds(kind: str) -> float:
        start = time.perf_counter()
        for call in calls[kind]:
            for _ in range(PROBE_CALLS):
                gemm[kind](*call[:14])
        return time.perf_counter() - start

    # One thread, set for this thread (it overrides the global setting, which an OpenMP
    # runtime loaded later, as Numba's, can leave without effect on sgemm: a measured 2x).
    before = lib.MKL_Set_Num_Threads_Local(ctypes.c_int(1))
    try:
        seconds("bf16"), seconds("float32")  # warm: packing buffers, first touch
        ratios = []
        for round_ in range(PROBE_ROUNDS):
            order = ("bf16", "float32") if round_ % 2 == 0 else ("float32", "bf16")
            timed = {kind: seconds(kind) for kind in order}
            ratios.append(timed["float32"] / timed["bf16"])
    finally:
        lib.MKL_Set_Num_Threads_Local(ctypes.c_int(before))  # 0: back to the global setting
    return ratios


def code_path() -> str:
    """The code path oneMKL says it dispatches to on this CPU (MKLVersion's Processor)."""
    lib, _ = _library()
    version = _Version()
    lib.MKL_Get_Version(ctypes.byref(version))
    return (version.processor or b"").decode().strip()


@functools.cache
def measured_speedup() -> float:
    """oneMKL's bf16 GEMM over its float32 sgemm on this CPU: the median of
    ``probe_speedups`` (0.2-0.4 s), once per process; recorded with the backend's settings."""
    return float(statistics.median(probe_speedups()))


@functools.cache
def load() -> dict:
    """Load oneMKL for the compiled step (idempotent); returns what the provenance records:
    the library's path, its version and the code path it says it dispatches to on this CPU
    (whether that path uses the bf16 hardware is measured: ``measured_speedup``).
    Needs only the library: whether the CPU runs bf16 at bf16 speed is the caller's question
    (``unavailable_reason``; tests check the step's numbers on any CPU, emulated or not)."""
    library = _library()
    if isinstance(library, str):
        raise RuntimeError(library)
    import llvmlite.binding

    lib, path = library
    llvmlite.binding.load_library_permanently(str(path))
    version = _Version()
    lib.MKL_Get_Version(ctypes.byref(version))
    text = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(text, len(text))
    return {
        "engine": f"oneMKL {GEMM_SYMBOL}",
        "version": f"{version.major}.{version.minor}.{version.update}",
        "build": (version.build or b"").decode(),
        "isa": code_path(),
        "library": str(path),
        "version_string": text.value.decode().strip(),
    }


def set_threads(threads: int) -> None:
    """oneMKL's own thread count (its OpenMP pool, apart from OpenBLAS's and Numba's)."""
    lib, _ = _library()
    lib.MKL_Set_Num_Threads(ctypes.c_int(threads))
