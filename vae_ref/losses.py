"""Loss terms in nats per image: Bernoulli reconstruction, Gaussian KL, and the objective.

Every function returns one value per image (shape (B,)); the training objective is their
batch mean. Backends must reproduce exactly these formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import VAEConfig
from .model import ForwardPass


def bce_with_logits(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x | logits) for independent Bernoulli pixels, summed over pixels.

    The naive -[x log s + (1-x) log(1-s)] with s = sigmoid(l) overflows for large |l|;
    this is the same quantity written as max(l, 0) - l x + log(1 + exp(-|l|)).
    """
    per_pixel = logits.clamp(min=0) - logits * x + torch.log1p(torch.exp(-logits.abs()))
    return per_pixel.sum(dim=1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 sum(1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


@dataclass
class LossTerms:
    """The loss of one batch, per image and as the scalar the optimizer minimises."""

    reconstruction: Tensor  # (B,) BCE, nats per image
    kl: Tensor  # (B,) KL to the prior; zeros for the AE
    loss: Tensor  # scalar: mean over the batch of reconstruction + beta * kl

    @property
    def elbo(self) -> Tensor:
        """(B,) ELBO per image, -(reconstruction + KL), beta not applied (at beta = 1 it is the
        training objective's negative). For the AE it is minus the reconstruction: no bound."""
        return -(self.reconstruction + self.kl)


def loss_terms(out: ForwardPass, x: Tensor, config: VAEConfig) -> LossTerms:
    reconstruction = bce_with_logits(out.logits, x)
    if out.logvar is None:
        kl = torch.zeros_like(reconstruction)
    else:
        kl = gaussian_kl(out.mu, out.logvar)
    loss = (reconstruction + config.beta * kl).mean()
    return LossTerms(reconstruction=reconstruction, kl=kl, loss=loss)
