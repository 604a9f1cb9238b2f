"""float32 exp and log1p that LLVM can vectorize.

Without Intel SVML (llvmlite's wheels no longer carry it), ``np.exp``/``np.log1p`` in a loop
become scalar libm calls: about 4.5x slower than this. exp is the classic construction
(Cody-Waite range reduction, a polynomial, the exponent set through the float's bits), log1p
on [0, 1] one fitted polynomial, written so that each loop body is straight-line arithmetic,
selects and one bitcast. Their error is a few float32 ulp, checked against float64 in
tests/kernels/numba_cpu/test_numba_kernels.py and, through the whole model, by the agreement gate.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

f32 = np.float32

_LOG2E = f32(1.4426950408889634)
# ln 2 split in two (Cody-Waite): n * LN2_HI is exact for the |n| <= 128 used here.
_LN2_HI = f32(0.693359375)
_LN2_LO = f32(-2.12194440e-4)
_EXP_MIN = f32(-87.0)  # exp(-87) ~ 1.6e-38, the smallest normal float32's neighbourhood

# 1/k! for the degree-7 Taylor polynomial of exp on |r| <= ln2/2 (truncation error 5e-9).
_E2, _E3, _E4 = f32(1 / 2), f32(1 / 6), f32(1 / 24)
_E5, _E6, _E7 = f32(1 / 120), f32(1 / 720), f32(1 / 5040)
# log1p(u) = u q(u) on [0, 1], q of degree 9: the float64 least-squares fit of log1p(u) / u
# in Chebyshev polynomials on [0, 1] (numpy.polynomial.Chebyshev.fit, 200,001 points),
# converted to powers of u and rounded to float32 (the constant term rounds to exactly 1).
# Truncation error 1.2e-8, below half a float32 ulp of the result; with float32 Horner
# steps the result is within 2 ulp (tests/kernels/numba_cpu/test_numba_kernels.py).
_Q1, _Q2, _Q3 = f32(-0.4999985098838806), f32(0.3332909941673279), f32(-0.24947808682918549)
_Q4, _Q5, _Q6 = f32(0.19651491940021515), f32(-0.1525145173072815), f32(0.10533228516578674)
_Q7, _Q8, _Q9 = f32(-0.056435029953718185), f32(0.019649166613817215), f32(-0.0032140363473445177)
_ONE, _HALF = f32(1.0), f32(0.5)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (one LLVM bitcast, vectorizable)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(inline="always")
def exp_nonpositive(t):
    """exp(t) for float32 t <= 0 (results below ~1e-38 are flushed to ~0: harmless here)."""
    t = max(t, _EXP_MIN)
    n = np.floor(t * _LOG2E + _HALF)
    r = (t - n * _LN2_HI) - n * _LN2_LO
    p = _E6 + r * _E7
    p = _E5 + r * p
    p = _E4 + r * p
    p = _E3 + r * p
    p = _E2 + r * p
    p = _ONE + r * p
    p = _ONE + r * p
    # 2^n built from its bits: exponent field n + 127 (n >= -126 here, so a normal float).
    # n goes to int32, not int64: on AVX-512 a float -> int64 conversion of 8 floats is a
    # 512-bit instruction (vcvttps2qq to zmm), and Intel's cores run 512-bit work on ports 0
    # and 1 fused, so while it is in flight the loop's 256-bit code loses a vector ALU.
    # Measured on the Intel Xeon with AMX, the BCE loop (fused.bce_with_logits): 1.66 -> 1.03
    # ns per element, the same bits.
    return p * _float32_from_bits(np.int32((np.int32(n) + 127) << 23))


@njit(inline="always")
def log1p_unit(u):
    """log(1 + u) for float32 u in [0, 1], as a polynomial: no division. The classic form,
    2 atanh(u / (2 + u)), needs one, and the BCE loop that calls this holds the sigmoid's
    division too: two per element kept the divider busy (measured on the Intel Xeon with AMX,
    fused.bce_with_logits over 1024 x 392 logits: 0.446 -> 0.419 ms in bf16, 0.40 -> 0.35 in
    float32)."""
    p = _Q8 + u * _Q9
    p = _Q7 + u * p
    p = _Q6 + u * p
    p = _Q5 + u * p
    p = _Q4 + u * p
    p = _Q3 + u * p
    p = _Q2 + u * p
    p = _Q1 + u * p
    p = _ONE + u * p
    return u * p
