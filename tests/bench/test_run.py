"""The harness end to end on a tiny sweep: outputs, resume, shard + merge, and compare's
exit status on identical runs, injected regressions and malformed input."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from checkout import RESULTS

from bench.cli import main
from bench.run import RunError, RunSpec, merge, parse_shard, run, shard_latents
from bench.tables import RESULT_COLUMNS

KEY = ["backend", "latent_dim", "batch_size"]


def tiny_spec(**changes):
    spec = dict(
        dataset="mnist-5k",
        backends=("torch", "numba"),
        latents=(2, 3),
        batch_sizes=(64,),
        epochs=1,
        repeats=2,
        steps=2,
        gate_steps=2,
        iwae_k=4,
    )
    return RunSpec(**(spec | changes))


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def full_run_and_log(tmp_path_factory, mnist5k):
    out = tmp_path_factory.mktemp("run") / "all"
    said = []
    table = run(tiny_spec(), mnist5k, out, progress=False, log=said.append)
    return out, table, said


@pytest.fixture(scope="module")
def full_run(full_run_and_log):
    return full_run_and_log[:2]


def test_a_run_says_which_latent_size_of_how_many_and_the_time_left(full_run_and_log):
    """`run` printed `timing torch, numba, ...` and then nothing until the timing ended; the
    GEMM peak's measurement was silent."""
    said = full_run_and_log[2]
    assert said[0] == "measuring this machine's GEMM peak (the % peak columns' yardstick)"
    assert "z=2: latent size 1 of 2" in said
    (second,) = [s for s in said if s.startswith("z=3: latent size 2 of 2; about ")]
    assert re.fullmatch(r"z=3: latent size 2 of 2; about \d+ (s|min) left", second), second
    # Each round of interleaved windows but the last (2 here), with the time left.
    assert re.fullmatch(
        r"batch 64: 1 of 2 rounds of windows timed; about \d+ s left",
        next(s for s in said if "rounds of windows" in s).split(": ", 1)[1],
    )


def test_results_json_holds_every_row_window_and_gate_tensor(full_run):
    """Every run writes results.json beside results.csv (issue 40, part 1): the windows as
    numbers, not a space-separated string in a CSV cell."""
    import jsonschema

    from bench.export import document_json_schema

    out, table = full_run
    document = json.loads((out / "results.json").read_text())
    jsonschema.validate(document, document_json_schema())
    assert document["provenance"] == json.loads((out / "env.json").read_text())
    csv = pd.read_csv(out / "results.csv")
    assert [(r["backend"], r["latent_dim"]) for r in document["rows"]] == list(
        zip(csv.backend, csv.latent_dim)
    )
    for row, text in zip(document["rows"], csv.window_samples_per_s):
        assert row["window_samples_per_s"] == [float(v) for v in text.split()]
        assert len(row["window_samples_per_s"]) == 2  # repeats=2
    assert len(document["gate"]) == len(pd.read_csv(out / "gate.csv")) > 0


def test_the_time_left_is_the_mean_so_far_times_what_is_left():
    from bench.progress import eta_text

    assert eta_text([], 3) == ""
    assert eta_text([10.0, 20.0], 2) == "; about 30 s left"
    assert eta_text([60.0, 120.0], 3) == "; about 4 min left"


def test_log_lines_off_a_terminal_carry_the_time_of_day(capsys):
    from bench.progress import write

    write("z=2: timing torch")  # pytest's captured stdout is not a terminal
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] z=2: timing torch\n", capsys.readouterr().out)


