"""Who may write a results directory: one writer at a time, and only into a directory that is
ours. Every command that writes results (run, experiment, merge, fixture, profile, gpu-check,
seeds, report) goes through here.

- **One writer.** A writer holds an exclusive ``flock`` on ``<dir>/.vae-bench.lock`` for as
  long as it writes. The OS drops the lock when the process ends however it ends, so a killed
  run never leaves a stale lock; a second writer is refused at once with the holder's pid and
  command (which the holder writes into the lock file).
- **Ours.** ``<dir>/.vae-bench-results`` records which kind of results the directory holds
  (``run``, ``experiment``, ``seeds``, ``report``, or ``gpu-check``, whose stages are runs
  inside it). A new or empty directory becomes ours; a directory written before the marker
  existed is recognised by its record file (``KINDS``); anything else, e.g. a directory of
  someone's CSV files, is refused, never overwritten.
- **Leftovers.** Temp files of a writer killed mid-write (``vae_ref.atomic``) are removed by
  the next writer, which alone may: it holds the lock.
- **Nothing half-made.** A writer that ends without a result leaves the directory as it found
  it (removing it if it made it), so a failed start never blocks its ``--out``; an
  all-or-nothing writer (merge) that fails removes everything it wrote.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vae_ref.atomic import atomic_write_text, leftover_temp_files

from . import file_names as files
from .provenance import command_line

LOCK_NAME = ".vae-bench.lock"
MARKER_NAME = ".vae-bench-results"
# kind -> the record file by which a directory written before the marker existed is known.
KINDS = {
    "run": files.ENV,
    "experiment": files.PROVENANCE,
    "gpu-check": files.TARGETS,
    "seeds": files.COMPARISON,
    "report": files.REPORT,
}


class ResultsDirError(RuntimeError):
    """The directory cannot be written as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Claim:
    path: Path
    kind: str
    fresh: bool  # the directory was new or empty when claimed


def _holder(lock: Path) -> str:
    try:
        holder = json.loads(lock.read_text())
        return f"pid {holder['pid']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said which"  # between its flock and its write


