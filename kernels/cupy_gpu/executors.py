"""Who runs a step program (``program.py``): what an executor must do (``Executor``), and the
one that runs on a GPU (``CudaExecutor``). The backend is given an executor type and never
asks which it holds; the tests give one that runs the same ops on the CPU.

The CUDA executor launches each fused kernel from ``vae_kernels.cu`` (compiled once by NVRTC)
and each GEMM as one cublasGemmEx on its own stream and cuBLAS handle (``blas.py``: through
ctypes, since CuPy's binding refuses cuBLAS calls during capture); ``capture`` records a
program into a CUDA Graph (nothing runs until ``replay``) through CUDA's runtime calls as CuPy
exposes them, not through CuPy's ``Stream.begin_capture``/``end_capture`` (see ``capture``).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import Any, ClassVar, Protocol

import numpy as np

from ..base import Availability
from .gemm import GemmCall, plan_gemm
from .launch import COMPILE_OPTIONS, Geometry, kernel_signatures, kernel_source
from .program import Gemm, Launch, Op, resolve


def cuda_availability() -> Availability:
    """Whether CuPy and a CUDA device are usable here, and if not, why. Never raises."""
    if importlib.util.find_spec("cupy") is None:
        return Availability(
            False,
            "CuPy is not installed (pip install cupy-cuda12x or "
            "cupy-cuda13x, matching the CUDA driver)",
        )
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CuPy raises its own error types for each driver problem
        return Availability(
            False,
            f"no usable CUDA device ({type(error).__name__}: {str(error).strip() or 'no detail'})",
        )
    if count == 0:
        return Availability(False, "no CUDA device visible")
    return Availability(True)


class Executor(Protocol):
    """Runs step programs over named device buffers. The backend holds the type and makes one
    (``Executor(tf32=...)``) on first need; arrays are whatever the executor allocates. The
    backend measures its stage breakdown and launch floor only on a "cuda" executor, which
    also has ``seconds_per_graph_node`` (``CudaExecutor``)."""

    device: ClassVar[str]  # "cuda", or "cpu" for a stand-in that runs on the host
    kind: ClassVar[str]  # what runs the kernels, in a few words (for descriptions)
    multiprocessors: int  # sizes the grids of kernels sized to the device (Adam)
    compile_seconds: float  # making it: NVRTC, or CuPy's disk cache
    workspace_bytes: int  # device memory it holds for itself (cuBLAS's workspace)

    @staticmethod
    def availability() -> Availability:
        """Whether it can run here, and if not, why. Cheap; never raises."""

    def __init__(self, tf32: bool = False) -> None: ...
    def zeros(self, shape, dtype=np.float32) -> Any: ...
    def upload(self, host: np.ndarray) -> Any: ...
    def copy_in(self, device, host: np.ndarray) -> None: ...  # ordered, may return early
    def download(self, device) -> np.ndarray: ...  # waits for the queued work
    def copy(self, device) -> Any: ...
    def assign(self, device, source) -> None: ...
    def run(self, ops: list[Op], buffers: dict) -> None: ...
    def capture(self, ops: list[Op], buffers: dict) -> Any:
        """The program recorded (nothing runs) for ``replay``; holds the buffers' addresses."""

    def replay(self, graph) -> None: ...
    def graph_nodes(self, graph) -> int: ...
    def synchronize(self) -> None: ...
    def describe(self) -> dict: ...  # what a results table records about it
    def device_name(self) -> str: ...  # kernels.base.DeviceInfo, for the backend
    def gemm_peak(self, size: int, repeats: int) -> tuple[float, str]: ...  # the same


def _device_property(name: str):
    """A property of the current CUDA device (runtime.getDeviceProperties, CuPy 13 and 14)."""
    import cupy

    return cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)[name]


def gpu_name() -> str:
    """The current CUDA device's name, through CuPy."""
    name = _device_property("name")
    return name.decode() if isinstance(name, bytes) else str(name)


