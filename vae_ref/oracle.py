"""The truth every backend is checked against: the reference run in float64 on the gate's cases.

A case is one set of inputs every party receives identically (parameters, a real batch, the
noise ε, and for the Adam case the batches and noise of K steps). ``outputs`` runs the
reference on a case at any precision and returns every tensor the agreement gate compares
under its gate name: the loss terms, each intermediate and gradient of one forward/backward,
or the losses and parameters over K Adam steps. ``expectation`` runs it twice: in float64 (the
oracle, each tensor's truth) and in float32 (the calibration: how far float32 PyTorch itself
lands from the truth, which sets each tensor's tolerance). The fixture (``vae_ref.fixture``)
stores both, so a backend can be checked without PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .config import VAEConfig
from .losses import loss_terms
from .model import AE, VAE, build_model
from .params import Params, export_params, import_params

EXTREME_LOGIT = 100.0  # |logits| this large overflow a naive sigmoid/BCE in float32
INTERMEDIATES = ("h", "mu", "logvar", "z", "dec_h", "logits")  # of one forward pass, in order


@dataclass(frozen=True)
class Case:
    """One set of inputs every party receives identically."""

    name: str  # "z20/batch", ...
    config: VAEConfig
    params: Params
    x: np.ndarray  # (B, input_dim) float32: the batch of a single forward/backward
    eps: np.ndarray  # (B, latent) float32
    # K Adam steps (steps > 0): batch k is data[step_indices[k]] with noise step_eps[k].
    steps: int = 0
    data: np.ndarray | None = None
    step_indices: np.ndarray | None = None
    step_eps: np.ndarray | None = None


def build_cases(train_x: np.ndarray, latent: int, *, seed: int = 0, steps: int = 50,
                batch: int = 128, beta: float = 4.0, hidden: int = 512) -> list[Case]:
    """The gate's cases for one latent size, on real images ``train_x``:

    batch           a real batch whose first two images are all-zero and all-one pixels
    partial-batch   an odd-sized final batch (37 images)
    extreme-logits  output biases of +-100, so the logits overflow a naive BCE
    beta            the same batch with a KL weight of ``beta`` (beta-VAE)
    adam-steps      ``steps`` Adam steps over shuffled batches (if steps > 0)
    """
    if len(train_x) < batch + 37:
        raise ValueError(f"the gate needs at least {batch + 37} images, got {len(train_x)}")
    rng = np.random.default_rng([seed, latent])
    config = VAEConfig(latent_dim=latent, hidden_dim=hidden, seed=seed, batch_size=batch)
    params = export_params(build_model(config))
    x = np.ascontiguousarray(train_x[:batch], dtype=np.float32).copy()
    x[0], x[1] = 0.0, 1.0

    def noise(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    extreme = dict(params)
    signs = np.where(np.arange(config.input_dim) % 2 == 0, 1.0, -1.0).astype(np.float32)
    extreme["dec.out.bias"] = (params["dec.out.bias"] + EXTREME_LOGIT * signs).astype(np.float32)
    eps = noise(batch, latent)
    prefix = f"z{latent}/"
    cases = [
        Case(prefix + "batch", config, params, x, eps),
        Case(prefix + "partial-batch", config, params,
             np.ascontiguousarray(train_x[batch : batch + 37], dtype=np.float32), noise(37, latent)),
        Case(prefix + "extreme-logits", config, extreme, x, eps),
        Case(prefix + f"beta{beta:g}", replace(config, beta=beta), params, x, eps),
    ]
    if steps > 0:
        data = np.ascontiguousarray(train_x, dtype=np.float32)
        epochs = -(-steps * batch // len(data))  # as training does: reshuffle each epoch
        order = np.concatenate([rng.permutation(len(data)) for _ in range(epochs)])
        order = order[: steps * batch]
        cases.append(Case(prefix + "adam-steps", config, params, x, eps, steps=steps, data=data,
                          step_indices=order.reshape(steps, batch),
                          step_eps=noise(steps, batch, latent)))
    return cases


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def forward_backward(model: VAE | AE, x: torch.Tensor, eps: torch.Tensor | None,
                     config: VAEConfig) -> dict[str, np.ndarray]:
    """One forward pass, loss and backward through ``model`` (its gradients are overwritten);
    every tensor under its gate name: ``loss.reconstruction``, ``loss.kl`` (per image),
    ``loss``, the intermediates, and ``grad.<parameter>``."""
    model.zero_grad(set_to_none=True)
    out = model(x, eps)
    for t in (out.h, out.mu, out.z, out.dec_h, out.logits):
        if t.requires_grad:
            t.retain_grad()
    terms = loss_terms(out, x, config)
    terms.loss.backward()
    record = {"loss.reconstruction": _numpy(terms.reconstruction), "loss.kl": _numpy(terms.kl),
              "loss": np.array(terms.loss.item())}
    record |= {name: _numpy(getattr(out, name)) for name in INTERMEDIATES
               if getattr(out, name) is not None}
    record |= {f"grad.{n}": _numpy(p.grad).copy() for n, p in model.named_parameters()}
    return record


def adam_steps(model: VAE | AE, case: Case) -> dict[str, np.ndarray]:
    """``case.steps`` steps of torch.optim.Adam (the reference's optimizer) over the case's
    batches and noise: each step's loss (before its update) and the parameters after, in the
    canonical float32 form in which every backend reports them (``export_params``)."""
    dtype = next(model.parameters()).dtype
    optimizer = torch.optim.Adam(model.parameters(), lr=case.config.lr)
    losses = []
    for k in range(case.steps):
        x = torch.from_numpy(case.data[case.step_indices[k]]).to(dtype)
        eps = torch.from_numpy(case.step_eps[k]).to(dtype)
        terms = loss_terms(model(x, eps), x, case.config)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        losses.append(terms.loss.item())
    record = {"steps.loss": np.array(losses)}
    record |= {f"steps.{n}": p for n, p in export_params(model).items()}
    return record


def outputs(case: Case, dtype: torch.dtype) -> dict[str, np.ndarray]:
    """Every tensor the gate compares, from the reference run at ``dtype`` on ``case`` (its
    float32 inputs widened exactly when ``dtype`` is wider)."""
    model = build_model(case.config, dtype=dtype)
    import_params(model, case.params)
    if case.steps:
        return adam_steps(model, case)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    return forward_backward(model, tensor(case.x), tensor(case.eps), case.config)


def max_error(got: np.ndarray, truth: np.ndarray) -> float:
    """The calibration measure: max |got - truth| (inf if ``got`` has non-finite values)."""
    got = np.asarray(got, dtype=np.float64)
    if not np.all(np.isfinite(got)):
        return math.inf
    return float(np.max(np.abs(got - np.asarray(truth, dtype=np.float64)))) if got.size else 0.0


@dataclass
class Expectation:
    """The oracle's tensors for a case and float32 PyTorch's error on each."""

    truth: dict[str, np.ndarray]
    reference_errors: dict[str, float] = field(default_factory=dict)


def expectation(case: Case) -> Expectation:
    """The float64 truth of every tensor of ``case``, and float32 PyTorch's error on each."""
    truth = outputs(case, torch.float64)
    float32 = outputs(case, torch.float32)
    return Expectation(truth, {k: max_error(float32[k], v) for k, v in truth.items()})
