"""``vae-bench report RESULTS... --out DIR``: the results as one self-contained HTML page,
``DIR/report.html``, to look at in a browser with no server and no network: every figure is
embedded (PNG as a data: URI), every table is HTML, there is no script and no external link.

A RESULTS directory is a run (``env.json`` and ``results.csv``: its gate per tensor from
``gate.csv``, throughput and speed-ups with the range of their timed windows, ELBO, its
figures, its provenance) or an experiment (``table.csv`` and ``provenance.json``: its table,
figures and provenance). Given several runs, the page opens with their history: each
backend's speed-up over eager and its test ELBO, run by run in the order given, so that a
change shows at a glance. ``run`` writes the page of its own directory beside ``summary.md``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vae_ref.atomic import atomic_write_text

from . import file_names as files
from . import machine_load, tables
from .result_files import ResultsFileError, read_experiment_table, read_gate
from .results_table import load_results
from .store import ResultsStore, StoreError, read_json_object

REPORT_NAME = files.REPORT
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
td.fail { background: #fdd; font-weight: bold; }
figure { display: inline-block; margin: 0 1em 1em 0; }
figure img { max-width: 38em; border: 1px solid #eee; }
details { margin-bottom: 1.5em; } h2 { border-bottom: 2px solid #ddd; margin-top: 2em; }
"""


class ReportError(ValueError):
    """A RESULTS directory that is neither a run nor an experiment (the message says why)."""


@dataclass(frozen=True)
class ResultsDirectory:
    """One directory of results, read for the page."""

    path: Path
    kind: str  # "run" or "experiment"
    table: pd.DataFrame  # results.csv or table.csv
    provenance: dict  # env.json or provenance.json
    gate: pd.DataFrame | None = None  # gate.csv where the run kept it
    busy: tuple[str, ...] = ()  # a run's timed stages on a busy machine (machine_load)

    @property
    def label(self) -> str:
        return self.path.name


