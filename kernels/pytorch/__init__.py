"""PyTorch as a backend, the reference's model trained by PyTorch itself: what users would
pick instead of a fused kernel (the reference, the truth, is vae_ref/).

Three configurations: eager with Adam's default implementation ("torch"), eager with
``Adam(fused=True)`` ("torch-fused-adam"), and ``torch.compile`` of the same model and loss with
the fused Adam ("torch-compile"). With ``device="cuda"`` the same run on a GPU ("torch-cuda",
"torch-cuda-compile"): the baselines a GPU backend is timed against. With ``autocast_bf16``
the model's forward runs under ``torch.autocast(dtype=torch.bfloat16)`` ("torch-bf16",
"torch-compile-bf16"): the mixed precision a PyTorch user would pick on a CPU with AMX.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from vae_ref import ForwardPass, VAEConfig, build_model, import_params, loss_terms
from vae_ref.config import ADAM_BETAS, ADAM_EPS
from vae_ref.evaluate import EvalResult, evaluate_elbo
from vae_ref.oracle import INTERMEDIATES
from vae_ref.params import Params, export_params

from ..base import Availability, BackendFailed, BackendUnavailable, BatchLoss, StepOutputs
from ..inputs import checked_indices
from ..timing import best_seconds, interleaved_times


def _names(
    device: str, compile: bool, fused_adam: bool, autocast_bf16: bool = False
) -> tuple[str, str]:
    """The registry name and one-line description of a configuration."""
    if autocast_bf16:
        name, description = _names(device, compile, fused_adam)
        return (
            f"{name}-bf16",
            f"{description}, forward under autocast bf16 (float32 loss and master weights)",
        )
    if device == "cuda":
        if compile:
            return (
                "torch-cuda-compile",
                "torch.compile(mode='reduce-overhead') on CUDA, Adam(fused=True)",
            )
        if fused_adam:
            return "torch-cuda-fused-adam", "PyTorch eager on CUDA, Adam(fused=True)"
        return "torch-cuda", "PyTorch eager on CUDA, default Adam"
    if compile:
        return "torch-compile", "PyTorch torch.compile, Adam(fused=True)"
    if fused_adam:
        return "torch-fused-adam", "PyTorch eager, Adam(fused=True)"
    return "torch", "PyTorch eager, default Adam (the reference)"


def _cuda_unavailable_reason() -> str | None:
    """Why this process cannot use CUDA through torch, or None if it can."""
    try:
        if torch.version.cuda is None:
            return (
                "this torch build has no CUDA (torch.version.cuda is None); "
                "install a CUDA build of torch"
            )
        if not torch.cuda.is_available():
            return "no CUDA device visible (torch.cuda.is_available() is False)"
    except Exception as error:  # noqa: BLE001  availability never raises
        return f"CUDA unusable: {error}"
    return None


# torch.compile keeps one compiled variant per input shape (dynamic=False: every batch size
# its own kernels, torch.compile's best case), shared by every model of those shapes in the
# process (parameters are graph inputs), so a run needs one per (latent size, batch shape):
# the gate's, each timed batch size, an epoch's last, shorter batch. Dynamo's default of 8
# per function is soon reached, and past it dynamo silently runs the function eagerly: a
# torch-compile row would time eager PyTorch. Hence a limit above any sweep here (7 latent
# sizes x 6 batch sizes and the rest), and an error instead of the fallback. Many variants
# cost a steady loop nothing: dynamo moves the variant that matched to the front.
RECOMPILE_LIMIT = 256


def _set_dynamo_limits() -> None:
    import torch._dynamo.config as dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # one setting, renamed in torch 2.6
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), RECOMPILE_LIMIT))
    for name in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, True)


def _limit_errors() -> tuple[type[BaseException], ...]:
    """What dynamo raises at the limit once told to fail there (named by torch version; none
    in versions without the setting)."""
    import torch._dynamo.exc as dynamo_exc

    names = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")
    return tuple(getattr(dynamo_exc, n) for n in names if hasattr(dynamo_exc, n))


class _AutocastForward(torch.nn.Module):
    """A reference model whose forward runs under ``torch.autocast`` in bf16, as PyTorch's
    mixed-precision recipe has it (torch.amp docs: the forward pass and loss under autocast,
    the backward outside it, float32 master weights). Autocast computes each ``linear`` on
    bf16 casts of its input and weight (aten/src/ATen/autocast_mode.cpp: ``linear`` is in
    the CPU's lower-precision list) and returns bf16, so the elementwise ops between GEMMs
    run in bf16 too; the intermediates come back as float32 and the loss is computed from
    them in float32 (a bf16 loss over 784 pixels would be off by nats)."""

    def __init__(self, model: torch.nn.Module, device_type: str):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.device_type = device_type

    def _autocast(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def forward(self, x, eps=None, generator=None):
        with self._autocast():
            out = self.inner(x, eps, generator)
        return ForwardPass(
            **{
                f.name: None if getattr(out, f.name) is None else getattr(out, f.name).float()
                for f in fields(out)
            }
        )

    def encode(self, x):
        with self._autocast():
            mu, logvar = self.inner.encode(x)
        return mu.float(), None if logvar is None else logvar.float()

    def decode(self, z):
        with self._autocast():
            return self.inner.decode(z).float()


class TorchBackend:
    """The reference model run by PyTorch itself (float32 by default, any dtype for oracles)."""

    def __init__(
        self,
        *,
        fused_adam: bool = False,
        compile: bool = False,
        dtype: torch.dtype = torch.float32,
        name: str | None = None,
        device: str = "cpu",
        autocast_bf16: bool = False,
    ):
        self.fused_adam = fused_adam or compile
        self.compile = compile
        self.dtype = dtype
        self.autocast_bf16 = autocast_bf16
        # What the gate calibrates by (kernels.base.MixedPrecision). Autocast also rounds
        # each GEMM's output and the elementwise math between GEMMs to bf16, which the bf16
        # calibration does not: whether that stays within its tolerances is the gate's call.
        self.gemm_inputs = "bf16" if autocast_bf16 else "float32"
        # A plain string ("cpu", "cuda"), as the harness reads it to group backends by device.
        self.device = str(torch.device(device))
        device_type = torch.device(device).type
        default_name, self.description = _names(device_type, compile, fused_adam, autocast_bf16)
        self.name = name or default_name
        self._cuda = device_type == "cuda"
        # Off the CPU the data set stays on the device, indices and noise go there each step,
        # and a step whose loss nobody wants returns without waiting for the device. The CPU
        # keeps the original path. (A flag, not a device test, so tests can drive this path on
        # a CPU.)
        self._resident = device_type != "cpu"
        self._data_host: np.ndarray | None = None  # the array whose copy is _data_device
        self._data_device: torch.Tensor | None = None
        self._data_dtype: np.dtype | None = None
        self.model = None

    def availability(self) -> Availability:
        if self._cuda:
            reason = _cuda_unavailable_reason()
            if reason is not None:
                return Availability(False, reason)
        if self.autocast_bf16 and not self._cuda:
            from ..cpu_features import bf16_emulated_reason

            reason = bf16_emulated_reason()
            if reason is not None:
                return Availability(False, reason)
        if self.compile:
            try:
                import torch._inductor  # noqa: F401  (needs a C++ compiler at run time)
            except Exception as error:  # noqa: BLE001  availability never raises
                return Availability(False, f"torch.compile unavailable: {error}")
            if self._cuda and importlib.util.find_spec("triton") is None:
                return Availability(
                    False, "torch.compile on CUDA needs triton (pip install triton)"
                )
        return Availability(True)

    def load(self, config: VAEConfig, params: Params) -> None:
        if self._cuda:
            status = self.availability()
            if not status.available:
                raise BackendUnavailable(f"{self.name}: {status.reason}")
            # The agreement gate compares with a float64 oracle at float32 tolerances: TF32
            # matmuls (10-bit mantissa) would fail it, and are not what the CPU computes.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.config = config
        self.model = build_model(config, dtype=self.dtype)
        import_params(self.model, params)
        self.model.to(self.device)  # before the optimizer, so its state lives there too
        # What computes a forward pass: the model, or the model under autocast.
        self._net = (
            _AutocastForward(self.model, torch.device(self.device).type)
            if self.autocast_bf16
            else self.model
        )
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=config.lr,
            betas=ADAM_BETAS,
            eps=ADAM_EPS,
            fused=self.fused_adam or None,
        )
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        # One forward + loss, eager or compiled, for both the timed step and the gate's
        # single-step cases: what is gated is what is timed.
        self._loss_of = (
            self._compiled(self._forward_and_loss) if self.compile else self._forward_and_loss
        )
        self._step = self._compiled_step() if self.compile else self._eager_step

    def params(self) -> Params:
        return export_params(self.model)  # copies to the host

    def _tensor(self, array: np.ndarray, non_blocking: bool = False) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(
            device=self.device, dtype=self.dtype, non_blocking=non_blocking
        )

    @staticmethod
    def _numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    def _forward_and_loss(self, x_t: torch.Tensor, eps_t: torch.Tensor):
        """The step's forward pass and loss: the batch loss, the per-image terms and the
        intermediates the gate compares (the model's, not the oracle's: this backend's own
        autograd graph, compiled for torch-compile)."""
        out = self._net(x_t, eps_t)
        terms = loss_terms(out, x_t, self.config)
        intermediates = {
            name: getattr(out, name) for name in INTERMEDIATES if getattr(out, name) is not None
        }
        return terms.loss, terms.reconstruction, terms.kl, intermediates

    def forward_backward(self, x: np.ndarray, eps: np.ndarray) -> StepOutputs:
        # The timed step's forward, loss and backward (compiled for torch-compile), less Adam.
        self.optimizer.zero_grad(set_to_none=True)
        loss, reconstruction, kl, intermediates = self._loss_of(self._tensor(x), self._tensor(eps))
        # Copied out before the backward: under CUDA graphs the outputs live in graph memory.
        record = StepOutputs(
            reconstruction=self._numpy(reconstruction).copy(),
            kl=self._numpy(kl).copy(),
            loss=float(loss.item()),
            intermediates={k: self._numpy(t).copy() for k, t in intermediates.items()},
        )
        loss.backward()
        # No gradient (None) is autograd's word for a parameter the loss does not depend on.
        record.grads = {
            name: (
                self._numpy(p.grad).copy() if p.grad is not None else np.zeros(p.shape, np.float32)
            )
            for name, p in self.model.named_parameters()
        }
        return record

    def _eager_step(self, x_t: torch.Tensor, eps_t: torch.Tensor) -> torch.Tensor:
        loss, reconstruction, kl, _ = self._loss_of(x_t, eps_t)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack([reconstruction.mean(), kl.mean(), loss]).detach()

    def _compiled(self, fn):
        """``fn`` under torch.compile as this backend compiles: one variant per shape, in this
        process; on CUDA, CUDA graphs (a step is a few dozen small kernels whose launch cost
        would otherwise dominate; inputs are copied into the graph's static buffers)."""
        import torch._inductor.config as inductor_config

        # Compile in this process: inductor's default pool of compile workers keeps burning
        # CPU for seconds after the first steps (measured: the next backend's steps ran 2x
        # slower for over 1.5 s), which would be charged to whoever is timed next.
        inductor_config.compile_threads = 1
        _set_dynamo_limits()
        return torch.compile(fn, dynamic=False, mode="reduce-overhead" if self._cuda else None)

    def _compiled_step(self):
        def adam_step():
            self.optimizer.step()

        adam_step = self._compiled(adam_step)
        limit_errors = _limit_errors()

        def step(x_t, eps_t):
            # Gradients are dropped before the forward: under CUDA graphs the last step's
            # .grad may live in graph memory that the next replay overwrites.
            self.optimizer.zero_grad(set_to_none=True)
            try:
                loss, reconstruction, kl, _ = self._loss_of(x_t, eps_t)
                # stack copies the losses out of the graph's outputs, which the next replay
                # overwrites.
                losses = torch.stack([reconstruction.mean(), kl.mean(), loss]).detach()
                loss.backward()
                adam_step()  # a variant per optimizer: it reaches the limit too
            except limit_errors as error:
                raise BackendFailed(
                    f"{self.name}: torch.compile reached its limit of compiled variants (one "
                    f"per batch size; RECOMPILE_LIMIT = {RECOMPILE_LIMIT} in "
                    f"kernels/pytorch): time fewer batch sizes per run, or raise it"
                ) from error
            return losses

        return step

    def _device_batch(self, data: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        """data[indices] gathered on the device, from a copy of ``data`` uploaded once for as
        long as the same array is passed."""
        if not (
            data is self._data_host
            and self._data_device is not None
            and tuple(self._data_device.shape) == data.shape
            and self._data_dtype == data.dtype
        ):
            self._data_host, self._data_dtype = data, data.dtype
            self._data_device = None  # free the old copy before making the new one
            self._data_device = self._tensor(data)
        indices = checked_indices(indices, len(data))  # on the host: kernels/inputs.py says why
        # non_blocking: a blocking host-to-device copy waits for the stream, i.e. for the
        # previous step to finish. From pageable memory the bytes are staged before the call
        # returns, so the caller may reuse its array at once.
        index_t = torch.from_numpy(np.ascontiguousarray(indices)).to(self.device, non_blocking=True)
        return self._data_device.index_select(0, index_t)

    def train_step(
        self,
        data: np.ndarray,
        indices: np.ndarray,
        eps: np.ndarray | None = None,
        *,
        want_loss: bool = True,
    ) -> BatchLoss | None:
        if not self._resident:
            x_t = self._tensor(data[indices])
        else:
            x_t = self._device_batch(data, indices)
        if eps is None:
            eps_t = torch.randn(
                (len(indices), self.config.latent_dim),
                generator=self.generator,
                dtype=self.dtype,
                device=self.device,
            )
        else:
            eps_t = self._tensor(eps, non_blocking=self._resident)
        losses = self._step(x_t, eps_t)
        if self._resident and not want_loss:
            return None  # reading the losses would wait for the device
        return BatchLoss(*losses.tolist())

    @contextmanager
    def _state_kept(self):
        """Parameters and optimizer state as they were on entry, whatever runs inside (the
        diagnostics take steps that must not count as training)."""
        saved_params = [p.detach().clone() for p in self.model.parameters()]
        saved_state = {
            k: {n: (t.clone() if torch.is_tensor(t) else t) for n, t in v.items()}
            for k, v in self.optimizer.state.items()
        }
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(self.model.parameters(), saved_params):
                    p.copy_(saved)
            self.optimizer.state.clear()
            self.optimizer.state.update(saved_state)

    def stage_times(self, data: np.ndarray, batch: int, repeats: int = 50) -> dict[str, float]:
        """Median seconds per step of forward + backward and of the optimizer step, measured
        interleaved on the same batch. Parameters are restored afterwards. Eager only: a compiled
        step's parts are not separable, so torch-compile reports none."""
        if self.compile:
            return {}
        x_t = self._tensor(data[np.arange(batch) % len(data)])
        eps_t = torch.randn(
            (batch, self.config.latent_dim),
            generator=self.generator,
            dtype=self.dtype,
            device=self.device,
        )

        def forward_backward():
            self.optimizer.zero_grad(set_to_none=True)
            self._loss_of(x_t, eps_t)[0].backward()

        def timed(fn):
            # Each part waits for its own device work, so the clock sees the GPU's time.
            def run():
                fn()
                self.synchronize()

            return run

        with self._state_kept():
            times = interleaved_times(
                {"forward+backward": timed(forward_backward), "adam": timed(self.optimizer.step)},
                repeats,
            )
        return {name: float(np.median(t)) for name, t in times.items()}

    def peak_memory_bytes(self, data: np.ndarray, batch: int) -> int:
        """The peak of one training step. On CUDA, the caching allocator's peak over the step,
        less the resident data set. On the CPU, where PyTorch keeps no allocator statistics,
        the peak of its profiler's memory timeline (every tensor the step holds: parameters,
        gradients, optimizer state, the batch, activations, temporaries)."""
        indices = np.arange(batch) % len(data)
        with self._state_kept():
            self.train_step(data, indices)  # the step's own allocations warmed (and compiled)
            self.synchronize()
            if self._cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
                self.train_step(data, indices)
                self.synchronize()
                resident = (
                    0
                    if self._data_device is None
                    else (self._data_device.numel() * self._data_device.element_size())
                )
                return int(torch.cuda.max_memory_allocated(self.device)) - resident
            # The least of three: the profiler attributes blocks freed across its start to the
            # step in which they are freed (seen: +2-3 MB on some steps), never fewer bytes.
            return min(
                _profiled_peak_bytes(lambda: self.train_step(data, indices)) for _ in range(3)
            )

    def device_name(self) -> str:
        if self._cuda:
            return torch.cuda.get_device_name(self.device)
        return platform.processor() or platform.machine()

    def gemm_peak(self) -> tuple[float, str]:
        """Best GFLOP/s of a large float32 torch.mm on this backend's device (TF32 off, as
        load sets it on CUDA)."""
        size = 8192 if self._cuda else 2048
        if self._cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
        a = torch.randn(size, size, device=self.device)
        out = torch.empty_like(a)
        seconds = best_seconds(
            lambda: torch.mm(a, a, out=out), self.synchronize, repeats=10 if self._cuda else 5
        )
        via = "torch (cuBLAS), TF32 off" if self._cuda else "torch"
        return 2 * size**3 / seconds / 1e9, f"{size}x{size} float32 GEMM via {via}"

    def evaluate(self, x: np.ndarray, *, seed: int = 0, batch_size: int = 1000) -> EvalResult:
        self.model.eval()
        return evaluate_elbo(
            self._net, x.astype(np.float32, copy=False), seed=seed, batch_size=batch_size
        )

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self._net.encode(self._tensor(x))
        return self._numpy(mu), (None if logvar is None else self._numpy(logvar))

    @torch.no_grad()
    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._numpy(self._net.decode(self._tensor(z)))

    def synchronize(self) -> None:
        """Wait for queued CUDA work; CPU work is done when the call returns."""
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def settings(self) -> dict:
        result = {
            "torch_threads": torch.get_num_threads(),
            "dtype": str(self.dtype),
            "precision": "autocast bf16" if self.autocast_bf16 else "float32",
            "fused_adam": self.fused_adam,
            "compile": self.compile,
            "device": self.device,
            "torch": torch.__version__,
        }
        if self._cuda:
            result |= {
                "compile_mode": "reduce-overhead" if self.compile else None,
                "cuda": torch.version.cuda,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            }
            if _cuda_unavailable_reason() is None:
                result["gpu"] = torch.cuda.get_device_name(self.device)
        return result


def _profiled_peak_bytes(step) -> int:
    """Peak bytes held during ``step()`` by PyTorch's CPU tensors, from the profiler's memory
    timeline (torch.profiler.profile.export_memory_timeline: every allocation, categorised,
    over time). It is deprecated in favour of CUDA-only tooling, and nothing else sees CPU
    tensors' lifetimes, so its FutureWarning is silenced here."""
    from torch.profiler import ProfilerActivity, profile

    with (
        _stderr_silenced(),
        profile(
            activities=[ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        ) as prof,
    ):
        step()
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(scratch) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return int(max(sum(row) for row in sizes)) if sizes else 0


@contextmanager
def _stderr_silenced():
    """File descriptor 2 sent to /dev/null for the block: the profiler's C++ side (kineto)
    prints its start and stop to it unconditionally, which would tear the harness's output.
    Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
