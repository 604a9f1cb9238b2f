"""The reference with bf16 GEMM inputs: what a correct mixed-precision step computes.

Mixed precision as the backends run it (and as oneMKL's ``cblas_gemm_bf16bf16f32``, oneDNN's
AMX matmul and XLA's bf16 dot with a float32 result define it): every GEMM's two operands are
rounded to bfloat16 (to nearest, ties to even), their products are accumulated in float32, and
everything else (bias adds, activations, the loss, the bias gradients, the optimizer and its
master weights) stays float32. For a linear layer y = x W^T + b that is

    forward   y  = bf16(x) bf16(W)^T + b
    backward  dx = bf16(dy) bf16(W),  dW = bf16(dy)^T bf16(x),  db = sum(dy)   (dy unrounded)

``with_bf16_gemm_inputs(model)`` makes every ``nn.Linear`` of a reference model compute so.
Products of two bf16 numbers are exact in float32 (8 + 8 significant bits), so the only
roundings beyond the operands' are the float32 accumulation's, which is why the reference run
in float32 this way is the calibration of a bf16 backend (``oracle.expectation``), as plain
float32 PyTorch is of a float32 one. It is not PyTorch's autocast: autocast also rounds the
GEMM outputs to bf16 (a matmul's result dtype under autocast is bfloat16), which this does not.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def round_to_bf16(t: Tensor) -> Tensor:
    """``t``'s values rounded to the nearest bfloat16 (ties to even: c10/util/BFloat16.h,
    round_to_nearest_even), kept in ``t``'s dtype."""
    return t.to(torch.bfloat16).to(t.dtype)


class _Bf16InputLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x16, w16 = round_to_bf16(x), round_to_bf16(weight)
        ctx.save_for_backward(x16, w16)
        ctx.has_bias = bias is not None
        y = x16 @ w16.T
        return y + bias if bias is not None else y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x16, w16 = ctx.saved_tensors
        dy16 = round_to_bf16(dy)
        dx = dy16 @ w16 if ctx.needs_input_grad[0] else None
        dw = dy16.T @ x16 if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


class Bf16InputLinear(nn.Linear):
    """An ``nn.Linear`` whose GEMMs take bf16-rounded operands (same parameters and names)."""

    def forward(self, x: Tensor) -> Tensor:
        return _Bf16InputLinear.apply(x, self.weight, self.bias)


def with_bf16_gemm_inputs(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Linear`` computing as ``Bf16InputLinear`` (in place: the
    parameters, their names and the state dict are unchanged); returns ``model``."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Bf16InputLinear  # same attributes; only forward differs
    return model
