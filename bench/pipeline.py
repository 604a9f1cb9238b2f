"""The harness's stages, and the one place where their order is written (``execute``):

    gate -> time -> train -> evaluate

Each command is a selection of them with its settings (a ``Selection``):

    check       gate                                   (check.py, per latent size)
    profile     gate -> time                           (profile.py)
    run         gate -> time -> train -> evaluate      (run.run_latent, per latent size)
    experiment  train -> evaluate                      (experiment.py, per model; figures)
    gpu-check   run's selection on a GPU machine, then pytest -m gpu   (gpu_check.py)

and the tables (``tables.py``) and figures (``figures.py``) are made from the records. The
stages talk to backends only through ``kernels.base`` (its optional capabilities by protocol).

- **gate**: availability, then every tensor of every case against the reference's float64
  truth (``vae_ref.oracle``; computed once, and only if some backend can be checked). Only a
  backend that passes goes on, or one that failed where the selection forces it.
- **time**: interleaved throughput windows after warm-up, with each backend's diagnostics
  (``throughput.measure``), at each batch size.
- **train**: the one training loop (``training.train_backend``) at the first batch size; the
  reference trains through it like every backend.
- **evaluate**: the trained model's ELBO numbers and its importance-weighted bound.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TypedDict

import numpy as np

from kernels.base import Backend, gemm_inputs_of
from vae_ref import VAEConfig, importance_weighted_log_likelihood
from vae_ref.config import DEFAULT_HIDDEN, GATE_ADAM_STEPS
from vae_ref.data import Dataset
from vae_ref.oracle import Case, Expectation, build_cases, expectation
from vae_ref.training_outcome import EpochRecord, TrainResult, fixed_test_set

from . import machine_load
from .gate import Comparison, judge
from .progress import time_left
from .run_presets import RUN_WINDOW_STEPS, RUN_WINDOWS
from .tables import ResultRow
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
        miss = (
            f": {worst.problem}" if worst.problem else f" at {worst.fraction:.1%} of its tolerance"
        )
        if self.verdict == "pass":
            return f"passed, worst tensor {where}{miss}"
        count = len(self.failures)
        return f"FAILED ({count} tensor{'s' if count != 1 else ''}), worst {where}{miss}"


# gate_cases by their inputs, while ``shared_oracle`` is in force (else None).
_SHARED_CASES: dict[tuple, Callable[..., list[tuple[Case, Expectation]]]] | None = None


@contextmanager
def shared_oracle() -> Iterator[None]:
    """Within the block, ``gate_cases`` of the same images, latent size and settings are one:
    their truth and calibrations are computed once (gpu-check gates z = 20 in three stages;
    the oracle and its calibrations cost 10-25 s a latent size on a 2-core CPU)."""
    global _SHARED_CASES
    outer = _SHARED_CASES
    _SHARED_CASES = {} if outer is None else outer
    try:
        yield
    finally:
        _SHARED_CASES = outer


def gate_cases(
    images: np.ndarray,
    latent: int,
    *,
    seed: int = 0,
    steps: int = GATE_ADAM_STEPS,
    hidden: int = DEFAULT_HIDDEN,
) -> Callable[..., list[tuple[Case, Expectation]]]:
    """The gate's cases at one latent size and their truth, computed when first asked for
    (the float64 oracle costs seconds: no backend to check, no oracle). The function returned
    takes the GEMM-input precision to calibrate for ("float32" by default); the float64 truth
    is computed once and shared by every calibration (and by every ``gate_cases`` of the same
    inputs under ``shared_oracle``)."""
    key = None
    if _SHARED_CASES is not None:
        key = (
            hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
            images.shape,
            latent,
            seed,
            steps,
            hidden,
        )
        if key in _SHARED_CASES:
            return _SHARED_CASES[key]
    pairs: dict[str, list[tuple[Case, Expectation]]] = {}

    def get(gemm_inputs: str = "float32") -> list[tuple[Case, Expectation]]:
        if "float32" not in pairs:
            cases = build_cases(images, latent, seed=seed, steps=steps, hidden=hidden)
            pairs["float32"] = [(c, expectation(c)) for c in cases]
        if gemm_inputs not in pairs:
            pairs[gemm_inputs] = [
                (c, expectation(c, gemm_inputs, truth=e)) for c, e in pairs["float32"]
            ]
        return pairs[gemm_inputs]

    if key is not None:
        assert _SHARED_CASES is not None  # a key is made only under shared_oracle (above)
        _SHARED_CASES[key] = get
    return get


def gate(
    backends: Sequence[Backend],
    pairs: Callable[..., Pairs],
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, GateRecord]:
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
        comparisons = tuple(r for case, expected in cases for r in judge(backend, case, expected))
        failed = [r for r in comparisons if not r.passed]
        note = (
            f"{len(failed)} tensors failed, first {failed[0].case} {failed[0].tensor}"
            if failed
            else ""
        )
        record = GateRecord(
            backend.name,
            "fail" if failed else "pass",
            max(r.fraction for r in comparisons),
            comparisons,
            note,
        )
        log(
            f"{backend.name} agreement {record.verdict} (worst {record.worst_fraction:.1%} "
            "of tolerance)"
        )
        records[backend.name] = record
    return records


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
            result.model, fixed_test_set(config, data.test_x), k=iwae_k, seed=config.seed
        )
        k = iwae_k
    return Evaluation(
        result.final.train_elbo,
        result.average_train_elbo,
        result.final.test_elbo,
        iwae,
        k,
        config.epochs,
    )


STAGES = ("gate", "time", "train", "evaluate")  # the order, whatever a selection names


@dataclass(frozen=True)
class Selection:
    """A command: the stages it runs (of STAGES) and their settings."""

    stages: tuple[str, ...]
    batch_sizes: tuple[int, ...] = (128,)  # time: each of them; train: the first
    repeats: int = RUN_WINDOWS  # timed windows per backend and batch size
    window_steps: int = RUN_WINDOW_STEPS  # training steps per timed window
    backend_noise: bool = False  # timed steps draw their own noise (on a GPU: in the step)
    include_failed: bool = False  # time and train backends that failed the gate anyway
    iwae_k: int = 0  # importance samples of the evaluation's bound (0: none)
    seed: int = 0  # of the timed batches and their noise

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; the stages are {STAGES}")
        if "evaluate" in self.stages and "train" not in self.stages:
            raise ValueError("evaluate needs train: it scores the trained model")
        if not self.batch_sizes:
            raise ValueError("a selection needs at least one batch size")

    def runs(self, stage: str) -> bool:
        return stage in self.stages


@dataclass
class Outcome:
    """What the stages of one ``execute`` produced, filled in stage by stage."""

    backends: list[Backend]
    config: VAEConfig | None = None  # what was timed and trained (its batch size replaced)
    gates: dict[str, GateRecord] = field(default_factory=dict)  # by backend (gate ran)
    admitted: list[Backend] = field(default_factory=list)  # went on past the gate
    # batch size -> backend -> its measurement
    measurements: dict[int, dict[str, Measurement]] = field(default_factory=dict)
    # batch size -> what else the machine did while it was timed (machine_load.Watch)
    machine_load: dict[int, dict] = field(default_factory=dict)
    trained: dict[str, TrainResult] = field(default_factory=dict)
    evaluations: dict[str, Evaluation] = field(default_factory=dict)

    @property
    def refused(self) -> list[str]:
        """Backends that failed the gate and were not forced on."""
        admitted = {b.name for b in self.admitted}
        return [
            name for name, g in self.gates.items() if g.verdict == "fail" and name not in admitted
        ]


def admitted(record: GateRecord | None, include_failed: bool) -> bool:
    """Whether a backend goes on past the gate: it passed (or no gate ran), or it failed and
    the selection forces it. An unavailable backend never does."""
    if record is None:
        return True
    return record.verdict == "pass" or include_failed and record.verdict == "fail"


def execute(
    selection: Selection,
    backends: Sequence[Backend],
    *,
    config: VAEConfig | None = None,
    cases: Callable[..., Pairs] | None = None,
    data: Dataset | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_stage: Callable[[str, Outcome], None] = lambda _stage, _outcome: None,
) -> Outcome:
    """Run the stages ``selection`` names, in the order of STAGES, on ``backends``: the gate
    on ``cases`` (``gate_cases``), timing and training on ``data`` with ``config`` (its batch
    size replaced by the selection's). ``on_stage(stage, outcome)`` is called after each
    stage's step (after the gate, after each batch size's timing, after each backend's
    training and evaluation), so a caller can save what stands."""
    outcome = Outcome(list(backends), config)
    if selection.runs("gate"):
        if cases is None:
            raise ValueError("the gate needs its cases")
        outcome.gates = gate(backends, cases, log)
    outcome.admitted = [
        b for b in backends if admitted(outcome.gates.get(b.name), selection.include_failed)
    ]
    on_stage("gate", outcome)
    if (selection.runs("time") or selection.runs("train")) and (config is None or data is None):
        raise ValueError("timing and training need a config and data")

    if selection.runs("time") and outcome.admitted:
        assert config is not None and data is not None  # refused above otherwise
        _time_stage(selection, outcome, config, data, log, on_stage)
    if selection.runs("train"):
        assert config is not None and data is not None  # refused above otherwise
        _train_stage(selection, outcome, config, data, log, progress, on_epoch, on_stage)
    return outcome


def _time_stage(
    selection: Selection,
    outcome: Outcome,
    config: VAEConfig,
    data: Dataset,
    log: Callable[[str], None],
    on_stage: Callable[[str, Outcome], None],
) -> None:
    """The admitted backends timed together, interleaved, at each batch size of the selection,
    with the machine's load watched meanwhile."""
    for batch in selection.batch_sizes:
        log(f"batch {batch}: timing {', '.join(b.name for b in outcome.admitted)}")

        def timed(done: int, of: int, each: float, batch: int = batch) -> None:
            log(
                f"batch {batch}: {done} of {of} rounds of windows timed; "
                f"{time_left(each * (of - done))}"
            )

        watch = machine_load.Watch()
        outcome.measurements[batch] = {
            m.backend: m
            for m in measure(
                outcome.admitted,
                config.replace(batch_size=batch),
                data.train_x,
                batch=batch,
                repeats=selection.repeats,
                steps=selection.window_steps,
                seed=selection.seed,
                backend_noise=selection.backend_noise,
                on_round=timed,
            )
        }
        outcome.machine_load[batch] = watch.result()
        if machine_load.busy(outcome.machine_load[batch]):
            log(
                f"batch {batch}: warning: the machine was busy while timing: "
                f"{machine_load.describe(outcome.machine_load[batch])}"
            )
        on_stage("time", outcome)


