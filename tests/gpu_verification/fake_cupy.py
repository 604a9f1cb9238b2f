"""A stand-in for the slice of CuPy that ``kernels/cupy_gpu/executors.CudaExecutor`` uses, so
the executor's own code — pointer arithmetic, the cuBLAS call's argument order, pinned
staging, events, stream capture and replay — runs on a CPU.

Device memory is host memory here: every allocation is registered by address, and a raw
pointer (what a RawKernel or cublasGemmEx receives) is turned back into an array of the element
type the kernel's C signature declares. Kernels run as their NumPy twins, or (``install(...,
kernels="source")``) as the CUDA source itself built for the host (``cuda_on_host.py``), each
launch then checked against its twin and against a reverse-order run; GEMMs as cuBLAS
defines them (column-major, via ``twins.gemm``), reading alpha and beta from the host
pointers given. A stream in capture records instead of running, and a graph replays the record.
Only what the executor calls exists (and CuPy's own Stream capture, see Graph); anything else
fails loudly.

A simulation is a set of beliefs about the real library. Each behaviour below names the file
and function of CuPy (read in the sources of v13.6.0 and v14.2.0, which agree unless said),
or of CUDA's documentation, that it mirrors. tests/kernels/cupy_gpu/test_cupy_drift.py checks
them against the installed CuPy (``nox -s drift`` installs 13.6 and 14.2 in turn); what only a
GPU could check is listed as unverified in kernels/cupy_gpu/README.md.
"""

from __future__ import annotations

import bisect
import ctypes
import importlib.machinery
import itertools
import sys
import types

import numpy as np

from kernels.cupy_gpu import blas, driver
from kernels.cupy_gpu.gemm import GemmCall
from kernels.cupy_gpu.launch import CUPY_NVRTC_OPTIONS, Geometry, kernel_signatures

from . import twins
from .cuda_on_host import C_DTYPES, HostModule

_ALLOCATIONS: dict[int, np.ndarray] = {}  # base address -> the owning byte array
_SIZES: dict[int, int] = {}  # base address -> bytes asked for (the guard follows)
_BASES: list[int] = []  # the base addresses, sorted: a pointer's allocation by bisection


class MemoryPointer:
    """cupy/cuda/memory.pyx MemoryPointer: ``ptr`` is the device address."""

    def __init__(self, ptr: int):
        self.ptr = ptr


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """A NumPy array that answers ``.data.ptr`` like a CuPy array; get and set as
    cupy/_core/core.pyx _ndarray_base.get(stream=None, order='C', out=None, blocking=True)
    and set(arr, stream=None)."""

    @property
    def data(self):  # type: ignore[override]
        return MemoryPointer(self.__array_interface__["data"][0])

    def get(self, stream=None, **_):
        return np.array(self, copy=True)

    def set(self, arr, stream=None):
        _run(lambda: np.copyto(self, np.asarray(arr).reshape(self.shape)))


GUARD_BYTES = 4096  # after every allocation, all bits set: NaN as float, -1 as an index


