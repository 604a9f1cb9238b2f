"""The Numba backend's building blocks: vectorizable exp/log1p, the BCE kernel's gradient,
the flat layout, Adam."""

import inspect
import re

import numpy as np
import pytest
import torch

numba = pytest.importorskip("numba")

from kernels.flat_layout import ALIGN, make_layout  # noqa: E402
from kernels.numba_cpu.fastmath import exp_nonpositive, log1p_unit  # noqa: E402
from vae_ref import VAEConfig, build_model, export_params  # noqa: E402


@numba.njit(error_model="numpy")
def _apply(t):
    e = np.empty_like(t)
    l = np.empty_like(t)
    for i in range(t.size):
        e[i] = exp_nonpositive(t[i])
        l[i] = log1p_unit(e[i])
    return e, l


def test_exp_and_log1p_are_within_a_few_ulps_of_float64():
    t = -np.concatenate([np.linspace(0, 87, 200_001), np.geomspace(1e-12, 1, 1000)])
    e, l = _apply(t.astype(np.float32))
    t32 = t.astype(np.float32).astype(np.float64)  # the input as the kernel saw it
    e64 = np.exp(t32)
    l64 = np.log1p(e)  # log1p of the float32 e the kernel used
    ulp = np.finfo(np.float32).eps
    assert np.max(np.abs(e - e64) / e64) < 2 * ulp
    assert np.max(np.abs(l - l64) / l64) < 4 * ulp


def float_to_int_widths(function, *args) -> set[str]:
    """The integer types that ``function``'s optimized LLVM IR (compiled for ``args``) converts
    floats to: the IR is the same on every CPU, unlike the assembly it becomes."""
    function(*args)
    ir = next(iter(function.inspect_llvm().values()))
    return set(re.findall(r"fpto[su]i [^\n]*? to (?:<\d+ x )?(i\d+)", ir))


def exp_loop(exp):
    @numba.njit(error_model="numpy", fastmath={"contract", "reassoc", "nsz"})
    def loop(t, out):
        for i in range(t.size):
            out[i] = exp(t[i])

    return loop


def test_exp_converts_its_exponent_to_int32_only():
    """An int64 conversion vectorizes, on AVX-512, into a 512-bit instruction inside 256-bit
    loops, which cost the BCE loop a third of its speed on Intel (fastmath.exp_nonpositive);
    checked on the IR, so on any CPU, and shown to catch the int64 form."""
    from kernels.numba_cpu import fastmath

    t, out = np.linspace(-20, 0, 64, dtype=np.float32), np.empty(64, np.float32)
    assert float_to_int_widths(exp_loop(exp_nonpositive), t, out) == {"i32"}

    source = inspect.getsource(fastmath.exp_nonpositive.py_func)
    assert source.count("np.int32(n)") == 1
    namespace = dict(vars(fastmath))
    exec(
        source.replace('@njit(inline="always")\n', "").replace("np.int32(n)", "np.int64(n)"),
        namespace,
    )
    through_int64 = numba.njit(inline="always")(namespace["exp_nonpositive"])
    assert "i64" in float_to_int_widths(exp_loop(through_int64), t, out)


def test_the_bce_kernel_gradient_is_sigmoid_minus_x_at_exactly_zero_logits():
    """1/2 - x at l == 0 (either sign of zero), as the reference's gradient (vae_ref.losses)."""
    from kernels.numba_cpu.fused import sigmoid_bce

    logits = np.array([[0.0, -0.0, 0.0, 1e-30, -1e-30, 3.0]], np.float32)
    x = np.array([[0.0, 0.25, 1.0, 0.25, 0.25, 0.5]], np.float32)
    bce, dlogits = np.zeros(1, np.float32), np.zeros_like(logits)
    sigmoid_bce(logits, x, np.float32(1.0), bce, dlogits, 0, 1)
    expected = 1 / (1 + np.exp(-logits.astype(np.float64))) - x
    np.testing.assert_allclose(dlogits, expected, rtol=1e-6, atol=1e-7)


def test_exp_flushes_only_below_float32_normals():
    e, l = _apply(np.array([-100.0, -1000.0, 0.0], np.float32))
    assert e[2] == 1.0 and l[2] == pytest.approx(np.log(2.0), rel=1e-7)
    assert 0 <= e[0] < 2e-38 and 0 <= e[1] < 2e-38  # exp(-87) and below: ~0
    assert np.all(np.isfinite(l))