class CapturedGraph:
    """A captured program, instantiated (cudaGraphExec_t): what a replay launches, and how many
    nodes the captured graph held (None, with the reason, where the driver could not say).
    The executable graph is destroyed when this object is released or collected; CUDA frees
    it only once any launch of it still in flight has finished (cudaGraphExecDestroy)."""

    def __init__(self, runtime, executable: int, nodes: int | None, nodes_error: str | None):
        self._runtime = runtime
        self.executable = executable
        self.nodes = nodes
        self.nodes_error = nodes_error

    def launch(self, stream: int) -> None:
        if not self.executable:
            raise RuntimeError("launch of a released CUDA graph")
        self._runtime.graphLaunch(self.executable, stream)

    def release(self) -> None:
        executable, self.executable = self.executable, 0
        if executable:
            self._runtime.graphExecDestroy(executable)

    def __del__(self):
        if not sys.is_finalizing():  # at exit the CUDA context may be gone before us
            self.release()


def _count_nodes(graph: int) -> tuple[int | None, str | None]:
    """(nodes in the cudaGraph_t ``graph``, None), or (None, why not): a count is a
    diagnostic, and a driver that cannot give it must not cost the graph."""
    from .driver import DriverError, graph_node_count

    try:
        return graph_node_count(graph), None
    except DriverError as error:
        return None, str(error)


