"""The JAX backend: the whole training step (batch gather, noise, loss, ``value_and_grad``,
PyTorch's Adam) as one XLA executable, on the CPU ("jax") or a CUDA GPU ("jax-cuda").

State lives on the device: the parameters under canonical names and shapes, Adam's two
moments, and the noise key (``jax.random.key(config.seed)``, split inside each step that
draws its own noise). The data set is copied to the device once per array passed in; a step
sends only the batch's indices, its noise when given, and three float32 scalars (KL weight
and Adam's bias-corrected step size, computed on the host in double as PyTorch's Adam does).

Each program (``step.PROGRAMS``) is compiled ahead of time, once per shape (batch size, data
set size, latent size), and the seconds spent compiling are reported apart
(``settings()["compile_seconds"]``). A step is dispatched without waiting for it (JAX runs it
asynchronously, on the CPU too): ``synchronize`` waits, and a step whose loss is wanted waits
for it.
"""

from __future__ import annotations

import os
import time

import numpy as np

from vae_ref import VAEConfig
from vae_ref.evaluate import EvalResult
from vae_ref.params import Params, check_params

from ..base import Availability, BackendUnavailable, BatchLoss, StepOutputs
from ..inputs import (
    checked_images,
    checked_indices,
    checked_noise,
    decode_on_host,
    evaluate_in_batches,
)
from . import runtime


