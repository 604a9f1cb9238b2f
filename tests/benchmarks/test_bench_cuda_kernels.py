"""pytest-benchmark suite: each fused CUDA kernel of the CuPy backend, alone, on the buffers of
a real training step (batch 128, z = 20), checked against its NumPy twin before it is timed.

For launch k of the step program, every buffer is set to the state the twins leave after
launches 0 .. k-1 (GEMMs included), then launch k runs as the kernel source and as its twin,
and every buffer is compared. That makes each benchmark also a kernel-level agreement test:
a wrong kernel is named here, not somewhere in a whole step.

What runs the source: on a GPU, NVRTC's build, and it is timed. Without one, the same source
built for the host (``gpu_verification.cuda_on_host``) behind the real CUDA executor on the
simulated CuPy: checked, not timed (``--benchmark-only`` skips it, saying so). Where the host
build is impossible too, the tests skip with the reason: a twin is never checked against
itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_verification import cuda_on_host, fake_cupy
from gpu_verification.numpy_executor import NumpyExecutor

from kernels.cupy_gpu import CudaExecutor, CupyBackend, cuda_availability, program
from kernels.flat_layout import make_layout
from vae_ref import VAEConfig, build_model, export_params

CUDA = cuda_availability()
CONFIG = VAEConfig(latent_dim=20)
BATCH = 128
# The step's ops as the twins run them; each test launches the device's own op (the same
# kernel and arguments, its grid sized to that device).
OPS = program.train_step_ops(
    CONFIG,
    make_layout(CONFIG, align=64),
    BATCH,
    generate_noise=True,
    multiprocessors=NumpyExecutor.multiprocessors,
)
LAUNCHES = [i for i, op in enumerate(OPS) if isinstance(op, program.Launch)]


def _loaded(executor) -> CupyBackend:
    backend = CupyBackend(executor)
    backend.load(CONFIG, export_params(build_model(CONFIG)))
    return backend


@pytest.fixture(scope="module")
def source_executor():
    """Where the kernel source runs: "gpu", or "host" (its host build, on the simulated CuPy
    for the rest of this module); the module skips with the reason where neither can."""
    if CUDA.available:
        yield "gpu"
        return
    reason = cuda_on_host.unavailable_reason()
    if reason is not None:
        pytest.skip(
            f"no GPU ({CUDA.reason}) and no host build of the kernels ({reason}): "
            "nothing to check the twins against"
        )
    with pytest.MonkeyPatch.context() as patch:
        fake_cupy.install(patch, kernels="source")
        yield "host"


@pytest.fixture(scope="module")
def pair(mnist5k, source_executor):
    """(the backend running the kernel source, its NumPy twin), both loaded with the same
    weights and data, the twin's Adam moments made non-trivial by a few steps."""
    twin = _loaded(NumpyExecutor)
    device = _loaded(CudaExecutor)
    data = mnist5k.train_x[:1000]
    rng = np.random.default_rng(0)
    for backend in (twin, device):
        backend._resident(data)
    for _ in range(3):
        twin.train_step(data, rng.integers(0, len(data), BATCH))
    twin.executor.copy_in(
        twin._buffers(BATCH)["indices"], rng.integers(0, len(data), BATCH).astype(np.int64)
    )
    return device, twin


def _state_before(twin: CupyBackend, index: int) -> dict[str, np.ndarray]:
    """Host copies of every buffer after the twins ran OPS[:index] from the twin's state."""
    buffers = twin._buffers(BATCH)
    saved = {name: array.copy() for name, array in buffers.items()}
    twin.executor.run(OPS[:index], buffers)
    state = {name: array.copy() for name, array in buffers.items()}
    for name, array in saved.items():  # leave the twin as it was for the next case
        buffers[name][...] = array
    return state


def _owners(buffers: dict) -> dict[str, object]:
    """Buffers that are not views of another (the flat buffers, workspaces, data): setting
    these sets every view."""
    return {name: array for name, array in buffers.items() if not name.startswith(("p:", "g:"))}


@pytest.mark.parametrize("index", LAUNCHES, ids=[f"{i:02d}-{OPS[i].kernel}" for i in LAUNCHES])
def test_fused_kernel(benchmark, pair, source_executor, index):
    device, twin = pair
    assert isinstance(device.executor, CudaExecutor) and not isinstance(
        twin.executor, CudaExecutor
    )  # the source on one side, the twin on the other
    op = device._program("train", BATCH, True)[index]
    assert op.kernel == OPS[index].kernel
    benchmark.group = f"cuda-kernel-{op.kernel}"
    before = _state_before(twin, index)
    device_buffers = device._buffers(BATCH)
    for name, array in _owners(device_buffers).items():
        device.executor.copy_in(array, before[name])
    device.executor.run([op], device_buffers)
    expected = {name: array.copy() for name, array in _owners(before).items()}
    twin_buffers = {
        **expected,
        **program.parameter_buffers(twin.layout, expected["params"], expected["grads"]),
    }
    twin.executor.run([op], twin_buffers)
    for name, want in expected.items():
        got = device.executor.download(device_buffers[name])
        scale = max(float(np.max(np.abs(want))), 1.0) if want.size else 1.0
        np.testing.assert_allclose(
            got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{op.kernel}: buffer {name}"
        )

    def launch():
        device.executor.run([op], device_buffers)
        device.synchronize()

    if source_executor == "host" and not benchmark.disabled:
        pytest.skip(
            "checked against its twin on the host build of the source; timed only on "
            f"a GPU ({CUDA.reason})"
        )
    benchmark(launch)  # timed on a GPU; run once, untimed, in a plain pytest
