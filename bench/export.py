"""A run's results as programs read them: ``results.json`` (written by every run beside
results.csv: every row with its windows as numbers, the provenance, the gate per tensor), and
``vae-bench export RUN --format json|bmf|github-action-benchmark``, the formats CI dashboards
take.

Each metric is a benchmark named ``<dataset>/z<latent>/b<batch>/<backend>`` (``BENCHMARK_NAME``),
the same in every run of that row, and has three measures, all bigger-is-better: throughput
(samples/s, the median window, its range the slowest and fastest window), the speed-up over
eager PyTorch on the same device *in the same run* (the ratio compare gates; its range the
window-by-window speed-ups'), and the test ELBO (nats per image). A row not timed or not
trained has only the measures it has.

- ``bmf``: Bencher Metric Format, ``{benchmark: {measure: {value, lower_value,
  upper_value}}}`` (https://bencher.dev/docs/reference/bencher-metric-format, whose JSON schema
  tests/bench/test_export.py holds). ``throughput`` is Bencher's built-in measure (operations per
  second); the others are created by Bencher on first use, by slug.
- ``github-action-benchmark``: its ``customBiggerIsBetter`` tool's input, a list of
  ``{name, unit, value, range, extra}`` (benchmark-action/github-action-benchmark,
  ``src/extract.ts``, ``BenchmarkResult`` and ``extractCustomBenchmarkResult``); ``range`` and
  ``extra`` are text it shows beside the value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from . import file_names as files

if TYPE_CHECKING:
    import pandas as pd

DOCUMENT_SCHEMA = "vae-kernel-bench/results/1"  # results.json's "schema": its format, versioned
FORMATS = ("json", "bmf", "github-action-benchmark")
BENCHMARK_NAME = "{dataset}/z{latent_dim}/b{batch_size}/{backend}"


def document_json_schema() -> dict:
    """results.json as a JSON Schema (draft-07): what a reader may rely on. Rows hold every
    results.csv column (NaN as null) with the windows as numbers, and the speed-up beside
    them. (A function: bench.tables loads pandas, which the command line's --help must not.)"""
    from . import tables

    number_or_null = {"type": ["number", "null"]}
    return {
        "$schema": "http://json-schema.org/draft-07/schema",
        "type": "object",
        "required": ["schema", "provenance", "rows", "gate"],
        "properties": {
            "schema": {"const": DOCUMENT_SCHEMA},
            "provenance": {"type": "object"},
            "rows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        *tables.RESULT_COLUMNS,
                        "speedup_over_eager",
                        "window_speedups_over_eager",
                    ],
                    "properties": {
                        **{
                            column: {"type": "string"}
                            for column in tables.TEXT_COLUMNS
                            if column != "window_samples_per_s"
                        },
                        "latent_dim": {"type": "integer", "minimum": 1},
                        "batch_size": {"type": "integer", "minimum": 1},
                        "seed": {"type": "integer", "minimum": 0},
                        "window_samples_per_s": {"type": "array", "items": {"type": "number"}},
                        "window_speedups_over_eager": {
                            "type": "array",
                            "items": {"type": "number"},
                        },
                        "speedup_over_eager": number_or_null,
                    },
                    "additionalProperties": number_or_null,
                },
            },
            "gate": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": list(tables.GATE_COLUMNS),
                    "properties": {
                        "backend": {"type": "string"},
                        "case": {"type": "string"},
                        "tensor": {"type": "string"},
                        "passed": {"type": "boolean"},
                        "latent_dim": {"type": "integer", "minimum": 1},
                        "problem": {"type": ["string", "null"]},
                    },
                    "additionalProperties": number_or_null,
                },
            },
        },
    }


class ExportError(ValueError):
    """A run that cannot be exported as asked; the message says why and what to do."""


