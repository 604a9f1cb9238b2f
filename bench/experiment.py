"""The report's experiment: the VAE at several latent sizes and the AE, trained on one dataset,
with the ELBO table, the per-epoch curves and the figures written to a results directory.

The stages of ``pipeline.py`` per model (train, evaluate), then the tables and figures. Each
finished model is a unit of the results store (``store.py``: its record and its weights),
saved as soon as it finishes, so an interrupted run keeps what it finished; a re-run reuses
a model made with the same settings and data and refuses one made otherwise, unless
``retrain`` retrains it. The VAEs are trained by ``spec.backend`` (the reference, ``torch``,
by default), the AE always by the reference.

What it writes into the results directory (default ``results/experiment-<dataset>-<N>ep``):

- ``table.csv``, ``table.md``: per model its latent size, beta and seed, final and average
  train ELBO, final test ELBO and its two terms, the importance-weighted test
  log-likelihood (k samples), the train-test gap, the active units and the KL of each
  latent dimension, epochs, time;
  ``table.md`` ends with the provenance (versions, CPU, threads, data and its hash, seed,
  commit, and when and where each model was trained).
- ``curves.csv``, ``elbo_curves.png``: per-epoch train and test ELBO (BCE and KL apart).
- ``elbo_by_latent.png``, ``active_units_by_latent.png``: against the latent size, a line per
  beta with the range over seeds; ``kl_per_dimension_z<largest>.png``: each dimension's KL,
  sorted, a line per beta.
- ``reconstructions_<model>.png``: 10 test images per class beside their reconstructions
  (this and the three below: the first seed's models).
- ``prior_samples_<model>.png``: decodings of z ~ N(0, I).
- ``merge_z<d>.png``: AE and VAE side by side: two test images, their reconstructions, the
  decoding of the mean of their codes, and of a random code.
- ``latent_scatter_vae-z2.png``, ``manifold_vae-z2.png``: at z = 2, the test set's posterior
  means by class, and the decoded grid through the prior's quantiles.
- ``provenance.json``; ``cells/<model>.json`` and ``.npz`` (each model's record and weights;
  the weights are not committed).

Losses are nats per image: BCE-with-logits summed over the 784 pixels plus the analytic KL;
the training objective is their batch mean with β on the KL; the ELBO reported is
−(BCE + KL) whatever β (for the AE, −BCE: a reconstruction score, not a bound).
``--binarize`` samples binary pixels each step and binarizes the test set once.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from kernels import REFERENCE_BACKEND, create_backend
from vae_ref import AE, VAE, VAEConfig, build_model, export_params, import_params
from vae_ref.atomic import atomic_write_text
from vae_ref.config import DEFAULT_HIDDEN, DEFAULT_LATENTS
from vae_ref.data import Dataset

from . import file_names as files
from . import pipeline, provenance, tables
from .experiment_figures import write_figures
from .progress import eta_text
from .results_dir import claim
from .store import ResultsStore, StoreError

REFERENCE = REFERENCE_BACKEND  # the AE exists only there


class ExperimentError(RuntimeError):
    """The experiment cannot proceed as asked (e.g. the results directory holds other work)."""


@dataclass(frozen=True)
class ExperimentSpec:
    """What to train: the VAEs of the grid latent size x beta x seed, the AEs of each latent
    size of ``ae_latents`` x seed; every model shares all the rest."""

    dataset: str  # name of the dataset (recorded in every output)
    latents: tuple[int, ...] = DEFAULT_LATENTS  # latent sizes of the VAEs
    ae_latents: tuple[int, ...] = (20,)  # latent sizes of the vanilla AEs (may be empty)
    epochs: int = 50
    betas: tuple[float, ...] = (1.0,)  # KL weights of the VAEs (beta-VAE where != 1)
    binarize: bool = False  # dynamic binarization of training images; test set binarized once
    batch_size: int = 128
    lr: float = 3e-4
    seeds: tuple[int, ...] = (0,)  # each model is trained once per seed
    iwae_k: int = 100  # importance samples for the test log-likelihood; 0 skips it
    backend: str = REFERENCE  # who trains the VAEs
    threads: int | None = None  # backend threads (None: all cores); recorded in provenance
    hidden_dim: int = DEFAULT_HIDDEN  # width of the hidden layers

    def __post_init__(self) -> None:
        if not self.latents and not self.ae_latents:
            raise ExperimentError("nothing to train: give at least one VAE or AE latent size")
        for z in (*self.latents, *self.ae_latents):
            if z < 1:
                raise ExperimentError(f"latent sizes must be positive integers, got {z}")
        if self.iwae_k < 0:
            raise ExperimentError(f"--iwae-k must be >= 0 (0 skips it), got {self.iwae_k}")
        for name, values in (
            ("latents", self.latents),
            ("ae_latents", self.ae_latents),
            ("betas", self.betas),
            ("seeds", self.seeds),
        ):
            if len(set(values)) != len(values):
                raise ExperimentError(f"{name} repeat: {values} (each would be trained twice)")
        if not self.betas or not self.seeds:
            raise ExperimentError("give at least one beta and one seed")
        for beta in self.betas:
            if not (math.isfinite(beta) and beta >= 0):
                raise ExperimentError(f"a beta must be a finite number >= 0, got {beta}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ExperimentError(f"the learning rate must be a finite number > 0, got {self.lr}")

    def configs(self) -> list[VAEConfig]:
        """Every model, seed by seed: the VAEs beta by beta, then the AEs."""
        common = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "binarize": self.binarize,
            "hidden_dim": self.hidden_dim,
        }
        return [
            config
            for seed in self.seeds
            for config in (
                [
                    VAEConfig(latent_dim=z, beta=beta, seed=seed, **common)
                    for beta in self.betas
                    for z in self.latents
                ]
                + [
                    VAEConfig(latent_dim=z, model="ae", seed=seed, **common)
                    for z in self.ae_latents
                ]
            )
        ]

    def model_name(self, config: VAEConfig) -> str:
        """A model's name in tables and file names: the config's ('vae-z20', 'vae-z20-beta4'),
        with its seed where the experiment trains several ('vae-z20-seed1'), so that a
        one-seed experiment's names do not depend on which seed."""
        return config.name if len(self.seeds) == 1 else f"{config.name}-seed{config.seed}"

    def trainer(self, config: VAEConfig) -> str:
        """Who trains this model: the chosen backend for the VAEs, the reference for the AE."""
        return self.backend if config.model == "vae" else REFERENCE


def default_out_dir(spec: ExperimentSpec, root: Path = Path("results")) -> Path:
    name = f"experiment-{spec.dataset}-{spec.epochs}ep"
    if spec.backend != REFERENCE:
        name += f"-{spec.backend}"
    if spec.hidden_dim != DEFAULT_HIDDEN:
        name += f"-h{spec.hidden_dim}"
    if spec.binarize:
        name += "-binarized"
    if spec.betas != (1.0,):
        name += "-beta" + "-".join(f"{beta:g}" for beta in spec.betas)
    return root / name


@dataclass
class FinishedModel:
    name: str  # ExperimentSpec.model_name
    config: VAEConfig
    summary: dict  # one row of the table
    history: list[dict]  # per-epoch records
    model: VAE | AE
    trained: dict  # provenance of the training run (commit, host, time): models may be reused


def _identity(config: VAEConfig, spec: ExperimentSpec, data: Dataset) -> dict:
    """What a finished model must have been made with to be reused (the store's rule)."""
    return {
        "config": config.to_dict(),
        "backend": spec.trainer(config),
        "dataset": data.name,
        "data_sha256": data.fingerprint,
    }


def _load_finished(
    store: ResultsStore, config: VAEConfig, spec: ExperimentSpec, data: Dataset
) -> FinishedModel | None:
    """The saved model for ``config`` if the store holds one made exactly so."""
    try:
        name = spec.model_name(config)
        record = store.finished(name, _identity(config, spec, data))
        if record is None:
            return None
        model = build_model(config)
        import_params(model, store.arrays(name))
        model.eval()
        summary = record["summary"]
        if any(column not in summary for column in tables.LATENT_COLUMNS):
            # Saved before these columns existed: computed from its weights, as if trained now.
            summary = {**summary, **latent_columns(model, config, data, record["history"][-1])}
        return FinishedModel(name, config, summary, record["history"], model, record["provenance"])
    except StoreError as error:
        raise ExperimentError(str(error)) from None
    except (KeyError, TypeError, ValueError) as error:
        raise ExperimentError(
            f"{store.out / 'cells' / (spec.model_name(config) + '.json')} is damaged "
            f"({type(error).__name__}: {error}); delete it to retrain that "
            "model, or pass --retrain to retrain every model"
        ) from None


