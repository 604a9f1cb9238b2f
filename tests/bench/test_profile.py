"""``vae-bench profile``: the gate first (with check's K Adam steps), then the timing of the
backends that passed (those that failed only with --include-failed, marked UNGATED); --out writes the
report with its provenance, whole or not at all."""

import numpy as np
import pytest

from bench.cli import main
from kernels.numba_cpu import NumbaBackend

# As small as a profile goes: z = 2, a hidden layer of 16, one window of one step.
TINY = ["--latent", "2", "--hidden-dim", "16", "--repeats", "1", "--window-steps", "1"]


class WrongNumba(NumbaBackend):
    """Numba with one gradient 1% off: trains like numba, fails the gate on that tensor."""

    name = "numba-wrong"

    def forward_backward(self, x, eps):
        out = super().forward_backward(x, eps)
        out.grads["dec.fc1.weight"] = out.grads["dec.fc1.weight"] * np.float32(1.01)
        return out


def table_rows(out: str) -> dict[str, str]:
    """The report's throughput table rows (a backend, then its device), by backend."""
    return {
        cells[0]: line
        for line in out.splitlines()
        if len(cells := [c.strip() for c in line.strip("|").split("|")]) > 1 and cells[1] == "cpu"
    }


@pytest.fixture
def wrong_backend(monkeypatch):
    import kernels

    monkeypatch.setitem(
        kernels.BACKENDS, "numba-wrong", lambda threads=None, **_: WrongNumba(threads=threads)
    )
    return "numba-wrong"


def test_a_backend_that_fails_the_gate_is_refused_in_one_line(wrong_backend, capsys):
    assert main(["profile", "--backends", wrong_backend, *TINY]) == 1
    out, refusal = capsys.readouterr()
    assert refusal.count("\n") == 1, refusal
    assert refusal.startswith("vae-bench: refused: numba-wrong failed the agreement gate: FAILED (")
    assert "grad.dec.fc1.weight (z2/" in refusal and "of its tolerance" in refusal
    assert refusal.endswith("not timed (--include-failed times it anyway)\n")
    assert "profiling on" not in out  # nothing was timed


