"""Timing small callables fairly: one call of each per round, so machine drift hits all alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved_times(
    parts: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Seconds of ``repeats`` calls of each part, taken round by round (A B C A B C ...).
    A first, untimed round warms caches, JIT dispatch and thread pools."""
    for fn in parts.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(repeats):
        for name, fn in parts.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def best_seconds(run: Callable[[], object], wait: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``run``, each timed until ``wait`` returns (a
    device synchronization), after one untimed call."""
    run()
    wait()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        wait()
        best = min(best, time.perf_counter() - start)
    return best
