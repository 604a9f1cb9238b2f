"""The experiment command end to end on a tiny setting, as a user runs it."""

import json
import math
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.experiment import ExperimentError, ExperimentSpec, run_experiment
from bench.tables import CURVE_COLUMNS, TABLE_COLUMNS, experiment_table
from kernels.cpu_features import usable_cpus
from vae_ref.data import Dataset


def run(*args):
    return main(["experiment", *map(str, args)])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    code = run(
        "--latents", 2, 3, "--ae-latents", 3, "--epochs", 2, "--iwae-k", 5, "--out", out, "--quiet"
    )
    return code, out


def test_experiment_writes_every_promised_file(finished_run):
    code, out = finished_run
    assert code == 0
    expected = {
        "table.csv",
        "table.md",
        "curves.csv",
        "provenance.json",
        "elbo_curves.png",
        "reconstructions_vae-z2.png",
        "reconstructions_vae-z3.png",
        "reconstructions_ae-z3.png",
        "prior_samples_vae-z2.png",
        "prior_samples_vae-z3.png",
        "merge_z3.png",
        "latent_scatter_vae-z2.png",
        "manifold_vae-z2.png",
    }
    present = {p.name for p in out.iterdir() if p.is_file()}
    assert expected <= present, expected - present
    assert not [p for p in out.rglob("*.tmp")]
    for name in expected:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_and_curves_have_the_promised_columns_and_rows(finished_run):
    _, out = finished_run
    table = pd.read_csv(out / "table.csv")
    assert tuple(table.columns) == TABLE_COLUMNS
    assert list(zip(table.model, table.latent_dim)) == [("vae", 2), ("vae", 3), ("ae", 3)]
    assert set(table.dataset) == {"mnist-5k"} and set(table.epochs) == {2}
    vae = table[table.model == "vae"]
    assert vae.test_iwae.notna().all() and (vae.iwae_k == 5).all()
    assert (vae.test_iwae >= vae.final_test_elbo - 1.0).all()  # a tighter bound, up to noise
    assert table[table.model == "ae"].test_iwae.isna().all()
    curves = pd.read_csv(out / "curves.csv")
    assert tuple(curves.columns) == CURVE_COLUMNS
    assert len(curves) == 3 * 2
    md = (out / "table.md").read_text()
    assert "mnist-5k" in md and "| VAE | torch | 2 |" in md and "git_commit" in md
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["dataset"].startswith("mnist-5k") and prov["seed"] == 0


