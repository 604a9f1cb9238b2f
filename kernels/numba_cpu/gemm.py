"""The step's GEMMs, in either precision, chosen by type when the step compiles.

``gemm_nt(a, a16, b, b16, c)`` is c = a @ b.T, ``gemm_nn`` c = a @ b, ``gemm_tn`` c = a.T @ b,
into the float32 ``c``. ``a16``/``b16`` are the operands' bf16 copies (uint16 bits, written by
the kernels that produced ``a`` and ``b``) or None: None compiles to NumPy's float32 ``np.dot``
(BLAS ``sgemm``), arrays to the bf16 GEMM (bf16 inputs, float32 accumulation and output) of
``gemm_block``. Choosing by type (``numba.extending.overload``) rather than by an ``if`` means
the float32 step holds no bf16 code at all, and the bf16 step no float32 GEMM.

``gemm_block`` is one call of the engine on blocks of row-major operands (the pooled step's
shares): oneMKL's ``cblas_gemm_bf16bf16f32`` / ``cblas_sgemm`` or oneDNN's
``dnnl_gemm_bf16bf16f32`` / ``dnnl_sgemm``, the process's engine for that precision
(``engines.in_process``, read as the call is typed). ``pack_b`` and ``gemm_packed_b`` pack a B
operand once for many such GEMMs where the engine can (oneMKL).

Operands are C-contiguous (slices of the flat buffers and workspace rows), so each leading
dimension is its row length. The engine's symbols must be in LLVM's symbol table
(``onemkl.load``, ``onednn.load``) before a step that calls them is compiled or loaded from
Numba's cache.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from . import engines
from .onednn import GEMM_SYMBOL as DNNL_GEMM_SYMBOL
from .onednn import NO_TRANS_CHAR, TRANS_CHAR
from .onednn import SGEMM_SYMBOL as DNNL_SGEMM_SYMBOL
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
# oneDNN (include/oneapi/dnnl/dnnl.h): dnnl_status_t dnnl_sgemm(char transa, char transb,
#   dnnl_dim_t M, N, K, float alpha, const float *A, dnnl_dim_t lda, const float *B,
#   dnnl_dim_t ldb, float beta, float *C, dnnl_dim_t ldc), row-major, dnnl_dim_t int64_t;
#   dnnl_gemm_bf16bf16f32 (src/common/gemm.cpp) the same with bf16 A and B. The transposes are
#   passed as 32-bit ints: the callee reads the char from the register's low byte, and a
#   zero-extended value is right whichever compiler built it (clang's callees assume the
#   extension, LLVM's i8 arguments do not promise it).
_i64 = types.int64
_dnnl_sgemm = types.ExternalFunction(
    DNNL_SGEMM_SYMBOL,
    types.int32(_i32, _i32, _i64, _i64, _i64, _f32, _ptr, _i64, _ptr, _i64, _f32, _ptr, _i64),
)
_dnnl_gemm_bf16 = types.ExternalFunction(
    DNNL_GEMM_SYMBOL,
    types.int32(_i32, _i32, _i64, _i64, _i64, _f32, _ptr, _i64, _ptr, _i64, _f32, _ptr, _i64),
)
_ZERO, _ONE = np.float32(0.0), np.float32(1.0)


def _packs(dtype) -> bool:
    """Whether the engine of GEMMs on operands of ``dtype`` (uint16: bf16 bits) packs an
    operand once for many GEMMs (engines.packs_b), as their call is typed."""
    return engines.packs_b(engines.in_process(_precision(dtype)))


def _precision(dtype) -> str:
    """The precision of GEMM operands of Numba ``dtype``: uint16 bf16 bits, or float32."""
    return "bf16" if dtype == types.uint16 else "float32"


@njit(inline="always")
def dnnl_trans(trans):
    """oneMKL's transpose enum (the step's NO_TRANS, TRANS) as oneDNN's character."""
    return TRANS_CHAR if trans == TRANS else NO_TRANS_CHAR


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
        gemm_block(NO_TRANS, TRANS, m, n, k, a16, 0, k, b16, 0, k, c, 0, n)

    return bf16


