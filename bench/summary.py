"""A run directory's readable outputs: summary.md and the plots, from results.csv's table."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from vae_ref.atomic import atomic_write_text

from . import figures
from .provenance import as_markdown


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def write_summary(out: Path, table: pd.DataFrame, env: dict) -> None:
    spec = env["spec"]
    lines = [
        f"# vae-bench run — {spec['dataset']}",
        "",
        f"Dataset: {env['dataset']}. Device: CPU {env['cpu']} ({env['logical_cpus']} logical "
        f"CPUs), GEMM peak {env['gemm_peak_gflops']:.0f} GFLOP/s ({env['gemm_peak_source']}). "
        f"{spec['epochs']} epochs, seed {spec['seed']}.",
        "",
        "## Agreement with the float64 reference",
        "",
        "| backend | z | verdict | worst tensor (fraction of tolerance) | note |",
        "|---|---:|---|---:|---|",
    ]
    first_batch = spec["batch_sizes"][0]
    gate = table[table.batch_size == first_batch]
    for r in gate.itertuples():
        lines.append(f"| {r.backend} | {r.latent_dim} | {r.agreement} | "
                     f"{_fmt(r.worst_fraction, '.1%')} | {r.note if isinstance(r.note, str) else ''} |")
    lines += ["", "## Throughput (training samples/s, median of interleaved windows)", "",
              "| backend | z | batch | samples/s | min–max | ms/step | GFLOP/s | % peak "
              "| speed-up vs torch | warm-up s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.itertuples():
        if not isinstance(r.samples_per_s, float) or math.isnan(r.samples_per_s):
            continue
        base = table[(table.backend == "torch") & (table.latent_dim == r.latent_dim)
                     & (table.batch_size == r.batch_size)].samples_per_s
        speedup = (f"{r.samples_per_s / base.iloc[0]:.2f}x"
                   if len(base) and base.iloc[0] > 0 else "—")
        lines.append(
            f"| {r.backend} | {r.latent_dim} | {r.batch_size} | {r.samples_per_s:,.0f} | "
            f"{r.samples_per_s_min:,.0f}–{r.samples_per_s_max:,.0f} | {r.ms_per_step:.3f} | "
            f"{r.gflops:.1f} | {r.pct_peak:.1f}% | {speedup} | {r.warmup_s:.2f} |")
    lines += ["", f"## ELBO by latent size and backend (batch {first_batch}; nats per image)",
              "", "| backend | z | final train ELBO | average train ELBO | final test ELBO "
              "| test log p(x) (k) |", "|---|---:|---:|---:|---:|---:|"]
    for r in gate.itertuples():
        if isinstance(r.final_test_elbo, float) and not math.isnan(r.final_test_elbo):
            lines.append(
                f"| {r.backend} | {r.latent_dim} | {r.final_train_elbo:.2f} | "
                f"{r.average_train_elbo:.2f} | {r.final_test_elbo:.2f} | "
                f"{_fmt(r.test_iwae, '.2f')} ({int(r.iwae_k) if r.iwae_k == r.iwae_k else 0}) |")
    record = {k: v for k, v in env.items() if k not in ("spec",)}
    lines += ["", "## Environment", "", as_markdown(record), ""]
    atomic_write_text(out / "summary.md", "\n".join(lines))


def write_plots(out: Path, table: pd.DataFrame, curves: pd.DataFrame) -> None:
    timed = table.dropna(subset=["samples_per_s"])
    if len(timed):
        fig = Figure(figsize=(7.5, 4.5))
        ax = fig.add_subplot()
        for i, (backend, rows) in enumerate(timed.groupby("backend", sort=False)):
            by_batch = rows.groupby("batch_size").samples_per_s.median()
            ax.plot(by_batch.index, by_batch.values, marker="o", label=backend, color=f"C{i}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("training samples/s (median over latent sizes)")
        ax.set_title("Throughput by backend and batch size")
        ax.grid(alpha=0.3)
        ax.legend()
        figures.save(fig, out / "throughput.png")

        base = timed[timed.backend == "torch"].set_index(["latent_dim", "batch_size"])
        if len(base):
            fig = Figure(figsize=(7.5, 4.5))
            ax = fig.add_subplot()
            for i, (backend, rows) in enumerate(timed.groupby("backend", sort=False)):
                rows = rows.set_index(["latent_dim", "batch_size"])
                ratio = (rows.samples_per_s / base.samples_per_s).dropna()
                ratio = ratio.groupby(level="latent_dim").median()
                ax.plot(ratio.index, ratio.values, marker="o", label=backend, color=f"C{i}")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_xlabel("latent size z")
            ax.set_ylabel("speed-up over PyTorch eager")
            ax.set_title("Speed-up by latent size")
            ax.grid(alpha=0.3)
            ax.legend()
            figures.save(fig, out / "speedup.png")
    if len(curves):
        curves = curves.assign(name=curves.backend + " z" + curves.latent_dim.astype(str))
        figures.elbo_curves(curves, out / "elbo_curves.png", "this run")