@pytest.mark.slow
def test_run_writes_every_promised_output(full_run):
    out, table = full_run
    for name in (
        "results.csv",
        "curves.csv",
        "gate.csv",
        "env.json",
        "summary.md",
        "report.html",
        "throughput.png",
        "speedup.png",
        "elbo_curves.png",
    ):
        assert (out / name).exists(), name
    # The gate's every tensor is kept for the report, which the run writes itself.
    gate = pd.read_csv(out / "gate.csv")
    assert set(gate.backend) == {"torch", "numba"} and set(gate.latent_dim) == {2, 3}
    assert gate.passed.all() and (gate.fraction <= 1).all()
    page = (out / "report.html").read_text()
    assert "every tensor compared" in page and "grad.enc.fc1.weight" in page
    written = pd.read_csv(out / "results.csv")
    assert tuple(written.columns) == RESULT_COLUMNS
    assert sorted(map(tuple, written[KEY].values.tolist())) == [
        ("numba", 2, 64),
        ("numba", 3, 64),
        ("torch", 2, 64),
        ("torch", 3, 64),
    ]
    assert set(written.agreement) == {"pass"}
    assert (written.samples_per_s > 0).all() and written.final_test_elbo.notna().all()
    assert (written.peak_memory_mb > 0).all()  # memory in every timed row
    # Every timed window is kept, in order; the row's figures are the windows' (its samples/s
    # is the batch over the median ms/step).
    windows = written.window_samples_per_s.map(lambda text: np.array(text.split(), float))
    assert (windows.map(len) == 2).all()
    assert np.allclose(
        windows.map(lambda w: 64 / np.median(64 / w)), written.samples_per_s, rtol=1e-5
    )
    assert np.allclose(windows.map(min), written.samples_per_s_min, rtol=1e-5)
    env = json.loads((out / "env.json").read_text())
    assert env["gemm_peak_gflops"] > 0 and env["spec"]["latents"] == [2, 3]
    summary = (out / "summary.md").read_text()
    assert "speed-up vs eager" in summary and "| numba | 2 | pass |" in summary
    assert "memory MB" in summary
    # Each backend's settings as it was timed are recorded with its cell and in the summary.
    assert "## Backends as they ran" in summary and "- **numba**: numba " in summary
    cell = json.loads((out / "cells" / "z2.json").read_text())
    assert cell["settings"]["numba"]["precision"] == "float32"
    assert cell["settings"]["torch"]["torch_threads"] >= 1


def test_rerun_needs_resume_and_then_skips_finished_cells(full_run, mnist5k):
    out, table = full_run
    with pytest.raises(RunError, match="pass --resume"):
        run(tiny_spec(), mnist5k, out, progress=False, log=quiet)
    with pytest.raises(RunError, match="other settings"):
        run(tiny_spec(epochs=2), mnist5k, out, resume=True, progress=False, log=quiet)
    said = []
    again = run(tiny_spec(), mnist5k, out, resume=True, progress=False, log=said.append)
    assert sum("already done" in s for s in said) == 2
    pd.testing.assert_frame_equal(again, table)


def test_resume_needs_the_same_data_not_only_its_name(full_run, mnist5k):
    out, _ = full_run
    from vae_ref.data import Dataset

    other = Dataset(
        mnist5k.name,
        mnist5k.train_x[::-1].copy(),
        mnist5k.train_y[::-1].copy(),
        mnist5k.test_x,
        mnist5k.test_y,
        mnist5k.source,
        mnist5k.class_names,
    )
    with pytest.raises(RunError, match="holds a run on other data"):
        run(tiny_spec(), other, out, resume=True, progress=False, log=quiet)


def test_a_spec_repeating_a_backend_or_latent_size_is_refused():
    for repeated in ({"backends": ("torch", "torch")}, {"latents": (2, 3, 2)}):
        with pytest.raises(RunError, match="repeat"):
            tiny_spec(**repeated)


