"""cpu_verification.gemm_engines, the engine comparison behind issue 42's choice of GEMM
engine per CPU: every engine that loads multiplies correctly at the step's shapes (its error
column shows a wrong one), and one that cannot run here is listed with its reason."""

import numpy as np
import pytest
from cpu_verification import gemm_engines

from bench.throughput import step_flops
from vae_ref import VAEConfig


@pytest.mark.parametrize("batch", [8, 128, 1024])
def test_its_shapes_are_the_steps_gemms(batch):
    """The harness counts the step's FLOPs once (bench.throughput.step_flops, itself checked
    against PyTorch's counter); the engines' 11 shapes must multiply to the same count."""
    flops = sum(2 * m * k * n for m, k, n in gemm_engines.step_shapes(batch))
    assert flops == step_flops(VAEConfig(latent_dim=20), batch)


def parse(lines):
    timed, refused = {}, {}
    for line in lines:
        words = line.split()
        if "not run:" in line:
            refused[words[2]] = line.split("not run: ", 1)[1]
        else:
            timed[words[2]] = float(words[-1])
    return timed, refused


def test_each_engine_that_runs_is_right_and_each_other_says_why():
    timed, refused = parse(gemm_engines.compare(batch=8, repeats=1))
    assert timed["openblas"] < 1e-3
    assert set(timed) | set(refused) == {
        "openblas", "onemkl", "onemkl-bf16", "onednn", "onednn-bf16"
    }  # fmt: skip
    for name, error in timed.items():
        # bf16 inputs truncate 16 bits of the float32 operands: about 1e-2 of a product's size
        assert error < (2.0 if name.endswith("bf16") else 1e-3), (name, error)
    assert all(refused.values())


def test_a_wrong_engine_shows_in_its_error(monkeypatch):
    ready, missing = gemm_engines.engines()

    def transposed_left(ops):
        for _m, _k, _n, a, b, c, _a16, _b16 in ops:
            c[...] = np.flip(a, axis=0) @ b  # rows of the output swapped: a wrong GEMM

    monkeypatch.setattr(
        gemm_engines, "engines", lambda: ({**ready, "wrong": transposed_left}, missing)
    )
    timed, _ = parse(gemm_engines.compare(batch=8, repeats=1))
    assert timed["wrong"] > 1.0 and timed["openblas"] < 1e-3