def _train_one(
    config: VAEConfig, spec: ExperimentSpec, data: Dataset, store: ResultsStore, progress: bool, log
) -> FinishedModel:
    name = spec.model_name(config)

    def report(r) -> None:
        log(
            f"  {name} epoch {r.epoch:3d}/{config.epochs}: train ELBO {r.train_elbo:9.2f}"
            f"  test ELBO {r.test_elbo:9.2f}  ({r.seconds:.2f} s)"
        )

    trainer = spec.trainer(config)
    backend = create_backend(trainer, threads=spec.threads)
    started = time.perf_counter()
    outcome = pipeline.execute(
        pipeline.Selection(
            stages=("train", "evaluate"),
            batch_sizes=(config.batch_size,),
            iwae_k=spec.iwae_k,
            seed=config.seed,
        ),
        [backend],
        config=config,
        data=data,
        progress=progress,
        on_epoch=report,
    )
    result, scores = outcome.trained[backend.name], outcome.evaluations[backend.name]
    if scores.iwae_k:
        seconds = time.perf_counter() - started - result.train_seconds
        log(
            f"  {name}: test log p(x) >= {scores.test_iwae:.2f} (IWAE, "
            f"k={scores.iwae_k}, {seconds:.1f} s)"
        )
    summary = {
        "model": config.model,
        "backend": trainer,
        "latent_dim": config.latent_dim,
        "hidden_dim": config.hidden_dim,
        "beta": config.beta if config.model == "vae" else math.nan,
        **{k: v for k, v in scores.columns().items() if k != "epochs"},
        "epochs": config.epochs,
        "train_seconds": result.train_seconds,
        "seconds_per_epoch": statistics.median(r.seconds for r in result.history),
        "dataset": data.name,
        "seed": config.seed,
    }
    history = [r.to_dict() for r in result.history]
    summary |= latent_columns(result.model, config, data, history[-1])
    trained = provenance.collect(data=data)
    store.save(
        name,
        {"summary": summary, "history": history, "provenance": trained},
        _identity(config, spec, data),
        arrays=export_params(result.model),
    )
    return FinishedModel(name, config, summary, history, result.model, trained)


def latent_columns(model: VAE | AE, config: VAEConfig, data: Dataset, last_epoch: dict) -> dict:
    """How a trained model uses its latent space, as the table's ``tables.LATENT_COLUMNS``:
    the terms of its last epoch's test ELBO, its train set's ELBO less its test set's (the
    generalization gap, both evaluated with the final weights and the same single-sample
    estimate), and for a VAE its active units and the KL of each latent dimension on the
    test set (``vae_ref.latent_usage``: Burda et al.'s definition)."""
    from vae_ref import evaluate_elbo, latent_usage
    from vae_ref.training_outcome import fixed_test_set

    train = evaluate_elbo(model, fixed_test_set(config, data.train_x), seed=config.seed)
    columns = {
        "test_reconstruction": last_epoch["test_reconstruction"],
        "test_kl": last_epoch["test_kl"] if config.model == "vae" else math.nan,
        "train_test_gap": train.elbo - last_epoch["test_elbo"],
        "active_units": math.nan,
        "kl_per_dim": "",
    }
    if config.model == "vae":
        usage = latent_usage(model, fixed_test_set(config, data.test_x))
        columns.update(
            active_units=usage.active_units,
            kl_per_dim=" ".join(f"{v:.6g}" for v in usage.kl_per_dim),
        )
    return columns