@pytest.mark.slow
def test_two_shards_merged_equal_the_unsharded_rows(full_run, tmp_path, mnist5k):
    out, table = full_run
    assert parse_shard("2/2") == (2, 2) and shard_latents((2, 3, 4), (1, 2)) == (2, 4)
    for bad in ("0/2", "3/2", "x"):
        with pytest.raises(RunError, match="--shard"):
            parse_shard(bad)
    parts = []
    for i in (1, 2):
        part = tmp_path / f"part{i}"
        run(tiny_spec(), mnist5k, part, shard=(i, 2), progress=False, log=quiet)
        parts.append(part)
    merged = merge(parts, tmp_path / "merged")
    assert sorted(map(tuple, merged[KEY].values.tolist())) == sorted(
        map(tuple, table[KEY].values.tolist())
    )
    # Parts from different settings are refused unless forced; overlapping parts always.
    env = json.loads((parts[1] / "env.json").read_text())
    env["spec"]["epochs"] = 9
    (parts[1] / "env.json").write_text(json.dumps(env))
    with pytest.raises(RunError, match="differs .* in spec"):
        merge(parts, tmp_path / "refused")
    merge(parts, tmp_path / "forced", allow_differences=True)
    # So are parts timed on CPUs with other instruction sets: their speeds are not one run's.
    env["spec"]["epochs"] = json.loads((parts[0] / "env.json").read_text())["spec"]["epochs"]
    env["cpu_isa"] = [*env["cpu_isa"], "amx_tile"] if "amx_tile" not in env["cpu_isa"] else []
    (parts[1] / "env.json").write_text(json.dumps(env))
    with pytest.raises(RunError, match="differs .* in cpu_isa"):
        merge(parts, tmp_path / "refused-isa")
    with pytest.raises(RunError, match="must be disjoint"):
        merge([parts[0], parts[0]], tmp_path / "overlap")


@pytest.mark.slow
def test_unavailable_backend_is_listed_with_its_reason(
    tmp_path, mnist5k, monkeypatch, fast_gemm_peak
):
    import kernels
    from kernels.base import Availability

    class Absent:
        name, description, device = "absent", "a backend this machine lacks", "cpu"

        def availability(self):
            return Availability(False, "no such device here")

    monkeypatch.setitem(kernels.BACKENDS, "absent", lambda **_: Absent())
    # Beside one backend that runs (the cheapest settings: no Adam-steps gate case, 8 steps).
    table = run(
        tiny_spec(
            backends=("torch", "absent"),
            latents=(2,),
            batch_sizes=(500,),
            repeats=1,
            gate_steps=0,
            iwae_k=0,
        ),
        mnist5k,
        tmp_path / "r",
        progress=False,
        log=quiet,
    )
    [row] = table[table.backend == "absent"].to_dict("records")
    assert row["agreement"] == "unavailable" and row["note"] == "no such device here"
    # With no backend available there is nothing to run: refused, nothing written.
    with pytest.raises(RunError, match="nothing to run: .*absent: no such device here"):
        run(
            tiny_spec(backends=("absent",), latents=(2,)),
            mnist5k,
            tmp_path / "none",
            progress=False,
            log=quiet,
        )
    assert not (tmp_path / "none").exists()


