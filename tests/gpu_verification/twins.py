"""NumPy twins of the CUDA kernels in ``kernels/cupy_gpu/vae_kernels.cu`` (same names, same
parameters in the same order, same meaning, pointers as flat arrays) and of the GEMMs as the
backend calls cuBLAS (``gemm``). They let a step program (``program.py``) run on the CPU,
where three things the GPU would not tell us are checked on every launch:
that each pointer's buffer is large enough for the sizes passed beside it (CUDA would read
out of bounds silently), that the launch geometry covers the problem the kernel was written
for, and that the buffer has the element type the kernel's C signature expects.

Reductions here run in NumPy's order, not the kernels' fixed tree order: the twins define what
is computed, the float32 tolerances of the agreement gate absorb how it is summed. The column
sums are the exception: their twins add in the kernels' order exactly (``_chunk_sums``), so
that how a batch is split into row chunks, and added back in chunk order, is checked bit for
bit against the kernel source.
"""

from __future__ import annotations

import numpy as np

from kernels.cupy_gpu import launch
from kernels.cupy_gpu.gemm import OP_N, GemmCall, GemmShapeError
from kernels.cupy_gpu.launch import Geometry


class LaunchError(AssertionError):
    """A launch that would be wrong on the GPU: a buffer too small, a grid too small, a wrong
    element type."""


def _need(name: str, buffer: np.ndarray | None, size: int, dtype=np.float32) -> np.ndarray:
    if buffer is None:
        raise LaunchError(f"{name}: null pointer where {size} elements are read or written")
    if buffer.dtype != dtype:
        raise LaunchError(f"{name}: buffer of {buffer.dtype}, the kernel expects {np.dtype(dtype)}")
    if buffer.size < size:
        raise LaunchError(f"{name}: buffer of {buffer.size} elements, the launch touches {size}")
    return buffer[:size]


def _covers(geometry: Geometry, count: int, what: str) -> None:
    if geometry.threads < count:
        raise LaunchError(f"{geometry} launches {geometry.threads} threads for {count} {what}")


