"""What every compiled backend checks before its kernels run, and the things they all do on
the host. Compiled code (Numba, CUDA, XLA) checks no shapes or bounds: a wrong array must fail
here, with a message that says what was expected.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vae_ref.evaluate import EvalResult
from vae_ref.params import Params


def checked_images(x: np.ndarray, input_dim: int) -> np.ndarray:
    """``x`` as a contiguous float32 (N, input_dim) array, N > 0."""
    if np.ndim(x) != 2 or np.shape(x)[1] != input_dim or len(x) == 0:
        raise ValueError(f"images must be a non-empty (N, {input_dim}) array, got {np.shape(x)}")
    return np.ascontiguousarray(x, dtype=np.float32)


def checked_noise(eps: np.ndarray, batch: int, latent: int) -> np.ndarray:
    """Given reparameterization noise as a contiguous float32 (batch, latent) array."""
    shape = (batch, latent)
    if np.shape(eps) != shape:
        raise ValueError(f"eps must have shape {shape}, got {np.shape(eps)}")
    return np.ascontiguousarray(eps, dtype=np.float32)


def checked_indices(values, rows: int, what: str = "batch indices") -> np.ndarray:
    """``values`` as contiguous int64 row numbers of a data set of ``rows`` images. Compiled
    gathers check nothing: Numba and CUDA read whatever address an index gives them, XLA's
    gather clamps, and on a GPU an index out of range is a device-side assert that leaves the
    context unusable."""
    values = np.asarray(values)
    if values.ndim != 1 or len(values) == 0 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"{what} must be a non-empty 1-D integer array, got {values.dtype} "
            f"of shape {values.shape}"
        )
    if values.min() < 0 or values.max() >= rows:
        raise IndexError(f"{what} must lie in [0, {rows}), got [{values.min()}, {values.max()}]")
    return np.ascontiguousarray(values, dtype=np.int64)


def decode_on_host(params: Params, z: np.ndarray) -> np.ndarray:
    """Pixel logits for codes ``z`` from canonical weights, in NumPy: decoding is for figures
    (a few hundred codes), not worth a device round trip or a compiled kernel."""
    dec_h = np.maximum(
        np.asarray(z, np.float32) @ params["dec.fc1.weight"].T + params["dec.fc1.bias"], 0
    )
    return dec_h @ params["dec.out.weight"].T + params["dec.out.bias"]


def evaluate_in_batches(
    terms: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    latent: int,
    *,
    seed: int,
    batch_size: int,
) -> EvalResult:
    """Mean ELBO terms per image over ``x``: ``terms(batch, eps)`` gives a batch's per-image
    (reconstruction, KL), with noise drawn batch by batch from ``np.random.default_rng(seed)``,
    the one noise stream every compiled backend evaluates with. Sums are in float64."""
    rng = np.random.default_rng(seed)
    totals = np.zeros(2)
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        eps = rng.standard_normal((len(xb), latent), dtype=np.float32)
        reconstruction, kl = terms(xb, eps)
        totals += [np.sum(reconstruction, dtype=np.float64), np.sum(kl, dtype=np.float64)]
    reconstruction, kl = (float(t) for t in totals / len(x))
    return EvalResult(elbo=-(reconstruction + kl), reconstruction=reconstruction, kl=kl)
