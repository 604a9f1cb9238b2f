"""The compiled training step: gather, forward, loss, backward and Adam in one call.

GEMMs go through ``gemm.py`` (results written in place into the workspace or straight into
the flat gradient buffer); everything between them is one fused kernel from ``fused.py``. No
Python runs between the stages.

One step, two precisions, chosen by the types of its arguments when it compiles:
- float32: ``params16`` is None and the workspace's bf16 fields are None; every GEMM is
  NumPy's BLAS ``sgemm`` (on its own threads).
- bf16 mixed precision: ``params16`` is a uint16 buffer shaped like ``params`` holding the
  bf16 rounding of every weight, and the workspace holds a bf16 copy of every activation and
  gradient that a GEMM reads. Each copy is written by the kernel that writes the float32 value
  (Adam for the weights, the fused kernels for the rest), so no pass converts anything. Master
  weights, Adam's moments, biases, the loss and every elementwise kernel stay float32; GEMMs
  accumulate in float32.

The ``numba-bf16`` backend runs the step of ``pooled_step.py`` instead, and so does ``numba``
where oneMKL is installed and the CPU is Intel's (``NumbaBackend``): the same kernels and the
same numbers, split across one thread pool. This module, the serial form, is what tests hold
that split to, in both precisions, and what ``numba`` runs elsewhere.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, types
from numba.extending import overload

from .bf16 import store_bf16
from .compile_cache import key_cache_to_sources
from .engines import in_process, packs_b
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
from .gemm import gemm_nn, gemm_nt, gemm_tn

key_cache_to_sources()  # before the cache=True decorators below

f32 = np.float32
STEP_JIT = dict(fastmath=FASTMATH, error_model="numpy", cache=True, nogil=True)

# The GEMM inputs that get a bf16 copy in the mixed-precision step (the weights' copies live
# in params16): every activation or gradient that is an operand of a GEMM.
BF16_OPERANDS = ("xb", "h", "z", "dech", "dlogits", "d_dech", "dheads", "dh")

# Per-share scratch of pooled_step.py (the step in one thread pool): per-share partial sums
# over a block of the batch (each image's BCE and each bias's gradient), and in bf16 a block
# of weight-gradient rows that Adam takes while they are in cache with, as bytes, the
# gradient GEMMs' shared operand in oneMKL's packed layout (pooled_step.weight_rows_update;
# both empty where blocks do not pay: GRAD_BLOCKS_MIN_BATCH).
SHARE_FIELDS = ("bce_parts", "bias_parts", "grad_blocks", "grad_packed")
BIAS_PARTS = 4  # the four biases: pooled_step.HEADS_BIAS, HIDDEN_BIAS, OUT_BIAS, DEC_BIAS
GRAD_BLOCK_ROWS = 128  # rows of a weight gradient per block (pooled_step.weight_rows_update)
# The smallest batch whose bf16 step takes weight gradients in blocks (the scratch above exists
# only from there): below it the packing costs more than the gradients' round trip through
# memory saves. Float32 never gains (sgemm's packed operand is twice the bytes), so it has no
# scratch. Measured per batch on the Intel Xeon with AMX: results/README.md, "numba-bf16 on
# the Intel Xeon".
GRAD_BLOCKS_MIN_BATCH = 64

# Per-batch-size scratch arrays, allocated once (outside any timed region) and reused. The
# ``*16`` and per-share fields are None where the step does not use them. In the bf16 step
# the gradients that only GEMMs read on (d_dech and dh; pooled_step's dlogits) are final in
# their ``*16`` copies alone: their float32 arrays keep the GEMM's output before the
# kernel (fused.py: bf16.store_operand).
Workspace = namedtuple(
    "Workspace",
    "xb h heads std z dech logits dlogits d_dech dz dheads dh bce kl "
    + " ".join(name + "16" for name in BF16_OPERANDS)
    + " "
    + " ".join(SHARE_FIELDS),
    defaults=(None,) * (len(BF16_OPERANDS) + len(SHARE_FIELDS)),
)


def make_workspace(
    batch: int,
    input_dim: int,
    hidden: int,
    latent: int,
    bf16: bool = False,
    shares: int | None = None,
) -> Workspace:
    """``bf16``: with the bf16 copies of the GEMM operands; ``shares``: with the per-share
    scratch of pooled_step.py for that many shares. pooled_step reads every GEMM operand
    from its ``*16`` field, so in float32 with ``shares`` each of those is the float32 array
    itself (no copy: the stores into it compile to nothing, bf16.store_bf16)."""

    def e(*shape):
        return np.zeros(shape, dtype=np.float32)

    ws = Workspace(
        xb=e(batch, input_dim),
        h=e(batch, hidden),
        heads=e(batch, 2 * latent),
        std=e(batch, latent),
        z=e(batch, latent),
        dech=e(batch, hidden),
        logits=e(batch, input_dim),
        dlogits=e(batch, input_dim),
        d_dech=e(batch, hidden),
        dz=e(batch, latent),
        dheads=e(batch, 2 * latent),
        dh=e(batch, hidden),
        bce=e(batch),
        kl=e(batch),
    )
    if bf16:
        ws = ws._replace(
            **{name + "16": np.zeros(getattr(ws, name).shape, np.uint16) for name in BF16_OPERANDS}
        )
    elif shares:
        ws = ws._replace(**{name + "16": getattr(ws, name) for name in BF16_OPERANDS})
    if shares:
        widest = max(input_dim, hidden, 2 * latent)
        # Blocks pay only where the engine packs their shared operand once (engines.packs_b).
        blocks = bf16 and batch >= GRAD_BLOCKS_MIN_BATCH and packs_b(in_process("bf16"))
        packed = packed_bytes(batch, input_dim, hidden, latent) if blocks else 0
        ws = ws._replace(
            bce_parts=e(shares, batch),
            bias_parts=e(shares, BIAS_PARTS, widest),
            grad_blocks=e(shares, GRAD_BLOCK_ROWS * widest if blocks else 0),
            grad_packed=np.zeros((shares, packed), np.uint8),
        )
    return ws


def packed_bytes(batch: int, input_dim: int, hidden: int, latent: int) -> int:
    """What oneMKL asks for to hold any of the weight gradients' B operands (a batch of
    activations: the input, the hidden and decoder layers, the latent code) packed for a
    block of GRAD_BLOCK_ROWS rows."""
    from . import onemkl

    return max(
        onemkl.packed_b_bytes("bf16", GRAD_BLOCK_ROWS, width, batch)
        for width in (input_dim, hidden, latent)
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


def weights16(params16, off, input_dim, hidden, latent):
    """The four weight matrices' bf16 copies (views of ``params16``), or four Nones."""
    return None, None, None, None


