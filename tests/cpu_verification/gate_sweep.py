"""No false failures where they hide: every CPU backend through the gate at every latent size
of the report, at 1, 10 and the default number of Adam steps, on the images ``run`` gates on
(mnist-5k's first 1,024 digits) and on the committed fixture's cases (their stored
calibration), each case's worst fraction of its tolerance recorded.

Run as ``python -m cpu_verification.gate_sweep OUT.json [--mkl-only] [K ...]`` (tests/ on
the path), natively or in a child with MKL held below this CPU's instruction set
(``restricted_isa.restrictions``): tests/bench/test_gate_cross_isa.py runs it both ways
(below the ISA, at the gate's own K only, one backend per MKL GEMM path: ``mkl_backed``). A
correct backend that fails here is a gate that depends on the CPU.

The single-step cases do not depend on K and are judged once per latent size (``steps`` 0).
numba-bf16 runs oneMKL's emulated path where the CPU has no bf16 hardware (its numbers are
the hardware's, tests/kernels/numba_cpu/test_mixed_precision.py); a backend unavailable here
is listed as such.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cpu_verification.restricted_isa import FAIL_ON_EVERY_CPU, FIXTURE

SWEEP_STEPS = (1, 10)  # and the gate's default (vae_ref.config.GATE_ADAM_STEPS)


def mkl_backed(backend) -> bool:
    """Whether ``backend`` is swept below this CPU's instruction set: one backend per MKL GEMM
    path, those whose numbers a restriction of MKL (restricted_isa) changes. PyTorch eager
    (torch) for ATen's MKL GEMMs, which torch-fused-adam and torch-compile call as it does,
    differing from it only where the restriction does not reach (a fused Adam; Inductor's
    kernels, generated for this CPU whatever MKL is told), so their numbers below it move as
    torch's do; and Numba's pooled step (oneMKL). Not JAX (XLA's Eigen) nor Numba's serial
    step (NumPy's BLAS), whose numbers below this CPU's instruction set are their numbers on
    it."""
    return backend.name == "torch" or bool(getattr(backend, "pooled", False))


def backends(mkl_only: bool = False) -> tuple[list, dict[str, str]]:
    """Every registered CPU backend that can run here (numba-bf16 emulated where it must be;
    ``mkl_only``: those ``mkl_backed``), and why each other one cannot."""
    from kernels import backend_names, create_backend
    from kernels.numba_cpu import NumbaBackend, onemkl

    ready, unavailable = [], {}
    for name in backend_names():
        if name in FAIL_ON_EVERY_CPU:
            continue
        backend = create_backend(name)
        if backend.device != "cpu":
            continue
        if name == "numba-bf16" and onemkl.library_problem() is None:
            backend = NumbaBackend(precision="bf16", allow_emulated=True)
        status = backend.availability()
        if status.available and (mkl_backed(backend) or not mkl_only):
            ready.append(backend)
        else:
            unavailable[name] = status.reason
    return ready, unavailable


def row(backend, data: str, latent: int, steps: int, comparisons) -> dict:
    worst = max(comparisons, key=lambda c: c.fraction)
    return {
        "backend": backend.name,
        "data": data,
        "latent": latent,
        "steps": steps,
        "passed": all(c.passed for c in comparisons),
        "worst_fraction": worst.fraction,
        "worst": f"{worst.case} {worst.tensor}",
        "failed": [f"{c.case} {c.tensor} {c.fraction:.1%}" for c in comparisons if not c.passed],
    }


def sweep(
    log=lambda _line: None, steps_swept: tuple[int, ...] | None = None, mkl_only: bool = False
) -> dict:
    """The sweep's rows and the backends unavailable here; ``steps_swept``: the numbers of
    Adam steps (default SWEEP_STEPS and the gate's own), the single-step cases judged with
    the first; ``mkl_only``: one backend per MKL GEMM path only (``mkl_backed``)."""
    from bench.gate import gate_images, judge
    from kernels.base import gemm_inputs_of
    from vae_ref.config import DEFAULT_LATENTS, GATE_ADAM_STEPS
    from vae_ref.fixture import read_fixture
    from vae_ref.oracle import build_cases, expectation

    ready, unavailable = backends(mkl_only)
    images = gate_images()[0]
    swept = steps_swept or (*SWEEP_STEPS, GATE_ADAM_STEPS)
    rows = []
    for latent in DEFAULT_LATENTS:
        for steps in swept:
            start = time.perf_counter()
            cases = build_cases(images, latent, steps=steps)
            if steps != swept[0]:
                cases = [c for c in cases if c.steps]  # the single-step cases: judged once
            truth = [(c, expectation(c)) for c in cases]
            calibrated = {"float32": truth}
            for backend in ready:
                precision = gemm_inputs_of(backend)
                if precision not in calibrated:
                    calibrated[precision] = [
                        (c, expectation(c, precision, truth=e)) for c, e in truth
                    ]
                single, k_step = [], []
                for case, expected in calibrated[precision]:
                    (k_step if case.steps else single).extend(judge(backend, case, expected))
                if single:
                    rows.append(row(backend, "mnist-5k", latent, 0, single))
                rows.append(row(backend, "mnist-5k", latent, steps, k_step))
            log(f"z {latent}, K {steps}: {time.perf_counter() - start:.0f} s")
    stored = read_fixture(FIXTURE)
    for backend in ready:
        if gemm_inputs_of(backend) != "float32":
            continue  # the fixture holds float32 calibrations only (check --fixture says so)
        by_kind: dict[int, list] = {}
        for case, expected in stored:
            by_kind.setdefault(case.steps, []).extend(judge(backend, case, expected))
        for steps, comparisons in by_kind.items():
            rows.append(row(backend, "fixture", stored[0][0].config.latent_dim, steps, comparisons))
    return {"rows": rows, "unavailable": unavailable}


def table(rows: list[dict]) -> str:
    """The sweep as text: the worst fraction of each backend per latent size and K."""
    lines = [f"{'backend':<18} {'data':<9} {'z':>3} {'K':>3} {'worst':>7}  tensor"]
    for r in rows:
        verdict = "" if r["passed"] else "  FAIL"
        lines.append(
            f"{r['backend']:<18} {r['data']:<9} {r['latent']:>3} {r['steps']:>3} "
            f"{r['worst_fraction']:>7.1%}  {r['worst']}{verdict}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    # OUT.json [--mkl-only] [K ...]: the numbers of Adam steps to sweep (default 1, 10 and
    # the gate's).
    words = sys.argv[2:]
    result = sweep(
        log=lambda line: print(line, file=sys.stderr, flush=True),
        steps_swept=tuple(int(k) for k in words if k != "--mkl-only") or None,
        mkl_only="--mkl-only" in words,
    )
    Path(sys.argv[1]).write_text(json.dumps(result))
    print(table(result["rows"]))
