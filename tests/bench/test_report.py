"""``vae-bench report``: one self-contained HTML page of runs and experiments, opened in a real
browser (headless Chromium on a closed network), which must load every figure and show every
table without asking the network for anything."""

import os
import shutil

import pandas as pd
import pytest
from checkout import RESULTS

from bench.cli import main
from bench.report import write_report

RUNS = [RESULTS / "run-full-mnist-5k", RESULTS / "run-full-bf16-mnist-5k"]
EXPERIMENT = RESULTS / "experiment-mnist-5k-50ep"


def test_the_page_holds_every_section_and_fetches_nothing(tmp_path):
    page = write_report([*RUNS, EXPERIMENT], tmp_path).read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert 'src="data:image/png;base64,' in page and 'src="file:' not in page
    for heading in (
        "History of 2 runs",
        "Run run-full-mnist-5k",
        "Agreement gate",
        "Throughput and speed-up over eager",
        "ELBO after training",
        "Experiment experiment-mnist-5k-50ep",
        "Provenance",
    ):
        assert heading in page, heading
    # The two runs are from two CPUs: no history figure, each alone in its group.
    assert page.count("Nothing to compare it with on this CPU and data set.") == 2
    figures = sum(len(list(d.glob("*.png"))) for d in [*RUNS, EXPERIMENT])
    assert page.count("<img ") == figures  # neither run kept its windows: no strip


