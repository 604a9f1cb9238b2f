"""The reference VAE's math in JAX: forward pass, loss, gradients and Adam, as pure functions,
and the jitted programs the backend compiles from them (one executable per program and shape).

Every formula is the reference's (``vae_ref/model.py``, ``vae_ref/losses.py``) and PyTorch's
Adam (``torch/optim/adam.py``, ``_single_tensor_adam``), written in the same order of
operations. Parameters are a dict under the canonical names and shapes (``vae_ref.params``):
weights are (out, in), as in ``torch.nn.Linear``, and each layer contracts the input with the
weight's second axis (``dot_general``), so XLA's GEMM reads the weight as stored, without a
transposed copy.

What XLA does differently from PyTorch's eager kernels (read from the optimized HLO of the
train step, ``executable.as_text()``; the cause of every difference the gate sees, and none
needs a tolerance of its own):
- element-wise chains are fused into single loops (bias + ReLU; the per-pixel BCE terms; the
  KL terms with their z-term row sum; Adam as three loops per tensor: m, v, then the weight),
  keeping PyTorch's operations in PyTorch's order, except that
- LLVM contracts a multiply and an add into one FMA wherever it can: XLA's CPU compiler always
  allows it (``CompilerTargetOptions`` in xla/service/cpu/cpu_compiler.cc). One rounding
  instead of two: Adam's second moment lands a few ulps from PyTorch's and the weights within
  a thousandth of a learning rate (``tests/kernels/jax_xla/test_jax_backend.py``);
- the KL's constant -1/2 is folded into beta (``(beta * -0.5) * sum``): exact, -0.5 being a
  power of two;
- the 784-term BCE row sums and the bias gradients' batch sums are YNNPACK reductions, and the
  batch means add four partial sums of 32: other orders of addition than PyTorch's;
- exp and log1p are XLA's own polynomial approximations, not PyTorch's (SLEEF);
- the GEMMs are YNNPACK's (forward, and the backward products with a weight) and Eigen's (the
  weight gradients, contracting over the batch) on the CPU, cuBLAS's on a GPU: blocked and
  summed differently from PyTorch's BLAS, all at full float32 precision.
How far each tensor lands from the float64 oracle, as a fraction of its tolerance:
``kernels/jax_xla/README.md``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vae_ref.config import ADAM_BETAS, ADAM_EPS

# Every float32 product at full precision: on a GPU, JAX's DEFAULT precision would run float32
# GEMMs in TF32 (10-bit mantissa), which fails the gate and is not what the CPU computes.
# Set on each dot, so no global setting can change it; the backward dots inherit it.
PRECISION = lax.Precision.HIGHEST

# PyTorch's Adam receives its constants as Python floats (double) and its float32 kernels use
# them rounded to float32 once; so are they here.
_B1_WEIGHT = np.float32(1 - ADAM_BETAS[0])  # exp_avg.lerp_(grad, 1 - beta1)
_B2 = np.float32(ADAM_BETAS[1])  # exp_avg_sq.mul_(beta2)
_B2_WEIGHT = np.float32(1 - ADAM_BETAS[1])  # .addcmul_(grad, grad, value=1 - beta2)
_EPS = np.float32(ADAM_EPS)  # .add_(eps)

# Order of the per-step scalars the train step takes (one float32 array, so one transfer).
STEP_SCALARS = ("beta", "neg_step_size", "bias_correction2_sqrt")


def adam_scalars(lr: float, step: int) -> tuple[float, float]:
    """(-step_size, sqrt(bias_correction2)) of Adam's ``step``-th update (1-based), computed as
    ``torch.optim.adam._single_tensor_adam`` does when ``capturable`` is off (the default): in
    Python floats (double), from the step count held on the host."""
    bias_correction1 = 1 - ADAM_BETAS[0] ** step
    bias_correction2 = 1 - ADAM_BETAS[1] ** step
    step_size = lr / bias_correction1
    return -step_size, bias_correction2**0.5


def step_scalars(beta: float, lr: float, step: int) -> np.ndarray:
    """The ``STEP_SCALARS`` of Adam's ``step``-th update, as the float32 values PyTorch's
    kernels use."""
    return np.array([beta, *adam_scalars(lr, step)], dtype=np.float32)


_CONTRACT_IN = (((1,), (1,)), ((), ()))  # x (B, in) with W (out, in): x W^T


def _dot_bf16(a, b, dimensions):
    """A GEMM on bf16-rounded operands, accumulated and returned in float32."""
    return lax.dot_general(
        a.astype(jnp.bfloat16),
        b.astype(jnp.bfloat16),
        dimensions,
        preferred_element_type=jnp.float32,
    )


@jax.custom_vjp
def _matmul_bf16_inputs(x, w):
    """x W^T with both operands rounded to bf16 (float32 accumulation), and a backward whose
    GEMMs round their operands too: dx = bf16(dy) bf16(W), dW = bf16(dy)^T bf16(x), as
    ``vae_ref.mixed_precision`` defines mixed precision (JAX's own transpose of a bf16 dot
    would differentiate the casts and leave dy in float32)."""
    return _dot_bf16(x, w, _CONTRACT_IN)


def _matmul_bf16_forward(x, w):
    return _dot_bf16(x, w, _CONTRACT_IN), (x, w)


def _matmul_bf16_backward(saved, dy):
    x, w = saved
    dx = _dot_bf16(dy, w, (((1,), (0,)), ((), ())))  # dy (B, out) W (out, in)
    dw = _dot_bf16(dy, x, (((0,), (0,)), ((), ())))  # dy^T (out, B) x (B, in)
    return dx, dw


_matmul_bf16_inputs.defvjp(_matmul_bf16_forward, _matmul_bf16_backward)


def _linear(x, params, layer: str, gemm_inputs: str):
    """x W^T + b for a canonical (out, in) weight: contract x's axis 1 with W's axis 1, at
    full float32 precision or on bf16 operands (``gemm_inputs``); the bias add is float32."""
    w, b = params[f"{layer}.weight"], params[f"{layer}.bias"]
    if gemm_inputs == "bf16":
        return _matmul_bf16_inputs(x, w) + b
    return lax.dot_general(x, w, _CONTRACT_IN, precision=PRECISION) + b


def forward(params, x, eps, gemm_inputs: str = "float32") -> dict:
    """The intermediates of ``vae_ref.model.VAE.forward`` (``vae_ref.oracle.INTERMEDIATES``)."""
    h = jax.nn.relu(_linear(x, params, "enc.fc1", gemm_inputs))  # gradient 0 at 0, as torch's
    mu = _linear(h, params, "enc.mu", gemm_inputs)
    logvar = _linear(h, params, "enc.logvar", gemm_inputs)
    z = mu + jnp.exp(0.5 * logvar) * eps
    dec_h = jax.nn.relu(_linear(z, params, "dec.fc1", gemm_inputs))
    logits = _linear(dec_h, params, "dec.out", gemm_inputs)
    return {"h": h, "mu": mu, "logvar": logvar, "z": z, "dec_h": dec_h, "logits": logits}


def bce_with_logits(logits, x):
    """``vae_ref.losses.bce_with_logits``: max(l, 0) - l x + log(1 + exp(-|l|)), summed over
    pixels, with its gradient sigmoid(l) - x everywhere, as the reference's. Written as
    logaddexp(l, 0) - l x: jnp.logaddexp computes max(l, 0) + log1p(exp(-|l|)) and has its
    own JVP, exp(l - result) = sigmoid(l) (jax/_src/lax/other.py: logaddexp,
    _logaddexp_jvp). Differentiated term by term, the formula's gradient at l == 0 exactly
    is whatever the terms' subgradients there add up to (jnp.maximum's and jnp.abs's give
    -x); the derivative is 1/2 - x."""
    per_pixel = jnp.logaddexp(logits, 0.0) - logits * x
    return per_pixel.sum(axis=1)


def gaussian_kl(mu, logvar):
    """``vae_ref.losses.gaussian_kl``: -1/2 sum(1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * (1 + logvar - mu**2 - jnp.exp(logvar)).sum(axis=1)


def objective(params, x, eps, beta, gemm_inputs: str = "float32"):
    """The batch mean of reconstruction + beta * KL, with the per-image terms and the
    intermediates as auxiliary outputs."""
    out = forward(params, x, eps, gemm_inputs)
    reconstruction = bce_with_logits(out["logits"], x)
    kl = gaussian_kl(out["mu"], out["logvar"])
    loss = jnp.mean(reconstruction + beta * kl)
    return loss, (reconstruction, kl, out)


_loss_and_grads = jax.value_and_grad(objective, has_aux=True)


def forward_backward(params, x, eps, beta, gemm_inputs: str = "float32"):
    """Loss, per-image terms, intermediates and gradients (canonical names and shapes)."""
    (loss, (reconstruction, kl, out)), grads = _loss_and_grads(params, x, eps, beta, gemm_inputs)
    return loss, reconstruction, kl, out, grads


def _adam_update(p, g, m, v, neg_step_size, bias_correction2_sqrt):
    """One tensor's update, in ``_single_tensor_adam``'s order of operations."""
    m = m + _B1_WEIGHT * (g - m)  # lerp_ with weight < 0.5: self + weight * (end - self)
    v = v * _B2 + _B2_WEIGHT * g * g  # mul_(beta2), then addcmul_: self + value * t1 * t2
    denom = jnp.sqrt(v) / bias_correction2_sqrt + _EPS
    return p + neg_step_size * (m / denom), m, v  # addcdiv_: self + value * (t1 / t2)


def adam(params, grads, m, v, neg_step_size, bias_correction2_sqrt):
    """PyTorch's Adam (no weight decay, no amsgrad) on every tensor: new (params, m, v)."""
    updated = {
        name: _adam_update(
            params[name], grads[name], m[name], v[name], neg_step_size, bias_correction2_sqrt
        )
        for name in params
    }
    return tuple({name: u[i] for name, u in updated.items()} for i in range(3))


def train_step(state, data, indices, eps, scalars, gemm_inputs: str = "float32"):
    """Gather the batch, forward, loss, backward and Adam, on ``state`` = (params, m, v).
    Returns the new state and (reconstruction, KL, loss) of the batch before the update."""
    params, m, v = state
    # Indices are checked on the host, so the gather skips the out-of-range fill.
    x = data.at[indices].get(mode="promise_in_bounds")
    beta, neg_step_size, bias_correction2_sqrt = (scalars[i] for i in range(3))
    (loss, (reconstruction, kl, _)), grads = _loss_and_grads(params, x, eps, beta, gemm_inputs)
    state = adam(params, grads, m, v, neg_step_size, bias_correction2_sqrt)
    return state, jnp.stack([reconstruction.mean(), kl.mean(), loss])


def train_step_own_noise(state, key, data, indices, scalars, gemm_inputs: str = "float32"):
    """``train_step`` with noise drawn from ``key`` inside the step; returns the next key."""
    key, subkey = jax.random.split(key)
    latent = state[0]["enc.mu.bias"].shape[0]
    eps = jax.random.normal(subkey, (indices.shape[0], latent), jnp.float32)
    state, losses = train_step(state, data, indices, eps, scalars, gemm_inputs)
    return state, key, losses


def loss_terms(params, x, eps, gemm_inputs: str = "float32"):
    """Per-image reconstruction and KL of a forward pass (evaluation)."""
    out = forward(params, x, eps, gemm_inputs)
    return bce_with_logits(out["logits"], x), gaussian_kl(out["mu"], out["logvar"])


def encode(params, x, gemm_inputs: str = "float32"):
    h = jax.nn.relu(_linear(x, params, "enc.fc1", gemm_inputs))
    return _linear(h, params, "enc.mu", gemm_inputs), _linear(h, params, "enc.logvar", gemm_inputs)


def _programs(gemm_inputs: str) -> dict:
    """The programs, jitted, at one precision of GEMM operands (a Python constant of each
    trace). The training state (parameters and Adam's moments, and the key) is donated: XLA
    writes the new state into the old buffers instead of allocating 3 x 1.3 M floats per
    step."""

    def at(fn):
        return functools.partial(fn, gemm_inputs=gemm_inputs)

    return {
        "train": jax.jit(at(train_step), donate_argnums=(0,)),
        "train_own_noise": jax.jit(at(train_step_own_noise), donate_argnums=(0, 1)),
        "forward_backward": jax.jit(at(forward_backward)),
        "loss_terms": jax.jit(at(loss_terms)),
        "encode": jax.jit(at(encode)),
    }


GEMM_INPUTS = ("float32", "bf16")
PROGRAMS = {gemm_inputs: _programs(gemm_inputs) for gemm_inputs in GEMM_INPUTS}