def _allocate(shape, dtype) -> ndarray:
    """Zeroed (cupy.zeros), 256-byte aligned (cudaMalloc's alignment, CUDA C++ Programming
    Guide, "Device Memory Accesses"; CuPy's pool hands out multiples of 512 bytes,
    cupy/cuda/memory.pyx ALLOCATION_UNIT_SIZE), and followed by a guard: a kernel that reads
    past the end gets NaN (or index -1), one that writes there changes the guard, and either
    shows when its buffers are compared with its twin's (which never go past the end)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.full(size + 256 + GUARD_BYTES, 0xFF, np.uint8)
    start = (-raw.ctypes.data) % 256
    base = raw[start : start + size]
    base[...] = 0
    _ALLOCATIONS[base.ctypes.data] = raw
    _SIZES[base.ctypes.data] = size
    bisect.insort(_BASES, base.ctypes.data)  # kept alive here: no address is used twice
    return base.view(dtype).reshape(shape).view(ndarray)


def _allocation_of(ptr: int) -> int:
    """The base address of the allocation that holds ``ptr``."""
    index = bisect.bisect_right(_BASES, ptr) - 1
    if index >= 0:
        base = _BASES[index]
        raw = _ALLOCATIONS[base]
        if ptr < raw.ctypes.data + raw.size:
            return base
    raise AssertionError(f"pointer {ptr:#x} is not in any device allocation")


def _guard_intact(base: int) -> bool:
    raw = _ALLOCATIONS[base]
    start = base - raw.ctypes.data + _SIZES[base]
    return bool((raw[start : start + GUARD_BYTES] == 0xFF).all())


def _array_at(ptr: int, dtype) -> np.ndarray:
    """Every element from ``ptr`` to the end of its allocation, as ``dtype``."""
    raw = _ALLOCATIONS[_allocation_of(ptr)]
    count = (raw.ctypes.data + raw.size - ptr) // np.dtype(dtype).itemsize
    buffer = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(ptr)
    return np.frombuffer(buffer, dtype=dtype)


# -- streams, capture, graphs, events -----------------------------------------------------
# CUDA's rules for stream capture, as the executor meets them through CuPy's runtime
# bindings (cupy_backends/cuda/api/runtime.pyx, the same functions in CuPy 13.6 and 14.2).

VERSION = "14.2.0"  # install(version=...) sets it: the graph handle's fate depends on it
_CAPTURE: list | None = None  # the record of the stream being captured, if any
_CAPTURE_INVALID: str | None = None  # why the capture in progress is invalidated, if it is
_HANDLES = itertools.count(0x1000)  # cudaGraph_t / cudaGraphExec_t values, never 0
_GRAPHS: dict[int, list] = {}  # live cudaGraph_t -> its nodes (one action per launch or GEMM)
_EXECS: dict[int, list] = {}  # live cudaGraphExec_t -> its nodes


class CUDARuntimeError(RuntimeError):
    """cupy_backends/cuda/api/runtime.pyx, CUDARuntimeError: raised by check_status with the
    error's name and description."""


def _run(action) -> None:
    if _CAPTURE is not None:
        _CAPTURE.append(action)
    else:
        action()


def _invalidate(name: str, description: str):
    """A call CUDA refuses while a stream is captured: it fails, and the capture sequence is
    invalidated, so ending it fails too (CUDA C++ Programming Guide, "Stream Capture":
    "Prohibited and Unhandled Operations", "Invalidation")."""
    global _CAPTURE_INVALID
    _CAPTURE_INVALID = _CAPTURE_INVALID or name
    return CUDARuntimeError(f"{name}: {description}")


def _stream_begin_capture(stream, mode=2):
    """runtime.pyx streamBeginCapture(intptr_t stream, int mode=streamCaptureModeRelaxed)."""
    global _CAPTURE, _CAPTURE_INVALID
    if _CAPTURE is not None:  # cudaStreamBeginCapture on a stream already capturing
        raise CUDARuntimeError(
            "cudaErrorIllegalState: operation not permitted when stream is capturing"
        )
    _CAPTURE, _CAPTURE_INVALID = [], None


def _stream_end_capture(stream):
    """runtime.pyx streamEndCapture(intptr_t stream) -> the cudaGraph_t. An invalidated
    capture ends, and cudaStreamEndCapture returns cudaErrorStreamCaptureInvalidated and no
    graph (CUDA Runtime API, cudaStreamEndCapture)."""
    global _CAPTURE, _CAPTURE_INVALID
    if _CAPTURE is None:
        raise CUDARuntimeError("cudaErrorIllegalState: the stream is not capturing")
    actions, invalid, _CAPTURE, _CAPTURE_INVALID = _CAPTURE, _CAPTURE_INVALID, None, None
    if invalid is not None:
        raise CUDARuntimeError(
            "cudaErrorStreamCaptureInvalidated: operation failed due to a "
            "previous error during capture"
        )
    handle = next(_HANDLES)
    _GRAPHS[handle] = actions
    return handle


def _graph_instantiate(graph):
    """runtime.pyx graphInstantiate(intptr_t graph) -> a cudaGraphExec_t: a copy of the
    graph's nodes, independent of the graph afterwards (cudaGraphInstantiate)."""
    handle = next(_HANDLES)
    _EXECS[handle] = list(_GRAPHS[graph])
    return handle


