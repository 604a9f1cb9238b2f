"""The reference with narrow GEMM inputs: what a correct mixed-precision step computes.

Mixed precision as the backends run it: every GEMM's two operands are rounded to a narrower
type, their products are accumulated in float32, and everything else (bias adds,
activations, the loss, the bias gradients, the optimizer and its master weights) stays
float32. For a linear layer y = x W^T + b that is

    forward   y  = r(x) r(W)^T + b
    backward  dx = r(dy) r(W),  dW = r(dy)^T r(x),  db = sum(dy)   (dy unrounded)

with r the rounding of the GEMM inputs (``GEMM_INPUT_ROUNDINGS``):

bf16  bfloat16, to nearest, ties to even: oneMKL's ``cblas_gemm_bf16bf16f32``, oneDNN's AMX
      matmul and XLA's bf16 dot with a float32 result.
tf32  TensorFloat-32, cuBLAS's ``CUBLAS_COMPUTE_32F_FAST_TF32`` (cuBLAS Library User Guide,
      cublasComputeType_t: "allows the library to use Tensor Cores with TF32 compute for
      32-bit input and output matrices"): the Tensor Cores read only the first 10 bits of
      each float32 operand's mantissa (PyTorch, docs/source/notes/numerical_accuracy.rst,
      "TensorFloat-32 (TF32) on Nvidia Ampere devices"), i.e. the operands are truncated
      toward zero to 10 mantissa bits. cuBLAS does not document a rounding of its own before
      the Tensor Cores; truncation is also the farther of the two conversions from the
      truth (a correctly rounded conversion, PTX's cvt.rna.tf32.f32, errs half as far and
      without bias), so a calibration by it holds a backend that rounds to nearest too.

``with_gemm_inputs(model, gemm_inputs)`` makes every ``nn.Linear`` of a reference model
compute so. Products of two bf16 (8 + 8 significant bits) or two TF32 (11 + 11) numbers are
exact in float32, so the only roundings beyond the operands' are the float32 accumulation's,
which is why the reference run in float32 this way is the calibration of a mixed-precision
backend (``oracle.expectation``), as plain float32 PyTorch is of a float32 one. It is not
PyTorch's bf16 autocast: autocast also rounds the GEMM outputs to bf16 (a matmul's result
dtype under autocast is bfloat16), which this does not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

TF32_DROPPED_BITS = 13  # float32's 23 mantissa bits less TF32's 10


def round_to_bf16(t: Tensor) -> Tensor:
    """``t``'s values rounded to the nearest bfloat16 (ties to even: c10/util/BFloat16.h,
    round_to_nearest_even), kept in ``t``'s dtype."""
    return t.to(torch.bfloat16).to(t.dtype)


def round_to_tf32(t: Tensor) -> Tensor:
    """``t``'s float32 values truncated toward zero to TF32's 10 mantissa bits (the low 13
    bits cleared; infinities and zeros unchanged, a NaN stays a NaN), kept in ``t``'s dtype
    (a wider tensor is rounded to float32 first)."""
    wide = t.to(torch.float32).contiguous()
    kept = (wide.view(torch.int32) & ~((1 << TF32_DROPPED_BITS) - 1)).view(torch.float32)
    # A NaN whose payload lies in the dropped bits alone would otherwise become an infinity.
    return torch.where(torch.isnan(wide), wide, kept).to(t.dtype)


# The precisions of GEMM operands below float32, and the rounding that gives each.
GEMM_INPUT_ROUNDINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "bf16": round_to_bf16,
    "tf32": round_to_tf32,
}


class _RoundedInputLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, gemm_inputs: str) -> Tensor:
        rounded = GEMM_INPUT_ROUNDINGS[gemm_inputs]
        xr, wr = rounded(x), rounded(weight)
        ctx.save_for_backward(xr, wr)
        ctx.has_bias, ctx.gemm_inputs = bias is not None, gemm_inputs
        y = xr @ wr.T
        return y + bias if bias is not None else y

    @staticmethod
    def backward(ctx, dy: Tensor):
        xr, wr = ctx.saved_tensors
        dyr = GEMM_INPUT_ROUNDINGS[ctx.gemm_inputs](dy)
        dx = dyr @ wr if ctx.needs_input_grad[0] else None
        dw = dyr.T @ xr if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None


class RoundedInputLinear(nn.Linear):
    """An ``nn.Linear`` whose GEMMs take operands rounded to ``gemm_inputs`` (same
    parameters and names)."""

    gemm_inputs: str

    def forward(self, x: Tensor) -> Tensor:
        return _RoundedInputLinear.apply(x, self.weight, self.bias, self.gemm_inputs)


def with_gemm_inputs(model: nn.Module, gemm_inputs: str) -> nn.Module:
    """``model`` with every ``nn.Linear`` computing its GEMMs on operands rounded to
    ``gemm_inputs`` (a key of ``GEMM_INPUT_ROUNDINGS``), in place: the parameters, their
    names and the state dict are unchanged. Returns ``model``."""
    if gemm_inputs not in GEMM_INPUT_ROUNDINGS:
        raise ValueError(
            f"gemm_inputs must be one of {tuple(GEMM_INPUT_ROUNDINGS)}, got {gemm_inputs!r}"
        )
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = RoundedInputLinear  # same attributes; only forward differs
            assert isinstance(module, RoundedInputLinear)  # it is now: tells the type checker
            module.gemm_inputs = gemm_inputs
    return model
