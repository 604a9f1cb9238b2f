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
class Change:
    """NEW's windows against OLD's: how much (the ratio NEW/OLD with its interval) and how
    sure (a one-sided U test each way). NaN where the test was refused (too few windows)."""

    p_slower: float  # one-sided U test that NEW's windows are stochastically smaller
    p_faster: float  # ... larger
    low: float  # the interval on NEW/OLD: its ends are the one-sided bounds at ``alpha``
    high: float
    estimate: float  # the Hodges-Lehmann ratio: the median of every NEW/OLD window pair
    old_windows: int
    new_windows: int
    alpha: float

    @property
    def decided(self) -> bool:
        return not math.isnan(self.p_slower)

    @property
    def why_undecided(self) -> str:
        return (
            f"too few timed windows for a significance test ({self.old_windows} in OLD, "
            f"{self.new_windows} in NEW; it needs {MIN_WINDOWS} in each)"
        )

    @property
    def verdict(self) -> str:
        """slower or faster where the U test says so at ``alpha``, ``~`` where it finds no
        significant change (benchstat's mark), undecided where it was refused."""
        if not self.decided:
            return "undecided"
        if self.p_slower < self.alpha:
            return "slower"
        return "faster" if self.p_faster < self.alpha else "~"

    @property
    def p_value(self) -> float:
        """The one-sided p-value in the direction the windows moved (the smaller)."""
        return min(self.p_slower, self.p_faster)

    @property
    def level(self) -> float:
        """The interval's two-sided confidence level, 1 - 2 alpha (90% at 0.05)."""
        return 1 - 2 * self.alpha

    def describe(self) -> str:
        return f"p={self.p_value:.3g}" if self.decided else "p=—"


def change(old: np.ndarray, new: np.ndarray, alpha: float = ALPHA) -> Change:
    """NEW against OLD (each a row's per-window values, positive): the one-sided U tests
    both ways and the ratio's interval, refused below MIN_WINDOWS windows a side."""
    old, new = np.asarray(old, dtype=float), np.asarray(new, dtype=float)
    old, new = old[np.isfinite(old) & (old > 0)], new[np.isfinite(new) & (new > 0)]
    if min(len(old), len(new)) < MIN_WINDOWS:
        return Change(*(math.nan,) * 5, len(old), len(new), alpha)
    from scipy.stats import mannwhitneyu

    # Exact where no value repeats (then the p-value is the exact tail of the U
    # distribution); the normal approximation with continuity correction where ties make
    # the exact table invalid (SciPy's own rule for method="auto" at larger sizes).
    ties = len(np.unique(np.concatenate([old, new]))) < len(old) + len(new)
    method = "asymptotic" if ties else "exact"
    p_slower = float(mannwhitneyu(new, old, alternative="less", method=method).pvalue)
    p_faster = float(mannwhitneyu(new, old, alternative="greater", method=method).pvalue)
    low, high, estimate = ratio_interval(old, new, alpha)
    return Change(p_slower, p_faster, low, high, estimate, len(old), len(new), alpha)


def ratio_interval(old: np.ndarray, new: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """The interval (low, high) on NEW/OLD that inverts the one-sided U tests at ``alpha``,
    and the Hodges-Lehmann estimate inside it (Hollander & Wolfe, Nonparametric Statistical
    Methods, 3rd ed., section 4.3; R's ``wilcox.test(conf.int=TRUE)``). On the logarithms
    of the windows the ratio is a shift; every NEW-OLD pair's difference of logarithms,
    sorted, is D(1) <= ... <= D(mn). U counts the positive ones, so the test "slower" rejects
    exactly when D(mn - c) < 0, where c is the largest count with P(U <= c) < alpha under the
    null: D(mn - c) is the upper bound, D(c + 1) the lower. The interval and the verdict are
    the same test, so "slower" is an interval wholly below 1 (but for ties, where SciPy's
    p-value is the normal approximation's and the bounds the exact table's).

    Why this rather than ``scipy.stats.bootstrap``: with 5 to 9 windows a side a bootstrap
    interval of a median takes a handful of values and under-covers (the module's
    docstring); this one holds its level for any distribution of the windows. SciPy has
    the test but neither the estimator nor its interval; the exact null distribution of U
    is ``u_null_cdf`` below (SciPy's own, ``scipy/stats/_mannwhitneyu.py`` ``_MWU``, is
    private)."""
    d = np.sort((np.log(new)[None, :] - np.log(old)[:, None]).ravel())
    cdf = u_null_cdf(len(old), len(new))
    c = int(np.searchsorted(cdf, alpha, side="left")) - 1  # P(U <= c) < alpha
    estimate = float(np.exp(np.median(d)))
    if c < 0:  # not even the most extreme order is significant: no bound
        return 0.0, math.inf, estimate
    return float(np.exp(d[c])), float(np.exp(d[len(d) - 1 - c])), estimate


def u_null_cdf(m: int, n: int) -> np.ndarray:
    """P(U <= u) for u = 0 .. m n, U the Mann-Whitney statistic of samples of sizes m and n
    drawn from one continuous distribution: the counts of the C(m+n, m) orderings with each
    U, by the recurrence f(m, n, u) = f(m - 1, n, u - n) + f(m, n - 1, u) (the larger of the
    last two values is OLD's, then U falls by n, or NEW's, then not)."""
    # counts[j] holds f(i, j, .) for the current i, padded to length m n + 1
    size = m * n + 1
    counts = [np.zeros(size) for _ in range(n + 1)]
    for j in range(n + 1):
        counts[j][0] = 1.0  # i = 0: one ordering, U = 0
    for i in range(1, m + 1):
        counts[0] = np.zeros(size)
        counts[0][0] = 1.0  # j = 0: one ordering, U = 0
        for j in range(1, n + 1):
            shifted = np.zeros(size)
            shifted[j:] = counts[j][: size - j]  # f(i - 1, j, u - j)
            counts[j] = shifted + counts[j - 1]
    return np.cumsum(counts[n]) / math.comb(m + n, m)
