"""A stand-in for the slice of CuPy that ``kernels/cupy_gpu/executors.CudaExecutor`` uses, so
the executor's own code — pointer arithmetic, the cuBLAS call's argument order, pinned
staging, events, stream capture and replay — runs on a CPU.

Device memory is host memory here: every allocation is registered by address, and a raw
pointer (what a RawKernel or cublasGemmEx receives) is turned back into an array of the element
type the kernel's C signature declares. Kernels run as their NumPy twins; GEMMs as cuBLAS
defines them (column-major, via ``gemm.emulate``), reading alpha and beta from the host
pointers given. A stream in capture records instead of running, and a graph replays the record.
Only what the executor calls exists; anything else fails loudly.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import re
import sys
import types

import numpy as np

from kernels.cupy_gpu import twins
from kernels.cupy_gpu.gemm import GemmCall, emulate

_ALLOCATIONS: dict[int, np.ndarray] = {}  # base address -> the owning byte array


class MemoryPointer:
    def __init__(self, ptr: int):
        self.ptr = ptr


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """A NumPy array that answers ``.data.ptr`` like a CuPy array."""

    @property
    def data(self):  # type: ignore[override]
        return MemoryPointer(self.__array_interface__["data"][0])

    def get(self, stream=None, **_):
        return np.array(self, copy=True)

    def set(self, arr, stream=None):
        _run(lambda: np.copyto(self, np.asarray(arr).reshape(self.shape)))


def _allocate(shape, dtype) -> ndarray:
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(max(size, 1) + 256, np.uint8)
    start = (-raw.ctypes.data) % 256  # 256-byte aligned, as cudaMalloc is
    base = raw[start : start + size]
    _ALLOCATIONS[base.ctypes.data] = raw
    return base.view(dtype).reshape(shape).view(ndarray)


def _array_at(ptr: int, dtype) -> np.ndarray:
    """Every element from ``ptr`` to the end of its allocation, as ``dtype``."""
    for base, raw in _ALLOCATIONS.items():
        end = raw.ctypes.data + raw.size
        if base <= ptr < end:
            count = (end - ptr) // np.dtype(dtype).itemsize
            buffer = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(ptr)
            return np.frombuffer(buffer, dtype=dtype)
    raise AssertionError(f"pointer {ptr:#x} is not in any device allocation")


# -- streams, capture, events --------------------------------------------------------------

_CAPTURE: list | None = None  # the record of the stream being captured, if any


def _run(action) -> None:
    if _CAPTURE is not None:
        _CAPTURE.append(action)
    else:
        action()


class Graph:
    def __init__(self, actions):
        self.actions = actions

    def launch(self, stream=None):
        _run(self._replay)

    def _replay(self):
        for action in self.actions:
            action()


class Stream:
    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = id(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass

    def begin_capture(self, mode=None):
        global _CAPTURE
        assert _CAPTURE is None, "a capture is already in progress"
        _CAPTURE = []

    def end_capture(self):
        global _CAPTURE
        actions, _CAPTURE = _CAPTURE, None
        return Graph(actions)


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.recorded = False

    def record(self, stream=None):
        assert _CAPTURE is None, "events are recorded outside captures here"
        self.recorded = True

    def synchronize(self):
        pass


# -- kernels: RawModule -> twins, arguments typed by the C signature -----------------------

_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_POINTEE = {"float": np.float32, "long long": np.int64, "unsigned int": np.uint32,
            "double": np.float64}
_SCALAR = {"int": np.int32, "float": np.float32, "double": np.float64,
           "unsigned long long": np.uint64}


def kernel_signatures(code: str) -> dict[str, list[tuple[str, str, bool]]]:
    """name -> [(C type without const/__restrict__, parameter name, is a pointer)] of every
    extern "C" kernel in ``code``."""
    kernels = {}
    for name, params in _SIGNATURE.findall(code):
        parsed = []
        for param in filter(None, (p.strip() for p in params.split(","))):
            words = param.replace("*", " * ").replace("const", " ").replace("__restrict__", " ")
            *type_words, pname = words.split()
            parsed.append((" ".join(w for w in type_words if w != "*"), pname,
                           "*" in type_words))
        kernels[name] = parsed
    return kernels


class RawModule:
    def __init__(self, code=None, *, options=(), **_):
        assert "#pragma once" not in code
        self.signatures = kernel_signatures(code)

    def get_function(self, name):
        return _RawKernel(name, self.signatures[name])


class _RawKernel:
    def __init__(self, name, signature):
        self.name, self.signature = name, signature

    def __call__(self, grid, block, args, *, shared_mem=0):
        assert len(args) == len(self.signature), f"{self.name}: {len(args)} arguments"
        converted = []
        for arg, (ctype, _, pointer) in zip(args, self.signature):
            if pointer:
                # CuPy packs a NumPy scalar by its own size: a null pointer must be 8 bytes.
                null = type(arg) is np.uint64 and int(arg) == 0
                assert isinstance(arg, ndarray) or null, f"{self.name}: bad pointer {arg!r}"
                converted.append(None if null else (arg.data.ptr, _POINTEE[ctype]))
            else:
                assert type(arg) is _SCALAR[ctype], (
                    f"{self.name}: {type(arg).__name__} passed for a C {ctype}")
                converted.append(arg)
        geometry = twins.Geometry(tuple(grid), tuple(block))

        def launch():
            values = [_array_at(*a) if isinstance(a, tuple) else a for a in converted]
            twins.KERNELS[self.name](geometry, *values)

        _run(launch)


# -- runtime, cuBLAS, cupyx ---------------------------------------------------------------

def _memcpy_async(dst, src, size, kind, stream):
    assert kind == runtime.memcpyHostToDevice
    payload = ctypes.string_at(src, size)  # read now: the caller's staging slot is pinned
    _run(lambda: ctypes.memmove(dst, payload, size))


def _device_properties(device_id):
    return {"name": b"Simulated GPU (tests/fake_cupy.py)"}


runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1, memcpyHostToDevice=1, CUDA_R_32F=0, memcpyAsync=_memcpy_async,
    getDeviceProperties=_device_properties, runtimeGetVersion=lambda: 13000,
    driverGetVersion=lambda: 13000)


def _gemm_ex(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C,
             Ctype, ldc, compute_type, algo):
    assert Atype == Btype == Ctype == runtime.CUDA_R_32F
    scale = ctypes.c_float.from_address(alpha).value
    keep = ctypes.c_float.from_address(beta).value
    assert (scale, keep) == (1.0, 0.0), "the step's GEMMs overwrite: alpha 1, beta 0"
    call = GemmCall(transa, transb, m, n, k, "A", lda, "B", ldb, "C", ldc)
    _run(lambda: emulate(call, _array_at(A, np.float32), _array_at(B, np.float32),
                         _array_at(C, np.float32)))


cublas = types.SimpleNamespace(
    create=lambda: 1, setStream=lambda handle, stream: None,
    setPointerMode=lambda handle, mode: None, gemmEx=_gemm_ex, CUBLAS_POINTER_MODE_HOST=0,
    CUBLAS_COMPUTE_32F=68, CUBLAS_COMPUTE_32F_FAST_TF32=77, CUBLAS_GEMM_DEFAULT=-1)


class _Device:
    id = 0
    compute_capability = "90"


def install(monkeypatch) -> None:
    """Make ``import cupy`` (and cupyx, cupy_backends' cuBLAS) give this module's stand-ins."""
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "simulated"
    cupy.RawModule = RawModule
    cupy.zeros = lambda shape, dtype=np.float32: _allocate(shape, dtype)

    def asarray(host):
        array = _allocate(np.shape(host), np.asarray(host).dtype)
        np.copyto(array, host)
        return array

    cupy.asarray = asarray
    cupy.cuda = types.SimpleNamespace(Stream=Stream, Event=Event, runtime=runtime,
                                      Device=_Device, get_elapsed_time=lambda a, b: 1.0)
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = lambda shape, dtype=np.float32: np.zeros(shape, dtype)
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = cublas
    modules = {"cupy": cupy, "cupyx": cupyx, "cupy_backends": types.ModuleType("cupy_backends"),
               "cupy_backends.cuda": types.ModuleType("cupy_backends.cuda"),
               "cupy_backends.cuda.libs": libs}
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec asks
        monkeypatch.setitem(sys.modules, name, module)
