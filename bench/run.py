"""The harness: ``vae-bench run``, the stages of ``pipeline.py`` per latent size (the unit of
work, of resuming and of sharding): every backend checked against the reference (the gate),
timed at each batch size (interleaved across backends), and trained for the ELBO. Each stage's
rows are written the moment it finishes (``store.py``) and the tables rebuilt from all of
them, so an interrupted run loses nothing and resumes where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kernels import create_backend
from vae_ref import VAEConfig
from vae_ref.atomic import atomic_write_text
from vae_ref.config import DEFAULT_HIDDEN, DEFAULT_LATENTS, GATE_ADAM_STEPS
from vae_ref.data import Dataset

from . import export, figures, machine_load, pipeline, provenance, report, tables
from . import file_names as files
from .gate import GATE_IMAGES
from .progress import eta_text
from .results_dir import claim
from .run_presets import RUN_WINDOW_STEPS, RUN_WINDOWS
from .store import ResultsStore, StoreError
from .throughput import device_peaks, peak_key


class RunError(RuntimeError):
    """The run cannot proceed as asked; the message says what to do."""


@dataclass(frozen=True)
class RunSpec:
    """One sweep. Everything that changes the numbers is here (and must match to resume or
    to merge shards)."""

    dataset: str
    backends: tuple[str, ...]
    latents: tuple[int, ...] = DEFAULT_LATENTS
    batch_sizes: tuple[int, ...] = (128,)  # throughput rows; the first also trains the ELBO
    epochs: int = 5
    repeats: int = RUN_WINDOWS  # timed windows per backend and batch size
    steps: int = RUN_WINDOW_STEPS  # training steps per timed window
    gate_steps: int = GATE_ADAM_STEPS  # Adam steps compared by the agreement gate
    iwae_k: int = 100
    seed: int = 0
    threads: int | None = None
    # time and train backends that failed the gate anyway (--include-failed; the name is
    # recorded in every run's env.json, which resuming and merging compare)
    force: bool = False
    backend_noise: bool = False  # timed steps draw their own noise (on a GPU: in the step)
    # Latent sizes (of ``latents``) where only the gate runs, for these backends (all when
    # empty): the GPU check gates the fused kernels at every size and times one.
    gate_only_latents: tuple[int, ...] = ()
    gate_only_backends: tuple[str, ...] = ()
    hidden_dim: int = DEFAULT_HIDDEN  # width of the hidden layers
    # The pipeline's stages run at each latent size (gate-only latent sizes: the gate): all,
    # or fewer where a caller wants them apart (gpu-check times before it trains).
    stages: tuple[str, ...] = pipeline.STAGES

    def __post_init__(self) -> None:
        if not self.backends or not self.latents or not self.batch_sizes:
            raise RunError("nothing to run: give at least one backend, latent size and batch size")
        try:
            pipeline.Selection(self.stages)
        except ValueError as error:
            raise RunError(f"stages {self.stages}: {error}") from None
        for name, values in (
            ("backends", self.backends),
            ("latents", self.latents),
            ("batch sizes", self.batch_sizes),
        ):
            if len(set(values)) != len(values):
                raise RunError(f"{name} repeat: {values} (each would be run twice)")

    def config(self, latent: int, batch: int) -> VAEConfig:
        return VAEConfig(
            latent_dim=latent,
            hidden_dim=self.hidden_dim,
            epochs=self.epochs,
            seed=self.seed,
            batch_size=batch,
        )


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (1-based) -> (i, n), with a clear error."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise RunError(f"--shard takes i/n (e.g. 2/4), got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise RunError(f"--shard i/n needs 1 <= i <= n, got {text!r}")
    return i, n


def shard_latents(latents: tuple[int, ...], shard: tuple[int, int] | None) -> tuple[int, ...]:
    """The i-th of n disjoint parts of the sweep (latent sizes dealt round-robin)."""
    if shard is None:
        return latents
    i, n = shard
    return latents[i - 1 :: n]


def default_out_dir(root: Path = Path("results")) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{stamp}-{socket.gethostname()}"


# env.json's GEMM peaks: each device peak (by throughput.peak_key) and the prefix of its
# fields, <prefix>_gflops and <prefix>_source; the host CPU's always, the others where measured.
PEAK_FIELDS = {
    "cpu": "gemm_peak",
    "cuda": "gpu_gemm_peak",
    peak_key("cpu", "bf16"): "bf16_gemm_peak",
    peak_key("cuda", "tf32"): "gpu_tf32_gemm_peak",
}


def environment(data: Dataset, spec: RunSpec) -> dict:
    """env.json: what the numbers depend on besides the code (compared when merging)."""
    backends = [create_backend(name, threads=spec.threads) for name in spec.backends]
    peaks = device_peaks(backends)
    record = provenance.collect(data=data)
    for key, prefix in PEAK_FIELDS.items():
        if key in peaks:
            record |= {f"{prefix}_gflops": peaks[key][0], f"{prefix}_source": peaks[key][1]}
    if "cuda" in peaks:
        record["gpu"] = peaks["cuda"][2]
    record |= {"spec": asdict(spec), "results_schema": tables.RESULTS_SCHEMA}
    return record


def peaks_of(env: dict) -> dict[str, float]:
    """GFLOP/s peak per device recorded in env.json."""
    return {
        key: env[f"{prefix}_gflops"]
        for key, prefix in PEAK_FIELDS.items()
        if f"{prefix}_gflops" in env
    }


def selection(spec: RunSpec, latent: int) -> pipeline.Selection:
    """``run``'s stages at one latent size: all of them, or the gate alone (at the first
    batch size) at ``spec.gate_only_latents``."""
    gate_only = latent in spec.gate_only_latents
    return pipeline.Selection(
        stages=("gate",) if gate_only else spec.stages,
        batch_sizes=spec.batch_sizes[:1] if gate_only else spec.batch_sizes,
        repeats=spec.repeats,
        window_steps=spec.steps,
        backend_noise=spec.backend_noise,
        include_failed=spec.force,
        iwae_k=spec.iwae_k,
        seed=spec.seed,
    )


def run_latent(
    spec: RunSpec,
    data: Dataset,
    latent: int,
    peaks: dict[str, float],
    log: Callable[[str], None],
    progress: bool,
    save: Callable[[dict], None] | None = None,
) -> dict:
    """Everything for one latent size: the pipeline's stages (``selection``). Returns the cell
    record: its rows (one per backend x batch size) and its per-epoch curves; ``save`` is
    given the cell as it stands after each stage."""
    chosen = selection(spec, latent)
    gate_only = chosen.stages == ("gate",)
    names = spec.gate_only_backends if gate_only and spec.gate_only_backends else spec.backends
    backends = [create_backend(name, threads=spec.threads) for name in names]

    def checkpoint(_stage: str, outcome: pipeline.Outcome) -> None:
        if save is not None:
            save(_cell(outcome, chosen, spec, data, latent, peaks, complete=False))

    outcome = pipeline.execute(
        chosen,
        backends,
        config=spec.config(latent, spec.batch_sizes[0]),
        cases=pipeline.gate_cases(
            data.train_x[:GATE_IMAGES],
            latent,
            seed=spec.seed,
            steps=spec.gate_steps,
            hidden=spec.hidden_dim,
        ),
        data=data,
        log=lambda msg: log(f"z={latent}: {msg}"),
        progress=progress,
        on_stage=checkpoint,
    )
    return _cell(outcome, chosen, spec, data, latent, peaks, complete=True)


def _cell(
    outcome: pipeline.Outcome,
    chosen: pipeline.Selection,
    spec: RunSpec,
    data: Dataset,
    latent: int,
    peaks: dict[str, float],
    *,
    complete: bool,
) -> dict:
    """The cell record of one latent size as ``outcome`` stands: its rows, curves, gate,
    each backend's settings and the machine's load while timing."""
    rows = pipeline.result_rows(
        outcome,
        chosen,
        latent=latent,
        dataset=data.name,
        seed=spec.seed,
        peaks=peaks,
        complete=complete,
    )
    curves = [
        dict(backend=name, latent_dim=latent, **r.to_dict())
        for name, result in outcome.trained.items()
        for r in result.history
    ]
    # Each backend's settings as it was timed (the first batch size's; they hold for all).
    settings: dict[str, Any] = {}  # JSON, by backend name
    for measured in outcome.measurements.values():
        for name, m in measured.items():
            settings.setdefault(name, json.loads(json.dumps(m.settings, default=str)))
    return {
        "latent": latent,
        "rows": [asdict(r) for r in rows],
        "curves": curves,
        "gate": tables.gate_records(outcome.gates.values(), latent),
        "settings": settings,
        # JSON keys are text: the batch size as one.
        "machine_load": {str(b): r for b, r in outcome.machine_load.items()},
    }


def _key(latent: int) -> str:
    return f"z{latent}"


_DAMAGED_ENV = "the run directory is damaged: run again into a new --out"


def read_env(out: Path) -> dict:
    """The run's env.json (RunError if it is missing or damaged)."""
    path = out / files.ENV
    if not path.exists():
        raise RunError(f"{out} is not a run directory (no env.json)")
    try:
        return provenance.read_env(path)
    except ValueError as error:
        raise RunError(f"{path}: {error}; {_DAMAGED_ENV}") from None


