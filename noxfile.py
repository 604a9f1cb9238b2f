"""nox sessions: ``nox -s bench`` (the main job) and ``nox -s tests`` (CI: ``lint``'s ruff and
mypy, the tests, then the simulated CuPy checked against CuPy 13 and 14, ``drift``);
``nox -s lint`` (the linters alone).

Which torch to install is chosen by the environment variable VAE_BENCH_TORCH (a pip
requirement). The default, ``torch==2.13.0``, is the CPU build on our machines (pip finds it
on local disk); elsewhere set e.g. ``VAE_BENCH_TORCH="torch>=2.4"`` or point pip at the wheel
index for your CUDA. ``VAE_BENCH_TORCH=none`` installs no torch beyond what the project asks.
"""

import importlib.util
import os
import platform
import shutil
from pathlib import Path

import nox


def cpu_features():
    """kernels/cpu_features.py, loaded by its path (it needs only the standard library; the
    kernels package needs NumPy, which nox lacks)."""
    path = Path(__file__).parent / "kernels" / "cpu_features.py"
    spec = importlib.util.spec_from_file_location("cpu_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def usable_cpus() -> int:
    """The CPUs nox may use (kernels/cpu_features.py's usable_cpus)."""
    return cpu_features().usable_cpus()


# oneDNN, numba-bf16's GEMM engine on CPUs with AVX512_BF16 that are not Intel's (AMD Zen 4;
# kernels/numba_cpu/engines.py): no wheel on PyPI without SYCL and TBB runtimes, so Debian's.
ONEDNN_PACKAGE, ONEDNN_LIBRARY = "libdnnl2", Path("/usr/lib/x86_64-linux-gnu/libdnnl.so.2")


def install_onednn(session: nox.Session) -> None:
    """Debian's oneDNN where numba-bf16 runs on it and it is missing: installed with apt where
    nox runs as root, else a note saying how (numba-bf16 is then unavailable, with the same
    reason, in the summary)."""
    features = cpu_features()
    flags = features.cpu_isa() or []
    if "avx512_bf16" not in flags or features.cpu_vendor() == "GenuineIntel":
        return
    if ONEDNN_LIBRARY.exists():
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        try:
            session.run("apt-get", "install", "-y", "-qq", ONEDNN_PACKAGE, external=True)
            return
        except nox.command.CommandFailed:
            pass  # the bench runs on; numba-bf16 says it is unavailable, and why
    session.warn(f"numba-bf16 runs on oneDNN on this CPU: apt-get install {ONEDNN_PACKAGE}")


nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH_REQUIREMENT = os.environ.get("VAE_BENCH_TORCH", "torch==2.13.0")


def install_project(session: nox.Session, extras: str = "") -> None:
    # torch first, pinned as asked: "torch>=2.4" alone would pull a multi-GB CUDA build here.
    if TORCH_REQUIREMENT.lower() != "none":
        session.install(TORCH_REQUIREMENT)
    session.install("-e", f".{extras}")


# Pinned: a newer ruff or mypy finds new faults in unchanged code, and `nox -s lint` must
# mean the same on every machine and in CI.
LINTERS = ("ruff==0.17.6", "mypy==2.4.1")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff's rules and formatting over the whole checkout, and mypy over the harness, the
    reference and the backend interface (both configured in pyproject.toml); ``tests`` runs
    them first too. ``ruff format .`` writes the formatting it asks for."""
    install_project(session)  # mypy reads the types of torch, NumPy and matplotlib
    run_linters(session)


def run_linters(session: nox.Session) -> None:
    session.install(*LINTERS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


# The CuPy releases the simulated CuPy (tests/gpu_verification/fake_cupy.py) is held to, by major version:
# the wheels our `gpu` extra allows (13 for CUDA 12) and our GPU machines run (14, CUDA 13).
CUPY_WHEELS = {"13": "cupy-cuda12x==13.6.0", "14": "cupy-cuda13x==14.2.0"}
CUPY_NAMES = [wheel.split("==")[0] for wheel in CUPY_WHEELS.values()]


@nox.session
def tests(session: nox.Session) -> None:
    """Correctness tests on the CPU (what CI runs): first the linters (``lint``'s, in this
    environment: a second one with its own torch and project install cost CI two minutes),
    and nvcc compile-checks every CUDA source (``python -m tests.gpu_verification.nvcc_check``;
    skipped with a note where nvcc is missing); then the tests; then the drift tests in the
    same environment, once per CuPy version (see ``drift``), CuPy removed again after them.
    Extra arguments go to the first pytest."""
    # [jax]: the JAX backend's agreement gate runs in CI too (the CPU build: no CUDA pulled).
    # [bf16]: oneMKL, so the bf16 step's numbers are checked on every x86-64 CPU (emulated
    # where the CPU has no bf16 hardware); VAE_BENCH_REQUIRE_BF16 makes its tests fail, not
    # skip, where it could not be installed.
    install_project(session, "[test,jax,bf16]")
    run_linters(session)
    # No GPU here, so no test runs the kernels: compiling them is what catches a broken .cu.
    # Run on its own (not only inside pytest) so the compiler's warnings and per-kernel
    # register and shared-memory use show in the CI log.
    session.run("python", "-m", "tests.gpu_verification.nvcc_check", "--allow-missing")
    # The drift tests need CuPy, which the tests themselves must run without: installed after.
    bf16 = {"VAE_BENCH_REQUIRE_BF16": "1"} if platform.machine() in ("x86_64", "AMD64") else {}
    # One pytest-xdist worker per CPU, each pinned to its own (tests/conftest.py): the suite's
    # time is mostly single-threaded Numba compiles. Work-stealing, since a few tests take
    # minutes and most a second. `-- -n 0` runs it in one process.
    session.run(
        "pytest",
        "-m",
        "not drift",
        "-n",
        str(usable_cpus()),
        "--dist",
        "worksteal",
        "--durations=25",  # the CI log names the slowest tests: CI must stay under 20 minutes
        *session.posargs,
        env=bf16,
    )
    # Here rather than in a second environment, whose own torch and project install cost CI
    # a minute and a half.
    try:
        run_drift_tests(session)
    finally:
        session.run("python", "-m", "pip", "uninstall", "--yes", "--quiet", *CUPY_NAMES)


@nox.session
def drift(session: nox.Session) -> None:
    """The simulated CuPy checked against each real CuPy of CUPY_WHEELS in turn (13:
    cupy-cuda12x 13.6, 14: cupy-cuda13x 14.2; the wheels import without a GPU), in one
    environment, the wheel swapped between runs (a second environment cost CI two minutes):
    the drift tests only, and none may skip. Extra arguments go to pytest. (``tests`` runs
    them too, after its own.)"""
    install_project(session, "[test]")
    run_drift_tests(session, *session.posargs)


def run_drift_tests(session: nox.Session, *pytest_args: str) -> None:
    """The drift tests once per CuPy wheel of CUPY_WHEELS, each installed in turn."""
    for wheel in CUPY_WHEELS.values():
        session.run("python", "-m", "pip", "uninstall", "--yes", "--quiet", *CUPY_NAMES)
        session.install(wheel)
        session.run(
            "pytest",
            "-m",
            "drift",
            "tests/kernels/cupy_gpu/test_cupy_drift.py",
            *pytest_args,
            env={"VAE_BENCH_REQUIRE_CUPY": "1"},
        )


@nox.session
def bench(session: nox.Session) -> None:
    """The main job: the harness on the embedded mnist-5k digits (``vae-bench run --preset
    quick``): agreement gate, interleaved throughput and ELBO per backend and latent size,
    results under results/<time>-<host>/ and the summary printed. Extra arguments go to
    ``vae-bench run``, e.g. ``nox -s bench -- --preset full --backends numba torch``. JAX
    (the CPU build) and oneMKL (``[bf16]``) are installed so that ``jax`` and, on a CPU with
    bf16 hardware, the bf16 backends are timed beside the others; on an AMD Zen 4, oneDNN
    too (``install_onednn``).
    """
    install_project(session, "[jax,bf16]")
    install_onednn(session)
    # --preset quick unless the extra arguments name one (vae-bench refuses a flag given twice).
    named = any(a.split("=")[0] in ("--preset", "--profile") for a in session.posargs)
    session.run("vae-bench", "run", *([] if named else ["--preset", "quick"]), *session.posargs)


@nox.session
def benchmarks(session: nox.Session) -> None:
    """The pytest-benchmark suites (per fused kernel, per training step), timed, saved as JSON
    under .benchmarks/ (compare two saves: ``pytest-benchmark compare 0001 0002``; or
    ``-- --benchmark-compare --benchmark-compare-fail=median:10%`` against the last). Each
    timing's JSON holds samples/s (``extra_info``) and the CPU's instruction sets, BLAS and
    threads (``machine_info["vae_kernel_bench"]``): tests/conftest.py."""
    install_project(session, "[test,jax,bf16]")
    session.run("pytest", "--benchmark-only", "--benchmark-autosave", *session.posargs)


@nox.session
def experiment(session: nox.Session) -> None:
    """The report's latent-size experiment (``vae-bench experiment``: ELBO table, curves and
    figures) on the embedded mnist-5k digits; extra arguments go to it, e.g.
    ``nox -s experiment -- --dataset fashion-mnist --epochs 20``."""
    install_project(session)
    session.run("vae-bench", "experiment", *session.posargs)
