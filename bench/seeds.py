"""A backend against the reference over seeds: do their final ELBOs agree within seed noise?

Input: experiment directories (``vae-bench experiment --seed S``), made by exactly two
backends, the reference (``torch``) and one other, with the same settings but the seed. Both
start from the same weights and see the same batches; the reparameterization noise is each
backend's own, so they can only agree within the noise of seeds, not bit for bit.

The verdict, at every latent size: the difference of the mean test ELBOs is smaller than the
larger of the two seed SDs, and within 1.5 standard errors of a difference of means
(SE = sqrt(sd_ref^2/n_ref + sd_other^2/n_other)). With fewer than 3 seeds per backend there
is no SD to speak of, and no verdict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from kernels import REFERENCE_BACKEND

from . import file_names as files
from .provenance import collect
from .result_files import read_experiment_table
from .results_dir import claim
from .store import atomic_write_text, read_json_object

REFERENCE = REFERENCE_BACKEND
SPEC_IGNORED = ("seeds", "backend", "threads")  # may differ between the runs compared
MIN_SEEDS = 3
SE_LIMIT = 1.5


class SeedsError(ValueError):
    """Runs that cannot be compared as asked; the message says why and what to do."""


# The columns of an experiment's table.csv that the comparison reads.
READ_COLUMNS = (
    "model",
    "latent_dim",
    "seed",
    "final_test_elbo",
    "final_train_elbo",
    "seconds_per_epoch",
)
_REDO = "rerun that experiment, or leave it out of the comparison"


def _read_run(path: Path) -> tuple[dict, pd.DataFrame]:
    """A finished experiment directory's provenance and its VAE rows, every field the
    comparison reads checked (SeedsError naming the file, the row and what was expected)."""
    try:
        provenance = read_json_object(path / files.PROVENANCE)
    except (OSError, ValueError) as error:
        raise SeedsError(
            f"{path}: not a finished experiment directory ({error}); give the "
            "--out directories of `vae-bench experiment`"
        ) from None
    if not (path / files.TABLE).is_file():
        raise SeedsError(
            f"{path}: not a finished experiment directory (no table.csv); give "
            "the --out directories of `vae-bench experiment`"
        )
    table = read_experiment_table(path / files.TABLE, READ_COLUMNS)
    spec = provenance.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("backend"), str):
        raise SeedsError(
            f"{path / 'provenance.json'}: its spec is not an experiment's (an "
            "object naming its backend); give the --out directories of "
            "`vae-bench experiment`"
        )
    table = table[table.model == "vae"]
    unfinished = table[~np.isfinite(table.final_test_elbo.to_numpy(dtype=float))]
    if len(unfinished):
        r = unfinished.iloc[0]
        raise SeedsError(
            f"{path / 'table.csv'}: z = {r.latent_dim}, seed {r.seed} has test "
            f"ELBO {r.final_test_elbo}, not a finite number (a diverged or "
            f"unfinished training); {_REDO}"
        )
    return provenance, table.assign(backend=spec["backend"])


def _current(spec: dict) -> dict:
    """An experiment's spec in today's fields: one written before the grids had a "seed" and
    a "beta" where it now has "seeds" and "betas"."""
    spec = dict(spec)
    for old, new in (("seed", "seeds"), ("beta", "betas")):
        if old in spec and new not in spec:
            spec[new] = [spec.pop(old)]
    return spec


def compare_seeds(paths: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(every run's rows, the per-latent comparison, the runs' provenance) of ``paths``."""
    runs = [(p, *_read_run(p)) for p in paths]
    specs = {
        json.dumps(
            {k: v for k, v in _current(prov["spec"]).items() if k not in SPEC_IGNORED},
            sort_keys=True,
        )
        for _, prov, _ in runs
    }
    if len(specs) > 1:
        raise SeedsError(
            "the runs differ in more than seed and backend: " + " | ".join(sorted(specs))
        )
    rows = pd.concat([t for _, _, t in runs], ignore_index=True)
    backends = sorted(set(rows.backend))
    if REFERENCE not in backends or len(backends) != 2:
        raise SeedsError(
            f"need runs by the reference ({REFERENCE}) and one other backend, got "
            f"{', '.join(backends) or 'none'}"
        )
    other = next(b for b in backends if b != REFERENCE)
    for backend, group in rows.groupby("backend"):
        seeds = group.groupby("latent_dim").seed.nunique()
        if (seeds < MIN_SEEDS).any() or group.duplicated(["latent_dim", "seed"]).any():
            raise SeedsError(
                f"{backend}: each latent size needs {MIN_SEEDS} or more distinct "
                f"seeds, once each; got {dict(seeds)}"
            )
    table = []
    for z, group in rows.groupby("latent_dim"):
        stats = {b: group[group.backend == b] for b in (REFERENCE, other)}
        mean = {b: s.final_test_elbo.mean() for b, s in stats.items()}
        sd = {b: s.final_test_elbo.std(ddof=1) for b, s in stats.items()}
        se = math.sqrt(sum(sd[b] ** 2 / len(stats[b]) for b in stats))
        difference = mean[other] - mean[REFERENCE]
        table.append(
            {
                "latent_dim": z,
                "seeds": len(stats[other]),
                f"{REFERENCE}_test_elbo": mean[REFERENCE],
                f"{REFERENCE}_sd": sd[REFERENCE],
                f"{other}_test_elbo": mean[other],
                f"{other}_sd": sd[other],
                "difference": difference,
                "difference_se": abs(difference) / se if se else math.inf,
                f"{REFERENCE}_train_elbo": stats[REFERENCE].final_train_elbo.mean(),
                f"{other}_train_elbo": stats[other].final_train_elbo.mean(),
                f"{REFERENCE}_s_per_epoch": stats[REFERENCE].seconds_per_epoch.mean(),
                f"{other}_s_per_epoch": stats[other].seconds_per_epoch.mean(),
                "within_noise": abs(difference) < max(sd.values())
                and abs(difference) <= SE_LIMIT * se,
            }
        )
    provenance = {
        p.name: {k: prov.get(k) for k in ("git_commit", "command", "cpu", "seed", "timestamp")}
        for p, prov, _ in runs
    }
    return rows, pd.DataFrame(table), provenance


