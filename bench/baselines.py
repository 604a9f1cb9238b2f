"""Which row each row's speed-up is measured against: PyTorch eager on the same device, at
the same latent size and batch size, in the same run. A CPU backend is compared with
``torch`` on the CPU, a GPU backend with ``torch-cuda``; comparing a GPU kernel with CPU
PyTorch would say nothing about the kernel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BASELINE = {"cpu": "torch", "cuda": "torch-cuda"}  # device -> the eager PyTorch backend


def devices(table: pd.DataFrame) -> pd.Series:
    """Each row's device; tables written before the column existed were CPU-only."""
    if "device" not in table:
        return pd.Series("cpu", index=table.index)
    return table["device"].fillna("cpu")


def speedup(table: pd.DataFrame) -> pd.Series:
    """samples/s over the same device's PyTorch eager row (same latent and batch size); NaN
    where that row is missing or was not timed."""
    device = devices(table)
    result = pd.Series(float("nan"), index=table.index)
    for dev, baseline in BASELINE.items():
        base = table[(table.backend == baseline) & (device == dev)]
        base = base.set_index(["latent_dim", "batch_size"]).samples_per_s
        rows = device == dev
        keys = pd.MultiIndex.from_frame(table.loc[rows, ["latent_dim", "batch_size"]])
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero yardstick: inf, gated
            result[rows] = table.loc[rows, "samples_per_s"].values / base.reindex(keys).values
    return result


def is_baseline(table: pd.DataFrame) -> pd.Series:
    return table.backend.isin(list(BASELINE.values()))
