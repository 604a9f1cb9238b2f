"""The harness: ``vae-bench run``. For each latent size (the unit of work, of resuming and of
sharding), every backend is checked against the reference (the agreement gate), timed at each
batch size (interleaved across backends), and trained for the ELBO. Each finished latent size
is written at once (``cells/z<latent>.json``) and the tables are rebuilt from all cells, so an
interrupted run loses nothing and resumes where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from kernels import create_backend
from vae_ref import VAEConfig, importance_weighted_log_likelihood
from vae_ref.atomic import atomic_write_text
from vae_ref.data import Dataset
from vae_ref.oracle import build_cases, expectation
from vae_ref.train import fixed_test_set

from . import provenance
from .agreement import check
from .results_dir import claim
from .throughput import device_peaks, measure, step_flops
from .training import train_backend

RESULTS_SCHEMA = 1
RESULT_COLUMNS = (
    "backend", "device", "latent_dim", "batch_size", "agreement", "worst_fraction",
    "samples_per_s", "samples_per_s_min", "samples_per_s_max", "ms_per_step", "gflops",
    "pct_peak", "launch_floor_ms", "warmup_s", "final_train_elbo", "average_train_elbo",
    "final_test_elbo", "test_iwae",
    "iwae_k", "epochs", "dataset", "seed", "note",
)


# Columns added after tables were first committed, with the value older tables imply.
ADDED_COLUMNS = {"device": "cpu", "launch_floor_ms": math.nan}


class RunError(RuntimeError):
    """The run cannot proceed as asked; the message says what to do."""


@dataclass(frozen=True)
class RunSpec:
    """One sweep. Everything that changes the numbers is here (and must match to resume or
    to merge shards)."""

    dataset: str
    backends: tuple[str, ...]
    latents: tuple[int, ...] = (2, 10, 20, 50)
    batch_sizes: tuple[int, ...] = (128,)  # throughput rows; the first also trains the ELBO
    epochs: int = 5
    repeats: int = 5  # timed windows per backend and batch size
    steps: int = 30  # training steps per timed window
    gate_steps: int = 10  # Adam steps compared by the agreement gate
    iwae_k: int = 100
    seed: int = 0
    threads: int | None = None
    force: bool = False  # time and train backends that failed the gate anyway
    backend_noise: bool = False  # timed steps draw their own noise (on a GPU: in the step)
    # Latent sizes (of ``latents``) where only the gate runs, for these backends (all when
    # empty): the GPU check gates the fused kernels at every size and times one.
    gate_only_latents: tuple[int, ...] = ()
    gate_only_backends: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.backends or not self.latents or not self.batch_sizes:
            raise RunError("nothing to run: give at least one backend, latent size and batch size")
        for name, values in (("backends", self.backends), ("latents", self.latents),
                             ("batch sizes", self.batch_sizes)):
            if len(set(values)) != len(values):
                raise RunError(f"{name} repeat: {values} (each would be run twice)")


PROFILES = {
    # The default of `nox -s bench`: the embedded digits, a few epochs, minutes on 2 cores.
    "quick": dict(dataset="mnist-5k", epochs=5, repeats=5, steps=30, gate_steps=10, iwae_k=100),
    # The report's setting: 50 epochs on the full dataset, the literature's k where affordable.
    "full": dict(dataset="fashion-mnist", epochs=50, repeats=9, steps=50, gate_steps=50,
                 iwae_k=1000),
    # A GPU machine: the fused CUDA backend beside PyTorch on CUDA, batch 128 to 4096. Noise
    # is drawn on the device (no host-to-device copy of it per step), windows are long
    # enough for sub-millisecond steps, and the data set is the embedded digits (it travels).
    "gpu": dict(dataset="mnist-5k", epochs=20, repeats=9, steps=200, gate_steps=50,
                iwae_k=100, backend_noise=True,
                backends=("torch-cuda", "torch-cuda-compile", "cupy", "cupy-nograph",
                          "cupy-tf32"),
                batch_sizes=(128, 256, 512, 1024, 2048, 4096)),
}


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


def environment(data: Dataset, spec: RunSpec) -> dict:
    """env.json: what the numbers depend on besides the code (compared when merging)."""
    backends = [create_backend(name) for name in spec.backends]
    peaks = device_peaks({"cpu"} | {b.device for b in backends if b.availability().available})
    record = provenance.collect(data=data)
    peak, source = peaks["cpu"]
    record |= {"gemm_peak_gflops": peak, "gemm_peak_source": source}
    if "cuda" in peaks:
        record |= {"gpu_gemm_peak_gflops": peaks["cuda"][0],
                   "gpu_gemm_peak_source": peaks["cuda"][1], "gpu": _gpu_name()}
    record |= {"spec": asdict(spec), "results_schema": RESULTS_SCHEMA}
    return record


def _gpu_name() -> str:
    """Through CuPy where it can use the GPU (as the GEMM peak is measured), else torch."""
    from kernels.cupy_gpu import cuda_availability

    if cuda_availability().available:
        from kernels.cupy_gpu.executors import gpu_name

        return gpu_name()
    import torch

    return torch.cuda.get_device_name()


def peaks_of(env: dict) -> dict[str, float]:
    """GFLOP/s peak per device recorded in env.json."""
    peaks = {"cpu": env["gemm_peak_gflops"]}
    if "gpu_gemm_peak_gflops" in env:
        peaks["cuda"] = env["gpu_gemm_peak_gflops"]
    return peaks


def run_latent(spec: RunSpec, data: Dataset, latent: int, peaks: dict[str, float],
               log: Callable[[str], None], progress: bool,
               save: Callable[[dict], None] | None = None) -> dict:
    """Everything for one latent size: gate, throughput per batch size, ELBO (only the gate
    at ``spec.gate_only_latents``). Returns the cell record: its rows (one per backend x batch
    size) and its per-epoch curves; ``save`` is given the cell as it stands after each stage."""
    gate_only = latent in spec.gate_only_latents
    names = spec.gate_only_backends if gate_only and spec.gate_only_backends else spec.backends
    batch_sizes = spec.batch_sizes[:1] if gate_only else spec.batch_sizes
    backends = [create_backend(name, threads=spec.threads) for name in names]
    base = {b.name: dict(backend=b.name, device=b.device, latent_dim=latent,
                         dataset=data.name, seed=spec.seed, note="") for b in backends}

    # 1. Availability and 2. the agreement gate (the oracle is computed once, shared, when
    # a backend is there to check).
    cases = build_cases(data.train_x[:1024], latent, seed=spec.seed, steps=spec.gate_steps)
    expected = None
    timed = []
    for backend in backends:
        row = base[backend.name]
        status = backend.availability()
        if not status.available:
            row |= {"agreement": "unavailable", "note": status.reason}
            log(f"z={latent}: {backend.name} unavailable: {status.reason}")
            continue
        if expected is None:
            log(f"z={latent}: float64 oracle for {len(cases)} gate cases")
            expected = [expectation(c) for c in cases]
        results = [r for c, e in zip(cases, expected) for r in check(backend, c, e)]
        worst = max(r.fraction for r in results)
        failed = [r for r in results if not r.passed]
        row |= {"agreement": "fail" if failed else "pass", "worst_fraction": worst}
        if failed:
            row["note"] = f"{len(failed)} tensors failed, first {failed[0].case} {failed[0].tensor}"
        log(f"z={latent}: {backend.name} agreement {row['agreement']} "
            f"(worst {worst:.1%} of tolerance)")
        if (not failed or spec.force) and not gate_only:
            timed.append(backend)

    rows = []
    curves = []

    def checkpoint(done: list[dict]) -> None:
        if save is not None:
            save({"latent": latent, "rows": done, "curves": curves})

    checkpoint([dict(base[b.name], batch_size=batch_sizes[0]) for b in backends])

    # 3. Throughput, interleaved across backends, per batch size.
    flops_config = VAEConfig(latent_dim=latent)
    for batch in batch_sizes:
        measured = {}
        if timed:
            log(f"z={latent}, batch {batch}: timing {', '.join(b.name for b in timed)}")
            for m in measure(timed, replace(flops_config, batch_size=batch), data.train_x,
                             batch=batch, repeats=spec.repeats, steps=spec.steps,
                             seed=spec.seed, backend_noise=spec.backend_noise):
                measured[m.backend] = m
        for backend in backends:
            row = dict(base[backend.name], batch_size=batch)
            m = measured.get(backend.name)
            if m is not None:
                ms = m.median_ms
                gflops = step_flops(flops_config, batch) / (ms / 1e3) / 1e9
                row |= {"samples_per_s": batch / ms * 1e3,
                        "samples_per_s_min": batch / max(m.ms_per_step) * 1e3,
                        "samples_per_s_max": batch / min(m.ms_per_step) * 1e3,
                        "ms_per_step": ms, "gflops": gflops,
                        "pct_peak": 100 * gflops / peaks.get(m.device, math.nan),
                        "launch_floor_ms": m.floor_ms, "warmup_s": m.warmup_seconds}
                failed = [f"{name} failed: {why}" for name, why in m.diagnostic_errors.items()]
                row["note"] = "; ".join(filter(None, [row["note"], *failed]))
            rows.append(row)
        checkpoint(rows)

    # 4. ELBO: train each timed backend at the first batch size.
    train_batch = spec.batch_sizes[0]
    for backend in timed:
        config = VAEConfig(latent_dim=latent, epochs=spec.epochs, seed=spec.seed,
                           batch_size=train_batch)
        log(f"z={latent}: training {backend.name} for {spec.epochs} epochs on {data.name}")
        result = train_backend(backend, config, data.train_x, data.test_x, progress=progress)
        iwae = importance_weighted_log_likelihood(
            result.model, fixed_test_set(config, data.test_x), k=spec.iwae_k, seed=spec.seed
        ) if spec.iwae_k else math.nan
        for row in rows:
            if row["backend"] == backend.name and row["batch_size"] == train_batch:
                row |= {"final_train_elbo": result.final.train_elbo,
                        "average_train_elbo": result.average_train_elbo,
                        "final_test_elbo": result.final.test_elbo, "test_iwae": iwae,
                        "iwae_k": spec.iwae_k, "epochs": spec.epochs}
        curves += [dict(backend=backend.name, latent_dim=latent, **r.to_dict())
                   for r in result.history]
        checkpoint(rows)
    return {"latent": latent, "rows": rows, "curves": curves}


def _cell_path(out: Path, latent: int, partial: bool = False) -> Path:
    """A finished latent size's cell; with ``partial``, the one being worked on, rewritten
    after each stage so that an interrupted run keeps what finished (and redoes the rest)."""
    return out / "cells" / ("partial" if partial else "") / f"z{latent}.json"


def _read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``, or RunError saying the file is damaged."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunError(f"{path}: cannot read this {what} ({error}); {_REPAIR[what]}") from None
    if not isinstance(record, dict):
        raise RunError(f"{path}: not a {what} (a JSON {type(record).__name__}); {_REPAIR[what]}")
    return record


_REPAIR = {
    "cell": "delete it, then `vae-bench run --resume` with the same flags recomputes that "
            "latent size",
    "run environment": "the run directory is damaged: run again into a new --out",
}


def read_env(out: Path) -> dict:
    """The run's env.json (RunError if it is missing or damaged)."""
    if not (out / "env.json").exists():
        raise RunError(f"{out} is not a run directory (no env.json)")
    env = _read_json(out / "env.json", "run environment")
    if "spec" not in env or "gemm_peak_gflops" not in env:
        raise RunError(f"{out / 'env.json'}: not a run environment (no spec or GEMM peak); "
                       f"{_REPAIR['run environment']}")
    return env


