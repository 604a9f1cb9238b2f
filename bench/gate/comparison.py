"""The one comparison helper: every tensor of every backend is judged by ``compare``.

Shapes first, then non-finite values (a NaN is reported as a NaN, never as a tolerance miss),
then the error against the float64 oracle and the fraction of the tolerance it uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vae_ref.gate_tensors import kind_of

from .tolerances import TOLERANCES


@dataclass(frozen=True)
class Comparison:
    case: str  # e.g. "z20/batch"
    tensor: str  # e.g. "grad.enc.fc1.weight"
    max_abs: float  # max |backend - oracle|
    max_rel: float  # max_abs / max |oracle| (normwise: element-wise ratios explode near 0)
    reference_error: float  # max |torch float32 - oracle|: the calibration
    tolerance: float
    problem: str = ""  # shape mismatch or non-finite values; empty when the numbers compare
    unjudged: int = 0  # elements left out (near a ReLU kink: vae_ref.oracle says why)

    @property
    def fraction(self) -> float:
        """Error as a fraction of the tolerance: <= 1 passes."""
        if self.problem:
            return math.inf
        return (
            self.max_abs / self.tolerance
            if self.tolerance > 0
            else (0.0 if self.max_abs == 0 else math.inf)
        )

    @property
    def passed(self) -> bool:
        return not self.problem and self.fraction <= 1.0

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        if self.problem:
            return f"{self.case:<18} {self.tensor:<26} {self.problem}  FAIL"
        left_out = f"  ({self.unjudged} near ReLU kinks not judged)" if self.unjudged else ""
        return (
            f"{self.case:<18} {self.tensor:<26} {self.max_abs:10.3e} {self.max_rel:10.3e} "
            f"{self.reference_error:10.3e} {self.tolerance:10.3e} {self.fraction:7.1%}  "
            f"{verdict}{left_out}"
        )


HEADER = (
    f"{'case':<18} {'tensor':<26} {'max abs':>10} {'max rel':>10} {'ref error':>10} "
    f"{'tolerance':>10} {'used':>7}"
)


def compare(
    case: str,
    tensor: str,
    got: np.ndarray,
    oracle: np.ndarray,
    reference_error: float,
    lr: float = 0.0,
    unjudged: np.ndarray | None = None,
) -> Comparison:
    """``got`` against the ``oracle``; the elements where ``unjudged`` is true are left out of
    the error (never out of the shape and finiteness checks)."""
    got = np.asarray(got)
    oracle = np.asarray(oracle, dtype=np.float64)
    if got.shape != oracle.shape:
        return Comparison(
            case,
            tensor,
            math.nan,
            math.nan,
            reference_error,
            math.nan,
            f"shape {got.shape}, expected {oracle.shape}",
        )
    bad = ~np.isfinite(got)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        return Comparison(
            case,
            tensor,
            math.nan,
            math.nan,
            reference_error,
            math.nan,
            f"{int(bad.sum())} non-finite values (first {got[first]} at {first})",
        )
    scale = float(np.max(np.abs(oracle))) if oracle.size else 0.0
    judged = np.ones(oracle.shape, bool) if unjudged is None else ~np.asarray(unjudged, bool)
    error = np.abs(got.astype(np.float64) - oracle)[judged]
    max_abs = float(np.max(error)) if error.size else 0.0
    tolerance = TOLERANCES[kind_of(tensor)].bound(reference_error, scale, lr)
    return Comparison(
        case,
        tensor,
        max_abs,
        max_abs / scale if scale else 0.0,
        reference_error,
        tolerance,
        unjudged=int(judged.size - judged.sum()),
    )
