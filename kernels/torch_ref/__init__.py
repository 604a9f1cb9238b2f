"""The PyTorch reference as a backend: what users would pick instead of a fused kernel.

Three configurations: eager with Adam's default implementation ("torch"), eager with
``Adam(fused=True)`` ("torch-fused-adam"), and ``torch.compile`` of the same model and loss with
the fused Adam ("torch-compile").
"""

from __future__ import annotations

import numpy as np
import torch

from vae_ref import VAEConfig, build_model, import_params, loss_terms
from vae_ref.evaluate import EvalResult, evaluate_elbo
from vae_ref.params import Params, export_params

from ..base import Availability, BatchLoss, StepOutputs
from ..timing import interleaved_times


class TorchBackend:
    """The reference model run by PyTorch itself (float32 by default, any dtype for oracles)."""

    def __init__(self, *, fused_adam: bool = False, compile: bool = False,
                 dtype: torch.dtype = torch.float32, name: str | None = None):
        self.fused_adam = fused_adam or compile
        self.compile = compile
        self.dtype = dtype
        self.name = name or ("torch-compile" if compile else
                             "torch-fused-adam" if fused_adam else "torch")
        self.description = (
            "PyTorch torch.compile, Adam(fused=True)" if compile else
            "PyTorch eager, Adam(fused=True)" if fused_adam else
            "PyTorch eager, default Adam (the reference)")
        self.model = None

    def availability(self) -> Availability:
        if self.compile:
            try:
                import torch._inductor  # noqa: F401  (needs a C++ compiler at run time)
            except Exception as error:  # pragma: no cover - depends on the install
                return Availability(False, f"torch.compile unavailable: {error}")
        return Availability(True)

    def load(self, config: VAEConfig, params: Params) -> None:
        self.config = config
        self.model = build_model(config, dtype=self.dtype)
        import_params(self.model, params)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr,
                                          fused=self.fused_adam or None)
        self.generator = torch.Generator().manual_seed(config.seed)
        self._step = self._compiled_step() if self.compile else self._eager_step

    def params(self) -> Params:
        return export_params(self.model)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.dtype)

    def forward_backward(self, x: np.ndarray, eps: np.ndarray) -> StepOutputs:
        x_t, eps_t = self._tensor(x), self._tensor(eps)
        self.model.zero_grad(set_to_none=True)
        out = self.model(x_t, eps_t)
        for t in (out.h, out.mu, out.z, out.dec_h, out.logits):
            t.retain_grad()
        terms = loss_terms(out, x_t, self.config)
        terms.loss.backward()
        intermediates = {"h": out.h, "mu": out.mu, "logvar": out.logvar, "z": out.z,
                         "dec_h": out.dec_h, "logits": out.logits}
        return StepOutputs(
            reconstruction=terms.reconstruction.detach().numpy(),
            kl=terms.kl.detach().numpy(),
            loss=terms.loss.item(),
            intermediates={k: v.detach().numpy() for k, v in intermediates.items()
                           if v is not None},
            grads={n: p.grad.detach().numpy().copy() for n, p in self.model.named_parameters()},
        )

    def _eager_step(self, x_t: torch.Tensor, eps_t: torch.Tensor) -> torch.Tensor:
        terms = loss_terms(self.model(x_t, eps_t), x_t, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        self.optimizer.step()
        return torch.stack([terms.reconstruction.mean(), terms.kl.mean(), terms.loss]).detach()

    def _compiled_step(self):
        import torch._inductor.config as inductor_config

        # Compile in this process: inductor's default pool of compile workers keeps burning
        # CPU for seconds after the first steps (measured: the next backend's steps ran 2x
        # slower for over 1.5 s), which would be charged to whoever is timed next.
        inductor_config.compile_threads = 1
        model, config = self.model, self.config

        @torch.compile(dynamic=False)
        def loss_of(x_t, eps_t):
            terms = loss_terms(model(x_t, eps_t), x_t, config)
            return terms.loss, terms.reconstruction.mean(), terms.kl.mean()

        @torch.compile(dynamic=False)
        def adam_step():
            self.optimizer.step()

        def step(x_t, eps_t):
            loss, reconstruction, kl = loss_of(x_t, eps_t)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            adam_step()
            return torch.stack([reconstruction, kl, loss]).detach()

        return step

    def train_step(self, data: np.ndarray, indices: np.ndarray,
                   eps: np.ndarray | None = None) -> BatchLoss:
        x_t = self._tensor(data[indices])
        if eps is None:
            eps_t = torch.randn((len(indices), self.config.latent_dim), generator=self.generator,
                                dtype=self.dtype)
        else:
            eps_t = self._tensor(eps)
        return BatchLoss(*self._step(x_t, eps_t).tolist())

    def stage_times(self, data: np.ndarray, batch: int, repeats: int = 50) -> dict[str, float]:
        """Median seconds per step of forward + backward and of the optimizer step, measured
        interleaved on the same batch. Parameters are restored afterwards. Eager only: a compiled
        step's parts are not separable, so torch-compile reports none."""
        if self.compile:
            return {}
        x_t = self._tensor(data[np.arange(batch) % len(data)])
        eps_t = torch.randn((batch, self.config.latent_dim), generator=self.generator,
                            dtype=self.dtype)
        saved_params = [p.detach().clone() for p in self.model.parameters()]
        saved_state = {k: {n: (t.clone() if torch.is_tensor(t) else t) for n, t in v.items()}
                       for k, v in self.optimizer.state.items()}

        def forward_backward():
            self.optimizer.zero_grad(set_to_none=True)
            loss_terms(self.model(x_t, eps_t), x_t, self.config).loss.backward()

        times = interleaved_times(
            {"forward+backward": forward_backward, "adam": self.optimizer.step}, repeats)
        result = {name: float(np.median(t)) for name, t in times.items()}
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), saved_params):
                p.copy_(saved)
        self.optimizer.state.clear()
        self.optimizer.state.update(saved_state)
        return result

    def evaluate(self, x: np.ndarray, *, seed: int = 0, batch_size: int = 1000) -> EvalResult:
        self.model.eval()
        return evaluate_elbo(self.model, x.astype(np.float32, copy=False), seed=seed,
                             batch_size=batch_size)

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self.model.encode(self._tensor(x))
        return mu.numpy(), (None if logvar is None else logvar.numpy())

    @torch.no_grad()
    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.model.decode(self._tensor(z)).numpy()

    def synchronize(self) -> None:
        """CPU work is done when the call returns."""

    def settings(self) -> dict:
        return {"torch_threads": torch.get_num_threads(), "dtype": str(self.dtype),
                "fused_adam": self.fused_adam, "compile": self.compile,
                "torch": torch.__version__}
