"""The reference's versioned agreement fixture: the gate's cases and their truth in one .npz.

As llm.c's ``train_gpt2.py`` writes the state its C code is tested against, the reference
writes this file: for each case the inputs (parameters, batch, noise, the K Adam steps'
batches), the float64 oracle's tensors and float32 PyTorch's error on each (``oracle.py``).
Tests and ``vae-bench check --fixture`` read it, so a backend can be checked without running
PyTorch; ``vae-bench fixture`` writes one (``make_fixture``).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_open
from .config import CASE_KINDS, GATE_ADAM_STEPS, VAEConfig  # noqa: F401  (CASE_KINDS: fixture's)
from .oracle import CALIBRATION_RUNS, Case, Expectation, build_cases, expectation

SCHEMA_VERSION = 3  # 2: the K-step case's elements near a ReLU kink (oracle.py), not judged;
#                     3: the K-step calibration is the largest of oracle.CALIBRATION_RUNS runs


class FixtureError(ValueError):
    """A fixture file that cannot be used (missing, other schema, malformed)."""


def write_fixture(
    path: Path, cases: list[Case], expectations: list[Expectation], *, dataset: str
) -> None:
    """Write cases, oracle tensors and calibration errors to one .npz (atomically)."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "torch": torch.__version__,
        "dataset": dataset,
        "calibration_runs": CALIBRATION_RUNS,
        "cases": [],
    }
    for case, expected in zip(cases, expectations):
        key = case.name
        meta["cases"].append(
            {
                "name": key,
                "config": case.config.to_dict(),
                "steps": case.steps,
                "reference_errors": expected.reference_errors,
            }
        )
        arrays[f"{key}/x"], arrays[f"{key}/eps"] = case.x, case.eps
        # Cases share most parameter tensors: store each distinct tensor once, by content.
        refs = {}
        for n, p in case.params.items():
            digest = hashlib.sha1(np.ascontiguousarray(p).tobytes()).hexdigest()[:16]
            arrays[f"param/{digest}"] = p
            refs[n] = digest
        meta["cases"][-1]["params"] = refs
        if case.steps:
            # steps > 0: a K-step case carries its batches and noise (oracle.build_cases)
            assert case.data is not None and case.step_indices is not None
            assert case.step_eps is not None
            arrays[f"{key}/step_eps"] = case.step_eps
            # Only the rows the steps read are stored, re-indexed.
            used, inverse = np.unique(case.step_indices, return_inverse=True)
            arrays[f"{key}/data"] = case.data[used]
            arrays[f"{key}/step_indices"] = inverse.reshape(case.step_indices.shape)
        # Truth is stored in float32 (half the bytes); rounding it costs 0.5 ulp, well
        # inside the 16-ulp floors of every tolerance.
        arrays |= {
            f"{key}/truth/{n}": np.asarray(t, dtype=np.float32) for n, t in expected.truth.items()
        }
        arrays |= {
            f"{key}/unjudged/{n}": np.asarray(m, dtype=bool) for n, m in expected.unjudged.items()
        }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # no array is named allow_pickle


# Config fields that fixtures written before their removal record, each with the only value it
# could take (the model was always a Bernoulli decoder behind ReLU layers).
_REMOVED_CONFIG_FIELDS = {"reconstruction": "bce", "activation": "relu"}


def _config(recorded: dict) -> VAEConfig:
    """The case's VAEConfig; a removed field must hold its only value, and is dropped."""
    fields = dict(recorded)
    for name, only in _REMOVED_CONFIG_FIELDS.items():
        if fields.pop(name, only) != only:
            raise FixtureError(
                f"the fixture's config has {name}={recorded[name]!r}, which "
                "this code cannot compute; regenerate it with `vae-bench "
                "fixture`"
            )
    return VAEConfig(**fields)


def read_fixture(path: Path) -> list[tuple[Case, Expectation]]:
    path = Path(path)
    if not path.exists():
        raise FixtureError(f"{path}: no such fixture; write one with `vae-bench fixture`")
    try:
        loaded = np.load(path)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy holds one bare array
            raise TypeError(f"a single {type(loaded).__name__}, not an .npz archive")
        with loaded as archive:
            arrays = {k: archive[k] for k in archive.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise FixtureError(
            f"{path}: not a readable fixture ({error}); write one with `vae-bench fixture`"
        ) from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise FixtureError(
            f"{path}: fixture schema {meta.get('schema_version')}, this code reads schema "
            f"{SCHEMA_VERSION}; regenerate it with `vae-bench fixture`"
        )
    result = []
    for entry in meta["cases"]:
        key = entry["name"]

        def take(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        params = {n: arrays[f"param/{digest}"] for n, digest in entry["params"].items()}
        case = Case(
            key,
            _config(entry["config"]),
            params,
            arrays[f"{key}/x"],
            arrays[f"{key}/eps"],
            steps=entry["steps"],
            data=arrays.get(f"{key}/data"),
            step_indices=arrays.get(f"{key}/step_indices"),
            step_eps=arrays.get(f"{key}/step_eps"),
        )
        result.append(
            (
                case,
                Expectation(
                    take(f"{key}/truth/"), entry["reference_errors"], take(f"{key}/unjudged/")
                ),
            )
        )
    return result


def make_fixture(
    path: Path,
    images: np.ndarray,
    dataset: str,
    latents=(20,),
    kinds=("batch", "adam-steps"),
    steps: int = GATE_ADAM_STEPS,
    hidden: int = 512,
) -> list[Case]:
    """Build the named cases on ``images`` (named ``dataset``: what they are), run the oracle
    on each, write the file."""
    cases = [
        c
        for z in latents
        for c in build_cases(images, z, steps=steps, hidden=hidden)
        if c.name.split("/", 1)[1] in kinds
    ]
    write_fixture(path, cases, [expectation(c) for c in cases], dataset=dataset)
    return cases
