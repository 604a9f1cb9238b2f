"""The gate's tensors by name, built here and only here: the float64 oracle and float32
calibration (``oracle.py``) and every backend's outputs (``bench/gate/judge.py``) name
their tensors through these two functions, and the gate's tolerances
(``bench/gate/tolerances.py``) tell a tensor's kind through ``kind_of``.

    one forward/backward   loss.reconstruction, loss.kl (per image), loss, the intermediates
                           (h, mu, logvar, z, dec_h, logits), grad.<parameter>
    K Adam steps           steps.loss (each step's loss), steps.<parameter> (after the K)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

STEP_LOSS = "steps.loss"
KINDS = ("intermediate", "loss", "gradient", "steps.loss", "steps.param")


def step_tensors(
    reconstruction: np.ndarray,
    kl: np.ndarray,
    loss: float,
    intermediates: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """One forward/backward's tensors under the gate's names."""
    record = {"loss.reconstruction": reconstruction, "loss.kl": kl, "loss": np.array(loss)}
    record |= intermediates
    record |= {f"grad.{name}": g for name, g in grads.items()}
    return record


def adam_step_tensors(losses, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """K Adam steps' tensors: each step's loss, and the parameters after the last."""
    return {STEP_LOSS: np.array(losses)} | {f"steps.{name}": p for name, p in params.items()}


def steps_param_name(parameter: str) -> str:
    """The name of ``parameter`` after the K Adam steps."""
    return f"steps.{parameter}"


def is_steps_tensor(tensor: str) -> bool:
    return tensor.startswith("steps.")


def kind_of(tensor: str) -> str:
    """Which of KINDS a gate tensor is (its tolerance's entry)."""
    if tensor == STEP_LOSS:
        return "steps.loss"
    if is_steps_tensor(tensor):
        return "steps.param"
    if tensor.startswith("grad."):
        return "gradient"
    if tensor.startswith("loss"):
        return "loss"
    return "intermediate"