def _graph_destroy(graph):
    """runtime.pyx graphDestroy (cudaGraphDestroy)."""
    assert graph in _GRAPHS, f"cudaGraphDestroy of {graph:#x}, not a live graph"
    del _GRAPHS[graph]


def _graph_exec_destroy(graphExec):  # CuPy's parameter name
    """runtime.pyx graphExecDestroy(intptr_t graphExec) (cudaGraphExecDestroy)."""
    assert graphExec in _EXECS, f"cudaGraphExecDestroy of {graphExec:#x}, not a live graph"
    del _EXECS[graphExec]


def _graph_launch(graphExec, stream):  # CuPy's parameter name
    """runtime.pyx graphLaunch(intptr_t graphExec, intptr_t stream): the nodes, in order."""
    actions = _EXECS[graphExec]  # a destroyed executable graph: a KeyError, not a result

    def replay():
        for action in actions:
            action()

    _run(replay)


def live_graphs() -> int:
    """Graphs and executable graphs created and not yet destroyed (a leak shows here)."""
    return len(_GRAPHS) + len(_EXECS)


class Graph:
    """cupy/cuda/graph.pyx: what CuPy's own Stream.end_capture returns (Graph.from_stream).
    Graph._init in CuPy 13 destroys the cudaGraph_t as soon as the executable graph exists and
    keeps ``graph = 0``; CuPy 14 keeps the handle. __dealloc__ destroys what is left. The
    executor no longer captures through this; it stays so that a return to it would meet
    CuPy 13's null handle here, as on a GPU."""

    def __init__(self, graph, host_funcargs=None):
        self.graphExec = _graph_instantiate(graph)
        if int(VERSION.split(".")[0]) < 14:
            _graph_destroy(graph)
            graph = 0
        self.graph = graph

    def launch(self, stream=None):
        _graph_launch(self.graphExec, stream.ptr if stream is not None else 0)

    def __del__(self):
        if self.graph:
            _graph_destroy(self.graph)
        _graph_exec_destroy(self.graphExec)


