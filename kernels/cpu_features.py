"""What the CPU can do: the instruction-set flags the kernels' code paths depend on.

Read here, below both the backends (which refuse a mode the hardware cannot run, such as bf16
GEMMs without AMX or AVX512_BF16) and the harness's provenance (which records the flags with
every result), so the two never read /proc/cpuinfo differently.
"""

from __future__ import annotations

import os
from pathlib import Path

# The instruction sets that decide which code paths the CPU kernels take: oneDNN's AVX-512 and
# AMX (bf16/int8 tiles) kernels, OpenBLAS's and LLVM's (Numba's) choice of vector width, FMA.
# A flag added here is absent from records made before, so compare would call those runs
# another CPU: add with care (--allow-machine-change overrides).
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
    "sve2",
)

# The flags that give a CPU bf16 dot-product hardware: AMX's bf16 tiles (TDPBF16PS) or
# AVX512_BF16's VDPBF16PS. Without either, a library's bf16 GEMM converts to float32 and runs
# float32 FMAs (oneMKL's cblas_gemm_bf16bf16f32 does so on AVX2): an emulation, not bf16 speed.
BF16_DOT_FLAGS = ("amx_bf16", "avx512_bf16")


def cpuinfo_field(names: tuple[str, ...], cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The value of the first line of Linux's /proc/cpuinfo whose key starts with one of
    ``names`` (that is, the first CPU's), stripped; None where there is no such line or the
    file cannot be read (another OS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(names):
            return line.split(":", 1)[1].strip()
    return None


def cpu_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str] | None:
    """The flags of ``ISA_FLAGS`` this CPU reports (Linux /proc/cpuinfo: x86 'flags', Arm
    'Features'), in that order; None where the flags cannot be read (another OS)."""
    line = cpuinfo_field(("flags", "Features"), cpuinfo)
    if line is None:
        return None
    present = set(line.split())
    return [flag for flag in ISA_FLAGS if flag in present]


def bf16_dot_hardware(flags: list[str] | None = None) -> list[str]:
    """The bf16 dot-product instruction sets among ``flags`` (default: this CPU's)."""
    flags = cpu_isa() if flags is None else flags
    return [flag for flag in BF16_DOT_FLAGS if flag in (flags or ())]


def bf16_emulated_reason(flags: list[str] | None = None) -> str | None:
    """Why a bf16 mode would not run at bf16 speed on this CPU (None: it would): without
    bf16 dot-product hardware every library converts to float32 and runs float32 FMAs, so such
    a mode is refused, not timed as if it were the real thing."""
    if bf16_dot_hardware(flags):
        return None
    return (
        f"this CPU has no bf16 dot-product hardware (none of {', '.join(BF16_DOT_FLAGS)} "
        "in its flags): bf16 GEMMs would be emulated in float32, slower than float32 "
        "itself, so they are not timed as if they were the real thing"
    )


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's vendor as the kernel reports it (x86 'vendor_id': GenuineIntel,
    AuthenticAMD), None where it cannot be read (another OS, another architecture)."""
    return cpuinfo_field(("vendor_id",), cpuinfo) or None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (what a Slurm job's cgroup, taskset
    or a container grants), not the node's count (``os.cpu_count()``), which would have a
    4-CPU job on a 64-CPU node start 64 threads. The node's count where the mask cannot be
    read (macOS, Windows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
