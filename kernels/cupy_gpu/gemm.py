"""Row-major GEMMs as cuBLAS calls, and what such a call computes.

cuBLAS is column-major; our buffers are row-major. A row-major (r, c) matrix with leading
dimension c *is* the column-major (c, r) matrix, its transpose, so the row-major product
C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: the operands swap and
the transposes stay as they are. ``plan_gemm`` does that bookkeeping once, on shapes alone;
``emulate`` runs a planned call with NumPy exactly as cuBLAS defines it (column-major, leading
dimensions and all), so the translation is tested on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OP_N, OP_T = 0, 1  # cublasOperation_t: CUBLAS_OP_N, CUBLAS_OP_T


class GemmShapeError(ValueError):
    """Operand shapes that cannot be multiplied; the message names them."""


@dataclass(frozen=True)
class GemmCall:
    """One cublasGemmEx call, column-major: C (m, n) = alpha op(A) (m, k) op(B) (k, n) + beta C.
    ``a`` and ``b`` name the *cuBLAS* operands (our B and A, swapped)."""

    transa: int
    transb: int
    m: int
    n: int
    k: int
    a: str
    lda: int
    b: str
    ldb: int
    c: str
    ldc: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k


def plan_gemm(out: str, a: str, b: str, shapes: dict[str, tuple[int, ...]], *,
              trans_a: bool = False, trans_b: bool = False) -> GemmCall:
    """The cuBLAS call for row-major ``out = op(a) @ op(b)`` over buffers of these shapes."""
    (a_rows, a_cols), (b_rows, b_cols), (c_rows, c_cols) = (
        _matrix(shapes, name) for name in (a, b, out))
    m_rows, k_a = (a_cols, a_rows) if trans_a else (a_rows, a_cols)
    k_b, n_cols = (b_cols, b_rows) if trans_b else (b_rows, b_cols)
    if k_a != k_b or (m_rows, n_cols) != (c_rows, c_cols):
        raise GemmShapeError(
            f"{out} {shapes[out]} = {a}{'^T' if trans_a else ''} {shapes[a]} @ "
            f"{b}{'^T' if trans_b else ''} {shapes[b]}: shapes do not match")
    return GemmCall(
        transa=OP_T if trans_b else OP_N, transb=OP_T if trans_a else OP_N,
        m=n_cols, n=m_rows, k=k_a,
        a=b, lda=b_cols, b=a, ldb=a_cols, c=out, ldc=c_cols)


def _matrix(shapes: dict[str, tuple[int, ...]], name: str) -> tuple[int, int]:
    shape = shapes[name]
    if len(shape) != 2:
        raise GemmShapeError(f"{name} must be a matrix for a GEMM, has shape {shape}")
    return shape


def _column_major(flat: np.ndarray, rows: int, cols: int, ld: int) -> np.ndarray:
    """The (rows, cols) column-major matrix with leading dimension ld stored in ``flat``."""
    if ld < rows or flat.size < ld * (cols - 1) + rows:
        raise GemmShapeError(f"buffer of {flat.size} floats too small for a ({rows}, {cols}) "
                             f"column-major matrix with leading dimension {ld}")
    return np.lib.stride_tricks.as_strided(
        flat, shape=(rows, cols), strides=(flat.itemsize, ld * flat.itemsize))


def emulate(call: GemmCall, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """What cublasGemmEx(call) does to the flat buffers a, b, c (alpha 1, beta 0), in float32
    with float32 accumulation order left to NumPy's BLAS."""
    if not c.flags.c_contiguous:
        raise GemmShapeError("the output of an emulated GEMM must be a contiguous buffer")
    a, b, c = (np.ravel(x) for x in (a, b, c))  # c: a view, written through
    op_a = (_column_major(a, call.m, call.k, call.lda) if call.transa == OP_N
            else _column_major(a, call.k, call.m, call.lda).T)
    op_b = (_column_major(b, call.k, call.n, call.ldb) if call.transb == OP_N
            else _column_major(b, call.n, call.k, call.ldb).T)
    result = op_a @ op_b
    # Writing through a strided view of c: the column-major (m, n) matrix it holds.
    _column_major(c, call.m, call.n, call.ldc)[...] = result
