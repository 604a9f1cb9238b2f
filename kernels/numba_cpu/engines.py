"""Which library runs the pooled step's GEMMs, per precision, on this CPU: oneMKL
(``onemkl.py``) or oneDNN (``onednn.py``).

- bf16: oneMKL on Intel CPUs, where its bf16 GEMMs run on AMX or AVX512_BF16 (measured on a
  Xeon with AMX: numba-bf16 1.7x float32 numba at batch 128, 2.6x at 1024); oneDNN on any other
  vendor's CPU with AVX512_BF16 (AMD Zen 4 and later), where oneMKL left the hardware unused
  (0.97x its float32 GEMMs on an AMD Zen 4) and oneDNN dispatches by instruction set. Without
  bf16 hardware oneMKL, whose bf16 GEMM emulates it on any x86-64 CPU: that step is refused for
  timing and runs only to check its numbers (``NumbaBackend(allow_emulated=True)``).
- float32: oneMKL everywhere. oneDNN's ``dnnl_sgemm`` in the pooled step was no faster on an
  AMD EPYC Zen 3 (0.97x-1.07x oneMKL's step time; results/README.md, "The float32 step's form
  per CPU"); elsewhere it has not been measured.

``ENGINE_VARIABLE`` (``onemkl`` or ``onednn``) sets one engine for both precisions, for a
measurement or a check of the other engine's path. The engine is fixed when the step compiles
(gemm.py chooses its calls as it types them), so it is the process's: one engine per process,
and Numba's cache is kept apart per engine (``compile_cache.cache_directory``).
"""

from __future__ import annotations

import os
from types import ModuleType

from .. import cpu_features

ENGINE_VARIABLE = "VAE_BENCH_GEMM_ENGINE"
ENGINES = ("onemkl", "onednn")
# The Intel CPUs on which oneMKL's bf16 GEMMs were measured to gain on float32 in the step
# (results/README.md, "numba-bf16 on the Intel Xeon"); on an AMD Zen 4 they gained nothing
# (results/README.md, "numba-bf16 on AMD Zen 4").
ONEMKL_BF16_VENDORS = ("GenuineIntel",)


def asked() -> str | None:
    """The engine ``ENGINE_VARIABLE`` asks for, None where it is unset or empty; a ValueError
    naming the choices where it is something else."""
    value = os.environ.get(ENGINE_VARIABLE, "").strip().lower()
    if not value:
        return None
    if value not in ENGINES:
        raise ValueError(
            f"{ENGINE_VARIABLE}={os.environ[ENGINE_VARIABLE]!r} is not a GEMM engine: "
            f"set it to one of {', '.join(ENGINES)}, or unset it for this CPU's default"
        )
    return value


def chosen(
    precision: str, vendor: str | None = None, flags: list[str] | None = None
) -> tuple[str, str]:
    """(engine, why) for the pooled step's GEMMs in ``precision`` on a CPU of ``vendor`` with
    ``flags`` (default this CPU's), ``ENGINE_VARIABLE`` first."""
    engine = asked()
    if engine:
        return engine, f"{ENGINE_VARIABLE}={engine}"
    if precision != "bf16":
        return "onemkl", "oneMKL's sgemm is the float32 engine on every CPU measured"
    vendor = cpu_features.cpu_vendor() if vendor is None else vendor
    flags = (cpu_features.cpu_isa() or []) if flags is None else flags
    if vendor in ONEMKL_BF16_VENDORS:
        return "onemkl", f"oneMKL runs bf16 GEMMs on the bf16 hardware of {vendor}'s CPUs"
    if "avx512_bf16" not in flags:
        return "onemkl", "no AVX512_BF16: oneMKL's emulated bf16 GEMM, for checking numbers only"
    return "onednn", (
        f"AVX512_BF16 on {vendor or 'an unknown vendor'}'s CPU: oneMKL leaves it unused, "
        "oneDNN dispatches by instruction set"
    )


def _process_engines() -> dict[str, tuple[str, str]]:
    """Each precision's engine in this process, and why: this CPU's choice and
    ``ENGINE_VARIABLE`` as they were when this module was imported. oneMKL where the variable
    is not a valid engine: the backend then refuses to run with that variable's error
    (``availability``), and nothing is compiled."""
    try:
        return {precision: chosen(precision) for precision in ("float32", "bf16")}
    except ValueError as error:
        return {precision: ("onemkl", str(error)) for precision in ("float32", "bf16")}


# Read once, at import: a step compiled with one engine cannot change it, and the choice must
# not follow a variable or a CPU description changed later in the process (a test's).
_IN_PROCESS = _process_engines()


def in_process(precision: str) -> str:
    """The engine of the step compiled in this process for ``precision``."""
    return _IN_PROCESS[precision][0]


def why_in_process(precision: str) -> str:
    """Why ``in_process(precision)`` is that engine (recorded with the backend's settings)."""
    return _IN_PROCESS[precision][1]


def cache_tag() -> str:
    """What names this process's engines in the Numba cache's directory: a step compiled for
    one engine calls its functions by symbol, and must not be loaded for the other."""
    return "-".join(in_process(precision) for precision in ("float32", "bf16"))


def module(engine: str) -> ModuleType:
    """The module that loads ``engine`` and describes it (``load``, ``problem``,
    ``engine_for``)."""
    from . import onednn, onemkl

    return {"onemkl": onemkl, "onednn": onednn}[engine]


def bf16_problem(engine: str, vendor: str | None = None) -> str | None:
    """Why ``engine``'s bf16 GEMMs would not run at bf16 speed on this CPU, which has bf16
    hardware (None: they would): oneMKL on another vendor's CPU than ONEMKL_BF16_VENDORS', or
    the library missing or refusing."""
    vendor = cpu_features.cpu_vendor() if vendor is None else vendor
    if engine == "onemkl" and vendor not in ONEMKL_BF16_VENDORS:
        return (
            f"oneMKL's bf16 GEMMs gain on float32 on {', '.join(ONEMKL_BF16_VENDORS)} CPUs "
            f"only, this is {vendor or 'an unknown vendor'}'s (on an AMD Zen 4 numba-bf16 ran "
            f"0.73x float32 numba at batch 1024): not timed as if it were the real thing "
            f"(unset {ENGINE_VARIABLE} for oneDNN, this CPU's engine)"
        )
    return module(engine).problem("bf16")


def bf16_unavailable_reason(
    flags: list[str] | None = None, vendor: str | None = None
) -> str | None:
    """Why the bf16 step cannot run at bf16 speed on a CPU of ``vendor`` with ``flags``
    (default this CPU's; None: it can): no bf16 hardware, or its engine's problem there.
    Whether that engine's bf16 GEMMs then beat float32 is measured with the numbers
    (bench.profile_text, BF16_GEMM_GAIN_FLOOR)."""
    emulated = cpu_features.bf16_emulated_reason(flags)
    if emulated:
        return emulated
    try:
        engine = chosen("bf16", vendor, flags)[0]
    except ValueError as error:
        return str(error)
    return bf16_problem(engine, vendor)


def packs_b(engine: str) -> bool:
    """Whether ``engine`` can pack a GEMM operand once for many GEMMs (oneMKL's
    ``cblas_*_pack``; oneDNN 2 has no such call), which the bf16 step's blocked weight
    update needs to pay (pooled_step.weight_rows_update)."""
    return engine == "onemkl"
