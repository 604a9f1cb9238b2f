"""One writer per results directory, and only into a directory that is ours: what every
command that writes results (run, experiment, merge, fixture) does with its --out."""

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from checkout import ROOT

from bench.cli import main

COMMITTED = ROOT / "results" / "run-full-mnist-5k"
RUN = [
    "run",
    "--backends",
    "torch",
    "--latents",
    "2",
    "--epochs",
    "1",
    "--repeats",
    "1",
    "--window-steps",
    "2",
    "--iwae-k",
    "0",
    "--adam-steps",
    "2",
    "--quiet",
]
COMMANDS = ["run", "experiment", "merge", "fixture", "seeds", "report"]


def command_line(command, out, shards, tiny_experiment):
    """The words of ``command`` writing into ``out`` (for fixture: the file to write). Seeds'
    inputs are made beside the shards."""
    if command == "seeds":
        from test_seeds import runs

        inputs = shards[0].parent / "seed-runs"
        inputs.mkdir(exist_ok=True)
        seed_runs = sorted(inputs.iterdir()) or runs(inputs)
    return {
        "run": lambda: [*RUN, "--out", str(out)],
        "experiment": lambda: [*tiny_experiment, "--latents", "3", "--out", str(out)],
        "merge": lambda: ["merge", *map(str, shards), "--out", str(out)],
        "fixture": lambda: [
            "fixture",
            "--latents",
            "2",
            "--cases",
            "batch",
            "--adam-steps",
            "1",
            "--out",
            str(out),
        ],
        "seeds": lambda: ["seeds", *map(str, seed_runs), "--out", str(out)],
        "report": lambda: ["report", str(COMMITTED), "--out", str(out)],
    }[command]()


@contextmanager
def held(command, out):
    """Hold ``out`` as its writer would, through the same lock."""
    from bench.results_dir import claim, claim_file

    if command == "fixture":
        with claim_file(out):
            yield
    else:
        with claim(out, command if command in ("experiment", "seeds", "report") else "run"):
            yield


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("vae-bench: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", COMMANDS)
def test_a_second_writer_is_refused_naming_the_holder(
    command, tmp_path, committed_shards, capsys, tiny_experiment
):
    out = tmp_path / ("out.npz" if command == "fixture" else "out")
    with held(command, out):
        assert main(command_line(command, out, committed_shards, tiny_experiment)) == 2
    err = one_line_error(capsys)
    assert "is being written by another vae-bench" in err and f"pid {os.getpid()}" in err


HOLD = """import sys, time
from bench.results_dir import claim
holding = claim(sys.argv[1], "experiment")
holding.__enter__()
print("held", flush=True)
time.sleep(120)
"""


def test_the_lock_dies_with_its_holder(tmp_path, capsys, tiny_experiment):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert main([*tiny_experiment, "--latents", "3", "--out", str(out)]) == 2
        assert f"pid {holder.pid}" in one_line_error(capsys)
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait()
        holder.stdout.close()
    from bench.results_dir import claim

    with claim(out, "experiment"):  # no stale lock
        pass


@pytest.mark.parametrize("command, theirs", [("experiment", "table.csv"), ("run", "results.csv")])
def test_an_out_holding_files_that_are_not_ours_is_refused_not_overwritten(
    command, theirs, tmp_path, capsys, tiny_experiment
):
    out = tmp_path / "F"
    out.mkdir()
    (out / theirs).write_text("a,b\n")
    assert main(command_line(command, out, [], tiny_experiment)) == 2
    assert f"holds files vae-bench did not write as a {command} ({theirs})" in one_line_error(
        capsys
    )
    assert [p.name for p in out.iterdir()] == [theirs] and (out / theirs).read_text() == "a,b\n"


def test_merge_writes_only_into_a_new_or_empty_directory(tmp_path, committed_shards, capsys):
    other = shutil.copytree(COMMITTED, tmp_path / "other-run")
    before = sorted(p.relative_to(other) for p in other.rglob("*"))
    assert main(["merge", *map(str, committed_shards), "--out", str(other)]) == 2
    assert "already holds results" in one_line_error(capsys)
    assert sorted(p.relative_to(other) for p in other.rglob("*")) == before
    (tmp_path / "empty").mkdir()
    assert main(["merge", *map(str, committed_shards), "--out", str(tmp_path / "empty")]) == 0
    assert len(pd.read_csv(tmp_path / "empty" / "results.csv")) == 12


def test_a_refused_merge_leaves_nothing_behind(tmp_path, committed_shards, capsys):
    out = tmp_path / "merged"
    first, second = map(str, committed_shards)
    assert main(["merge", first, first, "--out", str(out)]) == 2
    assert "must be disjoint" in one_line_error(capsys)
    assert not out.exists()
    # So a later merge into it holds only what it merged.
    assert main(["merge", second, "--out", str(out)]) == 0
    assert set(pd.read_csv(out / "results.csv").latent_dim) == {10, 50}


