"""The house's layering, read from the source: vae_ref (the truth) imports neither kernels nor
bench; kernels never imports bench; bench reaches backends only through the registry and
kernels.base (no backend package, no probing of a backend's attributes by name)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """The absolute module names the module at ``path`` imports."""
    return imported_by(path.read_text(), path.relative_to(ROOT).with_suffix("").parts[:-1])


def imported_by(source: str, package: tuple[str, ...]) -> set[str]:
    """The absolute module names ``source``, a module of ``package``, imports (relative
    imports resolved; ``from a import b`` counts as a and as a.b)."""
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


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
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr") and node.args):
            target = ast.unparse(node.args[0])
            if "backend" in target.lower() or "executor" in target.lower():
                probes.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not probes


@pytest.mark.parametrize("source", [
    "import kernels.numba_cpu", "from kernels.cupy_gpu import backend",
    "from kernels import jax_xla"])
def test_the_import_check_sees_every_spelling(source):
    assert any(is_backend_package(n) for n in imported_by(source, ("bench",)))
    assert not any(is_backend_package(n) for n in imported_by(
        "from kernels import create_backend\nfrom kernels.base import Backend", ("bench",)))
