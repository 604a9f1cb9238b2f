"""Loading the backends' native libraries with Ctrl-C held until they have loaded.

A KeyboardInterrupt must not land inside a native module's initialiser. Python raises it at
the next bytecode it runs, and while ``import torch`` runs, that bytecode is often Python that
torch's C++ called back into: torch/distributed/__init__.py calls ``torch._C._c10d_init()``,
whose pybind11 code then throws ``pybind11::error_already_set`` where it cannot be caught, and
the process aborts (``terminate called ...``, SIGABRT, no message of ours). ``import jax``
interrupted the same way crashed with SIGSEGV, or swallowed the interrupt and went on (exit 0).
Both were seen on this project's CI and reproduced by sending SIGINT at random moments of the
import (tests/bench/test_cli_errors.py). Holding the interrupt makes it arrive once the libraries
are whole, where it is an ordinary KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Within the block, a Ctrl-C (SIGINT) is noted rather than raised; when the block ends it is
    raised as KeyboardInterrupt, also when the block itself failed (the user asked to stop).

    Only Python's own handler is replaced: a SIGINT that is ignored (a shell's background job)
    or handled by someone else stays theirs, and outside the main thread, where Python allows no
    handler to be set, the block runs as it is."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    except BaseException:
        if received:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt
