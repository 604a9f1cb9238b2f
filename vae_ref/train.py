"""The reference training loop, over numpy arrays already in memory.

Same config (seed included) and same data give the same numbers on the same machine: the
shuffle, the reparameterization noise and the binarization each draw from their own seeded
generator, and weight init is seeded by ``build_model``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .config import VAEConfig
from .data import binarize
from .evaluate import EvalResult, evaluate_elbo
from .losses import loss_terms
from .model import AE, VAE, build_model
from .params import Params, export_params
from .progress import progress_bar


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
            epoch, step, f"the test evaluation (ELBO {test.elbo}, reconstruction "
            f"{test.reconstruction}, KL {test.kl})")


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


def train(
    config: VAEConfig,
    train_x: np.ndarray,
    test_x: np.ndarray,
    *,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    description: str | None = None,
) -> TrainResult:
    """Train a fresh model for ``config.epochs`` epochs with Adam; evaluate after each.

    ``train_x``/``test_x``: float32 arrays (N, input_dim) in [0, 1].
    Raises NonFiniteLossError as soon as a batch loss is NaN/inf, NonFiniteModelError if
    the parameters or the test ELBO are after an epoch.
    """
    for name, array in (("train_x", train_x), ("test_x", test_x)):
        if array.ndim != 2 or array.shape[1] != config.input_dim or len(array) == 0:
            raise ValueError(
                f"{name} must be a non-empty (N, {config.input_dim}) array, got {array.shape}"
            )
    train_x = np.ascontiguousarray(train_x, dtype=np.float32)
    test_x = fixed_test_set(config, np.ascontiguousarray(test_x, dtype=np.float32))

    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    shuffle_rng = np.random.default_rng([config.seed, 1])
    binarize_rng = np.random.default_rng([config.seed, 2])
    noise = torch.Generator().manual_seed(config.seed)
    result = TrainResult(config=config, model=model)

    n = len(train_x)
    steps_per_epoch = math.ceil(n / config.batch_size)
    bar = progress_bar(
        total=config.epochs * steps_per_epoch,
        desc=description or config.name,
        unit="step",
        disable=not progress,
        leave=False,
        # Redrawn often on a terminal; rarely when logged to a file (nox, CI), to keep logs short.
        mininterval=0.1 if sys.stderr.isatty() else 15.0,
    )
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = shuffle_rng.permutation(n)
            sums = np.zeros(2)  # reconstruction, KL summed over the epoch's images
            started = time.perf_counter()
            for step in range(steps_per_epoch):
                batch = train_x[order[step * config.batch_size : (step + 1) * config.batch_size]]
                if config.binarize:
                    batch = binarize(batch, binarize_rng)
                xb = torch.from_numpy(batch)
                terms = loss_terms(model(xb, generator=noise), xb, config)
                if not torch.isfinite(terms.loss):
                    raise NonFiniteLossError(
                        epoch,
                        step,
                        terms.reconstruction.mean().item(),
                        terms.kl.mean().item(),
                    )
                optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                optimizer.step()
                sums += [terms.reconstruction.sum().item(), terms.kl.sum().item()]
                bar.update()
            seconds = time.perf_counter() - started

            model.eval()
            test = evaluate_elbo(model, test_x, seed=config.seed)
            check_finite_model(export_params(model), test, epoch, steps_per_epoch - 1)
            reconstruction, kl = (float(v) for v in sums / n)
            record = EpochRecord(
                epoch=epoch,
                train_elbo=-(reconstruction + kl),
                train_reconstruction=reconstruction,
                train_kl=kl,
                test_elbo=test.elbo,
                test_reconstruction=test.reconstruction,
                test_kl=test.kl,
                seconds=seconds,
            )
            result.history.append(record)
            bar.set_postfix(epoch=epoch, train=f"{record.train_elbo:.1f}", test=f"{test.elbo:.1f}")
            if on_epoch is not None:
                on_epoch(record)
    finally:
        bar.close()
    return result
