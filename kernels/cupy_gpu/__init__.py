"""The CuPy GPU backend (see ``backend.py``). Importing this package never imports CuPy: the
harness lists the backend, and says why it is unavailable, on machines without a GPU."""

from .backend import CupyBackend, cuda_availability

__all__ = ["CupyBackend", "cuda_availability"]
