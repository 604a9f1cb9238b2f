"""Reader and writer for the IDX file format used by MNIST and Fashion-MNIST.

Layout: two zero bytes, a dtype code byte, an ndim byte, ndim big-endian
uint32 dimension sizes, then the row-major data (big-endian for multi-byte
types). Files may be gzip-compressed; compression is detected from the
content (gzip magic 1f 8b), so both ``name`` and ``name.gz`` work.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "IDXFormatError",
    "IDX_DTYPES",
    "read_idx",
    "write_idx",
    "read_idx_images",
    "read_idx_labels",
]

# IDX dtype code -> big-endian numpy dtype as stored in the file.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DIM = 2**32 - 1


class IDXFormatError(ValueError):
    """An IDX file is malformed or does not have the expected content."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed) bytes of ``path``."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        # A half-downloaded .gz ends mid-stream (EOFError); bit rot gives
        # zlib.error or a CRC mismatch (BadGzipFile).
        raise IDXFormatError(
            path,
            f"corrupt or truncated gzip stream ({type(err).__name__}: {err}); "
            "delete the file and download it again",
        ) from err


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian, writable array.

    Raises IDXFormatError (naming the file) for any structural problem;
    a missing file raises the usual FileNotFoundError.
    """
    path = Path(path)
    data = _read_bytes(path)

    if len(data) < 4:
        raise IDXFormatError(
            path, f"too short for an IDX header: {len(data)} bytes, need at least 4"
        )
    if data[0] != 0 or data[1] != 0:
        raise IDXFormatError(
            path,
            f"bad magic number: first two bytes are {data[0]:#04x} {data[1]:#04x}, "
            "expected 0x00 0x00 (is this really an IDX file?)",
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"{c:#04x}" for c in IDX_DTYPES)
        raise IDXFormatError(path, f"unknown dtype code {code:#04x} (known codes: {known})")
    if ndim < 1:
        raise IDXFormatError(path, "ndim is 0; an IDX file needs at least one dimension")

    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IDXFormatError(
            path,
            f"truncated header: {ndim} dimensions need {header_len} header bytes, "
            f"file has {len(data)}",
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    # Python ints: a corrupt header with huge dims must not overflow.
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header_len
    if found < expected:
        raise IDXFormatError(
            path,
            f"truncated: expected {expected} bytes of data for shape {dims}, found {found}",
        )
    if found > expected:
        raise IDXFormatError(
            path,
            f"{found - expected} trailing bytes after the data "
            f"(shape {dims} needs exactly {expected} bytes)",
        )

    array = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header_len)
    # astype copies: the result is writable, owns its memory and is native-endian.
    return array.reshape(dims).astype(dtype.newbyteorder("="))


def _idx_code(dtype: np.dtype) -> int | None:
    for code, idx_dtype in IDX_DTYPES.items():
        if dtype.kind == idx_dtype.kind and dtype.itemsize == idx_dtype.itemsize:
            return code
    return None


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compressed if ``path`` ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _idx_code(array.dtype)
    if code is None:
        raise IDXFormatError(
            path,
            f"cannot write dtype {array.dtype} to IDX; convert to one of "
            "uint8, int8, int16, int32, float32, float64",
        )
    if not 1 <= array.ndim <= 255:
        raise IDXFormatError(path, f"IDX needs 1 to 255 dimensions, array has {array.ndim}")
    if any(d > _MAX_DIM for d in array.shape):
        raise IDXFormatError(path, f"dimension sizes must fit in uint32, got {array.shape}")

    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    payload = header + body
    if path.name.endswith(".gz"):
        # mtime=0 makes the output byte-for-byte reproducible.
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def _check_count(path: Path, what: str, count: int, expected_count: int | None) -> None:
    if expected_count is not None and count != expected_count:
        raise IDXFormatError(path, f"expected {expected_count} {what}, file holds {count}")


def read_idx_images(
    path: str | os.PathLike[str],
    expected_count: int | None = None,
    *,
    expected_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read an image file (ubyte, 3-D) and return uint8 of shape (N, rows*cols).

    ``expected_count`` and ``expected_shape`` (rows, cols), when given, are checked.
    """
    path = Path(path)
    array = read_idx(path)
    if array.dtype != np.uint8:
        raise IDXFormatError(
            path, f"image file must hold unsigned bytes (code 0x08), it holds {array.dtype}"
        )
    if array.ndim != 3:
        raise IDXFormatError(
            path,
            f"image file must be 3-D (count, rows, cols), it has shape {array.shape}",
        )
    _check_count(path, "images", array.shape[0], expected_count)
    if expected_shape is not None and tuple(array.shape[1:]) != tuple(expected_shape):
        raise IDXFormatError(
            path,
            f"expected {expected_shape[0]}x{expected_shape[1]} images, "
            f"file holds {array.shape[1]}x{array.shape[2]}",
        )
    return array.reshape(array.shape[0], array.shape[1] * array.shape[2])


def read_idx_labels(path: str | os.PathLike[str], expected_count: int | None = None) -> np.ndarray:
    """Read a label file (ubyte, 1-D) and return its uint8 array of shape (N,)."""
    path = Path(path)
    array = read_idx(path)
    if array.dtype != np.uint8:
        raise IDXFormatError(
            path, f"label file must hold unsigned bytes (code 0x08), it holds {array.dtype}"
        )
    if array.ndim != 1:
        raise IDXFormatError(path, f"label file must be 1-D, it has shape {array.shape}")
    _check_count(path, "labels", array.shape[0], expected_count)
    return array
