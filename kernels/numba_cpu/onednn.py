"""oneDNN, the pooled Numba step's GEMM engine for bf16 on CPUs whose bf16 hardware oneMKL
leaves unused (AMD Zen 4 and later: AVX512_BF16, no AMX; ``engines.py`` chooses), and for
float32 where asked (``engines.ENGINE_VARIABLE``): ``dnnl_gemm_bf16bf16f32`` (bf16 inputs,
float32 accumulation and output) and ``dnnl_sgemm``, called by symbol from the compiled step.

Why oneDNN there: it picks its kernels by instruction set, not by vendor. With AVX512_BF16 its
bf16 GEMM runs ``jit_avx512_core_gemm_bf16bf16f32_kern`` on ``vdpbf16ps``
(uxlfoundation/oneDNN src/cpu/x64/gemm/bf16/, chosen through cpu_isa_traits.hpp's ``mayiuse``),
where oneMKL's ``cblas_gemm_bf16bf16f32`` gained nothing on an AMD Zen 4 (issue 42's profile:
0.97x its float32 GEMMs). Below AVX-512 it has no bf16 GEMM at all: src/cpu/gemm/gemm.cpp,
``gemm_bf16bf16f32``, returns ``dnnl_unimplemented`` unless ``mayiuse(avx512_core)``, which
``bf16_problem`` asks the library itself. Apache-2.0; Debian ships it (``apt-get install
libdnnl2``, oneDNN 2.6, built with GNU OpenMP: the runtime of Numba's ``omp`` threading layer,
so a call made inside one of Numba's parallel regions runs on its calling thread alone, as
oneMKL set to one thread does). PyPI's ``onednn`` wheels pull SYCL and TBB runtimes, and
torch's bundled oneDNN exports no symbols.

Both functions are row-major (include/oneapi/dnnl/dnnl.h: ``dnnl_sgemm``, "all matrices are
assumed to be stored in row-major order"), take their transposes as the characters 'N' and
'T', their sizes as 64-bit ``dnnl_dim_t`` and return a ``dnnl_status_t``. The bf16 one is
exported by libdnnl with the sgemm's arguments (src/common/gemm.cpp) but declared only in
oneDNN's tests. The library is loaded into LLVM's symbol table before the step compiles, as
``onemkl.load`` does, so the step calls the C functions directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

from .native import first_loadable

NAME = "oneDNN"  # as messages and the provenance name it

SGEMM_SYMBOL = "dnnl_sgemm"
GEMM_SYMBOL = "dnnl_gemm_bf16bf16f32"
INSTALL = "apt-get install libdnnl2"
# dnnl.h's transposes (char arguments) and dnnl_types.h's dnnl_status_t values the probe names.
NO_TRANS_CHAR, TRANS_CHAR = ord("N"), ord("T")
STATUS_NAMES = {0: "dnnl_success", 2: "dnnl_invalid_arguments", 3: "dnnl_unimplemented"}
# dnnl_types.h (oneDNN 2.x): dnnl_cpu_isa_t, what dnnl_get_effective_cpu_isa returns.
CPU_ISA_NAMES = {
    0x0: "all",
    0x1: "sse41",
    0x3: "avx",
    0x7: "avx2",
    0xF: "avx512_mic",
    0x1F: "avx512_mic_4ops",
    0x27: "avx512_core",
    0x67: "avx512_core_vnni",
    0xE7: "avx512_core_bf16",
    0x3E7: "avx512_core_amx",
    0x407: "avx2_vnni",
}


def library_candidates() -> list[Path]:
    """Where libdnnl may be: Debian's package (oneDNN 2, ``libdnnl.so.2``; a oneDNN 3 build
    as ``libdnnl.so.3``), or wherever the loader finds ``dnnl``."""
    found = [
        Path(directory) / name
        for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/local/lib")
        for name in ("libdnnl.so.3", "libdnnl.so.2")
    ]
    system = ctypes.util.find_library("dnnl")
    return [p for p in found if p.exists()] + ([Path(system)] if system else [])


class _Version(ctypes.Structure):
    # dnnl_types.h: dnnl_version_t.
    _fields_ = [
        ("major", ctypes.c_int),
        ("minor", ctypes.c_int),
        ("patch", ctypes.c_int),
        ("hash", ctypes.c_char_p),
        ("cpu_runtime", ctypes.c_uint),
        ("gpu_runtime", ctypes.c_uint),
    ]


def _declare(lib: ctypes.CDLL) -> None:
    dim, ptr = ctypes.c_int64, ctypes.c_void_p
    arguments = [ctypes.c_char, ctypes.c_char, dim, dim, dim, ctypes.c_float, ptr, dim, ptr, dim]
    arguments += [ctypes.c_float, ptr, dim]
    for name in (SGEMM_SYMBOL, GEMM_SYMBOL):
        function = getattr(lib, name)
        function.restype = ctypes.c_int
        function.argtypes = arguments
    lib.dnnl_version.restype = ctypes.POINTER(_Version)
    lib.dnnl_get_effective_cpu_isa.restype = ctypes.c_int


@functools.cache
def _library() -> tuple[ctypes.CDLL, Path] | str:
    """The loaded libdnnl and its path, its functions declared for ctypes, or why there is
    none."""
    symbols = (SGEMM_SYMBOL, GEMM_SYMBOL, "dnnl_version", "dnnl_get_effective_cpu_isa")
    loaded = first_loadable(NAME, library_candidates(), symbols, f"Debian, Ubuntu: {INSTALL}")
    if not isinstance(loaded, str):
        _declare(loaded[0])
    return loaded


def library() -> ctypes.CDLL:
    """The loaded libdnnl, its GEMMs declared for ctypes (a RuntimeError saying why where
    there is none): for measurements and probes outside the compiled step."""
    loaded = _library()
    if isinstance(loaded, str):
        raise RuntimeError(loaded)
    return loaded[0]


def library_problem() -> str | None:
    """Why oneDNN's GEMMs cannot be called here (None: they can), whatever the precision."""
    library = _library()
    return library if isinstance(library, str) else None


