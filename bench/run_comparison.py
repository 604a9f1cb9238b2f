"""``vae-bench compare OLD NEW``: row by row, did anything get slower, less accurate, or stop
agreeing with the reference, by how much and how surely? Exit status 0 no regression, 1 a
regression beyond the gate, 3 undecided (nothing beyond the gate, but something it could not
judge), 2 unusable input.

Each gated row's speed-up ratio NEW/OLD comes with its interval and a verdict (faster, slower,
``~`` for no significant change, undecided), both from the per-window values
(``bench.significance``); each backend has a geometric mean over its rows. How a comparison
is written out (text, Markdown, JSON): ``bench.comparison_formats``.

Throughput is compared as each backend's speed-up over PyTorch eager *measured in the same
run* on the same device (``bench.tables``: torch on the CPU, torch-cuda on a GPU), the
ratio the harness's interleaving makes trustworthy, not as raw samples/s: two runs of the same
code minutes apart on this 2-core VM moved raw medians by up to 26% (every backend at one
latent size at once), while same-run speed-ups moved far less. The yardstick rows are
therefore not gated unless --absolute. Default gates: a 25% drop in speed-up that is also
significant over the timed windows (``bench.significance``: a one-sided Mann-Whitney U test on
the per-window speed-ups, p < 0.05; identical code measured 0.6-1.5x against itself on shared
runners, so a threshold alone cries wolf; too few windows to test is undecided, not a pass);
an ELBO drop of more than 1 nat (the same seed reproduces the ELBO exactly on one machine,
and seeds differ by up to 1.6 nats SD at z = 2). Tighten both on quiet machines.

The gate fails closed: what it cannot compare is never a pass. A regression: a row of OLD
missing from NEW (unless --allow-removed), a table cut short mid-row, a number in OLD that is
NaN, infinite or (samples/s) zero in NEW, and two runs with no row in common. Undecided: a
drop beyond the threshold with too few windows to test, and a speed-up NEW cannot compute
because its yardstick row is missing or untimed (gate raw samples/s with --absolute
instead). Input that is not a results table at all (unreadable, a directory, a cell that
is not a number, a key twice) is refused with exit status 2.

Speed-ups over eager are a property of the CPU as well as of the code (the same Numba code:
1.75x eager on an AMD EPYC, 1.32x on a Xeon with AMX). When the env.json beside each table
says the runs are from different CPUs (``provenance.cpu_difference``: model or instruction
sets), the throughput verdict is refused (undecided, said apart from the regressions)
unless --allow-machine-change; ELBO and agreement are compared either way.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import file_names as files
from . import provenance, tables
from .result_files import numeric_column
from .significance import (  # noqa: F401  (the defaults, read as run_comparison's)
    ALPHA,
    DEFAULT_FAIL_ELBO,
    DEFAULT_FAIL_THROUGHPUT,
    Change,
    change,
)
from .store import read_json_object
from .tables import ADDED_COLUMNS, KEYS, RESULT_COLUMNS, TEXT_COLUMNS

GATED = (("samples_per_s", "samples/s"), ("final_test_elbo", "test ELBO"))


class CompareError(ValueError):
    """Input that cannot be compared (missing file, other schema)."""


def parse_fraction(text: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise CompareError(f"expected a fraction like 10% or 0.1, got {text!r}") from None
    if not 0 <= value < 1:
        raise CompareError(f"a throughput gate must lie in [0%, 100%), got {text!r}")
    return value


@dataclass(frozen=True)
class Results:
    """One run's results table as read for comparison."""

    source: Path  # the results.csv read
    table: pd.DataFrame  # its complete rows
    cut_short: str | None = None  # where the file ends mid-row, if it does
    env: dict | None = None  # the run's provenance (env.json beside the table); None if none


def _read_text(csv_path: Path) -> str:
    if not csv_path.exists():
        raise CompareError(
            f"{csv_path}: no such results file (give a run directory or its results.csv)"
        )
    if csv_path.is_dir():
        raise CompareError(f"{csv_path}: a directory, not a results table")
    try:
        return csv_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CompareError(f"{csv_path}: not a readable results table ({error})") from None


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
        raise CompareError(f"{csv_path}: not a readable results table ({error})") from None
    absent = [c for c in ADDED_COLUMNS if c not in table]
    if absent and set(table.columns) | set(absent) == set(RESULT_COLUMNS):
        # A table written before these columns existed: fill in what it implies.
        table = table.assign(**{c: ADDED_COLUMNS[c] for c in absent})[list(RESULT_COLUMNS)]
    if tuple(table.columns) != RESULT_COLUMNS:
        missing = [c for c in RESULT_COLUMNS if c not in table.columns]
        extra = [c for c in table.columns if c not in RESULT_COLUMNS]
        raise CompareError(
            f"{csv_path}: not a results table of this schema (missing columns: "
            f"{', '.join(missing) or 'none'}; unexpected: "
            f"{', '.join(extra) or 'none'})"
        )
    for column in RESULT_COLUMNS:
        if column in TEXT_COLUMNS:
            continue
        table[column] = numeric_column(table, column, str(csv_path), CompareError).astype(float)
    for column in KEYS:
        if table[column].isna().any():
            row = int(table[column].isna().to_numpy().argmax())
            raise CompareError(f"{csv_path}: line {row + 2}: no {column}")
    _check_rows(table, csv_path)
    twice = table[table.duplicated(KEYS, keep=False)]
    if len(twice):
        r = twice.iloc[0]
        raise CompareError(
            f"{csv_path}: {_key(r)} appears {len(twice[_same_key(twice, r)])} "
            "times; a results table has one row per (backend, latent size, "
            "batch size)"
        )
    table = table.astype({"latent_dim": int, "batch_size": int})
    return Results(csv_path, table, cut, _read_env(csv_path.parent / files.ENV))