class JaxBackend:
    def __init__(
        self, *, platform: str = "cpu", threads: int | None = None, gemm_inputs: str = "float32"
    ):
        if platform not in ("cpu", "cuda"):
            raise ValueError(f"platform must be 'cpu' or 'cuda', got {platform!r}")
        if gemm_inputs not in ("float32", "bf16"):
            raise ValueError(f"gemm_inputs must be 'float32' or 'bf16', got {gemm_inputs!r}")
        # float32, or bf16 GEMM operands with float32 accumulation, parameters and everything
        # else (kernels.base.MixedPrecision; step._matmul_bf16_inputs).
        self.gemm_inputs = gemm_inputs
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.platform = platform
        self.threads = threads
        self.device = platform
        self.name = ("jax" if platform == "cpu" else "jax-cuda") + (
            "-bf16" if gemm_inputs == "bf16" else ""
        )
        self.description = (
            "JAX: whole step in one jax.jit (XLA), Adam as PyTorch's, "
            + ("CPU" if platform == "cpu" else "CUDA")
            + (
                ", bf16 GEMM inputs (float32 accumulation)"
                if gemm_inputs == "bf16"
                else ""
                if platform == "cpu"
                else ", float32 GEMMs (no TF32)"
            )
        )
        self.compile_seconds = 0.0
        self._executables: dict[tuple, object] = {}
        self._jax_device = None
        self._data_host: np.ndarray | None = None  # the array whose copy is _data_device
        self._data_device = None

    def availability(self) -> Availability:
        if self.gemm_inputs == "bf16" and self.platform == "cpu":
            from ..cpu_features import bf16_emulated_reason

            reason = bf16_emulated_reason()
            if reason is not None:
                return Availability(False, reason)
        return runtime.availability(self.platform, self.threads)

    # -- setup ---------------------------------------------------------------------------

    def _require(self):
        status = self.availability()
        reason = status.reason if not status.available else runtime.prepare(self.threads)
        if reason:
            raise BackendUnavailable(f"{self.name} backend unavailable: {reason}")
        import jax

        from . import step

        if self._jax_device is None:
            try:
                self._jax_device = runtime.device(self.platform)
            except Exception as error:  # noqa: BLE001  e.g. a CUDA device JAX cannot take
                raise BackendUnavailable(
                    f"{self.name} backend unavailable: JAX cannot use "
                    f"its {self.platform} device ({type(error).__name__}: "
                    f"{str(error).strip()[:200]})"
                ) from None
        return jax, step

    def load(self, config: VAEConfig, params: Params) -> None:
        jax, step = self._require()
        if config.model != "vae":
            raise ValueError("the jax backend implements the VAE (model='vae'), not the AE")
        check_params(params, config)
        self._jax, self._step = jax, step
        self.config = config

        def on_device(array: np.ndarray):
            # A copy, never an alias of the caller's array: the state is donated to each step,
            # which writes the new state into these buffers.
            return jax.device_put(
                np.array(array, dtype=np.float32), self._jax_device, may_alias=False
            )

        weights = {name: on_device(params[name]) for name in params}
        first_moment = {name: on_device(np.zeros_like(params[name])) for name in params}
        second_moment = {name: on_device(np.zeros_like(params[name])) for name in params}
        self._state = (weights, first_moment, second_moment)  # step.train_step's (params, m, v)
        self._key = jax.device_put(jax.random.key(config.seed), self._jax_device)
        self.steps_taken = 0

    def _compiled(self, kind: str, *args):
        """The executable of program ``kind`` for these arguments' shapes (compiled on first
        use, the time added to ``compile_seconds``). The state's shapes follow from the
        config's sizes, the rest from the arguments after the state (and key)."""
        c = self.config
        key = (kind, c.input_dim, c.hidden_dim, c.latent_dim, *(np.shape(a) for a in args[1:]))
        executable = self._executables.get(key)
        if executable is None:
            started = time.perf_counter()
            executable = self._step.PROGRAMS[self.gemm_inputs][kind].lower(*args).compile()
            self.compile_seconds += time.perf_counter() - started
            self._executables[key] = executable
        return executable

    def _run(self, kind: str, *args):
        return self._compiled(kind, *args)(*args)

    def params(self) -> Params:
        return {name: np.array(w, dtype=np.float32) for name, w in self._state[0].items()}

    # -- inputs ----------------------------------------------------------------------------

    def _images(self, x: np.ndarray) -> np.ndarray:
        return checked_images(x, self.config.input_dim)

    def _noise(self, batch: int, eps: np.ndarray) -> np.ndarray:
        return checked_noise(eps, batch, self.config.latent_dim)

    def _resident(self, data: np.ndarray):
        """``data`` on the device, copied once for as long as the same array is passed."""
        if data is not self._data_host:
            self._data_device = None  # free the old copy before making the new one
            self._data_device = self._jax.device_put(self._images(data), self._jax_device)
            self._data_host = data
        return self._data_device

    def _indices(self, indices, rows: int) -> np.ndarray:
        # Checked here: XLA's gather clamps an index out of range instead of failing.
        return checked_indices(indices, rows).astype(np.int32)

    # -- computation -----------------------------------------------------------------------

    def forward_backward(self, x: np.ndarray, eps: np.ndarray) -> StepOutputs:
        x = self._images(x)
        eps = self._noise(len(x), eps)
        args = (self._state[0], x, eps, np.float32(self.config.beta))
        loss, reconstruction, kl, out, grads = self._run("forward_backward", *args)
        return StepOutputs(
            # Copies (np.array): a view of a CPU device buffer would be read-only.
            reconstruction=np.array(reconstruction),
            kl=np.array(kl),
            loss=float(loss),
            intermediates={name: np.array(t) for name, t in out.items()},
            grads={name: np.array(g) for name, g in grads.items()},
        )

    def train_step(
        self,
        data: np.ndarray,
        indices: np.ndarray,
        eps: np.ndarray | None = None,
        *,
        want_loss: bool = True,
    ) -> BatchLoss | None:
        data_device = self._resident(data)
        indices = self._indices(indices, len(data))
        self.steps_taken += 1
        c = self.config
        scalars = self._step.step_scalars(c.beta, c.lr, self.steps_taken)
        if eps is None:
            self._state, self._key, losses = self._run(
                "train_own_noise", self._state, self._key, data_device, indices, scalars
            )
        else:
            self._state, losses = self._run(
                "train", self._state, data_device, indices, self._noise(len(indices), eps), scalars
            )
        if not want_loss:
            return None  # reading the losses would wait for the step
        return BatchLoss(*(float(v) for v in np.asarray(losses)))

    def evaluate(self, x: np.ndarray, *, seed: int = 0, batch_size: int = 1000) -> EvalResult:
        def terms(xb: np.ndarray, eps: np.ndarray):
            return (np.asarray(t) for t in self._run("loss_terms", self._state[0], xb, eps))

        return evaluate_in_batches(
            terms, self._images(x), self.config.latent_dim, seed=seed, batch_size=batch_size
        )

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self._run("encode", self._state[0], self._images(x))
        return np.array(mu), np.array(logvar)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return decode_on_host(self.params(), z)

    def peak_memory_bytes(self, data: np.ndarray, batch: int) -> int:
        """XLA's own account of the compiled training step (its buffer assignment, read from
        the executable, not run): arguments plus outputs, less what donation lets them share,
        plus temporaries; less the resident data set, which every step reads but no step
        holds for itself."""
        data_device = self._resident(data)
        indices = self._indices(np.arange(batch) % len(data), len(data))
        eps = np.zeros((batch, self.config.latent_dim), np.float32)
        scalars = self._step.step_scalars(self.config.beta, self.config.lr, 1)
        stats = self._compiled(
            "train", self._state, data_device, indices, eps, scalars
        ).memory_analysis()
        held = (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes
        )
        return int(held - data_device.nbytes)

    def synchronize(self) -> None:
        """Wait for every dispatched step (each depends on the one before)."""
        self._jax.block_until_ready(self._state)

    def settings(self) -> dict:
        result = {
            "device": self.device,
            "threads_requested": self.threads,
            "compile_seconds": self.compile_seconds,
        }
        if runtime.jax_missing() is not None:
            return result
        import jax
        import jaxlib

        result |= {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "precision": self.gemm_inputs,
            "matmul_precision": (
                "bf16 operands, float32 accumulation"
                if self.gemm_inputs == "bf16"
                else "highest (set on every dot)"
            ),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "xla_cpu_threads": runtime.pool_threads(),
        }
        if self._jax_device is not None:
            result["jax_device"] = f"{self._jax_device.platform}:{self._jax_device.device_kind}"
        return result
