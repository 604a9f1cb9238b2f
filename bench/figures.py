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


MERGE_COLUMNS = ("image A", "image B", "recon A", "recon B", "decode\n(code A + code B)/2",
                 "decode\nrandom code")


def merge(rows: Sequence[tuple[str, np.ndarray]], path: Path, title: str) -> None:
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


def run_plots(out: Path, table: pd.DataFrame, curves: pd.DataFrame) -> None:
    """A run's plots: throughput by batch size, speed-up over eager by latent size, the ELBO
    curves."""
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
        save(fig, out / "throughput.png")

        timed = timed.assign(speedup=tables.speedup(timed))
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
            save(fig, out / "speedup.png")
    if len(curves):
        curves = curves.assign(name=curves.backend + " z" + curves.latent_dim.astype(str))
        elbo_curves(curves, out / "elbo_curves.png", "this run")
