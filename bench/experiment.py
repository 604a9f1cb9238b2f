"""The report's experiment: the VAE at several latent sizes and the AE, trained on one dataset,
with the ELBO table, the per-epoch curves and the figures written to a results directory.

Each finished model is saved (``models/<name>.json`` and ``.npz``) as soon as it finishes, so
an interrupted run keeps what it finished, and a re-run skips it unless ``force``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kernels import create_backend
from vae_ref import (
    AE,
    VAE,
    VAEConfig,
    build_model,
    export_params,
    import_params,
    importance_weighted_log_likelihood,
    load_params,
    save_params,
    train,
)
from vae_ref.atomic import atomic_write_text
from vae_ref.data import Dataset
from vae_ref.train import fixed_test_set

from . import figures, provenance
from .results_dir import claim
from .training import train_backend

TABLE_COLUMNS = (
    "model",
    "backend",
    "latent_dim",
    "beta",
    "final_train_elbo",
    "average_train_elbo",
    "final_test_elbo",
    "test_iwae",
    "iwae_k",
    "epochs",
    "train_seconds",
    "seconds_per_epoch",
    "dataset",
    "seed",
)
CURVE_COLUMNS = (
    "dataset",
    "name",
    "model",
    "latent_dim",
    "epoch",
    "train_elbo",
    "train_reconstruction",
    "train_kl",
    "test_elbo",
    "test_reconstruction",
    "test_kl",
    "seconds",
)


class ExperimentError(RuntimeError):
    """The experiment cannot proceed as asked (e.g. the results directory holds other work)."""


@dataclass(frozen=True)
class ExperimentSpec:
    """What to train; every model of the experiment shares all but its latent size."""

    dataset: str  # name of the dataset (recorded in every output)
    latents: tuple[int, ...] = (2, 10, 20, 50)  # latent sizes of the VAEs
    ae_latents: tuple[int, ...] = (20,)  # latent sizes of the vanilla AEs (may be empty)
    epochs: int = 50
    beta: float = 1.0  # KL weight of the VAEs (beta-VAE when != 1)
    binarize: bool = False  # dynamic binarization of training images; test set binarized once
    batch_size: int = 128
    lr: float = 3e-4
    seed: int = 0
    iwae_k: int = 100  # importance samples for the test log-likelihood; 0 skips it
    backend: str = "torch"  # who trains the VAEs ("torch" = the reference's own loop)
    threads: int | None = None  # backend threads (None: all cores); recorded in provenance

    def __post_init__(self) -> None:
        if not self.latents and not self.ae_latents:
            raise ExperimentError("nothing to train: give at least one VAE or AE latent size")
        for z in (*self.latents, *self.ae_latents):
            if z < 1:
                raise ExperimentError(f"latent sizes must be positive integers, got {z}")
        if self.iwae_k < 0:
            raise ExperimentError(f"--iwae-k must be >= 0 (0 skips it), got {self.iwae_k}")
        for name, values in (("latents", self.latents), ("ae_latents", self.ae_latents)):
            if len(set(values)) != len(values):
                raise ExperimentError(f"{name} repeat: {values} (each would be trained twice)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ExperimentError(f"the learning rate must be a finite number > 0, got {self.lr}")

    def configs(self) -> list[VAEConfig]:
        common = dict(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                      seed=self.seed, binarize=self.binarize)
        vaes = [VAEConfig(latent_dim=z, beta=self.beta, **common) for z in self.latents]
        aes = [VAEConfig(latent_dim=z, model="ae", **common) for z in self.ae_latents]
        return vaes + aes


def default_out_dir(spec: ExperimentSpec, root: Path = Path("results")) -> Path:
    name = f"experiment-{spec.dataset}-{spec.epochs}ep"
    if spec.backend != "torch":
        name += f"-{spec.backend}"
    if spec.binarize:
        name += "-binarized"
    if spec.beta != 1.0:
        name += f"-beta{spec.beta:g}"
    return root / name


@dataclass
class FinishedModel:
    config: VAEConfig
    summary: dict  # one row of the table
    history: list[dict]  # per-epoch records
    model: VAE | AE
    trained: dict  # provenance of the training run (commit, host, time): models may be reused


def _record_paths(out: Path, config: VAEConfig) -> tuple[Path, Path]:
    return out / "models" / f"{config.name}.json", out / "models" / f"{config.name}.npz"


# The first line of a Git LFS pointer file (https://git-lfs.com/spec/v1), found in place of
# the weights when a clone has not fetched the LFS objects.
_LFS_POINTER = b"version https://git-lfs"


def _load_finished(out: Path, config: VAEConfig, data: Dataset,
                   backend: str) -> FinishedModel | None:
    """The saved result for ``config`` if the directory holds one trained exactly so: the same
    settings, backend and data (by content). Anything else there is refused, with what to do."""
    record_path, params_path = _record_paths(out, config)
    if not (record_path.exists() and params_path.exists()):
        return None
    retrain = "delete it to retrain that model, or pass --force to retrain every model"
    try:
        record = json.loads(record_path.read_text())
        summary, history, trained = record["summary"], record["history"], record["provenance"]
        if not isinstance(summary, dict):
            raise TypeError("summary is not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ExperimentError(f"{record_path} is damaged ({type(error).__name__}: {error}); "
                              f"{retrain}") from None
    summary.setdefault("backend", "torch")  # records written before backends existed
    trained_by = summary["backend"]
    if (record.get("config") != config.to_dict() or record.get("dataset") != data.name
            or (config.model == "vae" and trained_by != backend)):
        raise ExperimentError(
            f"{record_path} holds {config.name} trained with different settings "
            f"(backend {trained_by}, dataset {record.get('dataset')!r}, "
            f"config {record.get('config')}); "
            "use another --out directory, or --force to retrain and overwrite it"
        )
    if record.get("data_sha256") != data.fingerprint:
        raise ExperimentError(
            f"{record_path} holds {config.name} trained on other data than {data.describe()} "
            f"(data sha256 {record.get('data_sha256') or 'not recorded'}, now "
            f"{data.fingerprint}); use another --out directory, or --force to retrain it")
    with open(params_path, "rb") as f:
        head = f.read(len(_LFS_POINTER))
    if head == _LFS_POINTER:
        raise ExperimentError(f"{params_path} is a Git LFS pointer, not the weights: fetch "
                              f"them with `git lfs pull`, or {retrain}")
    model = build_model(config)
    try:
        import_params(model, load_params(params_path))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise ExperimentError(f"{params_path} is damaged ({type(error).__name__}: {error}); "
                              f"{retrain}") from None
    model.eval()
    return FinishedModel(config, summary, history, model, trained)


def _train_one(
    config: VAEConfig, spec: ExperimentSpec, data: Dataset, out: Path, progress: bool, log
) -> FinishedModel:
    def report(r) -> None:
        log(f"  {config.name} epoch {r.epoch:3d}/{config.epochs}: train ELBO {r.train_elbo:9.2f}"
            f"  test ELBO {r.test_elbo:9.2f}  ({r.seconds:.2f} s)")

    # The AE exists only in the reference; other backends implement the VAE.
    backend_name = spec.backend if config.model == "vae" else "torch"
    if backend_name == "torch":
        result = train(config, data.train_x, data.test_x, progress=progress, on_epoch=report)
    else:
        backend = create_backend(backend_name, threads=spec.threads)
        result = train_backend(backend, config, data.train_x, data.test_x, progress=progress,
                               on_epoch=report)
    model = result.model.eval()
    iwae = math.nan
    if config.model == "vae" and spec.iwae_k > 0:
        started = time.perf_counter()
        iwae = importance_weighted_log_likelihood(
            model, fixed_test_set(config, data.test_x), k=spec.iwae_k, seed=config.seed
        )
        log(f"  {config.name}: test log p(x) >= {iwae:.2f} (IWAE, k={spec.iwae_k}, "
            f"{time.perf_counter() - started:.1f} s)")
    summary = {
        "model": config.model,
        "backend": backend_name,
        "latent_dim": config.latent_dim,
        "beta": config.beta if config.model == "vae" else math.nan,
        "final_train_elbo": result.final.train_elbo,
        "average_train_elbo": result.average_train_elbo,
        "final_test_elbo": result.final.test_elbo,
        "test_iwae": iwae,
        "iwae_k": spec.iwae_k if config.model == "vae" and spec.iwae_k > 0 else 0,
        "epochs": config.epochs,
        "train_seconds": result.train_seconds,
        "seconds_per_epoch": statistics.median(r.seconds for r in result.history),
        "dataset": data.name,
        "seed": config.seed,
    }
    history = [r.to_dict() for r in result.history]
    trained = provenance.collect(data=data)
    record_path, params_path = _record_paths(out, config)
    save_params(params_path, export_params(model))
    # The JSON is written last: its presence marks the model finished.
    atomic_write_text(record_path, json.dumps({
        "config": config.to_dict(), "dataset": data.name, "data_sha256": data.fingerprint,
        "summary": summary, "history": history, "provenance": trained,
    }, indent=1, allow_nan=True))
    return FinishedModel(config, summary, history, model, trained)


def run_experiment(
    spec: ExperimentSpec,
    data: Dataset,
    out: Path,
    *,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Train (or reuse) every model of ``spec``; write tables and figures into ``out``, held
    as its one writer (``bench.results_dir``)."""
    if data.name != spec.dataset:
        raise ExperimentError(f"spec names dataset {spec.dataset!r} but got {data.name!r}")
    if spec.batch_size > len(data.train_x):
        raise ExperimentError(f"batch size {spec.batch_size} exceeds the {len(data.train_x)} "
                              f"training images of {data.name}; give --batch-size up to "
                              f"{len(data.train_x)}")
    with claim(out, "experiment"):
        log(f"dataset: {data.describe()}")
        log(f"results: {out}")
        finished: list[FinishedModel] = []
        for config in spec.configs():
            done = None if force else _load_finished(out, config, data, spec.backend)
            if done is not None:
                log(f"{config.name}: already finished in {out} (use --force to retrain), "
                    "skipping")
            else:
                log(f"{config.name}: training {config.epochs} epochs on {data.name}")
                done = _train_one(config, spec, data, out, progress, log)
            finished.append(done)
            # Rewrite the tables after every model: an interruption keeps every finished row.
            table = write_tables(finished, spec, data, out)
        write_figures(finished, data, out, log)
        return table


