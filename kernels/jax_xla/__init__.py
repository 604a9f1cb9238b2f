"""The JAX backend (see ``backend.py``). Importing this package never imports JAX: the harness
lists the backend, and says why it is unavailable, on machines without JAX."""

from .backend import JaxBackend

__all__ = ["JaxBackend"]