def _train_stage(
    selection: Selection,
    outcome: Outcome,
    config: VAEConfig,
    data: Dataset,
    log: Callable[[str], None],
    progress: bool,
    on_epoch: Callable[[EpochRecord], None] | None,
    on_stage: Callable[[str, Outcome], None],
) -> None:
    """Each admitted backend trained at the selection's first batch size, then evaluated."""
    train_config = config.replace(batch_size=selection.batch_sizes[0])
    for backend in outcome.admitted:
        log(f"training {backend.name} for {train_config.epochs} epochs on {data.name}")
        result = train_backend(
            backend,
            train_config,
            data.train_x,
            data.test_x,
            progress=progress,
            on_epoch=on_epoch,
        )
        outcome.trained[backend.name] = result
        if selection.runs("evaluate"):
            outcome.evaluations[backend.name] = evaluate(result, data, iwae_k=selection.iwae_k)
        on_stage("train", outcome)


class _RowIdentity(TypedDict):
    """A row's fields beside its backend, batch size and timing (``tables.ResultRow``)."""

    agreement: str
    worst_fraction: float
    dataset: str
    seed: int


def result_rows(
    outcome: Outcome,
    selection: Selection,
    *,
    latent: int,
    dataset: str,
    seed: int,
    peaks: Mapping[str, float],
    complete: bool,
) -> list[ResultRow]:
    """The results table's rows of ``outcome``, one per backend and batch size: its gate
    verdict on each, its timing at that batch size, its scores at the first (where it was
    trained). ``peaks``: GFLOP/s by ``throughput.peak_key``. While the stages run
    (``complete`` false) only the batch sizes timed so far have rows (the first, before any)."""
    batches = (
        list(selection.batch_sizes)
        if complete
        else (
            [b for b in selection.batch_sizes if b in outcome.measurements]
            or list(selection.batch_sizes[:1])
        )
    )
    rows = []
    for batch in batches:
        for backend in outcome.backends:
            record = outcome.gates.get(backend.name)
            identity = _RowIdentity(
                agreement=record.verdict if record else "",
                worst_fraction=record.worst_fraction if record else math.nan,
                dataset=dataset,
                seed=seed,
            )
            measured = outcome.measurements.get(batch, {}).get(backend.name)
            if measured is None:
                row = ResultRow(
                    backend=backend.name,
                    device=backend.device,
                    precision=gemm_inputs_of(backend),
                    latent_dim=latent,
                    batch_size=batch,
                    **identity,
                )
            else:
                assert outcome.config is not None  # a measurement was timed at the config
                row = measured.row(
                    outcome.config.replace(batch_size=batch), batch, peaks, **identity
                )
            notes = [record.note if record else ""] + (
                []
                if measured is None
                else [f"{name} failed: {why}" for name, why in measured.diagnostic_errors.items()]
            )
            row.note = "; ".join(filter(None, notes))
            scores = outcome.evaluations.get(backend.name)
            if scores is not None and batch == selection.batch_sizes[0]:
                # the k asked for (the evaluation's own is 0 where it computed none)
                row = replace(row, **(scores.columns() | {"iwae_k": selection.iwae_k}))
            rows.append(row)
    return rows
