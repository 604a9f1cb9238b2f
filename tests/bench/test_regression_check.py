"""bench/regression-check.sh, the pull-request check of the README, run as CI runs it: on two
commits of this repository (its files as they are here, committed twice into a fresh repository:
the base, then a head that changes no number), a short run at each, then compare's Markdown
and exit status."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from checkout import ROOT

SHORT = [
    "--backends",
    "torch",
    "torch-fused-adam",
    "--latents",
    "2",
    "--epochs",
    "1",
    "--repeats",
    "5",
    "--window-steps",
    "5",
    "--iwae-k",
    "0",
    "--adam-steps",
    "2",
]


def git(repo: Path, *words: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *words], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory) -> Path:
    """A repository of this working tree's files (results/ left out: nothing reads it), its
    first commit the base, its second the head."""
    repo = tmp_path_factory.mktemp("pr") / "repo"
    listed = git(ROOT, "ls-files", "-co", "--exclude-standard").splitlines()
    for name in listed:
        source = ROOT / name
        if name.startswith("results/") or not source.is_file():
            continue
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, repo / name)
    git(repo.parent, "init", "--quiet", str(repo))
    for key, value in (("user.name", "test"), ("user.email", "test@example.com")):
        git(repo, "config", key, value)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "base")
    with open(repo / "README.md", "a") as readme:
        readme.write("\n")
    git(repo, "commit", "--quiet", "-am", "head: a change that moves no number")
    return repo


@pytest.mark.slow
def test_each_commit_is_measured_by_its_own_code_and_compared(two_commits, tmp_path):
    check = tmp_path / "check"
    result = subprocess.run(
        ["bash", "bench/regression-check.sh", "HEAD~1", str(check), *SHORT],
        cwd=two_commits,
        capture_output=True,
        text=True,
        timeout=900,
    )
    markdown = (check / "compare.md").read_text()
    outcome = {0: "no regression", 1: "regression", 3: "undecided"}[result.returncode]
    assert markdown.startswith("### vae-bench compare: ") and outcome in markdown.splitlines()[0]
    assert result.stdout.endswith(markdown)  # printed too, for the job's log
    assert "| torch-fused-adam | 2 | 128 |" in markdown
    # Each run imported its own commit's code: env.json names the commit it ran from.
    for side, commit in (("base", "HEAD~1"), ("head", "HEAD")):
        env = json.loads((check / side / "env.json").read_text())
        assert env["git_commit"] == git(two_commits, "rev-parse", commit), side
    assert git(two_commits, "worktree", "list").count("\n") == 0  # the base's is removed


@pytest.mark.parametrize(
    "words, message",
    [
        (["no-such-ref", "OUT"], "no-such-ref is not a commit here"),
        (["HEAD"], "usage: "),
    ],
)
def test_a_bad_base_or_missing_out_is_one_line_and_status_2(two_commits, tmp_path, words, message):
    words = [str(tmp_path / w) if w == "OUT" else w for w in words]
    result = subprocess.run(
        ["bash", "bench/regression-check.sh", *words],
        cwd=two_commits,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert message in result.stderr