def json_value(value):
    """A JSON value: NaN and infinities as null, NumPy scalars as Python's."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_document(table: pd.DataFrame, gate: pd.DataFrame, provenance: dict) -> dict:
    """results.json of a run: its results table's rows (windows as lists of numbers, the
    speed-up over eager and its per-window values beside them), its gate per tensor and its
    provenance (env.json)."""
    from . import tables

    speedups = tables.speedup(table)
    window_speedups = tables.window_speedups(table)
    rows = []
    for i, record in enumerate(table.to_dict("records")):
        row = {column: json_value(value) for column, value in record.items()}
        for column in tables.TEXT_COLUMNS:  # an empty cell reads back from a CSV as NaN
            row[column] = row[column] or ""
        for column in ("latent_dim", "batch_size", "seed"):  # whole numbers, read as floats
            row[column] = int(row[column])
        row["window_samples_per_s"] = [
            float(v) for v in tables.windows_of(record["window_samples_per_s"])
        ]
        row["speedup_over_eager"] = json_value(speedups.iloc[i])
        row["window_speedups_over_eager"] = [float(v) for v in window_speedups.iloc[i]]
        rows.append(row)
    gate_rows = [
        {column: json_value(value) for column, value in record.items()}
        for record in gate.to_dict("records")
    ]
    for record in gate_rows:
        record["problem"] = record["problem"] or None
    return {
        "schema": DOCUMENT_SCHEMA,
        "provenance": _strict_json(provenance),
        "rows": rows,
        "gate": gate_rows,
    }


def _strict_json(value):
    """``value`` (parsed JSON) with NaN and infinities as null, as strict JSON has them
    (Python's json module reads a NaN literal that other readers refuse)."""
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strict_json(item) for item in value]
    return json_value(value)


def as_json_text(document) -> str:
    return json.dumps(document, indent=1, allow_nan=False) + "\n"


def _measures(row: dict) -> dict[str, tuple[float, float | None, float | None, str]]:
    """A row's measures: slug -> (value, lower, upper, unit); only those it has."""
    found = {}
    if row["samples_per_s"] is not None:
        found["throughput"] = (
            row["samples_per_s"],
            row["samples_per_s_min"],
            row["samples_per_s_max"],
            "samples/s",
        )
    ratios = row["window_speedups_over_eager"]
    if row["speedup_over_eager"] is not None:
        found["speedup-over-eager"] = (
            row["speedup_over_eager"],
            min(ratios) if ratios else None,
            max(ratios) if ratios else None,
            "x eager",
        )
    if row["final_test_elbo"] is not None:
        found["test-elbo"] = (row["final_test_elbo"], None, None, "nats")
    return found


def _name(row: dict) -> str:
    return BENCHMARK_NAME.format(**row)


def bmf(document: dict) -> dict:
    """Bencher Metric Format: every row with a measure, by its stable name."""
    result = {}
    for row in document["rows"]:
        measures = {}
        for slug, (value, lower, upper, _unit) in _measures(row).items():
            metric = {"value": value}
            if lower is not None and upper is not None:
                metric.update(lower_value=lower, upper_value=upper)
            measures[slug] = metric
        if measures:
            result[_name(row)] = measures
    return result


def github_action_benchmark(document: dict) -> list[dict]:
    """customBiggerIsBetter entries: one per row and measure, named '<benchmark> <measure>'."""
    env = document["provenance"]
    where = f"{env.get('cpu', '?')}, commit {env.get('git_commit', '?')}"
    entries = []
    for row in document["rows"]:
        for slug, (value, lower, upper, unit) in _measures(row).items():
            entry = {"name": f"{_name(row)} {slug}", "unit": unit, "value": value}
            if lower is not None and upper is not None:
                entry["range"] = f"{lower:.6g} to {upper:.6g}"
            windows = len(row["window_samples_per_s"])
            entry["extra"] = (
                f"{windows} timed windows; {where}"
                if slug != "test-elbo"
                else f"{row['epochs']:g} epochs, seed {row['seed']}; {where}"
            )
            entries.append(entry)
    return entries


def load_run(path: Path) -> dict:
    """results.json's document for the run at ``path`` (a run directory, or its results.csv),
    rebuilt from its files through their checked readers; ExportError where it cannot be."""
    import pandas as pd

    from . import tables
    from .result_files import read_gate
    from .results_table import load_results

    results = load_results(path)
    if results.cut_short:
        raise ExportError(
            f"{results.source}: {results.cut_short}; export a finished run (or resume it first)"
        )
    gate_path = results.source.parent / files.GATE
    gate = (
        read_gate(gate_path)
        if gate_path.exists()
        else pd.DataFrame(columns=list(tables.GATE_COLUMNS))
    )
    return results_document(results.table, gate[list(tables.GATE_COLUMNS)], results.env or {})


def export_text(document: dict, form: str) -> str:
    """``document`` (results.json's) in ``form`` (one of FORMATS), as the text to write."""
    if form == "json":
        return as_json_text(document)
    converted = bmf(document) if form == "bmf" else github_action_benchmark(document)
    if not converted:
        raise ExportError("nothing to export: no row of this run was timed or trained")
    return as_json_text(converted)


def is_json_file(path: Path) -> bool:
    """Whether ``path`` holds JSON (an earlier export, which --out may replace)."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True
