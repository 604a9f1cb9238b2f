"""Canonical named parameters: the form in which every backend exchanges weights.

A dict of C-contiguous float32 numpy arrays keyed by stable names (``enc.fc1.weight``, ...).
Weights keep PyTorch's layout, (out_features, in_features): y = x @ W.T + b.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .config import VAEConfig

if TYPE_CHECKING:
    from .model import AE, VAE

Params = dict[str, np.ndarray]


def parameter_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
    """The canonical names and shapes for a config, in a stable order."""
    d, h, z = config.input_dim, config.hidden_dim, config.latent_dim
    shapes: dict[str, tuple[int, ...]] = {"enc.fc1.weight": (h, d), "enc.fc1.bias": (h,)}
    if config.model == "vae":
        shapes |= {
            "enc.mu.weight": (z, h),
            "enc.mu.bias": (z,),
            "enc.logvar.weight": (z, h),
            "enc.logvar.bias": (z,),
        }
    else:
        shapes |= {"enc.code.weight": (z, h), "enc.code.bias": (z,)}
    shapes |= {
        "dec.fc1.weight": (h, z),
        "dec.fc1.bias": (h,),
        "dec.out.weight": (d, h),
        "dec.out.bias": (d,),
    }
    return shapes


def export_params(model: nn.Module) -> Params:
    """Copies of the model's parameters as float32 numpy arrays under canonical names."""
    return {
        name: np.ascontiguousarray(p.detach().cpu().numpy(), dtype=np.float32)
        for name, p in model.named_parameters()
    }


def check_params(params: Params, config: VAEConfig) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped tensor."""
    expected = parameter_shapes(config)
    problems = []
    missing = [n for n in expected if n not in params]
    unexpected = [n for n in params if n not in expected]
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected: {', '.join(unexpected)}")
    for name, shape in expected.items():
        if name in params and tuple(np.shape(params[name])) != shape:
            problems.append(f"{name} has shape {tuple(np.shape(params[name]))}, expected {shape}")
    if problems:
        raise ValueError(
            f"parameters do not fit a {config.name} model "
            f"(input {config.input_dim}, hidden {config.hidden_dim}): " + "; ".join(problems)
        )


def import_params(model: VAE | AE, params: Params) -> None:
    """Load canonical parameters into a model in place (dtype converted to the model's)."""
    check_params(params, model.config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(np.asarray(params[name])))
