"""Provenance tells machines apart: every record carries what decides the CPU kernels (the
instruction sets, each BLAS library with its core type and threads, torch's CPU code path),
stays JSON-ready, and renders one line per BLAS library. Asserted on structure and on
made-up cpuinfo and records, never on this machine's CPU."""

import json
import os
import subprocess
import sys

import pytest

from bench import provenance

XEON_FLAGS = (
    "processor\t: 0\nmodel name\t: Made-up Xeon\n"
    "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile "
    "amx_bf16 avx512vnni_lookalike\n\nprocessor\t: 1\nflags\t\t: fpu\n"
)


@pytest.fixture(scope="module")
def record():
    return provenance.collect()


def test_the_record_has_the_instruction_sets_blas_and_torch_cpu_path(record):
    isa = record["cpu_isa"]
    assert isa is None or (isinstance(isa, list) and set(isa) <= set(provenance.ISA_FLAGS))
    assert record["blas"], "NumPy's BLAS is loaded, so at least one library is listed"
    for lib in record["blas"]:
        assert set(lib) == {
            "internal_api",
            "version",
            "architecture",
            "threading_layer",
            "num_threads",
            "library",
        }
        assert isinstance(lib["internal_api"], str) and lib["internal_api"]
        assert isinstance(lib["num_threads"], int) and lib["num_threads"] >= 1
    assert set(record["torch_cpu"]) == {"capability", "mkldnn", "mkl"}
    assert isinstance(record["torch_cpu"]["capability"], str | None)
    assert provenance.cpu_identity() == {"model": record["cpu"], "isa": isa}


def test_the_record_is_json_ready(record):
    assert json.loads(json.dumps(record)) == record


def test_the_isa_list_is_read_from_the_first_flags_line_in_a_fixed_order(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(XEON_FLAGS)
    assert provenance.cpu_isa(cpuinfo) == [
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_bf16",
    ]
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")  # Arm
    assert provenance.cpu_isa(cpuinfo) == ["asimd", "sve"]
    cpuinfo.write_text("processor\t: 0\n")
    assert provenance.cpu_isa(cpuinfo) is None
    assert provenance.cpu_isa(tmp_path / "absent") is None


def test_what_cannot_be_asked_is_recorded_as_none_not_raised(monkeypatch):
    import threadpoolctl
    import torch

    def fail(*_):
        raise RuntimeError("no")

    monkeypatch.setattr(threadpoolctl, "threadpool_info", fail)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", fail)
    monkeypatch.delattr(torch.backends.mkl, "is_available")
    assert provenance.blas_libraries() == []
    assert provenance.torch_cpu()["capability"] is None
    assert provenance.torch_cpu()["mkl"] is None


def test_the_markdown_has_one_line_per_blas_library():
    libs = [
        {
            "internal_api": "openblas",
            "version": "0.3.30",
            "architecture": "Haswell",
            "threading_layer": "pthreads",
            "num_threads": 2,
            "library": "libopenblas.so",
        },
        {
            "internal_api": "mkl",
            "version": "2025.0",
            "architecture": None,
            "threading_layer": "intel",
            "num_threads": 8,
            "library": "libmkl_rt.so",
        },
    ]
    text = provenance.as_markdown(
        {
            "cpu": "Made-up Xeon",
            "cpu_isa": ["avx2", "amx_bf16"],
            "torch_cpu": {"capability": "AVX512", "mkldnn": True},
            "blas": libs,
        }
    )
    assert text.splitlines() == [
        "- **cpu**: Made-up Xeon",
        "- **cpu_isa**: avx2, amx_bf16",
        "- **torch_cpu**: capability AVX512, mkldnn True",
        "- **blas**:",
        "  - openblas 0.3.30 (Haswell, pthreads, 2 threads): libopenblas.so",
        "  - mkl 2025.0 (intel, 8 threads): libmkl_rt.so",
    ]


EPYC = {"cpu": "Made-up EPYC", "cpu_isa": ["avx", "avx2", "fma"]}


@pytest.mark.parametrize(
    "other, differs",
    [
        (dict(EPYC), None),
        (dict(EPYC, cpu_isa=["fma", "avx2", "avx"]), None),  # the order does not matter
        ({"cpu": "Made-up EPYC"}, None),  # an older record: judged by the model alone
        (dict(EPYC, cpu="Made-up Xeon"), "OLD on 'Made-up EPYC', NEW on 'Made-up Xeon'"),
        ({"cpu": "Made-up Xeon"}, "OLD on 'Made-up EPYC', NEW on 'Made-up Xeon'"),
        (dict(EPYC, cpu_isa=["avx", "avx2", "fma", "avx512f"]), "only NEW: avx512f"),
    ],
)
def test_two_records_are_the_same_cpu_kind_by_model_and_instruction_sets(other, differs):
    found = provenance.cpu_difference(EPYC, other)
    assert found == differs if differs is None else differs in found


# Narrowed to its first CPU, as a Slurm job's cgroup or taskset narrows a process, a child
# reports what it may use: the default thread count, the --threads cap and the record.
NARROWED = """
import os, sys, contextlib, io, argparse
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from kernels.numba_cpu.threads import configure_threads
from bench.cli import _cap_threads
from bench.provenance import collect
args = argparse.Namespace(threads=os.cpu_count())
err = io.StringIO()
with contextlib.redirect_stderr(err):
    _cap_threads(args)
record = collect()
print(configure_threads(None), args.threads, record["usable_cpus"], record["logical_cpus"])
print(repr(err.getvalue().strip()))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_a_process_narrowed_to_one_cpu_uses_and_records_one():
    result = subprocess.run(
        [sys.executable, "-c", NARROWED], capture_output=True, text=True, check=True
    )
    counts, warning = result.stdout.splitlines()
    assert counts.split() == ["1", "1", "1", str(os.cpu_count())]
    cpus = os.cpu_count()
    assert warning == repr(
        f"vae-bench: warning: --threads {cpus} is more than the 1 CPUs this "
        "process may use; using 1"
        if cpus > 1
        else ""
    )