def _add_note(error: BaseException, note: str) -> None:
    """``note`` shown under ``error``'s message (Python 3.11+; before, in its arguments)."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:  # pragma: no cover - Python 3.10
        error.args = (*error.args, note)


class CudaExecutor:
    """Runs programs on the current CUDA device through CuPy."""

    device = "cuda"
    kind = "CUDA through CuPy"
    availability = staticmethod(cuda_availability)

    PINNED_SLOTS = 4  # host staging buffers in flight (indices, noise) before the host waits
    LARGE_COPY = 4 << 20  # bytes; larger copies (data sets) go synchronously, unstaged

    def __init__(self, tf32: bool = False):
        import cupy
        import cupyx

        from .blas import CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32, WORKSPACE_BYTES, Cublas

        self.cp, self.cupyx = cupy, cupyx
        self.tf32 = tf32
        self.multiprocessors = int(_device_property("multiProcessorCount"))  # sizes Adam's grid
        self.stream = cupy.cuda.Stream(non_blocking=True)
        started = time.perf_counter()
        source = kernel_source()
        module = cupy.RawModule(code=source, options=COMPILE_OPTIONS)
        # Every kernel the source defines: the .cu file is the one list of them.
        self.kernels = {name: module.get_function(name) for name in kernel_signatures(source)}
        self.compile_seconds = time.perf_counter() - started  # NVRTC, or CuPy's disk cache
        # Our own cuBLAS handle on our own stream, called through ctypes (blas.py: CuPy's
        # binding refuses calls during capture), so the GEMMs are captured with the kernels.
        with self.stream:
            self._blas_workspace = cupy.empty(WORKSPACE_BYTES, np.uint8)
        self.workspace_bytes = WORKSPACE_BYTES
        self.blas = Cublas(self.stream.ptr, self._blas_workspace.data.ptr, WORKSPACE_BYTES)
        # TF32 off unless asked: float32 products, so the agreement gate's tolerances hold.
        self.compute_type = CUBLAS_COMPUTE_32F_FAST_TF32 if tf32 else CUBLAS_COMPUTE_32F
        self._alpha = np.ones(1, np.float32)  # host scalars: read by cuBLAS at call (capture) time
        self._beta = np.zeros(1, np.float32)
        self._slots: list[tuple[np.ndarray, object]] = []
        self._next_slot = 0

    def zeros(self, shape, dtype=np.float32):
        with self.stream:
            return self.cp.zeros(shape, dtype)

    def upload(self, host: np.ndarray):
        with self.stream:
            device = self.cp.asarray(host)
        self.stream.synchronize()
        return device

    def copy_in(self, device, host: np.ndarray) -> None:
        """Asynchronous host-to-device copy through a pinned staging slot: the caller may
        reuse ``host`` at once, and the copy is ordered before later work on the stream."""
        host = np.ascontiguousarray(host, dtype=device.dtype)
        if host.nbytes != device.nbytes:
            raise ValueError(f"copy of {host.nbytes} bytes into a buffer of {device.nbytes}")
        if host.nbytes > self.LARGE_COPY:
            device.set(host, stream=self.stream)  # a data set: staged by CuPy, then waited on
            self.stream.synchronize()
            return
        pinned, done = self._slot(host.nbytes)
        done.synchronize()  # the copy that last used this slot has finished
        pinned[: host.nbytes] = host.view(np.uint8).reshape(-1)
        runtime = self.cp.cuda.runtime
        runtime.memcpyAsync(
            device.data.ptr,
            pinned.ctypes.data,
            host.nbytes,
            runtime.memcpyHostToDevice,
            self.stream.ptr,
        )
        done.record(self.stream)

    def _slot(self, nbytes: int):
        if not self._slots:
            self._slots = [
                (None, self.cp.cuda.Event(disable_timing=True)) for _ in range(self.PINNED_SLOTS)
            ]
        i = self._next_slot
        self._next_slot = (i + 1) % self.PINNED_SLOTS
        pinned, done = self._slots[i]
        if pinned is None or pinned.nbytes < nbytes:
            done.synchronize()
            pinned = self.cupyx.empty_pinned(max(nbytes, 1 << 16), np.uint8)
            self._slots[i] = (pinned, done)
        return pinned, done

    def download(self, device) -> np.ndarray:
        self.stream.synchronize()
        return device.get(stream=self.stream)

    # Device-to-device work goes on the executor's stream too: it is non-blocking, so work on
    # CuPy's default stream would not be ordered with the steps queued on it.
    def copy(self, device):
        with self.stream:
            return device.copy()

    def assign(self, device, source) -> None:
        with self.stream:
            device[...] = source

    def _gemm(self, call: GemmCall, buffers: dict) -> None:
        a, b, c = buffers[call.a], buffers[call.b], buffers[call.c]
        self.blas.gemm(
            call,
            a.data.ptr,
            b.data.ptr,
            c.data.ptr,
            self._alpha.ctypes.data,
            self._beta.ctypes.data,
            self.compute_type,
        )

    def run(self, ops: list[Op], buffers: dict) -> None:
        null = np.uint64(0)  # a null pointer argument: eight zero bytes
        with self.stream:
            for op in ops:
                if isinstance(op, Gemm):
                    self._gemm(op.call, buffers)
                else:
                    args = tuple(resolve(a, buffers, null) for a in op.args)
                    self.kernels[op.kernel](op.geometry.grid, op.geometry.block, args)

    def capture(self, ops: list[Op], buffers: dict) -> CapturedGraph:
        """Record ``ops`` as a CUDA Graph (nothing executes) and instantiate it. The graph holds
        the buffers' addresses: the caller must keep them alive and unchanged while it replays.

        The capture is ours, through the runtime calls CuPy 13 and 14 both expose
        (cupy_backends/cuda/api/runtime.pyx: streamBeginCapture, streamEndCapture,
        graphInstantiate, graphDestroy), rather than CuPy's Stream.end_capture: CuPy 13's Graph
        (cupy/cuda/graph.pyx, Graph._init) destroys the cudaGraph_t as soon as it is
        instantiated and keeps 0 in its place, so its nodes can no longer be counted; CuPy 14
        keeps it. Here the nodes are counted before the graph is destroyed, on both. If the
        program fails while being captured, that error is the one raised, never the error of
        ending the broken capture (which is added to it as a note)."""
        runtime = self.cp.cuda.runtime
        stream = self.stream.ptr
        # Relaxed, as CuPy's Stream.begin_capture defaults to (cupy/cuda/stream.pyx): another
        # thread's cudaMalloc (a memory pool growing) must not invalidate this capture.
        runtime.streamBeginCapture(stream, runtime.streamCaptureModeRelaxed)
        try:
            self.run(ops, buffers)
        except BaseException as error:
            self._abandon_capture(stream, error)
            raise
        graph = runtime.streamEndCapture(stream)
        try:
            nodes, nodes_error = _count_nodes(graph)
            executable = runtime.graphInstantiate(graph)
        finally:
            runtime.graphDestroy(graph)  # the executable graph is all a replay needs
        return CapturedGraph(runtime, executable, nodes, nodes_error)

    def _abandon_capture(self, stream: int, error: BaseException) -> None:
        """End the capture that ``error`` interrupted, so the stream can be used again, and
        destroy any graph it left. ``error`` stays the error raised: CUDA fails the end of a
        capture that an error invalidated (cudaErrorStreamCaptureInvalidated), and that second
        error says nothing about the first."""
        runtime = self.cp.cuda.runtime
        try:
            graph = runtime.streamEndCapture(stream)
            if graph:
                runtime.graphDestroy(graph)
        except Exception as ending:  # noqa: BLE001 - any failure here is secondary
            _add_note(
                error,
                f"ending the interrupted capture also failed: {type(ending).__name__}: {ending}",
            )

    def replay(self, graph: CapturedGraph) -> None:
        graph.launch(self.stream.ptr)

    def graph_nodes(self, graph: CapturedGraph) -> int:
        """Nodes in a captured graph, as the driver counted them when it was captured."""
        from .driver import DriverError

        if graph.nodes is None:
            raise DriverError(f"the graph's nodes could not be counted: {graph.nodes_error}")
        return graph.nodes

    def synchronize(self) -> None:
        self.stream.synchronize()

    def seconds_per_graph_node(self, nodes: int = 200, repeats: int = 20) -> float:
        """The replay cost of one empty kernel node in a graph of ``nodes``: the floor under a
        replayed step of N kernels is N times this."""
        empty = Launch("empty_kernel", Geometry((1, 1, 1), (1, 1, 1)), ())
        graph = self.capture([empty] * nodes, {})
        self.replay(graph)
        self.stream.synchronize()
        start, stop = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record(self.stream)
        for _ in range(repeats):
            self.replay(graph)
        stop.record(self.stream)
        stop.synchronize()
        graph.release()
        return self.cp.cuda.get_elapsed_time(start, stop) / 1e3 / (repeats * nodes)

    def device_name(self) -> str:
        return gpu_name()

    def gemm_peak(self, size: int = 8192, repeats: int = 10) -> tuple[float, str]:
        """Best GFLOP/s of a (size x size) float32 product run as the step's GEMMs run:
        cublasGemmEx on this executor's handle, stream and workspace, with its compute type
        (TF32 only when asked for). Each product is timed alone between CUDA events, after
        one untimed (cuBLAS chooses its kernel)."""
        cp = self.cp
        call = plan_gemm("c", "a", "a", {"a": (size, size), "c": (size, size)})
        with self.stream:
            buffers = {
                "a": cp.random.default_rng(0).standard_normal((size, size), dtype=np.float32),
                "c": cp.zeros((size, size), np.float32),
            }
        self._gemm(call, buffers)
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        best = float("inf")
        for _ in range(repeats):
            start.record(self.stream)
            self._gemm(call, buffers)
            stop.record(self.stream)
            stop.synchronize()
            best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
        return (
            call.flops / best / 1e9,
            f"{size}x{size} float32 GEMM via cuBLAS (cublasGemmEx, as the backend calls it), "
            + ("TF32" if self.tf32 else "TF32 off"),
        )

    def describe(self) -> dict:
        cp = self.cp
        return {
            "executor": "cuda",
            "gpu": gpu_name(),
            "compute_capability": cp.cuda.Device().compute_capability,
            "cupy": cp.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cp.cuda.runtime.driverGetVersion(),
            "tf32": self.tf32,
            "multiprocessors": self.multiprocessors,
        }