def write_tables(finished: list[FinishedModel], spec: ExperimentSpec, data: Dataset,
                 out: Path) -> pd.DataFrame:
    table = pd.DataFrame([f.summary for f in finished], columns=list(TABLE_COLUMNS))
    curves = pd.DataFrame(
        [{"dataset": data.name, "name": f.config.name, "model": f.config.model,
          "latent_dim": f.config.latent_dim, **h} for f in finished for h in f.history],
        columns=list(CURVE_COLUMNS),
    )
    record = provenance.collect(data=data, seed=spec.seed, spec=asdict(spec))
    # Reused models were trained by an earlier invocation: say by which.
    record["models_trained"] = {
        f.config.name: f"{f.trained['timestamp']} on {f.trained['host']}, "
        f"commit {f.trained['git_commit']}, {f.trained['torch_threads']} threads"
        for f in finished
    }
    atomic_write_text(out / "table.csv", table.to_csv(index=False))
    atomic_write_text(out / "curves.csv", curves.to_csv(index=False))
    atomic_write_text(out / "provenance.json", json.dumps(record, indent=1))
    atomic_write_text(out / "table.md", markdown_table(table, spec, data, record))
    return table


def markdown_table(table: pd.DataFrame, spec: ExperimentSpec, data: Dataset,
                   record: dict) -> str:
    def nats(v: float | None) -> str:
        # "—" marks a value not computed; a computed NaN is shown as what it is.
        if v is None:
            return "—"
        return "NaN" if math.isnan(v) else f"{v:.2f}"

    lines = [
        f"# ELBO by latent size — {data.name}",
        "",
        f"Dataset: {data.describe()}. {spec.epochs} epochs, batch {spec.batch_size}, "
        f"Adam lr {spec.lr:g}, seed {spec.seed}"
        + (f", beta {spec.beta:g}" if spec.beta != 1 else "")
        + (", dynamically binarized" if spec.binarize else "") + ".",
        "All values in nats per image (higher is better). ELBO = -(BCE + KL); for the AE the "
        "columns hold -BCE, a reconstruction score and not a bound on log p(x). "
        "'test log p(x)' is the importance-weighted bound (Burda et al.) with k samples.",
        "",
        "| model | backend | z | final train ELBO | average train ELBO | final test ELBO "
        "| test log p(x) (k) | epochs | time (s) | s/epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table.itertuples():
        iwae = f"{nats(row.test_iwae)} ({row.iwae_k})" if row.iwae_k else "—"
        lines.append(
            f"| {row.model.upper()} | {row.backend} | {row.latent_dim} "
            f"| {nats(row.final_train_elbo)} "
            f"| {nats(row.average_train_elbo)} | {nats(row.final_test_elbo)} | {iwae} "
            f"| {row.epochs} | {row.train_seconds:.1f} | {row.seconds_per_epoch:.2f} |"
        )
    lines += ["", "## Provenance", "", provenance.as_markdown(record), ""]
    return "\n".join(lines)


# ---- figures -------------------------------------------------------------------------------


def _images(model: VAE | AE, x: np.ndarray) -> np.ndarray:
    """Deterministic reconstructions: decode the posterior mean (the AE's code)."""
    with torch.no_grad():
        mu, _ = model.encode(torch.from_numpy(x))
        return torch.sigmoid(model.decode(mu)).numpy()


def _decode(model: VAE | AE, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model.decode(torch.from_numpy(z.astype(np.float32)))).numpy()


def _codes(model: VAE | AE, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode(torch.from_numpy(x))[0].numpy()


def showcase_indices(labels: np.ndarray, per_class: int = 10) -> np.ndarray:
    """The first ``per_class`` test images of each class, class by class (a 10 x 10 grid)."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])


def write_figures(finished: list[FinishedModel], data: Dataset, out: Path, log) -> None:
    test_x, test_y = data.test_x, data.test_y
    shown = test_x[showcase_indices(test_y)]
    prior = np.random.default_rng(0)

    curves = pd.read_csv(out / "curves.csv")
    figures.elbo_curves(curves, out / "elbo_curves.png", data.name)
    for f in finished:
        name = f.config.name
        figures.reconstructions(shown, _images(f.model, shown), out / f"reconstructions_{name}.png",
                                f"{name} on {data.name}: reconstructions (decoded at z = mu)")
        if f.config.model == "vae":
            z = prior.standard_normal((100, f.config.latent_dim))
            figures.samples(_decode(f.model, z), out / f"prior_samples_{name}.png",
                            f"{name} on {data.name}: decodings of z ~ N(0, I)")
        if f.config.model == "vae" and f.config.latent_dim == 2:
            figures.latent_scatter(_codes(f.model, test_x), test_y, data.class_names,
                                   out / f"latent_scatter_{name}.png",
                                   f"{name}: test-set posterior means on {data.name}")
            # Grid through the prior's quantiles, as in Kingma & Welling's Fig. 4.
            n = 20
            q = [statistics.NormalDist().inv_cdf(p) for p in np.linspace(0.03, 0.97, n)]
            grid = np.array([[a, b] for b in q[::-1] for a in q])
            figures.manifold(_decode(f.model, grid), n, out / f"manifold_{name}.png",
                             f"{name} on {data.name}: decoded latent grid\n"
                             "(prior quantiles 3%..97%)")

    # The merge figure: two test images of different classes, per AE/VAE pair of equal z.
    a = int(np.flatnonzero(test_y == 3)[0])
    b = int(np.flatnonzero(test_y == 8)[0])
    pair = test_x[[a, b]]
    for f in finished:
        if f.config.model != "ae":
            continue
        vae = next((v for v in finished if v.config.model == "vae"
                    and v.config.latent_dim == f.config.latent_dim), None)
        if vae is None:
            log(f"merge figure for z={f.config.latent_dim} skipped: no VAE with that latent size")
            continue
        rows = []
        random_code = np.random.default_rng(1).standard_normal((1, f.config.latent_dim))
        for label, m in (("AE", f.model), ("VAE", vae.model)):
            codes = _codes(m, pair)
            mixed = _decode(m, codes.mean(axis=0, keepdims=True))
            rows.append((label, [pair[0], pair[1], *_images(m, pair), mixed[0],
                                 _decode(m, random_code)[0]]))
        figures.merge(rows, out / f"merge_z{f.config.latent_dim}.png",
                      f"{data.name}, z = {f.config.latent_dim}: test images "
                      f"{data.class_names[3]!r} and {data.class_names[8]!r}")
    log(f"figures written to {out}")
