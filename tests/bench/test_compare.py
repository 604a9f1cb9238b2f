"""``vae-bench compare`` fails closed: a broken or incomparable NEW run is a regression (exit 1)
unless a flag says the change is intended, and input that is not a results table is refused
with one line (exit 2). OLD is the committed mnist-5k run; NEW is a damaged copy of it."""

import json

import numpy as np
import pandas as pd
import pytest
from checkout import RESULTS

from bench.cli import main

COMMITTED = RESULTS / "run-full-mnist-5k"


@pytest.fixture
def table():
    return pd.read_csv(COMMITTED / "results.csv")


def compare(capsys, old, new, *flags):
    code = main(["compare", str(old), str(new), *flags])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def saved(tmp_path, table, name="new.csv"):
    path = tmp_path / name
    table.to_csv(path, index=False)
    return path


def test_a_header_only_table_is_a_regression(tmp_path, capsys, table):
    code, out, _ = compare(capsys, COMMITTED, saved(tmp_path, table.iloc[:0]))
    assert code == 1
    assert "numba z=2 batch=128: in OLD, missing from NEW" in out
    assert "nothing compared" in out


def test_removed_rows_pass_only_when_allowed(tmp_path, capsys, table):
    fewer = saved(tmp_path, table[table.backend != "torch-compile"])
    code, out, _ = compare(capsys, COMMITTED, fewer)
    assert code == 1 and "torch-compile z=50 batch=128: in OLD, missing from NEW" in out
    assert compare(capsys, COMMITTED, fewer, "--allow-removed")[0] == 0


def test_a_table_cut_mid_row_is_a_regression(tmp_path, capsys):
    cut = tmp_path / "cut.csv"
    cut.write_bytes((COMMITTED / "results.csv").read_bytes()[:900])
    code, out, _ = compare(capsys, COMMITTED, cut)
    assert code == 1
    assert f"NEW {cut}: cut short: line 4 ends after" in out
    assert "torch z=10 batch=128: in OLD, missing from NEW" in out


def test_a_new_run_without_the_yardstick_is_undecided_not_a_pass(tmp_path, capsys, table):
    # Without torch rows no speed-up can be computed: the throughput gate would be off.
    no_torch = saved(tmp_path, table[table.backend != "torch"])
    assert compare(capsys, COMMITTED, no_torch)[0] == 1  # the torch rows removed
    # Removing the torch rows on purpose still leaves the speed-ups uncomputable.
    code, out, _ = compare(capsys, COMMITTED, no_torch, "--allow-removed")
    assert code == 3 and out.rstrip().splitlines()[-1].startswith("undecided: ")
    assert (
        "numba z=20 batch=128: no speed-up in NEW: its torch row at z=20 batch=128 (the "
        "yardstick) is missing or untimed"
    ) in out
    # Gating raw samples/s needs no yardstick.
    assert compare(capsys, COMMITTED, no_torch, "--allow-removed", "--absolute")[0] == 0


def test_a_nan_test_elbo_is_a_regression(tmp_path, capsys, table):
    table.loc[(table.backend == "numba") & (table.latent_dim == 2), "final_test_elbo"] = np.nan
    code, out, _ = compare(capsys, COMMITTED, saved(tmp_path, table))
    assert code == 1 and "numba z=2 batch=128: test ELBO nan in NEW (was" in out


def test_zero_samples_per_second_is_a_regression(tmp_path, capsys, table):
    # Zero for the yardstick made every speed-up infinite, which passed the gate.
    table.loc[(table.backend == "torch") & (table.latent_dim == 10), "samples_per_s"] = 0.0
    code, out, _ = compare(capsys, COMMITTED, saved(tmp_path, table))
    assert code == 1
    assert "torch z=10 batch=128: samples/s 0 in NEW" in out
    assert "numba z=10 batch=128: no speed-up in NEW" in out


def test_two_runs_with_nothing_in_common_are_a_regression(tmp_path, capsys, table):
    small = saved(tmp_path, table[table.latent_dim <= 10], "small.csv")
    large = saved(tmp_path, table[table.latent_dim > 10], "large.csv")
    code, out, _ = compare(capsys, small, large)
    assert code == 1 and "nothing compared" in out
    # No flag makes a comparison of nothing a pass.
    assert compare(capsys, small, large, "--allow-removed")[0] == 1


