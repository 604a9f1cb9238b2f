"""The results' one schema and how it is shown: the columns of every table the harness writes,
the speed-up of a row over a peer measured in the same run, number formatting, and the
markdown tables (a run's ``summary.md``, an experiment's ``table.md``).

Speed-ups are over a peer *on the same device, in the same run, at the same latent and batch
size*: the ratio the harness's interleaving makes trustworthy. A CPU row is compared with
``torch`` (PyTorch eager, the yardstick), ``torch-compile`` and ``jax`` on the CPU; a GPU row
with their CUDA twins. Comparing a GPU kernel with CPU PyTorch would say nothing about it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from kernels import FLOAT32_TWINS, REFERENCE_BACKEND
from vae_ref.config import DEFAULT_HIDDEN

from .provenance import as_markdown

RESULTS_SCHEMA = 1
# The last section of a run's summary.md and of an experiment's table.md (and of a profile
# report): the machine and the versions, which the command line leaves out when it prints them.
ENVIRONMENT_HEADING = "## Environment"
PROVENANCE_HEADING = "## Provenance"
NAN = math.nan


@dataclass(frozen=True)
class Shown:
    """How the throughput tables (a run's summary.md, the profile's text, the HTML report)
    show a results column: its header, and its cell made from the whole row (a cell may read
    two columns, as min–max does)."""

    label: str
    cell: Callable[[Any], str]
    also_reads: tuple[str, ...] = ()  # the other columns its cell is made of

    def columns(self, column: str) -> tuple[str, ...]:
        """``column`` and the others its cell reads: the values compare's JSON gives."""
        return (column, *self.also_reads)


def shown(label: str, cell: Callable[[Any], str], also_reads: tuple[str, ...] = ()) -> Any:
    """A ResultRow field the throughput tables show (``Shown``). Declaring it is all a new
    column needs to appear in results.csv, the markdown and HTML tables, the profile's text
    and compare's JSON; its value comes from where it is measured (for a timing column,
    ``throughput.Measurement.columns``)."""
    return field(default=math.nan, metadata={"shown": Shown(label, cell, also_reads)})


@dataclass(kw_only=True)
class ResultRow:
    """One row of a run's results.csv: a backend at one latent size and batch size, with its
    gate verdict, its timing (at every batch size) and its trained scores (at the first).
    Built in one place (``pipeline.result_rows``), stored in a cell as a dict and read back
    by ``from_record``, which fails loudly on a field it does not know or one it needs."""

    backend: str
    device: str
    precision: str  # of the GEMM operands (kernels.base.MixedPrecision)
    latent_dim: int
    batch_size: int
    agreement: str  # the gate's verdict: "pass", "fail" or "unavailable"
    worst_fraction: float = NAN  # the worst tensor's error as a fraction of its tolerance
    # -- timing (throughput.Measurement.columns); NaN: not timed
    samples_per_s: float = shown("samples/s", lambda r: f"{r.samples_per_s:,.0f}")
    samples_per_s_min: float = shown(
        "min–max",
        lambda r: f"{r.samples_per_s_min:,.0f}–{r.samples_per_s_max:,.0f}",
        ("samples_per_s_max",),
    )
    samples_per_s_max: float = NAN
    # samples/s of every timed window, in the order they ran (space-separated): window i of
    # each backend ran in round i of the same rotation, so window i of a row and of its
    # yardstick form a same-conditions pair (what compare's significance test is built on)
    window_samples_per_s: str = ""
    ms_per_step: float = shown("ms/step", lambda r: f"{r.ms_per_step:.3f}")
    gflops: float = shown("GFLOP/s", lambda r: f"{r.gflops:.1f}")
    # of the device's GEMM peak at the row's precision
    pct_peak: float = shown("% peak", lambda r: f"{r.pct_peak:.1f}%")
    launch_floor_ms: float = shown(
        "launch floor ms (x)",
        lambda r: _floor_cell(r.launch_floor_ms, r.ms_per_step),
        ("ms_per_step",),
    )
    warmup_s: float = shown("warm-up s", lambda r: f"{r.warmup_s:.2f}")
    peak_memory_mb: float = shown(
        "memory MB", lambda r: fmt(r.peak_memory_mb, ".1f", nan=NOT_COMPUTED)
    )
    gemm_only_ms: float = NAN  # shown in a table of its own, the GEMMs-alone ceiling
    # -- training and evaluation (pipeline.Evaluation); NaN: not trained
    final_train_elbo: float = NAN
    average_train_elbo: float = NAN
    final_test_elbo: float = NAN
    test_iwae: float = NAN
    iwae_k: float = NAN
    epochs: float = NAN
    dataset: str
    seed: int
    note: str = ""

    @classmethod
    def from_record(cls, record: dict) -> ResultRow:
        """A row stored as a dict (ValueError saying what is wrong with it). Columns added
        since a row was written take the value older rows imply (ADDED_COLUMNS)."""
        unknown = sorted(set(record) - set(RESULT_COLUMNS))
        if unknown:
            raise ValueError(f"unknown fields {unknown} (known: {', '.join(RESULT_COLUMNS)})")
        missing = sorted(REQUIRED_COLUMNS - set(record) - set(ADDED_COLUMNS))
        if missing:
            raise ValueError(f"missing fields {missing}")
        return cls(**{**ADDED_COLUMNS, **record})


