"""What a training run produces and how it fails: per-epoch records, the result, the errors of
a run that diverged, and the fixed test set every epoch is scored on.

The loop itself is the harness's one training loop (``bench.training.train_backend``), which
trains the reference (the ``torch`` backend) through the same interface as every backend.
Same config (seed included) and same data give the same numbers on the same machine: the
shuffle, the reparameterization noise and the binarization each draw from their own seeded
generator, and weight init is seeded by ``build_model``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .config import VAEConfig
from .data import binarize
from .evaluate import EvalResult
from .model import AE, VAE
from .params import Params


class TrainingDiverged(FloatingPointError):
    """Training produced NaN or infinite numbers; the message says where. Nothing of such a
    run is a result: callers save no model from it."""


class NonFiniteLossError(TrainingDiverged):
    """Training produced a NaN or infinite loss; says where, so the run can be diagnosed."""

    def __init__(self, epoch: int, step: int, reconstruction: float, kl: float):
        self.epoch, self.step = epoch, step
        super().__init__(
            f"loss became non-finite at epoch {epoch}, step {step} "
            f"(reconstruction {reconstruction}, KL {kl}); training stopped. "
            "Lower the learning rate, or check the input data for NaN/inf values."
        )


class NonFiniteModelError(TrainingDiverged):
    """The parameters or the test evaluation became non-finite after an epoch."""

    def __init__(self, epoch: int, step: int, what: str):
        self.epoch, self.step = epoch, step
        super().__init__(
            f"{what} became non-finite at epoch {epoch}, step {step} (its last step); "
            "training stopped and the model is not saved. Lower the learning rate, or check "
            "the input data for NaN/inf values."
        )


def check_finite_model(params: Params, test: EvalResult, epoch: int, step: int) -> None:
    """Raise NonFiniteModelError unless the parameters and the test ELBO are finite.

    Run after each epoch, with ``step`` the epoch's last: an update that makes a parameter
    non-finite at any earlier step makes the next step's loss non-finite, which the loop
    catches there; only the last step's update reaches this check."""
    broken = [name for name, p in params.items() if not np.isfinite(p).all()]
    if broken:
        raise NonFiniteModelError(epoch, step, f"parameters ({', '.join(broken)})")
    values = (test.elbo, test.reconstruction, test.kl)
    if not all(math.isfinite(v) for v in values):
        raise NonFiniteModelError(
            epoch,
            step,
            f"the test evaluation (ELBO {test.elbo}, reconstruction "
            f"{test.reconstruction}, KL {test.kl})",
        )


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's numbers, means per image in nats."""

    epoch: int  # 1-based
    train_elbo: float  # mean over the epoch's training batches, as they were seen
    train_reconstruction: float
    train_kl: float
    test_elbo: float  # the whole test set after the epoch, one noise sample per image
    test_reconstruction: float
    test_kl: float
    seconds: float  # wall time of the epoch's training steps (evaluation not included)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    config: VAEConfig
    model: VAE | AE
    history: list[EpochRecord] = field(default_factory=list)

    @property
    def final(self) -> EpochRecord:
        return self.history[-1]

    @property
    def average_train_elbo(self) -> float:
        """Mean of the per-epoch training ELBO (the report's 'average ELBO')."""
        return float(np.mean([r.train_elbo for r in self.history]))

    @property
    def train_seconds(self) -> float:
        return float(sum(r.seconds for r in self.history))


def fixed_test_set(config: VAEConfig, test_x: np.ndarray) -> np.ndarray:
    """The test images evaluated each epoch: binarized once (seeded) if the run binarizes,
    so every epoch, and every latent size, is scored on the same binary images."""
    if not config.binarize:
        return test_x
    return binarize(test_x, np.random.default_rng([config.seed, 3]))