def test_compare_exit_status(full_run, tmp_path, capsys):
    out, _ = full_run
    assert main(["compare", str(out), str(out)]) == 0
    assert "no regression" in capsys.readouterr().out

    slower = pd.read_csv(out / "results.csv")
    slower.loc[slower.backend == "numba", "samples_per_s"] *= 0.5
    slower.to_csv(tmp_path / "slower.csv", index=False)
    # Two windows a row are too few for the significance test: undecided, not a pass.
    assert main(["compare", str(out), str(tmp_path / "slower.csv")]) == 3
    printed = capsys.readouterr().out
    assert "REGRESSION" not in printed and "undecided: too few timed windows" in printed
    assert main(["compare", str(out), str(tmp_path / "slower.csv"), "--threshold-only"]) == 1
    printed = capsys.readouterr().out
    assert "REGRESSION" in printed
    assert "numba z=2 batch=64: speed-up over PyTorch eager 0.50x" in printed
    # Within a looser gate the same change passes.
    assert (
        main(["compare", str(out), str(tmp_path / "slower.csv"), "--fail-throughput", "60%"]) == 0
    )

    # The yardstick itself is gated only with --absolute: runs drift as a whole.
    drift = pd.read_csv(out / "results.csv")
    drift["samples_per_s"] *= 0.6
    drift.to_csv(tmp_path / "drift.csv", index=False)
    assert main(["compare", str(out), str(tmp_path / "drift.csv")]) == 0
    # Two windows a row: too few to test the drop, undecided (3), not a pass.
    assert main(["compare", str(out), str(tmp_path / "drift.csv"), "--absolute"]) == 3
    assert "torch z=2 batch=64: samples/s 0.60x" in capsys.readouterr().out

    worse = pd.read_csv(out / "results.csv")
    worse.loc[worse.backend == "torch", "final_test_elbo"] -= 2.0
    worse.loc[worse.backend == "numba", "agreement"] = "fail"
    worse.to_csv(tmp_path / "worse.csv", index=False)
    assert main(["compare", str(out), str(tmp_path / "worse.csv"), "--fail-elbo", "0.5"]) == 1
    printed = capsys.readouterr().out
    assert "test ELBO -2.00 nats" in printed and "agreement pass -> fail" in printed


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such results file"),
        ("backend,latent_dim\nnumba,2\n", "not a results table of this schema"),
        ("\x00\x01garbage", "not a results table"),
    ],
)
def test_compare_refuses_unusable_input_with_status_2(full_run, tmp_path, capsys, content, message):
    out, _ = full_run
    bad = tmp_path / "bad.csv"
    if content is not None:
        bad.write_text(content)
    assert main(["compare", str(out), str(bad)]) == 2
    assert message in capsys.readouterr().err


def test_speedups_are_over_eager_pytorch_on_the_same_device():
    from bench import tables

    table = pd.DataFrame(
        {
            "backend": ["torch", "numba", "torch-cuda", "cupy", "cupy"],
            "device": ["cpu", "cpu", "cuda", "cuda", "cuda"],
            "latent_dim": [20, 20, 20, 20, 50],
            "batch_size": [128] * 5,
            "samples_per_s": [1000.0, 1700.0, 20000.0, 200000.0, 1.0],
        }
    )
    speedup = tables.speedup(table).tolist()
    assert speedup[:4] == [1.0, 1.7, 1.0, 10.0] and np.isnan(speedup[4])  # no z=50 yardstick
    # Tables written before the device column are CPU runs.
    assert tables.speedup(table.drop(columns="device")).tolist()[:2] == [1.0, 1.7]


def test_compare_reads_tables_written_before_the_gpu_columns(capsys):
    committed = RESULTS / "run-full-mnist-5k"
    assert main(["compare", str(committed), str(committed)]) == 0
    assert "no regression" in capsys.readouterr().out


@pytest.mark.slow
def test_a_batch_size_sweep_draws_the_scaling_figure_with_its_gemm_ceiling(tmp_path, mnist5k):
    spec = tiny_spec(backends=("numba",), latents=(2,), batch_sizes=(32, 16, 64), iwae_k=0)
    table = run(spec, mnist5k, tmp_path / "sweep", progress=False, log=lambda _: None)
    # Every row carries the ceiling of its own batch size. (Not compared with the step's time:
    # on shared cores a window of either can be disturbed; that is the benchmarks' business.)
    assert (table.gemm_only_ms > 0).all() and sorted(table.batch_size) == [16, 32, 64]
    assert (tmp_path / "sweep" / "scaling_z2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "its 11 GEMMs alone" in (tmp_path / "sweep" / "summary.md").read_text()


def test_a_run_of_some_stages_refuses_a_selection_the_pipeline_cannot_run():
    """RunSpec.stages (gpu-check times in one stage and trains in another) is checked as the
    pipeline checks a selection: by name, and evaluate only after train."""
    assert RunSpec(dataset="d", backends=("torch",), stages=("gate", "time")).stages == (
        "gate",
        "time",
    )
    with pytest.raises(RunError, match="evaluate needs train"):
        RunSpec(dataset="d", backends=("torch",), stages=("gate", "evaluate"))
    with pytest.raises(RunError, match="unknown stages"):
        RunSpec(dataset="d", backends=("torch",), stages=("gate", "timing"))
