"""The one results store of ``run`` and ``experiment``: a results directory of units of work (a
run's latent size, an experiment's model), each written whole the moment it finishes, and one
rule for what may be reused.

Layout, under the directory (held by its one writer through ``results_dir.claim``):

- ``cells/<key>.json``: a finished unit's record (rows, curves, history...), written last;
  its presence marks the unit finished.
- ``cells/<key>.npz``: the unit's arrays, if it has any (an experiment's trained weights);
  written before the record.
- ``cells/partial/<key>.json``: a unit in progress, rewritten after each of its stages, so a
  command cut short keeps what finished; the unit is redone when the command continues.

**The resume rule.** Every record carries its ``identity``: the settings and the data (by
content hash) it was made from. A finished unit is reused only when its identity is the one
asked for now; a unit made otherwise is refused, never mixed in, unless the caller redoes it
(``experiment --retrain``). Damaged files are refused by name, with what to do.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from vae_ref.atomic import atomic_open, atomic_write_text

CELLS = "cells"
PARTIAL = "partial"
# The first line of a Git LFS pointer file (https://git-lfs.com/spec/v1), found in place of
# the arrays when a clone has not fetched the LFS objects.
_LFS_POINTER = b"version https://git-lfs"


class StoreError(RuntimeError):
    """A unit that cannot be used as asked: made otherwise, or damaged. Says what to do."""


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path``; ValueError saying why it is not one (unreadable, not
    JSON, another JSON type)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{type(error).__name__}: {error}") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    return record


class ResultsStore:
    """The units of one results directory. ``redo`` tells how the command redoes a unit (the
    flag to name in refusals, e.g. "--retrain")."""

    def __init__(self, out: Path, *, redo: str = "another --out", arrays_are: str = "arrays"):
        self.out = Path(out)
        self.redo = redo
        self.arrays_are = arrays_are  # what a unit's arrays are, for messages ("weights")

    def _path(self, key: str, suffix: str = ".json", partial: bool = False) -> Path:
        return self.out / CELLS / (PARTIAL if partial else "") / f"{key}{suffix}"

    def _read(self, path: Path) -> dict:
        try:
            record = read_json_object(path)
        except ValueError as error:
            raise StoreError(
                f"{path} is damaged ({error}); delete it to redo that part, or pass {self.redo}"
            ) from None
        record.setdefault("key", path.stem)  # records written before keys were stored
        return record

    def records(self, *, partial: bool = False) -> list[dict]:
        """Every finished unit's record, by key; with ``partial``, also those in progress
        (where no finished one has their key)."""
        found = {}
        for path in sorted((self.out / CELLS).glob("*.json")):
            record = self._read(path)
            found[record["key"]] = record
        if partial:
            for path in sorted((self.out / CELLS / PARTIAL).glob("*.json")):
                record = self._read(path)
                found.setdefault(record["key"], record)
        return list(found.values())

    def finished(self, key: str, identity: dict) -> dict | None:
        """The finished record of ``key`` if it was made with ``identity``; None if there is
        none; StoreError if there is one made otherwise."""
        path = self._path(key)
        if not path.exists():
            return None
        record = self._read(path)
        made = record.get("identity")
        wanted = json.loads(json.dumps(identity))
        if made != wanted:
            if not isinstance(made, dict):
                why = "with settings not recorded (written by an older version)"
            elif made.get("data_sha256") != wanted.get("data_sha256"):
                why = (
                    f"from other data (sha256 {made.get('data_sha256') or 'not recorded'}, "
                    f"now {wanted.get('data_sha256')})"
                )
            else:
                differs = sorted(k for k in {*made, *wanted} if made.get(k) != wanted.get(k))
                why = f"with other settings (differs in {', '.join(differs)}: {made})"
            raise StoreError(
                f"{path} holds {key} made {why}; choose another --out, or pass {self.redo}"
            )
        return record

    def save(
        self,
        key: str,
        record: dict,
        identity: dict | None,
        *,
        partial: bool = False,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write a unit: its arrays first, then its record (finished units drop their partial
        record)."""
        if arrays is not None:
            with atomic_open(self._path(key, ".npz"), "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]  # no array is named allow_pickle
        full = {"key": key, "identity": identity, **record}
        atomic_write_text(
            self._path(key, partial=partial), json.dumps(full, indent=1, allow_nan=True)
        )
        if not partial:
            self._path(key, partial=True).unlink(missing_ok=True)

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        """A finished unit's arrays (StoreError naming a missing, damaged or LFS file)."""
        path = self._path(key, ".npz")
        what = f"delete {self._path(key).name} to redo it, or pass {self.redo}"
        try:
            with open(path, "rb") as f:
                head = f.read(len(_LFS_POINTER))
            if head == _LFS_POINTER:
                raise StoreError(
                    f"{path} is a Git LFS pointer, not the {self.arrays_are}: "
                    f"fetch them with `git lfs pull`, or {what}"
                )
            with np.load(path) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
            raise StoreError(
                f"{path} is damaged ({type(error).__name__}: {error}); {what}"
            ) from None
