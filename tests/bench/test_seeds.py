"""``vae-bench seeds``: a backend's final ELBO against the reference's over seeds; a backend
that is off by more than seed noise fails; runs that cannot be compared are refused in a line."""

import json

import pandas as pd
import pytest
from seed_experiments import experiment_dir, runs

from bench.cli import main


def test_a_backend_within_seed_noise_passes_and_the_summary_is_written(tmp_path, capsys):
    assert main(["seeds", *map(str, runs(tmp_path)), "--out", str(tmp_path / "out")]) == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Verdict: within the noise of seeds" in summary
    assert "| 20 | 3 |" in summary and "vae-bench experiment --seed 2" in summary
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 12
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["runs"]


def test_a_backend_five_nats_off_fails(tmp_path):
    assert (
        main(["seeds", *map(str, runs(tmp_path, shift=-5.0)), "--out", str(tmp_path / "out")]) == 1
    )
    assert "NOT within" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: runs(root, seeds=(0, 1)), "3 or more distinct seeds"),
        (lambda root: runs(root)[:3], "need runs by the reference"),
        (
            lambda root: runs(root)[:5] + [experiment_dir(root, "numba", 9, epochs=5)],
            "differ in more than seed and backend",
        ),
        (lambda root: [root], "not a finished experiment directory"),
    ],
)
def test_runs_that_cannot_be_compared_are_refused_in_one_line(tmp_path, capsys, make, message):
    assert main(["seeds", *map(str, make(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def corrupt(run, column, value):
    table = pd.read_csv(run / "table.csv")
    table[column] = table[column].astype(object)
    table.loc[0, column] = value
    table.to_csv(run / "table.csv", index=False)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda run: corrupt(run, "final_test_elbo", float("nan")),
            "z = 2, seed 0 has test ELBO nan, not a finite number",
        ),
        (lambda run: corrupt(run, "final_test_elbo", ""), "has test ELBO nan, not a finite number"),
        (
            lambda run: corrupt(run, "final_test_elbo", "garbage"),
            "line 2: final_test_elbo is 'garbage', not a number",
        ),
        (
            lambda run: corrupt(run, "latent_dim", "inf"),
            "line 2: latent_dim is 'inf', not a whole number from 0 to 2147483647",
        ),
        (lambda run: corrupt(run, "seed", 0.5), "line 2: seed is '0.5', not a whole number"),
        (lambda run: corrupt(run, "seed", -1), "line 2: seed is '-1', not a whole number"),
        (
            lambda run: (run / "table.csv").write_text("model,latent_dim\nvae,2\n"),
            "no column seed, final_test_elbo",
        ),
        (
            lambda run: (run / "provenance.json").write_text(json.dumps({"spec": "torch"})),
            "its spec is not an experiment's",
        ),
        (
            lambda run: (run / "provenance.json").write_text(json.dumps({"spec": {"seed": 0}})),
            "its spec is not an experiment's",
        ),
    ],
)
def test_a_damaged_or_unfinished_run_is_refused_in_one_line_not_dropped(
    tmp_path, capsys, damage, message
):
    """A seed run with a missing or non-finite ELBO was silently left out of the mean while
    the count still said 3; a spec without its backend was a KeyError."""
    compared = runs(tmp_path)
    damage(compared[0])
    out = tmp_path / "out"
    assert main(["seeds", *map(str, compared), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert str(compared[0]) in err and not out.exists()


def test_seeds_never_writes_over_a_run_it_reads_nor_into_another_kind_of_directory(
    tmp_path, capsys
):
    compared = runs(tmp_path)
    before = {p: (p / "provenance.json").read_bytes() for p in compared}
    for out in (compared[0], tmp_path):  # an input; a directory holding the inputs
        assert main(["seeds", *map(str, compared), "--out", str(out)]) == 2
        assert "which it would overwrite" in capsys.readouterr().err
    other = tmp_path / "someone's"
    other.mkdir()
    (other / "notes.csv").write_text("a,b\n")
    assert main(["seeds", *map(str, compared), "--out", str(other)]) == 2
    assert "refusing to write there" in capsys.readouterr().err
    assert {p: (p / "provenance.json").read_bytes() for p in compared} == before
    # Its own directory it rewrites.
    out = tmp_path / "out"
    assert main(["seeds", *map(str, compared), "--out", str(out)]) == 0
    assert main(["seeds", *map(str, compared), "--out", str(out)]) == 0
