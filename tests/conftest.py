import platform

import numpy as np
import pytest
import torch


def pytest_report_header(config):
    from bench.provenance import cpu_model, package_versions

    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    return [f"vae-kernel-bench: {versions}",
            f"cpu: {cpu_model()} ({platform.machine()}), torch threads {torch.get_num_threads()}"]


@pytest.fixture(scope="session")
def mnist5k():
    from vae_ref.data import load_dataset

    return load_dataset("mnist-5k")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
