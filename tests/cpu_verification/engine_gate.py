"""The gate on Numba's pooled step with a GEMM engine that is not this CPU's own: oneDNN
where oneMKL is the default (kernels/numba_cpu/engines.py), so that the engine of an AMD Zen 4
is checked on every CPU that can run it, float32 everywhere and bf16 on AVX-512.

The engine is the process's (the step chooses its calls as it compiles), so the gate runs in a
child started by ``child(engine, precision)``: ``python -m cpu_verification.engine_gate
PRECISION [--mutant]`` (tests/ on the path), which prints one JSON line: the engine the step
ran and the tensors that failed per case, or why the backend is unavailable.

``--mutant`` runs a wrong binding of the engine: every GEMM adds onto what its output held
(beta 1 for 0), which is right where the output was zeros and wrong everywhere else.
``--simulated`` links the step to cpu_verification/simulated_onednn.py's GEMMs instead of
libdnnl's, so that oneDNN's bf16 path runs on a CPU whose oneDNN has no bf16 GEMM (below
AVX-512; bf16 is then emulated, as oneMKL's is there, for its numbers only). Either compiles
with its own Numba cache (``child``), so its step is never stored where the real one is looked
for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from checkout import ROOT, child_env

LATENT, ADAM_STEPS = 10, 5
ZEN4_ONEDNN_ISA = "AVX512_CORE_BF16"  # oneDNN's name (dnnl_cpu_isa_t) for AMD Zen 4's


def child(engine: str, precision: str, *options: str, cache: Path | None = None) -> dict[str, Any]:
    """The child that gates the pooled step in ``precision`` on ``engine`` (``options``:
    ``--mutant``, ``--simulated``), as subprocess's arguments; ``cache``: an empty folder for
    its Numba cache, which a mutant or simulated step must have."""
    from kernels.numba_cpu.engines import ENGINE_VARIABLE

    extra = {ENGINE_VARIABLE: engine}
    if engine == "onednn":
        # oneDNN held to AMD Zen 4's instruction set: on an Intel CPU with AMX too, its bf16
        # GEMM runs the AVX512_BF16 kernel a Zen 4 runs (a cap, nothing where the CPU has less;
        # read by oneDNN's cpu_isa_traits.cpp, init_max_cpu_isa).
        extra["ONEDNN_MAX_CPU_ISA"] = ZEN4_ONEDNN_ISA
    if options and cache is None:
        raise ValueError(f"{' '.join(options)} needs a cache of its own")
    if cache is not None:
        extra["NUMBA_CACHE_DIR"] = str(cache)
    args = [sys.executable, "-m", "cpu_verification.engine_gate", precision, *options]
    return dict(args=args, cwd=ROOT, env=child_env(extra))


def gate(precision: str, allow_emulated: bool = False) -> dict[str, Any]:
    """The gate's cases at z = LATENT, ADAM_STEPS Adam steps, on the pooled step in
    ``precision`` with this process's engine: {"engine": ..., "failed": {case: [tensor]}}."""
    from bench.gate import gate_images, judge
    from kernels.numba_cpu import NumbaBackend
    from vae_ref.oracle import build_cases, expectation

    backend = NumbaBackend(precision=precision, step_form="pooled", allow_emulated=allow_emulated)
    status = backend.availability()
    if not status.available:
        return {"unavailable": status.reason}
    failed = {}
    for case in build_cases(gate_images()[0], LATENT, steps=ADAM_STEPS):
        truth = expectation(case)
        expected = truth if precision == "float32" else expectation(case, "bf16", truth=truth)
        failed[case.name] = sorted(r.tensor for r in judge(backend, case, expected) if not r.passed)
    settings = backend.settings()
    return {"engine": settings["gemm_engine"], "isa": settings["gemm_isa"], "failed": failed}


def simulate_onednn() -> None:
    """The step's oneDNN symbols linked to the simulation, and the backend told that oneDNN is
    there and runs bf16 (it asks the real library otherwise)."""
    from cpu_verification import simulated_onednn
    from kernels.numba_cpu import onednn

    provenance = simulated_onednn.install()
    onednn.load = lambda: provenance
    onednn.library_problem = lambda: None
    onednn.bf16_problem = lambda: None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpu_verification.engine_gate")
    parser.add_argument("precision", choices=("float32", "bf16"))
    parser.add_argument("--mutant", action="store_true", help="every GEMM adds onto its output")
    parser.add_argument("--simulated", action="store_true", help="oneDNN's GEMMs simulated")
    args = parser.parse_args(argv)
    if args.simulated:
        simulate_onednn()
    if args.mutant:
        import numpy as np

        from kernels.numba_cpu import gemm

        gemm._ZERO = np.float32(1.0)  # read as beta by every engine's call, as the step compiles
    print(json.dumps(gate(args.precision, allow_emulated=args.simulated)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
