"""The throughput measurement: FLOP count, interleaving, and the report."""

import numpy as np
import pytest

from bench.profile_text import profile_text
from bench.throughput import measure, step_flops
from kernels import create_backend
from vae_ref import VAEConfig


@pytest.mark.parametrize(("latent", "batch", "hidden"), [(20, 128, 512), (2, 32, 64), (50, 7, 300)])
def test_step_flops_counts_what_a_training_step_multiplies(latent, batch, hidden):
    """The FLOPs PyTorch's own counter sees in the reference's forward and backward (every
    matrix product: the layers' GEMMs and their gradients; no input gradient for the images),
    not the formula restated."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vae_ref import build_model
    from vae_ref.losses import loss_terms

    config = VAEConfig(latent_dim=latent, hidden_dim=hidden)
    model = build_model(config)
    x = torch.rand(batch, config.input_dim)
    with FlopCounterMode(display=False) as counter:
        out = model(x, eps=torch.randn(batch, latent))
        terms = loss_terms(out, x, config)
        terms.loss.backward()
    assert step_flops(config, batch) == counter.get_total_flops()


def test_step_flops_at_the_issues_figure():
    assert round(step_flops(VAEConfig(latent_dim=20), 128) / 1e6) == 537  # MFLOP


def test_measure_interleaves_windows_and_reports_every_backend(mnist5k):
    backends = [create_backend("torch"), create_backend("numba")]
    results = measure(
        backends,
        VAEConfig(latent_dim=4),
        mnist5k.train_x[:512],
        batch=32,
        repeats=3,
        steps=2,
        warmup_steps=1,
        settle_seconds=0.0,
    )
    assert [r.backend for r in results] == ["torch", "numba"]
    for r in results:
        assert len(r.ms_per_step) == 3 and all(t > 0 for t in r.ms_per_step)
        assert r.warmup_seconds > 0
    numba = results[1]
    assert set(numba.stages) == {"step", "gemms", "fused kernels", "adam", "gather"}
    text = profile_text(results, VAEConfig(latent_dim=4), 32, {"cpu": (100.0, "test", "a CPU")})
    assert "vs eager" in text and "numba breakdown" in text and "1.00x" in text
    # How each backend ran is in the report: its libraries, threads and precision.
    assert "numba settings: numba " in text and "precision float32" in text
    assert "torch settings: torch_threads " in text


def test_profile_command_lists_an_unknown_backend_error(capsys):
    from bench.cli import main

    assert main(["profile", "--backends", "nope"]) == 2
    assert "unknown backend 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("batch", [1, 37])
def test_numba_handles_tiny_and_odd_batches(mnist5k, batch):
    from bench.gate import judge
    from vae_ref import build_model, export_params
    from vae_ref.oracle import Case, expectation

    config = VAEConfig(latent_dim=3, batch_size=batch)
    rng = np.random.default_rng(batch)
    case = Case(
        f"b{batch}",
        config,
        export_params(build_model(config)),
        mnist5k.train_x[:batch].copy(),
        rng.standard_normal((batch, 3)).astype(np.float32),
    )
    bad = [
        r.line() for r in judge(create_backend("numba"), case, expectation(case)) if not r.passed
    ]
    assert not bad, bad


def test_measure_lets_backends_draw_their_own_noise(mnist5k):
    """backend_noise: each backend draws its noise (a GPU backend inside its step); the GPU
    backend's step program runs here through its NumPy twins."""
    from gpu_verification.numpy_executor import NumpyExecutor

    from kernels.cupy_gpu import CupyBackend

    backends = [create_backend("numba"), CupyBackend(NumpyExecutor)]
    results = measure(
        backends,
        VAEConfig(latent_dim=4),
        mnist5k.train_x[:256],
        batch=16,
        repeats=2,
        steps=2,
        warmup_steps=1,
        settle_seconds=0.0,
        backend_noise=True,
    )
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
    [result] = measure(
        [backend],
        VAEConfig(latent_dim=4),
        mnist5k.train_x[:256],
        batch=16,
        repeats=2,
        steps=2,
        warmup_steps=1,
        settle_seconds=0.0,
    )
    assert len(result.ms_per_step) == 2 and result.launch_floor == {}
    assert result.diagnostic_errors == {
        "launch floor": "DriverError: cuGraphGetNodes failed with CUresult 1"
    }
    text = profile_text([result], VAEConfig(latent_dim=4), 16, {"cpu": (100.0, "test", "a CPU")})
    assert "launch floor failed: DriverError: cuGraphGetNodes failed" in text

    # In a run, the row keeps its timing and says why its launch floor is missing.
    import types

    from bench import run

    monkeypatch.setattr(run, "create_backend", lambda name, **_: RefusingDriver(NumpyExecutor))
    spec = run.RunSpec(
        dataset="digits",
        backends=("cupy",),
        latents=(4,),
        batch_sizes=(16,),
        epochs=1,
        repeats=1,
        steps=1,
        gate_steps=1,
        iwae_k=0,
    )
    data = types.SimpleNamespace(
        name="digits", train_x=mnist5k.train_x[:300], test_x=mnist5k.test_x[:50]
    )
    [row] = run.run_latent(spec, data, 4, {"cpu": 100.0}, lambda _: None, False)["rows"]
    assert row["agreement"] == "pass" and row["samples_per_s"] > 0
    assert row["note"] == "launch floor failed: DriverError: cuGraphGetNodes failed with CUresult 1"


