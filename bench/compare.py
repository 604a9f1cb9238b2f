"""``vae-bench compare OLD NEW``: row by row, did anything get slower, less accurate, or stop
agreeing with the reference? Exit status 1 on a regression beyond the gate, 0 otherwise,
2 on unusable input.

Throughput is compared as each backend's speed-up over PyTorch eager *measured in the same
run* on the same device (``bench.baselines``: torch on the CPU, torch-cuda on a GPU), the
ratio the harness's interleaving makes trustworthy, not as raw samples/s: two runs of the same
code minutes apart on this 2-core VM moved raw medians by up to 26% (every backend at one
latent size at once), while same-run speed-ups moved far less. The yardstick rows are
therefore not gated unless --absolute. Default gates: a 25% drop in speed-up;
an ELBO drop of more than 1 nat (the same seed reproduces the ELBO exactly on one machine,
and seeds differ by up to 1.6 nats SD at z = 2). Tighten both on quiet machines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import baselines
from .run import ADDED_COLUMNS, RESULT_COLUMNS

KEYS = ["backend", "latent_dim", "batch_size"]
DEFAULT_FAIL_THROUGHPUT = 0.25
DEFAULT_FAIL_ELBO = 1.0


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


def load_results(path: Path) -> pd.DataFrame:
    path = Path(path)
    csv = path / "results.csv" if path.is_dir() else path
    if not csv.exists():
        raise CompareError(f"{csv}: no such results file (give a run directory or its "
                           "results.csv)")
    try:
        table = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise CompareError(f"{csv}: not a readable results table ({error})") from None
    absent = [c for c in ADDED_COLUMNS if c not in table]
    if absent and set(table.columns) | set(absent) == set(RESULT_COLUMNS):
        # A table written before these columns existed: fill in what it implies.
        table = table.assign(**{c: ADDED_COLUMNS[c] for c in absent})[list(RESULT_COLUMNS)]
    if tuple(table.columns) != RESULT_COLUMNS:
        missing = [c for c in RESULT_COLUMNS if c not in table.columns]
        extra = [c for c in table.columns if c not in RESULT_COLUMNS]
        raise CompareError(f"{csv}: not a results table of this schema (missing columns: "
                           f"{', '.join(missing) or 'none'}; unexpected: "
                           f"{', '.join(extra) or 'none'})")
    return table


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per key, sorted worst first
    regressions: list[str]


def compare(old: pd.DataFrame, new: pd.DataFrame, *, fail_throughput: float,
            fail_elbo: float, absolute: bool = False) -> Comparison:
    old = old.assign(speedup=baselines.speedup(old))
    new = new.assign(speedup=baselines.speedup(new))
    merged = old.merge(new, on=KEYS, how="outer", suffixes=("_old", "_new"),
                       indicator="presence")
    merged["raw_ratio"] = merged.samples_per_s_new / merged.samples_per_s_old
    relative = merged.speedup_new / merged.speedup_old
    # Gate on the same-run speed-up where both runs have the eager PyTorch yardstick.
    merged["throughput_ratio"] = merged.raw_ratio if absolute else relative.where(
        relative.notna() & ~baselines.is_baseline(merged))
    merged["elbo_change"] = merged.final_test_elbo_new - merged.final_test_elbo_old
    regressions = []
    for r in merged.itertuples():
        key = f"{r.backend} z={r.latent_dim} batch={r.batch_size}"
        if r.presence != "both":
            continue
        if not math.isnan(r.throughput_ratio) and r.throughput_ratio < 1 - fail_throughput:
            what = "samples/s" if absolute else "speed-up over PyTorch eager"
            regressions.append(f"{key}: {what} {r.throughput_ratio:.2f}x of before "
                               f"(gate: {1 - fail_throughput:.2f}x)")
        if not math.isnan(r.elbo_change) and r.elbo_change < -fail_elbo:
            regressions.append(f"{key}: test ELBO {r.elbo_change:+.2f} nats (gate: "
                               f"-{fail_elbo:g})")
        if r.agreement_old == "pass" and r.agreement_new != "pass":
            regressions.append(f"{key}: agreement {r.agreement_old} -> {r.agreement_new}")
    merged["change"] = merged["presence"].astype(str).map(
        {"both": "", "left_only": "removed", "right_only": "added"})
    merged = merged.sort_values(["throughput_ratio", "elbo_change"], na_position="last")
    return Comparison(merged, regressions)


def format_table(result: Comparison) -> str:
    lines = [f"{'backend':<18} {'z':>3} {'batch':>5} {'samples/s old':>13} {'new':>10} "
             f"{'raw':>5} {'speed-up old':>12} {'new':>6} {'gated':>6} "
             f"{'test ELBO old':>13} {'new':>9} {'change':>7} {'agreement':>16}"]
    for r in result.table.itertuples():
        def num(v, spec):
            return "—" if v != v else format(v, spec)

        agreement = f"{r.agreement_old}->{r.agreement_new}" if r.change == "" else r.change
        lines.append(
            f"{r.backend:<18} {r.latent_dim:>3} {r.batch_size:>5} "
            f"{num(r.samples_per_s_old, ',.0f'):>13} {num(r.samples_per_s_new, ',.0f'):>10} "
            f"{num(r.raw_ratio, '.2f'):>5} {num(r.speedup_old, '.2f'):>12} "
            f"{num(r.speedup_new, '.2f'):>6} {num(r.throughput_ratio, '.2f'):>6} "
            f"{num(r.final_test_elbo_old, '.2f'):>13} "
            f"{num(r.final_test_elbo_new, '.2f'):>9} {num(r.elbo_change, '+.2f'):>7} "
            f"{agreement:>16}")
    return "\n".join(lines)
