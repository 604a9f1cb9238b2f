"""The reference owns the truth: its oracle, run today on any CPU, reproduces the committed
fixture: the float64 truth exactly, the float32 calibration within the band that
``bench.gate.tolerances`` states (a measurement of the machine, not a constant)."""

import numpy as np
import pytest
from cpu_verification.calibration import outside_band

from bench.gate import gate_images
from bench.gate.tolerances import EPS32
from vae_ref.fixture import read_fixture
from vae_ref.fixtures import COMMITTED_FIXTURE as FIXTURE
from vae_ref.oracle import build_cases, expectation


@pytest.fixture(scope="module")
def stored_and_live():
    stored = {case.name: (case, expected) for case, expected in read_fixture(FIXTURE)}
    live = {c.name: c for c in build_cases(gate_images()[0], 20, steps=50)}
    return [
        (case, expected, live[name], expectation(live[name]))
        for name, (case, expected) in stored.items()
    ]


def test_oracle_reproduces_the_committed_fixture(stored_and_live):
    for case, expected, now, truth in stored_and_live:
        np.testing.assert_array_equal(now.x, case.x)
        np.testing.assert_array_equal(now.eps, case.eps)
        for n, p in case.params.items():
            np.testing.assert_array_equal(now.params[n], p)
        assert truth.truth.keys() == expected.truth.keys()
        for tensor, value in expected.truth.items():
            # Stored rounded to float32; the float64 truth rounds to exactly those values.
            np.testing.assert_array_equal(
                truth.truth[tensor].astype(np.float32), value, err_msg=f"{case.name} {tensor}"
            )
        # The calibration is float32 PyTorch measured on this CPU: within the band, not bits.
        assert truth.reference_errors.keys() == expected.reference_errors.keys()
        assert not outside_band(expected, truth.reference_errors), case.name


def test_the_band_catches_a_calibration_that_is_not_float32s(stored_and_live):
    """Mutations of the calibration: three times too large, or run in float64 (no error at
    all). The first is out of the band on every single-step tensor whose error is more than
    one rounding, the second on some of them."""
    _, expected, _, truth = next(s for s in stored_and_live if s[0].name == "z20/batch")
    measurable = {
        k
        for k, v in expected.reference_errors.items()
        if v > EPS32 * np.max(np.abs(expected.truth[k]))
    }
    assert len(measurable) >= 10  # else the band would judge nothing
    inflated = {k: 3 * v for k, v in truth.reference_errors.items()}
    assert {line.split(":")[0] for line in outside_band(expected, inflated)} >= measurable
    exact = dict.fromkeys(truth.reference_errors, 0.0)
    assert outside_band(expected, exact)
