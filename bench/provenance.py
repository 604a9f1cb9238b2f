"""Where a number came from: versions, machine (CPU model, instruction sets, BLAS, torch's CPU
code path), threads, git commit. Every result carries it."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import math
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

from kernels.cpu_features import (  # noqa: F401  (ISA_FLAGS: recorded by collect)
    ISA_FLAGS,
    cpu_isa,
    cpuinfo_field,
    usable_cpus,
)

from .machine_load import cpu_frequency

REPO_ROOT = Path(__file__).resolve().parent.parent  # a checkout's root, where bench/ lies in one


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo; platform's answer elsewhere)."""
    model = cpuinfo_field(("model name",))
    if model is not None:
        return model
    return platform.processor() or platform.machine()


def cpu_identity(record: dict | None = None) -> dict:
    """What decides the CPU kernels' speed: {"model": name, "isa": flags or None}. Of this
    machine, or read from a provenance ``record`` (None for "isa" where the record predates
    the field)."""
    if record is None:
        return {"model": cpu_model(), "isa": cpu_isa()}
    return {"model": record.get("cpu"), "isa": record.get("cpu_isa")}


def cpu_difference(old: dict, new: dict) -> str | None:
    """How the CPUs of two provenance records differ (None: the same kind of machine).
    A record without the instruction-set field (runs recorded before it existed) is judged
    by its CPU model alone."""
    a, b = cpu_identity(old), cpu_identity(new)
    if a["model"] != b["model"]:
        return f"OLD on {a['model']!r}, NEW on {b['model']!r}"
    if a["isa"] is not None and b["isa"] is not None and set(a["isa"]) != set(b["isa"]):
        only_old = sorted(set(a["isa"]) - set(b["isa"]))
        only_new = sorted(set(b["isa"]) - set(a["isa"]))
        return (
            f"both on {a['model']!r} but with other instruction sets (only OLD: "
            f"{', '.join(only_old) or 'none'}; only NEW: {', '.join(only_new) or 'none'})"
        )
    return None


def blas_libraries() -> list[dict]:
    """Each BLAS library loaded in this process (threadpoolctl): its internal API, version,
    the core type it chose (OpenBLAS, BLIS), threading layer and threads. NumPy and SciPy are
    imported first so their BLAS (the one Numba's np.dot calls is SciPy's) is among them."""
    try:
        import numpy  # noqa: F401
        import scipy.linalg  # noqa: F401
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info = threadpool_info()
    except Exception:  # provenance never raises: an odd library is recorded as none
        return []
    keep = ("internal_api", "version", "architecture", "threading_layer", "num_threads")
    return [
        {**{k: lib.get(k) for k in keep}, "library": Path(lib.get("filepath") or "?").name}
        for lib in info
        if lib.get("user_api") == "blas"
    ]


def torch_cpu() -> dict:
    """The code path torch's CPU kernels take: its dispatch capability (e.g. AVX2, AVX512)
    and whether oneDNN (mkldnn) and MKL are built in; None for what this torch cannot say."""
    import torch

    def ask(what):
        try:
            return what()
        except Exception:  # an older torch without the function, or one that fails
            return None

    return {
        "capability": ask(lambda: torch.backends.cpu.get_cpu_capability()),
        "mkldnn": ask(lambda: torch.backends.mkldnn.is_available()),
        "mkl": ask(lambda: torch.backends.mkl.is_available()),
    }


def git_commit() -> str:
    """HEAD of the checkout this code runs from, '+dirty' if it has uncommitted changes;
    'unknown' outside a git checkout (e.g. an installed wheel)."""
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(
    names=("torch", "numpy", "numba", "scipy", "pandas", "matplotlib", "jax", "jaxlib"),
) -> dict:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def command_line() -> str:
    """The command this process runs, as typed (``vae-bench run --out R ...``; ``python -m
    bench run ...`` when run as a module, whose argv[0] is bench/__main__.py)."""
    program = Path(sys.argv[0]).name
    if program == "__main__.py":
        program = f"python -m {Path(sys.argv[0]).resolve().parent.name}"
    return " ".join([program, *sys.argv[1:]])


def collect(*, data=None, **extra) -> dict:
    """A provenance record (JSON-ready). ``data`` (a ``vae_ref.data.Dataset``) adds what the
    data is, by content as well as by name; ``extra`` adds run-specific fields (seed...)."""
    import torch  # here, not at import: the results-directory lock reads command_line only

    if data is not None:
        extra = {"dataset": data.describe(), "data_sha256": data.fingerprint, **extra}
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "logical_cpus": os.cpu_count(),
        # What the run could use: a Slurm job or taskset narrows it below the node's count.
        "usable_cpus": usable_cpus(),
        "cpu_frequency": cpu_frequency(),  # governor and MHz, where the OS shows them
        "torch_threads": torch.get_num_threads(),
        "torch_cpu": torch_cpu(),
        "blas": blas_libraries(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": command_line(),
        **extra,
    }


