"""The training step in one thread pool: Numba's workers split every stage, and each calls
its GEMM engine sequentially (oneMKL set to one thread; oneDNN, on GNU OpenMP, inside
Numba's OpenMP region) on its share. It runs in both precisions, chosen by type when it
compiles (``gemm.gemm_block``; the engine per precision by ``engines.py``): with bf16 GEMM
operands (``numba-bf16``: uint16 copies in ``params16`` and the workspace's ``*16`` fields,
oneMKL's ``cblas_gemm_bf16bf16f32`` or oneDNN's ``dnnl_gemm_bf16bf16f32``) and with float32
ones (``numba`` where oneMKL is installed:
``params16`` is ``params`` itself and each ``*16`` field its float32 array, so the GEMMs are
``cblas_sgemm`` and the copies' stores compile to nothing, ``bf16.store_bf16``).

Why not ``step.py``'s structure (one thread runs the kernels, the BLAS threads each GEMM):
at the step's sizes a GEMM takes tens to hundreds of microseconds, so the BLAS's fork-join
per call, the serial fused kernels between the GEMMs and the serial Adam were most of the
step. Here each stage is one parallel region over ``T`` shares, and a share does everything
that stage needs of its part of the data. Measured on a 2-core Intel Xeon with AMX, z = 20,
the two steps interleaved in one process (50-step windows, 9 rounds, MNIST batches), bf16:
batch 128, ``step.py`` 5.78 ms and this one 4.87 ms (1.19x; per round 1.10-1.30x); batch
1024, 22.2 and 20.6 ms (per round 1.07-1.23x). Float32: see ``onemkl.py`` for its GEMMs.

How the work is split, and why:
- Large GEMMs (the 784 x 512 layers) by output columns: each share multiplies the whole batch
  by its rows of the weight matrix. oneMKL packs the B operand in every call, so splitting the
  batch rows instead would pack the whole weight matrix twice (measured, 128 x 784 x 512 bf16:
  one thread 332 us, rows split over two 270 us, columns split 220 us). The elementwise
  epilogue of a column share is the same share's (its bias, ReLU, BCE terms, column sums), so
  a bias gradient of those columns is complete in its share.
- The small GEMMs about the latent code (width 2z) by batch rows, with the row-local kernels
  around them (reparameterization, KL and their backward); bias gradients over rows are
  per-share partial sums, added up when the weights are updated.
- Weight gradients by output rows (a column slice of the A operand of the TN GEMM, through its
  leading dimension), each followed at once by Adam on that slice; in bf16 (from batch 64,
  step.GRAD_BLOCKS_MIN_BATCH) a block of rows at a time into per-share scratch, so that Adam
  takes it from cache and the gradient never goes to memory (``weight_rows_update``: the
  training step then leaves the weights' gradients out of ``grads``; ``backward`` fills
  them). Adam on the biases is the first share's.

Every region ends in a barrier (the end of a ``prange``), so a stage reads only what finished.
The results are the same numbers as ``step.py``'s up to summation order (the gate holds both
to the same tolerances of their precision; tests compare the two steps in each). Functions
take the same arguments as ``step.py``'s, plus the workspace's per-share scratch
(``make_workspace(..., shares=T)``).

Pitfalls met writing it (Numba 0.68): an inner loop over ``range(i0, i1)`` with a runtime
``i0`` keeps a wraparound check per access and does not vectorize (6x on Adam), so loops run
over views; and a prange body's own loop locals were once miscompiled, so every body only
calls functions.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bf16 import store_bf16, store_operand
from .compile_cache import key_cache_to_sources
from .fused import (
    FASTMATH,
    bce_with_logits,
    bias_add,
    bias_relu,
    column_sum,
    gather_rows,
    relu_backward_column_sum,
    reparameterize_kl,
    reparameterize_kl_backward,
)
from .gemm import gemm_block, gemm_packed_b, pack_b
from .onemkl import NO_TRANS, TRANS
from .step import adam_constants, adam_update, batch_loss, tensors, weights16

key_cache_to_sources()  # before the cache=True decorators below

f32 = np.float32
_ZERO = f32(0.0)
POOL_JIT = dict(fastmath=FASTMATH, error_model="numpy", cache=True, nogil=True)
# A share's work is a function its parallel region calls, not one inlined into it: Numba's
# parfor passes over the whole inlined step were most of a cold compile, and the step runs
# as fast either way (results/README.md, "The pooled step's compile time").
SHARE_JIT = dict(fastmath=FASTMATH, error_model="numpy")

# Adam is part of the weight-gradient region here, not a pass of its own: the profile's
# "adam" is the step less its forward, backward and gather (NumbaBackend.stage_times).
ADAM_FUSED = True


@njit(inline="always")
def share(t, shares, n):
    """The half-open range [lo, hi) of ``n`` items that share ``t`` of ``shares`` owns."""
    return t * n // shares, (t + 1) * n // shares


@njit(inline="always")
def output_block(t, shares, m, n):
    """The block rows [r0, r1) x columns [c0, c1) of an m x n GEMM output that share ``t`` of
    ``shares`` computes: a slice of the columns when m < n, else of the rows. oneMKL packs
    the operand it does not split in every call, so each share re-packs the other one: the
    split is along the larger dimension, which duplicates the smaller operand: the cheaper
    re-pack."""
    if m < n:
        c0, c1 = share(t, shares, n)
        return 0, m, c0, c1
    r0, r1 = share(t, shares, m)
    return r0, r1, 0, n


# -- GEMMs on a block of the output: element offsets and leading dimensions of row-major
# operands (every operand here is C-contiguous), in the operands' precision ------------------


@njit(**SHARE_JIT)
def nt_block(a16, b16, c, r0, r1, c0, c1):
    """c[r0:r1, c0:c1] = a[r0:r1] @ b[c0:c1].T (a: m x k, b: n x k, c: m x n)."""
    k = a16.shape[1]
    if r1 > r0 and c1 > c0:
        gemm_block(
            NO_TRANS,
            TRANS,
            r1 - r0,
            c1 - c0,
            k,
            a16,
            r0 * k,
            k,
            b16,
            c0 * k,
            k,
            c,
            r0 * c.shape[1] + c0,
            c.shape[1],
        )


@njit(**SHARE_JIT)
def nn_block(a16, b16, c, r0, r1, c0, c1):
    """c[r0:r1, c0:c1] = a[r0:r1] @ b[:, c0:c1] (a: m x k, b: k x n, c: m x n)."""
    k = a16.shape[1]
    if r1 > r0 and c1 > c0:
        gemm_block(
            NO_TRANS,
            NO_TRANS,
            r1 - r0,
            c1 - c0,
            k,
            a16,
            r0 * k,
            k,
            b16,
            c0,
            b16.shape[1],
            c,
            r0 * c.shape[1] + c0,
            c.shape[1],
        )


@njit(**SHARE_JIT)
def tn_rows(a16, b16, c, c0, c1):
    """c[c0:c1] = a[:, c0:c1].T @ b (a: k x m, b: k x n, c: m x n): a weight gradient's rows."""
    k, m = a16.shape
    n = b16.shape[1]
    if c1 > c0 and k > 0:
        gemm_block(TRANS, NO_TRANS, c1 - c0, n, k, a16, c0, m, b16, 0, n, c, c0 * n, n)


