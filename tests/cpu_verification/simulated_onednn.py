"""oneDNN's two GEMMs as the pooled step calls them, simulated, so that numba-bf16's oneDNN path
runs on CPUs where the real bf16 GEMM does not (below AVX-512 oneDNN 2 answers
dnnl_unimplemented): the step compiled for oneDNN links to these instead, by symbol.

What is simulated, and where the real library says so:
- ``dnnl_sgemm`` and ``dnnl_gemm_bf16bf16f32`` (include/oneapi/dnnl/dnnl.h; the bf16 one
  src/common/gemm.cpp): C = alpha op(A) op(B) + beta C, every matrix row-major, op given by the
  characters 'N'/'T' (either case), sizes and leading dimensions 64-bit. The real functions
  swap the operands and call the column-major kernels (src/common/gemm.cpp:
  ``cpu::gemm_bf16bf16f32(&transb, &transa, &N, &M, ...)``); the product is the same.
- bf16 inputs widen exactly to float32 and the sums are float32, as the real bf16 kernel's
  ``vdpbf16ps`` accumulates (src/cpu/x64/gemm/bf16/); beta 0 writes C without reading it (BLAS's
  rule, which oneDNN follows).
- Arguments the real one refuses return dnnl_invalid_arguments (2) and leave C as it was
  (src/cpu/gemm/gemm_utils / gemm.cpp: ``check_gemm_input``: a transpose not in "NnTt", a
  negative size, a leading dimension below the row length its layout needs).
Summation order differs from the real kernels' (blocked), so the numbers agree to float32
rounding, not bit for bit. tests/kernels/numba_cpu/test_engines.py holds the simulation to the
real library wherever it is installed: sgemm on every x86-64 CPU, the bf16 GEMM where oneDNN
runs it (AVX-512).

``install()`` registers both in LLVM's symbol table under the real names, in place of loading
libdnnl: only in a process that wants the simulation (cpu_verification/engine_gate.py's child).
"""

from __future__ import annotations

import numpy as np
from numba import carray, cfunc, njit, types

SUCCESS, INVALID_ARGUMENTS = 0, 2  # dnnl_types.h: dnnl_status_t
NAME = "oneDNN (simulated: tests/cpu_verification/simulated_onednn.py)"

_SIGNATURE = types.int32(
    types.int8,
    types.int8,
    types.int64,
    types.int64,
    types.int64,
    types.float32,
    types.voidptr,
    types.int64,
    types.voidptr,
    types.int64,
    types.float32,
    types.voidptr,
    types.int64,
)
_N, _n, _T, _t = ord("N"), ord("n"), ord("T"), ord("t")


@njit(cache=False)
def _valid(transa, transb, m, n, k, lda, ldb, ldc):
    if transa not in (_N, _n, _T, _t) or transb not in (_N, _n, _T, _t):
        return False
    if m < 0 or n < 0 or k < 0:
        return False
    a_row = k if transa in (_N, _n) else m
    b_row = n if transb in (_N, _n) else k
    return lda >= max(1, a_row) and ldb >= max(1, b_row) and ldc >= max(1, n)


@njit(cache=False)
def _gemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """The product on float32 views of the operands (bf16 ones widened already)."""
    a_t = transa in (_T, _t)
    b_t = transb in (_T, _t)
    row = np.zeros(n, np.float32)
    for i in range(m):
        row[:] = 0
        for p in range(k):
            a_ip = a[p * lda + i] if a_t else a[i * lda + p]
            for j in range(n):
                row[j] += a_ip * (b[j * ldb + p] if b_t else b[p * ldb + j])
        for j in range(n):
            old = np.float32(0) if beta == 0 else beta * c[i * ldc + j]
            c[i * ldc + j] = alpha * row[j] + old


@njit(cache=False)
def _extent(trans, rows, cols, ld):
    """Elements a row-major operand of op-shape rows x cols spans, stored as ``trans`` says."""
    stored_rows = cols if trans in (_T, _t) else rows
    stored_cols = rows if trans in (_T, _t) else cols
    return 0 if stored_rows == 0 else (stored_rows - 1) * ld + stored_cols


@cfunc(_SIGNATURE, cache=False)
def sgemm(transa, transb, m, n, k, alpha, a_ptr, lda, b_ptr, ldb, beta, c_ptr, ldc):
    if not _valid(transa, transb, m, n, k, lda, ldb, ldc):
        return INVALID_ARGUMENTS
    a = carray(a_ptr, _extent(transa, m, k, lda), np.float32)
    b = carray(b_ptr, _extent(transb, k, n, ldb), np.float32)
    c = carray(c_ptr, _extent(_N, m, n, ldc), np.float32)
    _gemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    return SUCCESS


@cfunc(_SIGNATURE, cache=False)
def gemm_bf16bf16f32(transa, transb, m, n, k, alpha, a_ptr, lda, b_ptr, ldb, beta, c_ptr, ldc):
    if not _valid(transa, transb, m, n, k, lda, ldb, ldc):
        return INVALID_ARGUMENTS
    a16 = carray(a_ptr, _extent(transa, m, k, lda), np.uint16)
    b16 = carray(b_ptr, _extent(transb, k, n, ldb), np.uint16)
    a = (a16.astype(np.uint32) << np.uint32(16)).view(np.float32)
    b = (b16.astype(np.uint32) << np.uint32(16)).view(np.float32)
    c = carray(c_ptr, _extent(_N, m, n, ldc), np.float32)
    _gemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    return SUCCESS


def install() -> dict:
    """Both functions in LLVM's symbol table under oneDNN's names (before a step compiled for
    oneDNN is compiled: it is then linked to these); returns what onednn.load would record."""
    import llvmlite.binding

    from kernels.numba_cpu import onednn

    llvmlite.binding.add_symbol(onednn.SGEMM_SYMBOL, sgemm.address)
    llvmlite.binding.add_symbol(onednn.GEMM_SYMBOL, gemm_bf16bf16f32.address)
    return {"version": "simulated", "build": "", "isa": "any", "library": NAME}
