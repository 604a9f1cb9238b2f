"""Atomic file writes: a temp file in the same directory, then a rename.

A run interrupted mid-write leaves the previous file (or none), never half of one. A process
killed mid-write (SIGKILL, power loss) cannot remove its temp file: ``leftover_temp_files``
finds those, so the next writer of the directory can (``bench.results_dir``).
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

# ".<name>.<8 random characters>.tmp", as tempfile.mkstemp names them with the prefix and
# suffix below (its random part: 8 characters of [a-z0-9_], tempfile._RandomNameSequence).
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside ``path``; on a clean exit it replaces ``path``.

    An OSError while writing (a full disk: ENOSPC) names ``path``, so the message says which
    file could not be written; the temp file is removed and ``path`` keeps its old content.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None and error.errno is not None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def leftover_temp_files(
    directory: str | Path, target: str | None = None, *, recursive: bool = True
) -> list[Path]:
    """Temp files of ``atomic_open`` in ``directory`` (and below, if ``recursive``), those of
    files named ``target`` only if given. Only the one writer of the directory may remove
    them: a live writer's temp file looks the same."""
    found = []
    directory = Path(directory)
    for path in (directory.rglob if recursive else directory.glob)(".*.tmp"):
        match = _TEMP_NAME.match(path.name)
        if match and path.is_file() and target in (None, match["target"]):
            found.append(path)
    return found
