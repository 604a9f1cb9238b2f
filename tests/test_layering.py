"""The house's layering, read from the source: vae_ref (the truth) imports neither kernels nor
bench; kernels never imports bench; bench reaches backends only through the registry and
kernels.base (no backend package, no probing of a backend's attributes by name)."""

import ast
import importlib
from collections.abc import Container
from pathlib import Path

import pytest
from checkout import ROOT


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """The absolute module names the module at ``path`` imports."""
    return imported_by(path.read_text(), path.relative_to(ROOT).with_suffix("").parts[:-1])


def imported_by(
    source: str, package: tuple[str, ...], known: Container[str] | None = None
) -> set[str]:
    """The absolute module names ``source``, a module of ``package``, imports (relative
    imports resolved). ``from a import b`` counts as a and as a.b; given the ``known``
    modules, as a.b where that is one of them, else as a."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = imported_from(node, package)
            subs = {f"{base}.{alias.name}" for alias in node.names}
            if known is None:
                names |= {base, *subs}
            else:
                names |= {sub if sub in known else base for sub in subs}
    return names


def imported_from(node: ast.ImportFrom, package: tuple[str, ...]) -> str:
    """The absolute name of the module a ``from ... import`` in ``package`` reads from."""
    base = node.module or ""
    if node.level:
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, base]) if base else ".".join(anchor)
    return base


def is_backend_package(name: str) -> bool:
    """kernels.<x> where <x> is a package of its own (a backend), not a module of kernels."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[0] == "kernels" and (ROOT / "kernels" / parts[1]).is_dir()


@pytest.mark.parametrize("path", modules("vae_ref"), ids=lambda p: p.name)
def test_the_reference_imports_neither_kernels_nor_bench(path):
    assert not {n for n in imported(path) if n.split(".")[0] in ("kernels", "bench")}


@pytest.mark.parametrize("path", modules("kernels"), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernels_never_import_the_harness(path):
    assert not {n for n in imported(path) if n.split(".")[0] == "bench"}


@pytest.mark.parametrize("path", modules("bench"), ids=lambda p: p.name)
def test_the_harness_imports_no_backend_package(path):
    assert not {n for n in imported(path) if is_backend_package(n)}


@pytest.mark.parametrize("path", modules("bench"), ids=lambda p: p.name)
def test_the_harness_probes_no_backend_attribute_by_name(path):
    """Capabilities are asked for by protocol (kernels.base), not by getattr/hasattr."""
    probes = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
        ):
            target = ast.unparse(node.args[0])
            if "backend" in target.lower() or "executor" in target.lower():
                probes.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not probes


@pytest.mark.parametrize(
    "source",
    [
        "import kernels.numba_cpu",
        "from kernels.cupy_gpu import backend",
        "from kernels import jax_xla",
    ],
)
def test_the_import_check_sees_every_spelling(source):
    assert any(is_backend_package(n) for n in imported_by(source, ("bench",)))
    assert not any(
        is_backend_package(n)
        for n in imported_by(
            "from kernels import create_backend\nfrom kernels.base import Backend", ("bench",)
        )
    )


def project_modules() -> dict[str, Path]:
    """Every module of the three packages by its dotted name (a package by its own)."""
    found = {}
    for package in ("vae_ref", "kernels", "bench"):
        for path in modules(package):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Which of the given modules each imports, from ``{name: (source, is_package)}``:
    every import counts, at module level, inside a function or under TYPE_CHECKING;
    ``from p import m`` is an edge to the module p.m where there is one, else to p."""
    graph = {}
    for name, (source, is_package) in sources.items():
        package = tuple(name.split(".")) if is_package else tuple(name.split(".")[:-1])
        edges = imported_by(source, package, known=sources)
        graph[name] = {e for e in edges if e in sources and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's import cycles: each set of modules that reach one another (strongly
    connected components of two or more, by Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycles_in_any_package():
    sources = {
        name: (path.read_text(), path.name == "__init__.py")
        for name, path in project_modules().items()
    }
    assert cycles(import_graph(sources)) == []


def test_the_cycle_check_finds_a_planted_cycle():
    """The check fails on a cycle however it is hidden: under TYPE_CHECKING, in a function,
    through a third module, by a relative import; an import of a package's submodule is not
    an import of the package."""
    sources = {
        "bench": ("", True),
        "bench.a": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import Thing\n",
            False,
        ),
        "bench.b": ("def f():\n    from bench import c\n", False),
        "bench.c": ("import bench.a\n", False),
        "bench.d": ("from . import e\n", False),
        "bench.e": ("import numpy\n", False),
        "kernels": ("from .x import y\n", True),
        "kernels.x": ("from . import z\n", False),
        "kernels.z": ("", False),
    }
    assert cycles(import_graph(sources)) == [["bench.a", "bench.b", "bench.c"]]
    sources["bench.e"] = ("from bench.d import g\n", False)
    assert cycles(import_graph(sources)) == [
        ["bench.a", "bench.b", "bench.c"],
        ["bench.d", "bench.e"],
    ]


def names_the_tests_folder(source: str) -> list[str]:
    """Where ``source`` names a path into the tests folder: a string holding ``tests/``, or
    ``"tests"`` joined onto a path with ``/``."""
    tree = ast.parse(source)
    prose = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}  # docstrings
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in prose
            and ("tests/" in node.value.replace("\\", "/"))
        ):
            found.append(node.value)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found += [
                side.value
                for side in (node.left, node.right)
                if isinstance(side, ast.Constant) and side.value == "tests"
            ]
    return found


@pytest.mark.parametrize("path", modules("bench"), ids=lambda p: p.name)
def test_the_harness_reads_nothing_from_the_tests_folder(path):
    assert names_the_tests_folder(path.read_text()) == []


def test_the_tests_folder_check_sees_a_path_into_it():
    assert names_the_tests_folder(
        'FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "f.npz"'
    ) == ["tests"]
    assert names_the_tests_folder('open("tests/fixtures/f.npz")') == ["tests/fixtures/f.npz"]
    assert names_the_tests_folder('"""As tests/test_x.py shows."""\nStage("tests", "x")') == []


@pytest.mark.parametrize("package", ["bench", "kernels", "vae_ref"])
def test_the_test_folder_named_like_a_package_does_not_stand_in_for_it(package):
    """tests/<package>/ holds that package's tests; imported by that name, it would be an empty
    namespace package and every import from the package would fail with 'unknown location'."""
    imported = importlib.import_module(package)
    assert imported.__file__ == str(ROOT / package / "__init__.py")
