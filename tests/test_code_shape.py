"""The harness stays readable: no function in bench/ is longer than a screen (60 lines,
its signature, docstring and body together)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LONGEST = 60


def long_functions(source: str, longest: int = LONGEST) -> list[str]:
    """Each function (or method, nested ones too) of ``source`` longer than ``longest``
    lines, with its length."""
    return [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > longest
    ]


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_no_function_in_the_harness_is_longer_than_a_screen(path):
    assert long_functions(path.read_text()) == []


def test_the_length_check_counts_a_function_whole():
    body = "".join(f"    x{i} = {i}\n" for i in range(58))
    fits = f"def f():\n    '''Doc.'''\n{body}"  # 60 lines
    assert long_functions(fits) == []
    assert long_functions(fits + "    return x0\n") == ["f (61 lines, line 1)"]
    nested = "class C:\n    def g(self):\n" + "".join(f"        y{i} = {i}\n" for i in range(60))
    assert long_functions(nested) == ["g (61 lines, line 2)"]