def _lock(lock: Path, create_dir: Path) -> int:
    """An fd holding an exclusive flock on ``lock``; ResultsDirError if another holds it.

    The lock file is removed at release, so after taking the lock check that the name still
    points at the file locked: else another writer released (and removed) it meanwhile, and
    the lock is taken afresh on the new file."""
    while True:
        create_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ResultsDirError(
                f"{create_dir} is being written by another vae-bench ({_holder(lock)}); wait "
                "for it to finish, or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            holder = {"pid": os.getpid(), "command": command_line()}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder).encode())
            return fd
        os.close(fd)


def _unlock(fd: int, lock: Path) -> None:
    lock.unlink(missing_ok=True)  # while still held: see _lock
    os.close(fd)


def _created(path: Path) -> Path | None:
    """The topmost directory that ``path.mkdir(parents=True)`` would create, if any."""
    top = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        top = candidate
    return top


def _remove_empty(directory: Path, top: Path | None) -> None:
    """Remove ``directory`` and its parents up to ``top`` (what a writer created), each only
    while empty: another writer may already be in one."""
    if top is None:
        return
    for d in (directory, *directory.parents):
        try:
            d.rmdir()
        except OSError:
            return
        if d == top:
            return


@contextmanager
def _exclusive(directory: Path, lock_name: str, what: str) -> Iterator[None]:
    """Create ``directory`` if needed and hold ``lock_name`` in it; at exit release the lock
    and remove the directories created here if they are left empty."""
    made = _created(directory)
    try:
        fd = _lock(directory / lock_name, directory)
    except OSError as error:
        _remove_empty(directory, made)
        reason = (
            "a part of that path is a file"
            if error.errno in (errno.ENOTDIR, errno.EEXIST)
            else error.strerror or str(error)
        )
        raise ResultsDirError(f"cannot write {what}: {reason}; choose another --out") from None
    try:
        yield
    finally:
        _unlock(fd, directory / lock_name)
        _remove_empty(directory, made)


def _outside(path: Path) -> list[Path]:
    """What the directory holds besides our lock and marker, and the marker's temp file (a
    writer killed at its first write, which only the marker's writer names so)."""
    ours = {
        LOCK_NAME,
        MARKER_NAME,
        *(p.name for p in leftover_temp_files(path, MARKER_NAME, recursive=False)),
    }
    return sorted(p for p in path.iterdir() if p.name not in ours)


def _holds_nothing(path: Path) -> bool:
    """No file besides our marker and lock (empty subdirectories count as nothing)."""
    return not any(
        p.is_file() or (p.is_dir() and any(q.is_file() for q in p.rglob("*")))
        for p in _outside(path)
    )


def _clear(path: Path) -> None:
    """Remove everything but the lock: what a writer that found the directory empty wrote."""
    for entry in path.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_ownership(path: Path, kind: str) -> None:
    """Raise ResultsDirError unless the directory is new, empty, or holds our ``kind``."""
    marker = path / MARKER_NAME
    if marker.exists():
        try:
            marked = json.loads(marker.read_text())["kind"]
        except (OSError, ValueError, KeyError, TypeError):
            marked = None
        if marked != kind:
            raise ResultsDirError(
                f"{path} holds vae-bench results of another kind ({marked or 'unreadable'} "
                f"{MARKER_NAME}), not a {kind}; choose another --out"
            )
        return
    names = [p.name for p in _outside(path)]
    if names and not (path / KINDS[kind]).is_file():
        # Not marked, not empty, and not a directory written before the marker existed.
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ResultsDirError(
            f"{path} holds files vae-bench did not write as a {kind} ({shown}); refusing to "
            "write there: choose a new or empty --out"
        )


def _existing(path: Path, what: str) -> str | None:
    """ "dir", "file" or None (nothing there) for ``path``; ResultsDirError where the path
    cannot even be looked at (a name too long, a part that is not a directory we may read)."""
    try:
        return "dir" if path.is_dir() else "file" if path.exists() else None
    except OSError as error:
        raise ResultsDirError(
            f"cannot write {what}: {error.strerror or error}; choose another --out"
        ) from None


@contextmanager
def claim(
    path: Path, kind: str, *, empty: bool = False, all_or_nothing: bool = False
) -> Iterator[Claim]:
    """Hold ``path`` as the one writer of a ``kind`` results directory for the ``with`` block.

    ``empty``: refuse a directory that already holds results. ``all_or_nothing``: if the block
    fails, remove whatever it wrote (only in a directory that was new or empty)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of results directory {kind!r}")
    path = Path(path)
    if _existing(path, f"results in {path}") == "file":
        raise ResultsDirError(f"{path} is a file, not a directory; choose another --out")
    with _exclusive(path, LOCK_NAME, f"results in {path}"):
        _check_ownership(path, kind)
        for leftover in leftover_temp_files(path):
            leftover.unlink(missing_ok=True)
        fresh = _holds_nothing(path)
        if empty and not fresh:
            names = ", ".join(p.name for p in _outside(path))
            raise ResultsDirError(
                f"{path} already holds results ({names}); give a new or empty directory"
            )
        if not (path / MARKER_NAME).exists():
            atomic_write_text(path / MARKER_NAME, json.dumps({"kind": kind}) + "\n")
        try:
            yield Claim(path, kind, fresh)
        except BaseException:
            if fresh and all_or_nothing:
                _clear(path)
            raise
        finally:
            # A writer that found the directory empty and wrote no result leaves it so.
            if fresh and _holds_nothing(path):
                _clear(path)


def _is_zip(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


@contextmanager
def claim_file(
    path: Path, *, ours: Callable[[Path], bool] = _is_zip, what: str = "a fixture (.npz)"
) -> Iterator[Path]:
    """Hold ``path`` (one file written whole: a fixture, a profile report) as its one writer:
    the lock is ``.<name>.lock`` beside it; leftover temp files of that name are removed. An
    existing file that is not ``what`` (``ours`` says; by default a zip archive, as an .npz
    fixture is) is refused, not overwritten. A path that cannot be written is refused here,
    before any work."""
    path = Path(path)
    existing = _existing(path, str(path))
    if existing == "dir":
        raise ResultsDirError(f"{path} is a directory; give the path of the file to write")
    if existing == "file" and not ours(path):
        raise ResultsDirError(
            f"{path} exists and is not {what}; refusing to overwrite it: choose another --out"
        )
    with _exclusive(path.parent, f".{path.name}.lock", str(path)):
        for leftover in leftover_temp_files(path.parent, path.name, recursive=False):
            leftover.unlink(missing_ok=True)
        yield path
