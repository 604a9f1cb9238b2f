"""The agreement gate: the compiled CPU backends (Numba, JAX) against the committed fixture and
the live oracle, and the gate's ability to fail (a perturbed gradient, a NaN, a missing
tensor)."""

import functools
from dataclasses import replace

import numpy as np
import pytest

from bench.cli import main
from bench.gate import judge
from kernels import UnknownBackendError, create_backend
from kernels.base import Backend
from vae_ref.fixture import SCHEMA_VERSION, FixtureError, read_fixture, write_fixture
from vae_ref.fixtures import COMMITTED_FIXTURE as FIXTURE
from vae_ref.oracle import build_cases, expectation


def failures(results):
    return [r for r in results if not r.passed]


@pytest.fixture(scope="module")
def images(mnist5k):
    return mnist5k.train_x[:1024]


def available(name: str) -> Backend:
    backend = create_backend(name)
    if not backend.availability().available:
        pytest.skip(backend.availability().reason)
    return backend


@pytest.fixture(scope="module")
def numba_backend():
    return available("numba")


# One backend per module and name: JAX compiles its programs once per shape. Numba's float32
# step in both its forms, whichever this machine's "auto" picks (kernels.numba_cpu.STEP_FORMS):
# the pooled one needs oneMKL (the [bf16] extra; CI installs it).
@pytest.fixture(scope="module", params=["numba-pooled", "numba-serial", "jax"])
def compiled_backend(request):
    if request.param.startswith("numba-"):
        from kernels.numba_cpu import NumbaBackend

        backend = NumbaBackend(step_form=request.param.split("-")[1])
        if not backend.availability().available:
            pytest.skip(backend.availability().reason)
        return backend
    return available(request.param)


def test_compiled_backends_match_the_committed_fixture(compiled_backend):
    pairs = read_fixture(FIXTURE)
    assert {case.name for case, _ in pairs} == {"z20/batch", "z20/adam-steps"}
    for case, expected in pairs:
        results = judge(compiled_backend, case, expected)
        assert len(results) == len(expected.truth)
        assert not failures(results), [r.line() for r in failures(results)]


@pytest.fixture(scope="module")
def live_cases(images):
    """latent -> every gate case at that size with its oracle, computed once for all backends."""
    return functools.cache(
        lambda latent: [(case, expectation(case)) for case in build_cases(images, latent, steps=8)]
    )


@pytest.mark.parametrize("latent", [2, 10, 20, 50])
def test_compiled_backends_match_the_live_oracle_on_every_case(
    compiled_backend, live_cases, latent
):
    pairs = live_cases(latent)
    assert [c.name.split("/")[1] for c, _ in pairs] == [
        "batch",
        "partial-batch",
        "extreme-logits",
        "beta4",
        "adam-steps",
    ]
    for case, expected in pairs:
        results = judge(compiled_backend, case, expected)
        assert not failures(results), [r.line() for r in failures(results)]


class Perturbed:
    """Wraps a backend and damages one output, to prove the gate notices."""

    def __init__(self, inner: Backend, damage):
        self.inner, self.damage = inner, damage
        self.name, self.description = "perturbed", "test double"

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def forward_backward(self, x, eps):
        out = self.inner.forward_backward(x, eps)
        self.damage(out)
        return out


@pytest.fixture(scope="module")
def batch_case(images):
    case = build_cases(images, 10, steps=0)[0]
    return case, expectation(case)


def test_gate_fails_a_gradient_off_by_one_part_in_ten_thousand(numba_backend, batch_case):
    def damage(out):
        out.grads["dec.fc1.weight"] = out.grads["dec.fc1.weight"] * np.float32(1.0001)

    results = judge(Perturbed(numba_backend, damage), *batch_case)
    assert [r.tensor for r in failures(results)] == ["grad.dec.fc1.weight"]
    assert failures(results)[0].fraction > 1


def test_gate_reports_nan_as_nan_with_its_place(numba_backend, batch_case):
    def damage(out):
        out.intermediates["z"][3, 1] = np.nan

    [bad] = failures(judge(Perturbed(numba_backend, damage), *batch_case))
    assert bad.tensor == "z" and "1 non-finite values" in bad.problem and "(3, 1)" in bad.problem
    assert "FAIL" in bad.line()


def test_gate_reports_missing_and_misshapen_tensors(numba_backend, batch_case):
    def damage(out):
        del out.grads["enc.mu.bias"]
        out.intermediates["h"] = out.intermediates["h"][:, :-1]

    bad = {
        r.tensor: r.problem for r in failures(judge(Perturbed(numba_backend, damage), *batch_case))
    }
    assert bad == {
        "h": "shape (128, 511), expected (128, 512)",
        "grad.enc.mu.bias": "missing from the backend's outputs",
    }


