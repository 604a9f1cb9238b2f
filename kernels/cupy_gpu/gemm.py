"""Row-major GEMMs as cuBLAS calls, and what such a call computes.

cuBLAS is column-major; our buffers are row-major. A row-major (r, c) matrix with leading
dimension c *is* the column-major (c, r) matrix, its transpose, so the row-major product
C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: the operands swap and
the transposes stay as they are. ``plan_gemm`` does that bookkeeping once, on shapes alone
(its NumPy twin, ``tests/gpu_verification/twins.gemm``, runs a planned call exactly as cuBLAS
defines it, so the translation is tested on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def plan_gemm(
    out: str,
    a: str,
    b: str,
    shapes: dict[str, tuple[int, ...]],
    *,
    trans_a: bool = False,
    trans_b: bool = False,
) -> GemmCall:
    """The cuBLAS call for row-major ``out = op(a) @ op(b)`` over buffers of these shapes."""
    (a_rows, a_cols), (b_rows, b_cols), (c_rows, c_cols) = (
        _matrix(shapes, name) for name in (a, b, out)
    )
    m_rows, k_a = (a_cols, a_rows) if trans_a else (a_rows, a_cols)
    k_b, n_cols = (b_cols, b_rows) if trans_b else (b_rows, b_cols)
    if k_a != k_b or (m_rows, n_cols) != (c_rows, c_cols):
        raise GemmShapeError(
            f"{out} {shapes[out]} = {a}{'^T' if trans_a else ''} {shapes[a]} @ "
            f"{b}{'^T' if trans_b else ''} {shapes[b]}: shapes do not match"
        )
    return GemmCall(
        transa=OP_T if trans_b else OP_N,
        transb=OP_T if trans_a else OP_N,
        m=n_cols,
        n=m_rows,
        k=k_a,
        a=b,
        lda=b_cols,
        b=a,
        ldb=a_cols,
        c=out,
        ldc=c_cols,
    )


def _matrix(shapes: dict[str, tuple[int, ...]], name: str) -> tuple[int, int]:
    shape = shapes[name]
    if len(shape) != 2:
        raise GemmShapeError(f"{name} must be a matrix for a GEMM, has shape {shape}")
    return shape
