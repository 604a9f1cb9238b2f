"""The CUDA kernel source built for the host and launched from Python: the text and options
NVRTC gets on a GPU (the backend's, and those CuPy adds; see DEVICE_ONLY_OPTIONS for the two
the host cannot take), compiled by the host C++ compiler with ``cuda_on_host.h`` (CUDA's
execution model as fibers, one block at a time) force-included.

So the CPU tests run the kernels' own indexing, reductions and barriers — what a GPU would
run — not only their NumPy twins. What this cannot show: timing, float rounding identical to
the GPU's (NVRTC contracts a*b+c into FMAs and flushes float32 denormals; the host build does
neither), or anything about the
hardware's memory model beyond the order of barriers. A launch may run its threads and
blocks in reverse order: a kernel whose answer depends on that order has a race. The build
has UndefinedBehaviorSanitizer in it where the compiler offers it: an index past a
__shared__ array, a signed overflow in index arithmetic, a misaligned or null access fails
the launch that made it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kernels.cupy_gpu.launch import KERNEL_DECLARATION, kernel_signatures

HEADER = Path(__file__).with_name("cuda_on_host.h")
# -U_FORTIFY_SOURCE: the fortified longjmp refuses to jump between stacks, which fibers do.
# -fno-strict-aliasing: kernels read float buffers as float4, as CUDA code does; C++'s aliasing
# rules would let the optimizer assume the two views are of different memory.
CXXFLAGS = (
    "-std=c++17",
    "-O2",
    "-shared",
    "-fPIC",
    "-fno-fast-math",
    "-U_FORTIFY_SOURCE",
    "-fno-strict-aliasing",
)
SANITIZE = ("-fsanitize=undefined", "-fno-sanitize=vptr")  # reports, and carries on

# UBSan reports on standard error (where its runtime sends them unless the process started with
# UBSAN_OPTIONS saying otherwise), so each launch runs with fd 2 sent to a file of ours: what
# lands there is the launch's report.
_REPORTS = tempfile.TemporaryFile()


# C types (const and __restrict__ dropped) -> their NumPy element types.
C_DTYPES = {
    "int": np.int32,
    "unsigned int": np.uint32,
    "float": np.float32,
    "double": np.float64,
    "long long": np.int64,
    "unsigned long long": np.uint64,
}
# C parameter types (const and __restrict__ dropped) -> how ctypes passes them.
_CTYPES = {
    "int": ctypes.c_int,
    "unsigned int": ctypes.c_uint,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong,
}


def unavailable_reason() -> str | None:
    """Why the kernel source cannot be built and run here, or None."""
    if not sys.platform.startswith("linux"):
        return "the host emulation of CUDA runs threads as ucontext fibers: Linux only"
    if compiler() is None:
        return "no C++ compiler (g++ or c++) on PATH for the host build of the kernels"
    return None


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def _wrappers(code: str, signatures: dict) -> str:
    """One C entry point per kernel: host_<name>(dims[6], reverse, <the kernel's parameters>)
    launches it over the grid in dims."""
    lines = []
    for name, params in KERNEL_DECLARATION.findall(
        code
    ):  # the parameters as written, qualifiers kept
        names = [pname for _, pname, _ in signatures[name]]
        lead = "const unsigned int* dims, int reverse" + (", " if params.strip() else "")
        lines.append(
            f'extern "C" int host_{name}({lead}{params}) {{\n'
            f"    return cuda_on_host::launch(dims, reverse, [&] {{ "
            f"{name}({', '.join(names)}); }});\n}}"
        )
    lines.append(
        'extern "C" const char* host_last_error() {\n'
        "    return cuda_on_host::last_error.c_str();\n}"
    )
    return "\n\n".join(lines) + "\n"


# The options CuPy adds to every NVRTC compile (launch.CUPY_NVRTC_OPTIONS), and why the host
# build passes them over:
#   -ftz=true  the device flushes float32 denormals to zero; the host build keeps them. x86 could
#              flush too (MXCSR's FTZ and DAZ bits), but for double as well, which the device
#              never flushes. What the device flushes is below 1.2e-38 in magnitude, under every
#              tolerance against the twins, and the one place it could build up, Adam's moments,
#              is flushed explicitly in the source, so device, host build and twins agree there.
#   --device-as-default-execution-space  nothing to do: __device__ is empty on the host.
DEVICE_ONLY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


def _options(options) -> list[str]:
    """The NVRTC options the host compiler understands the same way (-D, -I, -std), the
    device-only ones passed over (DEVICE_ONLY_OPTIONS); anything else is refused."""
    kept = []
    for option in options:
        if option in DEVICE_ONLY_OPTIONS:
            continue
        if not option.startswith(("-D", "-I", "-std=")):
            raise ValueError(f"no host equivalent for the NVRTC option {option!r}")
        kept.append(option)
    return kept


class LaunchFailed(AssertionError):
    """A launch the host emulation refused: what a GPU would hang on, or reject."""


class HostModule:
    """``code`` compiled for the host; ``launch`` runs one kernel over a grid."""

    def __init__(self, code: str, options=(), cache_dir: Path | None = None):
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        cxx = compiler()
        self.signatures = kernel_signatures(code)
        source = code + "\n" + _wrappers(code, self.signatures)
        flags = [*CXXFLAGS, *_options(options), "-include", str(HEADER)]
        cache = cache_dir or Path(tempfile.gettempdir()) / f"vae-kernel-bench-{os.getuid()}"
        cache.mkdir(parents=True, exist_ok=True)
        try:
            library = _build(cxx, [*flags, *SANITIZE], source, cache)
            self.sanitized = True
        except RuntimeError:  # no sanitizer runtime with this compiler: build plainly
            library = _build(cxx, flags, source, cache)
            self.sanitized = False
        self.library = ctypes.CDLL(str(library))
        self.library.host_last_error.restype = ctypes.c_char_p
        self._entry = {}
        for name, params in self.signatures.items():
            entry = getattr(self.library, f"host_{name}")
            entry.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.c_int] + [
                ctypes.c_void_p if pointer else _CTYPES[ctype] for ctype, _, pointer in params
            ]
            entry.restype = ctypes.c_int
            self._entry[name] = entry

    def launch(self, name: str, grid, block, args, reverse: bool = False) -> None:
        """``args``: an address (int, 0 for null) per pointer, a number per scalar."""
        params = self.signatures[name]
        if len(args) != len(params):
            raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
        values = []
        for arg, (ctype, pname, pointer) in zip(args, params):
            if pointer:
                values.append(int(arg) or None)
            else:
                values.append(float(arg) if ctype in ("float", "double") else int(arg))
        dims = (ctypes.c_uint * 6)(*grid, *block)
        with _standard_error_to(_REPORTS):
            failed = self._entry[name](dims, int(reverse), *values) != 0
        where = f"{name} {tuple(grid)}x{tuple(block)}"
        if failed:
            raise LaunchFailed(f"{where}: {self.library.host_last_error().decode()}")
        _REPORTS.seek(0)
        report = _REPORTS.read().decode(errors="replace").strip()
        if report:
            raise LaunchFailed(f"{where}: undefined behaviour (UBSan):\n{report}")


def _build(cxx: str, flags: list[str], source: str, cache: Path) -> Path:
    """The shared library of ``source`` built with ``flags``, from the cache when built
    before (keyed by everything that goes into it)."""
    key = hashlib.sha256("\0".join([source, HEADER.read_text(), cxx, *flags]).encode())
    library = cache / f"host-kernels-{key.hexdigest()[:20]}.so"
    if not library.exists():
        built = cache / f"{library.stem}.{os.getpid()}.tmp.so"
        cpp = built.with_suffix(".cpp")
        cpp.write_text(source)
        result = subprocess.run(
            [cxx, *flags, "-x", "c++", str(cpp), "-o", str(built)], capture_output=True, text=True
        )
        cpp.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"the host build of the kernel source failed:\n{result.stderr}")
        os.replace(built, library)  # atomic: a concurrent build never sees half a file
    return library


@contextmanager
def _standard_error_to(sink):
    """File descriptor 2 goes to ``sink`` (emptied first) until the block ends."""
    sys.stderr.flush()
    sink.seek(0)
    sink.truncate()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