SIZE_LIMIT = 2**31  # a latent or batch size at or above it is no size (nor fits an index)


def _check_rows(table: pd.DataFrame, csv_path: Path) -> None:
    """What each row's numbers must be beyond numbers (CompareError naming the line): the
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
            raise CompareError(
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
            raise CompareError(
                f"{csv_path}: line {row + 2}: window_samples_per_s is "
                f"{text!r}, not samples/s per window separated by spaces"
            )


def _read_env(path: Path) -> dict | None:
    """The provenance beside a results table: None where there is none (a loose CSV);
    CompareError where it is damaged."""
    if not path.exists():
        return None
    try:
        env = read_json_object(path)
    except ValueError as error:
        raise CompareError(f"{path}: not a run environment ({error})") from None
    problem = provenance.env_problem(env)
    if problem:
        raise CompareError(f"{path}: not a run environment ({problem})")
    return env


def _key(row) -> str:
    return f"{row.backend} z={int(row.latent_dim)} batch={int(row.batch_size)}"


def _same_key(table: pd.DataFrame, row) -> pd.Series:
    return (table[KEYS] == [row[k] for k in KEYS]).all(axis=1)


EXIT_REGRESSION = 1
EXIT_UNDECIDED = 3  # nothing beyond the gate, but something it could not judge


@dataclass
class RunComparison:
    """OLD against NEW: every row (``table``, one per key, sorted worst first: its
    ``throughput_ratio``, the ratio of the medians' speed-ups that the threshold gates; the
    window-by-window ratio ``ratio_estimate`` (Hodges-Lehmann) inside its interval
    ``ratio_low``..``ratio_high`` at ``level``; ``p_value``; ``verdict`` faster / slower / ~ /
    undecided; ``regression``), each backend's geometric mean (``geomeans``), and what to
    say. The two ratios differ where noise hit the rounds unevenly: a window's speed-up pairs
    it with eager's window of the same round, which the medians do not."""

    table: pd.DataFrame
    regressions: list[str]
    notes: list[str] = field(default_factory=list)  # said, and no verdict (machines differ...)
    refusals: list[str] = field(default_factory=list)  # what could not be judged: undecided
    geomeans: pd.DataFrame = field(default_factory=pd.DataFrame)
    level: float = 1 - 2 * ALPHA  # the intervals' confidence level

    @property
    def exit_status(self) -> int:
        """0 no regression, 1 a regression, 3 undecided (nothing beyond the gate, but
        something not judged: too few windows, a missing yardstick, another CPU)."""
        if self.regressions:
            return EXIT_REGRESSION
        return EXIT_UNDECIDED if self.refusals else 0

    @property
    def outcome(self) -> str:
        return {0: "no regression", EXIT_REGRESSION: "regression", EXIT_UNDECIDED: "undecided"}[
            self.exit_status
        ]


def _machines(old: Results, new: Results, allow_change: bool) -> tuple[bool, list[str], list[str]]:
    """Whether throughput may be compared (same CPU kind, or the change allowed), with the
    notes and refusals that say why."""
    missing = [
        f"{side} ({r.source.parent})" for side, r in (("OLD", old), ("NEW", new)) if r.env is None
    ]
    if missing:
        return (
            True,
            [
                f"cannot tell whether the runs share a CPU: no env.json beside "
                f"{' or '.join(missing)}; throughput compared as if they do"
            ],
            [],
        )
    # Model and instruction sets; a run recorded before env.json had "cpu_isa" (the committed
    # ones) is judged by its CPU model alone.
    assert old.env is not None and new.env is not None  # none is missing
    differs = provenance.cpu_difference(old.env, new.env)
    if differs is None:
        return True, [], []
    if allow_change:
        return (
            True,
            [
                f"the runs are from different CPUs ({differs}); throughput compared "
                "anyway (--allow-machine-change)"
            ],
            [],
        )
    return (
        False,
        [],
        [
            f"the runs are from different CPUs ({differs}): throughput is not "
            "compared (speed-ups over eager depend on the CPU) unless "
            "--allow-machine-change"
        ],
    )


