"""``vae-bench check``: the pipeline's gate alone, on one backend, each latent size's cases
against the live float64 oracle (or a fixture's), every tensor's line printed as it is
judged, and the verdict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kernels.base import Backend, gemm_inputs_of
from vae_ref.fixture import FixtureError, read_fixture

from . import pipeline
from .gate import gate_images
from .gate.comparison import HEADER
from .tables import settings_text


def sources(
    backend: Backend, latents, *, adam_steps: int, hidden_dim: int, fixture: Path | None = None
) -> list[tuple[str, Callable[..., pipeline.Pairs]]]:
    """(what the truth is, the cases with it) per latent size, or the fixture's."""
    if fixture:
        if gemm_inputs_of(backend) != "float32":
            raise FixtureError(
                f"the fixture holds float32 calibrations only, and {backend.name} computes "
                f"its GEMMs on {gemm_inputs_of(backend)} inputs: check it against the live "
                "oracle (leave out --fixture; needs PyTorch)"
            )
        pairs = read_fixture(fixture)
        return [(f"fixture {fixture}", lambda *_: pairs)]
    images, where = gate_images()
    return [
        (
            f"float64 oracle ({where})",
            pipeline.gate_cases(images, z, steps=adam_steps, hidden=hidden_dim),
        )
        for z in latents
    ]


def check(
    backend: Backend,
    truths: list[tuple[str, Callable[..., pipeline.Pairs]]],
    *,
    quiet: bool = False,
) -> bool:
    """Gate ``backend`` on each of ``truths`` in turn, printing each tensor's line (only the
    failures when ``quiet``) and the verdict; whether every tensor passed."""
    print(f"agreement gate: backend {backend.name} ({backend.description}) vs {truths[0][0]}")
    print(HEADER)
    failures, worst = 0, 0.0
    gate_alone = pipeline.Selection(stages=("gate",))
    for _, pairs in truths:  # one latent size at a time: its lines come as it is checked
        record = pipeline.execute(gate_alone, [backend], cases=pairs).gates[backend.name]
        failures += len(record.failures)
        worst = max(worst, record.worst_fraction)
        for result in record.comparisons:
            if not quiet or not result.passed:
                print(result.line())
    settings = settings_text(backend.settings())
    verdict = "PASS" if failures == 0 else f"FAIL ({failures} tensors)"
    print(f"{verdict}: {backend.name}, worst tensor at {worst:.1%} of its tolerance [{settings}]")
    return failures == 0
