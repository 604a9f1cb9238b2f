"""A comparison (``runs.RunComparison``) written out: ``text`` for a terminal
(the table, then notes, regressions and what was not judged), ``markdown`` for a pull-request
comment (the outcome first, then the rows that moved), ``json`` for a program (every row and
number; NaN as null). One place for each: the columns below."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runs import RunComparison

# What --format takes. This module loads bench.tables (pandas) only when it writes, so that
# the command line lists these without it.
FORMATS = ("text", "markdown", "json")

# The JSON rows' fields: the comparison table's columns, each under its own name but the
# device, which is NEW's (a row's device is part of what it is, not of what changed); then
# OLD's and NEW's value of every column the throughput tables show (_shown_values).
JSON_COLUMNS = (
    "backend",
    "device_new",
    "latent_dim",
    "batch_size",
    "change",
    "samples_per_s_old",
    "samples_per_s_new",
    "raw_ratio",
    "speedup_old",
    "speedup_new",
    "throughput_ratio",
    "ratio_estimate",
    "ratio_low",
    "ratio_high",
    "p_value",
    "verdict",
    "regression",
    "final_test_elbo_old",
    "final_test_elbo_new",
    "elbo_change",
    "agreement_old",
    "agreement_new",
)
JSON_NAMES = {"device_new": "device"}


def _shown_values() -> tuple[str, ...]:
    """OLD's and NEW's value of every column the throughput tables show (``tables.SHOWN``)
    that JSON_COLUMNS does not already give."""
    from .. import tables

    pairs = (
        f"{column}_{side}"
        for name, shown in tables.SHOWN.items()
        for column in shown.columns(name)
        for side in ("old", "new")
    )
    return tuple(column for column in dict.fromkeys(pairs) if column not in JSON_COLUMNS)


def render(result: RunComparison, form: str) -> str:
    return {"text": text, "markdown": markdown, "json": as_json}[form](result)


def _num(value, spec: str) -> str:
    from .. import tables

    return tables.fmt(value, spec, nan=tables.NOT_COMPUTED)


def _not_computed() -> str:
    from .. import tables

    return tables.NOT_COMPUTED


def _interval(r) -> str:
    """The window-by-window ratio and its interval: '0.53 (0.42-0.66)'."""
    if not (math.isfinite(r.ratio_low) and math.isfinite(r.ratio_high)):
        return _not_computed()
    return f"{r.ratio_estimate:.2f} ({r.ratio_low:.2f}-{r.ratio_high:.2f})"


def _verdict(r) -> str:
    """The row's verdict; upper case where it is a regression (beyond the gate)."""
    return (r.verdict.upper() if r.regression else r.verdict) or _not_computed()


def text(result: RunComparison) -> str:
    level = f"windows ({result.level:.0%} CI)"
    lines = [
        f"{'backend':<18} {'z':>3} {'batch':>5} {'samples/s old':>13} {'new':>10} "
        f"{'raw':>5} {'speed-up old':>12} {'new':>6} {'gated':>6} {level:>18} "
        f"{'p':>7} {'verdict':>9} "
        f"{'test ELBO old':>13} {'new':>9} {'change':>7} {'agreement':>16}"
    ]
    for r in result.table.itertuples():
        agreement = f"{r.agreement_old}->{r.agreement_new}" if r.change == "" else r.change
        lines.append(
            f"{r.backend:<18} {r.latent_dim:>3} {r.batch_size:>5} "
            f"{_num(r.samples_per_s_old, ',.0f'):>13} {_num(r.samples_per_s_new, ',.0f'):>10} "
            f"{_num(r.raw_ratio, '.2f'):>5} {_num(r.speedup_old, '.2f'):>12} "
            f"{_num(r.speedup_new, '.2f'):>6} {_num(r.throughput_ratio, '.2f'):>6} "
            f"{_interval(r):>18} {_num(r.p_value, '.2g'):>7} {_verdict(r):>9} "
            f"{_num(r.final_test_elbo_old, '.2f'):>13} "
            f"{_num(r.final_test_elbo_new, '.2f'):>9} {_num(r.elbo_change, '+.2f'):>7} "
            f"{agreement:>16}"
        )
    if len(result.geomeans):
        lines += ["", "geometric mean of the gated ratios, per backend:"]
        lines += [
            f"  {g.backend:<18} {g.throughput_ratio:.2f}x over {g.rows} "
            f"row{'s' if g.rows != 1 else ''}"
            for g in result.geomeans.itertuples()
        ]
    for line in result.notes:
        lines += ["", f"note: {line}"]
    if result.regressions:
        lines += ["", f"REGRESSION ({len(result.regressions)}):"]
        lines += [f"  {line}" for line in result.regressions]
    for line in result.refusals:
        lines += ["", f"NOT COMPARED: {line}"]
    lines += ["", _closing(result)]
    return "\n".join(lines)


