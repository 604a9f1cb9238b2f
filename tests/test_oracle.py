"""The reference owns the truth: its oracle, run today, reproduces the committed fixture."""

from pathlib import Path

import numpy as np

from vae_ref.digits import gate_images
from vae_ref.fixture import read_fixture
from vae_ref.oracle import build_cases, expectation

FIXTURE = Path(__file__).parent / "fixtures" / "reference_z20.npz"


def test_oracle_reproduces_the_committed_fixture():
    stored = {case.name: (case, expected) for case, expected in read_fixture(FIXTURE)}
    live = {c.name: c for c in build_cases(gate_images()[0], 20, steps=50)}
    for name, (case, expected) in stored.items():
        now = live[name]
        np.testing.assert_array_equal(now.x, case.x)
        np.testing.assert_array_equal(now.eps, case.eps)
        for n, p in case.params.items():
            np.testing.assert_array_equal(now.params[n], p)
        truth = expectation(now)
        assert truth.truth.keys() == expected.truth.keys()
        for tensor, value in expected.truth.items():
            # Stored rounded to float32; the float64 truth rounds to exactly those values.
            np.testing.assert_array_equal(truth.truth[tensor].astype(np.float32), value,
                                          err_msg=f"{name} {tensor}")
        assert truth.reference_errors == expected.reference_errors
