"""Which tensors' float32 calibration moved out of the band (``bench.gate.tolerances``) between the
committed fixture and a calibration measured here."""

from __future__ import annotations

import numpy as np

from bench.gate.tolerances import calibrations_agree
from vae_ref.oracle import Expectation


def outside_band(stored: Expectation, errors: dict[str, float]) -> list[str]:
    """One line per tensor out of the band, with both values; empty when all agree."""
    return [
        f"{tensor}: committed {error:.3e}, here {errors[tensor]:.3e}"
        for tensor, error in stored.reference_errors.items()
        if not calibrations_agree(
            tensor, error, errors[tensor], float(np.max(np.abs(stored.truth[tensor])))
        )
    ]
