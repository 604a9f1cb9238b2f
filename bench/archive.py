"""One ``.tar.gz`` of a results directory, replaced whole each time it is written.

A GPU machine lent through a device tool returns only a few files from one folder (the
project's device tool: at most 8 files of 16 MiB each; kernels/cupy_gpu/README.md), and
whatever else the command wrote is lost when it returns. ``gpu-check --archive`` therefore
writes the whole run directory as one archive after every stage: a command cut off at its
time limit still returns everything that finished before. The standard library's tarfile
is the tool made for the job; the write is atomic (``vae_ref.atomic``), so the archive on
disk is always a whole one.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from vae_ref.atomic import atomic_open

from .results_dir import claim_file

ARCHIVE_SUFFIX = ".tar.gz"
RETURNED_FILE_LIMIT = 16 << 20  # bytes: the largest file the device tool brings back


class ArchiveError(ValueError):
    """An archive path that cannot work (said before any work)."""


def check_archive_path(archive: Path, source: Path) -> None:
    """Refuse, in one line, an archive that is not a ``.tar.gz``, whose folder does not
    exist, or that would lie inside the directory it archives (it would hold itself)."""
    if not archive.name.endswith(ARCHIVE_SUFFIX):
        raise ArchiveError(
            f"--archive {archive}: name it *{ARCHIVE_SUFFIX} (one gzipped tar of the run directory)"
        )
    if archive.resolve().is_relative_to(source.resolve()):
        raise ArchiveError(
            f"--archive {archive} lies inside --out {source}, which it "
            "archives; put it elsewhere (on a GPU machine: under $OUT)"
        )
    if not archive.parent.is_dir():
        raise ArchiveError(
            f"--archive {archive}: the folder {archive.parent} does not "
            "exist; create it or choose another path"
        )
    if archive.exists() and not _is_archive(archive):
        raise ArchiveError(
            f"--archive {archive} exists and is not a .tar.gz archive; "
            "refusing to overwrite it: choose another path"
        )


def _is_archive(path: Path) -> bool:
    return path.is_file() and tarfile.is_tarfile(path)


def write_archive(source: Path, archive: Path) -> int:
    """``source`` as ``archive`` (its members under ``source``'s own name, temp files left
    out), replacing any earlier archive whole. Returns the archive's size in bytes. Its
    writer holds the archive's lock for the write only, and removes the temp file an earlier
    writer killed mid-write left (a device tool would return it as one of its few files)."""
    with (
        claim_file(archive, ours=_is_archive, what="a .tar.gz archive"),
        atomic_open(archive, "wb") as f,
        tarfile.open(fileobj=f, mode="w:gz") as tar,
    ):
        tar.add(
            source,
            arcname=source.name,
            filter=lambda member: None if member.name.endswith(".tmp") else member,
        )
    return archive.stat().st_size
