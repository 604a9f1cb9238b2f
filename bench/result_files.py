"""Reading back results files that another command, another machine or a person may have
damaged: each table is read through ``read_table``, which checks every column its callers
use (present, and each cell of the kind it must be) before any command works with it, and
raises ``ResultsFileError`` naming the file, the line, the column, what the cell holds and what
was expected. The CLI prints that one line and exits 2.

The kinds of cell: ``text``; ``number`` (a float; an empty cell or NaN is a number not
computed); ``count`` (a whole number of at least 0, never empty); ``flag`` (True or False).
What a row must hold beyond its kinds (a finite ELBO for a trained model) its reader checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .tables import ADDED_TABLE_COLUMNS, CURVE_COLUMNS, GATE_COLUMNS, TABLE_COLUMNS

COUNT_MAX = 2**31  # latent sizes, batch sizes, seeds' counts: int32 in every backend


class ResultsFileError(ValueError):
    """A results file that cannot be used as it is; the message says which, where, what was
    expected and what to do."""


# What each table's columns hold. An experiment's table.csv and curves.csv:
EXPERIMENT_TABLE_KINDS = {
    "model": "text",
    "backend": "text",
    "latent_dim": "count",
    "hidden_dim": "count",
    "beta": "number",
    "final_train_elbo": "number",
    "average_train_elbo": "number",
    "final_test_elbo": "number",
    "test_iwae": "number",
    "iwae_k": "count",
    "epochs": "count",
    "train_seconds": "number",
    "seconds_per_epoch": "number",
    "dataset": "text",
    "seed": "count",
    "test_reconstruction": "number",
    "test_kl": "number",
    "train_test_gap": "number",
    "active_units": "number",
    "kl_per_dim": "text",
}
CURVE_KINDS = {
    "dataset": "text",
    "name": "text",
    "model": "text",
    "latent_dim": "count",
    "epoch": "count",
    **{c: "number" for c in CURVE_COLUMNS[5:]},
}
# A run's gate.csv.
GATE_KINDS = {
    "backend": "text",
    "latent_dim": "count",
    "case": "text",
    "tensor": "text",
    "max_abs": "number",
    "max_rel": "number",
    "reference_error": "number",
    "tolerance": "number",
    "fraction": "number",
    "passed": "flag",
    "problem": "text",
}
assert set(EXPERIMENT_TABLE_KINDS) == set(TABLE_COLUMNS)  # one list of columns: tables.py's
assert set(CURVE_KINDS) == set(CURVE_COLUMNS) and set(GATE_KINDS) == set(GATE_COLUMNS)

_FLAGS = {True: True, False: False, "True": True, "False": False}


def numeric_column(
    frame: pd.DataFrame, column: str, where: str, error: type[Exception] = ResultsFileError
) -> pd.Series:
    """``frame[column]`` as numbers (empty cells NaN); ``error`` naming ``where``, the line of
    the first cell that is not a number and what it holds."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise error(
            f"{where}: line {row + 2}: {column} is {frame[column].iloc[row]!r}, not a number"
        )
    return values


def _counts(frame: pd.DataFrame, column: str, where: str) -> pd.Series:
    values = numeric_column(frame, column, where).to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):  # NaN and inf are refused below, not warned of
        bad = ~(
            np.isfinite(values) & (values >= 0) & (values < COUNT_MAX) & (np.mod(values, 1) == 0)
        )
    if bad.any():
        row = int(bad.argmax())
        held = frame[column].iloc[row]
        raise ResultsFileError(
            f"{where}: line {row + 2}: {column} is "
            f"{'empty' if pd.isna(held) else repr(held)}, not a whole "
            f"number from 0 to {COUNT_MAX - 1}"
        )
    return pd.Series(values.astype("int64"), index=frame.index, name=column)


def _flags(frame: pd.DataFrame, column: str, where: str) -> pd.Series:
    values = frame[column].map(lambda v: _FLAGS.get(v))
    if values.isna().any():
        row = int(values.isna().to_numpy().argmax())
        raise ResultsFileError(
            f"{where}: line {row + 2}: {column} is {frame[column].iloc[row]!r}, not True or False"
        )
    return values.astype(bool)


def read_table(
    path: Path, kinds: dict[str, str], required: tuple[str, ...] | None = None, *, redo: str
) -> pd.DataFrame:
    """The CSV table ``path``, every column of ``kinds`` it holds converted to its kind and
    checked, the ``required`` ones (default: all of ``kinds``) present. ``redo`` says what to
    do about a damaged file; ResultsFileError otherwise."""
    path = Path(path)
    try:
        # Every checked column read as the text written, so a message quotes the file.
        frame = pd.read_csv(path, dtype={c: str for c in kinds if kinds[c] != "flag"})
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise ResultsFileError(f"{path}: not a readable table ({error}); {redo}") from None
    missing = [c for c in (kinds if required is None else required) if c not in frame.columns]
    if missing:
        raise ResultsFileError(f"{path}: no column {', '.join(missing)}; {redo}")
    try:
        for column in (c for c in kinds if c in frame.columns):
            kind = kinds[column]
            if kind == "number":
                frame[column] = numeric_column(frame, column, str(path)).astype(float)
            elif kind == "count":
                frame[column] = _counts(frame, column, str(path))
            elif kind == "flag":
                frame[column] = _flags(frame, column, str(path))
    except ResultsFileError as error:
        raise ResultsFileError(f"{error}; {redo}") from None
    return frame


def read_gate(path: Path) -> pd.DataFrame:
    """A run's gate.csv, every column checked."""
    return read_table(path, GATE_KINDS, redo="copy the run again, or rerun it")


def read_experiment_table(path: Path, required: tuple[str, ...] | None = None) -> pd.DataFrame:
    """An experiment's table.csv, its columns checked (``required``: those its reader needs;
    default all but those added since tables were first committed, which a table without
    them gets as not computed)."""
    if required is None:
        required = tuple(c for c in TABLE_COLUMNS if c not in ADDED_TABLE_COLUMNS)
    table = read_table(
        path,
        EXPERIMENT_TABLE_KINDS,
        required,
        redo="rerun that experiment (the same command keeps the models it "
        "finished), or leave it out",
    )
    absent = {c: v for c, v in ADDED_TABLE_COLUMNS.items() if c not in table}
    if "kl_per_dim" in table:
        table["kl_per_dim"] = table.kl_per_dim.fillna("")
    return table.assign(**absent)


def read_curves(path: Path) -> pd.DataFrame:
    """An experiment's curves.csv, its columns checked."""
    return read_table(path, CURVE_KINDS, redo="rerun that experiment, or leave it out")