def _non_numeric(tmp_path, table):
    table["samples_per_s"] = table["samples_per_s"].astype(object)
    table.loc[3, "samples_per_s"] = "fast"
    return saved(tmp_path, table)


def _duplicate_key(tmp_path, table):
    return saved(tmp_path, pd.concat([table, table.iloc[[2]]]))


def _directory(tmp_path, table):
    (tmp_path / "run" / "results.csv").mkdir(parents=True)
    return tmp_path / "run"


def _garbage_window(tmp_path, table):
    table.loc[3, "window_samples_per_s"] = "garbage"
    return saved(tmp_path, table)


def _infinite_latent(tmp_path, table):
    table["latent_dim"] = table["latent_dim"].astype(float)
    table.loc[3, "latent_dim"] = float("inf")
    return saved(tmp_path, table)


def _negative_batch(tmp_path, table):
    table.loc[3, "batch_size"] = -128
    return saved(tmp_path, table)


@pytest.mark.parametrize(
    "make, message",
    [
        (_non_numeric, "line 5: samples_per_s is 'fast', not a number"),
        # A ValueError and a pandas IntCastingNaNError traceback before (issue 44's table).
        (_garbage_window, "line 5: window_samples_per_s is 'garbage', not samples/s per window"),
        (_infinite_latent, "line 5: latent_dim is inf, not a positive integer"),
        (_negative_batch, "line 5: batch_size is -128, not a positive integer"),
        (_duplicate_key, "numba z=2 batch=128 appears 2 times"),
        (_directory, "results.csv: a directory, not a results table"),
    ],
)
def test_input_that_is_not_a_results_table_is_one_line_and_status_2(
    tmp_path, capsys, table, make, message
):
    damaged = make(tmp_path, table)
    for old, new in ((COMMITTED, damaged), (damaged, COMMITTED)):  # either order
        code, _, err = compare(capsys, old, new)
        assert code == 2
        assert err.startswith("vae-bench: error: ") and err.count("\n") == 1
        assert message in err


# Speed-ups over eager depend on the CPU: runs from different CPUs (each run's env.json) get
# no throughput verdict unless --allow-machine-change; ELBO and agreement are compared anyway.
XEON = "Made-up Xeon with AMX"


def run_dir(tmp_path, table, name="new", **env_changes):
    """A run directory: ``table`` as its results.csv, the committed env.json with changes."""
    out = tmp_path / name
    out.mkdir()
    table.to_csv(out / "results.csv", index=False)
    env = json.loads((COMMITTED / "env.json").read_text()) | env_changes
    (out / "env.json").write_text(json.dumps(env))
    return out


def _halve_numba(table):
    table.loc[table.backend == "numba", "samples_per_s"] /= 2
    return table


def test_runs_from_different_cpus_get_no_throughput_verdict(tmp_path, capsys, table):
    old_cpu = json.loads((COMMITTED / "env.json").read_text())["cpu"]
    slower = run_dir(tmp_path, _halve_numba(table), cpu=XEON)
    code, out, _ = compare(capsys, COMMITTED, slower)
    assert code == 3  # undecided: a refusal, not a pass
    refusal = next(line for line in out.splitlines() if "different CPUs" in line)
    assert f"OLD on {old_cpu!r}, NEW on {XEON!r}" in refusal
    assert "throughput is not compared" in refusal and "--allow-machine-change" in refusal
    assert "speed-up over PyTorch eager" not in out  # the halving is not judged
    assert "no ELBO or agreement regression beyond the gate" in out
    numba_z2 = next(
        line
        for line in out.splitlines()
        if line.startswith("numba  ") and line.split()[1:3] == ["2", "128"]
    )
    elbo = table[(table.backend == "numba") & (table.latent_dim == 2)].final_test_elbo.iloc[0]
    assert f"{elbo:.2f}" in numba_z2 and "+0.00" in numba_z2  # the ELBO columns are shown


