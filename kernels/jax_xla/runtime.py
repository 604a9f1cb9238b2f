"""Where the JAX backend runs: whether JAX (and a GPU for it) is usable, which device, and the
size of XLA's CPU thread pool. Importing this module never imports JAX.

XLA sizes its CPU thread pool once per process, when JAX first creates its CPU client: from
the environment variable PJRT_NPROC (then NPROC), else one thread per CPU this process may
run on (xla/pjrt/utils.cc, ``DefaultThreadPoolSize``). A thread count asked for later than
that cannot be honoured; the backend then says so instead of recording a count that is not
the one running.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

from ..base import Availability

# Python modules through which JAX finds its CUDA support (the jax[cuda12] / jax[cuda13]
# extras install one of them).
CUDA_PLUGINS = (
    "jax_cuda13_plugin",
    "jax_cuda12_plugin",
    "jax_plugins.xla_cuda13",
    "jax_plugins.xla_cuda12",
)
# XLA's CPU pool threads carry this name (tsl's "tf_" prefix + "XLAEigen").
POOL_THREAD_NAME = "tf_XLAEigen"


def jax_missing() -> str | None:
    """Why JAX cannot be imported here, or None."""
    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("jaxlib") is None:
        return "jax is not installed (pip install 'vae-kernel-bench[jax]', or pip install jax)"
    return None


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def initialized() -> bool:
    """Whether JAX has created its clients (after which the pool size is fixed). Never imports
    JAX: not yet imported, it has not started."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is None:
        return False
    started = getattr(bridge, "backends_are_initialized", None)
    return True if started is None else bool(started())  # unknown (a renamed API): assume so


def pool_conflict(threads: int | None) -> str | None:
    """Why ``threads`` cannot be honoured (JAX has started with a pool of another size), or
    None. Changes nothing."""
    if not initialized():
        return None
    running = pool_threads()
    if threads is not None and running is not None and running != threads:
        return (
            f"XLA's CPU thread pool was sized to {running} threads when JAX started in "
            f"this process; it cannot be resized to {threads} (start a new process)"
        )
    return None


def prepare(threads: int | None) -> str | None:
    """Just before JAX is first used (a backend's load, never its availability): ask for
    ``threads`` in XLA's CPU pool (PJRT_NPROC), and keep JAX from taking 75% of a GPU's memory
    at start (other backends in the process need it). Returns ``pool_conflict``'s reason."""
    if not initialized():
        if threads is not None:
            os.environ["PJRT_NPROC"] = str(threads)
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return pool_conflict(threads)


def pool_threads() -> int | None:
    """The threads in XLA's CPU pool, counted by name (Linux); None where that cannot be
    seen or JAX has not started."""
    tasks = Path("/proc/self/task")
    if not initialized() or not tasks.is_dir():
        return None
    count = 0
    for task in tasks.iterdir():
        try:
            count += (task / "comm").read_text().strip() == POOL_THREAD_NAME
        except OSError:  # the thread ended meanwhile
            continue
    return count or None


def cuda_devices() -> int | str:
    """How many CUDA devices the driver counts, or why it cannot be asked: through the driver
    API (libcuda's cuInit, cuDeviceGetCount), which does not start JAX."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA driver here (libcuda.so.1 cannot be opened)"
    count = ctypes.c_int(0)
    status = driver.cuInit(0)
    if status == 0:
        status = driver.cuDeviceGetCount(ctypes.byref(count))
    return count.value if status == 0 else f"the CUDA driver fails to start (CUresult {status})"


def cuda_missing() -> str | None:
    """Why JAX cannot use a CUDA GPU here, or None. Never starts JAX: its clients, once made,
    fix XLA's CPU pool for every JAX backend of the process. A CUDA plugin installed and a
    device the driver counts make it available; where JAX has started already, JAX is asked.
    Whether JAX then takes the device is known when the backend loads."""
    if not any(_find(module) for module in CUDA_PLUGINS):
        return (
            "this JAX has no CUDA support installed (pip install 'jax[cuda12]' or "
            "'jax[cuda13]', matching the driver)"
        )
    if initialized():
        try:
            import jax

            return None if jax.devices("cuda") else "JAX sees no CUDA device"
        except Exception as error:  # noqa: BLE001  availability never raises
            return f"JAX cannot use CUDA ({type(error).__name__}: {str(error).strip()[:200]})"
    devices = cuda_devices()
    if isinstance(devices, str):
        return devices
    return None if devices > 0 else "the CUDA driver counts no device"


def availability(platform: str, threads: int | None) -> Availability:
    """Whether the backend for ``platform`` ("cpu" or "cuda") can run here. Never raises, and
    changes nothing in the process (no environment variable, JAX not started)."""
    reason = jax_missing()
    if reason is None:
        reason = pool_conflict(threads)
    if reason is None and platform == "cuda":
        reason = cuda_missing()
    return Availability(reason is None, reason or "")


def device(platform: str):
    """JAX's first device of ``platform``."""
    import jax

    return jax.devices(platform)[0]
