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


def _bce_per_pixel(logits: Tensor, x: Tensor) -> Tensor:
    return logits.clamp(min=0) - logits * x + torch.log1p(torch.exp(-logits.abs()))


class _BCEWithLogits(torch.autograd.Function):
    """The summed BCE with its gradient written out, sigmoid(l) - x, rather than autograd's
    of the expression. That one takes subgradients at l == 0 exactly: clamp(min=0) passes
    1 there and abs passes 0, so it returns 1 - x where the derivative is 1/2 - x. A float32
    logit is exactly 0 now and then: on an Intel Xeon (torch 2.13, z 20, the gate's
    10-step case) one did at step 7 with fused Adam, whose weights differed from plain
    Adam's by rounding; that pixel's gradient differed by 0.5 / batch, and 3 steps later
    a weight stood 1 lr from the float64 truth (the gate failed it at 854% of its
    tolerance). Numba's and CuPy's kernels and JAX compute the derivative everywhere."""

    @staticmethod
    def forward(logits: Tensor, x: Tensor) -> Tensor:
        return _bce_per_pixel(logits, x).sum(dim=1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, x = ctx.saved_tensors
        g = grad[:, None]
        d_logits = (torch.sigmoid(logits) - x) * g if ctx.needs_input_grad[0] else None
        d_x = -logits * g if ctx.needs_input_grad[1] else None
        return d_logits, d_x


def bce_with_logits(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x | logits) for independent Bernoulli pixels, summed over pixels; its gradient
    is sigmoid(l) - x per pixel (``_BCEWithLogits``).

    The naive -[x log s + (1-x) log(1-s)] with s = sigmoid(l) overflows for large |l|;
    this is the same quantity written as max(l, 0) - l x + log(1 + exp(-|l|)).
    """
    return _BCEWithLogits.apply(logits, x)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 sum(1 + logvar - mu^2 - exp(logvar))."""
    return gaussian_kl_per_dim(mu, logvar).sum(dim=1)


def gaussian_kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """Each latent dimension's share of ``gaussian_kl``: (B, z)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


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