def test_elbo_is_still_gated_across_cpus(tmp_path, capsys, table):
    table.loc[(table.backend == "numba") & (table.latent_dim == 2), "final_test_elbo"] -= 5
    code, out, _ = compare(capsys, COMMITTED, run_dir(tmp_path, table, cpu=XEON))
    assert code == 1
    assert "numba z=2 batch=128: test ELBO -5.00 nats" in out
    assert "different CPUs" in out


def test_allow_machine_change_compares_throughput_and_says_the_machines_differ(
    tmp_path, capsys, table
):
    same = run_dir(tmp_path, table, "same", cpu=XEON)
    code, out, _ = compare(capsys, COMMITTED, same, "--allow-machine-change")
    assert code == 0 and "no regression beyond the gate" in out
    assert "different CPUs" in out and "throughput compared anyway" in out
    slower = run_dir(tmp_path, _halve_numba(table), cpu=XEON)
    code, out, _ = compare(capsys, COMMITTED, slower, "--allow-machine-change")
    # It kept no windows (recorded before they were): too few to test, undecided.
    assert code == 3 and "numba z=2 batch=128: speed-up over PyTorch eager 0.50x" in out


def test_other_instruction_sets_on_the_same_model_are_another_cpu(tmp_path, capsys, table):
    old = run_dir(tmp_path, table, "old", cpu_isa=["avx", "avx2", "fma"])
    new = run_dir(tmp_path, table, "new", cpu_isa=["avx", "avx2", "fma", "amx_bf16"])
    code, out, _ = compare(capsys, old, new)
    assert code == 3 and "only NEW: amx_bf16" in out and "throughput is not compared" in out
    # A run recorded before the field existed is judged by its CPU model alone.
    before = run_dir(tmp_path, table, "before")
    env = json.loads((before / "env.json").read_text())
    del env["cpu_isa"]
    (before / "env.json").write_text(json.dumps(env))
    assert compare(capsys, before, new)[0] == 0


def test_the_same_cpu_compares_as_before(tmp_path, capsys, table):
    same = run_dir(tmp_path, table)  # the committed run's own CPU and instruction sets
    code, out, _ = compare(capsys, COMMITTED, same)
    assert code == 0 and "different CPUs" not in out and "note:" not in out
    slower = run_dir(tmp_path, _halve_numba(table), "slower")
    code, out, _ = compare(capsys, COMMITTED, slower)
    # It kept no windows (recorded before they were): too few to test, undecided.
    assert code == 3 and "numba z=2 batch=128: speed-up over PyTorch eager 0.50x" in out


def test_a_damaged_env_json_is_refused_with_status_2(tmp_path, capsys, table):
    new = run_dir(tmp_path, table)
    (new / "env.json").write_text("{not json")
    code, _, err = compare(capsys, COMMITTED, new)
    assert code == 2 and f"{new / 'env.json'}: not a run environment" in err


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"spec": {"epochs": 5}}, "no spec.dataset"),  # a KeyError in merge's summary before
        ({"gemm_peak_gflops": "fast"}, "gemm_peak_gflops is 'fast', not a positive number"),
        ({"logical_cpus": True}, "logical_cpus is True, not an integer"),
        ({"gpu": "H100"}, "no gpu_gemm_peak_gflops"),
    ],
)
def test_an_env_json_missing_or_mistyping_a_field_is_refused_by_each_reader(
    tmp_path, capsys, table, changes, message
):
    damaged = run_dir(tmp_path, table, **changes)
    code, _, err = compare(capsys, COMMITTED, damaged)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert main(["merge", str(damaged), "--out", str(tmp_path / "merged")]) == 2
    assert message in capsys.readouterr().err


def test_the_text_table_s_headers_stand_over_their_columns(capsys):
    """The interval column's header was 7 characters short of its cells: every column after
    it stood under the wrong header."""
    noise = RESULTS / "compare-noise-intel-xeon"
    assert main(["compare", str(noise / "base"), str(noise / "rerun")]) == 0
    table = capsys.readouterr().out.split("\n\n")[0].splitlines()
    header, rows = table[0], table[1:]
    assert rows and {len(row) for row in rows} == {len(header)}
    for label in ("windows (90% CI)", "verdict", "change", "agreement"):
        end = header.index(label) + len(label)  # right-aligned: the cells end where it ends
        assert all(row[end - 1] != " " and row[end : end + 1] in (" ", "") for row in rows), label
