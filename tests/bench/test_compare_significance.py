"""``compare`` calls a throughput drop a regression only when the timed windows say it is not
noise (a one-sided Mann-Whitney U test on the per-window speed-ups over eager), and refuses
to decide, rather than passing, where the windows are too few for the test to mean anything.
OLD is the committed mnist-5k run given windows; NEW is a copy whose numba windows change."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from checkout import RESULTS
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.compare.significance import MIN_WINDOWS, change, u_null_cdf
from bench.tables import window_speedups, windows_text

COMMITTED = RESULTS / "run-full-mnist-5k"
NUMBA_Z2 = "numba z=2 batch=128"


def test_the_exact_test_at_its_smallest_sizes():
    apart = change(np.arange(10.0, 15.0), np.arange(1.0, 6.0))  # every NEW below every OLD
    assert apart.p_slower == pytest.approx(1 / math.comb(10, 5))  # 1/252
    assert apart.verdict == "slower" and apart.p_value == apart.p_slower
    faster = change(np.arange(1.0, 6.0), np.arange(10.0, 15.0))
    assert faster.p_slower > 0.99 and faster.verdict == "faster"
    too_few = change(np.arange(10.0, 10.0 + MIN_WINDOWS - 1), np.arange(1.0, MIN_WINDOWS))
    assert not too_few.decided and "it needs 5 in each" in too_few.why_undecided
    assert too_few.verdict == "undecided"


@pytest.mark.parametrize("m, n", [(5, 5), (9, 9), (5, 8), (8, 5), (3, 4)])
def test_the_null_distribution_of_u_is_scipys(m, n):
    """u_null_cdf(m, n)[u] is P(U <= u): SciPy's exact one-sided p-value at that U."""
    from scipy.stats import mannwhitneyu

    cdf = u_null_cdf(m, n)
    assert len(cdf) == m * n + 1 and cdf[-1] == pytest.approx(1.0)
    rng = np.random.default_rng(m * 100 + n)
    for _ in range(30):
        old, new = rng.normal(size=m), rng.normal(size=n)
        result = mannwhitneyu(new, old, alternative="less", method="exact")
        assert cdf[int(result.statistic)] == pytest.approx(result.pvalue, abs=1e-12)


def test_the_interval_is_the_order_statistics_the_u_test_inverts():
    """Worked by hand: logs of OLD 0, 1, .., 4, of NEW 10, 10.2, .., 10.8. The 25 differences
    are 6 + i + 0.2 j (i, j = 0..4), all distinct: D(k) = 6 + (k - 1) // 5 + 0.2 ((k - 1) % 5).
    At 5 a side P(U <= 4) = 12/252 < 0.05 < P(U <= 5) = 19/252, so c = 4 and the 90% interval
    is [D(5), D(21)] = [6.8, 10.0] around the median D(13) = 8.4."""
    old, new = np.exp(np.arange(5.0)), np.exp(np.arange(10.0, 10.9, 0.2))
    result = change(old, new)
    assert np.log([result.low, result.estimate, result.high]) == pytest.approx([6.8, 8.4, 10])
    assert result.level == pytest.approx(0.9) and result.verdict == "faster"
    shifted = change(old, old * 0.8)  # NEW is OLD at 0.8x, window for window
    assert shifted.estimate == pytest.approx(0.8) and shifted.low <= 0.8 <= shifted.high


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.5, 2.0), min_size=5, max_size=12, unique=True),
    st.lists(st.floats(0.5, 2.0), min_size=5, max_size=12, unique=True),
    st.floats(0.01, 0.2),
)
def test_the_verdict_and_the_interval_say_the_same(old, new, alpha):
    """Slower exactly when the interval lies wholly below 1, faster when above (tie-free
    windows, where both are exact), the estimate inside the interval."""
    if set(old) & set(new):
        return
    result = change(np.array(old), np.array(new), alpha)
    assert result.low <= result.estimate <= result.high
    assert (result.verdict == "slower") == (result.high < 1)
    assert (result.verdict == "faster") == (result.low > 1)


def test_per_window_speedups_pair_window_i_with_the_yardsticks_window_i():
    table = pd.DataFrame(
        {
            "backend": ["torch", "numba", "numba"],
            "device": "cpu",
            "latent_dim": [2, 2, 10],
            "batch_size": 128,
            "samples_per_s": [1.0, 2.0, 3.0],
            "window_samples_per_s": ["100 200 400", "150 300 1000", "1 2 3"],
        }
    )
    ratios = window_speedups(table)
    assert ratios[0].tolist() == [1, 1, 1]
    assert ratios[1].tolist() == [1.5, 1.5, 2.5]  # not sorted: same rounds are paired
    assert ratios[2].size == 0  # no yardstick at z=10: nothing to pair with


