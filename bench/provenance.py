"""Where a number came from: versions, machine, threads, git commit. Every result carries it."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo; platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """HEAD of the checkout this code runs from, '+dirty' if it has uncommitted changes;
    'unknown' outside a git checkout (e.g. an installed wheel)."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, check=True,
                timeout=10,
            ).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(names=("torch", "numpy", "numba", "scipy", "pandas", "matplotlib", "jax",
                            "jaxlib")) -> dict:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def command_line() -> str:
    """The command this process runs, as typed (``vae-bench run --out R ...``)."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def collect(*, data=None, **extra) -> dict:
    """A provenance record (JSON-ready). ``data`` (a ``vae_ref.data.Dataset``) adds what the
    data is, by content as well as by name; ``extra`` adds run-specific fields (seed...)."""
    import torch  # here, not at import: the results-directory lock reads command_line only

    if data is not None:
        extra = {"dataset": data.describe(), "data_sha256": data.fingerprint, **extra}
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": command_line(),
        **extra,
    }


def as_markdown(record: dict) -> str:
    """The provenance block under a results table."""
    lines = []
    for key, value in record.items():
        if isinstance(value, dict) and key == "versions":
            lines.append(f"- **{key}**: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        elif isinstance(value, dict):
            lines.append(f"- **{key}**:")
            lines += [f"  - {k}: {v}" for k, v in value.items()]
        else:
            lines.append(f"- **{key}**: {value}")
    return "\n".join(lines)
