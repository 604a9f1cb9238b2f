"""Loading a GEMM engine's shared library (oneMKL, oneDNN) by ctypes: the first of its
candidate paths that loads and exports every symbol the step calls, or why none did."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from pathlib import Path


def first_loadable(
    name: str, candidates: list[Path], symbols: Iterable[str], install: str
) -> tuple[ctypes.CDLL, Path] | str:
    """The first of ``candidates`` that loads and has every one of ``symbols``, with its path;
    else one line saying why: ``name`` is not installed (``install`` says how), or what was
    wrong with each candidate."""
    if not candidates:
        return f"{name} is not installed ({install})"
    wanted = list(symbols)
    errors = []
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as error:
            errors.append(f"{path}: {error}")
            continue
        missing = [symbol for symbol in wanted if not hasattr(lib, symbol)]
        if missing:
            errors.append(f"{path} has no {', '.join(missing)}")
            continue
        return lib, path
    return f"{name} could not be loaded: " + "; ".join(errors)
