"""Is a drop in speed-up real, or the machine's noise? The one-sided Mann-Whitney U test over
the timed windows, which ``vae-bench compare`` asks before it calls a drop a regression.

The samples are the per-window speed-ups (``tables.window_speedups``: window i of a backend
over window i of PyTorch eager, timed in the same round of the same rotation), OLD's against
NEW's; with ``--absolute``, the raw per-window samples/s. The question is one-sided: are NEW's
windows stochastically smaller than OLD's?

Why the U test, and not a bootstrap interval on the ratio of medians: a run keeps 5 to 9
windows per row. The exact U test's level holds at any sample size and for any distribution
of the windows (a shared machine's are skewed: a neighbour's burst makes a few windows
slow, never fast), while a percentile bootstrap of a median from 9 values can take only a
handful of distinct values and under-covers at that size. It is also what the harnesses
that have one use: Google Benchmark's ``tools/gbench/report.py`` (``mannwhitneyu`` over
repetitions, ``UTEST_OPTIMAL_REPETITIONS = 9``) and Go's benchstat. The test is SciPy's,
``scipy.stats.mannwhitneyu`` (scipy/stats/_mannwhitneyu.py), exact where no two windows tie.

Too few windows: with ``MIN_WINDOWS`` windows a side the exact test's smallest p-value is
1/C(2n, n): 1/70 = 0.014 at 4 a side, so a 0.05 test could reject only when every NEW window
is below every OLD one; at 5 a side it is 1/252 = 0.004 and a 0.05 test tolerates a few
windows out of order. Below that the test is refused, and compare says the row is undecided
rather than passing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # compare's default significance level (--alpha)
# compare's default regression thresholds (--fail-throughput, --fail-elbo): a drop of the
# speed-up by this fraction, of the test ELBO by this many nats. Here, beside the level, so
# that the command line shows them without loading pandas.
DEFAULT_FAIL_THROUGHPUT = 0.25
DEFAULT_FAIL_ELBO = 1.0
MIN_WINDOWS = 5  # per side; see the module's docstring


@dataclass(frozen=True)
class Slowdown:
    """The U test's answer to "are NEW's windows smaller than OLD's?"."""

    p_value: float  # NaN when the test was refused (too few windows)
    old_windows: int
    new_windows: int

    @property
    def decided(self) -> bool:
        return not math.isnan(self.p_value)

    @property
    def why_undecided(self) -> str:
        return (f"too few timed windows for a significance test ({self.old_windows} in OLD, "
                f"{self.new_windows} in NEW; it needs {MIN_WINDOWS} in each)")

    def significant(self, alpha: float) -> bool:
        return self.decided and self.p_value < alpha

    def describe(self) -> str:
        return f"p={self.p_value:.3g}" if self.decided else "p=—"


def slowdown(old: np.ndarray, new: np.ndarray) -> Slowdown:
    """The one-sided U test that ``new`` is stochastically smaller than ``old`` (each a
    row's per-window values), refused below MIN_WINDOWS windows a side."""
    old, new = np.asarray(old, dtype=float), np.asarray(new, dtype=float)
    old, new = old[np.isfinite(old)], new[np.isfinite(new)]
    if min(len(old), len(new)) < MIN_WINDOWS:
        return Slowdown(math.nan, len(old), len(new))
    from scipy.stats import mannwhitneyu

    # Exact where no value repeats (then the p-value is the exact tail of the U
    # distribution); the normal approximation with continuity correction where ties make
    # the exact table invalid (SciPy's own rule for method="auto" at larger sizes).
    ties = len(np.unique(np.concatenate([old, new]))) < len(old) + len(new)
    result = mannwhitneyu(new, old, alternative="less",
                          method="asymptotic" if ties else "exact")
    return Slowdown(float(result.pvalue), len(old), len(new))