def test_bad_results_are_one_line(tmp_path, capsys):
    assert main(["report", str(RESULTS), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a run (env.json and results.csv)" in err
    damaged = tmp_path / "damaged"
    shutil.copytree(RUNS[0], damaged, ignore=shutil.ignore_patterns("cells", "*.png"))
    (damaged / "results.csv").write_text("backend,latent_dim\nnumba,x\n")
    assert main(["report", str(damaged), "--out", str(tmp_path / "r")]) == 2
    assert "not a results table of this schema" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.html").exists()


@pytest.fixture(scope="module")
def browser():
    from report_verification.headless_chromium import chromium

    found = chromium()
    if found is None:
        if os.environ.get("VAE_BENCH_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required (VAE_BENCH_REQUIRE_CHROMIUM) but not installed")
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    return found


@pytest.mark.slow
def test_chromium_loads_every_figure_and_table(browser, tmp_path):
    from report_verification.headless_chromium import inspect_page

    page = write_report([*RUNS, EXPERIMENT], tmp_path)
    seen = inspect_page(page, tmp_path / "shot.png", executable=browser)
    images = seen["images"]
    assert len(images) == page.read_text().count("<img ")
    broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, broken
    assert len(seen["tables"]) >= 10 and all(rows >= 2 for rows in seen["tables"])
    assert "History of 2 runs" in seen["headings"]
    assert all(url.startswith(("file:", "data:")) for url in seen["requests"]), seen["requests"]
    assert (tmp_path / "shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_browser_check_sees_a_broken_figure(browser, tmp_path):
    """The check can fail: a page whose figure is not a PNG is caught."""
    from report_verification.headless_chromium import inspect_page

    page = write_report(RUNS[:1], tmp_path)
    text = page.read_text()
    start = text.index("base64,") + len("base64,")
    page.write_text(text[:start] + "bm90IGEgUE5H" + text[text.index('"', start) :])
    images = inspect_page(page, executable=browser)["images"]
    assert sum(not (i["complete"] and i["width"] > 0) for i in images) == 1


def test_report_writes_only_into_a_directory_of_reports(tmp_path, capsys):
    """It replaced another run's report.html (exit 0), and took no lock: now a run directory,
    an input and a directory of other files are refused in one line, their files unchanged."""
    other_run = tmp_path / "other-run"
    shutil.copytree(GATED_RUN, other_run)  # a run with its page
    before = (other_run / "report.html").read_bytes()
    for out, message in (
        (other_run, "holds vae-bench results of another kind"),
        (RUNS[0], "is the results directory"),
    ):
        assert main(["report", str(RUNS[0]), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert (other_run / "report.html").read_bytes() == before
    reports = tmp_path / "reports"
    assert main(["report", str(RUNS[0]), "--out", str(reports)]) == 0
    assert main(["report", str(RUNS[0]), "--out", str(reports)]) == 0  # its own: rewritten


GATED_RUN = RESULTS / "run-scaling-bf16-fashion-mnist"  # a committed run with its gate.csv


def damaged_run(tmp_path, damage):
    run = tmp_path / "damaged"
    shutil.copytree(GATED_RUN, run, ignore=shutil.ignore_patterns("cells", "*.png"))
    damage(run)
    return run


def _gate_without(column):
    def damage(run):
        gate = pd.read_csv(run / "gate.csv")
        gate.drop(columns=[column]).to_csv(run / "gate.csv", index=False)

    return damage


def _gate_cell(column, value):
    def damage(run):
        gate = pd.read_csv(run / "gate.csv")
        gate[column] = gate[column].astype(object)
        gate.loc[0, column] = value
        gate.to_csv(run / "gate.csv", index=False)

    return damage


def _garbage_window(run):
    table = pd.read_csv(run / "results.csv")
    table.loc[0, "window_samples_per_s"] = "garbage"
    table.to_csv(run / "results.csv", index=False)


def _cut_mid_row(run):
    text = (run / "results.csv").read_text()
    (run / "results.csv").write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])


@pytest.mark.parametrize(
    "damage, message",
    [
        # Issue 44's table: an AttributeError, a ValueError, and a row dropped without a word.
        (_gate_without("passed"), "gate.csv: no column passed"),
        (_gate_cell("fraction", "lots"), "gate.csv: line 2: fraction is 'lots', not a number"),
        (_gate_cell("passed", "maybe"), "gate.csv: line 2: passed is 'maybe', not True or False"),
        (_garbage_window, "line 2: window_samples_per_s is 'garbage'"),
        (_cut_mid_row, "cut short: line"),
    ],
)
def test_a_damaged_run_is_one_line_and_no_page(tmp_path, capsys, damage, message):
    run = damaged_run(tmp_path, damage)
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r" / "report.html").exists()


NOISE = RESULTS / "compare-noise-intel-xeon"
INTEL = [NOISE / "base", NOISE / "rerun", NOISE / "numba-slowed-30pct"]  # one Xeon, mnist-5k


def test_history_never_draws_one_line_across_cpus_or_data_sets(tmp_path):
    """The history drew AMD and Intel runs, and mnist-5k and Fashion-MNIST runs, on one line
    (issue 40, part 5): a change of machine or data looked like a change of code."""
    fashion = tmp_path / "fashion"  # the Xeon's base run, its rows relabelled another data set
    shutil.copytree(NOISE / "base", fashion, ignore=shutil.ignore_patterns("cells", "*.png"))
    table = pd.read_csv(fashion / "results.csv")
    table["dataset"] = "fashion-mnist"
    table.to_csv(fashion / "results.csv", index=False)
    page = write_report([RUNS[0], *INTEL, fashion], tmp_path / "out").read_text()
    assert "<h3>Intel(R) Xeon(R) Processor with AMX, mnist-5k: 3 runs</h3>" in page
    assert "<h3>AMD EPYC with AVX2, mnist-5k: 1 run</h3>" in page
    assert "<h3>Intel(R) Xeon(R) Processor with AMX, fashion-mnist: 1 run</h3>" in page
    history = page.split('<h2 id="history">', 1)[1].split("<h2 ", 1)[0]
    assert history.count("<img ") == 2  # speed-up and ELBO, of the three Xeon runs only
    assert 'alt="speed-up history, Intel(R) Xeon(R) Processor with AMX, mnist-5k"' in history
    # Each run marked by its commit and date; lines named with their precision.
    assert "<th>base (1e31a17, 2026-12-03)</th>" in history
    assert "<td>numba (float32)</td>" in history


def test_each_rows_windows_are_drawn_where_the_run_kept_them(tmp_path):
    page = write_report([NOISE / "base", RUNS[0]], tmp_path).read_text()
    assert page.count('alt="timed windows, row by row"') == 1  # base's 9 a row; not RUNS[0]'s


def test_the_scaling_figure_gives_each_precision_its_own_peak(monkeypatch, tmp_path):
    """Its one axis said "% of the float32 GEMM peak" for bf16 rows too, whose % is of the
    bf16 peak (issue 40, part 5)."""
    from bench import figures

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig))
    rows = pd.read_csv(RESULTS / "run-scaling-bf16-fashion-mnist" / "results.csv")
    figures.scaling(rows, tmp_path / "scaling.png")
    [fig] = drawn
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == [
        "training samples/s",
        "% of the device's float32 GEMM peak",
        "% of the device's bf16 GEMM peak",
    ]
    bf16 = fig.axes[2]
    assert {line.get_label() for line in bf16.get_lines()} == set(
        rows[rows.precision == "bf16"].backend
    )