@overload(gemm_nn, inline="always")
def _gemm_nn(a, a16, b, b16, c):
    if _is_float32(a16):
        return lambda a, a16, b, b16, c: np.dot(a, b, c)

    def bf16(a, a16, b, b16, c):
        m, k = a.shape
        n = b.shape[1]
        gemm_block(NO_TRANS, NO_TRANS, m, n, k, a16, 0, k, b16, 0, n, c, 0, n)

    return bf16


@overload(gemm_tn, inline="always")
def _gemm_tn(a, a16, b, b16, c):
    if _is_float32(a16):
        return lambda a, a16, b, b16, c: np.dot(a.T, b, c)

    def bf16(a, a16, b, b16, c):
        k, m = a.shape
        n = b.shape[1]
        gemm_block(TRANS, NO_TRANS, m, n, k, a16, 0, m, b16, 0, n, c, 0, n)

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
    if a.dtype not in (types.uint16, types.float32):
        return None
    bf16 = a.dtype == types.uint16
    size = 2 if bf16 else 4  # bytes per operand element
    if engines.in_process(_precision(a.dtype)) == "onednn":
        dnnl = _dnnl_gemm_bf16 if bf16 else _dnnl_sgemm

        def onednn(transa, transb, m, n, k, a, a_at, lda, b, b_at, ldb, c, c_at, ldc):
            dnnl(
                dnnl_trans(transa),
                dnnl_trans(transb),
                m,
                n,
                k,
                _ONE,
                a.ctypes.data + size * a_at,
                lda,
                b.ctypes.data + size * b_at,
                ldb,
                _ZERO,
                c.ctypes.data + 4 * c_at,
                ldc,
            )

        return onednn
    cblas = _gemm_bf16 if bf16 else _sgemm

    def onemkl(transa, transb, m, n, k, a, a_at, lda, b, b_at, ldb, c, c_at, ldc):
        cblas(
            ROW_MAJOR,
            transa,
            transb,
            m,
            n,
            k,
            _ONE,
            a.ctypes.data + size * a_at,
            lda,
            b.ctypes.data + size * b_at,
            ldb,
            _ZERO,
            c.ctypes.data + 4 * c_at,
            ldc,
        )

    return onemkl


def pack_b(m, b, packed):
    """Pack the C-contiguous k x n ``b`` (bf16 bits or float32) into ``packed`` (bytes, as many
    as onemkl.packed_b_bytes asks for) as the B operand of GEMMs of up to ``m`` output rows
    (``gemm_packed_b``): oneMKL lays it out for its kernels once, not in every GEMM. Nothing
    where the engine has no packing (engines.packs_b: oneDNN packs in every GEMM)."""


@overload(pack_b, inline="always")
def _pack_b(m, b, packed):
    if not _packs(b.dtype):
        return lambda m, b, packed: None
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


def gemm_packed_b(transa, m, n, k, a, a_at, lda, b, packed, c):
    """c[:m] = op(a) @ b, b the C-contiguous k x n operand that ``pack_b`` packed into
    ``packed`` (read from there; from ``b`` itself where the engine packs in every GEMM);
    ``a`` as in ``gemm_block`` (the element its block starts at, its leading dimension), ``c``
    a C-contiguous float32 array of rows of n."""


@overload(gemm_packed_b, inline="always")
def _gemm_packed_b(transa, m, n, k, a, a_at, lda, b, packed, c):
    if c.dtype != types.float32:
        return None
    if not _packs(a.dtype):

        def unpacked(transa, m, n, k, a, a_at, lda, b, packed, c):
            gemm_block(transa, NO_TRANS, m, n, k, a, a_at, lda, b, 0, n, c, 0, n)

        return unpacked
    if a.dtype == types.uint16:

        def bf16(transa, m, n, k, a, a_at, lda, b, packed, c):
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

        def float32(transa, m, n, k, a, a_at, lda, b, packed, c):
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