@overload(weights16, inline="always")
def _weights16(params16, off, input_dim, hidden, latent):
    if isinstance(params16, types.NoneType):
        return lambda params16, off, input_dim, hidden, latent: (None, None, None, None)

    def views(params16, off, input_dim, hidden, latent):
        w1, _, w_heads, _, w_dec, _, w_out, _ = tensors(params16, off, input_dim, hidden, latent)
        return w1, w_heads, w_dec, w_out

    return views


@njit(**STEP_JIT)
def forward(params, params16, off, xb, eps, ws):
    """Encoder, reparameterization + KL, decoder, and the fused sigmoid-BCE (which also
    leaves d loss / d logits in ws.dlogits). ``xb`` and ``ws.xb16`` hold the batch."""
    batch, input_dim = xb.shape
    hidden, latent = ws.h.shape[1], eps.shape[1]
    w1, b1, w_heads, b_heads, w_dec, b_dec, w_out, b_out = tensors(
        params, off, input_dim, hidden, latent
    )
    w1_16, w_heads16, w_dec16, w_out16 = weights16(params16, off, input_dim, hidden, latent)
    gemm_nt(xb, ws.xb16, w1, w1_16, ws.h)
    bias_relu(ws.h, b1, 0, batch, ws.h16)
    gemm_nt(ws.h, ws.h16, w_heads, w_heads16, ws.heads)
    bias_add(ws.heads, b_heads, 0, batch)
    reparameterize_kl(ws.heads, eps, ws.z, ws.std, ws.kl, ws.z16)
    gemm_nt(ws.z, ws.z16, w_dec, w_dec16, ws.dech)
    bias_relu(ws.dech, b_dec, 0, batch, ws.dech16)
    gemm_nt(ws.dech, ws.dech16, w_out, w_out16, ws.logits)
    bias_add(ws.logits, b_out, 0, batch)
    sigmoid_bce(ws.logits, xb, f32(1.0) / f32(batch), ws.bce, ws.dlogits, 0, batch, ws.dlogits16)


