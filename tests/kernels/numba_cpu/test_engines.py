"""The GEMM engine of Numba's pooled step: which one each CPU gets (kernels/numba_cpu/engines.py),
what the backend says where it cannot run, and oneDNN's path through the gate, right and wrong.

oneDNN's path runs with the real library in float32 on any x86-64 CPU and in bf16 where oneDNN
has a bf16 GEMM (AVX-512: Intel CPUs in CI, AMD Zen 4), and in bf16 on every CPU with its GEMMs
simulated (cpu_verification/simulated_onednn.py, held here to the real ones); each is held to
the gate in a child that asks for the engine (cpu_verification/engine_gate.py), and a mutant of
the binding fails it."""

import json
import subprocess

import numpy as np
import pytest
from conftest import require_onednn, require_onemkl
from cpu_verification.engine_gate import ZEN4_ONEDNN_ISA, child

from bench.cli import main
from kernels import create_backend
from kernels.cpu_features import bf16_dot_hardware, cpu_isa
from kernels.numba_cpu import NumbaBackend, compile_cache, engines, onednn
from kernels.numba_cpu.bf16 import widen

ZEN4 = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"]
SAPPHIRE_RAPIDS = ZEN4 + ["amx_tile", "amx_bf16", "amx_int8"]
ZEN3 = ["sse4_2", "avx", "avx2", "fma"]


@pytest.fixture(autouse=True)
def no_engine_asked(monkeypatch):
    monkeypatch.delenv(engines.ENGINE_VARIABLE, raising=False)


@pytest.mark.parametrize(
    "vendor, flags, bf16_engine",
    [
        ("GenuineIntel", SAPPHIRE_RAPIDS, "onemkl"),
        ("GenuineIntel", ZEN4, "onemkl"),  # Cooper Lake: oneMKL's bf16 on an Intel CPU
        ("AuthenticAMD", ZEN4, "onednn"),
        ("HygonGenuine", ZEN4, "onednn"),
        ("AuthenticAMD", ZEN3, "onemkl"),  # no bf16 hardware: oneMKL's emulation, checks only
        (None, [], "onemkl"),
    ],
)
def test_each_cpu_gets_the_engine_that_runs_its_bf16_hardware(vendor, flags, bf16_engine):
    engine, why = engines.chosen("bf16", vendor, flags)
    assert engine == bf16_engine and why
    assert engines.chosen("float32", vendor, flags)[0] == "onemkl"


