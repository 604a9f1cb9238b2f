"""The figures of experiments and runs, drawn with matplotlib's object API (no pyplot global
state).

Every function takes arrays already computed and a path; files are written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vae_ref.atomic import atomic_open

from . import tables

SIDE = 28  # images are 28 x 28


def image_grid(images: np.ndarray, rows: int, cols: int, gap: int = 1) -> np.ndarray:
    """Tile (n, 784) images into one 2-D array, row by row, with a white gap between tiles."""
    if len(images) > rows * cols:
        raise ValueError(f"{len(images)} images do not fit a {rows}x{cols} grid")
    step = SIDE + gap
    grid = np.ones((rows * step - gap, cols * step - gap), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * step : r * step + SIDE, c * step : c * step + SIDE] = image.reshape(SIDE, SIDE)
    return grid


def save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def _show_grid(ax, grid: np.ndarray, title: str) -> None:
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def elbo_curves(curves: pd.DataFrame, path: Path, dataset: str) -> None:
    """ELBO vs epoch, one colour per model; solid = test set, dashed = training batches."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    for i, (name, rows) in enumerate(curves.groupby("name", sort=False)):
        colour = f"C{i % 10}"
        ax.plot(rows["epoch"], rows["test_elbo"], color=colour, label=f"{name} test")
        ax.plot(rows["epoch"], rows["train_elbo"], color=colour, linestyle="--", alpha=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per image; AE: -BCE)")
    ax.set_title(f"ELBO per epoch on {dataset} (dashed: training batches)")
    # The first epochs dwarf the rest; show the range where the models differ.
    late = curves[curves["epoch"] > max(1, curves["epoch"].max() // 10)]
    if len(late):
        lo = min(late["test_elbo"].min(), late["train_elbo"].min())
        hi = max(late["test_elbo"].max(), late["train_elbo"].max())
        pad = 0.05 * (hi - lo) + 1e-6
        ax.set_ylim(lo - pad, hi + pad)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    save(fig, path)


def reconstructions(originals: np.ndarray, recon: np.ndarray, path: Path, title: str) -> None:
    """A 10 x 10 grid of test originals beside the grid of their reconstructions."""
    fig = Figure(figsize=(9, 4.8))
    left, right = fig.subplots(1, 2)
    _show_grid(left, image_grid(originals, 10, 10), "test originals")
    _show_grid(right, image_grid(recon, 10, 10), "reconstructions")
    fig.suptitle(title)
    save(fig, path)


def samples(images: np.ndarray, path: Path, title: str) -> None:
    """A 10 x 10 grid of images decoded from prior samples."""
    fig = Figure(figsize=(4.8, 5.0))
    _show_grid(fig.add_subplot(), image_grid(images, 10, 10), title)
    save(fig, path)


MERGE_COLUMNS = (
    "image A",
    "image B",
    "recon A",
    "recon B",
    "decode\n(code A + code B)/2",
    "decode\nrandom code",
)


def merge(rows: Sequence[tuple[str, Sequence[np.ndarray]]], path: Path, title: str) -> None:
    """One row per model (AE, VAE): each row holds the six images of MERGE_COLUMNS."""
    fig = Figure(figsize=(9, 1.5 * len(rows) + 0.7), layout="constrained")
    axes = fig.subplots(len(rows), len(MERGE_COLUMNS), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image.reshape(SIDE, SIDE), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(MERGE_COLUMNS[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
    fig.suptitle(title)
    save(fig, path)


def latent_scatter(
    mu: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: Path, title: str
) -> None:
    """Test-set posterior means of a 2-D latent space, coloured by class."""
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        pts = mu[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.6, color=f"C{c % 10}", label=name)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title)
    ax.legend(markerscale=4, fontsize=8, loc="best")
    save(fig, path)


def manifold(images: np.ndarray, n: int, path: Path, title: str) -> None:
    """An n x n grid of decodings of a 2-D latent grid (Kingma & Welling's Fig. 4)."""
    fig = Figure(figsize=(6, 6.2))
    _show_grid(fig.add_subplot(), image_grid(images, n, n, gap=0), title)
    save(fig, path)


def _lines(ax, timed: pd.DataFrame, x: str, y: str) -> None:
    """One line per backend: the median of ``y`` at each ``x``."""
    for i, (backend, rows) in enumerate(timed.groupby("backend", sort=False)):
        values = rows.dropna(subset=[y]).groupby(x)[y].median()
        ax.plot(values.index, values.values, marker="o", label=backend, color=f"C{i}")


def _finish(fig: Figure, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save(fig, path)


def run_plots(out: Path, table: pd.DataFrame, curves: pd.DataFrame) -> None:
    """A run's plots: throughput by batch size, speed-up over eager by latent size, the
    scaling figure where a latent size was timed at three batch sizes or more, the ELBO
    curves."""
    timed = table.dropna(subset=["samples_per_s"])
    if len(timed):
        fig = Figure(figsize=(7.5, 4.5))
        ax = fig.add_subplot()
        _lines(ax, timed, "batch_size", "samples_per_s")
        ax.set_xscale("log", base=2)
        _finish(
            fig,
            ax,
            "batch size",
            "training samples/s (median over latent sizes)",
            "Throughput by backend and batch size",
            out / "throughput.png",
        )
        timed = timed.assign(speedup=tables.speedup(timed))
        if timed.speedup.notna().any():
            fig = Figure(figsize=(7.5, 4.5))
            ax = fig.add_subplot()
            _lines(ax, timed, "latent_dim", "speedup")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            _finish(
                fig,
                ax,
                "latent size z",
                "speed-up over PyTorch eager (same device)",
                "Speed-up by latent size",
                out / "speedup.png",
            )
        for latent, rows in timed.groupby("latent_dim"):
            if rows.batch_size.nunique() >= 3:
                scaling(rows, out / f"scaling_z{latent}.png")
    if len(curves):
        curves = curves.assign(name=curves.backend + " z" + curves.latent_dim.astype(str))
        elbo_curves(curves, out / "elbo_curves.png", "this run")


def scaling(rows: pd.DataFrame, path: Path) -> None:
    """How each backend's rate grows with its work at one latent size: samples/s against the
    batch size, and the fraction of the device's GEMM peak, a panel per GEMM precision, each
    against that precision's own peak (a bf16 row's % is of the bf16 peak: drawn beside
    float32 rows under one axis it read as float32's); the step's 11 GEMMs alone (NumPy's
    float32 BLAS: the ceiling of a CPU step that calls it) drawn dashed."""
    precisions = list(dict.fromkeys(rows.precision))
    fig = Figure(figsize=(6 * (1 + len(precisions)), 4.5))
    rate = fig.add_subplot(1, 1 + len(precisions), 1)
    _lines(rate, rows, "batch_size", "samples_per_s")
    measured = rows.dropna(subset=["gemm_only_ms"]).groupby("batch_size").first()
    if len(measured):
        rate.plot(
            measured.index,
            measured.index / measured.gemm_only_ms * 1e3,
            "k--",
            label="the 11 GEMMs alone (NumPy BLAS)",
        )
    z = int(rows.latent_dim.iloc[0])
    rate.set_xscale("log", base=2)
    rate.set_yscale("log")
    rate.set_xlabel("batch size")
    rate.set_ylabel("training samples/s")
    rate.set_title(f"Throughput, z = {z}")
    rate.grid(alpha=0.3, which="both")
    rate.legend(fontsize="small")
    for i, precision in enumerate(precisions):
        peak = fig.add_subplot(1, 1 + len(precisions), 2 + i)
        mine = rows[rows.precision == precision]
        _lines(peak, mine, "batch_size", "pct_peak")
        float32 = mine.dropna(subset=["gemm_only_ms"]).groupby("batch_size").first()
        if precision == "float32" and len(float32):
            # % of peak scales as 1 / time, so the GEMMs' own share follows from any row's.
            ceiling_pct = float32.pct_peak * float32.ms_per_step / float32.gemm_only_ms
            peak.plot(
                float32.index, ceiling_pct.values, "k--", label="the 11 GEMMs alone (NumPy BLAS)"
            )
        peak.set_xscale("log", base=2)
        peak.set_xlabel("batch size")
        peak.set_ylabel(f"% of the device's {precision} GEMM peak")
        peak.set_title(f"{precision} rows: fraction of the {precision} GEMM peak, z = {z}")
        peak.grid(alpha=0.3)
        peak.legend(fontsize="small")
    save(fig, path)


def _by_beta(ax, vaes: pd.DataFrame, value: str, seeds_in_label: bool) -> None:
    """A line per beta (in order) of ``value`` against the latent size: its mean over the
    seeds at each size, the bar their range; the latent sizes on a log axis, each named."""
    for i, (beta, rows) in enumerate(vaes.groupby("beta", sort=True)):
        stats = rows.groupby("latent_dim")[value].agg(["mean", "min", "max", "count"])
        seeds = int(stats["count"].max())
        label = f"beta = {beta:g}" + (
            f" ({seeds} seed{'s' if seeds != 1 else ''})" if seeds_in_label else ""
        )
        ax.errorbar(
            stats.index,
            stats["mean"],
            yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
            marker="o",
            capsize=3,
            color=f"C{i}",
            label=label,
        )
    sizes = sorted(vaes.latent_dim.unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(z) for z in sizes])


def elbo_by_latent(table: pd.DataFrame, path: Path, dataset: str) -> None:
    """The test ELBO (at beta = 1, whatever beta trained the model) against the latent size,
    a line per beta: the mean over seeds, the bar their range."""
    vaes = table[table.model == "vae"].dropna(subset=["final_test_elbo"])
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    _by_beta(ax, vaes, "final_test_elbo", seeds_in_label=True)
    _finish(
        fig,
        ax,
        "latent size z",
        "test ELBO at beta = 1 (nats; bars: range over seeds)",
        f"Test ELBO by latent size and beta, {dataset}",
        path,
    )


def active_units_by_latent(table: pd.DataFrame, path: Path, dataset: str) -> None:
    """Active units against the latent size, a line per beta (the mean over seeds, the bar
    their range), and the diagonal where every unit is active: where a line leaves it, the
    model stops using the capacity it is given."""
    vaes = table[table.model == "vae"].dropna(subset=["active_units"])
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    sizes = sorted(vaes.latent_dim.unique())
    ax.plot(sizes, sizes, "k:", label="every unit active")
    _by_beta(ax, vaes, "active_units", seeds_in_label=False)
    _finish(
        fig,
        ax,
        "latent size z",
        "active units (Burda et al.: Cov_x E[z_u] > 0.01)",
        f"Active units by latent size and beta, {dataset}",
        path,
    )


def kl_per_dimension(table: pd.DataFrame, latent: int, path: Path, dataset: str) -> None:
    """The KL of each latent dimension, sorted largest first, at one latent size: a line per
    beta (the first seed's model), on a log axis where the unused dimensions fall away. No
    threshold is drawn: the active-unit threshold (0.01) bounds a variance of posterior means,
    not a KL, and a line at 0.01 nats here would read as one."""
    vaes = table[(table.model == "vae") & (table.latent_dim == latent)]
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    for i, (beta, rows) in enumerate(vaes.groupby("beta", sort=True)):
        first = rows.sort_values("seed").iloc[0]
        kl = np.sort(tables.windows_of(first.kl_per_dim))[::-1]
        ax.plot(
            np.arange(1, len(kl) + 1),
            np.maximum(kl, 1e-6),
            marker=".",
            color=f"C{i}",
            label=f"beta = {beta:g} (seed {first.seed})",
        )
    ax.set_yscale("log")
    _finish(
        fig,
        ax,
        "latent dimension, by its KL (largest first)",
        "KL(q(z_u|x) || N(0, 1)), nats (test mean)",
        f"KL per latent dimension at z = {latent}, {dataset}",
        path,
    )