# -- elementwise kernels on a block --------------------------------------------------------
# A share's per-column sums (bias gradients) and per-row sums (each image's BCE) are partials
# over its block, zero outside it, so that adding them up over shares is right for either
# split.


@njit(**SHARE_JIT)
def bias_relu_block(a, bias, out16, r0, r1, c0, c1):
    """a[r0:r1, c0:c1] = max(a + bias, 0), with its bf16 copy (none in float32)."""
    b = bias[c0:c1]
    for r in range(r0, r1):
        values, copies = a[r, c0:c1], out16[r, c0:c1]
        for j in range(c1 - c0):
            value = max(values[j] + b[j], _ZERO)
            values[j] = value
            store_bf16(copies, j, value)


@njit(**SHARE_JIT)
def bias_sigmoid_bce_block(
    logits, bias, x, inv_batch, dlogits, out16, bce_part, bias_part, r0, r1, c0, c1
):
    """fused.sigmoid_bce on a block, with the output bias added first (logits += bias):
    the batch-mean loss's gradient in dlogits (float32) or in its bf16 copy alone (bf16:
    the backward GEMMs read that copy only, bf16.store_operand), bce_part[r] the block's
    part of image r's BCE, bias_part[c] its part of the gradient's column sums (the output
    bias's gradient)."""
    bce_part[:] = _ZERO
    bias_part[:] = _ZERO
    b, sums = bias[c0:c1], bias_part[c0:c1]
    for r in range(r0, r1):
        lrow, xrow, grow, copies = logits[r, c0:c1], x[r, c0:c1], dlogits[r, c0:c1], out16[r, c0:c1]
        total = _ZERO
        for j in range(c1 - c0):
            l = lrow[j] + b[j]
            lrow[j] = l
            term, g = bce_with_logits(l, xrow[j], inv_batch)
            total += term
            store_operand(grow, copies, j, g)
            sums[j] += g
        bce_part[r] = total


