"""``vae-bench profile``: the pipeline's gate and time stages on the
embedded digits, the report (throughput, speed-ups, breakdowns) printed and, with an output
file, written whole with its provenance. A backend that fails the gate is not timed unless
forced, and then its row says UNGATED."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kernels import Backend, create_backend
from vae_ref import VAEConfig
from vae_ref.atomic import atomic_write_text
from vae_ref.config import DEFAULT_HIDDEN, GATE_ADAM_STEPS
from vae_ref.data import Dataset, load_dataset

from . import pipeline
from .gate import GATE_IMAGES
from .profile_text import profile_text
from .provenance import as_markdown, collect
from .results_dir import claim_file
from .run_presets import PROFILE_WINDOW_STEPS, PROFILE_WINDOWS
from .tables import PROVENANCE_HEADING
from .throughput import device_peaks

REPORT_MARKS = ("# vae-bench profile", "$ vae-bench profile")  # a report's first line


class ProfileError(RuntimeError):
    """Nothing to profile as asked; the message says why."""


@dataclass(frozen=True)
class ProfileSpec:
    """One profile: what is timed, and how."""

    backends: tuple[str, ...]
    latent: int = 20
    batch_size: int = 128
    hidden_dim: int = DEFAULT_HIDDEN
    repeats: int = PROFILE_WINDOWS  # windows per backend
    window_steps: int = PROFILE_WINDOW_STEPS  # training steps per window
    threads: int | None = None
    backend_noise: bool = False
    include_failed: bool = False  # time backends that fail the gate too
    adam_steps: int = GATE_ADAM_STEPS  # the gate's K-step case (0: single-step cases only)

    def words(self) -> list[str]:
        """The flags that repeat this profile (without the output file)."""
        words = [
            "--backends",
            *self.backends,
            "--latent",
            str(self.latent),
            "--batch-size",
            str(self.batch_size),
            "--hidden-dim",
            str(self.hidden_dim),
            "--repeats",
            str(self.repeats),
            "--window-steps",
            str(self.window_steps),
        ]
        if self.adam_steps != GATE_ADAM_STEPS:
            words += ["--adam-steps", str(self.adam_steps)]
        if self.threads:
            words += ["--threads", str(self.threads)]
        return words + [
            flag
            for flag, on in (
                ("--backend-noise", self.backend_noise),
                ("--include-failed", self.include_failed),
            )
            if on
        ]


def is_profile_report(path: Path) -> bool:
    """Whether ``path`` holds a profile report (which a profile's output may replace)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(REPORT_MARKS)
    except OSError:
        return False


def profile(
    spec: ProfileSpec,
    out: Path | None,
    refuse: Callable[[str], None],
    log: Callable[[str], None] = lambda _msg: None,
) -> bool:
    """Run the profile, print its report, write it into ``out`` (claimed before any work, so
    a path that cannot be written is refused at once). ``refuse`` is told, one line each,
    of every backend not timed for failing the gate; returns whether there was one.
    ``log``: the progress (each backend's gate, each round of windows timed); the report
    names every backend's verdict, an unavailable one's reason included."""
    backends = [create_backend(name, threads=spec.threads) for name in spec.backends]
    holding = (
        claim_file(out, ours=is_profile_report, what="a profile report")
        if out
        else contextlib.nullcontext()
    )
    with holding:
        data = _timing_data(spec.batch_size)
        config = VAEConfig(
            latent_dim=spec.latent, hidden_dim=spec.hidden_dim, batch_size=spec.batch_size
        )
        outcome = _gate_and_time(spec, config, backends, data, refuse, log)
        if not outcome.admitted:
            if outcome.refused:
                return True  # each refusal has said why
            why = "; ".join(f"{name}: {g.note}" for name, g in outcome.gates.items())
            raise ProfileError(
                f"no backend to profile: none of those asked for is available here ({why})"
            )
        results = list(outcome.measurements[spec.batch_size].values())
        text = profile_text(
            results, config, spec.batch_size, device_peaks(outcome.admitted), outcome.gates
        )
        _publish(text, spec, data, out)
    return bool(outcome.refused)


def _timing_data(batch_size: int) -> Dataset:
    """mnist-5k, which the timing needs; a batch larger than it is noted."""
    data = load_dataset("mnist-5k")
    if batch_size > len(data.train_x):
        # Timed batches are drawn with replacement: it runs, but it is not an epoch's
        # batch (run refuses it for the batch that trains).
        print(
            f"note: batch size {batch_size} exceeds the {len(data.train_x)} "
            f"training images of {data.name}: each timed batch repeats images",
            flush=True,
        )
    return data


def _gate_and_time(
    spec: ProfileSpec,
    config: VAEConfig,
    backends: list[Backend],
    data: Dataset,
    refuse: Callable[[str], None],
    log: Callable[[str], None],
) -> pipeline.Outcome:
    """The gate at the profile's latent size on mnist-5k's digits, then the timing of the
    backends it admitted; ``refuse`` told of each it did not."""
    import torch

    steps = f" and {spec.adam_steps} Adam steps" if spec.adam_steps else " only"
    log(
        f"agreement gate at z {spec.latent}, single-step cases{steps} (mnist-5k "
        f"images): {', '.join(spec.backends)} ..."
    )

    def after(stage: str, outcome: pipeline.Outcome) -> None:
        if stage != "gate":
            return
        for name in outcome.refused:
            refuse(
                f"{name} failed the agreement gate: {outcome.gates[name].summary()}; "
                "not timed (--include-failed times it anyway)"
            )
        if outcome.admitted:
            log(
                f"profiling on {data.name} ({len(data.train_x)} images), torch threads "
                f"{torch.get_num_threads()}; warming up "
                f"{', '.join(b.name for b in outcome.admitted)} ..."
            )

    return pipeline.execute(
        pipeline.Selection(
            stages=("gate", "time"),
            batch_sizes=(spec.batch_size,),
            repeats=spec.repeats,
            window_steps=spec.window_steps,
            backend_noise=spec.backend_noise,
            include_failed=spec.include_failed,
        ),
        backends,
        config=config,
        data=data,
        on_stage=after,
        log=log,
        # The gate takes its images from the timing's mnist-5k (gate_images' fallback to the
        # fixture's copy would only load the same digits twice).
        cases=pipeline.gate_cases(
            data.train_x[:GATE_IMAGES], spec.latent, steps=spec.adam_steps, hidden=spec.hidden_dim
        ),
    )


def _publish(text: str, spec: ProfileSpec, data: Dataset, out: Path | None) -> None:
    """The report printed with a line of its provenance, and written whole with all of it
    (and the command that made it) into ``out`` where given."""
    print(text)
    record = collect(data=data)
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    print(
        f"provenance: {record['cpu']}, {record['usable_cpus']} of {record['logical_cpus']} CPUs usable, {versions}, "
        f"commit {record['git_commit']}, {record['timestamp']}, host {record['host']}"
    )
    if out:
        command = shlex.join(["vae-bench", "profile", *spec.words()])
        atomic_write_text(
            out, f"# {command}\n{text}\n\n{PROVENANCE_HEADING}\n\n{as_markdown(record)}\n"
        )
        print(f"wrote {out}")
