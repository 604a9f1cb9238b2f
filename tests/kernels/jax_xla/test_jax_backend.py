"""The JAX backend: availability and its reasons, PyTorch's Adam to rounding, its own seeded
noise, the data set kept on the device, donation that never touches the caller's arrays,
full-precision GEMMs, the thread pool it records, and bad input refused before XLA sees it.
(Its agreement gate runs with the other compiled backends' in tests/bench/test_gate.py.)"""

import os
import subprocess
import sys

import numpy as np
import pytest
from checkout import ROOT

from kernels import BackendUnavailable, BatchLoss, create_backend
from vae_ref import VAEConfig, build_model, export_params

CONFIG = VAEConfig(latent_dim=4, seed=5)


@pytest.fixture(scope="module")
def jax_backend():
    """One backend for the module: programs compile once per shape."""
    backend = create_backend("jax")
    status = backend.availability()
    if not status.available:
        pytest.skip(status.reason)
    return backend


@pytest.fixture(scope="module")
def params():
    return export_params(build_model(CONFIG))


def data(n=40, seed=0):
    return np.random.default_rng(seed).random((n, 784), dtype=np.float32)


def test_without_jax_it_says_why_and_the_cli_exits_2(monkeypatch, capsys):
    import importlib.util

    from bench.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "jax" else real_find_spec(name, *a),
    )
    for name in ("jax", "jax-cuda"):
        status = create_backend(name).availability()
        assert not status.available and "jax is not installed" in status.reason
    with pytest.raises(BackendUnavailable, match=r"pip install 'vae-kernel-bench\[jax\]'"):
        create_backend("jax").load(CONFIG, export_params(build_model(CONFIG)))
    assert main(["check", "--backend", "jax", "--latents", "2"]) == 2
    assert "backend 'jax' is unavailable here: jax is not installed" in capsys.readouterr().err


def test_jax_cuda_without_cuda_support_says_why(jax_backend, monkeypatch):
    from kernels.jax_xla import runtime

    monkeypatch.setattr(runtime, "_find", lambda module: False)
    backend = create_backend("jax-cuda")
    assert backend.device == "cuda" and jax_backend.device == "cpu"
    status = backend.availability()
    assert not status.available and "pip install 'jax[cuda12]'" in status.reason


def adam_against_torch(scalars=None, steps=12):
    """Largest differences, after ``steps`` updates fed identical gradients, between
    ``step.adam`` (with ``step.adam_scalars``, or ``scalars`` in its place) and
    torch.optim.Adam: (params in units of lr, first moment, second moment relative)."""
    import jax
    import torch

    from kernels.jax_xla import step

    lr = 3e-4
    rng = np.random.default_rng(0)
    shape = (64, 33)
    p0 = rng.standard_normal(shape).astype(np.float32)
    # Gradients over nine decades, so that sqrt(v) meets Adam's eps on some elements.
    grads = [
        (rng.standard_normal(shape) * 10.0 ** rng.uniform(-9, 0, shape)).astype(np.float32)
        for _ in range(steps)
    ]
    reference = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    optimizer = torch.optim.Adam([reference], lr=lr)
    update = jax.jit(lambda p, g, m, v, s: step.adam(p, g, m, v, s[0], s[1]))
    p, m, v = {"w": p0}, {"w": np.zeros(shape, np.float32)}, {"w": np.zeros(shape, np.float32)}
    for t, g in enumerate(grads, 1):
        reference.grad = torch.from_numpy(g.copy())
        optimizer.step()
        s = np.array((scalars or step.adam_scalars)(lr, t), np.float32)
        p, m, v = update(p, {"w": g}, m, v, s)
    state = optimizer.state[reference]
    torch_v = state["exp_avg_sq"].numpy().astype(np.float64)
    return (
        np.abs(reference.detach().numpy() - np.asarray(p["w"])).max() / lr,
        np.abs(state["exp_avg"].numpy() - np.asarray(m["w"])).max(),
        (np.abs(torch_v - np.asarray(v["w"])) / torch_v).max(),
    )


def test_adam_is_pytorchs_to_rounding(jax_backend):
    """Same gradients, same updates: XLA contracts multiply-adds into FMAs (one rounding
    instead of two), which leaves the second moment a few float32 ulps off and the parameters
    within a thousandth of a learning rate. A wrong bias correction, beta or eps moves every
    weight by a sizeable part of lr per step."""
    params_lr, first, second = adam_against_torch()
    assert params_lr < 0.003 and first == 0.0 and second < 1e-6
    # The comparison can fail: Adam without its bias correction misses by far.
    params_lr, _, _ = adam_against_torch(scalars=lambda lr, t: (-lr, 1.0))
    assert params_lr > 0.1