@pytest.fixture
def windowed(tmp_path):
    """The committed run with 9 windows per row, each backend's spread like this machine's
    (a few percent, a slow outlier now and then), medians equal to its samples/s."""
    table = pd.read_csv(COMMITTED / "results.csv")
    rng = np.random.default_rng(0)
    table["window_samples_per_s"] = [windows_text(_windows(rng, v)) for v in table.samples_per_s]
    return table


def _windows(rng, median, count=9, spread=0.03):
    values = median * np.exp(rng.normal(0, spread, count))
    return values * median / np.median(values)


def _set_numba_z2(table, values):
    row = (table.backend == "numba") & (table.latent_dim == 2)
    table.loc[row, "window_samples_per_s"] = windows_text(values)
    table.loc[row, "samples_per_s"] = float(np.median(values))
    return table


def compare(capsys, tmp_path, old, new, *flags):
    old.to_csv(tmp_path / "old.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    code = main(["compare", str(tmp_path / "old.csv"), str(tmp_path / "new.csv"), *flags])
    return code, capsys.readouterr().out


def _numba_z2_line(out):
    return next(
        line
        for line in out.splitlines()
        if line.startswith("numba  ") and line.split()[1:3] == ["2", "128"]
    )


def test_a_real_slowdown_is_a_significant_regression(windowed, tmp_path, capsys):
    old = windowed
    numba = (old.backend == "numba") & (old.latent_dim == 2)
    was = np.array(old.loc[numba, "window_samples_per_s"].iloc[0].split(), float)
    new = _set_numba_z2(old.copy(), was * 0.6)  # 40% slower in every window
    code, out = compare(capsys, tmp_path, old, new)
    assert code == 1
    line = next(x for x in out.splitlines() if x.strip().startswith(NUMBA_Z2))
    assert "0.60x of before" in line and "Mann-Whitney U, p=" in line
    assert "SLOWER" in _numba_z2_line(out)


def test_a_drop_beyond_the_threshold_that_the_windows_call_noise_is_not_a_regression(
    windowed, tmp_path, capsys
):
    old = windowed
    numba = (old.backend == "numba") & (old.latent_dim == 2)
    was = np.array(old.loc[numba, "window_samples_per_s"].iloc[0].split(), float)
    # NEW's median window fell to 0.7x, but its windows interleave OLD's: 4 of 9 are as
    # fast as ever (a neighbour's burst hit the other 5). A threshold alone cries wolf here.
    now = np.sort(was)[::-1] * np.array([1.25, 1.2, 1.15, 1.1, 0.7, 0.7, 0.7, 0.7, 0.7])
    new = _set_numba_z2(old.copy(), now)
    code, out = compare(capsys, tmp_path, old, new)
    assert code == 0, out
    assert f"note: {NUMBA_Z2}: speed-up over PyTorch eager 0.7" in out
    assert "not significant over the windows" in out
    row = _numba_z2_line(out)
    assert " ~ " in row and "SLOWER" not in row
    # The mutation: decide by the threshold alone, and the same drop is a regression.
    code, out = compare(capsys, tmp_path, old, new, "--threshold-only")
    assert code == 1 and "decided by the threshold alone" in out


def test_too_few_windows_is_undecided_not_a_pass(windowed, tmp_path, capsys):
    old = windowed
    few = old.copy()
    few["window_samples_per_s"] = few.window_samples_per_s.map(
        lambda text: " ".join(text.split()[: MIN_WINDOWS - 1])
    )
    slower = few.copy()
    numba = (slower.backend == "numba") & (slower.latent_dim == 2)
    slower.loc[numba, "samples_per_s"] /= 2
    code, out = compare(capsys, tmp_path, few, slower)
    assert code == 3
    refusal = next(x for x in out.splitlines() if x.startswith("NOT COMPARED"))
    assert f"{NUMBA_Z2}: speed-up over PyTorch eager 0.50x" in refusal
    assert "undecided: too few timed windows" in refusal and "(4 in OLD, 4 in NEW" in refusal
    assert "\nno regression beyond the gate" not in out
    assert "undecided" in _numba_z2_line(out)
    # A table recorded before windows were kept is undecided the same way.
    bare = old.drop(columns="window_samples_per_s")
    code, out = compare(capsys, tmp_path, bare, slower.drop(columns="window_samples_per_s"))
    assert code == 3 and "(0 in OLD, 0 in NEW" in out


def test_every_gated_row_shows_its_p_value(windowed, tmp_path, capsys):
    code, out = compare(capsys, tmp_path, windowed, windowed.copy())
    assert code == 0 and "no regression beyond the gate" in out
    header, *rows = out.split("\n\n")[0].splitlines()
    assert " p " in header and "verdict" in header
    numba = [r for r in rows if r.startswith("numba  ")]
    assert numba and all(" ~ " in r for r in numba)
    assert all(float(r.split()[11]) > 0.05 for r in numba), numba  # identical windows


def test_the_slowed_backend_stretches_each_step_to_the_asked_throughput():
    from cpu_verification.slowed_backend import slowed

    class Backend:
        def train_step(self, *args, **kwargs):
            ticks.append(ticks[-1] + 0.007)  # a 7 ms step on the fake clock
            return "loss"

        def synchronize(self):
            pass

    ticks, slept = [0.0], []
    make = slowed(lambda **_: Backend(), 0.3, sleep=slept.append, clock=lambda: ticks[-1])
    assert make().train_step("data", want_loss=False) == "loss"
    # 7 ms of work + the sleep = 10 ms a step: 0.7x the throughput.
    assert slept == [pytest.approx(0.003)]
    with pytest.raises(ValueError, match="fraction in"):
        slowed(Backend, 1.0)


def test_a_significant_drop_within_the_gate_is_said_slower_not_passed_as_no_change(
    windowed, tmp_path, capsys
):
    """A significant 20% slowdown passed under the 25% gate with the same word as no
    change (issue 40, part 2): now it is 'slower', said in a note, and exit 0 (the gate)."""
    old = windowed
    numba = (old.backend == "numba") & (old.latent_dim == 2)
    was = np.array(old.loc[numba, "window_samples_per_s"].iloc[0].split(), float)
    code, out = compare(capsys, tmp_path, old, _set_numba_z2(old.copy(), was * 0.8))
    assert code == 0, out
    row = _numba_z2_line(out)
    assert " slower " in row and "SLOWER" not in row
    note = next(x for x in out.splitlines() if x.startswith(f"note: {NUMBA_Z2}"))
    assert "0.80x of before" in note and "significantly slower" in note
    assert "within the gate (0.75x)" in note
    code, out = compare(capsys, tmp_path, old, _set_numba_z2(old.copy(), was * 1.3))
    assert code == 0 and " faster " in _numba_z2_line(out)


def test_each_backend_has_its_geometric_mean(windowed, tmp_path, capsys):
    """numba at 0.5x at z = 2 and 2x at z = 10, the same at 20 and 50: its geometric mean
    is 1 (an arithmetic mean would say 1.125x)."""
    new = windowed.copy()
    for latent, factor in ((2, 0.5), (10, 2.0)):
        row = (new.backend == "numba") & (new.latent_dim == latent)
        was = np.array(new.loc[row, "window_samples_per_s"].iloc[0].split(), float)
        new.loc[row, "window_samples_per_s"] = windows_text(was * factor)
        new.loc[row, "samples_per_s"] *= factor
    code, out = compare(capsys, tmp_path, windowed, new, "--format", "json")
    means = {g["backend"]: g for g in json.loads(out)["geometric_means"]}
    assert means["numba"]["throughput_ratio"] == pytest.approx(1.0)
    assert means["numba"]["rows"] == 4 and "torch" not in means  # the yardstick is not gated
    code, out = compare(capsys, tmp_path, windowed, new)
    assert "  numba              1.00x over 4 rows" in out


def test_json_and_markdown_say_what_the_text_says(windowed, tmp_path, capsys):
    old = windowed
    numba = (old.backend == "numba") & (old.latent_dim == 2)
    was = np.array(old.loc[numba, "window_samples_per_s"].iloc[0].split(), float)
    new = _set_numba_z2(old.copy(), was * 0.6)
    code, out = compare(capsys, tmp_path, old, new, "--format", "json")
    document = json.loads(out)
    assert code == 1 and document["exit_status"] == 1 and document["outcome"] == "regression"
    rows = {(r["backend"], r["latent_dim"]): r for r in document["rows"]}
    assert len(rows) == len(old)
    slow = rows[("numba", 2)]
    assert slow["verdict"] == "slower" and slow["regression"] is True
    assert slow["ratio_low"] <= slow["ratio_estimate"] <= slow["ratio_high"] < 0.75
    assert rows[("torch", 2)]["throughput_ratio"] is None  # the yardstick: NaN as null
    assert len(document["regressions"]) == 1 and document["interval_level"] == 0.9

    code, out = compare(capsys, tmp_path, old, new, "--format", "markdown")
    lines = out.splitlines()
    assert code == 1 and lines[0] == "### vae-bench compare: ❌ regression: 1 beyond the gate"
    table = [line for line in lines if line.startswith("| ") and "|---" not in line]
    assert len(table) == 1 + len(old) + 1 + 2  # header, rows, geomean header, its rows
    assert any(line.startswith("| numba | 2 | 128 |") and "**SLOWER**" in line for line in table)


def test_the_exit_statuses_are_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 no regression, 1 a regression beyond the gate, 3 undecided" in text
    assert "2 unusable input" in text
