"""A results column is declared in one place: a ResultRow field made by ``tables.shown`` (its
header and cell), its value worked out where it is measured. Declared, it appears in
results.csv, the markdown throughput table (a run's summary.md), the profile's text, the HTML
report's table and compare's JSON, with nothing else to edit.

The test declares one in a copy of ``bench/`` (a column of steps per millisecond) and reads
every output of the copy. Undeclared, the same script finds it nowhere: the check can fail."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from checkout import ROOT

DECLARED = '    steps_per_ms: float = shown("steps/ms", lambda r: f"{r.steps_per_ms:.4f}")\n'
VALUE = '            "steps_per_ms": 1 / ms,\n'

READ_EVERY_OUTPUT = """
import json, sys
from pathlib import Path
from bench import tables
from bench.compare.formats import render
from bench.compare.runs import compare_runs
from bench.profile_text import profile_text
from bench.report import _throughput_frame
from bench.results_table import load_results
from bench.throughput import Measurement
from vae_ref import VAEConfig

config = VAEConfig(latent_dim=20)
measured = [
    Measurement("torch", "eager", 1.0, ms_per_step=[4.0, 4.2, 3.9]),
    Measurement("numba", "fused", 2.0, ms_per_step=[2.0, 2.1, 1.9]),
]
peaks = {"cpu": (500.0, "measured", "this CPU")}
frame = tables.results_frame(
    m.row(config, 128, {"cpu": 500.0}, agreement="pass", dataset="mnist-5k", seed=0)
    for m in measured
)
out = Path(sys.argv[1])
for side in ("old", "new"):
    (out / side).mkdir()
    (out / side / "results.csv").write_text(frame.to_csv(index=False))
csv_header = (out / "new" / "results.csv").read_text().splitlines()[0].split(",")
comparison = compare_runs(
    load_results(out / "old"), load_results(out / "new"), fail_throughput=0.25, fail_elbo=1.0
)
print(json.dumps({
    "csv": csv_header,
    "markdown": "\\n".join(tables.throughput_table(frame)),
    "profile": profile_text(measured, config, 128, peaks),
    "html": list(_throughput_frame(frame).columns),
    "compare": {r["backend"]: r for r in json.loads(render(comparison, "json"))["rows"]},
}))
"""


def outputs(tmp_path: Path, declare: bool) -> dict:
    """Every output of a copy of bench/, with the column declared there or not."""
    copy = tmp_path / ("declared" if declare else "as-is")
    shutil.copytree(ROOT / "bench", copy / "bench")
    if declare:
        tables = copy / "bench" / "tables.py"
        text = tables.read_text()
        anchor = "    gemm_only_ms: float = NAN"
        assert text.count(anchor) == 1, "ResultRow's last timing field moved: update the test"
        tables.write_text(text.replace(anchor, DECLARED + anchor))
        throughput = copy / "bench" / "throughput.py"
        text = throughput.read_text()
        anchor = '            "gemm_only_ms": self.gemm_only_ms,\n'
        assert text.count(anchor) == 1, "Measurement.columns moved: update the test"
        throughput.write_text(text.replace(anchor, anchor + VALUE))
    work = tmp_path / ("work-declared" if declare else "work-as-is")
    work.mkdir()
    child = subprocess.run(
        [sys.executable, "-c", READ_EVERY_OUTPUT, str(work)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(copy), str(ROOT)])},
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout)


@pytest.mark.slow
def test_a_column_declared_once_appears_in_every_output(tmp_path):
    found = outputs(tmp_path, declare=True)
    assert "steps_per_ms" in found["csv"]
    # numba's row: 1 / 2.0 ms (the median of its windows)
    assert "steps/ms" in found["markdown"] and "0.5000" in found["markdown"]
    assert "steps/ms" in found["profile"] and "0.5000" in found["profile"]
    assert "steps/ms" in found["html"]
    numba = found["compare"]["numba"]
    assert numba["steps_per_ms_old"] == numba["steps_per_ms_new"] == pytest.approx(0.5)


@pytest.mark.slow
def test_without_the_declaration_the_column_is_nowhere(tmp_path):
    found = outputs(tmp_path, declare=False)
    assert "steps_per_ms" not in found["csv"]
    assert "steps/ms" not in found["markdown"] + found["profile"] + " ".join(found["html"])
    assert "steps_per_ms_old" not in found["compare"]["numba"]
