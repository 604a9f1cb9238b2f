"""``vae-bench export``: a run's results in the formats CI dashboards read, each validated
against the format's own published schema or interface, its numbers against the run's
results.csv, its names the same in every run of a row."""

import json
import shutil

import jsonschema
import numpy as np
import pandas as pd
import pytest
from checkout import RESULTS

from bench.cli import main
from bench.export import document_json_schema

NOISE = RESULTS / "compare-noise-intel-xeon"
BASE, RERUN = NOISE / "base", NOISE / "rerun"  # 9 windows a row, torch jax numba, z 2 and 20

# Bencher Metric Format's JSON Schema as bencher.dev publishes it ("$id":
# https://bencher.dev/bmf.json; https://bencher.dev/docs/reference/bencher-metric-format), and
# the example document on that page.
BMF_SCHEMA = {
    "$id": "https://bencher.dev/bmf.json",
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "patternProperties": {
        ".+": {
            "type": "object",
            "patternProperties": {
                ".+": {
                    "type": "object",
                    "properties": {
                        "value": {"type": "number"},
                        "lower_value": {"type": "number"},
                        "upper_value": {"type": "number"},
                    },
                    "required": ["value"],
                }
            },
        }
    },
}
BMF_EXAMPLE = {
    "benchmark_name": {
        "latency": {"value": 88.0, "lower_value": 87.42, "upper_value": 88.88},
        "throughput": {"value": 5.55, "lower_value": 3.14, "upper_value": 6.30},
    },
    "my_binary": {"file-size": {"value": 42.0}},
}
# Bencher's limits on the names (same page): a benchmark's up to 1024 characters, a measure's
# slug up to 64.
BMF_NAME_LIMIT, BMF_SLUG_LIMIT = 1024, 64

# github-action-benchmark's customBiggerIsBetter input, from its source
# (benchmark-action/github-action-benchmark, src/extract.ts): a non-empty array of
# BenchmarkResult {name: string; value: number; range?: string; unit: string;
# extra?: string} (extractCustomBenchmarkResult; extractResult refuses an empty one), and the
# example from its README.
GAB_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["name", "value", "unit"],
        "properties": {
            "name": {"type": "string"},
            "value": {"type": "number"},
            "unit": {"type": "string"},
            "range": {"type": "string"},
            "extra": {"type": "string"},
        },
        "additionalProperties": False,
    },
}
GAB_EXAMPLE = [
    {"name": "My Custom Smaller Is Better Benchmark - CPU Load", "unit": "Percent", "value": 50},
    {
        "name": "My Custom Smaller Is Better Benchmark - Memory Used",
        "unit": "Megabytes",
        "value": 100,
        "range": "3",
        "extra": "Value for Tooltip: 25\nOptional Num #2: 100\nAnything Else!",
    },
]


