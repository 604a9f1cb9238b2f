"""The committed results are what the tools wrote from a clean commit: every provenance under
results/ names a commit with no uncommitted changes, and results/README.md gives each run's
command exactly as its provenance records it."""

import json
import re

import pytest
from checkout import RESULTS

# Every run's record, the runs inside a results directory (the seeds' experiments) included.
PROVENANCE_FILES = sorted([*RESULTS.rglob("env.json"), *RESULTS.rglob("provenance.json")])
# The results directories' own records, whose commands results/README.md gives.
TOP_LEVEL = [p for p in PROVENANCE_FILES if p.parent.parent == RESULTS]
PROFILES = sorted(RESULTS.glob("profile-*.txt"))


def test_there_are_committed_results_to_check():
    assert PROVENANCE_FILES and PROFILES


@pytest.mark.parametrize("path", PROVENANCE_FILES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_each_result_was_made_at_a_clean_commit(path):
    commit = json.loads(path.read_text())["git_commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit), (
        f"{path}: made from {commit!r}, not a clean commit: commit, then rerun its command"
    )


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_each_profile_was_written_by_the_tool_at_a_clean_commit(path):
    found = re.search(r"git_commit\W+(\S+)", path.read_text())
    assert found, f"{path}: no provenance (write it with `vae-bench profile --out`)"
    assert re.fullmatch(r"[0-9a-f]{40}", found.group(1)), f"{path}: made from {found.group(1)}"


@pytest.mark.parametrize("path", TOP_LEVEL, ids=lambda p: str(p.relative_to(RESULTS)))
def test_the_results_readme_gives_each_command_as_run(path):
    command = json.loads(path.read_text())["command"]
    command = command.replace(" --quiet", "")  # progress output only: not part of a result
    # Recorded before provenance named a module run as such (bench/provenance.command_line).
    command = command.replace("__main__.py ", "python -m bench ")
    assert command in (RESULTS / "README.md").read_text(), (
        f"results/README.md does not give {path.parent.name}'s command as run: {command}"
    )