def test_its_own_noise_is_seeded_and_steps_draw_afresh(jax_backend, params):
    x = data()

    def losses(seed):
        # A learning rate too small to move a float32 weight: the same batch's loss changes
        # from step to step only through the noise.
        jax_backend.load(CONFIG.replace(seed=seed, lr=1e-30), params)
        return [jax_backend.train_step(x, np.arange(8)).loss for _ in range(3)]

    first, again, other = losses(5), losses(5), losses(6)
    assert first == again and first != other
    assert len(set(first)) == 3
    # Without noise, the same batch at the same weights gives one loss; with drawn noise the
    # loss of a step and the given-noise loss differ (the noise is not zero).
    jax_backend.load(CONFIG, params)
    zero_noise = jax_backend.train_step(x, np.arange(8), np.zeros((8, 4), np.float32)).loss
    assert zero_noise != first[0]


def test_the_data_set_is_copied_to_the_device_once_per_array(jax_backend, params, monkeypatch):
    import jax

    uploads = []
    real_device_put = jax.device_put

    def counting(x, *args, **kwargs):
        if np.shape(x) == (40, 784):
            uploads.append(x)
        return real_device_put(x, *args, **kwargs)

    monkeypatch.setattr(jax, "device_put", counting)
    jax_backend.load(CONFIG, params)
    x = data()
    for start in (0, 8, 16):
        jax_backend.train_step(x, np.arange(start, start + 8))
    assert len(uploads) == 1
    jax_backend.train_step(x.copy(), np.arange(8))
    assert len(uploads) == 2


def test_donation_leaves_the_callers_arrays_alone(jax_backend, params):
    kept = {n: p.copy() for n, p in params.items()}
    jax_backend.load(CONFIG, params)
    for _ in range(3):
        jax_backend.train_step(data(), np.arange(8))
    assert all(np.array_equal(params[n], kept[n]) for n in params)
    mine = jax_backend.params()
    mine["dec.out.bias"][:] = 7.0  # a copy: writable, and not the backend's state
    assert not np.array_equal(jax_backend.params()["dec.out.bias"], mine["dec.out.bias"])
    assert not np.array_equal(mine["enc.fc1.weight"], params["enc.fc1.weight"])


def test_a_step_whose_loss_is_not_wanted_does_not_wait_and_synchronize_does(jax_backend, params):
    x, eps = data(), np.random.default_rng(1).standard_normal((8, 4), dtype=np.float32)
    jax_backend.load(CONFIG, params)
    assert jax_backend.train_step(x, np.arange(8), eps, want_loss=False) is None
    jax_backend.synchronize()
    unwaited = jax_backend.params()
    jax_backend.load(CONFIG, params)
    assert isinstance(jax_backend.train_step(x, np.arange(8), eps), BatchLoss)
    waited = jax_backend.params()
    assert all(np.array_equal(unwaited[n], waited[n]) for n in waited)


def test_every_gemm_runs_at_full_float32_precision(jax_backend, params):
    """On a GPU, JAX's default precision would run float32 GEMMs in TF32: every dot of every
    program, backward ones included, carries precision HIGHEST."""
    jax_backend.load(CONFIG, params)
    x = data()
    jax_backend.train_step(x, np.arange(8))
    jax_backend.train_step(x, np.arange(8), np.zeros((8, 4), np.float32))
    jax_backend.forward_backward(x[:8], np.zeros((8, 4), np.float32))
    jax_backend.evaluate(x[:8])
    jax_backend.encode(x[:8])
    programs = {key[0]: executable for key, executable in jax_backend._executables.items()}
    assert set(programs) == {"train", "train_own_noise", "forward_backward", "loss_terms", "encode"}
    for kind, executable in programs.items():
        dots = [line for line in executable.as_text().splitlines() if " dot(" in line]
        assert dots, kind
        assert all("operand_precision={highest,highest}" in line for line in dots), kind
    assert (
        len([line for line in programs["train"].as_text().splitlines() if " dot(" in line]) >= 11
    )  # the step's 11 GEMMs (some split in two)


