"""The numbers hold on another CPU: with torch's MKL held below this machine's instruction set
(another CPU's float32 rounding, on this one), the float32 calibration stays within the band
of the committed fixture's and every CPU backend still passes the gate calibrated there."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpu_verification.calibration import outside_band
from cpu_verification.restricted_isa import FIXTURE, cpu_flags, gemm_digest, restrictions
from vae_ref.fixture import read_fixture

TESTS = Path(__file__).resolve().parent


def child(args: list[str], restriction: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **restriction,
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "cpu_verification.restricted_isa", *args],
                          env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def restriction() -> dict[str, str]:
    """The first restriction that changes float32 PyTorch's bits here."""
    native = gemm_digest()
    tried = []
    for candidate in restrictions(cpu_flags()):
        digest = child(["--digest"], candidate).stdout.strip()
        if digest and digest != native:
            return candidate
        tried.append(candidate)
    pytest.fail(f"none of {tried} changed float32 PyTorch's GEMM bits on this CPU: nothing "
                "here stands for another CPU; add a restriction to restricted_isa.restrictions")


def test_a_restriction_changes_the_bits_it_claims_to(restriction):
    # Without this the cross-ISA test below would compare this CPU with itself.
    assert child(["--digest"], restriction).stdout.strip() != gemm_digest()


@pytest.mark.slow
def test_calibration_and_every_cpu_gate_hold_below_this_cpus_instruction_set(restriction,
                                                                           tmp_path):
    out = tmp_path / "restricted.json"
    result = child([str(out)], restriction)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(out.read_text())
    for case, expected in read_fixture(FIXTURE):
        assert not outside_band(expected, measured["calibration"][case.name]), \
            (restriction, case.name)
    gate = measured["gate"]
    assert {"torch", "torch-fused-adam", "torch-compile", "numba"} <= gate.keys(), gate.keys()
    failed = {name: r for name, r in gate.items() if r["verdict"] != "pass"}
    assert not failed, (restriction, failed)
