"""pytest-benchmark's own options work on their own (issue 40, part 4): --benchmark-json,
--benchmark-autosave and --benchmark-compare each time the suites (the conftest disables
timing otherwise, and pytest-benchmark then saved nothing, without a word); the JSON carries
samples/s and what the timing depends on; under pytest-xdist, where pytest-benchmark times
nothing, such an option is refused in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkout import ROOT

# One small suite: the fused sigmoid-BCE kernel in Numba, a few short rounds.
SMALL = [
    str(ROOT / "tests" / "benchmarks" / "test_bench_kernels.py"),
    "-k",
    "sigmoid_bce and numba",
    "-p",
    "no:cacheprovider",
    "-q",
    "--benchmark-min-rounds=3",
    "--benchmark-max-time=0.05",
]


def pytest_run(*words: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """pytest in a child, as a user starts it: not as a worker of this session's
    pytest-xdist (whose PYTEST_XDIST_* variables a child inherits, and pytest-benchmark's
    session.py then takes it for a worker and times nothing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", *SMALL, *words],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_benchmark_json_alone_times_and_writes_samples_per_s_and_the_machine(tmp_path):
    out = tmp_path / "bench.json"
    result = pytest_run(f"--benchmark-json={out}")  # no --benchmark-only
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(out.read_text())
    [entry] = document["benchmarks"]
    assert entry["group"] == "sigmoid-bce" and entry["stats"]["rounds"] >= 3
    info, stats = entry["extra_info"], entry["stats"]
    assert info["samples_per_call"] == 128
    assert info["samples_per_s"] == pytest.approx(128 / stats["median"])
    assert info["samples_per_s_min"] <= info["samples_per_s"] <= info["samples_per_s_max"]
    machine = document["machine_info"]["vae_kernel_bench"]
    assert machine["cpu"] and isinstance(machine["cpu_isa"], list)
    assert machine["usable_cpus"] >= 1 and machine["torch_threads"] >= 1
    assert "numpy" in machine["versions"] and isinstance(machine["blas"], list)


@pytest.mark.slow
def test_autosave_then_compare_and_compare_fail_work_without_benchmark_only(tmp_path):
    # Relative to the working directory: pytest-benchmark's file storage names its runs
    # relative to it, and fails on a storage outside it (storage/file.py, location).
    storage = "--benchmark-storage=file://saved"
    first = pytest_run("--benchmark-autosave", storage, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(list((tmp_path / "saved").rglob("*.json"))) == 1
    # Against the saved run: a generous limit passes; an impossible one fails the session.
    second = pytest_run(
        "--benchmark-compare", "--benchmark-compare-fail=median:1000%", storage, cwd=tmp_path
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0001" in second.stdout + second.stderr  # the run it compared against
    # The saved run made 100x faster: now the same limit fails the session.
    [saved] = (tmp_path / "saved").rglob("*.json")
    document = json.loads(saved.read_text())
    for field in ("min", "max", "mean", "median"):
        document["benchmarks"][0]["stats"][field] /= 100
    saved.write_text(json.dumps(document))
    failed = pytest_run(
        "--benchmark-compare", "--benchmark-compare-fail=median:1000%", storage, cwd=tmp_path
    )
    assert failed.returncode != 0 and "Performance has regressed" in failed.stdout + failed.stderr


def test_a_timing_option_under_xdist_is_refused_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/benchmarks/test_bench_kernels.py",
            "-n",
            "2",
            f"--benchmark-json={tmp_path / 'x.json'}",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert said == [
        "ERROR: --benchmark-json needs the benchmarks timed, and pytest-benchmark "
        "times none under pytest-xdist: run it with -n 0 (nox -s benchmarks does)"
    ]
    assert not (tmp_path / "x.json").exists()
