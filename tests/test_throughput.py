"""The throughput measurement: FLOP count, interleaving, and the report."""

import numpy as np
import pytest

from bench.throughput import measure, report, step_flops
from kernels import create_backend
from vae_ref import VAEConfig


def test_step_flops_is_the_eleven_gemms():
    # The figure: 537 MFLOP at batch 128, z = 20.
    assert step_flops(VAEConfig(latent_dim=20), 128) == 2 * 128 * (5 * 784 * 512 + 9 * 20 * 512)
    assert round(step_flops(VAEConfig(latent_dim=20), 128) / 1e6) == 537


def test_measure_interleaves_windows_and_reports_every_backend(mnist5k):
    backends = [create_backend("torch"), create_backend("numba")]
    results = measure(backends, VAEConfig(latent_dim=4), mnist5k.train_x[:512], batch=32,
                      repeats=3, steps=2, warmup_steps=1, settle_seconds=0.0)
    assert [r.backend for r in results] == ["torch", "numba"]
    for r in results:
        assert len(r.ms_per_step) == 3 and all(t > 0 for t in r.ms_per_step)
        assert r.warmup_seconds > 0
    numba = results[1]
    assert set(numba.stages) == {"step", "gemms", "fused kernels", "adam", "gather"}
    text = report(results, VAEConfig(latent_dim=4), 32, {"cpu": (100.0, "test", "a CPU")})
    assert "vs eager" in text and "numba breakdown" in text and "1.00x" in text


def test_profile_command_lists_an_unknown_backend_error(capsys):
    from bench.cli import main

    assert main(["profile", "--backends", "nope"]) == 2
    assert "unknown backend 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("batch", [1, 37])
def test_numba_handles_tiny_and_odd_batches(mnist5k, batch):
    from bench.agreement import check
    from vae_ref import build_model, export_params
    from vae_ref.oracle import Case, expectation

    config = VAEConfig(latent_dim=3, batch_size=batch)
    rng = np.random.default_rng(batch)
    case = Case(f"b{batch}", config, export_params(build_model(config)),
                mnist5k.train_x[:batch].copy(),
                rng.standard_normal((batch, 3)).astype(np.float32))
    bad = [r.line() for r in check(create_backend("numba"), case, expectation(case))
           if not r.passed]
    assert not bad, bad


def test_measure_lets_backends_draw_their_own_noise(mnist5k):
    """backend_noise: each backend draws its noise (a GPU backend inside its step); the GPU
    backend's step program runs here through its NumPy twins."""
    from gpu_verification.numpy_executor import NumpyExecutor

    from kernels.cupy_gpu import CupyBackend

    backends = [create_backend("numba"), CupyBackend(NumpyExecutor)]
    results = measure(backends, VAEConfig(latent_dim=4), mnist5k.train_x[:256], batch=16,
                      repeats=2, steps=2, warmup_steps=1, settle_seconds=0.0,
                      backend_noise=True)
    assert [r.device for r in results] == ["cpu", "cpu"]
    assert all(len(r.ms_per_step) == 2 for r in results)
    assert int(backends[1].executor.download(backends[1].flat["step"])[0]) > 3


def test_a_failing_diagnostic_is_reported_and_costs_no_timing(mnist5k, monkeypatch):
    """The stage breakdown and the launch floor run after every timed window; one that fails
    (a driver call the device refuses) is named with its reason, the timing kept."""
    from gpu_verification.numpy_executor import NumpyExecutor

    from kernels.cupy_gpu import CupyBackend
    from kernels.cupy_gpu.driver import DriverError

    class RefusingDriver(CupyBackend):
        def launch_floor(self, batch):
            raise DriverError("cuGraphGetNodes failed with CUresult 1")

    backend = RefusingDriver(NumpyExecutor)
    [result] = measure([backend], VAEConfig(latent_dim=4), mnist5k.train_x[:256], batch=16,
                       repeats=2, steps=2, warmup_steps=1, settle_seconds=0.0)
    assert len(result.ms_per_step) == 2 and result.launch_floor == {}
    assert result.diagnostic_errors == {
        "launch floor": "DriverError: cuGraphGetNodes failed with CUresult 1"}
    text = report([result], VAEConfig(latent_dim=4), 16, {"cpu": (100.0, "test", "a CPU")})
    assert "launch floor failed: DriverError: cuGraphGetNodes failed" in text

    # In a run, the row keeps its timing and says why its launch floor is missing.
    import types

    from bench import run

    monkeypatch.setattr(run, "create_backend", lambda name, **_: RefusingDriver(NumpyExecutor))
    spec = run.RunSpec(dataset="digits", backends=("cupy",), latents=(4,), batch_sizes=(16,),
                       epochs=1, repeats=1, steps=1, gate_steps=1, iwae_k=0)
    data = types.SimpleNamespace(name="digits", train_x=mnist5k.train_x[:300],
                                 test_x=mnist5k.test_x[:50])
    [row] = run.run_latent(spec, data, 4, {"cpu": 100.0}, lambda _: None, False)["rows"]
    assert row["agreement"] == "pass" and row["samples_per_s"] > 0
    assert row["note"] == "launch floor failed: DriverError: cuGraphGetNodes failed with CUresult 1"
