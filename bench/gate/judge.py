"""A backend judged on one of the gate's cases: run on it, and every tensor the case holds
the truth of (every intermediate, loss term and gradient; or the losses and parameters over K
Adam steps) compared by ``comparison.compare``."""

from __future__ import annotations

import numpy as np

from kernels.base import Backend
from vae_ref.gate_tensors import adam_step_tensors, step_tensors
from vae_ref.oracle import Case, Expectation

from .comparison import Comparison, compare


def outputs(backend: Backend, case: Case) -> dict[str, np.ndarray]:
    """Every tensor the gate compares, under the gate's names, for one backend and case."""
    backend.load(case.config, case.params)
    if case.steps:
        # steps > 0: a K-step case carries its batches and noise (vae_ref.oracle.Case)
        assert case.data is not None and case.step_indices is not None
        assert case.step_eps is not None
        losses = []
        for k in range(case.steps):
            result = backend.train_step(case.data, case.step_indices[k], case.step_eps[k])
            assert result is not None  # want_loss (the default): every backend returns it
            losses.append(result.loss)
        return adam_step_tensors(losses, backend.params())
    out = backend.forward_backward(case.x, case.eps)
    return step_tensors(out.reconstruction, out.kl, out.loss, out.intermediates, out.grads)


def judge(backend: Backend, case: Case, expected: Expectation) -> list[Comparison]:
    """``backend``'s outputs on ``case`` against ``expected``, tensor by tensor; a tensor the
    backend did not give is a failure."""
    got = outputs(backend, case)
    results = []
    for tensor, truth in expected.truth.items():
        if tensor not in got:
            results.append(
                Comparison(
                    case.name,
                    tensor,
                    np.nan,
                    np.nan,
                    np.nan,
                    np.nan,
                    "missing from the backend's outputs",
                )
            )
            continue
        results.append(
            compare(
                case.name,
                tensor,
                got[tensor],
                truth,
                expected.reference_errors[tensor],
                case.config.lr,
                expected.unjudged.get(tensor),
            )
        )
    return results
