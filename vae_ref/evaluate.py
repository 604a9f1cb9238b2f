"""Evaluation on a held-out set: the ELBO, and the importance-weighted bound on log p(x).

Both run in batches under ``torch.no_grad()`` so memory stays bounded whatever the set size
or the number of importance samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import VAEConfig
from .losses import bce_with_logits, gaussian_kl_per_dim, loss_terms
from .model import AE, VAE


@dataclass(frozen=True)
class EvalResult:
    """Means per image over the evaluated set, in nats."""

    elbo: float  # -(reconstruction + KL); for the AE, -reconstruction
    reconstruction: float
    kl: float


@torch.no_grad()
def evaluate_elbo(
    model: VAE | AE, x: np.ndarray, *, seed: int = 0, batch_size: int = 1000
) -> EvalResult:
    """Single-sample ELBO averaged over ``x``, with noise from a generator seeded by ``seed``
    (so the same model and seed give the same number). The noise is drawn on the CPU, so a
    model on a GPU is scored with the very same noise."""
    config: VAEConfig = model.config
    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    totals = np.zeros(2)
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size]).to(device=device, dtype=dtype)
        eps = None  # the AE draws none
        if config.model == "vae":
            eps = torch.randn((len(xb), config.latent_dim), generator=generator, dtype=dtype).to(
                device
            )
        terms = loss_terms(model(xb, eps), xb, config)
        totals += [terms.reconstruction.sum().item(), terms.kl.sum().item()]
    reconstruction, kl = (float(v) for v in totals / len(x))
    return EvalResult(elbo=-(reconstruction + kl), reconstruction=reconstruction, kl=kl)


@torch.no_grad()
def importance_weighted_log_likelihood(
    model: VAE,
    x: np.ndarray,
    *,
    k: int,
    seed: int = 0,
    max_elements: int = 1 << 23,
    per_image: bool = False,
) -> float | np.ndarray:
    """The IWAE estimate of log p(x) (Burda et al. 2016), mean over images, in nats.

    log p(x) >= E[log (1/k) sum_j p(x, z_j) / q(z_j | x)],  z_j ~ q(z | x).
    k = 1 is the ELBO; the bound tightens as k grows (k = 5000 is the literature's choice).
    Samples are decoded in chunks so that no intermediate holds more than ``max_elements``
    values; the k log-weights per image are kept and combined with log-sum-exp.
    """
    if not isinstance(model, VAE):
        raise ValueError("the importance-weighted bound needs a VAE: the AE has no q(z|x)")
    if k < 1:
        raise ValueError(f"k (importance samples) must be >= 1, got {k}")
    config = model.config
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    widest = max(config.input_dim, config.hidden_dim)
    images_per_batch = max(1, min(len(x), max_elements // (widest * min(k, 64))))
    samples_per_chunk = max(1, min(k, max_elements // (widest * images_per_batch)))

    estimates = []
    for start in range(0, len(x), images_per_batch):
        xb = torch.from_numpy(x[start : start + images_per_batch]).to(dtype)
        mu, logvar = model.encode(xb)
        std = torch.exp(0.5 * logvar)
        log_weights = []
        for done in range(0, k, samples_per_chunk):
            s = min(samples_per_chunk, k - done)
            eps = torch.randn((len(xb), s, config.latent_dim), generator=generator, dtype=dtype)
            z = mu[:, None, :] + std[:, None, :] * eps
            logits = model.decode(z.reshape(-1, config.latent_dim))
            targets = xb[:, None, :].expand(-1, s, -1).reshape(-1, config.input_dim)
            log_px_given_z = -bce_with_logits(logits, targets).reshape(len(xb), s)
            # log p(z) - log q(z|x): the 2*pi terms cancel and (z - mu)^2 / sigma^2 = eps^2.
            log_prior_ratio = -0.5 * (z.pow(2) - eps.pow(2) - logvar[:, None, :]).sum(dim=2)
            log_weights.append(log_px_given_z + log_prior_ratio)
        log_w = torch.cat(log_weights, dim=1).double()
        estimates.append(torch.logsumexp(log_w, dim=1) - math.log(k))
    values = torch.cat(estimates).numpy()
    return values if per_image else float(values.mean())


# Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders" (ICLR 2016), section 5.2:
# latent unit u is active when A_u = Cov_x(E_{u ~ q(u|x)}[u]) > 10^-2.
ACTIVITY_THRESHOLD = 0.01


@dataclass(frozen=True)
class LatentUsage:
    """How much of its latent space a VAE's encoder uses on a set of images."""

    active_units: int  # dimensions whose activity exceeds ACTIVITY_THRESHOLD
    activity: np.ndarray  # per dimension: the variance over the images of the posterior mean
    kl_per_dim: np.ndarray  # per dimension: KL(q(z_u|x) || N(0, 1)), mean over the images


@torch.no_grad()
def latent_usage(model: VAE, x: np.ndarray, *, batch_size: int = 1000) -> LatentUsage:
    """The active units of Burda et al. (a unit is active when its posterior mean varies
    across ``x`` by more than ACTIVITY_THRESHOLD; the variance over the set, not a sample's
    unbiased estimate) and the KL of each latent dimension, whose sum is the KL term of the
    ELBO (``evaluate_elbo``'s ``kl``). Accumulated in float64."""
    dtype = next(model.parameters()).dtype
    means: list[torch.Tensor] = []
    kl_sum: torch.Tensor | None = None
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size]).to(dtype)
        mu, logvar = model.encode(xb)
        means.append(mu.double())
        kl = gaussian_kl_per_dim(mu.double(), logvar.double()).sum(dim=0)
        kl_sum = kl if kl_sum is None else kl_sum + kl
    activity = torch.cat(means).var(dim=0, unbiased=False).numpy()
    assert kl_sum is not None  # x has images: torch.cat raised on an empty list otherwise
    return LatentUsage(
        int((activity > ACTIVITY_THRESHOLD).sum()), activity, (kl_sum / len(x)).numpy()
    )
