"""An executor (``kernels.cupy_gpu.executors.Executor``) that runs the CuPy backend's step
programs on the CPU: each GEMM and kernel launch through its NumPy twin (``twins.py``), which
checks the launch as it runs it. ``capture`` records the ops and ``replay`` reruns them, so
the backend's graph bookkeeping is exercised too. A check, not a benchmark: its times say
nothing about a GPU.
"""

from __future__ import annotations

import time

import numpy as np

from kernels.base import Availability
from kernels.cupy_gpu import CupyBackend
from kernels.cupy_gpu.gemm import plan_gemm
from kernels.cupy_gpu.program import Gemm, Op, resolve

from . import twins


class NumpyExecutor:
    """Runs programs on the CPU with the twins; ``capture`` records, ``replay`` reruns."""

    device = "cpu"
    kind = "NumPy twins of the kernels"

    @staticmethod
    def availability() -> Availability:
        return Availability(True)

    # Kernels sized to the device get the grid of one this small, so that the programs run
    # here make their threads stride over more than one pass.
    multiprocessors = 4
    workspace_bytes = 0  # the twins' GEMMs need none

    def __init__(self, tf32: bool = False):
        if tf32:
            raise ValueError("TF32 exists on NVIDIA GPUs only; the NumPy executor is float32")
        self.captures = 0  # how many graphs were recorded (tests count recaptures)
        self.compile_seconds = 0.0

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        return np.zeros(shape, dtype)

    def upload(self, host: np.ndarray) -> np.ndarray:
        return np.array(host, copy=True)

    def copy_in(self, device: np.ndarray, host: np.ndarray) -> None:
        device[...] = host

    def download(self, device: np.ndarray) -> np.ndarray:
        return np.array(device, copy=True)

    def copy(self, device: np.ndarray) -> np.ndarray:
        return device.copy()

    def assign(self, device: np.ndarray, source: np.ndarray) -> None:
        device[...] = source

    def run(self, ops: list[Op], buffers: dict) -> None:
        for op in ops:
            if isinstance(op, Gemm):
                c = op.call
                twins.gemm(c, buffers[c.a], buffers[c.b], buffers[c.c])
            else:
                args = [resolve(a, buffers, None) for a in op.args]
                args = [a.reshape(-1) if isinstance(a, np.ndarray) else a for a in args]
                twins.KERNELS[op.kernel](op.geometry, *args)

    def capture(self, ops: list[Op], buffers: dict):
        self.captures += 1
        return (list(ops), dict(buffers))

    def replay(self, graph) -> None:
        self.run(*graph)

    def graph_nodes(self, graph) -> int:
        return len(graph[0])

    def synchronize(self) -> None:
        pass

    def describe(self) -> dict:
        return {"executor": "numpy twins of the CUDA kernels (a CPU check, not a benchmark)"}

    def device_name(self) -> str:
        return f"the host CPU ({self.kind})"

    def gemm_peak(self, size: int = 8192, repeats: int = 10) -> tuple[float, str]:
        """Best GFLOP/s of a (size x size) product through the GEMMs' twin, as this executor
        runs the step's GEMMs."""
        call = plan_gemm("c", "a", "a", {"a": (size, size), "c": (size, size)})
        a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
        c = np.zeros_like(a)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            twins.gemm(call, a, a, c)
            best = min(best, time.perf_counter() - start)
        return call.flops / best / 1e9, f"{size}x{size} float32 GEMM via the twin (NumPy's BLAS)"


def emulated_backend(**options) -> CupyBackend:
    """The CuPy backend on the NumPy executor (``graph=``, ``tf32=`` as the backend takes)."""
    return CupyBackend(NumpyExecutor, **options)