# A run's results.csv: one row per (backend, latent size, batch size), these columns in order.
RESULT_COLUMNS = tuple(f.name for f in fields(ResultRow))
# The columns the throughput tables show, in the order they show them: where the speed-ups
# over each peer go (SPEEDUPS), then any shown column this list does not name, in the order
# of ResultRow (a new column needs no entry here).
SPEEDUPS = "speed-ups"
SHOWN_ORDER = (
    "samples_per_s",
    "samples_per_s_min",
    "ms_per_step",
    "gflops",
    "pct_peak",
    SPEEDUPS,
    "peak_memory_mb",
    "launch_floor_ms",
    "warmup_s",
)
SHOWN: dict[str, Shown] = {
    f.name: f.metadata["shown"] for f in fields(ResultRow) if "shown" in f.metadata
}
SHOWN_COLUMNS = tuple(c for c in SHOWN_ORDER if c in SHOWN or c == SPEEDUPS) + tuple(
    c for c in SHOWN if c not in SHOWN_ORDER
)
REQUIRED_COLUMNS = frozenset(f.name for f in fields(ResultRow) if f.default is MISSING)
# Columns added after tables were first committed, with the value older tables imply.
ADDED_COLUMNS = {
    "device": "cpu",
    "launch_floor_ms": math.nan,
    "peak_memory_mb": math.nan,
    "gemm_only_ms": math.nan,
    "precision": "float32",
    "window_samples_per_s": "",
}


def results_frame(rows) -> pd.DataFrame:
    """The results table of ``rows`` (ResultRow), its columns in order."""
    return pd.DataFrame([asdict(r) for r in rows], columns=list(RESULT_COLUMNS))


# the rest are numbers
TEXT_COLUMNS = tuple(f.name for f in fields(ResultRow) if f.type == "str")


def windows_text(samples_per_s) -> str:
    """Per-window samples/s as stored in a results cell (6 significant digits: far finer
    than the windows' own spread)."""
    return " ".join(f"{value:.6g}" for value in samples_per_s)


def windows_of(text) -> np.ndarray:
    """The per-window samples/s stored by ``windows_text`` (empty where a row has none: not
    timed, or written before windows were kept); ValueError if the text is not numbers."""
    if not isinstance(text, str) or not text.strip():
        return np.empty(0)
    return np.array([float(piece) for piece in text.split()])


KEYS = ["backend", "latent_dim", "batch_size"]  # a list: pandas reads a tuple as one key