class Stream:
    """cupy/cuda/stream.pyx Stream(null=False, non_blocking=False, ptds=False; 14 adds
    priority=None): ``ptr`` is the cudaStream_t; ``with stream:`` makes it current."""

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = id(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        """cudaStreamSynchronize on a capturing stream is prohibited: it fails with
        cudaErrorStreamCaptureUnsupported and invalidates the capture."""
        if _CAPTURE is not None:
            raise _invalidate(
                "cudaErrorStreamCaptureUnsupported",
                "operation not permitted when stream is capturing",
            )

    def begin_capture(self, mode=None):
        """cupy/cuda/stream.pyx _BaseStream.begin_capture: mode None means relaxed."""
        _stream_begin_capture(self.ptr, runtime.streamCaptureModeRelaxed if mode is None else mode)

    def end_capture(self):
        """cupy/cuda/stream.pyx _BaseStream.end_capture: Graph.from_stream of the graph."""
        return Graph(_stream_end_capture(self.ptr))


class Event:
    """cupy/cuda/stream.pyx Event(block=False, disable_timing=False, interprocess=False).
    Recording one during a capture is legal in CUDA (an event-record node); the executor
    records only outside captures, and this simulation holds it to that."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.recorded = False

    def record(self, stream=None):
        assert _CAPTURE is None, "events are recorded outside captures here"
        self.recorded = True

    def synchronize(self):
        pass


# -- kernels: RawModule -> twins, or the CUDA source built for the host ------------------
# Arguments are typed by the C signature, as CuPy packs them.

KERNELS = "twins"  # install(kernels=...) sets it: "twins", or "source" (tests/gpu_verification/cuda_on_host.py)
_HOST_MODULES: dict[tuple, HostModule] = {}


class RawModule:
    """cupy/_core/raw.pyx RawModule(*, code=None, path=None, tuple options=(), ...): the
    options must be a tuple (a Cython-typed parameter: a list raises TypeError). Compiling,
    CuPy adds its own options (cupy/cuda/compiler.py, _compile_with_cache_cuda and the NVRTC
    step: launch.CUPY_NVRTC_OPTIONS), so the host build gets them too."""

    def __init__(self, code=None, *, options=(), **_):
        if not isinstance(options, tuple):
            raise TypeError(
                f"Argument 'options' has incorrect type (expected tuple, got "
                f"{type(options).__name__})"
            )
        assert "#pragma once" not in code
        self.signatures = kernel_signatures(code)
        self.host = None
        if KERNELS == "source":
            key = (code, options + CUPY_NVRTC_OPTIONS)
            if key not in _HOST_MODULES:
                _HOST_MODULES[key] = HostModule(*key)
            self.host = _HOST_MODULES[key]

    def get_function(self, name):
        return _RawKernel(name, self.signatures[name], self.host)


class _RawKernel:
    """cupy/_core/raw.pyx RawKernel.__call__(grid, block, args, *, shared_mem=0). Each
    argument is packed by cupy/cuda/function.pyx _pointer: an ndarray as its pointer, a NumPy
    scalar by its own size (13: by itemsize; 14: _scalar.CScalar by its dtype), a Python float
    as a double, a Python int as 8 bytes; None is a NULL argument pointer in 13 (CPointer())
    and 8 zero bytes in 14 (CIntptr(0)), so a null pointer must be passed as np.uint64(0)."""

    def __init__(self, name, signature, host):
        self.name, self.signature, self.host = name, signature, host

    def __call__(self, grid, block, args, *, shared_mem=0):
        assert len(args) == len(self.signature), f"{self.name}: {len(args)} arguments"
        converted = []
        for arg, (ctype, _, pointer) in zip(args, self.signature):
            if pointer:
                # CuPy packs a NumPy scalar by its own size: a null pointer must be 8 bytes.
                null = type(arg) is np.uint64 and int(arg) == 0
                assert isinstance(arg, ndarray) or null, f"{self.name}: bad pointer {arg!r}"
                converted.append(None if null else (arg.data.ptr, C_DTYPES[ctype]))
            else:
                assert type(arg) is C_DTYPES[ctype], (
                    f"{self.name}: {type(arg).__name__} passed for a C {ctype}"
                )
                converted.append(arg)
        geometry = Geometry(tuple(grid), tuple(block))

        def launch():
            if self.host is None:
                values = [_array_at(*a) if isinstance(a, tuple) else a for a in converted]
                twins.KERNELS[self.name](geometry, *values)
            else:
                _checked_source_launch(self.host, self.name, geometry, converted)

        _run(launch)


def _checked_source_launch(host: HostModule, name: str, geometry, converted: list) -> None:
    """Runs the kernel's source on device memory, and checks the launch two ways on copies
    of the buffers it is given: its twin must compute the same (to float rounding), and the
    source run with threads and blocks in reverse order must give identical bits (otherwise
    the result depends on scheduling: a race)."""
    owners = [_allocation_of(a[0]) for a in converted if isinstance(a, tuple)]
    assert len(set(owners)) == len(owners), (
        f"{name}: two pointer arguments in one allocation; copies would not alias"
    )

    def copies():
        return [np.array(_array_at(*a)) if isinstance(a, tuple) else a for a in converted]

    def addresses(args):
        return [
            0
            if a is None
            else a.ctypes.data
            if isinstance(a, np.ndarray)
            else a[0]
            if isinstance(a, tuple)
            else a
            for a in args
        ]

    twin, backwards = copies(), copies()
    twins.KERNELS[name](geometry, *twin)
    host.launch(name, geometry.grid, geometry.block, addresses(backwards), reverse=True)
    host.launch(name, geometry.grid, geometry.block, addresses(converted))
    params = [p[1] for p in host.signatures[name]]
    for arg, param, expected, reordered in zip(converted, params, twin, backwards):
        if not isinstance(arg, tuple):
            continue
        if not _guard_intact(_allocation_of(arg[0])):
            raise AssertionError(f"{name}: wrote past the end of the buffer {param} points into")
        source = _array_at(*arg)
        if not np.array_equal(source, reordered, equal_nan=source.dtype.kind == "f"):
            raise AssertionError(
                f"{name}: {param} differs when threads and blocks run in "
                f"reverse order (a race: the result depends on scheduling)"
            )
        mismatch = twin_mismatch(source, expected)
        if mismatch:
            raise AssertionError(f"{name}: {param} differs from the twin: {mismatch}")


# Source vs twin: both float32, summed in different orders (the kernels' fixed trees, NumPy's
# pairwise sums) with different exp/log implementations. Seen: up to 2.4e-6 (the KL's per-row
# sum, which cancels) on the gate's fixture; an indexing bug is off by O(1).
TWIN_RTOL = 1e-4


def twin_mismatch(source: np.ndarray, twin: np.ndarray) -> str | None:
    """Why ``source`` and ``twin`` disagree, or None: integers exactly; floats to TWIN_RTOL
    of each element plus of the array's largest magnitude (sums that cancel); NaN where NaN."""
    if source.dtype.kind != "f":
        bad = np.flatnonzero(source != twin)
        return None if bad.size == 0 else f"{bad.size} elements differ, first at {bad[0]}"
    if not np.array_equal(np.isnan(source), np.isnan(twin)):
        return (
            "NaN in different places (every buffer is followed by NaN: a read past its "
            "end shows so)"
        )
    s, t = np.nan_to_num(source).astype(np.float64), np.nan_to_num(twin).astype(np.float64)
    scale = float(np.abs(t).max(initial=0.0))
    error = np.abs(s - t)
    bad = np.flatnonzero(error > TWIN_RTOL * (np.abs(t) + scale))
    if bad.size == 0:
        return None
    worst = int(np.argmax(error))
    return (
        f"{bad.size} elements beyond tolerance; worst at {worst}: {s[worst]!r} vs "
        f"{t[worst]!r} (largest magnitude {scale:.3g})"
    )


# -- runtime, cuBLAS, cupyx ---------------------------------------------------------------


def _memcpy_async(dst, src, size, kind, stream):
    """runtime.pyx memcpyAsync(intptr_t dst, intptr_t src, size_t size, int kind,
    intptr_t stream)."""
    assert kind == runtime.memcpyHostToDevice
    payload = ctypes.string_at(src, size)  # read now: the caller's staging slot is pinned
    _run(lambda: ctypes.memmove(dst, payload, size))


def _device_properties(device):
    """runtime.pyx getDeviceProperties: a dict; the name as bytes (props.name, a char[]). An
    H100 SXM's multiprocessor count."""
    return {
        "name": b"Simulated GPU (tests/gpu_verification/fake_cupy.py)",
        "multiProcessorCount": 132,
    }


# Constants as cupy_backends/cuda/api/runtime.pxd declares them (memcpyHostToDevice = 1,
# streamCaptureModeRelaxed = 2: CUDA's enum values).
runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1,
    memcpyHostToDevice=1,
    memcpyAsync=_memcpy_async,
    getDeviceProperties=_device_properties,
    runtimeGetVersion=lambda: 13000,
    driverGetVersion=lambda: 13000,
    CUDARuntimeError=CUDARuntimeError,
    streamCaptureModeRelaxed=2,
    streamBeginCapture=_stream_begin_capture,
    streamEndCapture=_stream_end_capture,
    graphInstantiate=_graph_instantiate,
    graphDestroy=_graph_destroy,
    graphExecDestroy=_graph_exec_destroy,
    graphLaunch=_graph_launch,
)


