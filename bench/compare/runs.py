"""Two runs compared row by row (backend, latent size, batch size): each row's verdicts and
the regressions, undecided rows and notes that decide compare's exit status."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import provenance, tables
from ..results_table import Results, row_key
from ..tables import KEYS
from .significance import ALPHA, Change, change

GATED = (("samples_per_s", "samples/s"), ("final_test_elbo", "test ELBO"))


class CompareError(ValueError):
    """A compare setting that cannot be used (a throughput gate that is not a fraction)."""


def parse_fraction(text: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise CompareError(f"expected a fraction like 10% or 0.1, got {text!r}") from None
    if not 0 <= value < 1:
        raise CompareError(f"a throughput gate must lie in [0%, 100%), got {text!r}")
    return value


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
    regression only if the windows say it is not noise (``significance``: p below
    ``alpha``); where they are too few to say, the row is refused as undecided, not passed.
    ``threshold_only`` decides by the threshold alone (runs recorded before windows were
    kept)."""
    throughput, notes, refusals = _machines(old, new, allow_machine_change)
    regressions = _results_cut_short(old, new)
    merged, gated_speedup = _merged(old, new, absolute, throughput)
    for r, speedup_gated in zip(merged.itertuples(), gated_speedup):
        key = row_key(r)
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
