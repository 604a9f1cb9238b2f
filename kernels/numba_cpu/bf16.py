"""bfloat16 numbers as the mixed-precision step stores them: the upper 16 bits of a float32,
rounded to nearest, ties to even (as PyTorch's float -> bfloat16 conversion,
c10/util/BFloat16.h: round_to_nearest_even, and oneDNN's), kept in uint16 arrays (NumPy has no
bf16 dtype; oneMKL's MKL_BF16 is a uint16 too)."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .compile_cache import key_cache_to_sources

key_cache_to_sources()  # before the cache=True decorators below

_ROUNDING_BIAS = np.uint32(0x7FFF)
_SIXTEEN, _ONE = np.uint32(16), np.uint32(1)
QUIET_NAN = np.uint16(0x7FC0)


@intrinsic
def float32_bits(typingctx, x):
    """The bit pattern of a float32 as a uint32 (an LLVM bitcast: free, and it vectorizes)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@njit(inline="always")
def to_bf16(x):
    """float32 -> bf16 bits, round to nearest even. Adding 0x7FFF plus the lowest kept bit
    carries into the kept half exactly when the dropped half is above one half, or equal to
    it with the kept half odd; overflow rounds to inf as it should. A NaN's payload could
    carry into the sign, so NaNs become the quiet NaN."""
    bits = float32_bits(x)
    rounded = np.uint16((bits + _ROUNDING_BIAS + ((bits >> _SIXTEEN) & _ONE)) >> _SIXTEEN)
    return rounded if x == x else QUIET_NAN


def store_bf16(out16, index, value):
    """out16[index] = to_bf16(value); nothing where ``out16`` is None (the serial float32
    step) or a float32 array (the pooled float32 step, where each GEMM operand is its own
    copy: the array the kernel has just written ``value`` into)."""
    if out16 is not None and out16.dtype == np.uint16:
        out16[index] = to_bf16(value)


@overload(store_bf16)
def _store_bf16(out16, index, value):
    # Chosen by type when the caller compiles: with out16 None or float32 the store is no code
    # at all, so the float32 kernels are the loops they were (no branch left to stop
    # vectorization).
    if isinstance(out16, types.NoneType) or out16.dtype == types.float32:
        return lambda out16, index, value: None

    def store(out16, index, value):
        out16[index] = to_bf16(value)

    return store


def store_operand(values, copies, index, value):
    """Write ``value`` where the GEMM that reads it will: ``values[index]`` where ``copies``
    is None (the serial float32 step) or a float32 array (the pooled float32 step, where it
    is ``values`` itself: written through ``values``, since a store through a second view
    of the same memory makes LLVM's alias check fail and the loop run scalar, measured 16x),
    and only its bf16 rounding where it is a uint16 array: the bf16 step reads that value
    through its copy alone, so the float32 store would be memory traffic for nothing
    (``values`` then keeps what was there before)."""
    if copies is not None and copies.dtype == np.uint16:
        copies[index] = to_bf16(value)
    else:
        values[index] = value


@overload(store_operand)
def _store_operand(values, copies, index, value):
    if not isinstance(copies, types.NoneType) and copies.dtype == types.uint16:

        def store(values, copies, index, value):
            copies[index] = to_bf16(value)
    else:

        def store(values, copies, index, value):
            values[index] = value

    return store


def row_of(a, r, c0, c1):
    """``a[r, c0:c1]``, or None where ``a`` is None."""
    return None if a is None else a[r, c0:c1]


@overload(row_of)
def _row_of(a, r, c0, c1):
    if isinstance(a, types.NoneType):
        return lambda a, r, c0, c1: None
    return lambda a, r, c0, c1: a[r, c0:c1]


@njit(cache=True)
def round_into(values, out):
    """out[i] = to_bf16(values[i]) over two C-contiguous arrays of one size (used outside
    the step: the initial copy of the weights at load)."""
    flat_in, flat_out = values.ravel(), out.ravel()
    for i in range(flat_in.size):
        flat_out[i] = to_bf16(flat_in[i])


def widen(bits: np.ndarray) -> np.ndarray:
    """bf16 bits -> the float32 values they stand for (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)
