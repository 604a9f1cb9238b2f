"""The code stays readable: no function in bench/, kernels/ or vae_ref/ is longer than a
screen, 60 lines (its signature, docstring and body together, as the files are laid out by
ruff format, which `nox -s lint` enforces).

One is exempt: pooled_step.backward_update, the Numba backend's timed backward pass and Adam
update, three parallel regions compiled as one call."""

import ast

from checkout import ROOT

LONGEST = 60

PACKAGES = ("bench", "kernels", "vae_ref")
# The timed step itself: split, it is another compiled program, to be measured against this
# one interleaved (nox -s bench), not reshaped for a line count.
LONG_ON_PURPOSE = {"kernels/numba_cpu/pooled_step.py:backward_update"}


def long_functions(source: str, longest: int = LONGEST) -> dict[str, int]:
    """Each function (or method, nested ones too) of ``source`` longer than ``longest``
    lines, by name, with its length."""
    return {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > longest
    }


def test_no_function_is_longer_than_a_screen():
    found = {
        f"{path.relative_to(ROOT).as_posix()}:{name}": length
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for name, length in long_functions(path.read_text()).items()
    }
    assert {name: n for name, n in found.items() if name not in LONG_ON_PURPOSE} == {}
    assert LONG_ON_PURPOSE <= set(found), "within 60 lines now: take it off LONG_ON_PURPOSE"


def test_the_length_check_counts_a_function_whole():
    body = "".join(f"    x{i} = {i}\n" for i in range(58))
    fits = f"def f():\n    '''Doc.'''\n{body}"  # 60 lines
    assert long_functions(fits) == {}
    assert long_functions(fits + "    return x0\n") == {"f": 61}
    nested = "class C:\n    def g(self):\n" + "".join(f"        y{i} = {i}\n" for i in range(60))
    assert long_functions(nested) == {"g": 61}
