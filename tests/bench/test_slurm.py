"""The README's Slurm sweep, run by a real Slurm: a single-node cluster (munged, slurmctld,
slurmd on localhost, started here: ``slurm_verification.cluster``) runs the README's
``sweep.sh`` as the README submits it (``sbatch --array=1-4``), with a short profile in place
of ``--preset full``; the README's merge joins the parts, and the merged run must equal one
machine's run of the same settings: same rows, gate results, ELBOs and curves (seeded, one
thread: bit for bit)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from checkout import ROOT

README = ROOT / "README.md"
FULL = "--preset full"
# Four latent sizes for four array tasks; the cheapest settings that still gate, time, train.
SHORT = (
    "--preset quick --backends torch --latents 2 3 4 5 --batch-sizes 64 --epochs 1 "
    "--repeats 1 --window-steps 2 --iwae-k 0 --adam-steps 2 --hidden-dim 64 --threads 1 --quiet"
)
KEY = ["backend", "latent_dim", "batch_size"]

pytestmark = pytest.mark.slurm


def readme_sweep() -> tuple[str, list[str]]:
    """The README's sweep.sh and its submit-and-merge lines, as written there."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    script = next(b for b in blocks if b.startswith("#!/bin/bash") and "SLURM_ARRAY" in b)
    submit = next(b for b in blocks if "sbatch --array" in b)
    return script, [line for line in submit.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from slurm_verification.cluster import Cluster, missing

    absent = missing()
    if absent:
        if os.environ.get("VAE_BENCH_REQUIRE_SLURM"):
            pytest.fail(f"Slurm is required (VAE_BENCH_REQUIRE_SLURM) but {absent} missing")
        pytest.skip(
            f"no Slurm here ({', '.join(absent)} missing; Debian: apt-get install slurm-wlm munge)"
        )
    running = Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield running
    running.stop()


def test_the_readme_sweep_under_slurm_equals_one_machines_run(cluster, tmp_path):
    script, lines = readme_sweep()
    assert FULL in lines[0] and lines[1].startswith("vae-bench merge")
    (tmp_path / "sweep.sh").write_text(script)
    env = dict(cluster.env, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for line in lines:
        command = line.replace(FULL, SHORT)
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        logs = "\n".join(p.read_text() for p in sorted((tmp_path / "parts").glob("*.log")))
        assert done.returncode == 0, (
            f"{command}\n{done.stdout}\n{done.stderr}\n{logs}\n{cluster.logs()}"
        )
    # Each array task ran one shard, as Slurm numbered it.
    for i in range(1, 5):
        assert json.loads((tmp_path / "parts" / str(i) / "env.json").read_text())["shard"] == [i, 4]
    single = subprocess.run(
        ["vae-bench", "run", *shlex.split(SHORT), "--out", "single"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert single.returncode == 0, single.stderr

    merged_dir, single_dir = tmp_path / "results" / "sweep", tmp_path / "single"
    merged = pd.read_csv(merged_dir / "results.csv").sort_values(KEY).reset_index(drop=True)
    alone = pd.read_csv(single_dir / "results.csv").sort_values(KEY).reset_index(drop=True)
    assert merged[KEY].equals(alone[KEY]) and sorted(merged.latent_dim) == [2, 3, 4, 5]
    assert (merged.agreement == "pass").all() and merged.agreement.equals(alone.agreement)
    for column in ("worst_fraction", "final_train_elbo", "final_test_elbo", "epochs"):
        assert merged[column].equals(alone[column]), column  # seeded: equal, not close
    gates = [
        pd.read_csv(d / "gate.csv")
        .sort_values(["latent_dim", "case", "tensor"])
        .reset_index(drop=True)
        for d in (merged_dir, single_dir)
    ]
    assert len(gates[0]) > 0 and gates[0].equals(gates[1])
    curves = [
        pd.read_csv(d / "curves.csv").sort_values(["latent_dim", "epoch"]).reset_index(drop=True)
        for d in (merged_dir, single_dir)
    ]
    seeded = ["latent_dim", "epoch", "train_elbo", "test_elbo"]
    assert curves[0][seeded].equals(curves[1][seeded])
    merged_env = (merged_dir / "env.json").read_text()
    assert all(f"parts/{i}" in merged_env for i in range(1, 5))
