"""The compiled training step: gather, forward, loss, backward and Adam in one call.

GEMMs go through BLAS (``np.dot`` on contiguous float32, results written in place into the
workspace or straight into the flat gradient buffer); everything between them is one fused
kernel from ``fused.py``. No Python runs between the stages.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from .fused import (
    FASTMATH,
    bias_add,
    bias_relu,
    column_sum,
    gather_rows,
    relu_backward_column_sum,
    reparameterize_kl,
    reparameterize_kl_backward,
    sigmoid_bce,
)

f32 = np.float32
STEP_JIT = dict(fastmath=FASTMATH, error_model="numpy", cache=True, nogil=True)

# Per-batch-size scratch arrays, allocated once (outside any timed region) and reused.
Workspace = namedtuple(
    "Workspace",
    "xb h heads std z dech logits dlogits d_dech dz dheads dh bce kl",
)


def make_workspace(batch: int, input_dim: int, hidden: int, latent: int) -> Workspace:
    def e(*shape):
        return np.zeros(shape, dtype=np.float32)

    return Workspace(
        xb=e(batch, input_dim), h=e(batch, hidden), heads=e(batch, 2 * latent),
        std=e(batch, latent), z=e(batch, latent), dech=e(batch, hidden),
        logits=e(batch, input_dim), dlogits=e(batch, input_dim), d_dech=e(batch, hidden),
        dz=e(batch, latent), dheads=e(batch, 2 * latent), dh=e(batch, hidden),
        bce=e(batch), kl=e(batch),
    )


@njit(**STEP_JIT, inline="always")
def tensors(flat, off, input_dim, hidden, latent):
    """Views of the eight (packed) tensors in a flat buffer, in layout.SLOTS order."""
    d, h, z = input_dim, hidden, latent
    w1 = flat[off[0] : off[0] + h * d].reshape(h, d)
    b1 = flat[off[1] : off[1] + h]
    w_heads = flat[off[2] : off[2] + 2 * z * h].reshape(2 * z, h)
    b_heads = flat[off[3] : off[3] + 2 * z]
    w_dec = flat[off[4] : off[4] + h * z].reshape(h, z)
    b_dec = flat[off[5] : off[5] + h]
    w_out = flat[off[6] : off[6] + d * h].reshape(d, h)
    b_out = flat[off[7] : off[7] + d]
    return w1, b1, w_heads, b_heads, w_dec, b_dec, w_out, b_out


@njit(**STEP_JIT)
def forward(params, off, xb, eps, ws):
    """Encoder, reparameterization + KL, decoder, and the fused sigmoid-BCE (which also
    leaves d loss / d logits in ws.dlogits)."""
    batch, input_dim = xb.shape
    hidden, latent = ws.h.shape[1], eps.shape[1]
    w1, b1, w_heads, b_heads, w_dec, b_dec, w_out, b_out = tensors(
        params, off, input_dim, hidden, latent)
    np.dot(xb, w1.T, ws.h)
    bias_relu(ws.h, b1, 0, batch)
    np.dot(ws.h, w_heads.T, ws.heads)
    bias_add(ws.heads, b_heads, 0, batch)
    reparameterize_kl(ws.heads, eps, ws.z, ws.std, ws.kl)
    np.dot(ws.z, w_dec.T, ws.dech)
    bias_relu(ws.dech, b_dec, 0, batch)
    np.dot(ws.dech, w_out.T, ws.logits)
    bias_add(ws.logits, b_out, 0, batch)
    sigmoid_bce(ws.logits, xb, f32(1.0) / f32(batch), ws.bce, ws.dlogits, 0, batch)


@njit(**STEP_JIT)
def backward(params, grads, off, xb, eps, beta, ws):
    """Every parameter gradient of the batch-mean loss, written into the flat ``grads``."""
    batch, input_dim = xb.shape
    hidden, latent = ws.h.shape[1], eps.shape[1]
    _, _, w_heads, _, w_dec, _, w_out, _ = tensors(params, off, input_dim, hidden, latent)
    g_w1, g_b1, g_heads, g_bheads, g_wdec, g_bdec, g_wout, g_bout = tensors(
        grads, off, input_dim, hidden, latent)
    np.dot(ws.dlogits.T, ws.dech, g_wout)
    column_sum(ws.dlogits, g_bout)
    np.dot(ws.dlogits, w_out, ws.d_dech)
    relu_backward_column_sum(ws.d_dech, ws.dech, g_bdec, 0, hidden)
    np.dot(ws.d_dech.T, ws.z, g_wdec)
    np.dot(ws.d_dech, w_dec, ws.dz)
    reparameterize_kl_backward(ws.heads, eps, ws.std, ws.dz, f32(beta) / f32(batch), ws.dheads)
    np.dot(ws.dheads.T, ws.h, g_heads)
    column_sum(ws.dheads, g_bheads)
    np.dot(ws.dheads, w_heads, ws.dh)
    relu_backward_column_sum(ws.dh, ws.h, g_b1, 0, hidden)
    np.dot(ws.dh.T, xb, g_w1)


_TINY = f32(1.1754944e-38)  # smallest normal float32


@njit(**STEP_JIT)
def adam(params, grads, m, v, lr, beta1, beta2, eps, step):
    """PyTorch's Adam (default, single-tensor form) over the whole flat buffer in one loop.

    Moments that decay below the smallest normal float are flushed to zero: a dead unit's
    first moment otherwise becomes a denormal, and denormal arithmetic is ~100x slower."""
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = np.sqrt(1.0 - beta2**step)
    neg_step_size = f32(-lr / bias_correction1)
    c2 = f32(bias_correction2_sqrt)
    one_minus_b1, b2, one_minus_b2, e = f32(1.0 - beta1), f32(beta2), f32(1.0 - beta2), f32(eps)
    zero = f32(0.0)
    for i in range(params.size):
        g = grads[i]
        mi = m[i] + one_minus_b1 * (g - m[i])  # torch's lerp(m, g, 1 - beta1)
        vi = b2 * v[i] + one_minus_b2 * g * g
        mi = mi if abs(mi) >= _TINY else zero
        vi = vi if vi >= _TINY else zero
        m[i] = mi
        v[i] = vi
        params[i] += neg_step_size * (mi / (np.sqrt(vi) / c2 + e))


@njit(**STEP_JIT)
def batch_loss(bce, kl, beta):
    """Batch means of (reconstruction, KL, reconstruction + beta KL), summed in float64."""
    reconstruction, divergence = 0.0, 0.0
    for i in range(bce.shape[0]):
        reconstruction += np.float64(bce[i])
        divergence += np.float64(kl[i])
    n = bce.shape[0]
    return reconstruction / n, divergence / n, (reconstruction + beta * divergence) / n


@njit(**STEP_JIT)
def train_step(data, indices, eps, params, grads, m, v, off, beta, lr, beta1, beta2,
               adam_eps, step, ws):
    """One whole step; returns the batch's (reconstruction, KL, loss) before the update."""
    gather_rows(data, indices, ws.xb)
    forward(params, off, ws.xb, eps, ws)
    backward(params, grads, off, ws.xb, eps, beta, ws)
    adam(params, grads, m, v, lr, beta1, beta2, adam_eps, step)
    return batch_loss(ws.bce, ws.kl, beta)


