"""The K-step case's calibration (``vae_ref.summation_orders``, ``vae_ref.oracle``): a
relabelled case is the same problem (the float64 reference lands on the same parameters, under
the original labels), computed in float32 with every sum in another order (other bits), and
the calibration is the largest error of those runs."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from vae_ref.config import VAEConfig
from vae_ref.model import build_model
from vae_ref.oracle import build_cases, calibrations, expectation, max_error, outputs
from vae_ref.params import export_params, parameter_shapes
from vae_ref.summation_orders import PARAMETER_AXES, Relabelling

K = 3


@pytest.fixture(scope="module", params=["vae", "ae"])
def k_step_case(request, gate_digits):
    case = build_cases(gate_digits, 10, steps=K)[-1]
    assert case.steps == K
    if request.param == "ae":
        config = case.config.replace(model="ae")
        case = replace(case, config=config, params=export_params(build_model(config)))
    return case


def test_every_parameter_has_its_axes_labelled():
    for model in ("vae", "ae"):
        for name, shape in parameter_shapes(VAEConfig(model=model)).items():
            assert len(PARAMETER_AXES[name]) == len(shape), name


def relabelled_run(case, dtype, seed=0):
    relabelling = Relabelling(case, np.random.default_rng(seed))
    return relabelling.restore(outputs(relabelling.case(case), dtype))


def test_a_relabelled_case_is_the_same_problem_in_float64(k_step_case):
    truth = outputs(k_step_case, torch.float64)
    relabelled = relabelled_run(k_step_case, torch.float64)
    assert relabelled.keys() == truth.keys()
    for tensor, value in truth.items():
        # float64 rounding of sums in another order, cast to float32: at most an ulp apart
        np.testing.assert_allclose(relabelled[tensor], value, rtol=2e-7, atol=1e-12, err_msg=tensor)


def test_a_wrongly_relabelled_parameter_is_another_problem(k_step_case, monkeypatch):
    """The check above can fail: the decoder's output weight permuted along its pixel axis
    by the hidden units' order is not the same network."""
    monkeypatch.setitem(PARAMETER_AXES, "dec.out.weight", ("pixel", "enc_hidden"))
    truth = outputs(k_step_case, torch.float64)
    relabelled = relabelled_run(k_step_case, torch.float64)
    assert max_error(relabelled["steps.dec.out.weight"], truth["steps.dec.out.weight"]) > 1e-4


def test_a_relabelled_float32_run_adds_its_sums_in_another_order(k_step_case):
    plain = outputs(k_step_case, torch.float32)
    relabelled = relabelled_run(k_step_case, torch.float32)
    differ = [t for t in plain if not np.array_equal(plain[t], relabelled[t])]
    assert "steps.enc.fc1.weight" in differ and len(differ) > len(plain) / 2, differ


def test_the_k_step_calibration_is_the_largest_error_of_its_runs(k_step_case):
    truth = outputs(k_step_case, torch.float64)
    runs = calibrations(k_step_case, runs=3)
    assert len(runs) == 3
    np.testing.assert_array_equal(
        runs[0]["steps.enc.fc1.weight"], outputs(k_step_case, torch.float32)["steps.enc.fc1.weight"]
    )
    expected = expectation(k_step_case, runs=3)
    for tensor, value in truth.items():
        judged = ~expected.unjudged[tensor] if tensor in expected.unjudged else ...
        errors = [max_error(run[tensor][judged], value[judged]) for run in runs]
        assert expected.reference_errors[tensor] == max(errors), tensor
    # one run is the old calibration, and never larger
    single = expectation(k_step_case, runs=1)
    assert all(single.reference_errors[t] <= expected.reference_errors[t] for t in truth)


def test_a_single_step_case_keeps_one_calibration(gate_digits):
    case = build_cases(gate_digits, 10, steps=0)[0]
    assert len(calibrations(case, runs=8)) == 1
    with pytest.raises(ValueError, match="K-step"):
        Relabelling(case, np.random.default_rng(0)).case(case)