def _blas_line(lib: dict) -> str:
    """'openblas 0.3.30 (Haswell, pthreads, 2 threads): libscipy_openblas-….so'."""
    details = [lib[k] for k in ("architecture", "threading_layer") if lib.get(k)]
    details.append(f"{lib.get('num_threads')} threads")
    return (
        f"{lib.get('internal_api')} {lib.get('version')} ({', '.join(details)}): "
        f"{lib.get('library')}"
    )


def as_markdown(record: dict) -> str:
    """The provenance block under a results table."""
    lines = []
    for key, value in record.items():
        if isinstance(value, dict) and key in ("versions", "torch_cpu"):
            lines.append(f"- **{key}**: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        elif isinstance(value, dict):
            lines.append(f"- **{key}**:")
            lines += [f"  - {k}: {v}" for k, v in value.items()]
        elif key == "blas" and isinstance(value, list):
            lines.append(f"- **{key}**:" + ("" if value else " none loaded"))
            lines += [f"  - {_blas_line(lib)}" for lib in value if isinstance(lib, dict)]
        elif key == "cpu_isa" and isinstance(value, list):
            lines.append(f"- **{key}**: " + (", ".join(value) or "none of " + ", ".join(ISA_FLAGS)))
        else:
            lines.append(f"- **{key}**: {value}")
    return "\n".join(lines)


def read_env(path: Path) -> dict:
    """The run environment (env.json) in ``path``: ValueError "not a run environment (why)"
    where the file is not one (unreadable, not a JSON object, a field missing or mistyped)."""
    from .store import read_json_object  # here: the store loads NumPy, which collect avoids

    try:
        env = read_json_object(path)
    except ValueError as error:
        raise ValueError(f"not a run environment ({error})") from None
    problem = env_problem(env)
    if problem:
        raise ValueError(f"not a run environment ({problem})")
    return env


# What env.json must hold, by the type of each value: what the summary, the peaks and resume
# read. A GPU's fields come together; the bf16 and TF32 peaks where such a backend ran; the
# usable CPUs in runs made since they were recorded.
ENV_FIELDS = {
    "dataset": str,
    "cpu": str,
    "logical_cpus": int,
    "gemm_peak_gflops": float,
    "gemm_peak_source": str,
    "spec": dict,
}
GPU_ENV_FIELDS = {"gpu": str, "gpu_gemm_peak_gflops": float, "gpu_gemm_peak_source": str}
OPTIONAL_ENV_FIELDS = {
    "usable_cpus": int,
    "bf16_gemm_peak_gflops": float,
    "bf16_gemm_peak_source": str,
    "gpu_tf32_gemm_peak_gflops": float,
    "gpu_tf32_gemm_peak_source": str,
}
SPEC_FIELDS = {"dataset": str, "epochs": int, "seed": int, "batch_sizes": list}


def env_problem(env: dict) -> str | None:
    """What is wrong with a run environment's fields (None if nothing): env.json's one
    check, for every reader of it (run --resume, merge, compare)."""

    def wrong(record: dict, fields: dict, where: str, required: bool = True) -> str | None:
        for key, kind in fields.items():
            if key not in record:
                if required:
                    return f"no {where}{key}"
                continue
            value = record[key]
            if kind is float:
                fits = (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                    and value > 0
                )
                expected = "a positive number"
            elif kind is int:
                fits, expected = (
                    isinstance(value, int) and not isinstance(value, bool),
                    "an integer",
                )
            else:
                fits, expected = (
                    isinstance(value, kind),
                    {str: "text", dict: "an object", list: "a list"}[kind],
                )
            if not fits:
                return f"{where}{key} is {value!r}, not {expected}"
        return None

    gpu = any(key in env for key in GPU_ENV_FIELDS)
    problem = (
        wrong(env, ENV_FIELDS, "")
        or wrong(env, GPU_ENV_FIELDS, "", required=gpu)
        or wrong(env, OPTIONAL_ENV_FIELDS, "", required=False)
    )
    if problem:
        return problem
    spec = env["spec"]
    problem = wrong(spec, SPEC_FIELDS, "spec.")
    if problem:
        return problem
    if not spec["batch_sizes"] or not all(
        isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in spec["batch_sizes"]
    ):
        return f"spec.batch_sizes is {spec['batch_sizes']!r}, not positive integers"
    return None
