"""kernels: alternative backends of the reference VAE, one package each, behind one interface.

Backends exchange weights with the reference in its canonical form (``vae_ref.params``), so
each can start from exactly the reference's parameters and be checked against it. The
registry below is the only place that knows which backends exist.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Availability, Backend, BackendFailed, BackendUnavailable, BatchLoss, StepOutputs


class UnknownBackendError(ValueError):
    """A backend name that is not registered; the message lists those that are."""


def _torch(**options) -> Backend:
    from .torch_ref import TorchBackend

    return TorchBackend()


def _torch_fused(**options) -> Backend:
    from .torch_ref import TorchBackend

    return TorchBackend(fused_adam=True)


def _torch_compile(**options) -> Backend:
    from .torch_ref import TorchBackend

    return TorchBackend(compile=True)


def _numba(threads: int | None = None, **options) -> Backend:
    from .numba_cpu import NumbaBackend

    return NumbaBackend(threads=threads)


def _torch_cuda(**options) -> Backend:
    from .torch_ref import TorchBackend

    return TorchBackend(device="cuda")


def _torch_cuda_compile(**options) -> Backend:
    from .torch_ref import TorchBackend

    return TorchBackend(device="cuda", compile=True)


def _cupy(**options) -> Backend:
    from .cupy_gpu import CupyBackend

    return CupyBackend(graph=True)


def _cupy_nograph(**options) -> Backend:
    from .cupy_gpu import CupyBackend

    return CupyBackend(graph=False)


def _cupy_tf32(**options) -> Backend:
    from .cupy_gpu import CupyBackend

    return CupyBackend(graph=True, tf32=True)


# name -> factory(**options). Options a backend does not use are ignored.
BACKENDS: dict[str, Callable[..., Backend]] = {
    "torch": _torch,
    "torch-fused-adam": _torch_fused,
    "torch-compile": _torch_compile,
    "numba": _numba,
    # GPU: unavailable (with the reason) on machines without CUDA, listed all the same.
    "torch-cuda": _torch_cuda,
    "torch-cuda-compile": _torch_cuda_compile,
    "cupy": _cupy,
    "cupy-nograph": _cupy_nograph,
    "cupy-tf32": _cupy_tf32,
}


def create_backend(name: str, **options) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise UnknownBackendError(
            f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None
    return factory(**options)


__all__ = [
    "BACKENDS",
    "Availability",
    "Backend",
    "BackendFailed",
    "BackendUnavailable",
    "BatchLoss",
    "StepOutputs",
    "UnknownBackendError",
    "create_backend",
]
