"""A run directory's readable outputs: summary.md and the plots, from results.csv's table."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from vae_ref.atomic import atomic_write_text

from . import baselines, figures
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
        f"CPUs), GEMM peak {env['gemm_peak_gflops']:.0f} GFLOP/s ({env['gemm_peak_source']})"
        + (f"; GPU {env['gpu']}, GEMM peak {env['gpu_gemm_peak_gflops']:,.0f} GFLOP/s "
           f"({env['gpu_gemm_peak_source']})" if "gpu" in env else "")
        + f". {spec['epochs']} epochs, seed {spec['seed']}."
        + (" Timed steps draw their own noise." if spec.get("backend_noise") else ""),
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
              "Speed-up is over PyTorch eager on the same device in this run (torch on the CPU, "
              "torch-cuda on a GPU); % peak is of that device's float32 GEMM peak; the launch "
              "floor is the step graph's nodes times the replay cost of one empty CUDA Graph "
              "node.",
              "", "| backend | device | z | batch | samples/s | min–max | ms/step | GFLOP/s "
              "| % peak | speed-up vs eager | launch floor ms (x) | warm-up s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    speedups = baselines.speedup(table)
    devices = baselines.devices(table)
    for r, speedup, device in zip(table.itertuples(), speedups, devices):
        if not isinstance(r.samples_per_s, float) or math.isnan(r.samples_per_s):
            continue
        floor = r.launch_floor_ms
        floor_text = (f"{floor:.3f} ({r.ms_per_step / floor:.1f}x)"
                      if isinstance(floor, float) and floor == floor else "—")
        lines.append(
            f"| {r.backend} | {device} | {r.latent_dim} | {r.batch_size} | "
            f"{r.samples_per_s:,.0f} | {r.samples_per_s_min:,.0f}–{r.samples_per_s_max:,.0f} | "
            f"{r.ms_per_step:.3f} | {r.gflops:.1f} | {r.pct_peak:.1f}% | "
            f"{_fmt(speedup, '.2f')}{'x' if speedup == speedup else ''} | {floor_text} | "
            f"{r.warmup_s:.2f} |")
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

        timed = timed.assign(speedup=baselines.speedup(timed))
        if timed.speedup.notna().any():
            fig = Figure(figsize=(7.5, 4.5))
            ax = fig.add_subplot()
            for i, (backend, rows) in enumerate(timed.groupby("backend", sort=False)):
                ratio = rows.dropna(subset=["speedup"]).groupby("latent_dim").speedup.median()
                ax.plot(ratio.index, ratio.values, marker="o", label=backend, color=f"C{i}")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_xlabel("latent size z")
            ax.set_ylabel("speed-up over PyTorch eager (same device)")
            ax.set_title("Speed-up by latent size")
            ax.grid(alpha=0.3)
            ax.legend()
            figures.save(fig, out / "speedup.png")
    if len(curves):
        curves = curves.assign(name=curves.backend + " z" + curves.latent_dim.astype(str))
        figures.elbo_curves(curves, out / "elbo_curves.png", "this run")
