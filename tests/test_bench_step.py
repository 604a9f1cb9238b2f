"""pytest-benchmark suite: one training step per latent size (one group each), providers =
backends. Each benchmark first checks that backend's first step's loss against the float64
oracle (the gate's tolerance), then times steps. Timed with `pytest --benchmark-only`; a plain
`pytest` runs each once, untimed (torch-compile only when timed: its cold compile is slow)."""

import numpy as np
import pytest

from bench.gate import compare
from kernels import create_backend
from vae_ref.oracle import build_cases, expectation

LATENTS = (2, 10, 20, 50)
PROVIDERS = (
    "torch",
    "torch-fused-adam",
    "torch-compile",
    "numba",
    "jax",  # skips, with the reason, where JAX is not installed
    # GPU providers skip, with the reason, where CUDA is not available.
    "torch-cuda",
    "torch-cuda-compile",
    "cupy",
    "cupy-nograph",
    "jax-cuda",
)
COMPILED = ("torch-compile", "torch-cuda-compile")


@pytest.fixture(scope="module")
def step_cases(mnist5k):
    """Per latent size: the gate's one-step Adam case and the oracle's loss for it."""
    images = mnist5k.train_x[:1024]
    cases = {}
    for z in LATENTS:
        case = next(c for c in build_cases(images, z, steps=1) if c.name.endswith("adam-steps"))
        cases[z] = (case, expectation(case))
    return cases


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
    case, expected = step_cases[latent]
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
