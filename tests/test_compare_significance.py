"""``compare`` calls a throughput drop a regression only when the timed windows say it is not
noise (a one-sided Mann-Whitney U test on the per-window speed-ups over eager), and refuses
to decide, rather than passing, where the windows are too few for the test to mean anything.
OLD is the committed mnist-5k run given windows; NEW is a copy whose numba windows change."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.significance import MIN_WINDOWS, slowdown
from bench.tables import window_speedups, windows_text

COMMITTED = Path(__file__).parents[1] / "results" / "run-full-mnist-5k"
NUMBA_Z2 = "numba z=2 batch=128"


def test_the_exact_test_at_its_smallest_sizes():
    apart = slowdown(np.arange(10.0, 15.0), np.arange(5.0))  # every NEW below every OLD
    assert apart.p_value == pytest.approx(1 / math.comb(10, 5))  # 1/252
    assert slowdown(np.arange(5.0), np.arange(10.0, 15.0)).p_value > 0.99  # NEW is faster
    too_few = slowdown(np.arange(10.0, 10.0 + MIN_WINDOWS - 1), np.arange(MIN_WINDOWS - 1.0))
    assert not too_few.decided and "it needs 5 in each" in too_few.why_undecided


def test_per_window_speedups_pair_window_i_with_the_yardsticks_window_i():
    table = pd.DataFrame({"backend": ["torch", "numba", "numba"], "device": "cpu",
                          "latent_dim": [2, 2, 10], "batch_size": 128,
                          "samples_per_s": [1.0, 2.0, 3.0],
                          "window_samples_per_s": ["100 200 400", "150 300 1000", "1 2 3"]})
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
    return next(line for line in out.splitlines() if line.startswith("numba  ")
                and line.split()[1:3] == ["2", "128"])


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
        windowed, tmp_path, capsys):
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
    assert "noise" in row and "SLOWER" not in row
    # The mutation: decide by the threshold alone, and the same drop is a regression.
    code, out = compare(capsys, tmp_path, old, new, "--threshold-only")
    assert code == 1 and "decided by the threshold alone" in out


def test_too_few_windows_is_undecided_not_a_pass(windowed, tmp_path, capsys):
    old = windowed
    few = old.copy()
    few["window_samples_per_s"] = few.window_samples_per_s.map(
        lambda text: " ".join(text.split()[:MIN_WINDOWS - 1]))
    slower = few.copy()
    numba = (slower.backend == "numba") & (slower.latent_dim == 2)
    slower.loc[numba, "samples_per_s"] /= 2
    code, out = compare(capsys, tmp_path, few, slower)
    assert code == 1
    refusal = next(x for x in out.splitlines() if x.startswith("NOT COMPARED"))
    assert f"{NUMBA_Z2}: speed-up over PyTorch eager 0.50x" in refusal
    assert "undecided: too few timed windows" in refusal and "(4 in OLD, 4 in NEW" in refusal
    assert "\nno regression beyond the gate" not in out
    assert "undecided" in _numba_z2_line(out)
    # A table recorded before windows were kept is undecided the same way.
    bare = old.drop(columns="window_samples_per_s")
    code, out = compare(capsys, tmp_path, bare, slower.drop(columns="window_samples_per_s"))
    assert code == 1 and "(0 in OLD, 0 in NEW" in out


def test_every_gated_row_shows_its_p_value(windowed, tmp_path, capsys):
    code, out = compare(capsys, tmp_path, windowed, windowed.copy())
    assert code == 0 and "no regression beyond the gate" in out
    header, *rows = out.split("\n\n")[0].splitlines()
    assert " p " in header and "verdict" in header
    numba = [r for r in rows if r.startswith("numba  ")]
    assert numba and all(" ok" in r for r in numba)
    assert all(float(r.split()[8]) > 0.05 for r in numba), numba  # identical windows


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
