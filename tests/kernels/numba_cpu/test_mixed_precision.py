"""The mixed-precision modes: their roundings (bf16, and TF32 for cuBLAS's Tensor Cores), the
reference they are held to, the Numba step that runs bf16 (oneMKL's bf16 GEMM, called from
compiled code) and its gate, which a wrong bf16 step fails.

The Numba tests need oneMKL (the ``[bf16]`` extra; CI installs it and sets
VAE_BENCH_REQUIRE_BF16=1, so there they may not skip). On a CPU without bf16 dot-product
hardware they run oneMKL's emulated path (``allow_emulated``): the numbers are the same,
only the speed is not, and the harness itself refuses to time it."""

import numpy as np
import pytest
import torch
from conftest import require_onednn, require_onemkl

from bench.cli import main
from bench.gate import judge
from kernels import create_backend
from kernels.base import gemm_inputs_of
from kernels.cpu_features import bf16_dot_hardware
from kernels.numba_cpu import NumbaBackend, engines, onemkl
from kernels.numba_cpu.bf16 import round_into, widen
from vae_ref import VAEConfig
from vae_ref.fixtures import COMMITTED_FIXTURE
from vae_ref.mixed_precision import (
    GEMM_INPUT_ROUNDINGS,
    round_to_bf16,
    round_to_tf32,
    with_gemm_inputs,
)
from vae_ref.model import build_model
from vae_ref.oracle import build_cases, expectation
from vae_ref.params import export_params


def numba_bf16(cls=NumbaBackend) -> NumbaBackend:
    """The bf16 step on this CPU's engine (engines.py), emulated where the CPU has no bf16
    hardware."""
    require_onemkl()
    backend = cls(precision="bf16", allow_emulated=True)
    if backend.engine == "onednn":
        require_onednn()
    return backend


# -- rounding ---------------------------------------------------------------------------------


def special_floats() -> np.ndarray:
    """Every kind of float32 a rounding can get wrong: ties (even and odd kept halves), just
    above and below a tie, the largest finite values (which round to inf), subnormals, zeros
    of both signs, infinities, NaNs with payloads."""
    bits = [
        0x3F808000,
        0x3F818000,
        0x3F808001,
        0x3F807FFF,
        0x7F7FFFFF,
        0x7F7F8000,
        0x7F7F7FFF,
        0x00000001,
        0x00008000,
        0x00018000,
        0x80000000,
        0x00000000,
        0x7F800000,
        0xFF800000,
        0x7FC00001,
        0x7FFFFFFF,
        0xFFFFFFFF,
        0x7F800001,
        0x3F7FFFFF,
        0xBF808000,
    ]
    return np.array(bits, np.uint32).view(np.float32)


def test_bf16_rounding_is_torchs_bit_for_bit():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            special_floats(),
            rng.standard_normal(100_000).astype(np.float32)
            * np.float32(10.0) ** rng.integers(-40, 38, 100_000).astype(np.float32),
            rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        ]
    )
    ours = np.empty(values.shape, np.uint16)
    with np.errstate(over="ignore"):
        round_into(values, ours)
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(ours[finite], theirs[finite])
    # NaNs stay NaNs (their payload would carry into the sign bit if rounded as numbers).
    assert np.isnan(widen(ours[~finite])).all()
    # ... and the reference's rounding is the same conversion.
    np.testing.assert_array_equal(
        widen(ours[finite]), round_to_bf16(torch.from_numpy(values[finite])).numpy()
    )


def test_the_rounding_check_can_fail():
    """Truncation (dropping the low half, a common shortcut) differs from round-to-nearest-even
    on ties and above them: the comparison above would catch it."""
    values = special_floats()[:4]
    truncated = (values.view(np.uint32) >> 16).astype(np.uint16)
    ours = np.empty(values.shape, np.uint16)
    round_into(values, ours)
    assert (truncated != ours).any()