def test_the_engine_variable_sets_both_precisions_and_a_wrong_value_is_refused(monkeypatch, capsys):
    monkeypatch.setenv(engines.ENGINE_VARIABLE, "oneDNN")
    for precision in ("float32", "bf16"):
        assert engines.chosen(precision, "GenuineIntel", SAPPHIRE_RAPIDS)[0] == "onednn"
    monkeypatch.setenv(engines.ENGINE_VARIABLE, "openblas")
    with pytest.raises(ValueError, match="is not a GEMM engine: set it to one of onemkl, onednn"):
        engines.chosen("float32")
    for backend in (NumbaBackend(step_form="pooled"), NumbaBackend(precision="bf16")):
        status = backend.availability()
        assert not status.available and "'openblas' is not a GEMM engine" in status.reason
    assert not NumbaBackend(step_form="serial").availability().available  # asked, not ignored
    assert main(["check", "--backend", "numba", "--latents", "2", "--adam-steps", "0"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'openblas' is not a GEMM engine" in err


def test_each_engine_has_its_own_numba_cache():
    """A step compiled for one engine calls its functions by symbol: the other engine's process
    must not load it."""
    mkl = compile_cache.cache_directory(engines="onemkl-onemkl")
    dnnl = compile_cache.cache_directory(engines="onemkl-onednn")
    assert mkl != dnnl and mkl.parent == dnnl.parent
    assert compile_cache.cache_directory().name.endswith(engines.cache_tag())


def on_a_zen4(monkeypatch):
    monkeypatch.setattr("kernels.cpu_features.cpu_isa", lambda: ZEN4)
    monkeypatch.setattr("kernels.cpu_features.cpu_vendor", lambda: "AuthenticAMD")


def test_numba_bf16_on_a_zen4_without_onednn_says_how_to_install_it(monkeypatch):
    on_a_zen4(monkeypatch)
    monkeypatch.setattr(onednn, "library_candidates", lambda: [])
    onednn._library.cache_clear()
    onednn.bf16_problem.cache_clear()
    try:
        status = create_backend("numba-bf16").availability()
    finally:
        onednn._library.cache_clear()
        onednn.bf16_problem.cache_clear()
    assert not status.available
    assert status.reason == "oneDNN is not installed (Debian, Ubuntu: apt-get install libdnnl2)"


def test_numba_bf16_on_a_zen4_runs_where_onednn_does_and_asked_for_onemkl_is_refused(
    monkeypatch,
):
    """With a Zen 4's flags, numba-bf16 is as available as oneDNN's bf16 GEMM is on this very
    CPU (asked of the library: below AVX-512 it answers dnnl_unimplemented). oneMKL, asked for
    there, is refused: on a Zen 4 it left the bf16 hardware unused."""
    require_onednn()
    on_a_zen4(monkeypatch)
    status = create_backend("numba-bf16").availability()
    assert status.available == (onednn.bf16_problem() is None), status.reason
    if not status.available:
        assert "answered dnnl_unimplemented" in status.reason and "AVX-512" in status.reason
    monkeypatch.setenv(engines.ENGINE_VARIABLE, "onemkl")
    refused = create_backend("numba-bf16").availability()
    assert not refused.available
    assert (
        "this is AuthenticAMD's" in refused.reason
        and "unset VAE_BENCH_GEMM_ENGINE" in refused.reason
    )
    assert create_backend("numba").availability().available


def test_onednn_asked_for_below_avx512_refuses_bf16_even_for_checks(monkeypatch):
    """oneMKL emulates bf16 on any x86-64 CPU, so the gate's checks may run its step there
    (allow_emulated); oneDNN has no bf16 GEMM below AVX-512 and would leave each output as it
    was: refused, not run."""
    require_onednn()
    if onednn.bf16_problem() is None:
        pytest.skip("oneDNN runs bf16 GEMMs on this CPU")
    monkeypatch.setenv(engines.ENGINE_VARIABLE, "onednn")
    status = NumbaBackend(precision="bf16", allow_emulated=True).availability()
    assert not status.available and "answered dnnl_unimplemented" in status.reason
    monkeypatch.setenv(engines.ENGINE_VARIABLE, "onemkl")
    require_onemkl()
    assert NumbaBackend(precision="bf16", allow_emulated=True).availability().available


def run_gate(engine: str, precision: str, *options: str, cache=None) -> dict:
    done = subprocess.run(
        **child(engine, precision, *options, cache=cache),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def failures(result: dict) -> dict:
    return {case: tensors for case, tensors in result["failed"].items() if tensors}


@pytest.mark.slow
def test_the_pooled_float32_step_on_onednn_passes_the_gate():
    """oneDNN's dnnl_sgemm, the real one, in the float32 step (any x86-64 CPU): the binding
    the bf16 step shares, but for the operands' type. (Its mutant is the bf16 one's below.)"""
    require_onednn()
    result = run_gate("onednn", "float32")
    assert result["engine"] == "oneDNN dnnl_sgemm"
    assert not failures(result)


@pytest.mark.slow
def test_numba_bf16_on_onednn_passes_the_bf16_gate_and_a_wrong_binding_fails(tmp_path):
    """Where oneDNN has a bf16 GEMM (AVX-512): the engine of an AMD Zen 4, on the real
    instructions where the CPU has AVX512_BF16 (oneDNN's own emulation on AVX-512 without),
    held to a Zen 4's kernel on an Intel CPU with AMX too (engine_gate.ZEN4_ONEDNN_ISA)."""
    require_onednn()
    if not bf16_dot_hardware():
        pytest.skip("no bf16 dot-product hardware: numba-bf16 is refused on this CPU")
    if onednn.bf16_problem():
        pytest.skip(onednn.bf16_problem())
    result = run_gate("onednn", "bf16")
    assert result["engine"] == "oneDNN dnnl_gemm_bf16bf16f32"
    if "avx512_bf16" in (cpu_isa() or []):  # the kernel of a Zen 4, not oneDNN's emulation
        assert result["isa"] == ZEN4_ONEDNN_ISA.lower()
    assert not failures(result)
    mutant = run_gate("onednn", "bf16", "--mutant", cache=tmp_path)
    assert "z10/adam-steps" in failures(mutant)


@pytest.mark.slow
def test_numba_bf16_on_simulated_onednn_passes_the_bf16_gate_and_a_wrong_binding_fails(tmp_path):
    """oneDNN's bf16 path on every CPU: the step compiled for oneDNN, linked to its GEMMs as
    cpu_verification/simulated_onednn.py simulates them (held to the real ones below), with
    the bf16 operands the step writes. Where the real bf16 GEMM runs, the test above gates it."""
    result = run_gate("onednn", "bf16", "--simulated", cache=tmp_path / "simulated")
    assert result["engine"] == "oneDNN dnnl_gemm_bf16bf16f32"
    assert not failures(result)
    mutant = run_gate("onednn", "bf16", "--simulated", "--mutant", cache=tmp_path / "mutant")
    assert "z10/adam-steps" in failures(mutant)


def gemm_cases(rng):
    """Every transpose pair, odd sizes, leading dimensions past the row, alpha and beta not 1
    and 0, and an empty product: (transa, transb, m, n, k, alpha, a, b, beta, c)."""
    for ta in "NT":
        for tb in "nt":
            for m, n, k in ((7, 5, 3), (1, 9, 4), (33, 17, 65), (0, 3, 2)):
                a = rng.standard_normal((k, m + 2) if ta == "T" else (m, k + 2), np.float32)
                b = rng.standard_normal((n, k + 3) if tb == "t" else (k, n + 3), np.float32)
                c = rng.standard_normal((m, n + 1), np.float32)
                yield ta, tb, m, n, k, 0.5, a, b, 0.25, c


def top_half(x: np.ndarray) -> np.ndarray:
    """A float32 array's bf16 truncation, as bits."""
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def call(gemm, ta, tb, m, n, k, alpha, a, b, beta, c) -> tuple[int, np.ndarray]:
    out = c.copy()
    status = gemm(ta.encode(), tb.encode(), m, n, k, alpha, a.ctypes.data, a.shape[1],
                  b.ctypes.data, b.shape[1], beta, out.ctypes.data, out.shape[1])  # fmt: skip
    return status, out


def test_the_simulated_onednn_gemms_are_the_real_ones():
    """cpu_verification/simulated_onednn.py against libdnnl: sgemm here (any x86-64 CPU), the
    bf16 GEMM where oneDNN runs it (AVX-512); both against float64 NumPy of the same operands,
    and the arguments the real one refuses refused alike."""
    import ctypes

    from cpu_verification import simulated_onednn

    require_onednn()
    lib = onednn.library()
    prototype = ctypes.CFUNCTYPE(ctypes.c_int, *lib.dnnl_sgemm.argtypes)
    simulated = {
        "sgemm": prototype(simulated_onednn.sgemm.address),
        "bf16": prototype(simulated_onednn.gemm_bf16bf16f32.address),
    }
    real = {"sgemm": lib.dnnl_sgemm, "bf16": lib.dnnl_gemm_bf16bf16f32}
    real_bf16 = onednn.bf16_problem() is None
    for ta, tb, m, n, k, alpha, a32, b32, beta, c in gemm_cases(np.random.default_rng(0)):
        for kind in ("sgemm", "bf16"):
            # bf16 operands: the top halves of the float32 ones; their values, widened.
            a, b = (a32, b32) if kind == "sgemm" else (top_half(a32), top_half(b32))
            wa, wb = (a32, b32) if kind == "sgemm" else (widen(a), widen(b))
            op_a = wa.T[:m, :k] if ta == "T" else wa[:m, :k]
            op_b = wb.T[:k, :n] if tb == "t" else wb[:k, :n]
            truth = alpha * (op_a.astype(np.float64) @ op_b) + beta * c[:, :n]
            status, out = call(simulated[kind], ta, tb, m, n, k, alpha, a, b, beta, c)
            assert status == 0
            assert np.allclose(out[:, :n], truth, rtol=1e-5, atol=1e-4), (kind, ta, tb, m, n, k)
            assert np.array_equal(out[:, n:], c[:, n:])  # past the row: untouched
            if kind == "sgemm" or real_bf16:
                real_status, real_out = call(real[kind], ta, tb, m, n, k, alpha, a, b, beta, c)
                assert real_status == 0
                assert np.allclose(out, real_out, rtol=1e-5, atol=1e-5), (kind, ta, tb, m, n, k)
    square = np.ones((4, 4), np.float32)
    for bad in ((b"X", b"N", 4, 4, 4), (b"N", b"N", 4, 4, 8), (b"N", b"N", -1, 4, 4)):
        for gemm in (simulated["sgemm"], real["sgemm"]):
            status = gemm(*bad, 1.0, square.ctypes.data, 4, square.ctypes.data, 4, 0.0,
                          square.ctypes.data, 4)  # fmt: skip
            assert status == simulated_onednn.INVALID_ARGUMENTS, bad
