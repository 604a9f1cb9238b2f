"""Progress bars where tqdm is installed, and none where it is not: nothing depends on them,
and the harness must run from a checkout on a GPU machine that may lack tqdm."""

from __future__ import annotations

import sys
import time

try:
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover - exercised in a venv without tqdm
    _tqdm = None


class _NoBar:
    """What a tqdm bar offers the training loops, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(**options):
    """``tqdm(**options)``, or a bar that shows nothing where tqdm is not installed."""
    return _tqdm(**options) if _tqdm is not None else _NoBar()


def write(message: str) -> None:
    """Print a line, above an active bar rather than through it; stamped with the time of day
    where stdout is not a terminal (a log file, a Slurm job's output), which has no bar to say
    how long each line took."""
    if not sys.stdout.isatty():
        message = f"[{time.strftime('%H:%M:%S')}] {message}"
    if _tqdm is not None:
        _tqdm.write(message)
    else:
        print(message, flush=True)


def eta_text(spent: list[float], left: int) -> str:
    """'; about 4 min left' from the seconds the units done so far took (their mean, times the
    ``left`` units still to do, this one included); nothing before the first is done."""
    if not spent:
        return ""
    return f"; {time_left(sum(spent) / len(spent) * left)}"


def time_left(seconds: float) -> str:
    """'about 40 s left', 'about 4 min left' (minutes from a minute and a half)."""
    return f"about {seconds / 60:.0f} min left" if seconds >= 90 else f"about {seconds:.0f} s left"