def export(capsys, run, form):
    assert main(["export", str(run), "--format", form]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("schema, example", [(BMF_SCHEMA, BMF_EXAMPLE), (GAB_SCHEMA, GAB_EXAMPLE)])
def test_the_schemas_here_accept_the_formats_own_examples(schema, example):
    jsonschema.validate(example, schema)


def test_bmf_is_valid_and_its_numbers_are_the_runs(capsys):
    document = export(capsys, BASE, "bmf")
    jsonschema.validate(document, BMF_SCHEMA)
    assert all(len(name) <= BMF_NAME_LIMIT for name in document)
    assert all(len(slug) <= BMF_SLUG_LIMIT for m in document.values() for slug in m)
    table = pd.read_csv(BASE / "results.csv")
    assert len(document) == len(table)
    for row in table.itertuples():
        metric = document[f"mnist-5k/z{row.latent_dim}/b{row.batch_size}/{row.backend}"]
        assert metric["throughput"] == {
            "value": row.samples_per_s,
            "lower_value": row.samples_per_s_min,
            "upper_value": row.samples_per_s_max,
        }
        assert metric["test-elbo"] == {"value": row.final_test_elbo}
        # The speed-up over torch in the same run, computed here from the CSV.
        torch = table[(table.backend == "torch") & (table.latent_dim == row.latent_dim)].iloc[0]
        speedup = metric["speedup-over-eager"]
        assert speedup["value"] == pytest.approx(row.samples_per_s / torch.samples_per_s)
        ratios = np.array(row.window_samples_per_s.split(), float) / np.array(
            torch.window_samples_per_s.split(), float
        )
        assert speedup["lower_value"] == pytest.approx(ratios.min())
        assert speedup["upper_value"] == pytest.approx(ratios.max())


def test_github_action_benchmark_is_valid_and_its_numbers_are_the_runs(capsys):
    entries = export(capsys, BASE, "github-action-benchmark")
    jsonschema.validate(entries, GAB_SCHEMA)
    table = pd.read_csv(BASE / "results.csv")
    assert len(entries) == 3 * len(table)  # throughput, speed-up and ELBO of every row
    by_name = {e["name"]: e for e in entries}
    numba = table[(table.backend == "numba") & (table.latent_dim == 20)].iloc[0]
    throughput = by_name["mnist-5k/z20/b128/numba throughput"]
    assert throughput["value"] == numba.samples_per_s and throughput["unit"] == "samples/s"
    assert throughput["range"] == (
        f"{numba.samples_per_s_min:.6g} to {numba.samples_per_s_max:.6g}"
    )
    assert by_name["mnist-5k/z20/b128/numba test-elbo"]["value"] == numba.final_test_elbo


@pytest.mark.parametrize("form", ["bmf", "github-action-benchmark"])
def test_the_names_are_the_same_in_every_run_of_a_row(capsys, form):
    def names(run):
        document = export(capsys, run, form)
        return sorted(document) if form == "bmf" else sorted(e["name"] for e in document)

    assert names(BASE) == names(RERUN)


def test_json_is_results_json_of_the_run(capsys):
    document = export(capsys, BASE, "json")
    jsonschema.validate(document, document_json_schema())
    assert document["provenance"] == json.loads((BASE / "env.json").read_text())
    table = pd.read_csv(BASE / "results.csv")
    assert [r["backend"] for r in document["rows"]] == list(table.backend)
    assert document["rows"][0]["window_samples_per_s"] == [
        float(v) for v in table.window_samples_per_s[0].split()
    ]
    assert document["gate"] == []  # recorded before the gate's tensors were kept
    gated = RESULTS / "run-scaling-bf16-fashion-mnist"
    document = export(capsys, gated, "json")
    jsonschema.validate(document, document_json_schema())
    gate = pd.read_csv(gated / "gate.csv")
    assert len(document["gate"]) == len(gate) > 0
    assert [g["passed"] for g in document["gate"]] == list(gate.passed)


def test_out_is_written_whole_and_never_over_a_file_that_is_not_json(tmp_path, capsys):
    out = tmp_path / "bmf.json"
    assert main(["export", str(BASE), "--format", "bmf", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    jsonschema.validate(json.loads(out.read_text()), BMF_SCHEMA)
    assert main(["export", str(RERUN), "--format", "bmf", "--out", str(out)]) == 0  # replaced
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    assert main(["export", str(BASE), "--out", str(notes)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not a JSON file" in err
    assert notes.read_text() == "mine\n"


def test_a_run_cut_short_or_with_nothing_to_export_is_one_line(tmp_path, capsys):
    cut = tmp_path / "cut"
    shutil.copytree(BASE, cut)
    text = (cut / "results.csv").read_bytes()
    (cut / "results.csv").write_bytes(text[: len(text) - 40])
    assert main(["export", str(cut), "--format", "bmf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cut short" in err and "export a finished run" in err

    bare = tmp_path / "bare"
    shutil.copytree(BASE, bare)
    table = pd.read_csv(bare / "results.csv")
    table[["samples_per_s", "final_test_elbo"]] = np.nan
    table.to_csv(bare / "results.csv", index=False)
    assert main(["export", str(bare), "--format", "github-action-benchmark"]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_a_nan_in_the_provenance_is_written_as_null(tmp_path, capsys):
    """Python's json reads NaN from env.json; strict JSON, which dashboards parse, has none."""
    run = tmp_path / "run"
    shutil.copytree(BASE, run)
    env = json.loads((run / "env.json").read_text())
    env["cpu_frequency"] = {"mhz": float("nan")}
    (run / "env.json").write_text(json.dumps(env))
    document = export(capsys, run, "json")
    assert document["provenance"]["cpu_frequency"] == {"mhz": None}
