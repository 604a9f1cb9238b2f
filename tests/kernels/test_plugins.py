"""Backends from other packages: the example plugin (tests/example_plugin), installed with pip
into a directory of its own, is found through its entry point and goes through the same CLI as
the built-in backends: listed, gated, timed and trained."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from checkout import ROOT, TESTS

PLUGIN_SOURCE = TESTS / "example_plugin"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A site directory holding the installed example plugin, and a broken one beside it."""
    site = tmp_path_factory.mktemp("site")
    # Built from a copy: pip builds in the source tree, which must stay as committed.
    source = shutil.copytree(PLUGIN_SOURCE, tmp_path_factory.mktemp("source") / "plugin")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
    )
    # A distribution whose entry point names a module that does not exist, as a plugin with a
    # missing dependency would look: the harness must say so and carry on.
    broken = site / "broken_plugin-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text(
        "[vae_kernel_bench.backends]\nbroken = no_such_module_here:Backend\n"
    )
    return site


def cli(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_backends_lists_the_plugin_and_why_a_broken_one_cannot_run(plugin_site, tmp_path):
    result = cli(plugin_site, "backends", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "numba" in lines and "built-in" in lines["numba"]
    assert "plugin vae-bench-numpy-example" in lines["numpy-example"]
    assert "  available" in lines["numpy-example"]
    assert "unavailable" in lines["broken"] and "no_such_module_here" in lines["broken"]


def test_plugin_passes_the_gate_through_the_cli(plugin_site, tmp_path):
    result = cli(
        plugin_site,
        "check",
        "--backend",
        "numpy-example",
        "--latents",
        "2",
        "--adam-steps",
        "5",
        "--quiet",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: numpy-example" in result.stdout


def test_broken_plugin_is_refused_in_one_line(plugin_site, tmp_path):
    result = cli(plugin_site, "check", "--backend", "broken", "--latents", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "no_such_module_here" in result.stderr


def short_run(plugin_site, tmp_path, *backends):
    """``vae-bench run`` of ``backends`` at z = 2, as short as it goes, into tmp_path/run."""
    return cli(
        plugin_site,
        "run",
        "--backends",
        *backends,
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
        "--out",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )


@pytest.mark.slow
def test_plugin_is_timed_and_trained_by_run(plugin_site, tmp_path):
    result = short_run(plugin_site, tmp_path, "torch", "numpy-example")
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(tmp_path / "run" / "results.csv").set_index("backend")
    row = table.loc["numpy-example"]
    assert row.agreement == "pass" and row.samples_per_s > 0
    assert np.isfinite(row.final_test_elbo)
    # Trained from the same weights and data as the reference, the ELBO lands near it.
    assert abs(row.final_test_elbo - table.loc["torch"].final_test_elbo) < 5


def test_the_gate_catches_a_broken_plugin(monkeypatch):
    """The example is really checked: a wrong Adam beta in it fails the gate."""
    from bench.gate import judge
    from vae_ref.data import load_dataset
    from vae_ref.oracle import build_cases, expectation

    spec = importlib.util.spec_from_file_location(
        "vae_bench_numpy_example", PLUGIN_SOURCE / "vae_bench_numpy_example" / "__init__.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    case = build_cases(load_dataset("mnist-5k").train_x[:512], 2, steps=5)[-1]
    assert case.steps == 5
    expected = expectation(case)
    assert all(r.passed for r in judge(module.NumpyBackend(), case, expected))
    monkeypatch.setattr(module, "BETAS", (0.8, 0.999))
    assert not all(r.passed for r in judge(module.NumpyBackend(), case, expected))


@pytest.mark.slow
def test_run_reports_a_broken_plugin_as_unavailable_and_goes_on(plugin_site, tmp_path):
    result = short_run(plugin_site, tmp_path, "numba", "broken")
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(tmp_path / "run" / "results.csv").set_index("backend")
    assert table.loc["broken"].agreement == "unavailable"
    assert "no_such_module_here" in table.loc["broken"].note
    assert table.loc["numba"].agreement == "pass"