# An experiment's table.csv (one row per model) and curves.csv (one row per model and epoch).
# How a model uses its latent space (bench.experiment.latent_columns): the test ELBO's terms,
# the gap between the train and test sets' ELBO, the active units and the KL of each latent
# dimension (space-separated, by dimension). Added after tables were first committed: an
# older table gets them as not computed (ADDED_TABLE_COLUMNS).
LATENT_COLUMNS = ("test_reconstruction", "test_kl", "train_test_gap", "active_units", "kl_per_dim")
TABLE_COLUMNS = (
    "model",
    "backend",
    "latent_dim",
    "hidden_dim",
    "beta",
    "final_train_elbo",
    "average_train_elbo",
    "final_test_elbo",
    "test_iwae",
    "iwae_k",
    "epochs",
    "train_seconds",
    "seconds_per_epoch",
    "dataset",
    "seed",
    *LATENT_COLUMNS,
)
ADDED_TABLE_COLUMNS = {column: "" if column == "kl_per_dim" else NAN for column in LATENT_COLUMNS}
CURVE_COLUMNS = (
    "dataset",
    "name",
    "model",
    "latent_dim",
    "epoch",
    "train_elbo",
    "train_reconstruction",
    "train_kl",
    "test_elbo",
    "test_reconstruction",
    "test_kl",
    "seconds",
)

# A run's gate.csv: every tensor the agreement gate compared, per backend, case and latent size.
GATE_COLUMNS = (
    "backend",
    "latent_dim",
    "case",
    "tensor",
    "max_abs",
    "max_rel",
    "reference_error",
    "tolerance",
    "fraction",
    "passed",
    "problem",
)


def gate_records(gates, latent: int) -> list[dict]:
    """The gate's per-tensor comparisons (``pipeline.GateRecord``s) as gate.csv's rows."""
    return [
        {
            "backend": g.backend,
            "latent_dim": latent,
            "case": c.case,
            "tensor": c.tensor,
            "max_abs": c.max_abs,
            "max_rel": c.max_rel,
            "reference_error": c.reference_error,
            "tolerance": c.tolerance,
            "fraction": c.fraction,
            "passed": c.passed,
            "problem": c.problem,
        }
        for g in gates
        for c in g.comparisons
    ]


# peer -> device -> the backend that is that peer there. "eager" is the yardstick: compare
# gates on the speed-up over it, and it is the column every table shows.
PEERS = {
    "eager": {"cpu": REFERENCE_BACKEND, "cuda": "torch-cuda"},
    "torch.compile": {"cpu": "torch-compile", "cuda": "torch-cuda-compile"},
    "jax": {"cpu": "jax", "cuda": "jax-cuda"},
}
YARDSTICK = PEERS["eager"]

NOT_COMPUTED = "—"  # a value that was not computed (not timed, not trained, skipped)


def fmt(value, spec: str, *, nan: str = "NaN") -> str:
    """``value`` formatted by ``spec``. None is NOT_COMPUTED; NaN shows as ``nan``: "NaN"
    where a number was computed and came out NaN (a diverged ELBO must not pass for a blank),
    NOT_COMPUTED where an empty table cell reads back as NaN."""
    if value is None:
        return NOT_COMPUTED
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return nan
    return format(value, spec)


def devices(table: pd.DataFrame) -> pd.Series:
    """Each row's device; tables written before the column existed were CPU-only."""
    if "device" not in table:
        return pd.Series("cpu", index=table.index)
    return table["device"].astype(object).where(table["device"].notna(), "cpu")


def _peer_rows(table: pd.DataFrame, peer: str) -> pd.Series:
    """For each row of ``table``, the index of the same device's ``peer`` row at the same
    latent and batch size (NaN where there is none): the one place that pairs a row with its
    peer, for the speed-up and for the per-window speed-ups alike."""
    device = devices(table)
    result = pd.Series(math.nan, index=table.index, dtype=object)
    for dev, name in PEERS[peer].items():
        base = table[(table.backend == name) & (device == dev)]
        base = pd.Series(
            base.index, index=pd.MultiIndex.from_frame(base[["latent_dim", "batch_size"]])
        )
        rows = device == dev
        keys = pd.MultiIndex.from_frame(table.loc[rows, ["latent_dim", "batch_size"]])
        result[rows] = base.reindex(keys).values
    return result


