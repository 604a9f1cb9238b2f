"""One run's results table (results.csv) read back, with the run's env.json beside it: the
one reader that compare, report and export share. It fails closed: a table cut short mid-row
is read without its last row and says so (``Results.cut_short``); anything else that is not a
results table of this schema (unreadable, a directory, a cell that is not a number, a key
twice, sizes that are not sizes) is refused with ResultsTableError naming the line."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import file_names as files
from . import provenance, tables
from .result_files import numeric_column
from .tables import ADDED_COLUMNS, KEYS, RESULT_COLUMNS, TEXT_COLUMNS


class ResultsTableError(ValueError):
    """A results table that cannot be read as one (missing file, other schema, damage)."""


@dataclass(frozen=True)
class Results:
    """One run's results table as read for comparison."""

    source: Path  # the results.csv read
    table: pd.DataFrame  # its complete rows
    cut_short: str | None = None  # where the file ends mid-row, if it does
    env: dict | None = None  # the run's provenance (env.json beside the table); None if none


def _read_text(csv_path: Path) -> str:
    if not csv_path.exists():
        raise ResultsTableError(
            f"{csv_path}: no such results file (give a run directory or its results.csv)"
        )
    if csv_path.is_dir():
        raise ResultsTableError(f"{csv_path}: a directory, not a results table")
    try:
        return csv_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ResultsTableError(f"{csv_path}: not a readable results table ({error})") from None


def _cut_short(text: str) -> tuple[str, str | None]:
    """The text without a last row cut off mid-row, and where it was cut (None if not)."""
    lines = text.splitlines(keepends=True)
    if len(lines) < 2 or text.endswith("\n"):
        return text, None
    header = next(csv.reader([lines[0]]))
    last = next(csv.reader([lines[-1]]), [])
    if len(last) >= len(header):
        return text, None
    return "".join(lines[:-1]), (
        f"cut short: line {len(lines)} ends after {len(last)} of {len(header)} fields"
    )


def load_results(path: Path) -> Results:
    path = Path(path)
    csv_path = path / files.RESULTS if path.is_dir() else path
    text, cut = _cut_short(_read_text(csv_path))
    try:
        table = pd.read_csv(io.StringIO(text), dtype={c: str for c in TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ResultsTableError(f"{csv_path}: not a readable results table ({error})") from None
    absent = [c for c in ADDED_COLUMNS if c not in table]
    if absent and set(table.columns) | set(absent) == set(RESULT_COLUMNS):
        # A table written before these columns existed: fill in what it implies.
        table = table.assign(**{c: ADDED_COLUMNS[c] for c in absent})[list(RESULT_COLUMNS)]
    if tuple(table.columns) != RESULT_COLUMNS:
        missing = [c for c in RESULT_COLUMNS if c not in table.columns]
        extra = [c for c in table.columns if c not in RESULT_COLUMNS]
        raise ResultsTableError(
            f"{csv_path}: not a results table of this schema (missing columns: "
            f"{', '.join(missing) or 'none'}; unexpected: "
            f"{', '.join(extra) or 'none'})"
        )
    for column in RESULT_COLUMNS:
        if column in TEXT_COLUMNS:
            continue
        table[column] = numeric_column(table, column, str(csv_path), ResultsTableError).astype(
            float
        )
    for column in KEYS:
        if table[column].isna().any():
            row = int(table[column].isna().to_numpy().argmax())
            raise ResultsTableError(f"{csv_path}: line {row + 2}: no {column}")
    _check_rows(table, csv_path)
    twice = table[table.duplicated(KEYS, keep=False)]
    if len(twice):
        r = twice.iloc[0]
        raise ResultsTableError(
            f"{csv_path}: {row_key(r)} appears {len(twice[_same_key(twice, r)])} "
            "times; a results table has one row per (backend, latent size, "
            "batch size)"
        )
    table = table.astype({"latent_dim": int, "batch_size": int})
    return Results(csv_path, table, cut, _read_env(csv_path.parent / files.ENV))


SIZE_LIMIT = 2**31  # a latent or batch size at or above it is no size (nor fits an index)


def _check_rows(table: pd.DataFrame, csv_path: Path) -> None:
    """What each row's numbers must be beyond numbers (ResultsTableError naming the line): the
    sizes positive integers, the windows non-negative samples/s separated by spaces."""
    for column in ("latent_dim", "batch_size"):
        values = table[column].to_numpy()
        with np.errstate(invalid="ignore"):
            bad = (
                ~np.isfinite(values)
                | (values < 1)
                | (values >= SIZE_LIMIT)
                | (values != np.round(values))
            )
        if bad.any():
            row = int(bad.argmax())
            raise ResultsTableError(
                f"{csv_path}: line {row + 2}: {column} is "
                f"{table[column].iloc[row]:g}, not a positive integer below "
                "2^31"
            )
    for row, text in enumerate(table.window_samples_per_s):
        try:
            windows = tables.windows_of(text)
        except ValueError:
            windows = np.array([math.nan])
        if not (np.isfinite(windows).all() and (windows >= 0).all()):
            raise ResultsTableError(
                f"{csv_path}: line {row + 2}: window_samples_per_s is "
                f"{text!r}, not samples/s per window separated by spaces"
            )


def _read_env(path: Path) -> dict | None:
    """The provenance beside a results table: None where there is none (a loose CSV);
    ResultsTableError where it is damaged."""
    if not path.exists():
        return None
    try:
        return provenance.read_env(path)
    except ValueError as error:
        raise ResultsTableError(f"{path}: {error}") from None


def row_key(row) -> str:
    """A row's key as the messages name it: backend z=<latent> batch=<batch size>."""
    return f"{row.backend} z={int(row.latent_dim)} batch={int(row.batch_size)}"


def _same_key(table: pd.DataFrame, row) -> pd.Series:
    return (table[KEYS] == [row[k] for k in KEYS]).all(axis=1)
