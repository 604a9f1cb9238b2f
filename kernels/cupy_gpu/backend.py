"""The CuPy GPU backend: the reference VAE as fused CUDA kernels + cuBLAS GEMMs, trained
entirely on the device, each step replayed from one captured CUDA Graph.

State lives on the device: parameters, gradients and Adam's moments in four flat buffers
(``flat_layout``, 256-byte aligned groups; tensors are views), the data set (uploaded once per
array passed in), per-batch-size workspaces and the step counter. A training step copies
only the batch's indices (and noise, when given) to the device; noise drawn by the backend is
generated inside the step by Philox. Everything a step does is one program (``program.py``)
that an executor runs. The executor is given, as a type (``executors.Executor``): the registry
gives ``CudaExecutor``; the tests give a stand-in that runs the same programs on the CPU.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from vae_ref import VAEConfig
from vae_ref.evaluate import EvalResult
from vae_ref.params import Params

from ..base import Availability, BackendUnavailable, BatchLoss, StepOutputs
from ..flat_layout import make_layout
from ..fused_buffers import split_heads, step_outputs
from ..inputs import (
    checked_images,
    checked_indices,
    checked_noise,
    decode_on_host,
    evaluate_in_batches,
)
from . import program
from .executors import Executor

GPU_ALIGN = 64  # floats: 256 bytes, cuBLAS's preferred operand alignment


class CupyBackend:
    """``executor``: the executor type (``CudaExecutor``, or a CPU stand-in), made on first
    need with ``tf32``; it says where the backend computes and whether it can run here."""

    def __init__(self, executor: type[Executor], *, graph: bool = True, tf32: bool = False):
        self.executor_type = executor
        self.graph = graph
        self.tf32 = tf32
        self.device = executor.device
        stand_in = self.device != "cuda"
        suffix = "-tf32" if tf32 else "" if graph else "-nograph"
        self.name = "cupy" + suffix + ("-emulated" if stand_in else "")
        self.description = (
            "CuPy: fused CUDA kernels + cuBLAS, "
            + ("step replayed as one CUDA Graph" if graph else "kernels launched one by one")
            + (", TF32 GEMMs" if tf32 else ", float32 GEMMs (TF32 off)")
            + (f" [{executor.kind}: a CPU check]" if stand_in else "")
        )
        self.executor = None
        self.compile_seconds: float | None = None

    @property
    def gemm_inputs(self) -> str:
        """MixedPrecision: cupy-tf32's GEMMs read TF32 operands (CUBLAS_COMPUTE_32F_FAST_TF32),
        so its gate is calibrated by the reference with TF32 GEMM inputs; the others'
        compute in float32."""
        return "tf32" if self.tf32 else "float32"

    def availability(self) -> Availability:
        return self.executor_type.availability()

    # -- setup ---------------------------------------------------------------------------

    def _started(self) -> Executor:
        """The executor, made (and its kernels compiled) on first need."""
        if self.executor is None:
            status = self.availability()
            if not status.available:
                raise BackendUnavailable(f"{self.name} backend unavailable: {status.reason}")
            self.executor = self.executor_type(tf32=self.tf32)
            self.compile_seconds = self.executor.compile_seconds
        return self.executor

    def load(self, config: VAEConfig, params: Params) -> None:
        ex = self._started()
        self.config = config
        self.layout = make_layout(config, align=GPU_ALIGN)
        self.flat = {
            "params": ex.upload(self.layout.pack(params, config)),
            "grads": ex.zeros(self.layout.size),
            "m": ex.zeros(self.layout.size),
            "v": ex.zeros(self.layout.size),
            "step": ex.zeros(1, np.uint32),
        }
        self._views = program.parameter_buffers(
            self.layout, self.flat["params"], self.flat["grads"]
        )
        self._workspaces: dict[int, dict] = {}
        self._shared: dict[str, object] = {}  # data and the epoch's buffers, by name
        self._epoch: dict[str, object] = {}  # order, cursor, history: train_epoch's buffers
        self._graphs: dict[tuple, object] = {}
        self._data_host: np.ndarray | None = None  # the array whose copy is resident
        self._data = None
        self._programs: dict[tuple, list] = {}

    def _buffers(self, batch: int) -> dict:
        """Every buffer a program of this batch size names. Built once per batch size; a new
        data set or epoch buffer is written into every map when it is made (``_shared``), so
        a step only looks its map up: host overhead counts at small batch sizes."""
        buffers = self._workspaces.get(batch)
        if buffers is None:
            shapes = program.workspace_shapes(self.config, batch, self.executor.multiprocessors)
            buffers = {
                name: self.executor.zeros(shape, dtype) for name, (shape, dtype) in shapes.items()
            }
            buffers |= {**self._views, **self.flat, **self._shared}
            self._workspaces[batch] = buffers
        return buffers

    def _share(self, **buffers) -> None:
        """Buffers every program may name (the data set, the epoch's), in every map."""
        self._shared |= buffers
        for existing in self._workspaces.values():
            existing |= buffers

    def _program(
        self, kind: str, batch: int, generate_noise: bool = False, epoch_stride: int | None = None
    ) -> list:
        key = (kind, batch, generate_noise, epoch_stride)
        ops = self._programs.get(key)
        if ops is None:
            c, lay, mp = self.config, self.layout, self.executor.multiprocessors
            ops = {
                "train": lambda: program.train_step_ops(
                    c,
                    lay,
                    batch,
                    generate_noise=generate_noise,
                    multiprocessors=mp,
                    epoch_stride=epoch_stride,
                ),
                "forward": lambda: program.forward_ops(c, lay, batch),
                "forward_backward": lambda: (
                    program.forward_ops(c, lay, batch)
                    + program.backward_ops(c, lay, batch, multiprocessors=mp)
                ),
            }[kind]()
            self._programs[key] = ops
        return ops

    def params(self) -> Params:
        return self.layout.unpack(self.executor.download(self.flat["params"]))

    # -- input checks (compiled kernels check nothing) ------------------------------------

    def _images(self, x: np.ndarray) -> np.ndarray:
        return checked_images(x, self.config.input_dim)

    def _noise(self, batch: int, eps: np.ndarray) -> np.ndarray:
        return checked_noise(eps, batch, self.config.latent_dim)

    def _resident(self, data: np.ndarray) -> None:
        """Keep ``data`` on the device: uploaded when a different array is passed. Graphs
        hold the old copy's address, so they are dropped with it."""
        if data is self._data_host:
            return
        checked = self._images(data)
        if self._data is not None and self._data.shape == checked.shape:
            # Same shape (e.g. a freshly binarized batch each step): overwrite in place, so
            # the captured graphs, which hold this buffer's address, stay valid.
            self.executor.copy_in(self._data, checked)
        else:
            self._data = self.executor.upload(checked)
            self._share(data=self._data)
            self._graphs.clear()
        self._data_host = data

    # -- computation -----------------------------------------------------------------------

    def forward_backward(self, x: np.ndarray, eps: np.ndarray) -> StepOutputs:
        x = self._images(x)
        eps = self._noise(len(x), eps)
        b = len(x)
        buffers = self._buffers(b)
        ex = self.executor
        ex.copy_in(buffers["xb"], x)
        ex.copy_in(buffers["eps"], eps)
        ex.run(self._program("forward_backward", b), buffers)
        host = {
            name: ex.download(buffers[name])
            for name in ("bce", "kl", "h", "heads", "z", "dech", "logits")
        }
        grads = self.layout.unpack(ex.download(self.flat["grads"]))
        return step_outputs(host, self.config.latent_dim, self.config.beta, grads)

    def train_step(
        self,
        data: np.ndarray,
        indices: np.ndarray,
        eps: np.ndarray | None = None,
        *,
        want_loss: bool = True,
    ) -> BatchLoss | None:
        self._resident(data)
        indices = checked_indices(indices, len(data))
        b = len(indices)
        buffers = self._buffers(b)
        ex = self.executor
        ex.copy_in(buffers["indices"], indices)
        generate = eps is None
        if not generate:
            ex.copy_in(buffers["eps"], self._noise(b, eps))
        self._step(buffers, b, generate, None)
        if not want_loss:
            return None
        return BatchLoss(*(float(v) for v in ex.download(buffers["loss"])))

    def train_epoch(self, data: np.ndarray, order: np.ndarray, batch_size: int) -> np.ndarray:
        """One epoch: the batches order[0:B], order[B:2B], ... (the last may be shorter), each
        one Adam step drawing its own noise. The permutation goes to the device once and every
        step gathers its batch there (a device-side batch cursor), so the epoch is the same
        graph replayed with no copy and no wait between steps. Returns each step's
        (reconstruction, KL, loss), read once at the end."""
        self._resident(data)
        order = checked_indices(order, len(data), "order")
        if int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        full, rest = divmod(len(order), batch_size)
        steps = full + (rest > 0)
        self._epoch_buffers(len(order), steps)
        ex = self.executor
        ex.copy_in(self._epoch["order"], order)
        ex.copy_in(self._epoch["cursor"], np.zeros(1, np.uint32))
        buffers = self._buffers(batch_size)
        for _ in range(full):
            self._step(buffers, batch_size, True, batch_size)
        if rest:
            self._step(self._buffers(rest), rest, True, batch_size)
        return ex.download(self._epoch["history"])

    def _epoch_buffers(self, n: int, steps: int) -> None:
        """The permutation, batch cursor and loss history on the device; new ones (so new
        graphs, which hold their addresses) only when the epoch's shape changes."""
        current = self._epoch.get("order")
        if (
            current is not None
            and current.shape == (n,)
            and self._epoch["history"].shape == (steps, 3)
        ):
            return
        ex = self.executor
        self._epoch = {
            "order": ex.zeros(n, np.int64),
            "cursor": ex.zeros(1, np.uint32),
            "history": ex.zeros((steps, 3), np.float64),
        }
        self._share(**self._epoch)
        self._graphs.clear()

    def _step(self, buffers: dict, batch: int, generate: bool, epoch_stride: int | None) -> None:
        """Run one training step program on ``buffers`` (this batch size's): replay its
        graph, or launch it op by op."""
        ops = self._program("train", batch, generate, epoch_stride)
        if self.graph:
            self.executor.replay(self._graph((batch, generate, epoch_stride), ops, buffers))
        else:
            self.executor.run(ops, buffers)

    def _graph(self, key: tuple, ops: list, buffers: dict):
        """The captured step for this key (batch size, noise mode, epoch stride), captured on
        first use after one plain run of the same ops on a copy of the state (that run loads
        every kernel and lets cuBLAS settle its choices outside the capture); the state is
        then restored."""
        graph = self._graphs.get(key)
        if graph is None:
            with self._state_restored():
                self.executor.run(ops, buffers)
            graph = self.executor.capture(ops, buffers)
            self._graphs[key] = graph
        return graph

    @contextmanager
    def _state_restored(self):
        """Whatever runs inside leaves no trace in the state that persists between steps
        (weights, gradients, moments, step counter, batch cursor and loss history)."""
        ex = self.executor
        state = {**self.flat, **self._epoch}
        saved = {name: ex.copy(array) for name, array in state.items()}
        try:
            yield
        finally:
            for name, array in saved.items():
                ex.assign(state[name], array)

    def _forward(self, x: np.ndarray, eps: np.ndarray) -> dict:
        """The forward pass alone (no backward, no update) on checked images and noise; its
        buffers, holding the results."""
        buffers = self._buffers(len(x))
        self.executor.copy_in(buffers["xb"], x)
        self.executor.copy_in(buffers["eps"], eps)
        self.executor.run(self._program("forward", len(x)), buffers)
        return buffers

    def evaluate(self, x: np.ndarray, *, seed: int = 0, batch_size: int = 1000) -> EvalResult:
        def terms(xb: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            buffers = self._forward(xb, eps)
            return (self.executor.download(buffers["bce"]), self.executor.download(buffers["kl"]))

        # The same noise stream, and the same float64 sums, as every compiled backend's.
        return evaluate_in_batches(
            terms, self._images(x), self.config.latent_dim, seed=seed, batch_size=batch_size
        )

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self._images(x)
        buffers = self._forward(x, np.zeros((len(x), self.config.latent_dim), np.float32))
        return split_heads(self.executor.download(buffers["heads"]), self.config.latent_dim)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return decode_on_host(self.params(), z)

    # -- timing aids ---------------------------------------------------------------------------

    def kernels_per_step(self, batch: int) -> dict[str, int]:
        """Launches in one training step: fused kernels and GEMMs (a GEMM may be more than one
        kernel inside cuBLAS, so this is a lower bound on graph nodes)."""
        ops = self._program("train", batch, True)
        return {"fused kernels": len(program.launches(ops)), "gemms": len(program.gemm_calls(ops))}

    def stage_times(
        self, data: np.ndarray, batch: int, repeats: int = 20, replays: int = 20
    ) -> dict[str, float]:
        """Median seconds per step of the whole step and of its parts (the GEMMs, the fused
        kernels, Adam), each part captured as its own graph (launched op by op for
        ``cupy-nograph``) and run ``replays`` times between synchronizations, parts
        interleaved. CUDA only (the twins' times say nothing about a GPU); the state is
        restored afterwards."""
        if self.device != "cuda":
            return {}
        return self._stage_times(data, batch, repeats, replays)

    def _stage_times(
        self, data: np.ndarray, batch: int, repeats: int, replays: int
    ) -> dict[str, float]:
        from ..timing import interleaved_times

        self._resident(data)
        ex = self.executor
        buffers = self._buffers(batch)
        ex.copy_in(buffers["indices"], np.arange(batch, dtype=np.int64) % len(data))
        ops = self._program("train", batch, True)
        fused = program.launches(ops)
        adam = program.ADAM_KERNELS
        parts = {
            "step": ops,
            "gemms": [op for op in ops if isinstance(op, program.Gemm)],
            "fused kernels": [op for op in fused if op.kernel not in adam],
            "adam": [op for op in fused if op.kernel in adam],
        }

        def runner(part):
            if not self.graph:

                def run_plain():
                    for _ in range(replays):
                        ex.run(part, buffers)
                    ex.synchronize()

                return run_plain
            ex.run(part, buffers)  # outside the capture: every kernel loaded
            graph = ex.capture(part, buffers)

            def replay():
                for _ in range(replays):
                    ex.replay(graph)
                ex.synchronize()

            return replay

        with self._state_restored():
            times = interleaved_times({name: runner(part) for name, part in parts.items()}, repeats)
        return {name: float(np.median(t)) / replays for name, t in times.items()}

    def launch_floor(self, batch: int) -> dict[str, float]:
        """The step's floor set by launch latency: the nodes of its captured graph (the
        program's launches where none is captured yet, or for ``cupy-nograph``) times the
        measured cost of one empty graph node (CUDA only; seconds)."""
        if self.device != "cuda":
            return {}
        launches = sum(self.kernels_per_step(batch).values())
        captured = next((graph for key, graph in self._graphs.items() if key[0] == batch), None)
        nodes = launches if captured is None else self.executor.graph_nodes(captured)
        per_node = self.executor.seconds_per_graph_node()
        return {
            "nodes": nodes,
            "launches": launches,
            "seconds_per_node": per_node,
            "floor_seconds": nodes * per_node,
        }

    # -- the device it computes on (DeviceInfo) ---------------------------------------------

    def device_name(self) -> str:
        return self._started().device_name()

    def gemm_peak(self, size: int = 8192, repeats: int = 10) -> tuple[float, str]:
        """Best GFLOP/s of a large float32 GEMM run as this backend runs its GEMMs (its
        executor's, with TF32 only for ``cupy-tf32``), and how it was measured."""
        return self._started().gemm_peak(size, repeats)

    def peak_memory_bytes(self, data: np.ndarray, batch: int) -> int:
        """Device memory a training step at ``batch`` holds: the flat buffers (parameters,
        gradients, Adam's moments, the step counter), the batch's workspaces, the epoch's
        buffers and cuBLAS's workspace. All are allocated before the first step and a
        captured step allocates nothing (cuBLAS has its own workspace; the graph has no memory
        nodes), so this is the allocator's peak over the step, less the resident data set,
        which every step reads and none holds for itself (on a GPU: unverified, see the
        README)."""
        self._resident(data)
        views = {id(v) for v in self._views.values()}  # into the flat buffers: counted there
        held = {
            id(b): b
            for b in self._buffers(batch).values()
            if id(b) not in views and b is not self._data
        }
        return sum(int(b.nbytes) for b in held.values()) + self.executor.workspace_bytes

    def synchronize(self) -> None:
        if self.executor is not None:
            self.executor.synchronize()

    def settings(self) -> dict:
        described = self.executor.describe() if self.executor is not None else {}
        return {
            "graph": self.graph,
            "tf32": self.tf32,
            "compile_seconds": self.compile_seconds,
            **described,
        }
