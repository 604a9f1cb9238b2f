"""The float32 Numba step in both its forms, side by side in one ``vae-bench profile``: what
``kernels.numba_cpu.float32_step_form`` decides per CPU is measured with this (issue 42).

Run as ``python -m cpu_verification.step_forms vae-bench-args...`` (tests/ on the path), e.g.
``... profile --backends torch numba-serial numba-pooled jax --threads 2 --repeats 9``. In
this process only, the registry gains ``numba-serial`` (``step.py``: one thread runs the fused
kernels, NumPy's BLAS threads each GEMM) and ``numba-pooled`` (``pooled_step.py``: one thread
pool, each worker calling oneMKL's sequential ``sgemm`` on its share), each the float32
``numba`` backend with its step form fixed, so the two are gated and timed interleaved with
the others, under the same windows, and the report's provenance names both engines.
"""

from __future__ import annotations

import sys

STEP_FORM_NAMES = {"numba-serial": "serial", "numba-pooled": "pooled"}


def step_form_factory(name: str, step_form: str):
    """A registry factory for the float32 Numba backend with its step form fixed, named
    ``name`` in every table (NumbaBackend.name is a property a class attribute overrides)."""

    def make(threads: int | None = None, **options):
        from kernels.numba_cpu import NumbaBackend

        fixed = type(name, (NumbaBackend,), {"name": name})
        return fixed(threads=threads, step_form=step_form)

    return make


def main(argv: list[str]) -> int:
    import kernels
    from bench.cli import main as vae_bench

    if not argv:
        print("usage: python -m cpu_verification.step_forms vae-bench-args...", file=sys.stderr)
        return 2
    for name, step_form in STEP_FORM_NAMES.items():
        kernels.BACKENDS[name] = step_form_factory(name, step_form)
    return vae_bench(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
