"""The CuPy GPU backend (see ``backend.py``; README.md gives the reading order). Importing
this package never imports CuPy: the harness lists the backend, and says why it is
unavailable, on machines without a GPU."""

from .backend import CupyBackend
from .executors import CudaExecutor, cuda_availability

__all__ = ["CudaExecutor", "CupyBackend", "cuda_availability"]
