"""The harness stays readable: no function in bench/ is longer than a screen, 60 lines (its
signature, docstring and body together, as the files are laid out).

ruff format, which `nox -s lint` enforces, puts each argument of a call that does not fit
in 100 columns on a line of its own, and the functions below grew past 60 lines when the
checkout was first formatted (they were within it, split by hand, the commit before). Until
each is split again, the check holds the line: no other function may pass 60 lines, and a
function split to fit must leave the list (a stale entry fails too)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LONGEST = 60

# Over 60 lines since the first formatting (their lengths then), to be split (issue 39).
STILL_TOO_LONG = {
    "cli.py:_add_experiment",  # 114: the experiment command's arguments
    "cli.py:_add_check",  # 73
    "cli.py:_add_run",  # 89
    "cli.py:_add_compare",  # 72
    "pipeline.py:execute",  # 79
    "profile.py:profile",  # 87
    "run.py:run_latent",  # 68
    "run.py:run",  # 72
    "run_comparison.py:compare_runs",  # 78
    "throughput.py:measure",  # 78
    "training.py:train_backend",  # 71
}


def long_functions(source: str, longest: int = LONGEST) -> dict[str, int]:
    """Each function (or method, nested ones too) of ``source`` longer than ``longest``
    lines, by name, with its length."""
    return {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > longest
    }


def test_no_function_in_the_harness_is_longer_than_a_screen():
    found = {
        f"{path.name}:{name}": length
        for path in sorted((ROOT / "bench").glob("*.py"))
        for name, length in long_functions(path.read_text()).items()
    }
    assert {name: n for name, n in found.items() if name not in STILL_TOO_LONG} == {}
    assert STILL_TOO_LONG - set(found) == set(), "split to fit: take it off STILL_TOO_LONG"


def test_the_length_check_counts_a_function_whole():
    body = "".join(f"    x{i} = {i}\n" for i in range(58))
    fits = f"def f():\n    '''Doc.'''\n{body}"  # 60 lines
    assert long_functions(fits) == {}
    assert long_functions(fits + "    return x0\n") == {"f": 61}
    nested = "class C:\n    def g(self):\n" + "".join(f"        y{i} = {i}\n" for i in range(60))
    assert long_functions(nested) == {"g": 61}
