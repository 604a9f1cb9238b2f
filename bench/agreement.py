"""The agreement gate: does a backend compute what the reference computes?

The reference owns the truth (``vae_ref.oracle``: the gate's cases on real data, the float64
oracle's tensors and float32 PyTorch's error on each; ``vae_ref.fixture``: the same, stored).
Here each backend is run on a case and every intermediate, loss term and gradient, then the
losses and parameters over K Adam steps, is judged by the one comparison helper
(``comparison.py``) against a tolerance calibrated by float32 PyTorch's own error
(``tolerances.py``).
"""

from __future__ import annotations

import numpy as np

from kernels.base import Backend
from vae_ref.oracle import Case, Expectation

from .comparison import Comparison, compare


def outputs(backend: Backend, case: Case) -> dict[str, np.ndarray]:
    """Every tensor the gate compares, under the gate's names, for one backend and case."""
    backend.load(case.config, case.params)
    if case.steps:
        losses = [backend.train_step(case.data, case.step_indices[k], case.step_eps[k]).loss
                  for k in range(case.steps)]
        record = {"steps.loss": np.array(losses)}
        record |= {f"steps.{name}": p for name, p in backend.params().items()}
        return record
    out = backend.forward_backward(case.x, case.eps)
    record = {"loss.reconstruction": out.reconstruction, "loss.kl": out.kl,
              "loss": np.array(out.loss)}
    record |= out.intermediates
    record |= {f"grad.{name}": g for name, g in out.grads.items()}
    return record


def check(backend: Backend, case: Case, expected: Expectation) -> list[Comparison]:
    got = outputs(backend, case)
    results = []
    for tensor, truth in expected.truth.items():
        if tensor not in got:
            results.append(Comparison(case.name, tensor, np.nan, np.nan, np.nan, np.nan,
                                      "missing from the backend's outputs"))
            continue
        results.append(compare(case.name, tensor, got[tensor], truth,
                               expected.reference_errors[tensor], case.config.lr,
                               expected.unjudged.get(tensor)))
    return results
