"""The fused elementwise kernels of the Numba backend: each makes one pass over its memory.

All work on float32 (B, n) row-major arrays in place or into given outputs, and run on the
calling thread: the step partitions rows (or columns) across threads itself.

A kernel whose result is the input of a GEMM also takes ``out16``: None in the float32 step
(``bf16.store_bf16`` then compiles to nothing: it is chosen by type), or a uint16 array of
the result's shape in the mixed-precision step, which then gets the result's bf16 rounding
(``bf16.to_bf16``) in the same pass, while the value is in a register: no separate conversion
pass over memory. A gradient that only a GEMM reads afterwards is stored in the precision
that GEMM reads, and only there (``bf16.store_operand``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .bf16 import row_of, store_bf16, store_operand
from .fastmath import exp_nonpositive, log1p_unit

f32 = np.float32
_ZERO, _ONE, _HALF = f32(0.0), f32(1.0), f32(0.5)

# Allow FMA contraction and reassociation of sums (what vectorizes a reduction); keep NaN and
# inf semantics (no 'nnan'/'ninf') so a NaN is still seen and reported.
FASTMATH = {"contract", "reassoc", "nsz"}
# Every kernel is compiled with error_model="numpy": Python's model checks each division for
# zero and raises, and that branch alone stops LLVM from vectorizing the loop (measured 8x).
JIT = dict(fastmath=FASTMATH, error_model="numpy", inline="always")


@njit(**JIT)
def bias_relu(a, bias, r0, r1, out16=None):
    """a[r] = max(a[r] + bias, 0) for rows r0..r1: the epilogue of a hidden-layer GEMM."""
    n = a.shape[1]
    for r in range(r0, r1):
        row = a[r]
        for j in range(n):
            value = max(row[j] + bias[j], _ZERO)
            row[j] = value
            store_bf16(out16, (r, j), value)


@njit(**JIT)
def bias_add(a, bias, r0, r1):
    n = a.shape[1]
    for r in range(r0, r1):
        row = a[r]
        for j in range(n):
            row[j] += bias[j]


@njit(**JIT)
def bce_with_logits(l, t, inv_batch):
    """BCE-with-logits of one pixel and its batch-mean gradient, (sigmoid(l) - t) / B. Stable
    for any |l|: BCE = max(l, 0) - l t + log1p(e), sigmoid = 1 / (1 + e) or e / (1 + e),
    e = exp(-|l|)."""
    e = exp_nonpositive(-abs(l))
    inv = _ONE / (_ONE + e)
    s = inv if l >= _ZERO else e * inv
    return max(l, _ZERO) - l * t + log1p_unit(e), (s - t) * inv_batch


@njit(**JIT)
def sigmoid_bce(logits, x, inv_batch, bce, dlogits, r0, r1, out16=None):
    """Per image: bce[r] = sum_j BCE-with-logits(l, x), and dlogits = the gradient of the
    batch-mean loss, in the same pass."""
    n = logits.shape[1]
    for r in range(r0, r1):
        lrow, xrow, grow = logits[r], x[r], dlogits[r]
        total = _ZERO
        for j in range(n):
            term, g = bce_with_logits(lrow[j], xrow[j], inv_batch)
            total += term
            grow[j] = g
            store_bf16(out16, (r, j), g)
        bce[r] = total


@njit(**JIT)
def column_sum(a, out):
    """out = sum over rows of a (a bias gradient); rows outer so the inner loop vectorizes."""
    out[:] = _ZERO
    for r in range(a.shape[0]):
        row = a[r]
        for j in range(a.shape[1]):
            out[j] += row[j]


@njit(**JIT)
def relu_backward_column_sum(grad, act, bias_grad, c0, c1, out16=None):
    """For columns c0..c1: grad *= (act > 0) (ReLU's derivative, from its output) and
    bias_grad = column sums of the result, in the same pass. With bf16 ``out16`` the result
    goes to the copy alone (``bf16.store_operand``: the bf16 step reads it there only)."""
    # Views from c0 and a loop from 0: an index from range(c0, c1) with c0 a runtime value
    # may be negative as far as Numba knows, so every access would carry a wraparound
    # check, which stops LLVM from vectorizing the loop (measured on an Intel Xeon with
    # AVX-512: this kernel 13.9 -> 11.4 us at 128 x 512; an Adam loop so written, 6x).
    sums = bias_grad[c0:c1]
    sums[:] = _ZERO
    for r in range(grad.shape[0]):
        g, a, copies = grad[r, c0:c1], act[r, c0:c1], row_of(out16, r, c0, c1)
        for j in range(c1 - c0):
            v = g[j] if a[j] > _ZERO else _ZERO
            sums[j] += v
            store_operand(g, copies, j, v)


@njit(**JIT)
def reparameterize_kl(heads, eps, z, std, kl, out16=None):
    """heads = [mu | logvar] (B, 2Z). z = mu + exp(logvar / 2) eps; std kept for backward;
    kl[r] = -1/2 sum(1 + logvar - mu^2 - exp(logvar))."""
    latent = eps.shape[1]
    for r in range(heads.shape[0]):
        total = _ZERO
        for j in range(latent):
            mu, lv = heads[r, j], heads[r, latent + j]
            s = np.exp(_HALF * lv)
            std[r, j] = s
            code = mu + s * eps[r, j]
            z[r, j] = code
            store_bf16(out16, (r, j), code)
            total += _ONE + lv - mu * mu - s * s
        kl[r] = -_HALF * total


@njit(**JIT)
def reparameterize_kl_backward(heads, eps, std, dz, beta_over_batch, dheads, out16=None):
    """d loss / d [mu | logvar] from the decoder's dz and the KL term, in one pass:
    dmu = dz + beta/B mu;  dlogvar = dz eps std / 2 + beta/B (exp(logvar) - 1) / 2."""
    latent = eps.shape[1]
    for r in range(heads.shape[0]):
        for j in range(latent):
            mu, s = heads[r, j], std[r, j]
            dmu = dz[r, j] + beta_over_batch * mu
            dlogvar = _HALF * (dz[r, j] * eps[r, j] * s + beta_over_batch * (s * s - _ONE))
            dheads[r, j] = dmu
            dheads[r, latent + j] = dlogvar
            store_bf16(out16, (r, j), dmu)
            store_bf16(out16, (r, latent + j), dlogvar)


@njit(**JIT)
def gather_rows(data, indices, out, out16=None):
    for r in range(indices.shape[0]):
        row = data[indices[r]]
        for j in range(out.shape[1]):
            out[r, j] = row[j]
            store_bf16(out16, (r, j), row[j])