@pytest.mark.slow
def test_profile_times_only_what_passed_unless_forced_and_writes_its_report(
    wrong_backend, tmp_path, capsys, fast_gemm_peak
):
    report = tmp_path / "reports" / "profile.txt"
    words = ["profile", "--backends", "numba", wrong_backend, *TINY, "--out", str(report)]

    # Refused: numba timed, the wrong one not, exit status 1; the report says so.
    assert main(words) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "numba-wrong failed the agreement gate" in err
    rows = table_rows(out)
    assert "pass " in rows["numba"] and "numba-wrong" not in rows
    assert (
        "numba-wrong        FAILED (" in out
        and "not timed (--include-failed times it anyway)" in out
    )
    text = report.read_text()
    assert text.startswith("# vae-bench profile --backends numba numba-wrong --latent 2 ")
    body = out[out.index("agreement gate before timing") :].split("\nprovenance: ")[0]
    assert body in text  # the report as printed
    assert "\n## Provenance\n" in text and "- **git_commit**: " in text
    assert "- **data_sha256**: " in text

    # Forced: both timed, the wrong one's row UNGATED; exit 0; the report replaced whole.
    assert main([*words, "--include-failed"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = table_rows(out)
    assert "UNGATED" in rows["numba-wrong"] and "UNGATED" not in rows["numba"]
    assert "timed anyway (--include-failed): its row is UNGATED" in out
    text = report.read_text()
    assert text.count("## Provenance") == 1 and "UNGATED" in text and " --include-failed" in text
    assert sorted(p.name for p in report.parent.iterdir()) == ["profile.txt"]  # no lock, temp


def _a_directory(tmp_path):
    return tmp_path, "is a directory"


def _below_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("not a directory\n")
    return tmp_path / "f.txt" / "profile.txt", "a part of that path is a file"


def _someone_elses_file(tmp_path):
    (tmp_path / "notes.txt").write_text("my notes\n")
    return tmp_path / "notes.txt", "exists and is not a profile report"


def _read_only(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    (tmp_path / "ro").mkdir(mode=0o555)
    return tmp_path / "ro" / "profile.txt", "Permission denied"


@pytest.mark.parametrize("place", [_a_directory, _below_a_file, _someone_elses_file, _read_only])
def test_an_out_that_cannot_be_written_is_refused_in_one_line_before_any_work(
    place, tmp_path, capsys, monkeypatch
):
    from bench import pipeline

    def no_gate(*args, **kwargs):
        raise AssertionError("the gate ran before --out was refused")

    monkeypatch.setattr(pipeline, "gate", no_gate)
    out, message = place(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["profile", "--backends", "numba", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vae-bench: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_profile_cut_short_leaves_the_old_report_whole(tmp_path, capsys, monkeypatch):
    from bench import pipeline

    report = tmp_path / "profile.txt"
    report.write_text("# vae-bench profile --backends numba\nthe old report\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "gate", interrupted)
    assert main(["profile", "--backends", "numba", *TINY, "--out", str(report)]) == 130
    assert f"{report} is left as it was" in capsys.readouterr().err
    assert report.read_text() == "# vae-bench profile --backends numba\nthe old report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["profile.txt"]


def test_steps_flags_say_what_they_count():
    from bench.cli import build_parser

    parser = build_parser()
    for words, dest in (
        (["profile", "--window-steps", "3"], "window_steps"),
        (["run", "--window-steps", "3"], "window_steps"),
        (["check", "--backend", "numba", "--adam-steps", "3"], "adam_steps"),
        (["profile", "--adam-steps", "3"], "adam_steps"),
        (["run", "--adam-steps", "3"], "adam_steps"),
    ):
        assert getattr(parser.parse_args(words), dest) == 3, words


@pytest.mark.parametrize(
    ("words", "dest", "value", "now"),
    [
        (["profile", "--steps", "3"], "window_steps", 3, "--window-steps"),
        (["run", "--steps=3"], "window_steps", 3, "--window-steps"),
        (["check", "--backend", "numba", "--steps", "3"], "adam_steps", 3, "--adam-steps"),
        (["fixture", "--out", "f.npz", "--steps", "3"], "adam_steps", 3, "--adam-steps"),
        (["run", "--profile", "full"], "preset", "full", "--preset"),
        (["run", "--force"], "include_failed", True, "--include-failed"),
        (["profile", "--force"], "include_failed", True, "--include-failed"),
        (["experiment", "--force"], "retrain", True, "--retrain"),
        (["merge", "a", "--out", "b", "--force"], "allow_differences", True, "--allow-differences"),
    ],
)
def test_an_older_spelling_works_for_one_release_with_a_note(words, dest, value, now, capsys):
    """--steps (Adam steps or window steps), --force (three things) and run's --profile (a
    preset, not the profile command) each meant two things; the old spellings keep working,
    each saying in one line what to write now."""
    from bench.cli import build_parser

    assert getattr(build_parser().parse_args(words), dest) == value
    old = next(
        w.split("=")[0] for w in words if w in ("--steps", "--steps=3", "--profile", "--force")
    )
    assert capsys.readouterr().err == (
        f"vae-bench: note: {old} is deprecated and goes in the next release; write {now}\n"
    )


def test_every_command_gates_with_checks_k_unless_told_otherwise():
    """run (every profile), profile, check and the fixture: the same K Adam steps (issue: the
    quick profile gated 10, profile none, check 50)."""
    from bench import run as run_module
    from bench.cli import build_parser
    from bench.profile import ProfileSpec
    from bench.run_presets import PRESETS
    from vae_ref.config import GATE_ADAM_STEPS

    parser = build_parser()
    assert parser.parse_args(["check", "--backend", "numba"]).adam_steps == GATE_ADAM_STEPS
    assert parser.parse_args(["fixture", "--out", "f.npz"]).adam_steps == GATE_ADAM_STEPS
    assert parser.parse_args(["profile"]).adam_steps == GATE_ADAM_STEPS
    assert ProfileSpec(backends=("numba",)).adam_steps == GATE_ADAM_STEPS
    assert parser.parse_args(["run"]).adam_steps is None  # the spec's default then
    for name, preset in PRESETS.items():
        spec = run_module.RunSpec(**{"backends": ("numba",), **preset})
        assert spec.gate_steps == GATE_ADAM_STEPS, name


def test_a_batch_larger_than_the_data_is_timed_and_said(capsys, fast_gemm_peak):
    """run refuses a first batch size beyond the training images (it trains on it); profile
    only times, drawing batches with replacement, so it runs, but says so (it said nothing)."""
    assert (
        main(["profile", "--backends", "torch", *TINY, "--batch-size", "4096", "--adam-steps", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "note: batch size 4096 exceeds the 4000 training images of mnist-5k: each timed "
        "batch repeats images"
    ) in out


def test_profile_says_where_it_is_and_quiet_keeps_the_report_only(capsys, fast_gemm_peak):
    """profile printed 'warming up …' and then nothing until the report (issue 40, part 6):
    now each backend's gate and each round of windows but the last, with the time left."""
    import re

    words = [
        "profile",
        "--backends",
        "numba",
        "torch",
        *TINY[:-4],
        "--repeats",
        "3",
        "--window-steps",
        "1",
    ]
    assert main(words) == 0
    out = capsys.readouterr().out
    # Stamped with the time of day (no terminal here); the report's lines are not.
    lines = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    assert "numba agreement pass" in "\n".join(lines) and "torch agreement pass" in "\n".join(lines)
    rounds = [line for line in lines if "rounds of windows timed" in line]
    assert len(rounds) == 2 and all(
        re.fullmatch(r"batch 128: [12] of 3 rounds of windows timed; about \d+ s left", r)
        for r in rounds
    )

    assert main([*words, "--quiet"]) == 0
    quiet = capsys.readouterr().out
    assert quiet.startswith("step: batch 128, z 2") and "rounds of windows" not in quiet
    assert not [line for line in quiet.splitlines() if line.startswith("[")]
    assert set(table_rows(quiet)) == {"numba", "torch"} and "\nprovenance: " in quiet
