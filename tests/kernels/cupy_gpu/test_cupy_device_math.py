"""device_math.cuh compiled for the host and checked against its NumPy twins
(tests/gpu_verification/philox.py), Philox's published known answers, and a float64 BCE."""

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
from gpu_verification.philox import normal4, normal_noise, philox4x32_10, uniform_open

from kernels.cupy_gpu.launch import SOURCE_DIR as HEADER_DIR

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23
TINY = 1e-38  # below float32's smallest normal: denormal results there lose relative precision

SHIM = r"""
#include <math.h>
#include "device_math.cuh"

extern "C" {
void vkb_bce(const float* l, const float* t, float* loss, float* grad, int n) {
    for (int i = 0; i < n; ++i) loss[i] = bce_with_logits(l[i], t[i], &grad[i]);
}
void vkb_philox(const unsigned int* ctr, unsigned int key0, unsigned int key1,
                unsigned int* out, int n) {
    for (int i = 0; i < n; ++i) {
        Philox4 c;
        for (int k = 0; k < 4; ++k) c.v[k] = ctr[4 * i + k];
        Philox4 r = philox4x32_10(c, key0, key1);
        for (int k = 0; k < 4; ++k) out[4 * i + k] = r.v[k];
    }
}
void vkb_uniform_open(const unsigned int* bits, float* out, int n) {
    for (int i = 0; i < n; ++i) out[i] = uniform_open(bits[i]);
}
void vkb_normal4(unsigned long long seed, unsigned int step, const unsigned int* rows,
                 const unsigned int* chunks, float* out, int n) {
    for (int i = 0; i < n; ++i) normal4(seed, step, rows[i], chunks[i], out + 4 * i);
}
}
"""

# Random123's kat_vectors, philox4x32 with 10 rounds: (counter, key, expected).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF,) * 4,
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def _ptr(array, ctype):
    return array.ctypes.data_as(ctypes.POINTER(ctype))


class HostMath:
    """ctypes wrappers over the shim's array functions."""

    def __init__(self, lib):
        self.lib = lib

    def bce(self, logits, targets):
        l32 = np.ascontiguousarray(logits, dtype=np.float32)
        t32 = np.ascontiguousarray(targets, dtype=np.float32)
        loss, grad = np.empty_like(l32), np.empty_like(l32)
        self.lib.vkb_bce(
            _ptr(l32, ctypes.c_float),
            _ptr(t32, ctypes.c_float),
            _ptr(loss, ctypes.c_float),
            _ptr(grad, ctypes.c_float),
            l32.size,
        )
        return loss, grad

    def philox(self, counters, key0, key1):
        ctr = np.ascontiguousarray(counters, dtype=np.uint32).reshape(-1, 4)
        out = np.empty_like(ctr)
        self.lib.vkb_philox(
            _ptr(ctr, ctypes.c_uint32), key0, key1, _ptr(out, ctypes.c_uint32), len(ctr)
        )
        return out

    def uniform_open(self, bits):
        bits = np.ascontiguousarray(bits, dtype=np.uint32)
        out = np.empty(bits.shape, dtype=np.float32)
        self.lib.vkb_uniform_open(_ptr(bits, ctypes.c_uint32), _ptr(out, ctypes.c_float), bits.size)
        return out

    def normal4(self, seed, step, rows, chunks):
        rows = np.ascontiguousarray(rows, dtype=np.uint32)
        chunks = np.ascontiguousarray(chunks, dtype=np.uint32)
        out = np.empty((rows.size, 4), dtype=np.float32)
        self.lib.vkb_normal4(
            seed,
            step,
            _ptr(rows, ctypes.c_uint32),
            _ptr(chunks, ctypes.c_uint32),
            _ptr(out, ctypes.c_float),
            rows.size,
        )
        return out