def _closing(result: RunComparison) -> str:
    if result.regressions:
        return f"regression: {len(result.regressions)} beyond the gate"
    if result.refusals:  # a refusal, not a pass: what was compared is said to have passed
        return (
            "undecided: no ELBO or agreement regression beyond the gate; throughput not "
            "compared, or not decided, where NOT COMPARED says: that is not a pass"
        )
    return "no regression beyond the gate"


def markdown(result: RunComparison) -> str:
    """For a pull-request comment: the outcome, every gated row with its ratio, interval and
    verdict, the geometric means, and what was said."""
    mark = {"no regression": "✅", "regression": "❌", "undecided": "⚠️"}[result.outcome]
    counts = result.table.verdict[result.table.verdict != ""].value_counts()
    tally = ", ".join(f"{n} {v}" for v, n in counts.items())
    lines = [f"### vae-bench compare: {mark} {_closing(result)}", ""]
    if tally:
        lines += [
            f"Throughput verdicts: {tally} (interval: {result.level:.0%}; ~: no "
            "significant change).",
            "",
        ]
    lines += [
        "| backend | z | batch | speed-up old | new | ratio | by window (interval) | p "
        "| verdict | "
        "test ELBO change | agreement |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|---|",
    ]
    for r in result.table.itertuples():
        agreement = f"{r.agreement_old} → {r.agreement_new}" if r.change == "" else r.change
        verdict = _verdict(r)
        lines.append(
            f"| {r.backend} | {r.latent_dim} | {r.batch_size} | "
            f"{_num(r.speedup_old, '.2f')} | {_num(r.speedup_new, '.2f')} | "
            f"{_num(r.throughput_ratio, '.2f')} | {_interval(r)} | {_num(r.p_value, '.2g')} | "
            f"{'**' + verdict + '**' if r.regression else verdict} | "
            f"{_num(r.elbo_change, '+.2f')} | {agreement} |"
        )
    if len(result.geomeans):
        lines += ["", "| backend | geometric mean ratio | rows |", "|---|--:|--:|"]
        lines += [
            f"| {g.backend} | {g.throughput_ratio:.2f} | {g.rows} |"
            for g in result.geomeans.itertuples()
        ]
    for title, said in (
        ("Regressions", result.regressions),
        ("Not compared", result.refusals),
        ("Notes", result.notes),
    ):
        if said:
            lines += ["", f"**{title}**", ""] + [f"- {line}" for line in said]
    return "\n".join(lines)


def as_json(result: RunComparison) -> str:
    from ..export import json_value

    columns = JSON_COLUMNS + _shown_values()
    rows = [
        {JSON_NAMES.get(column, column): json_value(getattr(r, column)) for column in columns}
        for r in result.table.itertuples()
    ]
    document = {
        "outcome": result.outcome,
        "exit_status": result.exit_status,
        "interval_level": result.level,
        "rows": rows,
        "geometric_means": [
            {
                "backend": g.backend,
                "throughput_ratio": json_value(g.throughput_ratio),
                "rows": int(g.rows),
            }
            for g in result.geomeans.itertuples()
        ],
        "regressions": result.regressions,
        "undecided": result.refusals,
        "notes": result.notes,
    }
    return json.dumps(document, indent=1, allow_nan=False)
