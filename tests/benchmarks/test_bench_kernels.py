"""pytest-benchmark suite: each fused Numba kernel against its unfused equivalents (numpy,
torch) on the same inputs, one group per kernel. Every benchmark asserts its result against a
float64 computation first. Timed with `pytest --benchmark-only`; a plain `pytest` runs each
once, untimed."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

numba = pytest.importorskip("numba")

from kernels.numba_cpu import fused  # noqa: E402
from kernels.numba_cpu.step import adam as numba_adam  # noqa: E402

B, D, H, Z = 128, 784, 512, 20
RNG = np.random.default_rng(0)
LOGITS = (RNG.standard_normal((B, D)) * 6).astype(np.float32)
X = RNG.random((B, D), dtype=np.float32)
PRE = RNG.standard_normal((B, H)).astype(np.float32)
BIAS = RNG.standard_normal(H).astype(np.float32)
HEADS = RNG.standard_normal((B, 2 * Z)).astype(np.float32)
EPS = RNG.standard_normal((B, Z)).astype(np.float32)


def close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


# ---- sigmoid + BCE-with-logits + gradient + per-image loss -----------------------------------


def bce_truth():
    l, x = LOGITS.astype(np.float64), X.astype(np.float64)
    bce = (np.maximum(l, 0) - l * x + np.log1p(np.exp(-np.abs(l)))).sum(1)
    grad = (1 / (1 + np.exp(-l)) - x) / B
    return bce, grad, grad.sum(0)


def numba_bce():
    bce, grad = np.empty(B, np.float32), np.empty((B, D), np.float32)
    part = np.zeros(D, np.float32)
    fused.sigmoid_bce(LOGITS, X, np.float32(1 / B), bce, grad, 0, B)
    fused.column_sum(grad, part)  # the output bias gradient, as the step computes it
    return bce, grad, part


def numpy_bce():
    l, x = LOGITS, X
    bce = (np.maximum(l, 0) - l * x + np.log1p(np.exp(-np.abs(l)))).sum(1)
    grad = (1 / (1 + np.exp(-l)) - x) / np.float32(B)
    return bce, grad, grad.sum(0)


def torch_bce():
    l, x = torch.from_numpy(LOGITS), torch.from_numpy(X)
    bce = F.binary_cross_entropy_with_logits(l, x, reduction="none").sum(1)
    grad = (torch.sigmoid(l) - x) / B
    return bce.numpy(), grad.numpy(), grad.sum(0).numpy()


@pytest.mark.parametrize(
    "provider", [numba_bce, numpy_bce, torch_bce], ids=["numba-fused", "numpy", "torch"]
)
@pytest.mark.benchmark(group="sigmoid-bce")
def test_sigmoid_bce(benchmark, provider):
    truth = bce_truth()
    for got, want in zip(provider(), truth):
        close(got, want, rtol=1e-5, atol=1e-7)
    benchmark.extra_info["samples_per_call"] = B  # the images of one batch
    benchmark(provider)


# ---- bias + ReLU epilogue --------------------------------------------------------------------


def numba_bias_relu():
    a = PRE.copy()
    fused.bias_relu(a, BIAS, 0, B)
    return a


def numpy_bias_relu():
    return np.maximum(PRE + BIAS, 0)


def torch_bias_relu():
    return torch.relu(torch.from_numpy(PRE) + torch.from_numpy(BIAS)).numpy()


@pytest.mark.parametrize(
    "provider",
    [numba_bias_relu, numpy_bias_relu, torch_bias_relu],
    ids=["numba-fused", "numpy", "torch"],
)
@pytest.mark.benchmark(group="bias-relu")
def test_bias_relu(benchmark, provider):
    close(provider(), np.maximum(PRE.astype(np.float64) + BIAS, 0))
    benchmark.extra_info["samples_per_call"] = B  # the images of one batch
    benchmark(provider)


# ---- ReLU backward + bias-gradient column sum -----------------------------------------------

ACT = np.maximum(PRE, 0)


def numba_relu_backward():
    g = PRE.copy()
    part = np.zeros(H, np.float32)
    fused.relu_backward_column_sum(g, ACT, part, 0, H)
    return g, part


def numpy_relu_backward():
    g = np.where(ACT > 0, PRE, 0)
    return g, g.sum(0)


def torch_relu_backward():
    g = torch.from_numpy(PRE) * (torch.from_numpy(ACT) > 0)
    return g.numpy(), g.sum(0).numpy()


@pytest.mark.parametrize(
    "provider",
    [numba_relu_backward, numpy_relu_backward, torch_relu_backward],
    ids=["numba-fused", "numpy", "torch"],
)
@pytest.mark.benchmark(group="relu-backward-bias-sum")
def test_relu_backward_bias_sum(benchmark, provider):
    want = np.where(ACT > 0, PRE.astype(np.float64), 0)
    got, bias = provider()
    close(got, want)
    close(bias, want.sum(0), rtol=1e-5, atol=1e-5)
    benchmark.extra_info["samples_per_call"] = B  # the images of one batch
    benchmark(provider)


# ---- reparameterization + KL ----------------------------------------------------------------


def numba_reparam():
    z, std, kl = (
        np.empty((B, Z), np.float32),
        np.empty((B, Z), np.float32),
        np.empty(B, np.float32),
    )
    fused.reparameterize_kl(HEADS, EPS, z, std, kl)
    return z, kl


def numpy_reparam():
    mu, lv = HEADS[:, :Z], HEADS[:, Z:]
    z = mu + np.exp(0.5 * lv) * EPS
    return z, -0.5 * (1 + lv - mu**2 - np.exp(lv)).sum(1)


@pytest.mark.parametrize("provider", [numba_reparam, numpy_reparam], ids=["numba-fused", "numpy"])
@pytest.mark.benchmark(group="reparameterize-kl")
def test_reparameterize_kl(benchmark, provider):
    mu, lv = HEADS[:, :Z].astype(np.float64), HEADS[:, Z:].astype(np.float64)
    z, kl = provider()
    close(z, mu + np.exp(0.5 * lv) * EPS)
    close(kl, -0.5 * (1 + lv - mu**2 - np.exp(lv)).sum(1), rtol=1e-5, atol=1e-5)
    benchmark.extra_info["samples_per_call"] = B  # the images of one batch
    benchmark(provider)


# ---- Adam over all parameters of the z = 20 model (835k floats) -----------------------------

N = H * D + H + 2 * (Z * H + Z) + H * Z + H + D * H + D
GRAD = (RNG.standard_normal(N) * 1e-3).astype(np.float32)


def adam_providers():
    flat = {"p": RNG.standard_normal(N).astype(np.float32)}
    flat["m"], flat["v"] = np.zeros(N, np.float32), np.zeros(N, np.float32)

    def numba_flat():
        numba_adam(flat["p"], GRAD, flat["m"], flat["v"], 3e-4, 0.9, 0.999, 1e-8, 1.0, None)
        return flat["p"]

    def torch_optimizer(**options):
        param = torch.nn.Parameter(torch.from_numpy(flat["p"].copy()))
        param.grad = torch.from_numpy(GRAD)
        opt = torch.optim.Adam([param], lr=3e-4, **options)

        def step():
            opt.state.clear()  # every call is step 1 from zero moments, like numba_flat's
            with torch.no_grad():
                param.copy_(torch.from_numpy(start))
            opt.step()
            return param.detach().numpy()

        return step

    start = flat["p"].copy()

    def numba_step():
        flat["p"][:] = start
        flat["m"][:] = 0
        flat["v"][:] = 0
        return numba_flat()

    return {
        "numba-flat": numba_step,
        "torch-default": torch_optimizer(),
        "torch-fused": torch_optimizer(fused=True),
    }, start


@pytest.mark.parametrize("name", ["numba-flat", "torch-default", "torch-fused"])
@pytest.mark.benchmark(group="adam")
def test_adam(benchmark, name):
    providers, start = adam_providers()
    step = providers[name]
    # Step 1 from zero moments: m = 0.1 g, v = 0.001 g^2, update = -lr g / (|g| + eps').
    g = GRAD.astype(np.float64)
    want = start - 3e-4 * (0.1 * g / 0.1) / (np.sqrt(0.001 * g * g) / np.sqrt(0.001) + 1e-8)
    close(step(), want, rtol=1e-6, atol=1e-7)
    benchmark(step)
