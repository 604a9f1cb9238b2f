"""Other correct float32 computations of the same case: the problem relabelled by the model's
symmetries.

The MLP's result does not depend on how its pixels, hidden units, latent dimensions or the
images of a batch are numbered: permute each consistently (the weights' rows and columns, the
biases, the images' pixels, each batch's rows and its noise) and exact arithmetic gives the
same numbers, relabelled. Float32 arithmetic does not: every 784-, 512-, z- and batch-term sum
is then added in another order, so float32 PyTorch on a relabelled case is another correct
float32 implementation of the same case, with its own rounding at every step. Over K Adam
steps those roundings are amplified (an element whose gradient is within rounding of zero
steps about +-lr whichever sign it got; a ReLU whose pre-activation is within rounding of zero
switches on or off), and where one float32 run lands is one sample of that spread. The gate's
K-step tolerance is calibrated by several such runs (``oracle.expectation``), not by one.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .gate_tensors import steps_param_name

# The axis labels of each canonical parameter: which index set each of its axes runs over.
PARAMETER_AXES: dict[str, tuple[str, ...]] = {
    "enc.fc1.weight": ("enc_hidden", "pixel"),
    "enc.fc1.bias": ("enc_hidden",),
    "enc.mu.weight": ("latent", "enc_hidden"),
    "enc.mu.bias": ("latent",),
    "enc.logvar.weight": ("latent", "enc_hidden"),
    "enc.logvar.bias": ("latent",),
    "enc.code.weight": ("latent", "enc_hidden"),
    "enc.code.bias": ("latent",),
    "dec.fc1.weight": ("dec_hidden", "latent"),
    "dec.fc1.bias": ("dec_hidden",),
    "dec.out.weight": ("pixel", "dec_hidden"),
    "dec.out.bias": ("pixel",),
}


def _apply(
    array: np.ndarray, axes: tuple[str, ...], orders: dict[str, np.ndarray], inverse: bool = False
) -> np.ndarray:
    out = np.asarray(array)
    for axis, label in enumerate(axes):
        order = orders[label]
        out = np.take(out, np.argsort(order) if inverse else order, axis=axis)
    return np.ascontiguousarray(out)


class Relabelling:
    """One consistent permutation of pixels, hidden units, latent dimensions and batch rows."""

    def __init__(self, case, rng: np.random.Generator):
        """A random relabelling of ``case`` (an ``oracle.Case``)."""
        c = case.config
        self.orders = {
            "pixel": rng.permutation(c.input_dim),
            "enc_hidden": rng.permutation(c.hidden_dim),
            "dec_hidden": rng.permutation(c.hidden_dim),
            "latent": rng.permutation(c.latent_dim),
        }
        self.rows = (
            np.stack([rng.permutation(case.step_indices.shape[1]) for _ in range(case.steps)])
            if case.steps
            else None
        )

    def case(self, case):
        """``case`` relabelled: its K-step batches, noise and parameters (a K-step case only:
        the single-step cases keep one calibration)."""
        if not case.steps:
            raise ValueError("only a K-step case is relabelled")
        params = {
            name: _apply(p, PARAMETER_AXES[name], self.orders) for name, p in case.params.items()
        }
        steps = np.arange(case.steps)[:, None]
        return replace(
            case,
            params=params,
            data=np.ascontiguousarray(case.data[:, self.orders["pixel"]]),
            step_indices=case.step_indices[steps, self.rows],
            step_eps=np.ascontiguousarray(
                case.step_eps[steps, self.rows][:, :, self.orders["latent"]]
            ),
        )

    def restore(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A relabelled run's K-step tensors under the original labels (``steps.loss`` is
        a scalar per step and needs none)."""
        axes = {steps_param_name(p): a for p, a in PARAMETER_AXES.items()}
        return {
            name: _apply(value, axes[name], self.orders, inverse=True) if name in axes else value
            for name, value in tensors.items()
        }