class _CFunction:
    """A library function as ctypes gives it: argtypes and restype may be set, and a call
    must then pass one argument per declared type."""

    def __init__(self, body):
        self.body, self.argtypes, self.restype = body, None, None

    def __call__(self, *args):
        assert self.argtypes is not None and len(args) == len(self.argtypes), (
            f"{self.body.__name__}: {len(args)} arguments, {self.argtypes} declared"
        )
        return self.body(*args)


class CublasLibrary:
    """cuBLAS as ctypes reaches it (kernels/cupy_gpu/blas.py): the library's C functions, as
    the cuBLAS documentation describes them: cublasSetStream resets the handle to cuBLAS's
    own workspace ("cublasSetStream"), which it would allocate during a capture, so a
    capturable GEMM needs cublasSetWorkspace after the stream ("CUDA Graphs Support"); in host
    pointer mode alpha and beta are read when the call is made (captured by value)."""

    def __init__(self):
        self.handles = 0
        self.streams: dict[int, int] = {}  # handle -> stream
        self.pointer_modes: dict[int, int] = {}
        self.workspaces: dict[int, tuple[int, int]] = {}  # handle -> (pointer, bytes)
        for name in (
            "cublasCreate_v2",
            "cublasSetStream_v2",
            "cublasSetWorkspace_v2",
            "cublasSetPointerMode_v2",
            "cublasGemmEx",
        ):
            setattr(self, name, _CFunction(getattr(self, "_" + name)))

    def _cublasCreate_v2(self, handle_ref):  # noqa: N802 - the C names
        self.handles += 1
        handle_ref._obj.value = self.handles
        return 0

    def _cublasSetStream_v2(self, handle, stream):  # noqa: N802
        assert _CAPTURE is None, "the handle's stream is set outside any capture"
        self.streams[handle.value] = stream
        self.workspaces.pop(handle.value, None)  # as cuBLAS: back to its own workspace
        return 0

    def _cublasSetWorkspace_v2(self, handle, pointer, size):  # noqa: N802
        base = _allocation_of(pointer)
        assert _SIZES[base] - (pointer - base) >= size, "a workspace larger than its buffer"
        self.workspaces[handle.value] = (pointer, size)
        return 0

    def _cublasSetPointerMode_v2(self, handle, mode):  # noqa: N802
        self.pointer_modes[handle.value] = mode
        return 0

    def _cublasGemmEx(
        self,
        handle,
        transa,
        transb,
        m,
        n,
        k,
        alpha,
        A,
        Atype,
        lda,
        B,  # noqa: N802,N803
        Btype,
        ldb,
        beta,
        C,
        Ctype,
        ldc,
        compute_type,
        algo,
    ):
        assert handle.value in self.streams, "cublasGemmEx on a handle with no stream set"
        # Without a workspace of ours, cuBLAS would allocate one while a step is captured.
        assert handle.value in self.workspaces, "cublasGemmEx with cuBLAS's own workspace"
        assert self.pointer_modes[handle.value] == blas.CUBLAS_POINTER_MODE_HOST
        assert Atype == Btype == Ctype == blas.CUDA_R_32F
        scale = ctypes.c_float.from_address(alpha).value  # host mode: read at call time
        keep = ctypes.c_float.from_address(beta).value
        assert (scale, keep) == (1.0, 0.0), "the step's GEMMs overwrite: alpha 1, beta 0"
        assert compute_type in (blas.CUBLAS_COMPUTE_32F, blas.CUBLAS_COMPUTE_32F_FAST_TF32)
        # cuBLAS Library User Guide, cublasComputeType_t: CUBLAS_COMPUTE_32F_FAST_TF32 lets
        # the Tensor Cores compute on TF32 operands (twins.tf32_operand); CUBLAS_COMPUTE_32F
        # is float32 throughout.
        tf32 = compute_type == blas.CUBLAS_COMPUTE_32F_FAST_TF32
        call = GemmCall(transa, transb, m, n, k, "A", lda, "B", ldb, "C", ldc)
        _run(
            lambda: twins.gemm(
                call,
                _array_at(A, np.float32),
                _array_at(B, np.float32),
                _array_at(C, np.float32),
                tf32=tf32,
            )
        )
        return 0


