"""Numba's on-disk cache for this backend, keyed to every source file of the package.

Numba keys a cached function to the contents of its own file only
(numba/core/caching.py: _SourceFileBackedLocatorMixin.get_source_stamp hashes ``py_file``),
so an edit to a kernel the step inlines (fused.py, bf16.py, gemm.py, fastmath.py) would leave
step.py's cached machine code in use: a benchmark of code that no longer exists (seen: the
gate passed in 0.06 s of "compile" after fused.py changed). Pointing ``numba.config.CACHE_DIR``
(read by numba/core/caching.py: UserProvidedCacheLocator, the first locator Numba tries) at a
directory named by a hash of all the package's sources makes any edit a cache miss.
The directory is named by the process's GEMM engines too (``engines.cache_tag``): the pooled
step calls its engine's functions by symbol, chosen as it compiles, so a step compiled for
oneMKL must not be loaded where oneDNN was asked for.
The setting is the process's: a cache=True function of another package decorated after this
one is cached in that directory too, still under its own key.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def sources_digest(package: Path = PACKAGE) -> str:
    """A hash of every .py file of ``package`` (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_directory(package: Path = PACKAGE, engines: str | None = None) -> Path:
    """Where this package's compiled kernels are cached: under the user's NUMBA_CACHE_DIR if
    set, else the package's __pycache__, in a directory named by the sources' hash and the
    GEMM engines (``engines``: default this process's, engines.cache_tag)."""
    if engines is None:
        from .engines import cache_tag

        engines = cache_tag()
    user = os.environ.get("NUMBA_CACHE_DIR")
    base = Path(user) if user else package / "__pycache__"
    return base / f"numba-{sources_digest(package)}-{engines}"


@functools.cache
def key_cache_to_sources() -> Path:
    """Point Numba's cache at ``cache_directory()``; must run before any ``cache=True``
    function of this package is decorated (Numba picks the locator then). Every module with
    such functions calls it; the sources are hashed once per process."""
    from numba.core import config

    directory = cache_directory()
    config.CACHE_DIR = str(directory)
    return directory