def summary_markdown(table: pd.DataFrame, other: str, runs: dict) -> str:
    def pm(mean, sd):
        return f"{mean:.2f} ± {sd:.2f}"

    lines = [
        f"# {other} against the reference ({REFERENCE}): final ELBO over seeds",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        f"| z | seeds | {REFERENCE} test ELBO | {other} test ELBO | difference | SE of it |"
        f" {REFERENCE} train ELBO | {other} train ELBO | s/epoch {REFERENCE} |"
        f" s/epoch {other} |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        d = r._asdict()
        lines.append(
            f"| {r.latent_dim} | {r.seeds} | {pm(d[f'{REFERENCE}_test_elbo'], d[f'{REFERENCE}_sd'])}"
            f" | {pm(d[f'{other}_test_elbo'], d[f'{other}_sd'])} | {r.difference:+.2f} |"
            f" {r.difference_se:.1f} | {d[f'{REFERENCE}_train_elbo']:.2f} |"
            f" {d[f'{other}_train_elbo']:.2f} | {d[f'{REFERENCE}_s_per_epoch']:.2f} |"
            f" {d[f'{other}_s_per_epoch']:.2f} |"
        )
    within = bool(table.within_noise.all())
    lines += [
        "",
        f"**Verdict: {'within' if within else 'NOT within'} the noise of seeds** at "
        + (
            "every latent size."
            if within
            else "z = " + ", ".join(str(z) for z in table[~table.within_noise].latent_dim) + "."
        ),
        "",
        "Epoch times are the training steps' wall time, not an interleaved timing: "
        "`vae-bench profile` gives that.",
        "",
        "Runs:",
        "",
    ]
    lines += [
        f"- `{name}`: `{r['command']}` at {r['git_commit']} on {r['cpu']}"
        for name, r in runs.items()
    ]
    return "\n".join(lines) + "\n"


def write_seeds(paths: list[Path], out: Path) -> bool:
    """Compare the runs, write runs.csv, comparison.csv, summary.md and provenance.json into
    ``out``; True when every latent size is within seed noise."""
    for path in paths:
        if out.resolve() == path.resolve() or path.resolve().is_relative_to(out.resolve()):
            raise SeedsError(
                f"--out {out} holds the run {path}, which it would overwrite; give a new directory"
            )
    rows, table, runs = compare_seeds(paths)
    other = next(b for b in sorted(set(rows.backend)) if b != REFERENCE)
    with claim(out, "seeds"):  # only into a directory of its own kind, one writer at a time
        atomic_write_text(out / files.SEED_RUNS, rows.to_csv(index=False))
        atomic_write_text(out / files.SUMMARY, summary_markdown(table, other, runs))
        atomic_write_text(
            out / files.PROVENANCE, json.dumps(collect(runs=runs), indent=2, default=str) + "\n"
        )
        atomic_write_text(out / files.COMPARISON, table.to_csv(index=False))  # last: the record
    return bool(table.within_noise.all())