class DriverLibrary:
    """The CUDA driver as ctypes reaches it (kernels/cupy_gpu/driver.py): CUDA Driver API,
    cuGraphGetNodes."""

    def __init__(self):
        self.cuGraphGetNodes = _CFunction(self._cuGraphGetNodes)

    def _cuGraphGetNodes(self, graph, nodes, count_ref):  # noqa: N802 - the C name
        """CUresult cuGraphGetNodes(CUgraph, CUgraphNode*, size_t*): with a null array, the
        count. A null graph is CUDA_ERROR_INVALID_VALUE (1); a destroyed one, undefined."""
        assert nodes is None, "only the count is asked for"
        if not graph:
            return 1
        assert graph in _GRAPHS, f"cuGraphGetNodes on {graph:#x}, a destroyed graph"
        count_ref._obj.value = len(_GRAPHS[graph])
        return 0


def _refused_in_capture(*_):
    """CuPy's own cuBLAS binding (cupy_backends/cuda/libs/cublas.pyx, 13.6 and 14.2): every
    call (gemmEx ...) first runs _setStream, whose setStream raises NotImplementedError while
    the stream is captured (runtime.streamIsCapturing). The executor must not use it."""
    if _CAPTURE is not None:
        raise NotImplementedError(
            "calling cuBLAS API during stream capture is currently unsupported"
        )