def _finite(value: float) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def _windows(table: pd.DataFrame, absolute: bool) -> pd.Series:
    """Each row's per-window values the significance test compares: speed-ups over eager
    (window by window), or raw samples/s with --absolute."""
    if absolute:
        return table.window_samples_per_s.map(tables.windows_of)
    return tables.window_speedups(table)


def compare_runs(
    old: Results,
    new: Results,
    *,
    fail_throughput: float,
    fail_elbo: float,
    absolute: bool = False,
    allow_removed: bool = False,
    allow_machine_change: bool = False,
    alpha: float = ALPHA,
    threshold_only: bool = False,
) -> RunComparison:
    """OLD against NEW, row by row. A throughput drop beyond ``fail_throughput`` is a
    regression only if the windows say it is not noise (``bench.significance``: p below
    ``alpha``); where they are too few to say, the row is refused as undecided, not passed.
    ``threshold_only`` decides by the threshold alone (runs recorded before windows were
    kept)."""
    throughput, notes, refusals = _machines(old, new, allow_machine_change)
    regressions = _results_cut_short(old, new)
    merged, gated_speedup = _merged(old, new, absolute, throughput)
    for r, speedup_gated in zip(merged.itertuples(), gated_speedup):
        key = _key(r)
        if r.presence == "left_only":
            if not allow_removed:
                regressions.append(
                    f"{key}: in OLD, missing from NEW (pass --allow-removed if that is intended)"
                )
            continue
        if r.presence != "both":
            continue
        regressions += _lost_values(r, key)
        if throughput and not absolute and speedup_gated:
            refusals += _lost_yardstick(r, key)
        if _finite(r.throughput_ratio):
            test = change(r.windows_old, r.windows_new, alpha)
            verdict, kind, said = _throughput_verdict(
                r.throughput_ratio, test, key, fail_throughput, absolute, threshold_only
            )
            merged.loc[
                r.Index,
                ["verdict", "regression", "p_value", "ratio_estimate", "ratio_low", "ratio_high"],
            ] = (verdict, kind == "regression", test.p_value, test.estimate, test.low, test.high)
            {"regression": regressions, "undecided": refusals, "note": notes}[kind].extend(said)
        regressions += _quality_regressions(r, key, fail_elbo)
    if not (merged.presence == "both").any():
        regressions.append(
            f"nothing compared: {old.source} and {new.source} have no row "
            "(backend, latent size, batch size) in common"
        )
    merged["change"] = (
        merged["presence"]
        .astype(str)
        .map({"both": "", "left_only": "removed", "right_only": "added"})
    )
    merged = merged.sort_values(["throughput_ratio", "elbo_change"], na_position="last")
    return RunComparison(
        merged, regressions, notes, refusals, geometric_means(merged), 1 - 2 * alpha
    )


def _results_cut_short(old: Results, new: Results) -> list[str]:
    """A results file whose end is missing (a run killed as it wrote): a regression."""
    return [
        f"{side} {r.source}: {r.cut_short}; the rows after it are missing"
        for side, r in (("OLD", old), ("NEW", new))
        if r.cut_short
    ]


def _lost_yardstick(r, key: str) -> list[str]:
    """A NEW row timed but without the speed-up OLD had: its yardstick (the same run's eager
    PyTorch row) is gone, and the speed-up cannot be judged (undecided, not passed)."""
    if not (
        _finite(r.speedup_old)
        and not _finite(r.speedup_new)
        and _finite(r.samples_per_s_new)
        and r.samples_per_s_new > 0
    ):
        return []
    yardstick = tables.YARDSTICK.get(r.device_new, "the eager PyTorch")
    return [
        f"{key}: no speed-up in NEW: its {yardstick} row at z={r.latent_dim} "
        f"batch={r.batch_size} (the yardstick) is missing or untimed; keep it in the "
        "run, or gate raw samples/s with --absolute"
    ]


def _quality_regressions(r, key: str, fail_elbo: float) -> list[str]:
    """The test ELBO dropped beyond the gate, or a backend that passed the agreement gate no
    longer does."""
    found = []
    if _finite(r.elbo_change) and r.elbo_change < -fail_elbo:
        found.append(f"{key}: test ELBO {r.elbo_change:+.2f} nats (gate: -{fail_elbo:g})")
    if r.agreement_old == "pass" and r.agreement_new != "pass":
        found.append(f"{key}: agreement {r.agreement_old} -> {r.agreement_new}")
    return found