def _check_runnable(
    spec: RunSpec, data: Dataset, latents: tuple[int, ...], shard: tuple[int, int] | None
) -> None:
    """Refuse, before anything is written, a run that has nothing to do or cannot work."""
    if data.name != spec.dataset:
        raise RunError(f"spec names dataset {spec.dataset!r} but got {data.name!r}")
    if not latents:
        assert shard is not None  # a RunSpec has latent sizes: only a shard of them is empty
        raise RunError(
            f"nothing to run: shard {shard[0]}/{shard[1]} of the "
            f"{len(spec.latents)} latent sizes {spec.latents} is empty; use at most "
            f"{len(spec.latents)} shards"
        )
    # The first batch size also trains; timed batches draw images with replacement, so only
    # it is bounded by the data set.
    if spec.batch_sizes[0] > len(data.train_x):
        raise RunError(
            f"batch size {spec.batch_sizes[0]} (the first, which trains) exceeds "
            f"the {len(data.train_x)} training images of {data.name}; put a batch "
            f"size up to {len(data.train_x)} first"
        )
    reasons = none_available(spec.backends)
    if reasons:
        raise RunError(f"nothing to run: no backend of this run is available here ({reasons})")


def none_available(names) -> str | None:
    """Why none of the backends ``names`` can run here ("name: reason; ..."), or None when
    one can."""
    statuses = {name: create_backend(name).availability() for name in names}
    if any(status.available for status in statuses.values()):
        return None
    return "; ".join(f"{name}: {status.reason}" for name, status in statuses.items())


