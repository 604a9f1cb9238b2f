"""Where the checkout's own files are, for a test at any depth of tests/ (the tests mirror the
packages, so a test's distance from the root is not one number)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
TESTS = ROOT / "tests"
