"""The agreement gate's tolerances: one table, each entry with the reason for its values.

A backend's error on a tensor is measured against a float64 oracle (the reference run in
float64 from the same float32 inputs). Its tolerance is calibrated by how far float32 PyTorch
itself lands from that oracle on the same tensor, times a factor, plus a floor:

    tolerance = factor * |torch_float32 - oracle|_max + floor_ulps * eps32 * |oracle|_max

so it scales with the tensor's own numerical difficulty instead of being a magic number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23: one float32 ulp at 1.0


@dataclass(frozen=True)
class Tolerance:
    factor: float  # allowed multiple of float32 PyTorch's own error
    floor_ulps: float  # absolute floor, in float32 ulps of the tensor's largest magnitude
    reason: str
    floor_lr: float = 0.0  # or this fraction of the learning rate, if larger (Adam steps)

    def bound(self, reference_error: float, scale: float, lr: float = 0.0) -> float:
        floor = max(self.floor_ulps * EPS32 * scale, self.floor_lr * lr)
        return self.factor * reference_error + floor


TOLERANCES: dict[str, Tolerance] = {
    "intermediate": Tolerance(4.0, 16.0,
        "GEMM outputs and activations: BLAS libraries sum 784- or 512-term dot products in "
        "different orders, so a correct float32 kernel sits a few times PyTorch's own rounding "
        "from the oracle; the 16-ulp floor covers tensors PyTorch happens to get exactly."),
    "loss": Tolerance(4.0, 16.0,
        "per-image BCE and KL are 784- and z-term sums of transcendental terms; the backend's "
        "exp/log1p differ from PyTorch's (SLEEF) by an ulp or two per term."),
    "gradient": Tolerance(4.0, 16.0,
        "each weight gradient is a 128-term sum of products of already-rounded backward "
        "signals; same reasoning as the intermediates."),
    "steps.loss": Tolerance(4.0, 64.0,
        "the batch loss after each of K Adam steps: rounding differences feed back through "
        "the updates, so errors grow with the step count for PyTorch too; 64 ulps of the "
        "loss (~0.003 nats at 550) is far below any modelling difference."),
    "steps.param": Tolerance(4.0, 64.0,
        "parameters after K steps: Adam normalises each update to about lr in size, so a "
        "weight whose gradient is nonzero in only a step or two (a pixel lit in one image of "
        "thousands) moves by an amount set by that gradient's relative precision once "
        "sqrt(v) nears Adam's eps. One such weight was measured 1.4e-5 (0.05 lr) from the "
        "oracle, PyTorch float32's worst 2.5e-6: a floor of 0.1 lr absorbs that, while a real "
        "Adam bug (bias correction, betas, eps) moves every weight by ~lr per step.",
        floor_lr=0.1),
}


def kind_of(tensor: str) -> str:
    """Which TOLERANCES entry applies to a tensor name used by the gate."""
    if tensor.startswith("steps.loss"):
        return "steps.loss"
    if tensor.startswith("steps."):
        return "steps.param"
    if tensor.startswith("grad."):
        return "gradient"
    if tensor.startswith("loss"):
        return "loss"
    return "intermediate"