@pytest.mark.parametrize("latent, hidden", [(20, 512), (3, 37)])
def test_layout_packs_heads_together_and_aligns_groups(latent, hidden):
    config = VAEConfig(latent_dim=latent, hidden_dim=hidden)
    params = export_params(build_model(config))
    layout = make_layout(config)
    flat = layout.pack(params, config)
    assert layout.offsets["enc.logvar.weight"] == layout.offsets["enc.mu.weight"] + latent * hidden
    assert layout.offsets["enc.logvar.bias"] == layout.offsets["enc.mu.bias"] + latent
    assert all(layout.offsets[n] % ALIGN == 0 for n in ("enc.fc1.weight", "dec.out.weight"))
    back = layout.unpack(flat)
    assert all(np.array_equal(back[n], params[n]) for n in params)
    with pytest.raises(ValueError, match="missing: dec.out.bias"):
        layout.pack({k: v for k, v in params.items() if k != "dec.out.bias"}, config)


def test_layout_refuses_the_autoencoder():
    with pytest.raises(ValueError, match="implement the VAE"):
        make_layout(VAEConfig(model="ae"))


def test_adam_matches_torch_over_many_steps():
    from kernels.numba_cpu.step import adam

    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(4099).astype(np.float32)
    grads = [
        (rng.standard_normal(4099) * 10.0 ** rng.integers(-9, 1)).astype(np.float32)
        for _ in range(30)
    ]
    for g in grads[10:]:
        g[:50] = 0.0  # a dead unit: its moments decay towards denormals
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([tp], lr=3e-4)
    for step, g in enumerate(grads, start=1):
        adam(p, g, m, v, 3e-4, 0.9, 0.999, 1e-8, float(step), None)
        tp.grad = torch.from_numpy(g)
        opt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=0, atol=2e-7)


def test_adam_flushes_decaying_moments_instead_of_making_denormals():
    from kernels.numba_cpu.step import adam

    tiny = np.finfo(np.float32).tiny
    p = np.ones(64, np.float32)
    m = np.full(64, 3 * tiny, np.float32)
    v = np.full(64, 3 * tiny, np.float32)
    zero = np.zeros(64, np.float32)
    for step in range(1, 40):
        adam(p, zero, m, v, 3e-4, 0.9, 0.999, 1e-8, float(step), None)
        assert np.all((m == 0) | (np.abs(m) >= tiny)) and np.all((v == 0) | (v >= tiny))
    assert np.all(m == 0)  # 3 tiny * 0.9^k fell below tiny after ~11 steps


def test_a_gradient_only_gemms_read_is_stored_in_the_precision_they_read():
    """relu_backward_column_sum: float32 in place without copies; with bf16 copies, their
    rounding alone (bf16.store_operand): the float32 array is left as the GEMM wrote it."""
    from kernels.numba_cpu.bf16 import round_into
    from kernels.numba_cpu.fused import relu_backward_column_sum

    rng = np.random.default_rng(3)
    grad = rng.standard_normal((5, 9)).astype(np.float32)
    act = np.maximum(rng.standard_normal((5, 9)), 0).astype(np.float32)
    expected = np.where(act > 0, grad, 0).astype(np.float32)
    sums = np.zeros(9, np.float32)

    in_place = grad.copy()
    relu_backward_column_sum(in_place, act, sums, 2, 7, None)
    np.testing.assert_array_equal(in_place[:, 2:7], expected[:, 2:7])
    np.testing.assert_allclose(sums[2:7], expected[:, 2:7].sum(axis=0), rtol=1e-6)

    untouched, copies, rounded = (
        grad.copy(),
        np.zeros((5, 9), np.uint16),
        np.zeros((5, 9), np.uint16),
    )
    relu_backward_column_sum(untouched, act, sums, 2, 7, copies)
    round_into(expected, rounded)
    np.testing.assert_array_equal(copies[:, 2:7], rounded[:, 2:7])
    np.testing.assert_array_equal(copies[:, [0, 1, 7, 8]], 0)
    np.testing.assert_array_equal(untouched, grad)
