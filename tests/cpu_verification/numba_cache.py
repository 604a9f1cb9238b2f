"""Numba's on-disk cache filled before a parallel test session: each form of the Numba step
compiled once, ahead, so that every pytest-xdist worker and every command a test starts loads
it (3 s) instead of compiling it again (about 40 s for each pooled form on one core, more
when the workers compile at once; results/README.md, "The pooled step's compile time").

Run as ``python -m cpu_verification.numba_cache FORM ...`` (tests/ on the path), a FORM being
``serial``, ``pooled`` (float32) or ``pooled-bf16``; a form that cannot run here (no oneMKL)
is left out with a line saying why. tests/conftest.py starts one child per group of forms,
each with ``child``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from checkout import ROOT, child_env

FORMS = {
    "serial": dict(step_form="serial"),
    "pooled": dict(step_form="pooled"),
    "pooled-bf16": dict(precision="bf16", allow_emulated=True),
}


def child(forms: tuple[str, ...]) -> dict[str, Any]:
    """The child that compiles ``forms``, as subprocess's arguments (args, cwd, env). Started in
    the checkout's root with the checkout first on its path: started in tests/ (as it once
    was), the test folders that mirror the packages (tests/kernels/) stood in for them, every
    import failed, and each worker compiled the pooled step cold again (CI took four minutes
    longer)."""
    return dict(
        args=[sys.executable, "-m", "cpu_verification.numba_cache", *forms],
        cwd=ROOT,
        env=child_env(),
    )


def compile_ahead(form: str) -> str:
    """Load a small model on ``form``'s backend (which compiles every kernel, or loads it
    from the cache); what was done, in a line."""
    from kernels.numba_cpu import NumbaBackend
    from vae_ref.config import VAEConfig
    from vae_ref.model import build_model
    from vae_ref.params import export_params

    backend = NumbaBackend(**FORMS[form])
    status = backend.availability()
    if not status.available:
        return f"numba {form}: not compiled ahead ({status.reason})"
    config = VAEConfig(latent_dim=2, hidden_dim=16)
    started = time.perf_counter()
    backend.load(config, export_params(build_model(config)))
    return f"numba {form}: ready in {time.perf_counter() - started:.0f} s"


if __name__ == "__main__":
    for form in sys.argv[1:]:
        print(compile_ahead(form), flush=True)