def test_tf32_rounding_keeps_the_first_10_mantissa_bits():
    """What the Tensor Cores read of a float32 operand (vae_ref/mixed_precision.py): the sign,
    the exponent and the first 10 mantissa bits, the other 13 dropped (toward zero)."""
    rng = np.random.default_rng(0)
    values = np.concatenate([special_floats(), rng.standard_normal(10_000).astype(np.float32)])
    ours = round_to_tf32(torch.from_numpy(values)).numpy()
    expected = (values.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(ours[finite], expected[finite])
    assert np.isnan(ours[~finite]).all()
    # Within TF32's truncation bound (2^-10 relative), and farther than float32's.
    normal = np.isfinite(values) & (np.abs(values) > 1e-30)
    relative = np.abs(ours[normal] - values[normal]) / np.abs(values[normal])
    assert relative.max() < 2.0**-10 and relative.max() > 2.0**-12
    # Kept in a wider dtype, as round_to_bf16.
    assert round_to_tf32(torch.ones(3, dtype=torch.float64)).dtype == torch.float64


def test_the_tf32_rounding_check_can_fail():
    """Rounding to nearest (cvt.rna.tf32.f32's, a plausible alternative) differs from the
    truncation on a value whose first dropped bit is set: the comparison above catches it."""
    value = np.array([0x3F801000], np.uint32).view(np.float32)  # 1 + 2^-11: half a TF32 ulp
    nearest = (value.view(np.uint32) + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    assert (round_to_tf32(torch.from_numpy(value)).numpy().view(np.uint32) != nearest).all()


# -- the reference with narrow GEMM inputs ----------------------------------------------------


@pytest.mark.parametrize("gemm_inputs", sorted(GEMM_INPUT_ROUNDINGS))
def test_the_mixed_precision_reference_rounds_the_gemm_operands_only(gemm_inputs):
    """Forward: y = r(x) r(W)^T + b; backward: dx = r(dy) r(W), dW = r(dy)^T r(x),
    db = sum(dy) from the unrounded dy; the outputs are not rounded (as oneMKL's
    cblas_gemm_bf16bf16f32 and cuBLAS's TF32 GEMM, unlike autocast)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(40, 24, dtype=torch.float64)
    plain = torch.nn.Linear(40, 24, dtype=torch.float64)
    plain.load_state_dict(layer.state_dict())
    with_gemm_inputs(torch.nn.Sequential(layer), gemm_inputs)
    x = torch.randn(16, 40, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(16, 24, dtype=torch.float64)
    y = layer(x)
    y.backward(dy)
    r = GEMM_INPUT_ROUNDINGS[gemm_inputs]
    torch.testing.assert_close(y, r(x) @ r(layer.weight).T + layer.bias, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, r(dy) @ r(layer.weight), rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, r(dy).T @ r(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, dy.sum(0), rtol=0, atol=1e-12)
    # It is a different function from the float one (the test above could not pass for it).
    assert (plain(x) - y).abs().max() > 1e-5
    # The state dict, and so the fixture and the parameter names, are unchanged.
    assert layer.state_dict().keys() == plain.state_dict().keys()
    with pytest.raises(ValueError, match="gemm_inputs must be one of"):
        with_gemm_inputs(torch.nn.Sequential(plain), "fp8")


def test_the_narrow_calibrations_are_looser_than_float32_and_share_the_truth(gate_digits):
    case = build_cases(gate_digits, 2, steps=2)[0]
    float32 = expectation(case)
    bf16 = expectation(case, "bf16", truth=float32)
    tf32 = expectation(case, "tf32", truth=float32)
    assert bf16.truth is float32.truth and tf32.truth is float32.truth
    # bf16 operands carry 8 significant bits and TF32's 11 against float32's 24: errors
    # ~2^16 and ~2^13 times larger in the GEMM-fed tensors; bf16's the larger, though by
    # less than 8x: TF32's truncation errs one way, so its errors add up over a sum.
    for name in ("h", "logits", "grad.enc.fc1.weight", "grad.dec.out.weight"):
        assert tf32.reference_errors[name] > 100 * float32.reference_errors[name], name
        assert bf16.reference_errors[name] > tf32.reference_errors[name], name
    with pytest.raises(ValueError, match="gemm_inputs must be one of"):
        expectation(case, "fp8", truth=float32)


# -- the Numba bf16 step ----------------------------------------------------------------------


def test_bf16_unavailable_without_bf16_hardware_says_why(monkeypatch):
    monkeypatch.delenv(engines.ENGINE_VARIABLE, raising=False)
    reason = engines.bf16_unavailable_reason(flags=["sse4_2", "avx", "avx2", "fma", "avx512f"])
    assert reason and "no bf16 dot-product hardware" in reason and "emulated" in reason
    assert bf16_dot_hardware(["avx512f", "amx_bf16"]) == ["amx_bf16"]
    assert bf16_dot_hardware([]) == []
    # With the hardware, on an Intel CPU, what is left to say is only about the library.
    intel = engines.bf16_unavailable_reason(flags=["amx_bf16"], vendor="GenuineIntel")
    assert intel == onemkl.library_problem()
    assert engines.bf16_unavailable_reason(flags=["avx512_bf16"], vendor="GenuineIntel") == intel


@pytest.mark.parametrize("vendor", ["AuthenticAMD", ""])
def test_numba_bf16_is_refused_where_onemkl_leaves_the_bf16_hardware_unused(monkeypatch, vendor):
    """An AMD Zen 4 has AVX512_BF16, but oneMKL's bf16 GEMMs gained nothing there: numba-bf16
    on oneMKL would be timed slower than numba, so, asked for, it is refused with the reason
    (the CPU's own engine there is oneDNN, tests/kernels/numba_cpu/test_engines.py); the peers
    whose engines use the hardware (jax-bf16: XNNPACK) are not refused for it, and the gate's
    checks may still run the step (allow_emulated)."""
    zen4 = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16"]
    monkeypatch.setattr("kernels.cpu_features.cpu_isa", lambda: zen4)
    monkeypatch.setattr("kernels.cpu_features.cpu_vendor", lambda: vendor or None)
    monkeypatch.setenv(engines.ENGINE_VARIABLE, "onemkl")
    status = create_backend("numba-bf16").availability()
    assert not status.available
    assert f"this is {vendor or 'an unknown vendor'}'s" in status.reason
    assert "gain on float32 on GenuineIntel CPUs only" in status.reason
    assert create_backend("numba").availability().available
    assert "oneMKL" not in (create_backend("jax-bf16").availability().reason or "")
    if onemkl.library_problem() is None:
        checked = NumbaBackend(precision="bf16", allow_emulated=True)
        assert checked.availability().available
        assert checked.settings()["bf16_emulated"] is True
    monkeypatch.setattr("kernels.cpu_features.cpu_vendor", lambda: "GenuineIntel")
    intel = create_backend("numba-bf16").availability()
    assert intel.available == (onemkl.library_problem() is None), intel.reason


@pytest.mark.parametrize("name", ["numba-bf16", "torch-bf16", "torch-compile-bf16", "jax-bf16"])
def test_bf16_backends_are_refused_on_a_cpu_without_bf16_hardware(monkeypatch, name):
    monkeypatch.setattr("kernels.cpu_features.cpu_isa", lambda: ["sse4_2", "avx2", "avx512f"])
    status = create_backend(name).availability()
    assert not status.available and "no bf16 dot-product hardware" in status.reason
    # The float32 backends do not depend on it.
    assert create_backend(name.removesuffix("-bf16")).availability().available


def test_numba_bf16_names_its_precision_and_engine():
    backend = numba_bf16()
    assert backend.name == "numba-bf16" and gemm_inputs_of(backend) == "bf16"
    assert gemm_inputs_of(create_backend("numba")) == "float32"
    config = VAEConfig(latent_dim=2, hidden_dim=16)
    backend.load(config, export_params(build_model(config)))
    settings = backend.settings()
    assert settings["precision"] == "bf16"
    assert settings["gemm_engine"] == engines.module(backend.engine).engine_for("bf16")
    assert settings["gemm_engine"].endswith("gemm_bf16bf16f32")
    assert settings["gemm_version"].count(".") == 2 and settings["gemm_isa"]
    # Emulated: no bf16 hardware, or an engine that cannot use it here.
    assert settings["bf16_emulated"] == (engines.bf16_unavailable_reason() is not None)
    assert settings["bf16_emulated"] == (
        not bf16_dot_hardware() or bool(engines.bf16_problem(backend.engine))
    )
    blocks = settings["adam_gradients"].startswith("blocks of 128 rows")
    assert blocks == engines.packs_b(backend.engine)


@pytest.fixture(scope="module")
def bf16_cases(gate_digits):
    """The gate's cases at z = 10 (5 Adam steps), calibrated for bf16 GEMM inputs."""
    pairs = {}
    for c in build_cases(gate_digits, 10, steps=5):
        truth = expectation(c)
        pairs[c.name.split("/")[1]] = (c, expectation(c, "bf16", truth=truth), truth)
    return pairs


def failed_tensors(backend, case, expected) -> set[str]:
    return {r.tensor for r in judge(backend, case, expected) if not r.passed}


@pytest.mark.slow
def test_numba_bf16_passes_the_bf16_gate_and_not_the_float32_one(bf16_cases):
    backend = numba_bf16()
    for name, (case, bf16, _) in bf16_cases.items():
        assert not failed_tensors(backend, case, bf16), name
    # Held to float32's calibration it fails: the bf16 gate is not passed by being loose
    # about what is checked, but by its tolerances coming from the same rule for bf16.
    case, _, float32 = bf16_cases["batch"]
    assert len(failed_tensors(backend, case, float32)) > 5


class StaleBf16Weights(NumbaBackend):
    """A wrong bf16 step: Adam updates the float32 masters but the GEMMs keep using the bf16
    weights of before (the copy the step should refresh as it updates)."""

    def train_step(self, data, indices, eps=None, *, want_loss=True):
        before = self.flat16.copy()
        out = super().train_step(data, indices, eps, want_loss=want_loss)
        self.flat16[:] = before
        return out


@pytest.mark.slow
def test_the_bf16_gate_fails_a_step_with_stale_bf16_weights(bf16_cases):
    case, bf16, _ = bf16_cases["adam-steps"]
    assert failed_tensors(numba_bf16(StaleBf16Weights), case, bf16)
    case, bf16, _ = bf16_cases["batch"]
    assert not failed_tensors(numba_bf16(StaleBf16Weights), case, bf16)  # one step is right


def test_numba_bf16_is_checked_against_the_live_oracle_not_the_fixture(capsys):
    if engines.bf16_unavailable_reason():
        pytest.skip(engines.bf16_unavailable_reason())
    assert main(["check", "--backend", "numba-bf16", "--fixture", str(COMMITTED_FIXTURE)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "float32 calibrations only" in err


# -- the JAX bf16 program ---------------------------------------------------------------------


def jax_bf16():
    backend = create_backend("jax-bf16")
    if not backend.availability().available:
        pytest.skip(backend.availability().reason)
    return backend


@pytest.mark.slow
def test_jax_bf16_passes_the_bf16_gate(bf16_cases):
    backend = jax_bf16()
    assert gemm_inputs_of(backend) == "bf16"
    for name, (case, bf16, _) in bf16_cases.items():
        assert not failed_tensors(backend, case, bf16), name


def test_the_bf16_gate_fails_a_jax_program_that_rounds_its_layer_outputs(monkeypatch, bf16_cases):
    """Rounding each linear layer's output to bf16 too (what autocast does: its matmul and
    bias add return bf16) loses the extreme logits' low bits, the loss and the output bias's gradient with them: the same
    program with that one change fails."""
    backend = jax_bf16()
    import jax.numpy as jnp

    from kernels.jax_xla import step

    real = step._linear
    monkeypatch.setattr(
        step, "_linear", lambda *args: real(*args).astype(jnp.bfloat16).astype(jnp.float32)
    )
    # New jitted functions: the old ones' trace caches hold the unmutated programs.
    monkeypatch.setitem(step.PROGRAMS, "bf16", step._programs("bf16"))
    case, bf16, _ = bf16_cases["extreme-logits"]
    bad = failed_tensors(backend, case, bf16)
    assert {"logits", "loss", "grad.dec.out.bias"} <= bad, bad


# -- PyTorch autocast, the peer a user would pick -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch-bf16"])
def test_torch_autocast_fails_the_bf16_gate_on_the_extreme_logits(bf16_cases, name):
    """Autocast computes each linear layer in bf16 and returns bf16 (its output and the bias
    add rounded too, aten/src/ATen/autocast_mode.cpp), so logits of +-100 come back 0.25 off
    and the BCE with them: it is timed only with --include-failed, marked ungated. (Why the cross-ISA
    test leaves it out: cpu_verification.restricted_isa.FAIL_ON_EVERY_CPU.)"""
    backend = create_backend(name)
    if not backend.availability().available:
        pytest.skip(backend.availability().reason)
    case, bf16, _ = bf16_cases["extreme-logits"]
    assert {"logits", "loss"} <= failed_tensors(backend, case, bf16)


# -- cupy-tf32 on the simulated CuPy ----------------------------------------------------------


def test_cupy_tf32_is_gated_by_the_tf32_calibration(monkeypatch, gate_digits):
    """cupy-tf32's GEMMs read TF32 operands (the simulated cublasGemmEx, as cuBLAS's
    CUBLAS_COMPUTE_32F_FAST_TF32 computes): float32's tolerances fail it (as they would fail
    it on every GPU), the TF32 calibration's pass it, and a TF32 step with the hidden layers'
    bias left out still fails the TF32 calibration."""
    from gpu_verification import fake_cupy, twins

    fake_cupy.install(monkeypatch)
    assert gemm_inputs_of(create_backend("cupy-tf32")) == "tf32"
    assert gemm_inputs_of(create_backend("cupy")) == "float32"
    cases = build_cases(gate_digits, 4, steps=2)
    float32 = [expectation(case) for case in cases]
    tf32 = [expectation(case, "tf32", truth=e) for case, e in zip(cases, float32)]

    def failed(expected) -> list[str]:
        backend = create_backend("cupy-tf32")  # a fresh one: its graphs record the kernels
        return [
            r.line()
            for case, e in zip(cases, expected)
            for r in judge(backend, case, e)
            if not r.passed
        ]

    assert failed(float32)
    assert not failed(tf32)
    bias_relu = twins.KERNELS["bias_relu"]
    monkeypatch.setitem(
        twins.KERNELS,
        "bias_relu",
        lambda g, a, bias, rows, cols: bias_relu(g, a, np.zeros_like(bias), rows, cols),
    )
    assert failed(tf32)
