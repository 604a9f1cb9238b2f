"""The step's GEMMs, in either precision, chosen by type when the step compiles.

``gemm_nt(a, a16, b, b16, c)`` is c = a @ b.T, ``gemm_nn`` c = a @ b, ``gemm_tn`` c = a.T @ b,
into the float32 ``c``. ``a16``/``b16`` are the operands' bf16 copies (uint16 bits, written by
the kernels that produced ``a`` and ``b``) or None: None compiles to NumPy's float32 ``np.dot``
(BLAS ``sgemm``), arrays to oneMKL's ``cblas_gemm_bf16bf16f32`` (bf16 inputs, float32
accumulation and output). Choosing by type (``numba.extending.overload``) rather than by an
``if`` means the float32 step holds no bf16 code at all, and the bf16 step no float32 GEMM.

``gemm_block`` is one oneMKL call on blocks of row-major operands (the pooled step's shares);
``pack_b`` and ``gemm_packed_b`` pack a B operand once for many such GEMMs.

Operands are C-contiguous (slices of the flat buffers and workspace rows), so each leading
dimension is its row length. The oneMKL symbols must be in LLVM's symbol table
(``onemkl.load``) before a step that calls them is compiled or loaded from Numba's cache.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from .onemkl import (
    B_MATRIX,
    GEMM_SYMBOL,
    NO_TRANS,
    PACK_SYMBOLS,
    PACKED,
    ROW_MAJOR,
    SGEMM_SYMBOL,
    TRANS,
)

_i32, _f32, _ptr = types.int32, types.float32, types.intp
# mkl_cblas.h: void cblas_gemm_bf16bf16f32(CBLAS_LAYOUT, CBLAS_TRANSPOSE transa,
#   CBLAS_TRANSPOSE transb, MKL_INT m, n, k, float alpha, const MKL_BF16 *a, MKL_INT lda,
#   const MKL_BF16 *b, MKL_INT ldb, float beta, float *c, MKL_INT ldc); enums are C ints and
#   MKL_INT is 32-bit in the LP64 interface that libmkl_rt selects by default.
_gemm_bf16 = types.ExternalFunction(
    GEMM_SYMBOL,
    types.void(_i32, _i32, _i32, _i32, _i32, _i32, _f32, _ptr, _i32, _ptr, _i32, _f32, _ptr, _i32),
)
# mkl_cblas.h: void cblas_sgemm(CBLAS_LAYOUT, CBLAS_TRANSPOSE transa, CBLAS_TRANSPOSE transb,
#   MKL_INT m, n, k, float alpha, const float *a, MKL_INT lda, const float *b, MKL_INT ldb,
#   float beta, float *c, MKL_INT ldc): the same arguments, float32 operands.
_sgemm = types.ExternalFunction(
    SGEMM_SYMBOL,
    types.void(_i32, _i32, _i32, _i32, _i32, _i32, _f32, _ptr, _i32, _ptr, _i32, _f32, _ptr, _i32),
)
# The packed-operand API (mkl_cblas.h), bf16: void cblas_gemm_bf16bf16f32_pack(CBLAS_LAYOUT,
#   CBLAS_IDENTIFIER, CBLAS_TRANSPOSE trans, MKL_INT m, n, k, const MKL_BF16 *src, MKL_INT ld,
#   MKL_BF16 *dest); void cblas_gemm_bf16bf16f32_compute(CBLAS_LAYOUT, MKL_INT transa, transb,
#   MKL_INT m, n, k, float alpha, const MKL_BF16 *a, MKL_INT lda, const MKL_BF16 *b,
#   MKL_INT ldb, float beta, float *c, MKL_INT ldc), transb = CblasPacked for a packed B.
_pack_bf16 = types.ExternalFunction(
    PACK_SYMBOLS["bf16"][1], types.void(_i32, _i32, _i32, _i32, _i32, _i32, _ptr, _i32, _ptr)
)
_compute_bf16 = types.ExternalFunction(
    PACK_SYMBOLS["bf16"][2],
    types.void(_i32, _i32, _i32, _i32, _i32, _i32, _f32, _ptr, _i32, _ptr, _i32, _f32, _ptr, _i32),
)
# float32: cblas_sgemm_pack takes alpha (it scales as it packs) before src; cblas_sgemm_compute
#   takes none: void cblas_sgemm_pack(CBLAS_LAYOUT, CBLAS_IDENTIFIER, CBLAS_TRANSPOSE trans,
#   MKL_INT m, n, k, float alpha, const float *src, MKL_INT ld, float *dest);
#   void cblas_sgemm_compute(CBLAS_LAYOUT, MKL_INT transa, transb, MKL_INT m, n, k,
#   const float *a, MKL_INT lda, const float *b, MKL_INT ldb, float beta, float *c, MKL_INT ldc).
_pack_f32 = types.ExternalFunction(
    PACK_SYMBOLS["float32"][1],
    types.void(_i32, _i32, _i32, _i32, _i32, _i32, _f32, _ptr, _i32, _ptr),
)
_compute_f32 = types.ExternalFunction(
    PACK_SYMBOLS["float32"][2],
    types.void(_i32, _i32, _i32, _i32, _i32, _i32, _ptr, _i32, _ptr, _i32, _f32, _ptr, _i32),
)
_ZERO, _ONE = np.float32(0.0), np.float32(1.0)


def gemm_nt(a, a16, b, b16, c):
    """c = a @ b.T (a: m x k, b: n x k)."""
    np.dot(a, b.T, c)


def gemm_nn(a, a16, b, b16, c):
    """c = a @ b (a: m x k, b: k x n)."""
    np.dot(a, b, c)


def gemm_tn(a, a16, b, b16, c):
    """c = a.T @ b (a: k x m, b: k x n)."""
    np.dot(a.T, b, c)


def _is_float32(a16) -> bool:
    return isinstance(a16, types.NoneType) or a16.dtype == types.float32


@overload(gemm_nt, inline="always")
def _gemm_nt(a, a16, b, b16, c):
    if _is_float32(a16):
        return lambda a, a16, b, b16, c: np.dot(a, b.T, c)

    def bf16(a, a16, b, b16, c):
        m, k = a.shape
        n = b.shape[0]
        _gemm_bf16(
            ROW_MAJOR,
            NO_TRANS,
            TRANS,
            m,
            n,
            k,
            _ONE,
            a16.ctypes.data,
            k,
            b16.ctypes.data,
            k,
            _ZERO,
            c.ctypes.data,
            n,
        )

    return bf16


@overload(gemm_nn, inline="always")
def _gemm_nn(a, a16, b, b16, c):
    if _is_float32(a16):
        return lambda a, a16, b, b16, c: np.dot(a, b, c)

    def bf16(a, a16, b, b16, c):
        m, k = a.shape
        n = b.shape[1]
        _gemm_bf16(
            ROW_MAJOR,
            NO_TRANS,
            NO_TRANS,
            m,
            n,
            k,
            _ONE,
            a16.ctypes.data,
            k,
            b16.ctypes.data,
            n,
            _ZERO,
            c.ctypes.data,
            n,
        )

    return bf16


@overload(gemm_tn, inline="always")
def _gemm_tn(a, a16, b, b16, c):
    if _is_float32(a16):
        return lambda a, a16, b, b16, c: np.dot(a.T, b, c)

    def bf16(a, a16, b, b16, c):
        k, m = a.shape
        n = b.shape[1]
        _gemm_bf16(
            ROW_MAJOR,
            TRANS,
            NO_TRANS,
            m,
            n,
            k,
            _ONE,
            a16.ctypes.data,
            m,
            b16.ctypes.data,
            n,
            _ZERO,
            c.ctypes.data,
            n,
        )

    return bf16


def gemm_block(transa, transb, m, n, k, a, a_at, lda, b, b_at, ldb, c, c_at, ldc):
    """c = op(a) @ op(b) on row-major operands, each given as a C-contiguous array and the
    element index its block starts at (``a_at`` etc.), with its leading dimension: one call
    of oneMKL on a block of the operands, in the precision of ``a`` and ``b`` (uint16 bf16
    bits or float32); ``c`` is float32."""


@overload(gemm_block, inline="always")
def _gemm_block(transa, transb, m, n, k, a, a_at, lda, b, b_at, ldb, c, c_at, ldc):
    if a.dtype != b.dtype or c.dtype != types.float32:
        return None  # no such GEMM: a typing error where it is called
    if a.dtype == types.uint16:

        def bf16(transa, transb, m, n, k, a, a_at, lda, b, b_at, ldb, c, c_at, ldc):
            _gemm_bf16(
                ROW_MAJOR,
                transa,
                transb,
                m,
                n,
                k,
                _ONE,
                a.ctypes.data + 2 * a_at,
                lda,
                b.ctypes.data + 2 * b_at,
                ldb,
                _ZERO,
                c.ctypes.data + 4 * c_at,
                ldc,
            )

        return bf16
    if a.dtype == types.float32:

        def float32(transa, transb, m, n, k, a, a_at, lda, b, b_at, ldb, c, c_at, ldc):
            _sgemm(
                ROW_MAJOR,
                transa,
                transb,
                m,
                n,
                k,
                _ONE,
                a.ctypes.data + 4 * a_at,
                lda,
                b.ctypes.data + 4 * b_at,
                ldb,
                _ZERO,
                c.ctypes.data + 4 * c_at,
                ldc,
            )

        return float32
    return None


def pack_b(m, b, packed):
    """Pack the C-contiguous k x n ``b`` (bf16 bits or float32) into ``packed`` (bytes, as many
    as onemkl.packed_b_bytes asks for) as the B operand of GEMMs of up to ``m`` output rows
    (``gemm_packed_b``): oneMKL lays it out for its kernels once, not in every GEMM."""


@overload(pack_b, inline="always")
def _pack_b(m, b, packed):
    if b.dtype == types.uint16:

        def bf16(m, b, packed):
            k, n = b.shape
            _pack_bf16(ROW_MAJOR, B_MATRIX, NO_TRANS, m, n, k, b.ctypes.data, n, packed.ctypes.data)

        return bf16
    if b.dtype == types.float32:

        def float32(m, b, packed):
            k, n = b.shape
            _pack_f32(
                ROW_MAJOR, B_MATRIX, NO_TRANS, m, n, k, _ONE, b.ctypes.data, n, packed.ctypes.data
            )

        return float32
    return None


def gemm_packed_b(transa, m, n, k, a, a_at, lda, packed, c):
    """c[:m] = op(a) @ B, B the k x n operand that ``pack_b`` packed into ``packed``; ``a`` as
    in ``gemm_block`` (the element its block starts at, its leading dimension), ``c`` a
    C-contiguous float32 array of rows of n."""


@overload(gemm_packed_b, inline="always")
def _gemm_packed_b(transa, m, n, k, a, a_at, lda, packed, c):
    if c.dtype != types.float32:
        return None
    if a.dtype == types.uint16:

        def bf16(transa, m, n, k, a, a_at, lda, packed, c):
            _compute_bf16(
                ROW_MAJOR,
                transa,
                PACKED,
                m,
                n,
                k,
                _ONE,
                a.ctypes.data + 2 * a_at,
                lda,
                packed.ctypes.data,
                n,
                _ZERO,
                c.ctypes.data,
                n,
            )

        return bf16
    if a.dtype == types.float32:

        def float32(transa, m, n, k, a, a_at, lda, packed, c):
            _compute_f32(
                ROW_MAJOR,
                transa,
                PACKED,
                m,
                n,
                k,
                a.ctypes.data + 4 * a_at,
                lda,
                packed.ctypes.data,
                n,
                _ZERO,
                c.ctypes.data,
                n,
            )

        return float32
    return None
