"""How many float32 runs the K-step calibration needs (``vae_ref.oracle.CALIBRATION_RUNS``):
each relabelled float32 run (``vae_ref.summation_orders``) is a correct float32 computation of
the case, so each can stand for a backend and be judged by the gate's tolerance calibrated on
``r`` of the others. The share of such judgements that fail is the gate's false-failure rate
with ``r`` calibration runs, measured.

Run as ``python -m cpu_verification.calibration_runs N [R ...]`` (tests/ on the path): N
runs per case (``oracle.calibrations``, the gate's own runs first; z 2, 10, 20, 50 and K 10,
50 on the gate's images), every run judged against sets of R runs drawn from the rest (every
set, or 200 drawn), and per R the failed judgements, the worst fraction of the tolerance and
where.
"""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np


def judgements(
    runs: list[dict],
    truth: dict,
    kinks: dict,
    lr: float,
    r: int,
    rng: np.random.Generator,
    draws: int = 200,
):
    """(fraction of the tolerance, tensor) of each run judged by ``r`` of the others."""
    from bench.gate import TOLERANCES
    from vae_ref.gate_tensors import kind_of
    from vae_ref.oracle import calibration_error

    errors = [
        {tensor: calibration_error([run], tensor, value, kinks) for tensor, value in truth.items()}
        for run in runs
    ]
    scales = {tensor: float(np.max(np.abs(value))) for tensor, value in truth.items()}
    for i in range(len(runs)):
        others = [j for j in range(len(runs)) if j != i]
        if math.comb(len(others), r) <= draws:
            subsets = list(itertools.combinations(others, r))
        else:  # drawn at random (a set may come twice: the count stays an estimate)
            subsets = [rng.choice(others, r, replace=False) for _ in range(draws)]
        for subset in subsets:
            worst = (0.0, "")
            for tensor in truth:
                calibration = max(errors[j][tensor] for j in subset)
                tolerance = TOLERANCES[kind_of(tensor)].bound(calibration, scales[tensor], lr)
                fraction = errors[i][tensor] / tolerance if tolerance else 0.0
                worst = max(worst, (fraction, tensor))
            yield worst


def main(n: int, sizes: list[int]) -> None:
    import torch

    from bench.gate import gate_images
    from vae_ref.oracle import build_cases, calibrations, outputs

    images = gate_images()[0]
    rng = np.random.default_rng(0)
    tally = {r: [0, 0, (0.0, "")] for r in sizes}
    for latent in (2, 10, 20, 50):
        for steps in (10, 50):
            case = build_cases(images, latent, steps=steps)[-1]
            kinks: dict = {}
            truth = outputs(case, torch.float64, kinks)
            runs = calibrations(case, runs=n)  # the gate's own runs first
            for r in sizes:
                for fraction, tensor in judgements(runs, truth, kinks, case.config.lr, r, rng):
                    tally[r][0] += 1
                    tally[r][1] += fraction > 1
                    tally[r][2] = max(tally[r][2], (fraction, f"z{latent} K{steps} {tensor}"))
            print(f"z {latent}, K {steps} done", file=sys.stderr, flush=True)
    print(f"{n} float32 runs per case (z 2, 10, 20, 50 x K 10, 50), each judged by r others")
    for r, (count, failed, (fraction, where)) in tally.items():
        print(
            f"r = {r:2d}: {failed} of {count} judgements fail ({failed / count:.2%}); "
            f"worst {fraction:.1%} of its tolerance, {where}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), [int(a) for a in sys.argv[2:]] or [1, 4, 8, 12, 16])