def run_experiment(
    spec: ExperimentSpec,
    data: Dataset,
    out: Path,
    *,
    retrain: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Train (or reuse) every model of ``spec``; write tables and figures into ``out``, held
    as its one writer (``bench.results_dir``)."""
    if data.name != spec.dataset:
        raise ExperimentError(f"spec names dataset {spec.dataset!r} but got {data.name!r}")
    if spec.batch_size > len(data.train_x):
        raise ExperimentError(
            f"batch size {spec.batch_size} exceeds the {len(data.train_x)} "
            f"training images of {data.name}; give --batch-size up to "
            f"{len(data.train_x)}"
        )
    with claim(out, "experiment"):
        # The code's commit as this call found it: its own writes into a results directory
        # inside the checkout (tables after each model, figures) must not make it "+dirty".
        commit = provenance.git_commit()
        store = ResultsStore(out, redo="--retrain to retrain it", arrays_are="weights")
        log(f"dataset: {data.describe()}")
        log(f"results: {out}")
        configs = spec.configs()
        earlier = {
            spec.model_name(c): None if retrain else _load_finished(store, c, spec, data)
            for c in configs
        }
        todo = sum(done is None for done in earlier.values())
        finished: list[FinishedModel] = []
        spent: list[float] = []  # seconds of each model trained in this call
        for config in configs:
            name = spec.model_name(config)
            done = earlier[name]
            if done is not None:
                log(f"{name}: already finished in {out} (use --retrain to retrain), skipping")
            else:
                log(
                    f"{name}: model {len(spent) + 1} of {todo} to train"
                    f"{eta_text(spent, todo - len(spent))}; training {config.epochs} epochs "
                    f"on {data.name}"
                )
                started = time.monotonic()
                done = _train_one(config, spec, data, store, progress, log)
                spent.append(time.monotonic() - started)
            finished.append(done)
            # Rewrite the tables after every model: an interruption keeps every finished row.
            table = write_tables(finished, spec, data, out, commit)
        write_figures(finished, data, out, log)
        return table


def write_tables(
    finished: list[FinishedModel],
    spec: ExperimentSpec,
    data: Dataset,
    out: Path,
    commit: str,
) -> pd.DataFrame:
    """table.csv, curves.csv, provenance.json and table.md of ``finished``, the code's
    ``commit`` recorded as the call that writes them found it."""
    table = pd.DataFrame([f.summary for f in finished], columns=list(tables.TABLE_COLUMNS))
    curves = pd.DataFrame(
        [
            {
                "dataset": data.name,
                "name": f.name,
                "model": f.config.model,
                "latent_dim": f.config.latent_dim,
                **h,
            }
            for f in finished
            for h in f.history
        ],
        columns=list(tables.CURVE_COLUMNS),
    )
    record = provenance.collect(
        data=data,
        seed=spec.seeds[0] if len(spec.seeds) == 1 else list(spec.seeds),
        spec=asdict(spec),
        git_commit=commit,
    )
    # Reused models were trained by an earlier invocation: say by which.
    record["models_trained"] = {
        f.name: f"{f.trained['timestamp']} on {f.trained['host']}, "
        f"commit {f.trained['git_commit']}, {f.trained['torch_threads']} threads"
        for f in finished
    }
    atomic_write_text(out / files.TABLE, table.to_csv(index=False))
    atomic_write_text(out / files.CURVES, curves.to_csv(index=False))
    atomic_write_text(out / files.PROVENANCE, json.dumps(record, indent=1))
    atomic_write_text(
        out / files.TABLE_MD, tables.experiment_table(table, asdict(spec), data.describe(), record)
    )
    return table