@njit(**STEP_JIT)
def gemms_only(params, grads, off, eps, ws):
    """The step's 11 GEMMs alone, same shapes and buffers: the floor the fused kernels and
    Adam are measured against (a profiling aid; the values it leaves are meaningless)."""
    batch, input_dim = ws.xb.shape
    hidden, latent = ws.h.shape[1], eps.shape[1]
    w1, _, w_heads, _, w_dec, _, w_out, _ = tensors(params, off, input_dim, hidden, latent)
    g_w1, _, g_heads, _, g_wdec, _, g_wout, _ = tensors(grads, off, input_dim, hidden, latent)
    np.dot(ws.xb, w1.T, ws.h)
    np.dot(ws.h, w_heads.T, ws.heads)
    np.dot(ws.z, w_dec.T, ws.dech)
    np.dot(ws.dech, w_out.T, ws.logits)
    np.dot(ws.dlogits.T, ws.dech, g_wout)
    np.dot(ws.dlogits, w_out, ws.d_dech)
    np.dot(ws.d_dech.T, ws.z, g_wdec)
    np.dot(ws.d_dech, w_dec, ws.dz)
    np.dot(ws.dheads.T, ws.h, g_heads)
    np.dot(ws.dheads, w_heads, ws.dh)
    np.dot(ws.dh.T, ws.xb, g_w1)
