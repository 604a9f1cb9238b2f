"""An example backend from outside vae-kernel-bench: the reference VAE in plain float32 NumPy.

It is what a third party writes to put their own implementation through the harness: one class
with the methods of ``kernels.base.Backend``, registered under the ``vae_kernel_bench.backends``
entry-point group (see ../pyproject.toml). Nothing in vae-kernel-bench names it; the registry
finds it at run time. Every step is written out by hand (no autograd), so the agreement gate is
a real check of this code: forward, each gradient, and Adam as PyTorch's default does it.
"""

from __future__ import annotations

import numpy as np

from kernels.base import Availability, BatchLoss, StepOutputs
from vae_ref import VAEConfig
from vae_ref.config import ADAM_BETAS as BETAS
from vae_ref.config import ADAM_EPS
from vae_ref.evaluate import EvalResult
from vae_ref.params import Params, check_params


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # tanh form: no overflow at |logits| = 100 in float32, unlike 1 / (1 + exp(-l)).
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


class NumpyBackend:
    name = "numpy-example"
    description = "example plugin: the VAE in plain float32 NumPy (hand-written backward)"
    device = "cpu"

    def __init__(self, **options):
        # The harness passes options every backend may use (threads=...); NumPy's BLAS
        # threads are left as the process has them, so none is taken here.
        self.options = options

    def availability(self) -> Availability:
        return Availability(True)

    def load(self, config: VAEConfig, params: Params) -> None:
        if config.model != "vae":
            raise ValueError(f"{self.name} implements the VAE only, not {config.model!r}")
        check_params(params, config)
        self.config = config
        self.p = {n: np.array(a, dtype=np.float32) for n, a in params.items()}
        self.m = {n: np.zeros_like(a) for n, a in self.p.items()}
        self.v = {n: np.zeros_like(a) for n, a in self.p.items()}
        self.steps_taken = 0
        self.rng = np.random.default_rng(config.seed)

    def params(self) -> Params:
        return {n: a.copy() for n, a in self.p.items()}

    # -- the model, by hand ---------------------------------------------------------------

    def _forward(self, x: np.ndarray, eps: np.ndarray) -> dict[str, np.ndarray]:
        p = self.p
        h = np.maximum(x @ p["enc.fc1.weight"].T + p["enc.fc1.bias"], 0)
        mu = h @ p["enc.mu.weight"].T + p["enc.mu.bias"]
        logvar = h @ p["enc.logvar.weight"].T + p["enc.logvar.bias"]
        z = mu + np.exp(0.5 * logvar) * eps
        dec_h = np.maximum(z @ p["dec.fc1.weight"].T + p["dec.fc1.bias"], 0)
        logits = dec_h @ p["dec.out.weight"].T + p["dec.out.bias"]
        bce = (np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))).sum(1)
        kl = -0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(1)
        return dict(
            x=x, eps=eps, h=h, mu=mu, logvar=logvar, z=z, dec_h=dec_h, logits=logits, bce=bce, kl=kl
        )

    def _backward(self, f: dict[str, np.ndarray]) -> Params:
        """d mean(bce + beta kl) / d every parameter."""
        p, beta = self.p, np.float32(self.config.beta)
        scale = np.float32(1.0 / len(f["x"]))
        d_logits = (_sigmoid(f["logits"]) - f["x"]) * scale
        d_dec_h = (d_logits @ p["dec.out.weight"]) * (f["dec_h"] > 0)
        d_z = d_dec_h @ p["dec.fc1.weight"]
        std = np.exp(0.5 * f["logvar"])
        d_mu = d_z + beta * scale * f["mu"]
        d_logvar = d_z * 0.5 * std * f["eps"] + beta * scale * 0.5 * (np.exp(f["logvar"]) - 1)
        d_h = (d_mu @ p["enc.mu.weight"] + d_logvar @ p["enc.logvar.weight"]) * (f["h"] > 0)
        grads = {}
        for layer, d_out, inputs in (
            ("dec.out", d_logits, f["dec_h"]),
            ("dec.fc1", d_dec_h, f["z"]),
            ("enc.mu", d_mu, f["h"]),
            ("enc.logvar", d_logvar, f["h"]),
            ("enc.fc1", d_h, f["x"]),
        ):
            grads[f"{layer}.weight"] = d_out.T @ inputs
            grads[f"{layer}.bias"] = d_out.sum(0)
        return grads

    def _adam(self, grads: Params) -> None:
        """torch.optim.Adam's default (single-tensor) update, bias corrections included."""
        self.steps_taken += 1
        b1, b2, lr = BETAS[0], BETAS[1], self.config.lr
        step_size = lr / (1 - b1**self.steps_taken)
        root_correction = np.sqrt(1 - b2**self.steps_taken)
        for n, g in grads.items():
            self.m[n] = b1 * self.m[n] + (1 - b1) * g
            self.v[n] = b2 * self.v[n] + (1 - b2) * g * g
            denom = np.sqrt(self.v[n]) / np.float32(root_correction) + np.float32(ADAM_EPS)
            self.p[n] -= np.float32(step_size) * self.m[n] / denom

    # -- the interface ----------------------------------------------------------------------

    def _noise(self, batch: int, eps: np.ndarray | None) -> np.ndarray:
        if eps is None:
            return self.rng.standard_normal((batch, self.config.latent_dim), dtype=np.float32)
        return np.asarray(eps, dtype=np.float32)

    def _loss(self, f: dict[str, np.ndarray]) -> float:
        terms = f["bce"].astype(np.float64) + self.config.beta * f["kl"].astype(np.float64)
        return float(terms.mean())

    def forward_backward(self, x: np.ndarray, eps: np.ndarray) -> StepOutputs:
        f = self._forward(np.asarray(x, np.float32), self._noise(len(x), eps))
        return StepOutputs(
            reconstruction=f["bce"],
            kl=f["kl"],
            loss=self._loss(f),
            intermediates={k: f[k] for k in ("h", "mu", "logvar", "z", "dec_h", "logits")},
            grads=self._backward(f),
        )

    def train_step(
        self,
        data: np.ndarray,
        indices: np.ndarray,
        eps: np.ndarray | None = None,
        *,
        want_loss: bool = True,
    ) -> BatchLoss:
        x = np.asarray(data[np.asarray(indices)], np.float32)
        f = self._forward(x, self._noise(len(x), eps))
        self._adam(self._backward(f))
        return BatchLoss(float(f["bce"].mean()), float(f["kl"].mean()), self._loss(f))

    def evaluate(self, x: np.ndarray, *, seed: int = 0, batch_size: int = 1000) -> EvalResult:
        rng = np.random.default_rng(seed)
        totals = np.zeros(2)
        for start in range(0, len(x), batch_size):
            xb = np.asarray(x[start : start + batch_size], np.float32)
            f = self._forward(
                xb, rng.standard_normal((len(xb), self.config.latent_dim), dtype=np.float32)
            )
            totals += [f["bce"].sum(dtype=np.float64), f["kl"].sum(dtype=np.float64)]
        reconstruction, kl = (float(t) for t in totals / len(x))
        return EvalResult(elbo=-(reconstruction + kl), reconstruction=reconstruction, kl=kl)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = self._forward(
            np.asarray(x, np.float32), np.zeros((len(x), self.config.latent_dim), np.float32)
        )
        return f["mu"], f["logvar"]

    def decode(self, z: np.ndarray) -> np.ndarray:
        p = self.p
        dec_h = np.maximum(np.asarray(z, np.float32) @ p["dec.fc1.weight"].T + p["dec.fc1.bias"], 0)
        return dec_h @ p["dec.out.weight"].T + p["dec.out.bias"]

    def synchronize(self) -> None:
        """NumPy's work is done when each call returns."""

    def settings(self) -> dict:
        return {"numpy": np.__version__}