@njit(**SHARE_JIT)
def relu_backward_block(grad, act, out16, bias_part, r0, r1, c0, c1):
    """fused.relu_backward_column_sum on a block; bias_part its part of the column sums."""
    bias_part[:] = _ZERO
    relu_backward_column_sum(grad[r0:r1], act[r0:r1], bias_part, c0, c1, out16[r0:r1])


@njit(**SHARE_JIT)
def add_up_shares(parts, out):
    """out = the sum over shares (rows of ``parts``) of each column."""
    out[:] = _ZERO
    for t in range(parts.shape[0]):
        part = parts[t, : out.shape[0]]
        for j in range(out.shape[0]):
            out[j] += part[j]


# Rows of ws.bias_parts[t]: which bias each share's partial column sums are of.
HEADS_BIAS, HIDDEN_BIAS, OUT_BIAS, DEC_BIAS = 0, 1, 2, 3


# -- the stages ------------------------------------------------------------------------------


@njit(**SHARE_JIT)
def encoder_share(ws, w1_16, b1, t, shares):
    r0, r1, c0, c1 = output_block(t, shares, ws.h.shape[0], ws.h.shape[1])
    nt_block(ws.xb16, w1_16, ws.h, r0, r1, c0, c1)
    bias_relu_block(ws.h, b1, ws.h16, r0, r1, c0, c1)


@njit(**SHARE_JIT)
def latent_share(ws, eps, w_heads16, b_heads, w_dec16, b_dec, t, shares):
    # Rows: these GEMMs are small (width 2z) and what is between them is row-local.
    r0, r1 = share(t, shares, ws.h.shape[0])
    nt_block(ws.h16, w_heads16, ws.heads, r0, r1, 0, ws.heads.shape[1])
    bias_add(ws.heads, b_heads, r0, r1)
    reparameterize_kl(
        ws.heads[r0:r1], eps[r0:r1], ws.z[r0:r1], ws.std[r0:r1], ws.kl[r0:r1], ws.z16[r0:r1]
    )
    nt_block(ws.z16, w_dec16, ws.dech, r0, r1, 0, ws.dech.shape[1])
    bias_relu(ws.dech, b_dec, r0, r1, ws.dech16)


@njit(**SHARE_JIT)
def decoder_share(ws, w_out16, b_out, inv_batch, t, shares):
    r0, r1, c0, c1 = output_block(t, shares, ws.logits.shape[0], ws.logits.shape[1])
    nt_block(ws.dech16, w_out16, ws.logits, r0, r1, c0, c1)
    bias_sigmoid_bce_block(
        ws.logits,
        b_out,
        ws.xb,
        inv_batch,
        ws.dlogits,
        ws.dlogits16,
        ws.bce_parts[t],
        ws.bias_parts[t, OUT_BIAS, : ws.logits.shape[1]],
        r0,
        r1,
        c0,
        c1,
    )


@njit(**POOL_JIT, parallel=True)
def forward(params, params16, off, xb, eps, ws):
    """step.forward in three parallel regions (``xb`` and ``ws.xb16`` hold the batch); also
    leaves the shares' parts of the output bias's gradient in ``ws.bias_parts``."""
    batch, input_dim = xb.shape
    hidden, latent = ws.h.shape[1], eps.shape[1]
    shares = ws.bce_parts.shape[0]
    _, b1, _, b_heads, _, b_dec, _, b_out = tensors(params, off, input_dim, hidden, latent)
    w1_16, w_heads16, w_dec16, w_out16 = weights16(params16, off, input_dim, hidden, latent)
    inv_batch = f32(1.0) / f32(batch)
    for t in prange(shares):
        encoder_share(ws, w1_16, b1, t, shares)
    for t in prange(shares):
        latent_share(ws, eps, w_heads16, b_heads, w_dec16, b_dec, t, shares)
    for t in prange(shares):
        decoder_share(ws, w_out16, b_out, inv_batch, t, shares)
    add_up_shares(ws.bce_parts, ws.bce)