def gather_rows(g: Geometry, data, indices, cursor, stride, out, rows, cols, step):
    offset = 0 if cursor is None else int(_need("cursor", cursor, 1, np.uint32)[0]) * stride
    idx = _need("indices", indices, offset + rows, np.int64)[offset:]
    if idx.min() < 0 or (idx.max() + 1) * cols > data.size:
        raise LaunchError(
            f"gather index out of range: [{idx.min()}, {idx.max()}] for {data.size // cols} rows"
        )
    images = data[: data.size // cols * cols].reshape(-1, cols)  # a pointer has no length
    _need("out", out, rows * cols).reshape(rows, cols)[...] = images[idx]
    if step is not None:
        _need("step", step, 1, np.uint32)[0] += 1


def bias_relu(g: Geometry, a, bias, rows, cols):
    view = _need("a", a, rows * cols).reshape(rows, cols)
    view += _need("bias", bias, cols)
    np.maximum(view, 0, out=view, where=~np.isnan(view))  # NaN stays NaN, as in the kernel


def reparameterize_kl(
    g: Geometry, heads, head_bias, eps, generate, seed, step, z, stdev, kl, rows, latent
):
    _covers(g, rows, "rows")
    hv = _need("heads", heads, rows * 2 * latent).reshape(rows, 2 * latent)
    hv += _need("head_bias", head_bias, 2 * latent)
    noise = _need("eps", eps, rows * latent).reshape(rows, latent)
    if generate:
        from .philox import normal_noise

        step_now = int(_need("step", step, 1, np.uint32)[0])
        noise[...] = normal_noise(int(seed), step_now, rows, latent)
    mu, logvar = hv[:, :latent], hv[:, latent:]
    s = np.exp(np.float32(0.5) * logvar)
    _need("stdev", stdev, rows * latent).reshape(rows, latent)[...] = s
    _need("z", z, rows * latent).reshape(rows, latent)[...] = mu + s * noise
    _need("kl", kl, rows)[...] = np.float32(-0.5) * np.sum(
        1 + logvar - mu * mu - s * s, axis=1, dtype=np.float32
    )


def sigmoid_bce(g: Geometry, logits, out_bias, x, inv_batch, dlogits, bce, cols):
    if g.block != (launch.ROW_THREADS, 1, 1):
        raise LaunchError(f"sigmoid_bce needs blocks of exactly {launch.ROW_THREADS} threads")
    rows = g.grid[0]  # one block per row: the grid *is* the batch size
    lv = _need("logits", logits, rows * cols).reshape(rows, cols)
    lv += _need("out_bias", out_bias, cols)
    t = _need("x", x, rows * cols).reshape(rows, cols)
    e = np.exp(-np.abs(lv))
    sig = np.where(lv >= 0, 1 / (1 + e), e / (1 + e))
    _need("dlogits", dlogits, rows * cols).reshape(rows, cols)[...] = (sig - t) * inv_batch
    per_pixel = np.maximum(lv, 0) - lv * t + np.log1p(e)
    _need("bce", bce, rows)[...] = per_pixel.sum(axis=1, dtype=np.float32)


def _column_geometry(g: Geometry, cols: int) -> None:
    if g.block != (launch.COL_TILE, launch.ROW_GROUPS, 1):
        raise LaunchError(f"column sums need blocks of ({launch.COL_TILE}, {launch.ROW_GROUPS})")
    if g.grid[0] * launch.COL_TILE < cols:
        raise LaunchError(f"{g} covers {g.grid[0] * launch.COL_TILE} of {cols} columns")


def _chunk_sums(g: Geometry, values: np.ndarray) -> np.ndarray:
    """The column sums of each row chunk of ``values`` (rows, cols), (chunks, cols), added in
    the kernel's order: chunk k is rows [k P, (k + 1) P) with P = ceil(rows / chunks)
    (launch.chunk_rows); thread y sums the chunk's rows y, y + ROW_GROUPS, ... in turn, then
    the ROW_GROUPS thread sums are added in order of y. Rows past a chunk's end count as +0.0,
    which leaves a float32 sum that started at +0.0 bit for bit unchanged."""
    rows, cols = values.shape
    chunks, groups = g.grid[1], launch.ROW_GROUPS
    per_chunk = launch.chunk_rows(rows, chunks)
    steps = -(-per_chunk // groups)
    padded = np.zeros((chunks * per_chunk, cols), np.float32)
    padded[:rows] = values
    by_chunk = np.zeros((chunks, steps * groups, cols), np.float32)
    by_chunk[:, :per_chunk] = padded.reshape(chunks, per_chunk, cols)
    lanes = by_chunk.reshape(chunks, steps, groups, cols)
    thread_sums = np.zeros((chunks, groups, cols), np.float32)
    for step in range(steps):  # each thread's running sum, one row at a time
        thread_sums += lanes[:, step]
    sums = np.zeros((chunks, cols), np.float32)
    for y in range(groups):  # row y = 0 adds the threads' sums in order
        sums += thread_sums[:, y]
    return sums


def relu_backward_bias_grad(g: Geometry, grad, act, sums, rows, cols):
    _column_geometry(g, cols)
    gv = _need("grad", grad, rows * cols).reshape(rows, cols)
    gv[...] = np.where(_need("act", act, rows * cols).reshape(rows, cols) > 0, gv, 0)
    _need("sums", sums, g.grid[1] * cols)[...] = _chunk_sums(g, gv).reshape(-1)


def column_sum(g: Geometry, a, sums, rows, cols):
    _column_geometry(g, cols)
    _need("sums", sums, g.grid[1] * cols)[...] = _chunk_sums(
        g, _need("a", a, rows * cols).reshape(rows, cols)
    ).reshape(-1)


def column_sum_chunks(g: Geometry, sums, out, chunks, cols):
    _covers(g, cols, "columns")
    parts = _need("sums", sums, chunks * cols).reshape(chunks, cols)
    total = parts[0].copy()
    for k in range(1, chunks):  # in chunk order, first to last
        total += parts[k]
    _need("out", out, cols)[...] = total


def reparameterize_kl_backward(
    g: Geometry, heads, eps, stdev, dz, beta_over_batch, dheads, rows, latent
):
    hv = _need("heads", heads, rows * 2 * latent).reshape(rows, 2 * latent)
    s = _need("stdev", stdev, rows * latent).reshape(rows, latent)
    dzv = _need("dz", dz, rows * latent).reshape(rows, latent)
    e = _need("eps", eps, rows * latent).reshape(rows, latent)
    out = _need("dheads", dheads, rows * 2 * latent).reshape(rows, 2 * latent)
    out[:, :latent] = dzv + beta_over_batch * hv[:, :latent]
    out[:, latent:] = np.float32(0.5) * (dzv * e * s + beta_over_batch * (s * s - 1))


_TINY = np.float32(1.17549435e-38)


def adam_bias_corrections(g: Geometry, step, lr, beta1, beta2, corrections):
    t = max(int(_need("step", step, 1, np.uint32)[0]), 1)  # as the kernel: never step 0
    out = _need("corrections", corrections, 2)
    out[0] = np.float32(-lr / (1.0 - beta1**t))
    out[1] = np.float32(np.sqrt(1.0 - beta2**t))


def _aligned(name: str, buffer: np.ndarray, alignment: int) -> None:
    if buffer.ctypes.data % alignment:
        raise LaunchError(
            f"{name}: address {buffer.ctypes.data:#x} is not {alignment}-byte "
            f"aligned; the kernel's vector loads need it"
        )


def adam(
    g: Geometry, params, grads, m, v, n, one_minus_beta1, beta2, one_minus_beta2, eps, corrections
):
    neg_step_size, c2 = _need("corrections", corrections, 2)
    p, gr = _need("params", params, n), _need("grads", grads, n)
    mv, vv = _need("m", m, n), _need("v", v, n)
    for name, buffer in (("params", p), ("grads", gr), ("m", mv), ("v", vv)):
        _aligned(name, buffer, 16)
    mv += one_minus_beta1 * (gr - mv)
    vv[...] = beta2 * vv + one_minus_beta2 * gr * gr
    mv[np.abs(mv) < _TINY] = 0
    vv[vv < _TINY] = 0
    p += neg_step_size * (mv / (np.sqrt(vv) / c2 + eps))


def batch_loss(g: Geometry, bce, kl, rows, beta, out, cursor):
    if g.grid != (1, 1, 1):
        raise LaunchError("batch_loss sums the batch in one block")
    r = _need("bce", bce, rows).sum(dtype=np.float64)
    k = _need("kl", kl, rows).sum(dtype=np.float64)
    row = 0 if cursor is None else int(_need("cursor", cursor, 1, np.uint32)[0])
    _need("out", out, 3 * (row + 1), np.float64)[3 * row : 3 * row + 3] = (
        r / rows,
        k / rows,
        (r + beta * k) / rows,
    )
    if cursor is not None:
        cursor[0] += 1


def _column_major(flat: np.ndarray, rows: int, cols: int, ld: int) -> np.ndarray:
    """The (rows, cols) column-major matrix with leading dimension ld stored in ``flat``."""
    if ld < rows or flat.size < ld * (cols - 1) + rows:
        raise GemmShapeError(
            f"buffer of {flat.size} floats too small for a ({rows}, {cols}) "
            f"column-major matrix with leading dimension {ld}"
        )
    return np.lib.stride_tricks.as_strided(
        flat, shape=(rows, cols), strides=(flat.itemsize, ld * flat.itemsize)
    )


def tf32_operand(a: np.ndarray) -> np.ndarray:
    """What a Tensor Core reads of a float32 GEMM operand under cuBLAS's
    CUBLAS_COMPUTE_32F_FAST_TF32 (cuBLAS Library User Guide, cublasComputeType_t: Tensor
    Cores with TF32 compute for float32 matrices): the sign, the exponent and the first 10
    mantissa bits ("only the first 10 bits of the input mantissa are read": PyTorch,
    docs/source/notes/numerical_accuracy.rst, on the same cuBLAS mode). A copy; NaNs stay
    NaNs."""
    kept = (a.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(np.isnan(a), a, kept)


def gemm(call: GemmCall, a: np.ndarray, b: np.ndarray, c: np.ndarray, tf32: bool = False) -> None:
    """The twin of cublasGemmEx: what the planned ``call`` (kernels/cupy_gpu/gemm.py) does to
    the flat buffers a, b, c (alpha 1, beta 0), column-major as cuBLAS defines it, in float32
    with the accumulation order left to NumPy's BLAS; with ``tf32`` the operands are read as
    TF32 (``tf32_operand``; their products are exact in float32, 11 + 11 significant bits)."""
    if not c.flags.c_contiguous:
        raise GemmShapeError("the output of a GEMM twin must be a contiguous buffer")
    a, b, c = (np.ravel(x) for x in (a, b, c))  # c: a view, written through
    if tf32:
        a, b = tf32_operand(a), tf32_operand(b)
    op_a = (
        _column_major(a, call.m, call.k, call.lda)
        if call.transa == OP_N
        else _column_major(a, call.k, call.m, call.lda).T
    )
    op_b = (
        _column_major(b, call.k, call.n, call.ldb)
        if call.transb == OP_N
        else _column_major(b, call.n, call.k, call.ldb).T
    )
    result = op_a @ op_b
    # Writing through a strided view of c: the column-major (m, n) matrix it holds.
    _column_major(c, call.m, call.n, call.ldc)[...] = result


def empty_kernel(g: Geometry):
    pass


KERNELS = {
    f.__name__: f
    for f in (
        gather_rows,
        bias_relu,
        reparameterize_kl,
        sigmoid_bce,
        relu_backward_bias_grad,
        column_sum,
        column_sum_chunks,
        reparameterize_kl_backward,
        adam_bias_corrections,
        adam,
        batch_loss,
        empty_kernel,
    )
}
