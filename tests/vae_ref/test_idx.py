"""Tests for the IDX reader/writer (vae_ref.idx)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # the test extra's; a GPU machine may not have it

from hypothesis import given, settings
from hypothesis import strategies as st

from vae_ref.idx import (
    IDXFormatError,
    read_idx,
    read_idx_images,
    read_idx_labels,
    write_idx,
)

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _sample(dtype: type, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path: Path, dtype: type, suffix: str) -> None:
    array = _sample(dtype, (3, 4, 5))
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    assert back.flags.writeable and back.flags.c_contiguous
    np.testing.assert_array_equal(back, array)


def test_gz_is_compressed_and_raw_is_not(tmp_path: Path) -> None:
    array = np.zeros((10, 28, 28), np.uint8)
    write_idx(tmp_path / "raw", array)
    write_idx(tmp_path / "c.gz", array)
    raw = (tmp_path / "raw").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert len(raw) == 16 + array.size
    assert gzip.decompress((tmp_path / "c.gz").read_bytes()) == raw


def test_big_endian_on_disk(tmp_path: Path) -> None:
    write_idx(tmp_path / "x", np.array([1, 256], dtype=np.int32))
    assert (tmp_path / "x").read_bytes()[8:] == b"\x00\x00\x00\x01\x00\x00\x01\x00"


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple),
    gz=st.booleans(),
)
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, dtype: type, shape: tuple[int, ...], gz: bool
) -> None:
    array = _sample(dtype, shape)
    path = tmp_path_factory.mktemp("idx") / ("f.gz" if gz else "f")
    write_idx(path, array)
    back = read_idx(path)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "images"
    write_idx(path, np.ones((4, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IDXFormatError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message
    assert f"expected {4 * 28 * 28} bytes of data" in message
    assert f"found {4 * 28 * 28 - 100}" in message


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(_header(0x08, (4, 28, 28))[:9])
    with pytest.raises(IDXFormatError, match="truncated header"):
        read_idx(path)


def test_too_short_for_header(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(IDXFormatError, match="too short"):
        read_idx(path)


def test_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    data = _header(0x08, (3,)) + bytes([1, 2, 3]) + b"junk"
    path.write_bytes(gzip.compress(data))
    with pytest.raises(IDXFormatError, match="4 trailing bytes") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x05")
    with pytest.raises(IDXFormatError, match="bad magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_unknown_dtype_code(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(_header(0x0A, (1,)) + b"\x05")
    with pytest.raises(IDXFormatError, match="unknown dtype code 0x0a"):
        read_idx(path)


def test_zero_ndim(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\x00\x00\x08\x00")
    with pytest.raises(IDXFormatError, match="ndim is 0"):
        read_idx(path)


def test_huge_dims_do_not_allocate(tmp_path: Path) -> None:
    # A corrupt header claiming ~2^96 bytes must be reported, not attempted.
    path = tmp_path / "x"
    path.write_bytes(_header(0x0E, (2**32 - 1, 2**32 - 1, 2**32 - 1)) + b"\x00" * 8)
    with pytest.raises(IDXFormatError, match="truncated"):
        read_idx(path)


def test_truncated_gz_stream(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, _sample(np.uint8, (20, 28, 28)))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IDXFormatError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gz_stream(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, _sample(np.uint8, (20, 28, 28)))
    blob = bytearray(path.read_bytes())
    for i in range(20, 60):  # scribble over the deflate stream
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(IDXFormatError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_format_error_is_value_error() -> None:
    assert issubclass(IDXFormatError, ValueError)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def test_write_rejects_unsupported(tmp_path: Path) -> None:
    with pytest.raises(IDXFormatError, match="cannot write dtype"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))
    with pytest.raises(IDXFormatError, match="dimensions"):
        write_idx(tmp_path / "x", np.array(5, np.uint8))


# ------------------------------------------------------------ images / labels


def test_read_images_flattens(tmp_path: Path) -> None:
    images = _sample(np.uint8, (5, 28, 28))
    write_idx(tmp_path / "i.gz", images)
    flat = read_idx_images(tmp_path / "i.gz", expected_count=5, expected_shape=(28, 28))
    assert flat.shape == (5, 784) and flat.dtype == np.uint8
    np.testing.assert_array_equal(flat, images.reshape(5, 784))


def test_read_labels(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "l", labels)
    np.testing.assert_array_equal(read_idx_labels(tmp_path / "l", 10), labels)


def test_images_wrong_ndim(tmp_path: Path) -> None:
    path = tmp_path / "i"
    write_idx(path, np.zeros((5, 784), np.uint8))
    with pytest.raises(IDXFormatError, match="3-D") as info:
        read_idx_images(path)
    assert str(path) in str(info.value)


def test_images_wrong_dtype(tmp_path: Path) -> None:
    path = tmp_path / "i"
    write_idx(path, np.zeros((5, 28, 28), np.int8))
    with pytest.raises(IDXFormatError, match="unsigned bytes"):
        read_idx_images(path)


def test_images_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "i"
    write_idx(path, np.zeros((5, 16, 16), np.uint8))
    with pytest.raises(IDXFormatError, match="expected 28x28"):
        read_idx_images(path, expected_shape=(28, 28))


def test_images_wrong_count(tmp_path: Path) -> None:
    path = tmp_path / "i.gz"
    write_idx(path, np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(IDXFormatError, match="expected 60000 images, file holds 5") as info:
        read_idx_images(path, expected_count=60000)
    assert str(path) in str(info.value)


def test_labels_wrong_count_and_ndim_and_dtype(tmp_path: Path) -> None:
    path = tmp_path / "l"
    write_idx(path, np.zeros(7, np.uint8))
    with pytest.raises(IDXFormatError, match="expected 10000 labels, file holds 7"):
        read_idx_labels(path, expected_count=10000)
    write_idx(path, np.zeros((7, 1), np.uint8))
    with pytest.raises(IDXFormatError, match="1-D"):
        read_idx_labels(path)
    write_idx(path, np.zeros(7, np.int32))
    with pytest.raises(IDXFormatError, match="unsigned bytes"):
        read_idx_labels(path)