def run(
    spec: RunSpec,
    data: Dataset,
    out: Path,
    *,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run (this shard of) the sweep into ``out``; returns the results table.

    ``out`` is held as its one writer (``bench.results_dir``). It counts as holding a run
    once a stage of a latent size has finished (its rows are written at once, as a partial
    unit of the store until the whole latent size is done): a run that fails before that
    leaves it as it was. A run continues (``resume``) only with the same settings and data
    (by content): the store's rule; an unfinished latent size is redone."""
    latents = shard_latents(spec.latents, shard)
    _check_runnable(spec, data, latents, shard)
    identity = {"spec": asdict(spec), "data_sha256": data.fingerprint}
    with claim(out, "run"):
        store = ResultsStore(out)
        held, env = _run_environment(out, spec, data, identity, shard, resume, log)

        def save(cell: dict, *, partial: bool) -> None:
            nonlocal held
            if not held:  # env.json goes in with the first result, not before
                atomic_write_text(out / files.ENV, json.dumps(env, indent=1))
                held = True
            store.save(_key(cell["latent"]), cell, identity, partial=partial)
            write_outputs(out)  # after every stage: an interruption keeps every finished row

        todo = [z for z in latents if store.finished(_key(z), identity) is None]
        for latent in latents:
            if latent not in todo:
                log(f"z={latent}: already done in {out}, skipping")
        spent: list[float] = []  # seconds of each latent size done in this call
        for i, latent in enumerate(todo):
            log(f"z={latent}: latent size {i + 1} of {len(todo)}{eta_text(spent, len(todo) - i)}")
            started = time.monotonic()
            cell = run_latent(
                spec,
                data,
                latent,
                peaks_of(env),
                log,
                progress,
                lambda cell: save(cell, partial=True),
            )
            save(cell, partial=False)
            spent.append(time.monotonic() - started)
        return write_outputs(out)


def _run_environment(
    out: Path,
    spec: RunSpec,
    data: Dataset,
    identity: dict,
    shard: tuple[int, int] | None,
    resume: bool,
    log: Callable[[str], None],
) -> tuple[bool, dict]:
    """Whether ``out`` already holds (part of) this run, and the run's environment: the one
    recorded there when it is resumed, this machine's (its GEMM peak measured) when new."""
    held = bool(load_cells(out, partial=True))
    if held and not resume:
        raise RunError(
            f"{out} already holds a run; pass --resume to continue it, or choose another --out"
        )
    if held:
        env = read_env(out)
        _check_resumable(out, env, identity, data)
    else:  # nothing finished: nothing to resume, whatever an earlier start left
        log("measuring this machine's GEMM peak (the % peak columns' yardstick)")
        env = environment(data, spec) | {"shard": list(shard) if shard else None}
    log(f"dataset: {data.describe()}")
    gpu = (
        f"; GPU {env['gpu']}, GEMM peak {env['gpu_gemm_peak_gflops']:.0f} GFLOP/s"
        if "gpu" in env
        else ""
    )
    log(
        f"device: CPU {env['cpu']}, GEMM peak {env['gemm_peak_gflops']:.0f} GFLOP/s{gpu}; "
        f"results: {out}"
    )
    return held, env


def _check_resumable(out: Path, env: dict, identity: dict, data: Dataset) -> None:
    """A run directory continues only with the same settings and data (RunError saying
    which differs, before any work)."""
    if env.get("spec") != json.loads(json.dumps(identity["spec"])):
        raise RunError(
            f"{out} holds a run with other settings ({env.get('spec')}); "
            "--resume needs the same flags, or choose another --out"
        )
    if env.get("data_sha256") != data.fingerprint:
        raise RunError(
            f"{out} holds a run on other data ({env.get('dataset')}, sha256 "
            f"{env.get('data_sha256') or 'not recorded'}; now {data.describe()}, "
            f"sha256 {data.fingerprint}); --resume needs the same data, or choose "
            "another --out"
        )


def load_cells(out: Path, partial: bool = False) -> list[dict]:
    """Every finished latent size's record in ``out`` (RunError naming a damaged one); with
    ``partial``, also the rows so far of unfinished ones. Sorted by latent size."""
    try:
        cells = ResultsStore(out).records(partial=partial)
    except StoreError as error:
        raise RunError(str(error)) from None
    for cell in cells:
        if not (
            isinstance(cell.get("latent"), int)
            and isinstance(cell.get("rows"), list)
            and isinstance(cell.get("curves"), list)
        ):
            raise RunError(
                f"{out / 'cells' / (cell['key'] + '.json')}: not a cell (needs "
                "latent, rows and curves); delete it, then `vae-bench run "
                "--resume` with the same flags recomputes that latent size"
            )
        try:
            cell["rows"] = [tables.ResultRow.from_record(row) for row in cell["rows"]]
        except (TypeError, ValueError) as error:
            raise RunError(
                f"{out / 'cells' / (cell['key'] + '.json')}: a row that is not a "
                f"results row ({error}); delete it, then `vae-bench run --resume` "
                "with the same flags recomputes that latent size"
            ) from None
    return sorted(cells, key=lambda c: c["latent"])


def write_outputs(out: Path) -> pd.DataFrame:
    """results.csv, results.json, curves.csv, gate.csv, summary.md, the plots and report.html,
    rebuilt from every cell so far."""
    cells = load_cells(out, partial=True)
    env = read_env(out)
    table = tables.results_frame(row for c in cells for row in c["rows"])
    curves = pd.DataFrame([r for c in cells for r in c["curves"]])
    # Cells written before the gate's tensors were kept have none.
    gate = pd.DataFrame(
        [r for c in cells for r in c.get("gate", [])], columns=list(tables.GATE_COLUMNS)
    )
    atomic_write_text(out / files.RESULTS, table.to_csv(index=False))
    atomic_write_text(out / files.CURVES, curves.to_csv(index=False))
    atomic_write_text(out / files.GATE, gate.to_csv(index=False))
    atomic_write_text(
        out / files.RESULTS_JSON, export.as_json_text(export.results_document(table, gate, env))
    )
    # Cells written before settings were kept have none.
    settings: dict[str, dict] = {}
    for cell in cells:
        for name, recorded in cell.get("settings", {}).items():
            settings.setdefault(name, recorded)
    atomic_write_text(
        out / files.SUMMARY,
        tables.run_summary(table, env, settings, machine_load.busy_stages(cells)),
    )
    figures.run_plots(out, table, curves)
    report.write_report([out], out)  # last: it embeds the plots
    return table


def merge(parts: list[Path], out: Path, *, allow_differences: bool = False) -> pd.DataFrame:
    """Join shard directories into one new run directory. Parts whose environment (CPU,
    versions, threads), settings or data differ are refused unless ``allow_differences``; overlapping or
    damaged parts always. Everything is read and checked before anything is written, ``out``
    must be new or empty, and a merge that fails leaves nothing there."""
    envs = [read_env(part) for part in parts]
    keys = (
        "cpu",
        "cpu_isa",
        "gpu",
        "logical_cpus",
        "usable_cpus",
        "torch_threads",
        "versions",
        "spec",
        "results_schema",
        "data_sha256",
    )
    first = envs[0]
    for part, env in zip(parts[1:], envs[1:]):
        differing = [k for k in keys if env.get(k) != first.get(k)]
        if differing and not allow_differences:
            raise RunError(
                f"{part} differs from {parts[0]} in {', '.join(differing)}; "
                "refusing to merge (pass --allow-differences to merge anyway)"
            )
    seen: dict[int, Path] = {}
    cells = []
    for part in parts:
        for cell in load_cells(part):
            if cell["latent"] in seen:
                raise RunError(
                    f"latent size {cell['latent']} appears in both "
                    f"{seen[cell['latent']]} and {part}: shards must be disjoint"
                )
            seen[cell["latent"]] = part
            cells.append(cell)
    with claim(out, "run", empty=True, all_or_nothing=True):
        store = ResultsStore(out)
        for cell in cells:
            record = {k: v for k, v in cell.items() if k not in ("key", "identity")}
            record["rows"] = [asdict(row) for row in record["rows"]]
            store.save(cell["key"], record, cell.get("identity"))
        merged = dict(first, shard=None, merged_from=[str(p) for p in parts])
        atomic_write_text(out / files.ENV, json.dumps(merged, indent=1))
        return write_outputs(out)
