"""What every compiled backend checks before its kernels run, and the one thing they all do on
the host. Compiled code (Numba, CUDA) checks no shapes or bounds: a wrong array must fail
here, with a message that says what was expected.
"""

from __future__ import annotations

import numpy as np

from vae_ref.params import Params


def checked_images(x: np.ndarray, input_dim: int) -> np.ndarray:
    """``x`` as a contiguous float32 (N, input_dim) array, N > 0."""
    if np.ndim(x) != 2 or np.shape(x)[1] != input_dim or len(x) == 0:
        raise ValueError(f"images must be a non-empty (N, {input_dim}) array, got "
                         f"{np.shape(x)}")
    return np.ascontiguousarray(x, dtype=np.float32)


def checked_noise(eps: np.ndarray, batch: int, latent: int) -> np.ndarray:
    """Given reparameterization noise as a contiguous float32 (batch, latent) array."""
    shape = (batch, latent)
    if np.shape(eps) != shape:
        raise ValueError(f"eps must have shape {shape}, got {np.shape(eps)}")
    return np.ascontiguousarray(eps, dtype=np.float32)


def decode_on_host(params: Params, z: np.ndarray) -> np.ndarray:
    """Pixel logits for codes ``z`` from canonical weights, in NumPy: decoding is for figures
    (a few hundred codes), not worth a device round trip or a compiled kernel."""
    dec_h = np.maximum(np.asarray(z, np.float32) @ params["dec.fc1.weight"].T
                       + params["dec.fc1.bias"], 0)
    return dec_h @ params["dec.out.weight"].T + params["dec.out.bias"]
