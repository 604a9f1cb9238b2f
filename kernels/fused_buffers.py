"""What the fused backends (Numba, CuPy) share in reading their step's buffers back: the
encoder's heads split into mu and log-variance, and a forward/backward's outputs with the
loss as the float64 mean every backend reports."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vae_ref.params import Params

from .base import StepOutputs


def split_heads(heads: np.ndarray, latent: int) -> tuple[np.ndarray, np.ndarray]:
    """(mu, logvar) from the encoder's output layer, whose first ``latent`` columns are mu."""
    return heads[:, :latent].copy(), heads[:, latent:].copy()


def step_outputs(
    buffers: Mapping[str, np.ndarray], latent: int, beta: float, grads: Params
) -> StepOutputs:
    """A forward/backward's outputs from its buffers (bce, kl, heads and the intermediates),
    copied: a backend reuses its buffers at the next step."""
    bce, kl = buffers["bce"], buffers["kl"]
    mu, logvar = split_heads(buffers["heads"], latent)
    return StepOutputs(
        reconstruction=bce.copy(),
        kl=kl.copy(),
        loss=float(np.mean(bce.astype(np.float64) + beta * kl.astype(np.float64))),
        intermediates={
            "h": buffers["h"].copy(),
            "mu": mu,
            "logvar": logvar,
            "z": buffers["z"].copy(),
            "dec_h": buffers["dech"].copy(),
            "logits": buffers["logits"].copy(),
        },
        grads=grads,
    )
