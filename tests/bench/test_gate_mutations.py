"""Every CPU backend's gate can fail: a deliberate mistake in the very code that backend times
fails the gate. No backend is gated by its own arithmetic: the gate's truth is the float64
oracle and its calibration the reference run in float32 (``vae_ref.oracle``), while each
backend is run through its own step (eager autograd, torch.compile's compiled graph and
backward, the Numba kernels, the JAX program). Unmutated, the same backends pass
(tests/kernels/test_backends.py, tests/bench/test_gate.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kernels.pytorch as pytorch
from bench.gate import judge
from kernels import create_backend
from vae_ref.oracle import build_cases, expectation


@pytest.fixture(scope="module")
def cases(gate_digits):
    """The gate's cases at z = 10 (5 Adam steps) and their truth, computed before any mutation."""
    return {
        c.name.split("/")[1]: (c, expectation(c)) for c in build_cases(gate_digits, 10, steps=5)
    }


def failed_tensors(backend, case_and_truth) -> set[str]:
    return {r.tensor for r in judge(backend, *case_and_truth) if not r.passed}


def available(name: str):
    backend = create_backend(name)
    if not backend.availability().available:
        pytest.skip(backend.availability().reason)
    return backend


def output_bias_left_out(model, *, when):
    """``model`` whose decoder's output layer adds its bias only when ``when()`` is false."""
    layer = model.dec.out

    def forward(x):
        return F.linear(x, layer.weight, None if when() else layer.bias)

    layer.forward = forward
    return model


@pytest.fixture
def build_model_mutated(monkeypatch):
    """Makes the torch backends build their model with the output bias left out whenever
    ``when()`` holds (the oracle builds its own model, untouched)."""

    def mutate(when):
        real = pytorch.build_model
        monkeypatch.setattr(
            pytorch, "build_model", lambda *a, **k: output_bias_left_out(real(*a, **k), when=when)
        )

    return mutate


@pytest.mark.parametrize("name", ["torch", "torch-fused-adam"])
def test_eager_gate_fails_a_step_without_the_output_bias(build_model_mutated, cases, name):
    build_model_mutated(lambda: True)
    backend = create_backend(name)
    assert {"logits", "loss", "grad.dec.out.bias"} <= failed_tensors(backend, cases["batch"])
    assert failed_tensors(backend, cases["adam-steps"])


@pytest.mark.slow
def test_compile_gate_fails_a_compiled_graph_without_the_output_bias(build_model_mutated, cases):
    """The bias is left out of the compiled graph only (dynamo traces with is_compiling()
    true; eager calls see the bias): the single-step case fails, so what the gate runs for
    torch-compile is the compiled forward and its compiled backward, not eager PyTorch."""
    build_model_mutated(torch.compiler.is_compiling)
    eager = create_backend("torch")
    assert not failed_tensors(eager, cases["batch"])  # the mutation is in compiled code only
    compiled = create_backend("torch-compile")
    assert {"logits", "loss", "grad.dec.out.bias"} <= failed_tensors(compiled, cases["batch"])
    assert failed_tensors(compiled, cases["adam-steps"])


@pytest.mark.parametrize(
    "name", ["torch", "torch-fused-adam", pytest.param("torch-compile", marks=pytest.mark.slow)]
)
def test_torch_gate_fails_adam_with_the_wrong_second_moment_decay(monkeypatch, cases, name):
    monkeypatch.setattr(pytorch, "ADAM_BETAS", (0.9, 0.99))
    backend = create_backend(name)
    assert not failed_tensors(backend, cases["batch"])
    assert failed_tensors(backend, cases["adam-steps"])


def test_numba_gate_fails_adam_with_the_wrong_second_moment_decay(monkeypatch, cases):
    import kernels.numba_cpu as numba_cpu

    backend = available("numba")
    monkeypatch.setattr(numba_cpu, "ADAM_BETAS", (0.9, 0.99))
    assert failed_tensors(backend, cases["adam-steps"])


def test_jax_gate_fails_a_timed_program_without_the_output_bias(monkeypatch, cases):
    """The training program that is timed, re-traced with the output bias left out of its
    loss: the K-step case, which runs that program, fails."""
    backend = available("jax")
    import jax
    import jax.numpy as jnp

    from kernels.jax_xla import step

    real = step._loss_and_grads

    def without_bias(params, x, eps, beta, gemm_inputs):
        return real(
            {**params, "dec.out.bias": jnp.zeros_like(params["dec.out.bias"])},
            x,
            eps,
            beta,
            gemm_inputs,
        )

    monkeypatch.setattr(step, "_loss_and_grads", without_bias)
    # A new function object: jax.jit's trace cache would hand back the unmutated program.
    monkeypatch.setitem(
        step.PROGRAMS["float32"],
        "train",
        jax.jit(lambda *a: step.train_step(*a), donate_argnums=(0,)),
    )
    bad = failed_tensors(backend, cases["adam-steps"])
    assert {"steps.loss", "steps.dec.out.weight"} <= bad, bad
    assert np.isfinite(backend.params()["dec.out.bias"]).all()


# -- mistakes that show only over K steps, at the gate's own K ---------------------------------


@pytest.fixture(scope="module")
def k_steps(gate_digits):
    """The K-step case at z = 10 with the gate's default K (every command's), and its truth."""
    from vae_ref.config import GATE_ADAM_STEPS

    case = build_cases(gate_digits, 10, steps=GATE_ADAM_STEPS)[-1]
    assert case.steps == GATE_ADAM_STEPS
    return case, expectation(case)


@pytest.mark.parametrize("name", ["numba", "torch"])
def test_gate_fails_adam_with_eps_ten_times_too_large(monkeypatch, k_steps, name):
    import kernels.numba_cpu as numba_cpu

    backend = available(name)
    assert not failed_tensors(backend, k_steps)  # unmutated, it passes
    monkeypatch.setattr(numba_cpu if name == "numba" else pytorch, "ADAM_EPS", 1e-7)
    assert failed_tensors(backend, k_steps)


@pytest.mark.parametrize("name", ["numba", "torch"])
def test_gate_fails_a_learning_rate_one_percent_high(monkeypatch, k_steps, name):
    backend = available(name)
    load = backend.load
    monkeypatch.setattr(
        backend, "load", lambda config, params: load(config.replace(lr=config.lr * 1.01), params)
    )
    assert "steps.loss" in failed_tensors(backend, k_steps)


def test_gate_fails_adam_without_the_second_moments_bias_correction(monkeypatch, k_steps):
    """JAX computes Adam's scalars on the host (``step.adam_scalars``): sqrt(1 - beta2^t)
    left at 1 leaves v unscaled, the first steps about 30 lr long."""
    backend = available("jax")
    from kernels.jax_xla import step

    real = step.adam_scalars
    monkeypatch.setattr(step, "adam_scalars", lambda lr, t: (real(lr, t)[0], 1.0))
    bad = failed_tensors(backend, k_steps)
    assert {"steps.loss", "steps.enc.fc1.weight", "steps.dec.out.bias"} <= bad, bad