@njit(**STEP_JIT)
def backward(params, params16, grads, off, xb, eps, beta, ws):
    """Every parameter gradient of the batch-mean loss, written into the flat ``grads``."""
    batch, input_dim = xb.shape
    hidden, latent = ws.h.shape[1], eps.shape[1]
    _, _, w_heads, _, w_dec, _, w_out, _ = tensors(params, off, input_dim, hidden, latent)
    _, w_heads16, w_dec16, w_out16 = weights16(params16, off, input_dim, hidden, latent)
    g_w1, g_b1, g_heads, g_bheads, g_wdec, g_bdec, g_wout, g_bout = tensors(
        grads, off, input_dim, hidden, latent
    )
    gemm_tn(ws.dlogits, ws.dlogits16, ws.dech, ws.dech16, g_wout)
    column_sum(ws.dlogits, g_bout)
    gemm_nn(ws.dlogits, ws.dlogits16, w_out, w_out16, ws.d_dech)
    relu_backward_column_sum(ws.d_dech, ws.dech, g_bdec, 0, hidden, ws.d_dech16)
    gemm_tn(ws.d_dech, ws.d_dech16, ws.z, ws.z16, g_wdec)
    gemm_nn(ws.d_dech, ws.d_dech16, w_dec, w_dec16, ws.dz)
    reparameterize_kl_backward(
        ws.heads, eps, ws.std, ws.dz, f32(beta) / f32(batch), ws.dheads, ws.dheads16
    )
    gemm_tn(ws.dheads, ws.dheads16, ws.h, ws.h16, g_heads)
    column_sum(ws.dheads, g_bheads)
    gemm_nn(ws.dheads, ws.dheads16, w_heads, w_heads16, ws.dh)
    relu_backward_column_sum(ws.dh, ws.h, g_b1, 0, hidden, ws.dh16)
    gemm_tn(ws.dh, ws.dh16, xb, ws.xb16, g_w1)


_TINY = f32(1.1754944e-38)  # smallest normal float32


@njit(**STEP_JIT, inline="always")
def adam_constants(lr, beta1, beta2, eps, step):
    """The per-step scalars of PyTorch's Adam (torch/optim/adam.py, _single_tensor_adam):
    -lr / bias_correction1, sqrt(bias_correction2), 1 - beta1, beta2, 1 - beta2, eps."""
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = np.sqrt(1.0 - beta2**step)
    return (
        f32(-lr / bias_correction1),
        f32(bias_correction2_sqrt),
        f32(1.0 - beta1),
        f32(beta2),
        f32(1.0 - beta2),
        f32(eps),
    )


