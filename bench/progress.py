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