def test_fixture_round_trip_and_schema_check(tmp_path, images):
    case = replace(build_cases(images, 2, steps=3)[-1])
    path = tmp_path / "f.npz"
    write_fixture(path, [case], [expectation(case)], dataset="test")
    [(back, expected)] = read_fixture(path)
    assert back.name == case.name and back.steps == 3 and back.config == case.config
    assert all(np.array_equal(back.params[n], case.params[n]) for n in case.params)
    # The stored data rows, re-indexed, give the same batches.
    for k in range(3):
        np.testing.assert_array_equal(
            back.data[back.step_indices[k]], case.data[case.step_indices[k]]
        )
    assert set(expected.truth) >= {"steps.loss", "steps.enc.fc1.weight"}

    import json

    with np.load(path) as archive:
        arrays = dict(archive)
    meta = json.loads(arrays["meta"].tobytes())
    meta["schema_version"] = SCHEMA_VERSION + 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(FixtureError, match="regenerate it with `vae-bench fixture`"):
        read_fixture(tmp_path / "future.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FixtureError, match="not a readable fixture"):
        read_fixture(tmp_path / "junk.npz")
    with pytest.raises(FixtureError, match="no such fixture"):
        read_fixture(tmp_path / "absent.npz")


@pytest.mark.parametrize("name", ["numba", "jax"])
def test_check_command_passes_and_fails_with_exit_status(capsys, name):
    available(name)
    assert main(["check", "--backend", name, "--fixture", str(FIXTURE), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"PASS: {name}" in out and "threads" in out


def test_unknown_backend_lists_the_known_ones(capsys):
    with pytest.raises(UnknownBackendError, match="available: torch, torch-fused-adam"):
        create_backend("cuda-magic")
    assert main(["check", "--backend", "cuda-magic"]) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'cuda-magic'" in err and "numba" in err


# -- ReLU kinks along the K-step trajectory (vae_ref.oracle) ----------------------------------


@pytest.fixture(scope="module")
def z2_adam_steps(mnist5k):
    """The run's gate case at z = 2 (its images, 50 steps) and its truth: on an AVX2 EPYC,
    Numba's float32 switched off a dying encoder unit (pre-activation 3.5e-8 at step 7) that
    float64 and float32 PyTorch kept on, and its fan-in weights drifted 1.4 lr apart."""
    from bench.gate import gate_images

    case = build_cases(gate_images()[0], 2, steps=50)[-1]
    return case, expectation(case)


@pytest.mark.slow
def test_units_near_a_relu_kink_are_left_out_of_the_k_step_case_only(numba_backend, z2_adam_steps):
    case, expected = z2_adam_steps
    unjudged = expected.unjudged
    assert unjudged["steps.enc.fc1.weight"][94].all()  # the unit seen to flip
    for tensor, mask in unjudged.items():
        assert tensor.startswith("steps.") and mask.shape == expected.truth[tensor].shape
        assert mask.mean() < 0.25, (tensor, mask.mean())  # most of every tensor still judged
    assert not failures(judge(numba_backend, case, expected))


# -- Adam's amplified rounding: the K-step calibration from several summation orders ------------


@pytest.mark.slow
def test_the_false_failure_of_numba_at_z10_over_ten_steps_is_gone(capsys):
    """The issue's reproduction (AMD EPYC, Zen 2/3 and Zen 4; seed 0, mnist-5k's first 1,024
    digits): Numba and JAX stood 0.70 lr from the truth in 8 weights of one unit, float32
    PyTorch within 0.01 lr, and the gate failed them at 518%. Calibrated by runs in other
    summation orders, the same command passes wherever they fall. (Every backend, z and K
    of the sweep: tests/bench/test_gate_cross_isa.py.)"""
    assert (
        main(["check", "--backend", "numba", "--latents", "10", "--adam-steps", "10", "--quiet"])
        == 0
    )
    assert "PASS: numba" in capsys.readouterr().out


def test_an_unjudged_element_is_left_out_and_a_judged_one_is_not():
    from bench.gate import compare

    truth = np.zeros((4, 3))
    got = truth.astype(np.float32).copy()
    got[1, 2] = 1.0  # far beyond any tolerance
    mask = np.zeros((4, 3), bool)
    assert not compare("c", "steps.enc.fc1.weight", got, truth, 1e-7, 3e-4, mask).passed
    mask[1] = True
    result = compare("c", "steps.enc.fc1.weight", got, truth, 1e-7, 3e-4, mask)
    assert result.passed and result.unjudged == 3 and "3 near ReLU kinks" in result.line()
    got[0, 0] = np.nan  # never hidden by the mask
    mask[0] = True
    assert (
        "non-finite" in compare("c", "steps.enc.fc1.weight", got, truth, 1e-7, 3e-4, mask).problem
    )