def _merged(
    old: Results, new: Results, absolute: bool, throughput: bool
) -> tuple[pd.DataFrame, pd.Series]:
    """The two runs' rows side by side (an outer join on KEYS), with each row's speed-up,
    windows and the ratios and changes compare gates on; and which rows' speed-ups are gated
    (every row but the yardstick's)."""
    old_table = old.table.assign(
        speedup=tables.speedup(old.table), windows=_windows(old.table, absolute)
    )
    new_table = new.table.assign(
        speedup=tables.speedup(new.table), windows=_windows(new.table, absolute)
    )
    merged = old_table.merge(
        new_table, on=KEYS, how="outer", suffixes=("_old", "_new"), indicator="presence"
    )
    merged["raw_ratio"] = merged.samples_per_s_new / merged.samples_per_s_old
    relative = merged.speedup_new / merged.speedup_old
    # Gate on the same-run speed-up where both runs have the eager PyTorch yardstick.
    gated_speedup = ~tables.is_yardstick(merged)
    merged["throughput_ratio"] = (
        merged.raw_ratio if absolute else relative.where(relative.notna() & gated_speedup)
    )
    if not throughput:
        merged["throughput_ratio"] = math.nan
    merged["elbo_change"] = merged.final_test_elbo_new - merged.final_test_elbo_old
    for column in ("ratio_estimate", "ratio_low", "ratio_high", "p_value"):
        merged[column] = math.nan
    merged["verdict"], merged["regression"] = "", False
    return merged, gated_speedup


def _lost_values(r, key: str) -> list[str]:
    """A gated value that OLD had and NEW lost (NaN or inf), and a throughput that fell to 0."""
    lost = []
    for column, label in GATED:
        was, now = getattr(r, f"{column}_old"), getattr(r, f"{column}_new")
        if _finite(was) and not _finite(now):
            lost.append(f"{key}: {label} {now} in NEW (was {was:.2f})")
    if _finite(r.samples_per_s_old) and r.samples_per_s_new == 0:
        lost.append(f"{key}: samples/s 0 in NEW (was {r.samples_per_s_old:,.0f})")
    return lost


def geometric_means(merged: pd.DataFrame) -> pd.DataFrame:
    """Each backend's geometric mean of its gated throughput ratios over latent and batch
    sizes (Google Benchmark's OVERALL_GEOMEAN, pyperf's geometric mean), with how many rows
    it is over; the mean of ratios that multiply is their geometric mean."""
    gated = merged[
        np.isfinite(merged.throughput_ratio.astype(float)) & (merged.throughput_ratio > 0)
    ]
    rows = [
        {
            "backend": backend,
            "rows": len(group),
            "throughput_ratio": float(np.exp(np.log(group.throughput_ratio).mean())),
        }
        for backend, group in gated.groupby("backend", sort=True)
    ]
    return pd.DataFrame(rows, columns=["backend", "rows", "throughput_ratio"])


def _throughput_verdict(
    ratio: float,
    test: Change,
    key: str,
    fail_throughput: float,
    absolute: bool,
    threshold_only: bool,
) -> tuple[str, str, list[str]]:
    """A gated row's verdict (faster, slower, ~, undecided), whether it is a regression,
    undecided (the gate could not judge) or a note, and what to say. A regression is a drop
    beyond the threshold that the windows call significant (or, ``threshold_only``, any drop
    beyond it); a significant drop within the threshold is said, not failed."""
    gate = 1 - fail_throughput
    what = "samples/s" if absolute else "speed-up over PyTorch eager"
    interval = (
        f" (window by window {test.estimate:.2f}x, {test.level:.0%} interval "
        f"{test.low:.2f}-{test.high:.2f}x)"
        if test.decided
        else ""
    )
    moved = f"{key}: {what} {ratio:.2f}x of before{interval}"
    u_test = f"one-sided Mann-Whitney U, {test.describe()}"
    if ratio >= gate:
        if test.verdict == "slower":
            said = (
                f"{moved}: significantly slower ({u_test} < {test.alpha:g}), "
                f"within the gate ({gate:.2f}x)"
            )
            return "slower", "note", [said]
        return test.verdict, "note", []
    drop = f"{moved} (gate: {gate:.2f}x)"
    if threshold_only:
        return (
            "slower",
            "regression",
            [f"{drop}; decided by the threshold alone (--threshold-only)"],
        )
    if not test.decided:
        said = (
            f"{drop}, but undecided: {test.why_undecided}; time more windows (--repeats) or "
            "decide by the threshold alone (--threshold-only)"
        )
        return "undecided", "undecided", [said]
    if test.verdict == "slower":
        said = f"{drop}; significant over the windows ({u_test} < {test.alpha:g})"
        return "slower", "regression", [said]
    said = (
        f"{drop}, but not significant over the windows ({u_test} >= "
        f"{test.alpha:g}): within the noise, not a regression"
    )
    return test.verdict, "note", [said]
