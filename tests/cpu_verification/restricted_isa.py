"""The gate on a CPU other than this one, as far as one machine can stand in for another.

float32 PyTorch's GEMMs are MKL's, and MKL picks its kernels by the instruction sets it finds
(AVX-512 and AMX on recent Xeons, AVX2 below; a generic path on AMD CPUs). Held to a lower
set, it sums in another order: another CPU's float32 rounding, on this one. ``restrictions``
lists the settings to try, the first that changes float32 PyTorch's bits being the one used
(on AMD, where MKL ignores MKL_ENABLE_INSTRUCTIONS, only MKL_CBWR's compatible path does).
The OpenBLAS core-type variables some machines set are left as they are: they keep an old
OpenBLAS from wrong kernels, and Numba's and NumPy's BLAS is not what the calibration measures.

Run as ``python -m cpu_verification.restricted_isa OUT.json`` (tests/ on the path) in a child
started with the restriction in its environment: it writes a GEMM's digest and the float32
calibration of the committed fixture's cases (``gate_sweep`` gates the backends there).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from vae_ref.fixtures import COMMITTED_FIXTURE as FIXTURE


def cpu_flags() -> set[str]:
    """The instruction sets this CPU reports, as the provenance records them."""
    from bench.provenance import cpu_isa

    return set(cpu_isa() or ())


def restrictions(flags: set[str]) -> list[dict[str, str]]:
    """Environments that hold MKL below this CPU's instruction set, most specific first."""
    below = "AVX2" if "avx512f" in flags else "SSE4_2" if "avx2" in flags else None
    # MKL_ENABLE_INSTRUCTIONS caps the dispatch (oneMKL developer reference, "Instruction Set
    # Specific Dispatching"); MKL_CBWR=COMPATIBLE selects its SSE2-era path on any x86-64 CPU
    # ("Conditional Numerical Reproducibility").
    return ([{"MKL_ENABLE_INSTRUCTIONS": below}] if below else []) + [{"MKL_CBWR": "COMPATIBLE"}]


def gemm_digest() -> str:
    """The bits of one float32 GEMM of the step's shape through torch: what a restriction must
    change to stand for another CPU."""
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 784, generator=generator)
    w = torch.randn(512, 784, generator=generator)
    return hashlib.sha1(torch.nn.functional.linear(x, w).numpy().tobytes()).hexdigest()


# Backends that fail the gate on every CPU, for a reason of their own and not of the CPU's
# kernels: PyTorch's CPU autocast rounds every linear layer's output to bf16, which loses the
# extreme-logits case (tests/kernels/numba_cpu/test_mixed_precision.py shows them failing
# natively). Whether they pass below this CPU's instruction set is not a question.
FAIL_ON_EVERY_CPU = ("torch-bf16", "torch-compile-bf16")


def main(out: Path) -> None:
    from vae_ref.fixture import read_fixture
    from vae_ref.oracle import expectation

    calibration = {
        case.name: expectation(case).reference_errors for case, _ in read_fixture(FIXTURE)
    }
    out.write_text(json.dumps({"gemm": gemm_digest(), "calibration": calibration}))


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--digest":
        print(gemm_digest())
    else:
        main(Path(sys.argv[1]))
