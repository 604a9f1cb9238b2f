"""pytest-benchmark suite: one training step per latent size (one group each), providers =
backends. Each benchmark first checks that backend's first step's loss against the float64
oracle (the gate's tolerance), then times steps. Timed with `pytest --benchmark-only`; a plain
`pytest` runs each once, untimed (torch-compile only when timed: its cold compile is slow)."""

import numpy as np
import pytest

from bench.gate import compare
from kernels import BACKENDS, create_backend
from kernels.base import gemm_inputs_of
from vae_ref.oracle import build_cases, expectation

LATENTS = (2, 10, 20, 50)
# Every registered backend; one that cannot run here (no JAX, no CUDA, no bf16 hardware)
# skips with its reason.
PROVIDERS = tuple(BACKENDS)
COMPILED = ("torch-compile", "torch-compile-bf16", "torch-cuda-compile")


@pytest.fixture(scope="module")
def step_cases(mnist5k):
    """The gate's one-step Adam case at a latent size, and the oracle's loss for it with the
    GEMM operands in a precision (float32 PyTorch's error, the calibration, computed so)."""
    images = mnist5k.train_x[:1024]
    cases, expected = {}, {}

    def case_at(latent: int, gemm_inputs: str):
        if latent not in cases:
            built = build_cases(images, latent, steps=1)
            cases[latent] = next(c for c in built if c.name.endswith("adam-steps"))
        if (latent, gemm_inputs) not in expected:
            expected[latent, gemm_inputs] = expectation(cases[latent], gemm_inputs)
        return cases[latent], expected[latent, gemm_inputs]

    return case_at


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("latent", LATENTS)
def test_training_step(benchmark, request, step_cases, latent, provider):
    benchmark.group = f"step-z{latent}-batch128"
    if provider in COMPILED and request.config.option.benchmark_disable:
        pytest.skip("compiled providers are timed only under --benchmark-only (cold compile ~20 s)")
    backend = create_backend(provider)
    status = backend.availability()
    if not status.available:
        pytest.skip(status.reason)
    case, expected = step_cases(latent, gemm_inputs_of(backend))
    backend.load(case.config, case.params)
    loss = backend.train_step(case.data, case.step_indices[0], case.step_eps[0]).loss
    result = compare(
        case.name,
        "steps.loss",
        np.array([loss]),
        expected.truth["steps.loss"],
        expected.reference_errors["steps.loss"],
    )
    assert result.passed, result.line()

    def step():
        backend.train_step(case.data, case.step_indices[0], case.step_eps[0], want_loss=False)
        backend.synchronize()  # a GPU step is timed to its end, not to its launch

    benchmark.extra_info["samples_per_call"] = len(case.step_indices[0])  # one batch
    benchmark(step)