class Clock:
    """The time a stand-in backend's work takes: it advances only when the work does."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class SteadyBackend:
    """A stand-in whose step costs 1 ms of ``clock`` time, until the machine turns busy right
    after its last timed window (``busy_after`` steps): then every part of its work costs 5x,
    as the committed batch-32 profile's breakdown did (4.507 ms beside the table's 1.839)."""

    name, description, device = "steady", "a step of 1 ms on a quiet machine", "stand-in"

    def __init__(self, clock: Clock, busy_after: int):
        self.clock, self.busy_after, self.steps = clock, busy_after, 0

    def _work(self, ms: float) -> None:
        self.clock.now += ms * (5.0 if self.steps >= self.busy_after else 1.0) / 1e3

    def availability(self):
        from kernels.base import Availability

        return Availability(True)

    def load(self, config, params):
        pass

    def train_step(self, data, indices, eps=None, *, want_loss=True):
        self._work(1.0)
        self.steps += 1

    def synchronize(self):
        pass

    def settings(self):
        return {}

    def stage_times(self, data, batch, repeats=50):
        from kernels.timing import interleaved_times

        times = interleaved_times(
            {"step": lambda: self._work(1.0), "gemms": lambda: self._work(0.75)}, repeats
        )
        return {name: float(np.median(t)) for name, t in times.items()}


def test_the_breakdown_is_measured_beside_the_windows_not_after_them(monkeypatch):
    """The breakdown's step and the table's are one step measured twice: a machine that turns
    busy after the last window must not set them apart. Taken in one burst after the windows
    (as the batch-32 profile committed before this fix was), the breakdown said 5 ms here."""
    import types

    import bench.throughput
    import kernels.timing

    clock = Clock()
    fake_time = types.SimpleNamespace(perf_counter=clock.perf_counter)
    monkeypatch.setattr(bench.throughput, "time", fake_time)
    monkeypatch.setattr(kernels.timing, "time", fake_time)
    repeats, steps, warmup = 5, 4, 2
    backend = SteadyBackend(clock, busy_after=warmup + repeats * steps)
    [result] = measure(
        [backend],
        VAEConfig(latent_dim=2, hidden_dim=8),
        np.zeros((64, 784), np.float32),
        batch=16,
        repeats=repeats,
        steps=steps,
        warmup_steps=warmup,
        settle_seconds=0.0,
    )
    assert result.ms_per_step == pytest.approx([1.0] * repeats)
    assert result.stages == pytest.approx({"step": 1.0, "gemms": 0.75})
    text = profile_text([result], VAEConfig(latent_dim=2, hidden_dim=8), 16, {})
    assert "step 1.000 ms, gemms 0.750 ms" in text and "WARNING" not in text


def test_the_report_says_when_a_breakdown_lies_outside_its_windows():
    from bench.throughput import Measurement

    # The committed batch-32 profile: windows 1.61-2.63 ms, its breakdown's step 4.507 ms.
    contradicted = Measurement(
        "numba", "", 0.7, ms_per_step=[1.61, 1.839, 2.63], stages={"step": 4.507, "gemms": 2.176}
    )
    agreeing = Measurement(
        "numba", "", 0.7, ms_per_step=[1.61, 1.839, 2.63], stages={"step": 1.9, "gemms": 1.2}
    )
    config = VAEConfig(latent_dim=20)
    text = profile_text([contradicted], config, 32, {"cpu": (180.0, "test", "a CPU")})
    assert (
        "numba: WARNING: its breakdown's step (4.507 ms) lies outside its timed windows "
        "(1.61-2.63 ms)"
    ) in text
    assert "WARNING" not in profile_text([agreeing], config, 32, {"cpu": (180.0, "test", "a CPU")})


def test_bf16_gemms_no_faster_than_float32_ones_are_called_out():
    """The CPU's flags cannot say whether a library's bf16 GEMMs use bf16 hardware: the report
    compares them with the float32 GEMMs alone of the same windows, and a gain under the
    floor is a WARNING beside the numbers (a mutation of the gain fails the quiet case)."""
    from bench.profile_text import BF16_GEMM_GAIN_FLOOR
    from bench.throughput import Measurement

    config = VAEConfig(latent_dim=2, hidden_dim=8)

    def text(bf16_gemms_ms):
        row = Measurement(
            "numba-bf16",
            "",
            0.1,
            precision="bf16",
            ms_per_step=[4.0],
            stages={"step": 4.0, "gemms": bf16_gemms_ms},
            gemm_only_ms=3.3,
        )
        return profile_text([row], config, 16, {})

    slow = text(3.3)
    assert "its bf16 GEMMs 1.00x the float32 GEMMs alone" in slow
    assert "numba-bf16: WARNING: its bf16 GEMMs ran at only 1.00x the float32 ones" in slow
    fast = text(3.3 / 3.65)
    assert "its bf16 GEMMs 3.65x the float32 GEMMs alone" in fast and "WARNING" not in fast
    assert "WARNING" not in text(3.3 / BF16_GEMM_GAIN_FLOOR)
