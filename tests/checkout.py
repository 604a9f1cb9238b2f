"""Where the checkout's own files are, for a test at any depth of tests/ (the tests mirror the
packages, so a test's distance from the root is not one number)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
TESTS = ROOT / "tests"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment (with ``extra``) for a child that runs a tests/ module
    (``python -m cpu_verification...``): the checkout, then tests/, first on its path, so that
    it imports the packages from the checkout and its helpers from tests/, wherever it starts
    (started in tests/, the folders that mirror the packages stood in for them)."""
    path = [str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, **(extra or {}), "PYTHONPATH": os.pathsep.join(path)}
