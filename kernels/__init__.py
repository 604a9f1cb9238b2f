"""kernels: alternative backends of the reference VAE, one package each, behind one interface.

Backends exchange weights with the reference in its canonical form (``vae_ref.params``), so
each can start from exactly the reference's parameters and be checked against it. The
registry below is the only place that knows which backends exist: the built-in ones, and any
that an installed distribution registers under the ``vae_kernel_bench.backends`` entry-point
group (``name = "package.module:factory"``, the factory taking the harness's options, e.g.
``threads``, and returning a ``Backend``; ``tests/example_plugin/`` is a complete example).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass

from .base import Availability, Backend, BackendFailed, BackendUnavailable, BatchLoss, StepOutputs
from .library_loading import interrupts_held


class UnknownBackendError(ValueError):
    """A backend name that is not registered; the message lists those that are."""


def _torch(**options) -> Backend:
    from .pytorch import TorchBackend

    return TorchBackend()


def _torch_fused(**options) -> Backend:
    from .pytorch import TorchBackend

    return TorchBackend(fused_adam=True)


def _torch_compile(**options) -> Backend:
    from .pytorch import TorchBackend

    return TorchBackend(compile=True)


def _numba(threads: int | None = None, **options) -> Backend:
    from .numba_cpu import NumbaBackend

    return NumbaBackend(threads=threads)


def _numba_bf16(threads: int | None = None, **options) -> Backend:
    from .numba_cpu import NumbaBackend

    return NumbaBackend(threads=threads, precision="bf16")


def _jax(threads: int | None = None, **options) -> Backend:
    from .jax_xla import JaxBackend

    return JaxBackend(platform="cpu", threads=threads)


def _jax_bf16(threads: int | None = None, **options) -> Backend:
    from .jax_xla import JaxBackend

    return JaxBackend(platform="cpu", threads=threads, gemm_inputs="bf16")


def _torch_bf16(**options) -> Backend:
    from .pytorch import TorchBackend

    return TorchBackend(autocast_bf16=True)


def _torch_compile_bf16(**options) -> Backend:
    from .pytorch import TorchBackend

    return TorchBackend(compile=True, autocast_bf16=True)


def _jax_cuda(threads: int | None = None, **options) -> Backend:
    from .jax_xla import JaxBackend

    return JaxBackend(platform="cuda", threads=threads)


def _torch_cuda(**options) -> Backend:
    from .pytorch import TorchBackend

    return TorchBackend(device="cuda")


def _torch_cuda_compile(**options) -> Backend:
    from .pytorch import TorchBackend

    return TorchBackend(device="cuda", compile=True)


def _cupy(**options) -> Backend:
    from .cupy_gpu import CudaExecutor, CupyBackend

    return CupyBackend(CudaExecutor, graph=True)


def _cupy_nograph(**options) -> Backend:
    from .cupy_gpu import CudaExecutor, CupyBackend

    return CupyBackend(CudaExecutor, graph=False)


def _cupy_tf32(**options) -> Backend:
    from .cupy_gpu import CudaExecutor, CupyBackend

    return CupyBackend(CudaExecutor, graph=True, tf32=True)


# The backend that is the reference itself (vae_ref's model, trained by PyTorch eager): the
# yardstick of every CPU speed-up, and the trainer of the AE and of seeds' comparisons.
REFERENCE_BACKEND = "torch"

# name -> factory(**options). Options a backend does not use are ignored.
BACKENDS: dict[str, Callable[..., Backend]] = {
    REFERENCE_BACKEND: _torch,
    "torch-fused-adam": _torch_fused,
    "torch-compile": _torch_compile,
    "numba": _numba,
    # bf16 GEMM inputs: needs AMX or AVX512_BF16 and the engine that runs them there
    # (numba_cpu/engines.py: oneMKL, the [bf16] extra, on Intel; oneDNN, Debian's libdnnl2, on
    # AMD Zen 4); unavailable, with the reason, elsewhere.
    "numba-bf16": _numba_bf16,
    "jax": _jax,  # needs the [jax] extra; unavailable, with the reason, without it
    # bf16 GEMM inputs, float32 everywhere else (kernels.base.MixedPrecision): the peers of
    # numba-bf16. PyTorch's CPU autocast rounds GEMM outputs to bf16 as well.
    "torch-bf16": _torch_bf16,
    "torch-compile-bf16": _torch_compile_bf16,
    "jax-bf16": _jax_bf16,
    # GPU: unavailable (with the reason) on machines without CUDA, listed all the same.
    "torch-cuda": _torch_cuda,
    "torch-cuda-compile": _torch_cuda_compile,
    "cupy": _cupy,
    "cupy-nograph": _cupy_nograph,
    "cupy-tf32": _cupy_tf32,
    "jax-cuda": _jax_cuda,
}

# Each reduced-precision built-in (kernels.base.MixedPrecision) and its float32 twin, the same
# backend computing its GEMMs in float32: what its speed and its ELBO are set beside. (A
# plugin's reduced-precision backend has no twin here: its rows stand alone.)
FLOAT32_TWINS: dict[str, str] = {
    "numba-bf16": "numba",
    "torch-bf16": REFERENCE_BACKEND,
    "torch-compile-bf16": "torch-compile",
    "jax-bf16": "jax",
    "cupy-tf32": "cupy",
}


ENTRY_POINT_GROUP = "vae_kernel_bench.backends"


@dataclass(frozen=True)
class Registration:
    """One registered backend: its name, where it comes from, and how to make it."""

    name: str
    origin: str  # "built-in", or the distribution whose entry point registered it
    entry_point: importlib.metadata.EntryPoint | None = None  # None for the built-ins

    def factory(self) -> Callable[..., Backend]:
        if self.entry_point is None:
            return BACKENDS[self.name]
        try:
            return self.entry_point.load()
        except Exception as error:  # noqa: BLE001  a broken plugin must not stop the harness
            raise BackendUnavailable(
                f"backend {self.name!r} from {self.origin} failed to load "
                f"({self.entry_point.value}): {type(error).__name__}: {error}"
            ) from None


class UnloadableBackend:
    """Stands in for a registered backend whose package fails to import (a plugin with a
    missing dependency, say): it is listed, and reported unavailable with the import error,
    like any backend that cannot run here, and refuses to do anything else."""

    device = "cpu"

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        self.description = "failed to load"

    def availability(self) -> Availability:
        return Availability(False, self.reason)

    def _refuse(self, *args, **kwargs):
        raise BackendUnavailable(f"backend {self.name!r} is unavailable: {self.reason}")

    load = params = forward_backward = train_step = evaluate = _refuse
    decode = encode = synchronize = settings = _refuse


def registrations() -> dict[str, Registration]:
    """Every backend this installation knows, built-in first, then plugins by name. A plugin
    cannot replace a built-in backend: a name already taken keeps its first registration."""
    found = {name: Registration(name, "built-in") for name in BACKENDS}
    plugins = sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name
    )
    for ep in plugins:
        origin = f"plugin {ep.dist.name}" if ep.dist is not None else "plugin"
        found.setdefault(ep.name, Registration(ep.name, origin, ep))
    return found


def backend_names() -> tuple[str, ...]:
    return tuple(registrations())


def create_backend(name: str, **options) -> Backend:
    """The backend registered as ``name``, made with the options it takes (e.g. ``threads``;
    built-in factories ignore options they do not use). Unknown names raise
    UnknownBackendError listing the known ones; a plugin that fails to import comes back as
    an UnloadableBackend, unavailable with the reason."""
    known = registrations()
    if name not in known:
        raise UnknownBackendError(f"unknown backend {name!r}; available: {', '.join(known)}")
    with interrupts_held():  # importing and making it loads its native libraries
        try:
            factory = known[name].factory()
        except BackendUnavailable as error:
            return UnloadableBackend(name, str(error))
        return factory(**options)


__all__ = [
    "BACKENDS",
    "Availability",
    "Backend",
    "BackendFailed",
    "BackendUnavailable",
    "BatchLoss",
    "StepOutputs",
    "ENTRY_POINT_GROUP",
    "FLOAT32_TWINS",
    "REFERENCE_BACKEND",
    "Registration",
    "UnknownBackendError",
    "UnloadableBackend",
    "backend_names",
    "create_backend",
    "registrations",
]
