"""oneMKL, the GEMM engine of the pooled Numba step (``pooled_step.py``), called by symbol from
the compiled step: ``cblas_gemm_bf16bf16f32`` (bf16 inputs, float32 accumulation and output)
for ``numba-bf16`` on Intel CPUs, ``cblas_sgemm`` for float32 ``numba`` where it runs pooled
(``engines.py`` chooses; ``onednn.py`` is the other engine).

Why oneMKL: on a Xeon with AMX it runs the bf16 GEMMs on the tile unit (measured: several
times its float32 GEMMs at the step's shapes, where MKL's float32 ``sgemm`` is only about
OpenBLAS's speed), and the ``mkl`` wheel on PyPI ships it (``pip install mkl``, the ``[bf16]``
extra). SciPy's OpenBLAS has no ``sbgemm`` in the wheels, and torch links its MKL statically
(no symbol to call).

Why oneMKL's ``sgemm`` for the pooled float32 step: called sequentially from each of Numba's
workers on its share of each output, the step's GEMMs ran faster than through NumPy's
OpenBLAS or oneMKL on their own threads, on the CPUs ``POOLED_FLOAT32_CPUS`` lists
(results/README.md, "The float32 step's form per CPU").

The library is loaded into LLVM's symbol table (``llvmlite.binding.load_library_permanently``)
before the step compiles, so the step calls the C function directly, with no Python or ctypes
in between, and Numba's on-disk cache stays valid: the call is by name, resolved at load time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from pathlib import Path

from .native import first_loadable

NAME = "oneMKL"  # as messages and the provenance name it

# oneMKL's CBLAS enums (mkl_cblas.h: CBLAS_LAYOUT, CBLAS_TRANSPOSE, CBLAS_STORAGE,
# CBLAS_IDENTIFIER).
ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112
PACKED = 151
B_MATRIX = 162
GEMM_SYMBOL = "cblas_gemm_bf16bf16f32"
SGEMM_SYMBOL = "cblas_sgemm"
# The packed-operand API (mkl_cblas.h): one operand packed once into oneMKL's internal layout,
# then any number of GEMMs on it (pooled_step.weight_rows_update).
PACK_SYMBOLS = {
    "bf16": (
        "cblas_gemm_bf16bf16f32_pack_get_size",
        "cblas_gemm_bf16bf16f32_pack",
        "cblas_gemm_bf16bf16f32_compute",
    ),
    "float32": ("cblas_sgemm_pack_get_size", "cblas_sgemm_pack", "cblas_sgemm_compute"),
}


def library_candidates() -> list[Path]:
    """Where libmkl_rt may be: the ``mkl`` wheel puts it in the environment's ``lib/``
    (a data file, not a package), conda and system installs on the loader's path."""
    found = [
        Path(sys.prefix) / "lib" / name
        for name in ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so")
    ]
    system = ctypes.util.find_library("mkl_rt")
    return [p for p in found if p.exists()] + ([Path(system)] if system else [])


class _Version(ctypes.Structure):
    # mkl_types.h: MKLVersion (oneMKL 2024 and later; PatchVersion came in 2024.0).
    _fields_ = [
        ("major", ctypes.c_int),
        ("minor", ctypes.c_int),
        ("update", ctypes.c_int),
        ("patch", ctypes.c_int),
        ("status", ctypes.c_char_p),
        ("build", ctypes.c_char_p),
        ("processor", ctypes.c_char_p),
        ("platform", ctypes.c_char_p),
    ]


@functools.cache
def _library() -> tuple[ctypes.CDLL, Path] | str:
    """The loaded libmkl_rt and its path, or why there is none."""
    symbols = (GEMM_SYMBOL, SGEMM_SYMBOL, "MKL_Get_Version", "MKL_Set_Num_Threads_Local")
    packing = (name for names in PACK_SYMBOLS.values() for name in names)
    return first_loadable(
        NAME, library_candidates(), (*symbols, *packing), "pip install mkl, or the [bf16] extra"
    )


def library_problem() -> str | None:
    """Why oneMKL's GEMMs cannot be called here (None: they can), whatever the CPU (whether
    its bf16 GEMMs run at bf16 speed on this CPU: engines.bf16_problem)."""
    library = _library()
    return library if isinstance(library, str) else None


def problem(precision: str) -> str | None:
    """Why the step's GEMMs in ``precision`` cannot run on oneMKL here, not even to check their
    numbers (None: they can): only the library's absence, since oneMKL emulates bf16 on any
    x86-64 CPU (whether that is bf16 speed: engines.bf16_problem)."""
    return library_problem()


@functools.cache
def load() -> dict:
    """Load oneMKL for the compiled step (idempotent); returns what the provenance records:
    the library's path, its version and the code path it says it dispatches to on this CPU
    (``engine_for`` names the function a precision calls).
    Needs only the library: whether the CPU runs bf16 at bf16 speed is the caller's question
    (``engines.bf16_unavailable_reason``; tests check the step's numbers on any CPU, emulated
    or not)."""
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
        "version": f"{version.major}.{version.minor}.{version.update}",
        "build": (version.build or b"").decode(),
        "isa": (version.processor or b"").decode().strip(),
        "library": str(path),
        "version_string": text.value.decode().strip(),
    }


def engine_for(precision: str) -> str:
    """The oneMKL function the pooled step calls for its GEMMs in ``precision``."""
    return f"{NAME} {GEMM_SYMBOL if precision == 'bf16' else SGEMM_SYMBOL}"


def packed_b_bytes(precision: str, m: int, n: int, k: int) -> int:
    """The bytes oneMKL asks for to hold a k x n B operand packed for GEMMs of m output rows
    in ``precision`` (its ``*_pack_get_size``; measured, oneMKL 2026.0 on the Intel Xeon with
    AMX: a fixed 9.6 MB for bf16 whatever the shape, the allocation its largest packing
    needs)."""
    lib, _ = _library()
    get_size = getattr(lib, PACK_SYMBOLS[precision][0])
    get_size.restype = ctypes.c_size_t
    get_size.argtypes = [ctypes.c_int] * 4
    return int(get_size(B_MATRIX, m, n, k))


def set_threads(threads: int) -> None:
    """oneMKL's own thread count (its OpenMP pool, apart from OpenBLAS's and Numba's), for
    every thread: the process-wide setting, which Numba's workers read, and the calling
    thread's own, which overrides it there. threadpoolctl limits oneMKL through the calling
    thread's own setting (threadpoolctl's MKLController.set_num_threads calls
    MKL_Set_Num_Threads_Local), and the calling thread runs a share of every pooled region
    too: the process-wide setting alone left it calling oneMKL with oneMKL's own threads."""
    lib, _ = _library()
    lib.MKL_Set_Num_Threads(ctypes.c_int(threads))
    lib.MKL_Set_Num_Threads_Local(ctypes.c_int(threads))


def threads() -> int:
    """oneMKL's own thread count for the calling thread now (what ``set_threads`` or
    threadpoolctl last set)."""
    lib, _ = _library()
    return int(lib.MKL_Get_Max_Threads())
