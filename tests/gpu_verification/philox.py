"""NumPy twins of the noise generator in device_math.cuh (Philox4x32-10 + Box-Muller).

Each function computes what its namesake in the header computes, vectorized, so the CUDA
step's noise can be recomputed on the CPU. Philox and ``uniform_open`` are bit-exact. In
``normal4`` the float32 operations the C code rounds (``-2 * log``, ``sqrt``, ``2 pi * u``,
``radius * cos``) are done in float32, and each libm call (``logf``, ``cosf``, ``sinf``) is
evaluated in float64 and cast once, which is what a correctly rounded float32 libm returns;
glibc's and CUDA's ``logf``/``cosf``/``sinf`` are within a few ulps of that.
"""

import numpy as np

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_MASK32 = 0xFFFFFFFF
_NOISE_TAG = 0x5EED  # counter word 3 of normal4: tags the z-noise stream
_TWO_PI = np.float32(6.283185307179586)
_INV_2_23 = np.float32(2.0**-23)


def philox4x32_10(counters, key0, key1):
    """Philox4x32-10 of each row of ``counters`` (N, 4) uint32 under key (key0, key1)."""
    ctr = np.asarray(counters, dtype=np.uint32).reshape(-1, 4).astype(np.uint64)
    c0, c1, c2, c3 = (ctr[:, i] for i in range(4))
    k0, k1 = int(key0) & _MASK32, int(key1) & _MASK32
    mask, shift = np.uint64(_MASK32), np.uint64(32)
    m0, m1 = np.uint64(_M0), np.uint64(_M1)
    for _ in range(10):
        # 32 x 32 -> 64-bit products fit uint64 exactly; hi/lo are the mulhilo halves.
        p0 = m0 * c0
        p1 = m1 * c2
        c0, c1, c2, c3 = (
            (p1 >> shift) ^ c1 ^ np.uint64(k0),
            p1 & mask,
            (p0 >> shift) ^ c3 ^ np.uint64(k1),
            p0 & mask,
        )
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def uniform_open(bits):
    """float32 in the open interval (0, 1) from the top 23 bits, as the header's
    ``uniform_open``: (k + 1/2) 2^-23, exact in float32, never 0 or 1."""
    top = (np.asarray(bits, dtype=np.uint32) >> np.uint32(9)).astype(np.float32)
    return (top + np.float32(0.5)) * _INV_2_23


def normal4(seed, step, rows, chunks):
    """The four normals of ``normal4(seed, step, row, chunk)`` for each (row, chunk): (N, 4)."""
    rows = np.asarray(rows, dtype=np.uint32).ravel()
    chunks = np.asarray(chunks, dtype=np.uint32).ravel()
    rows, chunks = np.broadcast_arrays(rows, chunks)
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF  # the kernel's unsigned long long
    ctr = np.empty((rows.size, 4), dtype=np.uint32)
    ctr[:, 0] = chunks
    ctr[:, 1] = rows
    ctr[:, 2] = int(step) & _MASK32
    ctr[:, 3] = _NOISE_TAG
    bits = philox4x32_10(ctr, seed & _MASK32, seed >> 32)
    u = uniform_open(bits)  # (N, 4): columns 0/1 feed pair 0, 2/3 feed pair 1
    log_u = np.log(u[:, 0::2].astype(np.float64)).astype(np.float32)
    radius = np.sqrt(np.float32(-2.0) * log_u)
    angle = (_TWO_PI * u[:, 1::2]).astype(np.float64)
    out = np.empty((rows.size, 4), dtype=np.float32)
    out[:, 0::2] = radius * np.cos(angle).astype(np.float32)
    out[:, 1::2] = radius * np.sin(angle).astype(np.float32)
    return out


def normal_noise(seed, step, rows, latent):
    """The (rows, latent) float32 noise ``reparameterize_kl`` draws for one batch.

    Element (r, j) is ``normal4(seed, step, r, j // 4)[j % 4]``; a partial last chunk is cut.
    """
    chunks = -(-latent // 4)
    r, c = np.meshgrid(np.arange(rows), np.arange(chunks), indexing="ij")
    noise = normal4(seed, step, r, c).reshape(rows, chunks * 4)
    return np.ascontiguousarray(noise[:, :latent])
