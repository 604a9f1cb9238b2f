"""An experiment's figures, made from its trained models: reconstructions, prior samples, for
z = 2 the latent map and the decoded manifold, and the AE/VAE merge figure. The models run
through the reference's inference helpers (``vae_ref.model``); the drawing is
``figures.py``'s."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from vae_ref.config import VAEConfig
from vae_ref.data import Dataset
from vae_ref.model import AE, VAE, decode_images, posterior_means, reconstruct

from . import figures
from . import file_names as files
from .result_files import read_curves, read_experiment_table


class TrainedModel(Protocol):
    """What the figures need of a trained model (``experiment.FinishedModel`` is one)."""

    name: str
    config: VAEConfig
    model: VAE | AE


def showcase_indices(labels: np.ndarray, per_class: int = 10) -> np.ndarray:
    """The first ``per_class`` test images of each class, class by class (a 10 x 10 grid)."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])


def grid_figures(table, out: Path, dataset: str) -> None:
    """Where capacity stops being used: the test ELBO and the active units against the
    latent size, a line per beta (where two latent sizes or more were trained), and the KL
    of each dimension at the largest latent size, a line per beta."""
    vaes = table[table.model == "vae"]
    if vaes.latent_dim.nunique() >= 2:
        figures.elbo_by_latent(table, out / "elbo_by_latent.png", dataset)
        figures.active_units_by_latent(table, out / "active_units_by_latent.png", dataset)
    if len(vaes) and (vaes.kl_per_dim.fillna("") != "").any():
        largest = int(vaes.latent_dim.max())
        figures.kl_per_dimension(table, largest, out / f"kl_per_dimension_z{largest}.png", dataset)


def write_figures(finished: Sequence[TrainedModel], data: Dataset, out: Path, log) -> None:
    """Every figure of an experiment: the curves and the grid's from its files, each model's
    own for the first seed's models only (the other seeds' differ by their noise, and a
    grid's would be hundreds), and the AE/VAE merge figures."""
    curves = read_curves(out / files.CURVES)
    figures.elbo_curves(curves, out / "elbo_curves.png", data.name)
    grid_figures(read_experiment_table(out / files.TABLE), out, data.name)
    first_seed = finished[0].config.seed if finished else 0
    shown = data.test_x[showcase_indices(data.test_y)]
    prior = np.random.default_rng(0)
    for f in (f for f in finished if f.config.seed == first_seed):
        model_figures(f, shown, prior, data, out)
    for f in finished:
        if f.config.model == "ae" and f.config.seed == first_seed:
            merge_figure(f, finished, data, out, log)
    log(f"figures written to {out}")


def model_figures(
    f: TrainedModel, shown: np.ndarray, prior: np.random.Generator, data: Dataset, out: Path
) -> None:
    """One model's reconstructions of ``shown``; a VAE's decodings of prior samples; at
    z = 2, its test set's posterior means and its decoded latent grid."""
    name = f.name
    figures.reconstructions(
        shown,
        reconstruct(f.model, shown),
        out / f"reconstructions_{name}.png",
        f"{name} on {data.name}: reconstructions (decoded at z = mu)",
    )
    if f.config.model == "vae":
        z = prior.standard_normal((100, f.config.latent_dim))
        figures.samples(
            decode_images(f.model, z),
            out / f"prior_samples_{name}.png",
            f"{name} on {data.name}: decodings of z ~ N(0, I)",
        )
    if f.config.model == "vae" and f.config.latent_dim == 2:
        figures.latent_scatter(
            posterior_means(f.model, data.test_x),
            data.test_y,
            data.class_names,
            out / f"latent_scatter_{name}.png",
            f"{name}: test-set posterior means on {data.name}",
        )
        # Grid through the prior's quantiles, as in Kingma & Welling's Fig. 4.
        n = 20
        q = [statistics.NormalDist().inv_cdf(p) for p in np.linspace(0.03, 0.97, n)]
        grid = np.array([[a, b] for b in q[::-1] for a in q])
        figures.manifold(
            decode_images(f.model, grid),
            n,
            out / f"manifold_{name}.png",
            f"{name} on {data.name}: decoded latent grid\n(prior quantiles 3%..97%)",
        )


def merge_figure(
    ae: TrainedModel, finished: Sequence[TrainedModel], data: Dataset, out: Path, log
) -> None:
    """Two test images of different classes, reconstructed, merged and beside a random code,
    by the AE and by the VAE of its latent size and seed (at beta = 1 where one was
    trained)."""
    z = ae.config.latent_dim
    vaes = [
        v
        for v in finished
        if v.config.model == "vae" and v.config.seed == ae.config.seed and v.config.latent_dim == z
    ]
    vae = next((v for v in vaes if v.config.beta == 1.0), vaes[0] if vaes else None)
    if vae is None:
        log(f"merge figure for z={z} skipped: no VAE with that latent size")
        return
    a = int(np.flatnonzero(data.test_y == 3)[0])
    b = int(np.flatnonzero(data.test_y == 8)[0])
    pair = data.test_x[[a, b]]
    rows = []
    random_code = np.random.default_rng(1).standard_normal((1, z))
    for label, m in (("AE", ae.model), ("VAE", vae.model)):
        codes = posterior_means(m, pair)
        mixed = decode_images(m, codes.mean(axis=0, keepdims=True))
        rows.append(
            (
                label,
                [
                    pair[0],
                    pair[1],
                    *reconstruct(m, pair),
                    mixed[0],
                    decode_images(m, random_code)[0],
                ],
            )
        )
    figures.merge(
        rows,
        out / f"merge_z{z}.png",
        f"{data.name}, z = {z}: test images {data.class_names[3]!r} and {data.class_names[8]!r}",
    )
