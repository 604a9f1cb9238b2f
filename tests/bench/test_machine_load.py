"""What else the machine did while a run timed (bench/machine_load.py): the CPU time other
processes took from this process's CPUs is seen, this process's own is not; the made-up
/proc/stat below pins the arithmetic."""

import os
import subprocess
import sys
import time

import pytest
from checkout import RESULTS

from bench import machine_load

SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"


def watched(action) -> dict:
    watch = machine_load.Watch()
    action()
    return watch.result()


def own_spin():
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        pass


def other_spin():
    """Another process spinning on this process's first CPU for the whole stage."""
    cpu = min(os.sched_getaffinity(0))
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN.format(seconds=1.5)],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    child.wait()


@pytest.mark.skipif(
    not os.path.exists("/proc/stat") or not hasattr(os, "sched_setaffinity"),
    reason="needs Linux's /proc/stat and CPU affinity",
)
def test_another_process_on_our_cpus_is_seen_and_our_own_work_is_not():
    ours = watched(own_spin)
    theirs = watched(other_spin)
    # A difference, not a level: whatever else the machine does is in both.
    assert theirs["others_cores"] - ours["others_cores"] >= 0.6, (ours, theirs)
    assert machine_load.busy(theirs)
    assert theirs["cpus"] == len(os.sched_getaffinity(0)) and theirs["seconds"] >= 1.5
    assert "other processes took" in machine_load.describe(theirs)


def test_the_ticks_of_our_cpus_only(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  9 9 9 9 9 9 9 9 0 0\n"
        "cpu0 100 1 10 500 3 2 1 40 0 0\n"
        "cpu1 7 0 0 900 0 0 0 0 0 0\n"
        "cpu2 50 0 0 100 0 0 0 5\n"
        "intr 12345\n"
    )
    assert machine_load._ticks({0, 2}, stat) == (100 + 1 + 10 + 2 + 1 + 50, 45)
    assert machine_load._ticks({1}, stat) == (7, 0)
    assert machine_load._ticks({0}, tmp_path / "absent") is None


def test_a_quiet_record_is_not_busy_and_an_unknown_share_is_not_guessed():
    quiet = {
        "seconds": 3.0,
        "cpus": 2,
        "others_cores": 0.05,
        "steal_cores": 0.0,
        "load_start": 0.4,
        "load_end": 0.5,
    }
    assert not machine_load.busy(quiet)
    assert machine_load.busy(dict(quiet, steal_cores=0.7))  # the hypervisor's, too
    unknown = dict(quiet, others_cores=None, steal_cores=None)
    assert not machine_load.busy(unknown)
    assert machine_load.describe(unknown) == "load average 0.40 → 0.50"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists("/proc/stat") or not hasattr(os, "sched_setaffinity"),
    reason="needs Linux's /proc/stat and CPU affinity",
)
def test_a_run_timed_beside_busy_processes_says_so_in_its_summary(tmp_path, capsys, fast_gemm_peak):
    """Seen on an AMD Zen 4 machine: a run timed while another process kept a core busy,
    speed-ups of 15-22x, and not a word of warning in its summary."""
    import json

    from bench.cli import main

    cpu = min(os.sched_getaffinity(0))
    # Three spinning on one of our CPUs: whatever its share, others take most of that CPU.
    spinners = [
        subprocess.Popen(
            [sys.executable, "-c", SPIN.format(seconds=600)],
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        )
        for _ in range(3)
    ]
    try:
        out = tmp_path / "run"
        assert (
            main(
                [
                    "run",
                    "--backends",
                    "torch",
                    "--latents",
                    "2",
                    "--epochs",
                    "1",
                    "--repeats",
                    "3",
                    "--window-steps",
                    "20",
                    "--iwae-k",
                    "0",
                    "--adam-steps",
                    "2",
                    "--quiet",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    summary = (out / "summary.md").read_text()
    assert "**Warning: the machine was busy while these were timed**" in summary
    assert "> - z = 2, batch 128: other processes took " in summary
    assert "Warning: the machine was busy" in (out / "report.html").read_text()
    (cell,) = (out / "cells").glob("z2.json")
    record = json.loads(cell.read_text())["machine_load"]["128"]
    assert machine_load.busy(record) and record["seconds"] > 0
    # --quiet keeps the warning, on stderr.
    assert (
        "vae-bench: warning: the machine was busy while timing z = 2, batch 128: other "
        "processes took "
    ) in capsys.readouterr().err


def test_a_quiet_run_has_no_warning(tmp_path):
    """The same summary without a busy stage (cells of runs made before the load was kept,
    as the committed ones, have none) says nothing of it."""
    import shutil

    from bench.run import write_outputs

    committed = RESULTS / "run-full-mnist-5k"
    out = shutil.copytree(committed, tmp_path / "run")
    write_outputs(out)
    assert "busy" not in (out / "summary.md").read_text()
    assert "the machine was busy" not in (out / "report.html").read_text()
