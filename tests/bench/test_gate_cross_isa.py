"""The numbers hold on another CPU: with torch's MKL held below this machine's instruction set
(another CPU's float32 rounding, on this one), the float32 calibration stays within the band
of the committed fixture's; and at this CPU's own instruction set and below it, every CPU
backend passes the gate at every latent size and K of the sweep (``gate_sweep``), each case's
margin printed."""

import json
import subprocess
import sys

import pytest
from checkout import child_env
from cpu_verification.calibration import outside_band
from cpu_verification.restricted_isa import FIXTURE, cpu_flags, gemm_digest, restrictions

from vae_ref.fixture import read_fixture


def child(
    args: list[str], restriction: dict[str, str], module: str = "cpu_verification.restricted_isa"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=child_env(restriction),
        capture_output=True,
        text=True,
        timeout=1200,
    )


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
    pytest.fail(
        f"none of {tried} changed float32 PyTorch's GEMM bits on this CPU: nothing "
        "here stands for another CPU; add a restriction to restricted_isa.restrictions"
    )


def test_a_restriction_changes_the_bits_it_claims_to(restriction):
    # Without this the cross-ISA test below would compare this CPU with itself.
    assert child(["--digest"], restriction).stdout.strip() != gemm_digest()


@pytest.mark.slow
def test_the_calibration_holds_below_this_cpus_instruction_set(restriction, tmp_path):
    out = tmp_path / "restricted.json"
    result = child([str(out)], restriction)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(out.read_text())
    for case, expected in read_fixture(FIXTURE):
        assert not outside_band(expected, measured["calibration"][case.name]), (
            restriction,
            case.name,
        )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["native", "below"])
def test_no_correct_cpu_backend_fails_the_gate_at_any_latent_size_or_k(
    where, restriction, tmp_path, capsys
):
    """The issue's sweep (every CPU backend x z 2, 10, 20, 50 x K 1, 10, 50 x the run's
    images and the fixture's cases), each case's worst fraction of its tolerance printed.
    Below this CPU's instruction set at the K every command gates with (and the single-step
    cases) only, and one backend per MKL GEMM path (``gate_sweep.mkl_backed``): K 1 and 10
    are swept natively (the sweeps are CI's longest tests)."""
    from cpu_verification.gate_sweep import SWEEP_STEPS, table

    from vae_ref.config import DEFAULT_LATENTS, GATE_ADAM_STEPS

    out = tmp_path / "sweep.json"
    steps = (*SWEEP_STEPS, GATE_ADAM_STEPS) if where == "native" else (GATE_ADAM_STEPS,)
    below = where == "below"
    result = child(
        [str(out), *(["--mkl-only"] if below else []), *map(str, steps)],
        restriction if below else {},
        module="cpu_verification.gate_sweep",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(out.read_text())
    rows = measured["rows"]
    with capsys.disabled():
        print(
            f"\ngate sweep, MKL {where} this CPU's instruction set "
            f"({restriction if where == 'below' else 'as found'}); unavailable: "
            f"{measured['unavailable'] or 'none'}\n{table(rows)}"
        )
    names = {r["backend"] for r in rows}
    assert {"torch", *(() if below else ("numba", "torch-fused-adam", "torch-compile"))} <= names
    assert not below or not names & {"jax", "torch-compile", "torch-fused-adam"}, names
    wanted = {(z, k) for z in DEFAULT_LATENTS for k in (0, *steps)}
    for name in names:
        swept = {
            (r["latent"], r["steps"])
            for r in rows
            if r["backend"] == name and r["data"] == "mnist-5k"
        }
        assert swept == wanted, (name, wanted - swept)
    failed = [r for r in rows if not r["passed"]]
    assert not failed, (where, restriction, failed)