@pytest.fixture(scope="session")
def host_math(tmp_path_factory):
    """device_math.cuh built once per session as a host shared library."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++ or c++) on PATH to build device_math.cuh for the host")
    build = tmp_path_factory.mktemp("device_math")
    source, library = build / "shim.cpp", build / "libdevice_math.so"
    source.write_text(SHIM)
    cmd = [cxx, "-O2", "-shared", "-fPIC", "-std=c++17", f"-I{HEADER_DIR}"]
    result = subprocess.run(
        [*cmd, str(source), "-o", str(library)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, f"host build of device_math.cuh failed:\n{result.stderr}"
    lib = ctypes.CDLL(str(library))
    u32, f32p = ctypes.c_uint32, ctypes.POINTER(ctypes.c_float)
    u32p = ctypes.POINTER(u32)
    lib.vkb_bce.argtypes = [f32p, f32p, f32p, f32p, ctypes.c_int]
    lib.vkb_philox.argtypes = [u32p, u32, u32, u32p, ctypes.c_int]
    lib.vkb_uniform_open.argtypes = [u32p, f32p, ctypes.c_int]
    lib.vkb_normal4.argtypes = [ctypes.c_ulonglong, u32, u32p, u32p, f32p, ctypes.c_int]
    for fn in (lib.vkb_bce, lib.vkb_philox, lib.vkb_uniform_open, lib.vkb_normal4):
        fn.restype = None
    return HostMath(lib)


# ---- (a) Philox known answers ---------------------------------------------------------------


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_philox_known_answers_numpy(counter, key, expected):
    got = philox4x32_10(np.array([counter], dtype=np.uint32), *key)
    assert [int(w) for w in got[0]] == list(expected)


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_philox_known_answers_header(host_math, counter, key, expected):
    got = host_math.philox(np.array([counter], dtype=np.uint32), *key)
    assert [int(w) for w in got[0]] == list(expected)


# ---- (b) the header against the NumPy twins -------------------------------------------------


def test_philox_matches_numpy_bitwise(host_math):
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(4096, 4), dtype=np.uint32)
    counters[:4] = [[0, 0, 0, 0], [2**32 - 1] * 4, [1, 0, 0, 0], [0, 0, 0, 2**32 - 1]]
    for key0, key1 in [(0, 0), (2**32 - 1, 2**32 - 1), (0x12345678, 0x9ABCDEF0)]:
        np.testing.assert_array_equal(
            host_math.philox(counters, key0, key1), philox4x32_10(counters, key0, key1)
        )


def test_uniform_open_matches_numpy(host_math):
    rng = np.random.default_rng(1)
    edges = [0, 1, 255, 256, 2**31 - 1, 2**31, 2**31 + 256, 2**32 - 257, 2**32 - 256, 2**32 - 1]
    bits = np.concatenate(
        [np.array(edges, dtype=np.uint32), rng.integers(0, 2**32, 4096, np.uint32)]
    )
    host = host_math.uniform_open(bits)
    np.testing.assert_array_equal(host, uniform_open(bits))
    # The open interval: never 0 (log() in Box-Muller stays finite), never 1 (at the edges).
    assert host.min() > 0 and host.max() < 1
    assert uniform_open(np.array([2**32 - 1], np.uint32))[0] == np.float32(1 - 2.0**-24)


def test_normal4_matches_numpy(host_math):
    rng = np.random.default_rng(2)
    rows = rng.integers(0, 2**32, 2048, dtype=np.uint32)
    chunks = rng.integers(0, 2**32, 2048, dtype=np.uint32)
    rows[:3], chunks[:3] = [0, 4095, 2**32 - 1], [0, 15, 2**32 - 1]
    for seed, step in [(0, 0), (12345, 7), (2**64 - 1, 2**32 - 1), (0xDEADBEEF00C0FFEE, 99)]:
        host = host_math.normal4(seed, step, rows, chunks)
        assert np.isfinite(host).all()
        # Few-ulp libm differences (glibc's logf/cosf/sinf vs correctly rounded float64):
        # rtol 1e-5 is ~80 float32 ulps; atol covers cos/sin near their zeros.
        np.testing.assert_allclose(normal4(seed, step, rows, chunks), host, rtol=1e-5, atol=1e-6)


def test_normal_noise_layout_matches_header(host_math):
    # Row r, column j is normal4(seed, step, r, j // 4)[j % 4]; latent 10 cuts the last chunk.
    seed, step, rows, latent = 2024, 3, 37, 10
    r, j = np.meshgrid(np.arange(rows), np.arange(latent), indexing="ij")
    host = host_math.normal4(seed, step, r.ravel(), (j // 4).ravel())
    expected = host[np.arange(host.shape[0]), (j % 4).ravel()].reshape(rows, latent)
    noise = normal_noise(seed, step, rows, latent)
    assert noise.shape == (rows, latent) and noise.dtype == np.float32
    np.testing.assert_allclose(noise, expected, rtol=1e-5, atol=1e-6)


def _bce_reference(logits, targets):
    """float64 BCE-with-logits and its gradient on the float32 inputs."""
    l64, t64 = logits.astype(np.float64), targets.astype(np.float64)
    loss = np.log1p(np.exp(-np.abs(l64))) + np.maximum(l64, 0.0) - l64 * t64
    with np.errstate(over="ignore"):
        sigmoid = 1.0 / (1.0 + np.exp(-l64))
    return loss, sigmoid - t64, sigmoid


def _bce_cases():
    edge_logits = [0.0, 1e-8, -1e-8, 20.0, -20.0, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4]
    edge_l, edge_t = np.meshgrid(edge_logits, [0.0, 1.0, 0.5], indexing="ij")
    rng = np.random.default_rng(3)
    rand_l = np.concatenate([rng.normal(0, 3, 4000), rng.normal(0, 50, 4000)])
    rand_t = np.concatenate([rng.uniform(0, 1, 4000), rng.integers(0, 2, 4000)])
    logits = np.concatenate([edge_l.ravel(), rand_l]).astype(np.float32)
    targets = np.concatenate([edge_t.ravel(), rand_t]).astype(np.float32)
    return logits, targets


def test_bce_with_logits_matches_float64(host_math):
    logits, targets = _bce_cases()
    loss, grad = host_math.bce(logits, targets)
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    ref_loss, ref_grad, sigmoid = _bce_reference(logits, targets)
    l64, t64 = logits.astype(np.float64), targets.astype(np.float64)
    # Each float32 op and libm call adds ~1 ulp relative to the magnitude of the terms it
    # touches (cancellation in max(l, 0) - l t can make the result itself tiny), so bound the
    # error by 4 eps32 of the terms' sizes, plus TINY for denormal exp(-|l|) at |l| >= 88.
    loss_scale = np.maximum(l64, 0) + np.abs(l64 * t64) + np.log1p(np.exp(-np.abs(l64)))
    loss_err = np.abs(loss - ref_loss)
    assert (loss_err <= 4 * EPS32 * loss_scale + TINY).all(), loss_err.max()
    grad_err = np.abs(grad - ref_grad)
    assert (grad_err <= 4 * EPS32 * (sigmoid + np.abs(t64)) + TINY).all(), grad_err.max()


def test_bce_saturates_cleanly(host_math):
    # Far from zero the float32 loss and gradient are exact: a target-matching logit costs
    # ~0 and a wrong one costs |l|, and the gradient saturates at exactly 0 or +-1.
    logits = np.array([1e4, -1e4, 1e4, -1e4, 100.0, -100.0], dtype=np.float32)
    targets = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    loss, grad = host_math.bce(logits, targets)
    np.testing.assert_array_equal(loss, [0.0, 0.0, 1e4, 1e4, 100.0, 100.0])
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, -1.0, 1.0, -1.0])


# ---- (c) statistics of the batch noise ------------------------------------------------------


@pytest.fixture(scope="module")
def noise():
    return normal_noise(seed=1234, step=5, rows=4096, latent=64)


def test_normal_noise_moments(noise):
    assert noise.shape == (4096, 64) and noise.dtype == np.float32
    assert np.isfinite(noise).all()
    # 262,144 draws: the mean's standard error is ~0.002 and the std's ~0.0014.
    assert abs(float(noise.mean())) < 0.01
    assert abs(float(noise.std()) - 1.0) < 0.01


def test_normal_noise_is_a_function_of_seed_and_step(noise):
    np.testing.assert_array_equal(normal_noise(1234, 5, 4096, 64), noise)
    for other in (normal_noise(1234, 6, 4096, 64), normal_noise(1235, 5, 4096, 64)):
        # Independent draws: essentially no element coincides.
        assert np.mean(other == noise) < 1e-3


def test_normal_noise_looks_independent(noise):
    # Over 4096 rows a correlation's standard error is ~0.016. Columns 0 and 1 share a
    # Box-Muller pair (cos and sin of one angle): dependent, but uncorrelated.
    assert abs(np.corrcoef(noise[:, 0], noise[:, 1])[0, 1]) < 0.05
    assert abs(np.corrcoef(noise[:, 0], noise[:, 4])[0, 1]) < 0.05  # neighbouring chunks
    assert abs(np.corrcoef(noise[:-1, 0], noise[1:, 0])[0, 1]) < 0.05  # neighbouring rows