def problem(precision: str) -> str | None:
    """Why the step's GEMMs in ``precision`` cannot run on oneDNN here, not even to check
    their numbers (None: they can): oneDNN emulates no bf16 below AVX-512 (``bf16_problem``)."""
    return bf16_problem() if precision == "bf16" else library_problem()


@functools.cache
def bf16_problem() -> str | None:
    """Why oneDNN's bf16 GEMM cannot run here (None: it can): no library, or the library says
    it has no bf16 GEMM for this CPU (a 2 x 2 product asked of it; below AVX-512 it answers
    dnnl_unimplemented). A wrong product is a problem too: the step would learn nothing."""
    problem = library_problem()
    if problem:
        return problem
    lib, path = _library()  # type: ignore[misc]
    one = 0x3F80  # 1.0 in bf16
    a = (ctypes.c_uint16 * 4)(one, one, one, one)
    c = (ctypes.c_float * 4)()
    status = lib.dnnl_gemm_bf16bf16f32(b"N", b"N", 2, 2, 2, 1.0, a, 2, a, 2, 0.0, c, 2)
    if status != 0:
        name = STATUS_NAMES.get(status, f"status {status}")
        isa = CPU_ISA_NAMES.get(lib.dnnl_get_effective_cpu_isa(), "unknown")
        return (
            f"oneDNN's bf16 GEMM answered {name} on this CPU (its instruction set for oneDNN: "
            f"{isa}; oneDNN runs bf16 GEMMs on AVX-512 CPUs only)"
        )
    if list(c) != [2.0] * 4:
        return f"oneDNN's bf16 GEMM ({path}) computed {list(c)} for a product of 2.0s"
    return None


@functools.cache
def load() -> dict:
    """Load oneDNN for the compiled step (idempotent); returns what the provenance records, as
    ``onemkl.load`` does: the library's path, its version and build, and the instruction set
    oneDNN dispatches to on this CPU."""
    library = _library()
    if isinstance(library, str):
        raise RuntimeError(library)
    import llvmlite.binding

    lib, path = library
    llvmlite.binding.load_library_permanently(str(path))
    version = lib.dnnl_version().contents
    isa = lib.dnnl_get_effective_cpu_isa()
    return {
        "version": f"{version.major}.{version.minor}.{version.patch}",
        "build": (version.hash or b"").decode(),
        "isa": CPU_ISA_NAMES.get(isa, f"dnnl_cpu_isa_t {isa:#x}"),
        "library": str(path),
        "version_string": f"oneDNN v{version.major}.{version.minor}.{version.patch}",
    }


def engine_for(precision: str) -> str:
    """The oneDNN function the pooled step calls for its GEMMs in ``precision``."""
    return f"{NAME} {GEMM_SYMBOL if precision == 'bf16' else SGEMM_SYMBOL}"
