"""Finished `vae-bench experiment` directories made up for `vae-bench seeds`: its own tests
and the results fuzzer (which damages them) start from the same ones."""

import json

import numpy as np
import pandas as pd

SPEC = {
    "dataset": "mnist-5k",
    "latents": [2, 20],
    "epochs": 50,
    "batch_size": 128,
    "lr": 3e-4,
    "iwae_k": 0,
    "threads": 2,
}


def experiment_dir(root, backend, seed, shift=0.0, **spec):
    """A finished experiment directory as `vae-bench experiment` leaves it (table, provenance),
    with ELBOs drawn around -120 (z = 20) and -170 (z = 2), SD about 0.5."""
    rng = np.random.default_rng([seed, len(backend)])
    out = root / f"{backend}-s{seed}"
    out.mkdir()
    rows = [
        {
            "model": "vae",
            "latent_dim": z,
            "final_test_elbo": base + shift + rng.normal(0, 0.5),
            "final_train_elbo": base + 3,
            "seconds_per_epoch": 0.2,
            "seed": seed,
        }
        for z, base in ((2, -170.0), (20, -120.0))
    ]
    pd.DataFrame(rows).to_csv(out / "table.csv", index=False)
    (out / "provenance.json").write_text(
        json.dumps(
            {
                "git_commit": "0" * 40,
                "command": f"vae-bench experiment --seed {seed}",
                "cpu": "X",
                "seed": seed,
                "spec": {**SPEC, "seed": seed, "backend": backend, **spec},
            }
        )
    )
    return out


def runs(root, shift=0.0, seeds=(0, 1, 2), **spec):
    """One experiment per seed by the reference (torch) and by numba, numba's ELBOs shifted."""
    return [
        experiment_dir(root, b, s, shift if b == "numba" else 0.0, **spec)
        for b in ("torch", "numba")
        for s in seeds
    ]