cublas = types.SimpleNamespace(
    create=lambda: 1, setStream=_refused_in_capture, gemmEx=_refused_in_capture
)


def _asarray(host):
    """cupy.asarray of a host array: a device copy."""
    array = _allocate(np.shape(host), np.asarray(host).dtype)
    np.copyto(array, host)
    return array


class Generator:
    """cupy.random.default_rng(seed=None) (cupy/random/__init__.py): a Generator
    (cupy/random/_generator_api.pyx) whose standard_normal(size=None, dtype=numpy.float64,
    out=None) fills a new device array; here NumPy's generator draws the numbers."""

    def __init__(self, seed=None):
        self._host = np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=np.float64):
        return _asarray(self._host.standard_normal(size, dtype=dtype))


class _Device:
    """cupy/cuda/device.pyx Device: ``compute_capability`` is a string, '90' for 9.0."""

    id = 0
    compute_capability = "90"


SIMULATED_VERSIONS = ("13.6.0", "14.2.0")  # the CuPy releases whose sources this mirrors


def install(monkeypatch, kernels: str = "twins", version: str = "14.2.0") -> None:
    """Make ``import cupy`` (and cupyx, cupy_backends' cuBLAS) give this module's stand-ins,
    whose kernels are the twins or (``kernels="source"``) the CUDA source run on the host, and
    whose graphs behave as CuPy ``version``'s (13.6.0 or 14.2.0)."""
    assert kernels in ("twins", "source"), kernels
    assert version in SIMULATED_VERSIONS, version
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "KERNELS", kernels)
    monkeypatch.setattr(this, "VERSION", version)
    monkeypatch.setattr(this, "_CAPTURE", None)
    monkeypatch.setattr(this, "_CAPTURE_INVALID", None)
    cupy = types.ModuleType("cupy")
    cupy.__version__ = version
    cupy.RawModule = RawModule
    cupy.zeros = lambda shape, dtype=np.float32: _allocate(shape, dtype)
    cupy.empty = cupy.zeros
    cupy.float32 = np.float32
    cupy.random = types.SimpleNamespace(default_rng=Generator)
    cupy.asarray = _asarray
    # stream.pyx get_elapsed_time(start_event, end_event): milliseconds (1 here: no clock).
    cupy.cuda = types.SimpleNamespace(
        Stream=Stream,
        Event=Event,
        runtime=runtime,
        Device=_Device,
        get_elapsed_time=lambda a, b: 1.0,
    )
    cupyx = types.ModuleType("cupyx")
    # cupyx/_pinned_array.py empty_pinned(shape, dtype=float, order='C'): a NumPy array.
    cupyx.empty_pinned = lambda shape, dtype=np.float32: np.zeros(shape, dtype)
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = cublas
    modules = {
        "cupy": cupy,
        "cupyx": cupyx,
        "cupy_backends": types.ModuleType("cupy_backends"),
        "cupy_backends.cuda": types.ModuleType("cupy_backends.cuda"),
        "cupy_backends.cuda.libs": libs,
    }
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec asks
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(blas, "open_cublas", CublasLibrary)
    monkeypatch.setattr(driver, "open_driver", DriverLibrary)
