"""The harness's stages. Each takes backends and data and returns typed records; every command
is a selection of them:

    check       gate
    profile     gate (the single-step cases) -> time
    run         gate -> time -> train -> evaluate, per latent size   (bench/run.py)
    experiment  train -> evaluate, per model; then figures             (bench/experiment.py)
    gpu-check   run's selection on a GPU machine, then pytest -m gpu   (bench/gpu_check.py)

and the tables (``tables.py``) and figures (``figures.py``) are made from the records. The
stages talk to backends only through ``kernels.base`` (its optional capabilities by protocol).

- **gate**: availability, then every tensor of every case against the reference's float64
  truth (``vae_ref.oracle``; computed once, and only if some backend can be checked).
- **time**: interleaved throughput windows after warm-up, with each backend's diagnostics
  (``throughput.measure``).
- **train**: the one training loop (``training.train_backend``); the reference trains through
  it like every backend.
- **evaluate**: the trained model's ELBO numbers and its importance-weighted bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kernels.base import Backend, gemm_inputs_of
from vae_ref import VAEConfig, importance_weighted_log_likelihood
from vae_ref.data import Dataset
from vae_ref.oracle import Case, Expectation, build_cases, expectation
from vae_ref.train import EpochRecord, TrainResult, fixed_test_set

from .agreement import check
from .comparison import Comparison
from .throughput import Measurement, measure
from .training import train_backend

Pairs = Sequence[tuple[Case, Expectation]]


@dataclass(frozen=True)
class GateRecord:
    """One backend's verdict over every case of the gate."""

    backend: str
    verdict: str  # "pass", "fail" or "unavailable"
    worst_fraction: float = math.nan  # the worst tensor's error as a fraction of its tolerance
    comparisons: tuple[Comparison, ...] = ()
    note: str = ""  # why unavailable, or the first failure

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.passed]

    @property
    def worst(self) -> Comparison | None:
        """The tensor that used the largest fraction of its tolerance (None: not checked)."""
        return max(self.comparisons, key=lambda c: c.fraction, default=None)

    def summary(self) -> str:
        """The verdict in words: passed or FAILED, with the worst tensor, its case and the
        fraction of its tolerance it used (or what is wrong with it); unavailable, with why."""
        worst = self.worst
        if self.verdict == "unavailable" or worst is None:
            return f"unavailable: {self.note}" if self.note else self.verdict
        where = f"{worst.tensor} ({worst.case})"
        miss = f": {worst.problem}" if worst.problem else \
            f" at {worst.fraction:.1%} of its tolerance"
        if self.verdict == "pass":
            return f"passed, worst tensor {where}{miss}"
        count = len(self.failures)
        return f"FAILED ({count} tensor{'s' if count != 1 else ''}), worst {where}{miss}"


def gate_cases(images: np.ndarray, latent: int, *, seed: int = 0, steps: int = 50,
               hidden: int = 512) -> Callable[..., list[tuple[Case, Expectation]]]:
    """The gate's cases at one latent size and their truth, computed when first asked for
    (the float64 oracle costs seconds: no backend to check, no oracle). The function returned
    takes the GEMM-input precision to calibrate for ("float32" by default); the float64 truth
    is computed once and shared by every calibration."""
    pairs: dict[str, list[tuple[Case, Expectation]]] = {}

    def get(gemm_inputs: str = "float32") -> list[tuple[Case, Expectation]]:
        if "float32" not in pairs:
            cases = build_cases(images, latent, seed=seed, steps=steps, hidden=hidden)
            pairs["float32"] = [(c, expectation(c)) for c in cases]
        if gemm_inputs not in pairs:
            pairs[gemm_inputs] = [(c, expectation(c, gemm_inputs, truth=e))
                                  for c, e in pairs["float32"]]
        return pairs[gemm_inputs]

    return get


def gate(backends: Sequence[Backend], pairs: Callable[..., Pairs],
         log: Callable[[str], None] = lambda _msg: None) -> dict[str, GateRecord]:
    """Each backend's verdict on the cases ``pairs(precision)`` gives, by backend name."""
    records = {}
    for backend in backends:
        status = backend.availability()
        if not status.available:
            records[backend.name] = GateRecord(backend.name, "unavailable", note=status.reason)
            log(f"{backend.name} unavailable: {status.reason}")
            continue
        mixed = gemm_inputs_of(backend)
        cases = pairs(mixed) if mixed != "float32" else pairs()
        comparisons = tuple(r for case, expected in cases for r in check(backend, case,
                                                                         expected))
        failed = [r for r in comparisons if not r.passed]
        note = f"{len(failed)} tensors failed, first {failed[0].case} {failed[0].tensor}" \
            if failed else ""
        record = GateRecord(backend.name, "fail" if failed else "pass",
                            max(r.fraction for r in comparisons), comparisons, note)
        log(f"{backend.name} agreement {record.verdict} (worst {record.worst_fraction:.1%} "
            "of tolerance)")
        records[backend.name] = record
    return records


def time(backends: Sequence[Backend], config: VAEConfig, data: np.ndarray, *, batch: int,
         repeats: int, steps: int, seed: int = 0,
         backend_noise: bool = False) -> list[Measurement]:
    """Steady-state throughput of ``backends`` at ``batch``, windows interleaved, each
    backend's diagnostics (stage breakdown, launch floor, memory) after."""
    return measure(list(backends), config, data, batch=batch, repeats=repeats, steps=steps,
                   seed=seed, backend_noise=backend_noise)


def train(backend: Backend, config: VAEConfig, data: Dataset, *, progress: bool = True,
          on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
    """``config.epochs`` epochs of ``backend`` on ``data``'s training images, evaluated on its
    test images after each: the one training loop."""
    return train_backend(backend, config, data.train_x, data.test_x, progress=progress,
                         on_epoch=on_epoch)


@dataclass(frozen=True)
class Evaluation:
    """What a trained model scores (nats per image; higher is better)."""

    final_train_elbo: float  # the last epoch's, over its batches as they were seen
    average_train_elbo: float  # the mean of the epochs' (the report's "average ELBO")
    final_test_elbo: float  # the test set after the last epoch, one noise sample per image
    test_iwae: float  # the importance-weighted bound on log p(x); NaN when not computed
    iwae_k: int  # its samples per image; 0 when not computed
    epochs: int

    def columns(self) -> dict:
        return dict(vars(self))


def evaluate(result: TrainResult, data: Dataset, *, iwae_k: int) -> Evaluation:
    """The trained model's ELBO numbers, and its importance-weighted bound with ``iwae_k``
    samples (a VAE only; 0 skips it) on the test set, seeded by the config's seed."""
    config = result.config
    iwae, k = math.nan, 0
    if config.model == "vae" and iwae_k > 0:
        iwae = importance_weighted_log_likelihood(
            result.model, fixed_test_set(config, data.test_x), k=iwae_k, seed=config.seed)
        k = iwae_k
    return Evaluation(result.final.train_elbo, result.average_train_elbo,
                      result.final.test_elbo, iwae, k, config.epochs)