@njit(**SHARE_JIT)
def decoder_backward_share(ws, w_out16, t, shares):
    r0, r1, c0, c1 = output_block(t, shares, ws.d_dech.shape[0], ws.d_dech.shape[1])
    nn_block(ws.dlogits16, w_out16, ws.d_dech, r0, r1, c0, c1)
    relu_backward_block(
        ws.d_dech,
        ws.dech,
        ws.d_dech16,
        ws.bias_parts[t, DEC_BIAS, : ws.d_dech.shape[1]],
        r0,
        r1,
        c0,
        c1,
    )


@njit(**SHARE_JIT)
def latent_backward_share(ws, eps, w_dec16, w_heads16, beta_over_batch, t, shares):
    r0, r1 = share(t, shares, ws.h.shape[0])
    nn_block(ws.d_dech16, w_dec16, ws.dz, r0, r1, 0, ws.dz.shape[1])
    reparameterize_kl_backward(
        ws.heads[r0:r1],
        eps[r0:r1],
        ws.std[r0:r1],
        ws.dz[r0:r1],
        beta_over_batch,
        ws.dheads[r0:r1],
        ws.dheads16[r0:r1],
    )
    column_sum(ws.dheads[r0:r1], ws.bias_parts[t, HEADS_BIAS, : ws.dheads.shape[1]])
    nn_block(ws.dheads16, w_heads16, ws.dh, r0, r1, 0, ws.dh.shape[1])
    relu_backward_block(
        ws.dh,
        ws.h,
        ws.dh16,
        ws.bias_parts[t, HIDDEN_BIAS, : ws.dh.shape[1]],
        r0,
        r1,
        0,
        ws.dh.shape[1],
    )


@njit(**SHARE_JIT)
def weight_rows_update(
    grad16,
    rows_of,
    g_weight,
    flat_offset,
    c0,
    c1,
    params,
    grads,
    m,
    v,
    params16,
    constants,
    update,
    block,
    packed,
):
    """The rows c0..c1 of one weight's gradient, then (``update``) Adam on exactly them.
    Split by rows, the share re-packs ``rows_of`` (batch x the weight's width), a cost both
    splits of the larger weights share at these sizes, and a share's rows are contiguous in
    the flat buffer for its Adam.

    With a non-empty ``block`` (scratch of whole rows; ``update`` only), the gradient goes
    there a block of rows at a time and Adam takes each block while it is in cache: the
    gradient never reaches ``grads`` or memory, a write and a read of 4 bytes per weight
    saved. Every block's GEMM multiplies by the same operand, ``rows_of``, so the share packs
    it into oneMKL's internal layout once (``packed``, gemm.pack_b) and each block's GEMM
    reads it from there: a plain GEMM per block re-packed it every time, which stopped paying
    at batch 256. Packed once, blocks pay at every batch from step.GRAD_BLOCKS_MIN_BATCH
    (results/README.md, "numba-bf16 on the Intel Xeon"). The numbers are the plain GEMM's, bit
    for bit (tests/kernels/numba_cpu/test_pooled_step.py holds the blocked update to the
    serial step's)."""
    width = g_weight.shape[1]
    if block.size >= width:
        rows = block.size // width
        batch, m_all = grad16.shape
        if c1 > c0:
            pack_b(rows, rows_of, packed)
        for b0 in range(c0, c1, rows):
            b1 = min(b0 + rows, c1)
            gemm_packed_b(TRANS, b1 - b0, width, batch, grad16, b0, m_all, rows_of, packed, block)
            i0, i1 = flat_offset + b0 * width, flat_offset + b1 * width
            adam_update(
                params[i0:i1], block[: i1 - i0], m[i0:i1], v[i0:i1], params16[i0:i1], constants
            )
        return
    tn_rows(grad16, rows_of, g_weight, c0, c1)
    if update:
        i0, i1 = flat_offset + c0 * width, flat_offset + c1 * width
        adam_update(params[i0:i1], grads[i0:i1], m[i0:i1], v[i0:i1], params16[i0:i1], constants)