def speedup(table: pd.DataFrame, peer: str = "eager") -> pd.Series:
    """samples/s over the same device's ``peer`` row (same latent and batch size); NaN where
    that row is missing or was not timed."""
    peers = _peer_rows(table, peer)
    base = np.array(
        [math.nan if pd.isna(i) else table.samples_per_s[i] for i in peers], dtype=float
    )
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero yardstick: inf, gated
        return pd.Series(table.samples_per_s.to_numpy(dtype=float) / base, index=table.index)


def window_speedups(table: pd.DataFrame, peer: str = "eager") -> pd.Series:
    """Per row, its speed-up over its ``peer`` in each timed window: window i of the row over
    window i of the peer, the two timed in the same round of one rotation, so each ratio is
    taken under the same conditions of the machine (what a noisy neighbour does to a round
    it does to both). Empty where either has no windows or they differ in number."""
    result = []
    for row, peer_row in zip(table.itertuples(), _peer_rows(table, peer)):
        mine = windows_of(row.window_samples_per_s)
        theirs = (
            np.empty(0) if pd.isna(peer_row) else windows_of(table.window_samples_per_s[peer_row])
        )
        paired = len(mine) == len(theirs) and len(mine) and (theirs > 0).all()
        result.append(mine / theirs if paired else np.empty(0))
    return pd.Series(result, index=table.index, dtype=object)


def is_yardstick(table: pd.DataFrame) -> pd.Series:
    return table.backend.isin(list(YARDSTICK.values()))


def peers_present(table: pd.DataFrame) -> list[str]:
    """The peers timed in ``table`` (the yardstick first), for the speed-up columns."""
    timed = set(table.loc[table.samples_per_s.notna(), "backend"])
    return [peer for peer, names in PEERS.items() if timed & set(names.values())]


# ---- markdown -----------------------------------------------------------------------------