@njit(**STEP_JIT, inline="always")
def adam_update(params, grads, m, v, params16, constants):
    """One Adam update of 1-D views of one length (the whole flat buffer, or a slice of it);
    with ``params16`` (not None) it also writes each updated weight's bf16 copy.

    Moments that decay below the smallest normal float are flushed to zero: a dead unit's
    first moment otherwise becomes a denormal, and denormal arithmetic is ~100x slower."""
    neg_step_size, c2, one_minus_b1, b2, one_minus_b2, e = constants
    zero = f32(0.0)
    for i in range(params.size):
        g = grads[i]
        mi = m[i] + one_minus_b1 * (g - m[i])  # torch's lerp(m, g, 1 - beta1)
        vi = b2 * v[i] + one_minus_b2 * g * g
        mi = mi if abs(mi) >= _TINY else zero
        vi = vi if vi >= _TINY else zero
        m[i] = mi
        v[i] = vi
        p = params[i] + neg_step_size * (mi / (np.sqrt(vi) / c2 + e))
        params[i] = p
        store_bf16(params16, i, p)


@njit(**STEP_JIT)
def adam(params, grads, m, v, lr, beta1, beta2, eps, step, params16):
    """PyTorch's Adam (default, single-tensor form) over the whole flat buffer in one loop;
    with ``params16`` (not None) it also writes each updated weight's bf16 copy."""
    adam_update(params, grads, m, v, params16, adam_constants(lr, beta1, beta2, eps, step))


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
def gather(data, indices, ws):
    """The batch's rows (and their bf16 copies) into the workspace."""
    gather_rows(data, indices, ws.xb, ws.xb16)


# Adam is a pass of its own here (pooled_step fuses it into the backward pass).
ADAM_FUSED = False


@njit(**STEP_JIT)
def train_step(
    data,
    indices,
    eps,
    params,
    params16,
    grads,
    m,
    v,
    off,
    beta,
    lr,
    beta1,
    beta2,
    adam_eps,
    step,
    ws,
):
    """One whole step; returns the batch's (reconstruction, KL, loss) before the update."""
    gather(data, indices, ws)
    forward(params, params16, off, ws.xb, eps, ws)
    backward(params, params16, grads, off, ws.xb, eps, beta, ws)
    adam(params, grads, m, v, lr, beta1, beta2, adam_eps, step, params16)
    return batch_loss(ws.bce, ws.kl, beta)


@njit(**STEP_JIT)
def gemms_only(params, params16, grads, off, eps, ws):
    """The step's 11 GEMMs alone, same shapes, buffers and precision: the floor the fused
    kernels and Adam are measured against (a profiling aid; the values it leaves are
    meaningless)."""
    batch, input_dim = ws.xb.shape
    hidden, latent = ws.h.shape[1], eps.shape[1]
    w1, _, w_heads, _, w_dec, _, w_out, _ = tensors(params, off, input_dim, hidden, latent)
    w1_16, w_heads16, w_dec16, w_out16 = weights16(params16, off, input_dim, hidden, latent)
    g_w1, _, g_heads, _, g_wdec, _, g_wout, _ = tensors(grads, off, input_dim, hidden, latent)
    gemm_nt(ws.xb, ws.xb16, w1, w1_16, ws.h)
    gemm_nt(ws.h, ws.h16, w_heads, w_heads16, ws.heads)
    gemm_nt(ws.z, ws.z16, w_dec, w_dec16, ws.dech)
    gemm_nt(ws.dech, ws.dech16, w_out, w_out16, ws.logits)
    gemm_tn(ws.dlogits, ws.dlogits16, ws.dech, ws.dech16, g_wout)
    gemm_nn(ws.dlogits, ws.dlogits16, w_out, w_out16, ws.d_dech)
    gemm_tn(ws.d_dech, ws.d_dech16, ws.z, ws.z16, g_wdec)
    gemm_nn(ws.d_dech, ws.d_dech16, w_dec, w_dec16, ws.dz)
    gemm_tn(ws.dheads, ws.dheads16, ws.h, ws.h16, g_heads)
    gemm_nn(ws.dheads, ws.dheads16, w_heads, w_heads16, ws.dh)
    gemm_tn(ws.dh, ws.dh16, ws.xb, ws.xb16, g_w1)
