"""The readers of results files (bench/result_files.py): every column a caller uses is present
and of its kind, and a damaged cell is one error naming the file, the line, the column, what
it holds and what to do; report reads an experiment's table.csv and a run's gate.csv through
them."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
from checkout import RESULTS

from bench.cli import main
from bench.result_files import (
    ResultsFileError,
    read_curves,
    read_experiment_table,
    read_gate,
)

EXPERIMENT = RESULTS / "experiment-mnist-5k-50ep"
RUN = RESULTS / "run-scaling-bf16-fashion-mnist"  # a run with its gate.csv


def damaged(tmp_path, source: Path, column: str, value) -> Path:
    """A copy of ``source`` with ``column`` of its first row replaced by ``value``."""
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    table.loc[0, column] = value
    copy = tmp_path / source.name
    table.to_csv(copy, index=False)
    return copy


def test_the_committed_files_read_with_their_kinds():
    table = read_experiment_table(EXPERIMENT / "table.csv")
    assert table.latent_dim.dtype == "int64" and table.final_test_elbo.dtype == float
    curves = read_curves(EXPERIMENT / "curves.csv")
    assert curves.epoch.min() == 1 and curves.epoch.dtype == "int64"
    gate = read_gate(RUN / "gate.csv")
    assert gate.passed.dtype == bool and gate.passed.any()


@pytest.mark.parametrize(
    ("read", "source", "column", "value", "expected"),
    [
        (
            read_experiment_table,
            EXPERIMENT / "table.csv",
            "final_test_elbo",
            "garbage",
            "line 2: final_test_elbo is 'garbage', not a number; rerun that experiment",
        ),
        (
            read_experiment_table,
            EXPERIMENT / "table.csv",
            "latent_dim",
            "2.5",
            "line 2: latent_dim is '2.5', not a whole number from 0 to 2147483647",
        ),
        (
            read_experiment_table,
            EXPERIMENT / "table.csv",
            "seed",
            "-1",
            "line 2: seed is '-1', not a whole number",
        ),
        (
            read_experiment_table,
            EXPERIMENT / "table.csv",
            "epochs",
            "",
            "line 2: epochs is empty, not a whole number",
        ),
        (
            read_curves,
            EXPERIMENT / "curves.csv",
            "epoch",
            "inf",
            "line 2: epoch is 'inf', not a whole number",
        ),
        (
            read_gate,
            RUN / "gate.csv",
            "passed",
            "maybe",
            "line 2: passed is 'maybe', not True or False; copy the run again, or rerun it",
        ),
        (
            read_gate,
            RUN / "gate.csv",
            "tolerance",
            "1e-3x",
            "line 2: tolerance is '1e-3x', not a number",
        ),
    ],
)
def test_a_damaged_cell_is_named_with_its_line_and_what_to_do(
    read, source, column, value, expected, tmp_path
):
    with pytest.raises(ResultsFileError) as error:
        read(damaged(tmp_path, source, column, value))
    assert str(error.value).startswith(str(tmp_path / source.name) + ": " + expected)


def test_an_empty_number_is_a_number_not_computed(tmp_path):
    table = read_experiment_table(damaged(tmp_path, EXPERIMENT / "table.csv", "test_iwae", ""))
    assert table.test_iwae.isna().iloc[0]


def test_missing_columns_are_named_and_only_those_required(tmp_path):
    table = pd.read_csv(EXPERIMENT / "table.csv").drop(columns=["beta", "seed"])
    table.to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(ResultsFileError, match="no column beta, seed; rerun that experiment"):
        read_experiment_table(tmp_path / "table.csv")
    assert len(read_experiment_table(tmp_path / "table.csv", ("model", "latent_dim")))


def test_a_file_that_is_no_table_is_one_error(tmp_path):
    (tmp_path / "gate.csv").write_bytes(b"\x00\xff" * 10)
    with pytest.raises(ResultsFileError, match="gate.csv: "):
        read_gate(tmp_path / "gate.csv")
    with pytest.raises(ResultsFileError, match="not a readable table"):
        read_gate(tmp_path / "absent.csv")


@pytest.mark.parametrize(
    ("source", "name", "column", "value"),
    [
        (EXPERIMENT, "table.csv", "latent_dim", "garbage"),
        (RUN, "gate.csv", "passed", "maybe"),
    ],
)
def test_report_refuses_a_damaged_file_in_one_line(source, name, column, value, tmp_path, capsys):
    copy = shutil.copytree(source, tmp_path / source.name)
    shutil.move(damaged(tmp_path, source / name, column, value), copy / name)
    assert main(["report", str(copy), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{copy / name}: line 2: {column} is " in err, err
    assert not (tmp_path / "report").exists()
