"""The one training loop: any backend, the reference (``torch``) included, trained through the
Backend interface. Every backend gets the same initial weights (``build_model(config)``), the
same shuffling and binarization streams and the same per-epoch records, so a table can put a
backend's ELBO beside the reference's, and ``run`` and ``experiment`` get theirs from here.

The reparameterization noise is each backend's own (seeded by config.seed), so runs match the
reference's within the noise of seeds, not bit for bit (the torch backend draws it as the
reference model does, from a torch generator seeded so). A backend that runs a whole epoch
itself (``kernels.base.EpochRunner``: a GPU backend replaying its step from a device-side
permutation) is given the epoch's order at once; the batches are the same.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import numpy as np

from kernels.base import Backend, EpochRunner
from vae_ref import VAEConfig, build_model, export_params, import_params
from vae_ref.data import binarize
from vae_ref.training_outcome import (
    EpochRecord,
    NonFiniteLossError,
    TrainResult,
    check_finite_model,
    fixed_test_set,
)

from .progress import progress_bar


def train_backend(
    backend: Backend,
    config: VAEConfig,
    train_x: np.ndarray,
    test_x: np.ndarray,
    *,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train ``config`` on ``backend``; the result holds a reference model with the trained
    weights (for figures and the importance-weighted bound). Raises NonFiniteLossError as
    soon as a batch loss is NaN/inf, NonFiniteModelError if the parameters or the test ELBO
    are after an epoch."""
    _check_images(config, train_x=train_x, test_x=test_x)
    backend.load(config, export_params(build_model(config)))
    train_x = np.ascontiguousarray(train_x, dtype=np.float32)
    test_x = fixed_test_set(config, np.ascontiguousarray(test_x, dtype=np.float32))
    shuffle_rng = np.random.default_rng([config.seed, 1])
    binarize_rng = np.random.default_rng([config.seed, 2])
    n = len(train_x)
    steps_per_epoch = math.ceil(n / config.batch_size)
    history = []
    bar = _steps_bar(config, backend.name, config.epochs * steps_per_epoch, progress)
    # Each batch binarized afresh on the host cannot come from a device-side epoch.
    train_epoch = (
        backend.train_epoch if isinstance(backend, EpochRunner) and not config.binarize else None
    )
    try:
        for epoch in range(1, config.epochs + 1):
            order = shuffle_rng.permutation(n)
            sums = np.zeros(2)
            started = time.perf_counter()
            if train_epoch is not None:
                sums += _whole_epoch(train_epoch, train_x, order, config.batch_size, epoch)
                bar.update(steps_per_epoch)
            else:
                sums += _stepwise_epoch(
                    backend, config, train_x, order, binarize_rng, epoch, bar.update
                )
            backend.synchronize()
            seconds = time.perf_counter() - started
            record = _epoch_record(
                backend, config, test_x, sums / n, epoch, steps_per_epoch - 1, seconds
            )
            history.append(record)
            bar.set_postfix(
                epoch=epoch, train=f"{record.train_elbo:.1f}", test=f"{record.test_elbo:.1f}"
            )
            if on_epoch is not None:
                on_epoch(record)
    finally:
        bar.close()
    model = build_model(config)
    import_params(model, backend.params())
    return TrainResult(config=config, model=model.eval(), history=history)


def _steps_bar(config: VAEConfig, backend: str, total: int, progress: bool):
    return progress_bar(
        total=total,
        desc=f"{config.name} [{backend}]",
        unit="step",
        disable=not progress,
        leave=False,
        # Redrawn often on a terminal; rarely in a log file (nox, CI).
        mininterval=0.1 if sys.stderr.isatty() else 15.0,
    )


def _epoch_record(
    backend: Backend,
    config: VAEConfig,
    test_x: np.ndarray,
    train_means: np.ndarray,
    epoch: int,
    last_step: int,
    seconds: float,
) -> EpochRecord:
    """The epoch's record: the training means (reconstruction, KL) and the test set's ELBO,
    the model checked finite after its ``last_step`` (NonFiniteModelError otherwise)."""
    test = backend.evaluate(test_x, seed=config.seed)
    check_finite_model(backend.params(), test, epoch, last_step)
    reconstruction, kl = (float(v) for v in train_means)
    return EpochRecord(
        epoch,
        -(reconstruction + kl),
        reconstruction,
        kl,
        test.elbo,
        test.reconstruction,
        test.kl,
        seconds,
    )


def _check_images(config: VAEConfig, **images: np.ndarray) -> None:
    for name, array in images.items():
        if np.ndim(array) != 2 or np.shape(array)[1] != config.input_dim or len(array) == 0:
            raise ValueError(
                f"{name} must be a non-empty (N, {config.input_dim}) array, got {np.shape(array)}"
            )


def _stepwise_epoch(
    backend: Backend,
    config: VAEConfig,
    train_x: np.ndarray,
    order: np.ndarray,
    binarize_rng: np.random.Generator,
    epoch: int,
    stepped: Callable[[], object],
) -> np.ndarray:
    """(reconstruction, KL) summed over the epoch's images, one ``train_step`` per batch of
    ``order`` (each batch binarized afresh where the config says); a non-finite loss raises
    at its step."""
    sums = np.zeros(2)
    for step in range(math.ceil(len(order) / config.batch_size)):
        indices = order[step * config.batch_size : (step + 1) * config.batch_size]
        if config.binarize:
            batch = binarize(train_x[indices], binarize_rng)
            result = backend.train_step(batch, np.arange(len(batch)))
        else:
            result = backend.train_step(train_x, indices)
        assert result is not None  # want_loss (the default): every backend returns the loss
        if not math.isfinite(result.loss):
            raise NonFiniteLossError(epoch, step, result.reconstruction, result.kl)
        sums += [result.reconstruction * len(indices), result.kl * len(indices)]
        stepped()
    return sums


def _whole_epoch(
    train_epoch, train_x: np.ndarray, order: np.ndarray, batch_size: int, epoch: int
) -> np.ndarray:
    """(reconstruction, KL) summed over the epoch's images, from a backend's own epoch loop;
    a non-finite loss is reported at the step where it first appeared."""
    losses = np.asarray(train_epoch(train_x, order, batch_size), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(losses[:, 2]))
    if bad.size:
        step = int(bad[0])
        raise NonFiniteLossError(epoch, step, float(losses[step, 0]), float(losses[step, 1]))
    sizes = np.minimum(batch_size, len(order) - batch_size * np.arange(len(losses)))
    return (losses[:, :2] * sizes[:, None]).sum(axis=0)