@njit(**SHARE_JIT)
def biases_update(ws, off, grads_views, params, grads, m, v, params16, constants, update):
    """The bias gradients added up over shares, then (``update``) Adam on the four biases."""
    _, g_b1, _, g_bheads, _, g_bdec, _, g_bout = grads_views
    add_up_shares(ws.bias_parts[:, HEADS_BIAS], g_bheads)
    add_up_shares(ws.bias_parts[:, HIDDEN_BIAS], g_b1)
    add_up_shares(ws.bias_parts[:, OUT_BIAS], g_bout)
    add_up_shares(ws.bias_parts[:, DEC_BIAS], g_bdec)
    if update:
        for bias, slot in ((g_b1, 1), (g_bheads, 3), (g_bdec, 5), (g_bout, 7)):
            i0, i1 = off[slot], off[slot] + bias.shape[0]
            adam_update(params[i0:i1], grads[i0:i1], m[i0:i1], v[i0:i1], params16[i0:i1], constants)


@njit(**POOL_JIT, parallel=True)
def backward_update(params, params16, grads, m, v, off, eps, beta, constants, update, ws):
    """step.backward in three parallel regions; with ``update``, Adam (``constants`` from
    step.adam_constants) on each slice of the parameters as soon as its gradient is done."""
    batch, input_dim = ws.xb.shape
    hidden, latent = ws.h.shape[1], eps.shape[1]
    shares = ws.bce_parts.shape[0]
    _, w_heads16, w_dec16, w_out16 = weights16(params16, off, input_dim, hidden, latent)
    g = tensors(grads, off, input_dim, hidden, latent)
    g_w1, _, g_heads, _, g_wdec, _, g_wout, _ = g
    beta_over_batch = f32(beta) / f32(batch)
    # Blocks of gradient rows for Adam where the workspace holds their scratch (bf16 from
    # step.GRAD_BLOCKS_MIN_BATCH, make_workspace), and only when updating.
    blocked = update and ws.grad_blocks.shape[1] > 0
    for t in prange(shares):
        decoder_backward_share(ws, w_out16, t, shares)
    for t in prange(shares):
        latent_backward_share(ws, eps, w_dec16, w_heads16, beta_over_batch, t, shares)
    for t in prange(shares):
        block = ws.grad_blocks[t] if blocked else ws.grad_blocks[t, :0]
        packed = ws.grad_packed[t]
        c0, c1 = share(t, shares, input_dim)
        weight_rows_update(
            ws.dlogits16,
            ws.dech16,
            g_wout,
            off[6],
            c0,
            c1,
            params,
            grads,
            m,
            v,
            params16,
            constants,
            update,
            block,
            packed,
        )
        c0, c1 = share(t, shares, hidden)
        weight_rows_update(
            ws.dh16,
            ws.xb16,
            g_w1,
            off[0],
            c0,
            c1,
            params,
            grads,
            m,
            v,
            params16,
            constants,
            update,
            block,
            packed,
        )
        weight_rows_update(
            ws.d_dech16,
            ws.z16,
            g_wdec,
            off[4],
            c0,
            c1,
            params,
            grads,
            m,
            v,
            params16,
            constants,
            update,
            block,
            packed,
        )
        c0, c1 = share(t, shares, 2 * latent)
        weight_rows_update(
            ws.dheads16,
            ws.h16,
            g_heads,
            off[2],
            c0,
            c1,
            params,
            grads,
            m,
            v,
            params16,
            constants,
            update,
            block,
            packed,
        )
        if t == 0:
            biases_update(ws, off, g, params, grads, m, v, params16, constants, update)


@njit(**POOL_JIT)
def backward(params, params16, grads, off, xb, eps, beta, ws):
    """Every parameter gradient (step.backward's contract), through the very regions the
    training step runs, without the update."""
    backward_update(
        params,
        params16,
        grads,
        grads,
        grads,
        off,
        eps,
        beta,
        adam_constants(0.0, 0.0, 0.0, 0.0, 1.0),
        bool(False),  # a run-time flag: see train_step
        ws,
    )