@pytest.fixture
def broken_backend(monkeypatch):
    """A backend that is available but fails when the agreement gate loads it."""
    import kernels
    from kernels import BackendFailed
    from kernels.base import Availability

    class Broken:
        name, description, device = "broken", "a backend that fails when loaded", "cpu"

        def availability(self):
            return Availability(True)

        def load(self, config, params):
            raise BackendFailed("the broken backend failed to load")

    monkeypatch.setitem(kernels.BACKENDS, "broken", lambda **_: Broken())
    return "broken"


def test_a_run_that_fails_before_its_first_result_does_not_block_its_out(
    tmp_path, capsys, monkeypatch, broken_backend, fast_gemm_peak
):
    out = tmp_path / "R"
    words = ["run", "--backends", broken_backend, "--latents", "2", "--quiet", "--out", str(out)]
    assert main(words) == 1
    assert "failed to load" in capsys.readouterr().err
    assert not out.exists()
    # Nor does a directory that a failed start left with env.json alone (as vae-bench used to):
    # a run with other flags, or --resume, goes ahead (and is interrupted as it measures the
    # machine, before any other work).
    out.mkdir()
    shutil.copy(COMMITTED / "env.json", out)
    import bench.throughput

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.throughput, "gemm_peak", interrupted)
    for again in ([*words, "--seed", "1"], [*words, "--resume"]):
        assert main(again) == 130
        assert "interrupted" in capsys.readouterr().err


def test_temp_files_of_a_killed_writer_are_removed_by_the_next(
    tmp_path, finished_experiment, tiny_experiment
):
    out = shutil.copytree(finished_experiment[0], tmp_path / "out")
    leftovers = [out / "cells" / ".vae-z3.npz.k3j9x0ab.tmp", out / ".table.csv.a1b2c3d4.tmp"]
    for path in leftovers:
        path.write_bytes(bytes(4096))
    mine = out / "cells" / "notes.tmp"  # not named as a temp file of ours: kept
    mine.write_text("kept")
    assert main([*tiny_experiment, "--latents", "3", "--out", str(out)]) == 0
    assert not [p for p in leftovers if p.exists()] and mine.read_text() == "kept"


def _a_file(tmp_path, command):
    (tmp_path / "f.txt").write_text("not a directory\n")
    return tmp_path / "f.txt", "is not a fixture" if command == "fixture" else "is a file"


def _below_a_file(tmp_path, command):
    (tmp_path / "f.txt").write_text("not a directory\n")
    return tmp_path / "f.txt" / "out", "a part of that path is a file"


def _under_proc(tmp_path, command):
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    return Path("/proc/vae-bench-test"), "cannot write"


def _read_only(tmp_path, command):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    (tmp_path / "ro").mkdir(mode=0o555)
    return tmp_path / "ro" / "out", "Permission denied"


def _too_long(tmp_path, command):
    return tmp_path / ("x" * 300), "File name too long"


@pytest.mark.parametrize("place", [_a_file, _below_a_file, _under_proc, _read_only, _too_long])
@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_that_cannot_be_written_is_one_line(
    command, place, tmp_path, committed_shards, capsys, tiny_experiment
):
    out, message = place(tmp_path, command)
    if command == "fixture" and place is not _a_file:
        out = out / "fixture.npz"
    assert main(command_line(command, out, committed_shards, tiny_experiment)) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("command", ["run", "experiment", "report"])
def test_a_writer_killed_at_its_first_write_does_not_lock_its_out(
    command, tmp_path, capsys, tiny_experiment
):
    """Killed while writing its ownership marker (its first write), a writer left only the
    marker's temp file, which the next writer took for someone's file: the --out was refused
    for good."""
    out = tmp_path / "out"
    out.mkdir()
    from bench.results_dir import MARKER_NAME

    leftover = out / f".{MARKER_NAME}.q7x2k9ab.tmp"  # as vae_ref.atomic names its temp files
    leftover.write_text('{"ki')
    assert main(command_line(command, out, [], tiny_experiment)) in (0, 1), capsys.readouterr()
    assert not leftover.exists()


def test_a_report_killed_at_its_rename_is_cleaned_up_by_the_next(tmp_path):
    """SIGKILL of report between writing report.html's temp file and renaming it left
    `.report.html.*.tmp` in its --out for good."""
    out = tmp_path / "report"
    assert main(["report", str(COMMITTED), "--out", str(out)]) == 0
    leftover = out / ".report.html.k3j9x0ab.tmp"
    leftover.write_bytes(bytes(4096))
    assert main(["report", str(COMMITTED), "--out", str(out)]) == 0
    assert not leftover.exists() and (out / "report.html").stat().st_size > 4096