def test_rerun_skips_finished_models_and_refuses_other_settings(finished_run, capsys):
    _, out = finished_run
    before = (out / "table.csv").read_text()
    assert (
        run("--latents", 2, 3, "--ae-latents", 3, "--epochs", 2, "--iwae-k", 5, "--out", out) == 0
    )
    printed = capsys.readouterr().out
    assert printed.count("already finished") == 3
    assert (out / "table.csv").read_text() == before
    assert run("--latents", 2, "--ae-latents", "--epochs", 3, "--out", out, "--quiet") == 2
    err = capsys.readouterr().err
    assert "vae-z2 made with other settings" in err and "--retrain" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--latents", "0"], "expected a positive integer, got 0"),
        (["--epochs", "two"], "expected a positive integer, got 'two'"),
        (["--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["--lr", "-1"], "expected a number > 0"),
        (["--lr", "inf"], "expected a finite number, got inf"),
        (["--lr", "nan"], "expected a finite number, got nan"),
    ],
)
def test_bad_flags_get_a_clear_usage_error(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        run(*args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VAE_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VAE_BENCH_MNIST_DIR", raising=False)
    code = run(
        "--dataset",
        "mnist",
        "--data-dir",
        tmp_path / "nowhere",
        "--no-download",
        "--out",
        tmp_path / "out",
        "--quiet",
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("vae-bench: error:") and "Traceback" not in err
    assert "nowhere" in err


def test_finished_models_are_not_reused_on_other_data(tmp_path, mnist5k):
    # Two data sets of one name: an all-white one, then the real digits.
    def named_mnist(train_x, test_x):
        return Dataset(
            "mnist",
            train_x,
            mnist5k.train_y[:1000],
            test_x,
            mnist5k.test_y[:200],
            "test arrays",
            mnist5k.class_names,
        )

    white = named_mnist(np.ones((1000, 784), np.float32), np.ones((200, 784), np.float32))
    digits = named_mnist(mnist5k.train_x[:1000], mnist5k.test_x[:200])
    spec = ExperimentSpec(
        dataset="mnist", latents=(3,), ae_latents=(), epochs=1, batch_size=500, iwae_k=0
    )
    run_experiment(spec, white, tmp_path, progress=False, log=lambda _: None)
    with pytest.raises(ExperimentError, match="vae-z3 made from other data"):
        run_experiment(spec, digits, tmp_path, progress=False, log=lambda _: None)
    assert json.loads((tmp_path / "provenance.json").read_text())["data_sha256"] == (
        white.fingerprint
    )


def test_divergence_on_the_last_step_fails_and_saves_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    # One step in all (the batch is the whole training set), to weights past float range.
    assert (
        run(
            "--latents",
            2,
            "--ae-latents",
            "--epochs",
            1,
            "--iwae-k",
            0,
            "--lr",
            "1e30",
            "--batch-size",
            4000,
            "--out",
            out,
            "--quiet",
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("vae-bench: training failed: ") and err.count("\n") == 1
    assert "non-finite at epoch 1, step 0" in err
    assert not out.exists()


def test_nan_is_shown_as_nan_not_as_not_computed(mnist5k):
    spec = ExperimentSpec(dataset="mnist-5k", latents=(3,), ae_latents=(20,), iwae_k=5)
    common = {
        "backend": "torch",
        "hidden_dim": 512,
        "epochs": 1,
        "train_seconds": 1.0,
        "seconds_per_epoch": 1.0,
        "dataset": "mnist-5k",
        "seed": 0,
    }
    rows = [
        {
            "model": "vae",
            "latent_dim": 3,
            "beta": 1.0,
            "final_train_elbo": -150.0,
            "average_train_elbo": -160.0,
            "final_test_elbo": math.nan,
            "test_iwae": math.nan,
            "iwae_k": 5,
            **common,
        },
        {
            "model": "ae",
            "latent_dim": 20,
            "beta": math.nan,
            "final_train_elbo": -90.0,
            "average_train_elbo": -95.0,
            "final_test_elbo": -91.0,
            "test_iwae": math.nan,
            "iwae_k": 0,
            **common,
        },
    ]
    md = experiment_table(
        pd.DataFrame(rows, columns=list(TABLE_COLUMNS)), asdict(spec), mnist5k.describe(), {}
    )
    assert "| VAE | torch | 3 | 1 | 0 | -150.00 | -160.00 | NaN | NaN (5) |" in md
    # Not computed for the AE: its beta, its log p(x), how it uses a latent space it has not.
    assert "| AE | torch | 20 | — | 0 | -90.00 | -95.00 | -91.00 | — | — + — | — | — |" in md


def test_repeated_latents_and_too_many_threads(finished_experiment):
    out, err = finished_experiment
    cpus = usable_cpus()
    assert "vae-bench: note: --latents repeats a value; using 3" in err
    assert list(pd.read_csv(out / "table.csv").latent_dim) == [3]
    assert (
        f"vae-bench: warning: --threads {cpus + 7} is more than the {cpus} CPUs this "
        f"process may use; using {cpus}"
    ) in err
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["torch_threads"] == cpus and provenance["spec"]["threads"] == cpus


# Two VAEs trained in seconds (one epoch, a 16-unit hidden layer, no importance sampling).
TWO_SMALL_VAES = dict(
    dataset="mnist-5k",
    latents=(2, 3),
    ae_latents=(),
    epochs=1,
    batch_size=1000,
    iwae_k=0,
    hidden_dim=16,
)


def test_the_log_says_which_model_of_how_many_and_the_time_left(mnist5k, tmp_path):
    """An experiment said 'training 50 epochs' per model and nothing of how many were left
    (issue 40, part 6); a resumed one counts only the models it still trains."""
    import re

    spec = ExperimentSpec(**TWO_SMALL_VAES)
    said: list[str] = []
    run_experiment(spec, mnist5k, tmp_path, progress=False, log=said.append)
    starts = [s for s in said if "to train" in s]
    assert starts[0] == "vae-z2: model 1 of 2 to train; training 1 epochs on mnist-5k"
    assert re.fullmatch(
        r"vae-z3: model 2 of 2 to train; about \d+ s left; training 1 epochs "
        r"on mnist-5k",
        starts[1],
    )

    wider = ExperimentSpec(**{**asdict(spec), "latents": (2, 3, 4)})
    said.clear()
    run_experiment(wider, mnist5k, tmp_path, progress=False, log=said.append)
    assert [s for s in said if "to train" in s] == [
        "vae-z4: model 1 of 1 to train; training 1 epochs on mnist-5k"
    ]
    assert sum("already finished" in s for s in said) == 2


def test_an_experiment_records_the_commit_it_found_not_its_own_writes(
    mnist5k, tmp_path, monkeypatch
):
    """Resumed in a results directory inside the checkout, an experiment's own writes (the
    tables after each model, then the figures) left the checkout modified, and the tables
    written after them recorded the commit as "+dirty"."""
    from bench import provenance

    spec = ExperimentSpec(**TWO_SMALL_VAES)
    run_experiment(spec, mnist5k, tmp_path, progress=False, log=lambda _: None)
    asked = []

    def commit_as_git_sees_it() -> str:  # clean until the experiment first writes
        asked.append(1)
        return "abc1234" if (tmp_path / "table.md").stat().st_mtime_ns == first else "abc1234+dirty"

    first = (tmp_path / "table.md").stat().st_mtime_ns
    monkeypatch.setattr(provenance, "git_commit", commit_as_git_sees_it)
    run_experiment(spec, mnist5k, tmp_path, progress=False, log=lambda _: None)
    assert (
        asked and json.loads((tmp_path / "provenance.json").read_text())["git_commit"] == "abc1234"
    )
    assert "abc1234+dirty" not in (tmp_path / "table.md").read_text()


def test_each_vae_says_how_much_of_its_latent_space_it_uses(finished_run):
    """Issue 41's columns: the test ELBO's terms, the train-test gap, the active units and
    the KL of each dimension, which sum to the KL term."""
    _, out = finished_run
    table = pd.read_csv(out / "table.csv")
    vae = table[table.model == "vae"]
    assert list(vae.final_test_elbo) == pytest.approx(
        list(-(vae.test_reconstruction + vae.test_kl))
    )
    assert ((vae.active_units >= 0) & (vae.active_units <= vae.latent_dim)).all()
    for row in vae.itertuples():
        kl = np.array(row.kl_per_dim.split(), float)
        assert len(kl) == row.latent_dim and (kl >= 0).all()
        assert kl.sum() == pytest.approx(row.test_kl, rel=1e-4)
    assert table.train_test_gap.notna().all()
    ae = table[table.model == "ae"]
    assert ae.active_units.isna().all() and ae.kl_per_dim.isna().all()
    md = (out / "table.md").read_text()
    assert "| active units |" in md and " of 2 |" in md


def test_a_model_saved_before_those_columns_gets_them_from_its_weights(tmp_path, mnist5k):
    spec = ExperimentSpec(
        dataset="mnist-5k",
        latents=(2,),
        ae_latents=(),
        epochs=1,
        batch_size=1000,
        iwae_k=0,
        hidden_dim=16,
    )
    first = run_experiment(spec, mnist5k, tmp_path, progress=False, log=lambda _: None)
    cell = tmp_path / "cells" / "vae-z2.json"
    record = json.loads(cell.read_text())
    for column in ("active_units", "kl_per_dim", "train_test_gap"):
        del record["summary"][column]
    cell.write_text(json.dumps(record))
    said = []
    again = run_experiment(spec, mnist5k, tmp_path, progress=False, log=said.append)
    assert any("already finished" in s for s in said)  # reused, not retrained
    assert again.active_units.iloc[0] == first.active_units.iloc[0]
    assert again.kl_per_dim.iloc[0] == first.kl_per_dim.iloc[0]
    assert again.train_test_gap.iloc[0] == pytest.approx(first.train_test_gap.iloc[0])


GRID = dict(
    dataset="mnist-5k",
    latents=(2, 3),
    ae_latents=(2,),
    epochs=1,
    batch_size=1000,
    iwae_k=0,
    hidden_dim=16,
    betas=(0.5, 2.0),
    seeds=(0, 1),
)
TIMES = ["train_seconds", "seconds_per_epoch"]  # the only columns a rerun may change


def test_a_grid_trains_every_latent_size_beta_and_seed_once(tmp_path, mnist5k):
    spec = ExperimentSpec(**GRID)
    table = run_experiment(spec, mnist5k, tmp_path, progress=False, log=lambda _: None)
    vae = table[table.model == "vae"]
    assert sorted(zip(vae.latent_dim, vae.beta, vae.seed)) == sorted(
        (z, b, s) for z in (2, 3) for b in (0.5, 2.0) for s in (0, 1)
    )
    assert sorted(table[table.model == "ae"].seed) == [0, 1]
    names = {p.stem for p in (tmp_path / "cells").glob("*.json")}
    assert "vae-z2-beta0.5-seed1" in names and "ae-z2-seed0" in names and len(names) == 10
    # Each model's own figures for the first seed only; the merge figure beside beta = 0.5.
    assert (tmp_path / "reconstructions_vae-z3-beta2-seed0.png").exists()
    assert not (tmp_path / "reconstructions_vae-z3-beta2-seed1.png").exists()
    assert (tmp_path / "merge_z2.png").exists()


def test_a_grid_resumed_after_an_interruption_gives_the_same_table(tmp_path, mnist5k, monkeypatch):
    """Issue 41: the grid resumable model by model, as the latent sizes were."""
    import bench.experiment

    spec = ExperimentSpec(**GRID)
    whole = run_experiment(spec, mnist5k, tmp_path / "whole", progress=False, log=lambda _: None)
    train_one, trained = bench.experiment._train_one, []

    def interrupted(config, *args, **kwargs):
        if len(trained) == 4:
            raise KeyboardInterrupt
        trained.append(config)
        return train_one(config, *args, **kwargs)

    monkeypatch.setattr(bench.experiment, "_train_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(spec, mnist5k, tmp_path / "cut", progress=False, log=lambda _: None)
    monkeypatch.setattr(bench.experiment, "_train_one", train_one)
    said: list[str] = []
    resumed = run_experiment(spec, mnist5k, tmp_path / "cut", progress=False, log=said.append)
    assert sum("already finished" in s for s in said) == 4
    pd.testing.assert_frame_equal(resumed.drop(columns=TIMES), whole.drop(columns=TIMES))


def test_beta_and_seed_keep_their_one_value_forms(tmp_path, capsys, tiny_experiment):
    out = tmp_path / "out"
    assert (
        main([*tiny_experiment, "--latents", "2", "--beta", "2", "--seed", "3", "--out", str(out)])
        == 0
    )
    table = pd.read_csv(out / "table.csv")
    assert list(table.beta) == [2.0] and list(table.seed) == [3]
    assert (out / "cells" / "vae-z2-beta2.json").exists()  # one seed: no seed in the name
    spec = json.loads((out / "provenance.json").read_text())["spec"]
    assert spec["betas"] == [2.0] and spec["seeds"] == [3]


def test_the_grid_figures_show_where_capacity_stops_being_used(tmp_path, mnist5k, monkeypatch):
    from bench import figures

    drawn = {}
    save = figures.save
    monkeypatch.setattr(
        figures, "save", lambda fig, path: (drawn.__setitem__(path.name, fig), save(fig, path))
    )
    spec = ExperimentSpec(**GRID)
    table = run_experiment(spec, mnist5k, tmp_path, progress=False, log=lambda _: None)
    vae = table[table.model == "vae"]
    elbo = drawn["elbo_by_latent.png"].axes[0]
    assert [c.get_label() for c in elbo.containers] == [
        "beta = 0.5 (2 seeds)",
        "beta = 2 (2 seeds)",
    ]
    line = elbo.containers[0].lines[0]  # beta 0.5: the mean over the two seeds at z = 2, 3
    expected = vae[vae.beta == 0.5].groupby("latent_dim").final_test_elbo.mean()
    assert list(line.get_xdata()) == [2, 3]
    assert list(line.get_ydata()) == pytest.approx(list(expected))
    units = drawn["active_units_by_latent.png"].axes[0]
    assert units.lines[0].get_label() == "every unit active"
    assert list(units.lines[0].get_ydata()) == [2, 3]
    kl = drawn["kl_per_dimension_z3.png"].axes[0]
    first = vae[(vae.beta == 2.0) & (vae.latent_dim == 3) & (vae.seed == 0)].kl_per_dim.iloc[0]
    plotted = kl.lines[1].get_ydata()  # beta 2, sorted largest first
    assert list(plotted) == pytest.approx(
        sorted(np.maximum(np.array(first.split(), float), 1e-6), reverse=True)
    )
    assert (tmp_path / "kl_per_dimension_z3.png").read_bytes()[:4] == b"\x89PNG"