def _check_runnable(spec: RunSpec, data: Dataset, latents: tuple[int, ...],
                    shard: tuple[int, int] | None) -> None:
    """Refuse, before anything is written, a run that has nothing to do or cannot work."""
    if data.name != spec.dataset:
        raise RunError(f"spec names dataset {spec.dataset!r} but got {data.name!r}")
    if not latents:
        raise RunError(f"nothing to run: shard {shard[0]}/{shard[1]} of the "
                       f"{len(spec.latents)} latent sizes {spec.latents} is empty; use at most "
                       f"{len(spec.latents)} shards")
    # The first batch size also trains; timed batches draw images with replacement, so only
    # it is bounded by the data set.
    if spec.batch_sizes[0] > len(data.train_x):
        raise RunError(f"batch size {spec.batch_sizes[0]} (the first, which trains) exceeds "
                       f"the {len(data.train_x)} training images of {data.name}; put a batch "
                       f"size up to {len(data.train_x)} first")
    statuses = {name: create_backend(name).availability() for name in spec.backends}
    if not any(status.available for status in statuses.values()):
        reasons = "; ".join(f"{name}: {status.reason}" for name, status in statuses.items())
        raise RunError(f"nothing to run: no backend of this run is available here ({reasons})")


def run(spec: RunSpec, data: Dataset, out: Path, *, shard: tuple[int, int] | None = None,
        resume: bool = False, progress: bool = True,
        log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run (this shard of) the sweep into ``out``; returns the results table.

    ``out`` is held as its one writer (``bench.results_dir``). It counts as holding a run
    once a stage of a latent size has finished (its rows are written at once, under
    ``cells/partial/`` until the whole latent size is done): a run that fails before that
    leaves it as it was. To continue a run (``resume``) the settings and the data (by
    content) must be the same; an unfinished latent size is redone."""
    latents = shard_latents(spec.latents, shard)
    _check_runnable(spec, data, latents, shard)
    with claim(out, "run"):
        env_path = out / "env.json"
        done = {cell["latent"] for cell in load_cells(out)}
        held = bool(load_cells(out, partial=True))
        if held:
            stored = read_env(out)
            if not resume:
                raise RunError(f"{out} already holds a run; pass --resume to continue it, or "
                               "choose another --out")
            if stored.get("spec") != json.loads(json.dumps(asdict(spec))):
                raise RunError(f"{out} holds a run with other settings ({stored.get('spec')}); "
                               "--resume needs the same flags, or choose another --out")
            if stored.get("data_sha256") != data.fingerprint:
                raise RunError(
                    f"{out} holds a run on other data ({stored.get('dataset')}, sha256 "
                    f"{stored.get('data_sha256') or 'not recorded'}; now {data.describe()}, "
                    f"sha256 {data.fingerprint}); --resume needs the same data, or choose "
                    "another --out")
            env = stored
        else:
            # Nothing finished: nothing to resume, whatever an earlier start left.
            env = environment(data, spec)
            env["shard"] = list(shard) if shard else None
            # env.json goes in with the first result (write_cell), not before.
        log(f"dataset: {data.describe()}")
        gpu = (f"; GPU {env['gpu']}, GEMM peak {env['gpu_gemm_peak_gflops']:.0f} GFLOP/s"
               if "gpu" in env else "")
        log(f"device: CPU {env['cpu']}, GEMM peak {env['gemm_peak_gflops']:.0f} GFLOP/s{gpu}; "
            f"results: {out}")

        def write_cell(path: Path, cell: dict) -> None:
            nonlocal held
            if not held:
                atomic_write_text(env_path, json.dumps(env, indent=1))
                held = True
            atomic_write_text(path, json.dumps(cell, indent=1, allow_nan=True))

        for latent in latents:
            if latent in done:
                log(f"z={latent}: already done in {out}, skipping")
                continue
            partial = _cell_path(out, latent, partial=True)

            def save(cell: dict, partial: Path = partial) -> None:
                write_cell(partial, cell)
                write_outputs(out)

            cell = run_latent(spec, data, latent, peaks_of(env), log, progress, save)
            write_cell(_cell_path(out, latent), cell)
            partial.unlink(missing_ok=True)
            done.add(latent)
            write_outputs(out)  # after every cell: an interruption keeps every finished row
        return write_outputs(out)


def _read_cell(path: Path) -> dict:
    cell = _read_json(path, "cell")
    if not (isinstance(cell.get("latent"), int) and isinstance(cell.get("rows"), list)
            and isinstance(cell.get("curves"), list)):
        raise RunError(f"{path}: not a cell (needs latent, rows and curves); "
                       f"{_REPAIR['cell']}")
    return cell


def load_cells(out: Path, partial: bool = False) -> list[dict]:
    """Every finished latent size's record in ``out`` (RunError naming a damaged one); with
    ``partial``, also the rows so far of unfinished ones."""
    cells = [_read_cell(path) for path in sorted((out / "cells").glob("z*.json"))]
    if partial:
        done = {cell["latent"] for cell in cells}
        cells += [cell for path in sorted((out / "cells" / "partial").glob("z*.json"))
                  if (cell := _read_cell(path))["latent"] not in done]
    return cells


def write_outputs(out: Path) -> pd.DataFrame:
    """results.csv, curves.csv, summary.md and the plots, rebuilt from every finished cell."""
    from .summary import write_plots, write_summary

    cells = sorted(load_cells(out, partial=True), key=lambda c: c["latent"])
    env = read_env(out)
    table = pd.DataFrame([r for c in cells for r in c["rows"]], columns=list(RESULT_COLUMNS))
    curves = pd.DataFrame([r for c in cells for r in c["curves"]])
    atomic_write_text(out / "results.csv", table.to_csv(index=False))
    atomic_write_text(out / "curves.csv", curves.to_csv(index=False))
    write_summary(out, table, env)
    write_plots(out, table, curves)
    return table


def merge(parts: list[Path], out: Path, *, force: bool = False) -> pd.DataFrame:
    """Join shard directories into one new run directory. Parts whose environment (CPU,
    versions, threads), settings or data differ are refused unless ``force``; overlapping or
    damaged parts always. Everything is read and checked before anything is written, ``out``
    must be new or empty, and a merge that fails leaves nothing there."""
    envs = [read_env(part) for part in parts]
    keys = ("cpu", "gpu", "logical_cpus", "torch_threads", "versions", "spec",
            "results_schema", "data_sha256")
    first = envs[0]
    for part, env in zip(parts[1:], envs[1:]):
        differing = [k for k in keys if env.get(k) != first.get(k)]
        if differing and not force:
            raise RunError(f"{part} differs from {parts[0]} in {', '.join(differing)}; "
                           "refusing to merge (pass --force to merge anyway)")
    seen: dict[int, Path] = {}
    cells = []
    for part in parts:
        for cell in load_cells(part):
            if cell["latent"] in seen:
                raise RunError(f"latent size {cell['latent']} appears in both "
                               f"{seen[cell['latent']]} and {part}: shards must be disjoint")
            seen[cell["latent"]] = part
            cells.append(cell)
    with claim(out, "run", empty=True, all_or_nothing=True):
        for cell in cells:
            atomic_write_text(_cell_path(out, cell["latent"]),
                              json.dumps(cell, indent=1, allow_nan=True))
        merged = dict(first, shard=None, merged_from=[str(p) for p in parts])
        atomic_write_text(out / "env.json", json.dumps(merged, indent=1))
        return write_outputs(out)