@njit(**SHARE_JIT)
def gather_share(data, indices, ws, t, shares):
    r0, r1 = share(t, shares, indices.shape[0])
    gather_rows(data, indices[r0:r1], ws.xb[r0:r1], ws.xb16[r0:r1])


@njit(**POOL_JIT, parallel=True)
def gather(data, indices, ws):
    """step.gather (the batch and its bf16 copy), rows split over the shares."""
    shares = ws.bce_parts.shape[0]
    for t in prange(shares):
        gather_share(data, indices, ws, t, shares)


@njit(**POOL_JIT)
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
    """One whole step (step.train_step's contract); returns the batch's (reconstruction, KL,
    loss) before the update."""
    gather(data, indices, ws)
    forward(params, params16, off, ws.xb, eps, ws)
    backward_update(
        params,
        params16,
        grads,
        m,
        v,
        off,
        eps,
        beta,
        adam_constants(lr, beta1, beta2, adam_eps, step),
        # bool(): a run-time flag, not a literal, so that the training step and the gradient
        # check (backward) share one compiled backward_update: literal True and False
        # compiled it twice, each a third of the pooled step's cold compile.
        bool(True),
        ws,
    )
    return batch_loss(ws.bce, ws.kl, beta)


@njit(**SHARE_JIT)
def gemm_shares(
    ws, eps, w1_16, w_heads16, w_dec16, w_out16, g_w1, g_heads, g_wdec, g_wout, region, t, shares
):
    batch = ws.xb.shape[0]
    if region == 0:
        r0, r1, c0, c1 = output_block(t, shares, batch, ws.h.shape[1])
        nt_block(ws.xb16, w1_16, ws.h, r0, r1, c0, c1)
    elif region == 1:
        r0, r1 = share(t, shares, batch)
        nt_block(ws.h16, w_heads16, ws.heads, r0, r1, 0, ws.heads.shape[1])
        nt_block(ws.z16, w_dec16, ws.dech, r0, r1, 0, ws.dech.shape[1])
    elif region == 2:
        r0, r1, c0, c1 = output_block(t, shares, batch, ws.logits.shape[1])
        nt_block(ws.dech16, w_out16, ws.logits, r0, r1, c0, c1)
    elif region == 3:
        r0, r1, c0, c1 = output_block(t, shares, batch, ws.d_dech.shape[1])
        nn_block(ws.dlogits16, w_out16, ws.d_dech, r0, r1, c0, c1)
    elif region == 4:
        r0, r1 = share(t, shares, batch)
        nn_block(ws.d_dech16, w_dec16, ws.dz, r0, r1, 0, ws.dz.shape[1])
        nn_block(ws.dheads16, w_heads16, ws.dh, r0, r1, 0, ws.dh.shape[1])
    else:
        c0, c1 = share(t, shares, g_wout.shape[0])
        tn_rows(ws.dlogits16, ws.dech16, g_wout, c0, c1)
        c0, c1 = share(t, shares, g_w1.shape[0])
        tn_rows(ws.dh16, ws.xb16, g_w1, c0, c1)
        tn_rows(ws.d_dech16, ws.z16, g_wdec, c0, c1)
        c0, c1 = share(t, shares, g_heads.shape[0])
        tn_rows(ws.dheads16, ws.h16, g_heads, c0, c1)


@njit(**POOL_JIT, parallel=True)
def gemms_only(params, params16, grads, off, eps, ws):
    """The step's 11 GEMMs alone, in the same blocks and the same six regions (a profiling
    aid; the values it leaves are meaningless)."""
    input_dim, hidden, latent = ws.xb.shape[1], ws.h.shape[1], eps.shape[1]
    shares = ws.bce_parts.shape[0]
    w1_16, w_heads16, w_dec16, w_out16 = weights16(params16, off, input_dim, hidden, latent)
    g_w1, _, g_heads, _, g_wdec, _, g_wout, _ = tensors(grads, off, input_dim, hidden, latent)
    for region in range(6):
        for t in prange(shares):
            gemm_shares(
                ws,
                eps,
                w1_16,
                w_heads16,
                w_dec16,
                w_out16,
                g_w1,
                g_heads,
                g_wdec,
                g_wout,
                region,
                t,
                shares,
            )