def throughput_table(table: pd.DataFrame, gates: dict[str, str] | None = None) -> list[str]:
    """The markdown table of every timed row of ``table``, with its speed-ups over each peer
    timed beside it: the one throughput table, of a run's summary and of a profile. A
    precision column where some row is not float32; ``gates`` (backend -> its gate's word)
    adds a gate column."""
    timed = table[table.samples_per_s.notna()].reset_index(drop=True)
    peers = peers_present(timed)
    ratios = {peer: speedup(timed, peer) for peer in peers}
    spreads = {peer: window_speedups(timed, peer) for peer in peers}
    mixed = bool(
        (timed.get("precision", pd.Series(dtype=object)).fillna("float32") != "float32").any()
    )
    head = (
        ["backend", "device"]
        + (["precision"] if mixed else [])
        + (["gate"] if gates is not None else [])
        + ["z", "batch"]
        + shown_cells([f"speed-up vs {peer}" for peer in peers])
    )
    text_columns = 2 + mixed + (gates is not None)
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * text_columns + "---:|" * (len(head) - text_columns),
    ]
    for i, (r, device) in enumerate(zip(timed.itertuples(), devices(timed))):
        cells = (
            [r.backend, device]
            + ([r.precision] if mixed else [])
            + ([gates.get(r.backend, NOT_COMPUTED)] if gates is not None else [])
            + [f"{r.latent_dim}", f"{r.batch_size}"]
            + shown_cells(
                [_speedup_cell(ratios[peer].iloc[i], spreads[peer].iloc[i]) for peer in peers], r
            )
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def shown_cells(speedups: list[str], row: Any = None) -> list[str]:
    """The shown columns' headers (without ``row``) or ``row``'s cells, in SHOWN_COLUMNS'
    order, ``speedups`` (headers or cells) where it puts them."""
    return [
        part
        for column in SHOWN_COLUMNS
        for part in (
            speedups
            if column == SPEEDUPS
            else [SHOWN[column].label if row is None else SHOWN[column].cell(row)]
        )
    ]


def _floor_cell(floor: float, ms_per_step: float) -> str:
    """'0.412 (3.1x)': a step graph's launch-latency floor, and the step's time in floors."""
    if isinstance(floor, float) and not math.isnan(floor):
        return f"{floor:.3f} ({ms_per_step / floor:.1f}x)"
    return NOT_COMPUTED


def before_section(markdown: str, heading: str) -> str:
    """``markdown`` up to the section that ``heading`` opens (all of it where there is none)."""
    return markdown.split(f"\n{heading}")[0]


def speedup_text(ratio: float) -> str:
    """'1.62x', the one way every table writes a speed-up (NOT_COMPUTED where there is none)."""
    return NOT_COMPUTED if pd.isna(ratio) else f"{ratio:.2f}x"


def spread_text(windows: np.ndarray) -> str:
    """'1.55–1.70': the range of the per-window speed-ups (window i over the peer's window
    i); NOT_COMPUTED with fewer than two windows."""
    return f"{windows.min():.2f}–{windows.max():.2f}" if len(windows) > 1 else NOT_COMPUTED


def _speedup_cell(ratio: float, windows: np.ndarray) -> str:
    """'1.62x (1.55–1.70)': the speed-up and the range of its per-window speed-ups, where
    the windows were kept."""
    if math.isnan(ratio):
        return NOT_COMPUTED
    spread = f" ({spread_text(windows)})" if len(windows) > 1 else ""
    return f"{speedup_text(ratio)}{spread}"


# A backend's settings (Backend.settings) that are measurements of one process, not how it
# ran: reported on their own lines, left out of the settings line.
PER_PROCESS_SETTINGS = ("compile_seconds",)


def settings_text(settings: dict) -> str:
    """A backend's settings (its library versions, threads, precision, GEMM engine and the
    code path the engine took) as one line: ``name value, ...``."""
    return ", ".join(f"{k} {v}" for k, v in settings.items() if k not in PER_PROCESS_SETTINGS)


def busy_warning(busy: list[str]) -> list[str]:
    """The summary's warning that timed stages ran on a busy machine, one line per stage."""
    return [
        "> **Warning: the machine was busy while these were timed**; their throughput and "
        "speed-ups measure the other work as much as the kernels. Rerun them on an idle "
        "machine.",
        ">",
        *(f"> - {stage}" for stage in busy),
        "",
    ]


def _usable_part(env: dict) -> str:
    """', 4 usable by this run' where the run could use fewer CPUs than the node has (a Slurm
    job, taskset); nothing otherwise, or for runs recorded before the count was."""
    usable = env.get("usable_cpus")
    return f", {usable} usable by this run" if usable not in (None, env["logical_cpus"]) else ""


def run_summary(
    table: pd.DataFrame,
    env: dict,
    settings: dict[str, dict] | None = None,
    busy: list[str] | None = None,
) -> str:
    """A run's summary.md: agreement, throughput with the speed-ups, ELBO, the backends'
    settings as they ran (``settings``, by backend), environment; first, a warning naming each
    timed stage during which the machine was busy (``busy``, run.busy_stages)."""
    first_batch = env["spec"]["batch_sizes"][0]
    gate = table[table.batch_size == first_batch]  # the rows that were gated and trained
    record = {k: v for k, v in env.items() if k not in ("spec",)}
    return "\n".join(
        [
            *_summary_header(env, busy),
            *_agreement_section(gate),
            *_throughput_section(table),
            *_elbo_section(gate, first_batch),
            *_precision_cost_section(gate),
            *_settings_section(settings),
            "",
            ENVIRONMENT_HEADING,
            "",
            as_markdown(record),
            "",
        ]
    )


def _summary_header(env: dict, busy: list[str] | None) -> list[str]:
    spec = env["spec"]
    return [
        f"# vae-bench run — {spec['dataset']}",
        "",
        *(busy_warning(busy) if busy else []),
        f"Dataset: {env['dataset']}. Device: CPU {env['cpu']} ({env['logical_cpus']} logical "
        f"CPUs{_usable_part(env)}), GEMM peak {env['gemm_peak_gflops']:.0f} GFLOP/s ({env['gemm_peak_source']})"
        + (
            f"; GPU {env['gpu']}, GEMM peak {env['gpu_gemm_peak_gflops']:,.0f} GFLOP/s "
            f"({env['gpu_gemm_peak_source']})"
            if "gpu" in env
            else ""
        )
        + f". {spec['epochs']} epochs, seed {spec['seed']}"
        + (
            f", hidden width {spec['hidden_dim']}"
            if spec.get("hidden_dim", DEFAULT_HIDDEN) != DEFAULT_HIDDEN
            else ""
        )
        + "."
        + (" Timed steps draw their own noise." if spec.get("backend_noise") else ""),
    ]


def _agreement_section(gate: pd.DataFrame) -> list[str]:
    lines = [
        "",
        "## Agreement with the float64 reference",
        "",
        "| backend | z | verdict | worst tensor (fraction of tolerance) | note |",
        "|---|---:|---|---:|---|",
    ]
    for r in gate.itertuples():
        note = r.note if isinstance(r.note, str) else ""
        lines.append(
            f"| {r.backend} | {r.latent_dim} | {r.agreement} | "
            f"{fmt(r.worst_fraction, '.1%', nan=NOT_COMPUTED)} | {note} |"
        )
    return lines


def slower_than_twin(table: pd.DataFrame) -> pd.DataFrame:
    """The reduced-precision rows timed slower than their float32 twin (``float32_twin``) at
    the same latent and batch size in this run: backend, twin, latent_dim, batch_size and
    ratio (the row's samples/s over the twin's, below 1)."""
    if "precision" not in table:
        return pd.DataFrame()
    timed = table[table.samples_per_s.notna()]
    twins = timed.set_index(["backend", "latent_dim", "batch_size"]).samples_per_s
    rows = []
    for r, twin, key in beside_twins(timed):
        ratio = r.samples_per_s / float(twins.loc[key])
        if ratio < 1:
            rows.append(
                dict(
                    backend=r.backend,
                    twin=twin,
                    latent_dim=r.latent_dim,
                    batch_size=r.batch_size,
                    ratio=ratio,
                )
            )
    return pd.DataFrame(rows)


def slower_than_twin_warning(table: pd.DataFrame) -> list[str]:
    """The summary's warning for each reduced-precision row slower than its float32 twin:
    the precision bought nothing here (no bf16 hardware at work, or an engine that leaves it
    unused), and the row is not to be read as what that precision gains."""
    slower = slower_than_twin(table)
    if not len(slower):
        return []
    return [
        "",
        "> **Warning: reduced precision ran slower than float32 here**; its GEMMs gain "
        "nothing on this CPU's bf16 path (see the backend's engine under \"Backends as they "
        'ran"), so these rows do not show what the precision gains where the hardware is '
        "used.",
        ">",
        *(
            f"> - {r.backend}: {r.ratio:.2f}x {r.twin}'s samples/s at z = {r.latent_dim}, "
            f"batch {r.batch_size}"
            for r in slower.itertuples()
        ),
    ]


def _throughput_section(table: pd.DataFrame) -> list[str]:
    lines = [
        "",
        "## Throughput (training samples/s, median of interleaved windows)",
        "",
        "Speed-ups are over a peer on the same device in this run (PyTorch eager, "
        "torch.compile and JAX on the CPU; their CUDA runs on a GPU); % peak is of that "
        "device's GEMM peak at the row's precision; memory is the backend's peak for its step "
        "(parameters, optimizer state, workspaces; on a GPU the allocator's peak); the launch "
        "floor is the step graph's nodes times the replay cost of one empty CUDA Graph node.",
        "",
        *throughput_table(table),
        *slower_than_twin_warning(table),
    ]
    ceilings = table.dropna(subset=["gemm_only_ms"]).drop_duplicates(["latent_dim", "batch_size"])
    if len(ceilings):
        lines += [
            "",
            "A CPU step's yardstick: its 11 GEMMs alone (NumPy's BLAS, the same "
            "shapes), timed in the same interleaved windows: the ceiling of a step that "
            "calls NumPy's BLAS; a step calling a faster GEMM engine (Numba's pooled "
            "oneMKL step) can pass it.",
            "",
            "| z | batch | GEMMs alone ms/step | samples/s |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r.latent_dim} | {r.batch_size} | {r.gemm_only_ms:.3f} | "
            f"{r.batch_size / r.gemm_only_ms * 1e3:,.0f} |"
            for r in ceilings.itertuples()
        ]
    return lines


def _elbo_section(gate: pd.DataFrame, first_batch: int) -> list[str]:
    lines = [
        "",
        f"## ELBO by latent size and backend (batch {first_batch}; nats per image)",
        "",
        "| backend | z | final train ELBO | average train ELBO | final test ELBO "
        "| test log p(x) (k) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in gate.itertuples():
        if r.epochs == r.epochs and r.epochs:  # trained (NaN epochs: not trained)
            iwae = (
                f"{fmt(r.test_iwae, '.2f')} ({int(r.iwae_k)})"
                if r.iwae_k == r.iwae_k and r.iwae_k
                else NOT_COMPUTED
            )
            lines.append(
                f"| {r.backend} | {r.latent_dim} | {fmt(r.final_train_elbo, '.2f')} | "
                f"{fmt(r.average_train_elbo, '.2f')} | {fmt(r.final_test_elbo, '.2f')} | "
                f"{iwae} |"
            )
    return lines


def _precision_cost_section(gate: pd.DataFrame) -> list[str]:
    cost = precision_cost(gate)
    if not len(cost):
        return []
    return [
        "",
        "## What reduced precision costs (nats per image)",
        "",
        "Each reduced-precision backend against its float32 twin, trained in this "
        "run from the same initial weights, data order and seed: the difference is "
        "the precision's, within the noise of one seed.",
        "",
        "| backend | vs | z | test ELBO | twin's | difference | test log p(x) | "
        "twin's | difference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.backend} | {r.twin} | {r.latent_dim} | {fmt(r.elbo, '.2f')} | "
            f"{fmt(r.twin_elbo, '.2f')} | {fmt(r.elbo_difference, '+.2f')} | "
            f"{fmt(r.iwae, '.2f', nan=NOT_COMPUTED)} | "
            f"{fmt(r.twin_iwae, '.2f', nan=NOT_COMPUTED)} | "
            f"{fmt(r.iwae_difference, '+.2f', nan=NOT_COMPUTED)} |"
            for r in cost.itertuples()
        ),
    ]


def _settings_section(settings: dict[str, dict] | None) -> list[str]:
    if not settings:
        return []
    return [
        "",
        "## Backends as they ran",
        "",
        "Each backend's own account of its libraries, threads, precision and GEMM "
        "engine, taken when it was timed.",
        "",
        *(f"- **{name}**: {settings_text(s)}" for name, s in settings.items()),
    ]


def float32_twin(backend: str, precision: str) -> str | None:
    """The float32 backend a reduced-precision one is the twin of (the registry's
    ``kernels.FLOAT32_TWINS``: numba-bf16 -> numba), or None."""
    return None if precision == "float32" else FLOAT32_TWINS.get(backend)


def beside_twins(rows: pd.DataFrame) -> Iterator[tuple[Any, str, tuple]]:
    """(row, its float32 twin's name, the twin's row key: backend, latent_dim, batch_size) for
    each reduced-precision row of ``rows`` whose twin is among ``rows`` at its latent and batch
    size."""
    keys = set(zip(rows.backend, rows.latent_dim, rows.batch_size))
    for r in rows.itertuples():
        twin = float32_twin(r.backend, r.precision) if isinstance(r.precision, str) else None
        key = (twin, r.latent_dim, r.batch_size)
        if twin is not None and key in keys:
            yield r, twin, key


def precision_cost(table: pd.DataFrame) -> pd.DataFrame:
    """Per reduced-precision row trained beside its float32 twin (same latent and batch size):
    the test ELBO and importance-weighted bound of each, and the row's minus the twin's."""
    if "precision" not in table:
        return pd.DataFrame()
    trained = table[table.final_test_elbo.notna()]
    twins = trained.set_index(["backend", "latent_dim", "batch_size"])
    rows = []
    for r, twin, key in beside_twins(trained):
        other = twins.loc[key]
        rows.append(
            dict(
                backend=r.backend,
                twin=twin,
                latent_dim=r.latent_dim,
                elbo=r.final_test_elbo,
                twin_elbo=other.final_test_elbo,
                elbo_difference=r.final_test_elbo - other.final_test_elbo,
                iwae=r.test_iwae,
                twin_iwae=other.test_iwae,
                iwae_difference=r.test_iwae - other.test_iwae,
            )
        )
    return pd.DataFrame(rows)


def experiment_table(table: pd.DataFrame, spec: dict, described_data: str, record: dict) -> str:
    """An experiment's table.md: one row per model, then the provenance block."""
    lines = [
        f"# ELBO by latent size — {spec['dataset']}",
        "",
        f"Dataset: {described_data}. {spec['epochs']} epochs, batch {spec['batch_size']}, "
        f"Adam lr {spec['lr']:g}, "
        + (
            f"seed {spec['seeds'][0]}"
            if len(spec["seeds"]) == 1
            else f"seeds {' '.join(map(str, spec['seeds']))}"
        )
        + (
            f", hidden width {spec['hidden_dim']}"
            if spec.get("hidden_dim", DEFAULT_HIDDEN) != DEFAULT_HIDDEN
            else ""
        )
        + (
            f", beta {' '.join(f'{b:g}' for b in spec['betas'])}"
            if list(spec["betas"]) != [1.0]
            else ""
        )
        + (", dynamically binarized" if spec["binarize"] else "")
        + ".",
        "All values in nats per image (higher is better). ELBO = -(BCE + KL); for the AE the "
        "columns hold -BCE, a reconstruction score and not a bound on log p(x). "
        "'test log p(x)' is the importance-weighted bound (Burda et al.) with k samples; "
        "'train − test': the train set's ELBO less the test set's, with the final weights; "
        "a unit is active when its posterior mean varies over the test set by more than "
        "0.01 (Burda et al.).",
        "",
        "| model | backend | z | beta | seed | final train ELBO | average train ELBO "
        "| final test ELBO "
        "| test log p(x) (k) | test BCE + KL | train − test | active units | epochs "
        "| time (s) | s/epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table.itertuples():
        iwae = f"{fmt(row.test_iwae, '.2f')} ({row.iwae_k})" if row.iwae_k else NOT_COMPUTED
        terms = (
            f"{fmt(row.test_reconstruction, '.2f', nan=NOT_COMPUTED)} + "
            f"{fmt(row.test_kl, '.2f', nan=NOT_COMPUTED)}"
        )
        active = (
            NOT_COMPUTED
            if pd.isna(row.active_units)
            else f"{row.active_units:.0f} of {row.latent_dim}"
        )
        lines.append(
            f"| {row.model.upper()} | {row.backend} | {row.latent_dim} "
            f"| {fmt(row.beta, 'g', nan=NOT_COMPUTED)} | {row.seed} "
            f"| {fmt(row.final_train_elbo, '.2f')} "
            f"| {fmt(row.average_train_elbo, '.2f')} | {fmt(row.final_test_elbo, '.2f')} "
            f"| {iwae} | {terms} | {fmt(row.train_test_gap, '+.2f', nan=NOT_COMPUTED)} "
            f"| {active} | {row.epochs} | {row.train_seconds:.1f} | {row.seconds_per_epoch:.2f} |"
        )
    lines += ["", PROVENANCE_HEADING, "", as_markdown(record), ""]
    return "\n".join(lines)