def test_outputs_are_canonical_writable_copies(jax_backend, params):
    jax_backend.load(CONFIG, params)
    out = jax_backend.forward_backward(data()[:6], np.zeros((6, 4), np.float32))
    assert {n: g.shape for n, g in out.grads.items()} == {n: p.shape for n, p in params.items()}
    assert out.intermediates["logits"].shape == (6, 784) and out.reconstruction.shape == (6,)
    assert all(a.flags.writeable for a in (*out.intermediates.values(), *out.grads.values()))
    mu, logvar = jax_backend.encode(data()[:6])
    np.testing.assert_array_equal(mu, out.intermediates["mu"])
    np.testing.assert_array_equal(logvar, out.intermediates["logvar"])


def test_settings_record_versions_device_threads_and_compile_time(jax_backend, params):
    import jax

    config = VAEConfig(latent_dim=7, seed=1)  # a shape no other test compiles
    jax_backend.load(config, export_params(build_model(config)))
    before = jax_backend.compile_seconds
    jax_backend.train_step(data(), np.arange(5))
    settings = jax_backend.settings()
    assert settings["compile_seconds"] > before
    assert settings["jax"] == jax.__version__ and settings["device"] == "cpu"
    assert settings["jax_device"].startswith("cpu")
    assert settings["xla_cpu_threads"] >= 1
    assert "highest" in settings["matmul_precision"]


def test_the_autoencoder_is_refused(jax_backend):
    ae = VAEConfig(latent_dim=4, model="ae")
    with pytest.raises(ValueError, match="implements the VAE"):
        jax_backend.load(ae, export_params(build_model(ae)))


# Loads a one-thread JAX backend and prints the threads XLA's CPU pool runs.
LOAD_ONE_THREAD = (
    "from kernels import create_backend\n"
    "from vae_ref import VAEConfig, build_model, export_params\n"
    "c = VAEConfig(latent_dim=2)\n"
    "b = create_backend('jax', threads=1)\n"
    "b.load(c, export_params(build_model(c)))\n"
    "print(b.settings()['xla_cpu_threads'])\n"
)


def _in_a_fresh_process(script: str) -> str:
    """``script``'s output, run by a new Python without the thread-pool variables set."""
    env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_thread_count_is_set_before_jax_starts_and_refused_after(jax_backend):
    """XLA sizes its CPU pool once per process: a fresh process gets the count it asks for
    (counted among the running threads); here, where JAX has started, another count is
    unavailable, with the reason."""
    assert _in_a_fresh_process(LOAD_ONE_THREAD).split()[-1] == "1"

    config = VAEConfig(latent_dim=2)
    jax_backend.load(config, export_params(build_model(config)))  # JAX started here too
    running = jax_backend.settings()["xla_cpu_threads"]
    status = create_backend("jax", threads=running + 1).availability()
    assert not status.available and "cannot be resized" in status.reason
    assert create_backend("jax", threads=running).availability().available


def test_availability_changes_nothing_in_the_process():
    """Asking whether the JAX backends can run neither starts JAX nor sets the variables
    that would size its thread pool: a CPU backend loaded afterwards gets the count it asks
    for, whatever jax-cuda's availability was asked first."""
    script = (
        "import os, sys\n"
        "from kernels import create_backend\n"
        "before = dict(os.environ)\n"
        "for name in ('jax', 'jax-cuda', 'jax-bf16'):\n"
        "    create_backend(name, threads=1).availability()\n"
        "assert 'jax' not in sys.modules, 'availability imported jax'\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        + LOAD_ONE_THREAD
    )
    assert _in_a_fresh_process(script).split()[-1] == "1"


def test_the_bce_gradient_is_sigmoid_minus_x_at_exactly_zero_logits(jax_backend):
    """As the reference's (vae_ref.losses): 1/2 - x at l == 0, where the formula
    differentiated term by term depends on each term's subgradient there."""
    import jax
    import jax.numpy as jnp

    from kernels.jax_xla.step import bce_with_logits

    logits = jnp.array([[0.0, -0.0, 2.0, -2.0]], jnp.float32)
    x = jnp.array([[0.25, 0.75, 0.5, 0.5]], jnp.float32)
    grad = jax.grad(lambda l: bce_with_logits(l, x).sum())(logits)
    np.testing.assert_allclose(
        np.asarray(grad), np.asarray(jax.nn.sigmoid(logits) - x), rtol=1e-6, atol=1e-7
    )
    # The check can fail: the formula differentiated term by term is wrong at the zeros.
    termwise = jax.grad(
        lambda l: (jnp.maximum(l, 0.0) - l * x + jnp.log1p(jnp.exp(-jnp.abs(l)))).sum()
    )(logits)
    assert not np.allclose(np.asarray(termwise)[0, :2], np.asarray(grad)[0, :2])