def read_results(path: Path) -> ResultsDirectory:
    """The run or experiment in ``path``; ReportError saying what is missing or damaged."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(
            f"{path}: not a directory; give run or experiment directories "
            "(a run holds env.json and results.csv)"
        )
    if (path / files.RESULTS).exists() and (path / files.ENV).exists():
        kind, table_name, provenance_name = "run", files.RESULTS, files.ENV
    elif (path / files.TABLE).exists() and (path / files.PROVENANCE).exists():
        kind, table_name, provenance_name = "experiment", files.TABLE, files.PROVENANCE
    else:
        raise ReportError(
            f"{path}: neither a run (env.json and results.csv) nor an "
            "experiment (table.csv and provenance.json)"
        )
    try:
        # A run's table is read as compare reads it: checked, and older tables given the
        # columns added since.
        results = load_results(path) if kind == "run" else None
        table = results.table if results is not None else read_experiment_table(path / table_name)
        provenance = read_json_object(path / provenance_name)
        gate = read_gate(path / files.GATE) if (path / files.GATE).exists() else None
    except ResultsFileError:  # names the file, the line and what to do
        raise
    except (ValueError, OSError, pd.errors.ParserError) as error:  # ResultsTableError included
        raise ReportError(f"{path}: damaged results ({error})") from None
    if results is not None and results.cut_short:
        raise ReportError(
            f"{path / 'results.csv'}: {results.cut_short} (a copy cut off?); "
            "copy the run again, or rerun it with --resume"
        )
    if gate is not None and gate.empty:
        gate = None
    return ResultsDirectory(
        path, kind, table, provenance, gate, tuple(_busy_stages(path)) if kind == "run" else ()
    )


def _busy_stages(path: Path) -> list[str]:
    """The run's timed stages on a busy machine, as its cells recorded them. The page is of
    results.csv: a run copied without its cells, or with a damaged one, shows no warning (its
    summary.md, written with the cells, has it)."""
    try:
        return machine_load.busy_stages(ResultsStore(path).records(partial=True))
    except (StoreError, OSError, ValueError):
        return []


def write_report(paths: list[Path], out: Path) -> Path:
    """The page of ``paths`` (runs and experiments, oldest first) as ``out/report.html``;
    returns its path. Written whole or not at all."""
    results = [read_results(p) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    target = out / REPORT_NAME
    atomic_write_text(target, page(results))
    return target


def page(results: list[ResultsDirectory]) -> str:
    runs = [r for r in results if r.kind == "run"]
    title = ("vae-bench report: " + ", ".join(r.label for r in results))[:200]
    body = [f"<h1>{_e(title)}</h1>"]
    if len(runs) >= 2:
        body += _history(runs)
    for r in results:
        body += _run_section(r) if r.kind == "run" else _experiment_section(r)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ---- sections -----------------------------------------------------------------------------


def _run_section(r: ResultsDirectory) -> list[str]:
    table = r.table
    env = r.provenance
    parts = [
        f'<h2 id="{_e(r.label)}">Run {_e(r.label)}</h2>',
        f"<p>{_e(env.get('dataset', ''))}; CPU {_e(env.get('cpu', '?'))}; commit "
        f"{_e(str(env.get('git_commit', '?')))}; {_e(str(env.get('timestamp', '')))}</p>",
    ]
    if r.busy:
        parts += [
            '<p class="warning"><b>Warning: the machine was busy while these were '
            "timed</b>; their throughput and speed-ups measure the other work as much as "
            "the kernels. Rerun them on an idle machine.</p>",
            "<ul>" + "".join(f"<li>{_e(stage)}</li>" for stage in r.busy) + "</ul>",
        ]
    parts += ["<h3>Agreement gate</h3>", _gate_table(r)]
    timed = table[table.samples_per_s.notna()].reset_index(drop=True)
    if len(timed):
        parts += [
            "<h3>Throughput and speed-up over eager (range over the timed windows)</h3>",
            _html_table(_throughput_frame(timed)),
        ]
        strip = _window_strip(timed)
        if strip is not None:
            parts.append(_figure(strip, "timed windows, row by row"))
    trained = table[table.final_test_elbo.notna()]
    if len(trained):
        parts += [
            "<h3>ELBO after training</h3>",
            _html_table(
                trained[
                    [
                        "backend",
                        "precision",
                        "latent_dim",
                        "final_test_elbo",
                        "test_iwae",
                        "iwae_k",
                        "epochs",
                    ]
                ].rename(
                    columns={
                        "latent_dim": "z",
                        "final_test_elbo": "test ELBO",
                        "test_iwae": "log p(x) (IWAE)",
                        "iwae_k": "k",
                    }
                )
            ),
        ]
    parts += _figures(r.path)
    parts += _provenance(env)
    return parts


def _experiment_section(r: ResultsDirectory) -> list[str]:
    shown = [
        c
        for c in (
            "model",
            "backend",
            "latent_dim",
            "beta",
            "final_train_elbo",
            "final_test_elbo",
            "test_iwae",
            "iwae_k",
            "test_reconstruction",
            "test_kl",
            "train_test_gap",
            "active_units",
            "epochs",
            "seconds_per_epoch",
        )
        if c in r.table
    ]
    return (
        [f'<h2 id="{_e(r.label)}">Experiment {_e(r.label)}</h2>', _html_table(r.table[shown])]
        + _figures(r.path)
        + _provenance(r.provenance)
    )


def _gate_table(r: ResultsDirectory) -> str:
    if r.gate is not None:
        gate = r.gate.assign(verdict=r.gate.passed.map({True: "ok", False: "FAIL"}))
        gate = gate.sort_values(
            ["backend", "latent_dim", "fraction"], ascending=[True, True, False]
        )
        # gate.csv's columns, passed written as the verdict (a failure's problem note stays in
        # gate.csv).
        shown = gate[
            [c for c in tables.GATE_COLUMNS if c not in ("passed", "problem")] + ["verdict"]
        ]
        worst = _html_table(_worst_per_backend(gate))
        return (
            worst + "<details><summary>every tensor compared "
            f"({len(gate)})</summary>{_html_table(shown)}</details>"
        )
    # A run recorded before gate.csv: the worst tensor's fraction per row.
    rows = r.table[["backend", "latent_dim", "agreement", "worst_fraction"]].drop_duplicates(
        ["backend", "latent_dim"]
    )
    return (
        "<p>(per-tensor errors not recorded by this run: the worst tensor's fraction of "
        "its tolerance per backend)</p>" + _html_table(rows)
    )


def _worst_per_backend(gate: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (backend, latent), group in gate.groupby(["backend", "latent_dim"], sort=True):
        worst = group.loc[group.fraction.idxmax()]
        rows.append(
            {
                "backend": backend,
                "z": latent,
                "tensors": len(group),
                "failed": int((~group.passed.astype(bool)).sum()),
                "worst tensor": f"{worst.tensor} ({worst.case})",
                "of its tolerance": f"{worst.fraction:.1%}",
            }
        )
    return pd.DataFrame(rows)


def _throughput_frame(timed: pd.DataFrame) -> pd.DataFrame:
    """The run's throughput table: the columns every throughput table shows
    (``tables.SHOWN_COLUMNS``), with the speed-up over eager and its per-window spread."""
    speedups = tables.speedup(timed)
    spreads = tables.window_speedups(timed)
    header = tables.shown_cells(["speed-up vs eager", "per-window speed-up"])
    rows = []
    for r, s, w in zip(timed.itertuples(), speedups, spreads):
        windows = tables.windows_of(r.window_samples_per_s)
        cells = tables.shown_cells([tables.speedup_text(s), tables.spread_text(w)], r)
        rows.append(
            {
                "backend": r.backend,
                "device": r.device,
                "precision": r.precision,
                "z": r.latent_dim,
                "batch": r.batch_size,
                "gate": r.agreement,
                "windows": len(windows) or tables.NOT_COMPUTED,
                **dict(zip(header, cells)),
            }
        )
    return pd.DataFrame(rows)


# The instruction sets that name a CPU's class in a history's heading, the most telling last.
_ISA_NAMES = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX512_BF16"),
    ("amx_bf16", "AMX"),
)


def _cpu_label(provenance: dict) -> tuple[tuple, str]:
    """A run's CPU as a history groups it (its model and instruction sets, as compare tells
    CPUs apart: ``provenance.cpu_identity``) and as its heading names it."""
    from .provenance import cpu_identity

    identity = cpu_identity(provenance)
    isa = tuple(identity["isa"]) if isinstance(identity["isa"], list) else None
    named = [name for flag, name in _ISA_NAMES if isa and flag in isa]
    model = str(identity["model"] or "unknown CPU")
    return (model, isa), model + (f" with {named[-1]}" if named else "")


def _history(runs: list[ResultsDirectory]) -> list[str]:
    """Each backend's speed-up over eager and test ELBO, run by run, for each CPU and data
    set apart: a speed-up is a property of the CPU, an ELBO of the data, and a line across
    them would show a change of machine or data as a change of code."""
    records = []
    for i, r in enumerate(runs):
        key, cpu = _cpu_label(r.provenance)
        stamp = (
            f"{str(r.provenance.get('git_commit', '?'))[:7]}, "
            f"{str(r.provenance.get('timestamp', ''))[:10]}"
        )
        table = r.table.assign(speedup=tables.speedup(r.table))
        for row in table.itertuples():
            records.append(
                {
                    "run": i,
                    "label": f"{r.label} ({stamp})",
                    "cpu_key": key,
                    "cpu": cpu,
                    "dataset": row.dataset,
                    "backend": row.backend,
                    "precision": row.precision,
                    "z": row.latent_dim,
                    "batch": row.batch_size,
                    "speedup": row.speedup,
                    "elbo": row.final_test_elbo,
                }
            )
    history = pd.DataFrame(records)
    parts = [
        f'<h2 id="history">History of {len(runs)} runs</h2>',
        "<p>Oldest first, as given, for each CPU and data set apart; each run marked by "
        "its commit and date. Speed-up over PyTorch eager measured in the same run (the "
        "median over latent sizes, at the batch sizes every run of the group timed); "
        "test ELBO per latent size.</p>",
    ]
    for (_key, dataset), group in history.groupby(["cpu_key", "dataset"], sort=False):
        parts += _history_group(group, f"{group.cpu.iloc[0]}, {dataset}")
    return parts


def _history_group(history: pd.DataFrame, title: str) -> list[str]:
    """The history of the runs of one CPU and data set (``history``: their rows)."""
    order = list(dict.fromkeys(history.run))
    history = history.assign(run=history.run.map({run: i for i, run in enumerate(order)}))
    labels = list(dict.fromkeys(history.label))
    parts = [f"<h3>{_e(title)}: {len(order)} run{'s' if len(order) != 1 else ''}</h3>"]
    if len(order) < 2:
        return parts + ["<p>Nothing to compare it with on this CPU and data set.</p>"]
    # What every run of the group measured: the batch sizes all of them timed (a scaling
    # sweep's others are in its own section), else all.
    runs_per_batch = history.groupby("batch").run.nunique()
    common = runs_per_batch[runs_per_batch == len(order)].index
    if len(common):
        history = history[history.batch.isin(common)]
    speed = history[~history.backend.isin(list(tables.YARDSTICK.values()))]
    history = history.assign(backend=history.backend + " (" + history.precision + ")")
    speed = history.loc[speed.index].dropna(subset=["speedup"])
    if len(speed):
        medians = speed.groupby(["backend", "batch", "run"]).speedup.median().reset_index()
        parts.append(
            _figure(
                _line_plot(
                    medians,
                    ("backend", "batch"),
                    "speedup",
                    labels,
                    "speed-up over eager",
                    f"Speed-up over eager, run by run: {title}",
                ),
                f"speed-up history, {title}",
            )
        )
        wide = medians.assign(label=medians.run.map(dict(enumerate(labels)))).pivot_table(
            index=["backend", "batch"], columns="label", values="speedup", sort=False
        )
        parts.append(
            _html_table(
                wide[[c for c in labels if c in wide]].map(tables.speedup_text).reset_index()
            )
        )
    elbo = history.dropna(subset=["elbo"])
    if len(elbo):
        parts.append(
            _figure(
                _line_plot(
                    elbo,
                    ("backend", "z"),
                    "elbo",
                    labels,
                    "test ELBO (nats)",
                    f"Test ELBO, run by run: {title}",
                ),
                f"ELBO history, {title}",
            )
        )
    return parts


def _window_strip(timed: pd.DataFrame) -> bytes | None:
    """Every timed window of every row as a dot (samples/s, log scale), the row's median a
    bar: the spread a min-max range hides (a slow outlier, two clusters). None where no row
    kept two windows or more."""
    from matplotlib.figure import Figure

    rows = [
        (
            f"{r.backend} z={r.latent_dim} b={r.batch_size}",
            tables.windows_of(r.window_samples_per_s),
            r.samples_per_s,
        )
        for r in timed.itertuples()
    ]
    rows = [row for row in rows if len(row[1]) >= 2]
    if not rows:
        return None
    fig = Figure(figsize=(8, 1.0 + 0.28 * len(rows)))
    ax = fig.add_subplot()
    for y, (_label, windows, median) in enumerate(rows):
        ax.plot(windows, np.full(len(windows), y), "o", color="C0", alpha=0.6, markersize=4)
        ax.plot([median, median], [y - 0.3, y + 0.3], color="C3", linewidth=2)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("training samples/s of each timed window (bar: the median)")
    ax.set_title("Timed windows, row by row")
    ax.grid(alpha=0.3, axis="x", which="both")
    return _png(fig)


def _line_plot(
    frame: pd.DataFrame,
    names: tuple[str, ...],
    value: str,
    labels: list[str],
    ylabel: str,
    title: str,
) -> bytes:
    """One line per ``names`` group of ``frame``: ``value`` against the run's position."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 4.2))
    ax = fig.add_subplot()
    for key, group in frame.groupby(list(names), sort=True):
        group = group.sort_values("run")
        ax.plot(
            group.run,
            group[value],
            marker="o",
            label=" ".join(f"{n}={k}" if n != "backend" else str(k) for n, k in zip(names, key)),
        )
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return _png(fig)


def _png(fig) -> bytes:
    """``fig`` as PNG bytes, cropped to what it draws (a legend beside the axes included)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _figures(path: Path) -> list[str]:
    pngs = sorted(path.glob("*.png"))
    if not pngs:
        return []
    return ["<h3>Figures</h3>"] + [_figure(p.read_bytes(), p.stem.replace("_", " ")) for p in pngs]


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _provenance(record: dict) -> list[str]:
    rows = [
        (key, value if isinstance(value, str) else json.dumps(value))
        for key, value in record.items()
    ]
    cells = "".join(
        f'<tr><td>{_e(k)}</td><td style="text-align:left">{_e(v)}</td></tr>' for k, v in rows
    )
    return [f"<details><summary>Provenance</summary><table>{cells}</table></details>"]


def _html_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, float | np.floating):
            if math.isnan(value):
                return tables.NOT_COMPUTED
            if float(value).is_integer() and abs(value) < 1e9:
                return f"{int(value)}"
            return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.3f}"
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return tables.NOT_COMPUTED
        return str(value)

    head = "".join(f"<th>{_e(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            text = cell(value)
            failed = text in ("FAIL", "fail", "UNGATED")
            cells.append(('<td class="fail">' if failed else "<td>") + f"{_e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
