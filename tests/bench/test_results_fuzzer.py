"""Every reader of results under a fuzzer: a real run directory (a committed one, copied) and
real experiment directories, damaged at random, must give each command that reads them
(``compare`` both ways, ``report``, ``merge``, ``seeds``) either a result or exit status 2
with one line on stderr: never a traceback, and never a change to a file outside ``--out``.

The damage: a file truncated at any byte, or deleted; in a CSV, any cell replaced by text,
NaN, an infinity, a negative or a huge number or nothing, any column dropped or renamed; in a
JSON file, any key dropped or renamed, any value given another type. The examples are drawn
by hypothesis (``FUZZ_EXAMPLES`` each run, derandomized so CI sees the same ones; raise it
with VAE_BENCH_FUZZ_EXAMPLES for a longer search). The last test removes one reader's
validation and shows the fuzzer failing it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from checkout import RESULTS
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from seed_experiments import runs as seed_runs

from bench import results_table
from bench.cli import main

RUN = RESULTS / "run-scaling-bf16-fashion-mnist"
FUZZ_EXAMPLES = int(os.environ.get("VAE_BENCH_FUZZ_EXAMPLES", "20"))
BAD_VALUES = ["garbage", "nan", "inf", "-inf", "-1", "1e308", "", "0", "True", "[1, 2]"]
JSON_VALUES = [None, "text", 1.5, -1, [], {}, True]
# No shrinking: an example that fails is reported as drawn (each takes a second or two;
# shrinking one took hypothesis over five minutes).
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def damage(
    data,
    directory: Path,
    only: tuple[str, ...] = (),
    kinds: tuple[str, ...] = ("truncate", "delete", "edit"),
) -> str:
    """One random damage (of ``kinds``) to one file below ``directory`` (of the names
    ``only``, if given); what was done, for the report."""
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and p.suffix in (".csv", ".json")
        and not p.name.startswith(".")
        and (not only or p.name in only)
    )
    path = data.draw(st.sampled_from(files), label="file")
    kind = data.draw(st.sampled_from(kinds), label="damage")
    name = path.relative_to(directory)
    if kind == "delete":
        path.unlink()
        return f"deleted {name}"
    text = path.read_text()
    if kind == "truncate":
        cut = data.draw(st.integers(0, max(len(text) - 1, 0)), label="cut at")
        path.write_text(text[:cut])
        return f"{name} cut at byte {cut}"
    if path.suffix == ".json":
        return f"{name}: {_edit_json(data, path, json.loads(text))}"
    return f"{name}: {_edit_csv(data, path, text)}"


def _edit_csv(data, path: Path, text: str) -> str:
    table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    if table.empty or not len(table.columns):
        path.write_text(text + "garbage\n")
        return "a garbage line added"
    column = data.draw(st.sampled_from(list(table.columns)), label="column")
    edit = data.draw(st.sampled_from(["cell", "drop", "rename"]), label="edit")
    if edit == "drop":
        table = table.drop(columns=[column])
    elif edit == "rename":
        table = table.rename(columns={column: column + "_renamed"})
    else:
        row = data.draw(st.integers(0, len(table) - 1), label="row")
        value = data.draw(st.sampled_from(BAD_VALUES), label="value")
        table.loc[row, column] = value
        edit = f"row {row} = {value!r}"
    path.write_text(table.to_csv(index=False))
    return f"{column}: {edit}"


def _edit_json(data, path: Path, record) -> str:
    """Drop, rename or retype one key anywhere in the record (a non-object record is
    replaced by a value of another type)."""
    holders = []

    def walk(node, where):
        if isinstance(node, dict):
            holders.extend((node, key, f"{where}.{key}") for key in node)
            for key, value in node.items():
                walk(value, f"{where}.{key}")

    walk(record, "")
    if not holders:
        path.write_text(json.dumps(data.draw(st.sampled_from(JSON_VALUES))))
        return "replaced"
    node, key, where = data.draw(st.sampled_from(holders), label="key")
    edit = data.draw(st.sampled_from(["drop", "rename", "retype"]), label="edit")
    if edit == "drop":
        del node[key]
    elif edit == "rename":
        node[key + "_renamed"] = node.pop(key)
    else:
        node[key] = data.draw(st.sampled_from(JSON_VALUES), label="value")
        edit = f"= {node[key]!r}"
    path.write_text(json.dumps(record))
    return f"{where} {edit}"


def snapshot(*roots: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def outcome(capsys, words: list[str], allowed: tuple[int, ...], what: str) -> None:
    """``main(words)`` gives one of ``allowed``; at 2, one line and no traceback. Any other
    exception propagates: that is the fuzzer's finding."""
    code = main(words)
    err = capsys.readouterr().err
    assert code in allowed, (what, words, code, err)
    assert "Traceback" not in err, (what, words, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("vae-bench: error: "), (what, err)


def fuzz_run_readers(
    data, root: Path, capsys, commands=("compare", "report", "merge", "export"), **which
) -> None:
    case = root / f"case{len(list(root.iterdir()))}"
    damaged, intact, out = case / "damaged", case / "intact", case / "out"
    shutil.copytree(RUN, damaged, ignore=shutil.ignore_patterns("*.png", "report.html"))
    shutil.copytree(damaged, intact)
    what = damage(data, damaged, **which)
    before = snapshot(damaged, intact)
    if "compare" in commands:  # 1 is its verdict on a damaged number (a regression)
        outcome(capsys, ["compare", str(intact), str(damaged)], (0, 1, 2, 3), what)
        outcome(capsys, ["compare", str(damaged), str(intact)], (0, 1, 2, 3), what)
    if "report" in commands:
        outcome(capsys, ["report", str(damaged), "--out", str(out / "report")], (0, 2), what)
    if "merge" in commands:
        outcome(capsys, ["merge", str(damaged), "--out", str(out / "merged")], (0, 2), what)
    if "export" in commands:
        for form in ("json", "bmf", "github-action-benchmark"):
            outcome(
                capsys,
                ["export", str(damaged), "--format", form, "--out", str(out / f"{form}.json")],
                (0, 2),
                what,
            )
    assert snapshot(damaged, intact) == before, what


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_damaged_run_directories_give_a_result_or_one_line(data, tmp_path, capsys):
    fuzz_run_readers(data, tmp_path, capsys)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_damaged_seed_runs_give_a_result_or_one_line(data, tmp_path, capsys):
    case = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    case.mkdir()
    compared = seed_runs(case)
    victim = data.draw(st.sampled_from(compared), label="run")
    what = damage(data, victim)
    before = snapshot(case)
    # seeds: 1 is its verdict "not within the noise of seeds".
    outcome(capsys, ["seeds", *map(str, compared), "--out", str(case / "out")], (0, 1, 2), what)
    assert {k: v for k, v in snapshot(case).items() if "/out/" not in k} == before, what


def test_the_fuzzer_fails_a_reader_whose_validation_is_removed(monkeypatch, tmp_path, capsys):
    """Without load_results' check of each row's windows and sizes, a garbage cell reaches
    the code that trusts it: the fuzzer must find it (a traceback, not one line). Only
    compare, the reader's command, on results.csv's cells, where that check stands guard."""
    monkeypatch.setattr(results_table, "_check_rows", lambda table, csv_path: None)

    tried = []

    @settings(FUZZ, max_examples=200)
    @given(data=st.data())
    def fuzz(data):  # the cells of results.csv only: where that check stands guard
        tried.append(1)
        fuzz_run_readers(
            data, tmp_path, capsys, commands=("compare",), only=("results.csv",), kinds=("edit",)
        )

    with pytest.raises(BaseException) as found:
        fuzz()
    assert not isinstance(found.value, (pytest.skip.Exception, KeyboardInterrupt))
    print(f"found after {len(tried)} examples: {type(found.value).__name__}")
