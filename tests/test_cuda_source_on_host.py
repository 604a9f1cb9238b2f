"""The CUDA kernel source itself, run on the CPU (``gpu_verification/cuda_on_host.py``): the real executor
(``CudaExecutor`` over a simulated CuPy) launches the kernels of ``vae_kernels.cu`` built for
the host, and every launch is checked against its NumPy twin and against a run with threads
and blocks in reverse order (a race check). First, that the emulation itself can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gpu_verification import twins
from gpu_verification.cuda_on_host import HostModule, LaunchFailed, unavailable_reason

from bench.agreement import check
from kernels import create_backend
from kernels.cupy_gpu import CudaExecutor, CupyBackend, launch, program
from kernels.cupy_gpu.launch import NVRTC_OPTIONS, kernel_source
from vae_ref import VAEConfig, build_model, export_params
from vae_ref.fixture import read_fixture

FIXTURE = Path(__file__).parent / "fixtures" / "reference_z20.npz"

pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=unavailable_reason() or "")

# A block sum in shared memory, with and without the barrier between the writes and the
# read: the kind of bug a GPU shows only sometimes.
BLOCK_SUMS = r"""
extern "C" __global__ void block_sum(const float* __restrict__ x, float* __restrict__ out) {
    __shared__ float partial[4];
    partial[threadIdx.x] = x[blockIdx.x * 4 + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = partial[0] + partial[1] + partial[2] + partial[3];
}
extern "C" __global__ void block_sum_no_barrier(const float* __restrict__ x,
                                                float* __restrict__ out) {
    __shared__ float partial[4];
    partial[threadIdx.x] = x[blockIdx.x * 4 + threadIdx.x];
    if (threadIdx.x == 0) out[blockIdx.x] = partial[0] + partial[1] + partial[2] + partial[3];
}
extern "C" __global__ void shared_overflow(const float* __restrict__ x,
                                           float* __restrict__ out) {
    __shared__ float partial[4];
    partial[threadIdx.x + 1] = x[threadIdx.x];  // thread 3 writes partial[4]
    __syncthreads();
    if (threadIdx.x == 0) out[0] = partial[1];
}
extern "C" __global__ void divergent_barrier(float* __restrict__ out) {
    if (threadIdx.x < 2) __syncthreads();
    out[threadIdx.x] = 1.0f;
}
"""


@pytest.fixture(scope="module")
def block_sums():
    return HostModule(BLOCK_SUMS)


def _sums(module, name, reverse):
    x = np.arange(1, 13, dtype=np.float32)  # three blocks of four
    out = np.zeros(3, np.float32)
    module.launch(name, (3, 1, 1), (4, 1, 1), [x.ctypes.data, out.ctypes.data], reverse=reverse)
    return out


def test_a_barrier_orders_shared_memory_in_either_thread_order(block_sums):
    expected = [10, 26, 42]
    np.testing.assert_array_equal(_sums(block_sums, "block_sum", False), expected)
    np.testing.assert_array_equal(_sums(block_sums, "block_sum", True), expected)


def test_a_missing_barrier_gives_an_order_dependent_answer(block_sums):
    forward = _sums(block_sums, "block_sum_no_barrier", False)
    backward = _sums(block_sums, "block_sum_no_barrier", True)
    assert not np.array_equal(forward, backward)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_barrier_only_some_threads_reach_is_refused(block_sums, reverse):
    out = np.zeros(4, np.float32)
    with pytest.raises(LaunchFailed, match="__syncthreads"):
        block_sums.launch("divergent_barrier", (1, 1, 1), (4, 1, 1), [out.ctypes.data],
                          reverse=reverse)


def test_an_index_past_a_shared_array_is_refused(block_sums):
    if not block_sums.sanitized:
        pytest.skip("this C++ compiler has no UndefinedBehaviorSanitizer runtime")
    x, out = np.ones(4, np.float32), np.zeros(1, np.float32)
    with pytest.raises(LaunchFailed, match=r"(?s)undefined behaviour .*out of bounds"):
        block_sums.launch("shared_overflow", (1, 1, 1), (4, 1, 1), [x.ctypes.data,
                                                                     out.ctypes.data])


def test_an_empty_launch_is_refused(block_sums):
    out = np.zeros(4, np.float32)
    with pytest.raises(LaunchFailed, match="empty grid or block"):
        block_sums.launch("divergent_barrier", (0, 1, 1), (4, 1, 1), [out.ctypes.data])


def test_the_kernel_source_builds_for_the_host_with_the_options_nvrtc_gets():
    module = HostModule(kernel_source(), NVRTC_OPTIONS)  # CuPy's -ftz=true among them
    assert set(module.signatures) == set(twins.KERNELS)
    with pytest.raises(ValueError, match="no host equivalent"):
        HostModule(kernel_source(), (*NVRTC_OPTIONS, "--use_fast_math"))


# -- Adam, alone -----------------------------------------------------------------------------

def _aligned_zeros(n: int) -> np.ndarray:
    raw = np.zeros(n + 64, np.float32)
    start = (-raw.ctypes.data // 4) % 64  # 256 bytes, as cudaMalloc
    return raw[start : start + n]


@pytest.mark.parametrize("n, geometry", [
    (1, launch.Geometry((1, 1, 1), (32, 1, 1))),
    (7, launch.Geometry((1, 1, 1), (32, 1, 1))),  # one float4 and a tail of three
    (4 * 1000 + 3, launch.Geometry((2, 1, 1), (32, 1, 1))),  # each thread strides 15 times
    (4 * 1000 + 3, launch.across_the_device(1001, 132)),
])
def test_adam_updates_every_parameter_on_any_grid(n, geometry):
    """Four parameters per thread per pass, the last n % 4 one per thread, any grid: the
    kernel must touch each parameter once, as its twin does."""
    from gpu_verification.fake_cupy import twin_mismatch

    module = HostModule(kernel_source(), NVRTC_OPTIONS)
    rng = np.random.default_rng(n)
    state = {name: _aligned_zeros(n) for name in ("params", "grads", "m", "v")}
    for array in state.values():
        array[...] = rng.standard_normal(n).astype(np.float32) * 1e-3
    state["v"][...] = np.abs(state["v"])  # a second moment is not negative
    corrections = np.zeros(2, np.float32)
    step = np.array([3], np.uint32)
    module.launch("adam_bias_corrections", (1, 1, 1), (1, 1, 1),
                  [step.ctypes.data, 3e-4, 0.9, 0.999, corrections.ctypes.data])
    twin = {name: _aligned_zeros(n) for name in state}
    for name, array in state.items():
        twin[name][...] = array
    twin_corrections = np.zeros(2, np.float32)
    twins.adam_bias_corrections(launch.single_thread(), step, 3e-4, 0.9, 0.999,
                                twin_corrections)
    np.testing.assert_array_equal(corrections, twin_corrections)
    scalars = [np.float32(1 - 0.9), np.float32(0.999), np.float32(1 - 0.999), np.float32(1e-8)]
    before = state["params"].copy()
    module.launch("adam", geometry.grid, geometry.block,
                  [state["params"].ctypes.data, state["grads"].ctypes.data,
                   state["m"].ctypes.data, state["v"].ctypes.data, n, *scalars,
                   corrections.ctypes.data])
    twins.adam(geometry, twin["params"], twin["grads"], twin["m"], twin["v"], n, *scalars,
               twin_corrections)
    for name, array in state.items():
        assert twin_mismatch(array, twin[name]) is None, name
    assert (state["params"] != before).all()  # every parameter was updated


@pytest.mark.parametrize("kernels", ["twins", "source"])
def test_adam_before_any_step_takes_the_first_step(monkeypatch, kernels):
    """Adam timed alone on a fresh state (the stage breakdown's "adam" part may run before any
    step has advanced the device's step counter): 1 - beta^0 = 0 would make the step infinite
    and the weights NaN. It must be Adam's first step: each weight moves by about lr."""
    from gpu_verification import fake_cupy

    fake_cupy.install(monkeypatch, kernels=kernels)
    config = VAEConfig(latent_dim=4)
    backend = create_backend("cupy")
    backend.load(config, export_params(build_model(config)))
    grads = np.random.default_rng(0).standard_normal(backend.layout.size).astype(np.float32)
    backend.executor.copy_in(backend.flat["grads"], grads)
    adam = [op for op in backend._program("train", 8, True)
            if isinstance(op, program.Launch) and op.kernel in program.ADAM_KERNELS]
    before = backend.executor.download(backend.flat["params"])
    backend.executor.run(adam, backend._buffers(8))
    moved = backend.executor.download(backend.flat["params"]) - before
    assert np.isfinite(moved).all()
    # Step 1: m-hat = g, v-hat = g^2, so each weight moves by -lr g / (|g| + eps): about lr.
    # (Tolerance: float32 rounding of the weights, ~1e-8 at their size.)
    g = grads.astype(np.float64)
    np.testing.assert_allclose(moved, -config.lr * g / (np.abs(g) + 1e-8), rtol=1e-4, atol=3e-8)


# -- the step, with the source's kernels, through the real executor ------------------------

@pytest.fixture
def cuda_source(monkeypatch):
    from gpu_verification import fake_cupy

    fake_cupy.install(monkeypatch, kernels="source")
    return fake_cupy


@pytest.mark.slow
def test_the_kernel_source_passes_the_gate(cuda_source):
    backend = create_backend("cupy")
    for case, expected in read_fixture(FIXTURE):
        failed = [r.line() for r in check(backend, case, expected) if not r.passed]
        assert not failed


@pytest.mark.parametrize("latent, batch", [(5, 1), (2, 37), (7, 130)])
def test_the_kernel_source_at_odd_shapes(cuda_source, mnist5k, latent, batch):
    """Batch sizes of one row, an odd count, and more rows than one block of the per-row
    kernel; latent sizes that are not a multiple of Philox's four outputs. Every launch is
    checked against its twin and in reverse order; the graph and the plain path, given and
    drawn noise, and an epoch on the device must agree."""
    config = VAEConfig(latent_dim=latent)
    params = export_params(build_model(config))
    data = mnist5k.train_x[:400]
    rng = np.random.default_rng(latent)
    noise = rng.standard_normal((batch, latent)).astype(np.float32)
    indices = rng.integers(0, 400, batch)
    runs = []
    for graph in (True, False):
        backend = CupyBackend(CudaExecutor, graph=graph)
        backend.load(config, params)
        losses = [backend.train_step(data, indices, noise),
                  backend.train_step(data, np.arange(batch))]
        losses.append(backend.train_epoch(data, np.arange(min(400, 3 * batch))[::-1].copy(),
                                          batch).tolist())
        runs.append((losses, backend.params()))
    (losses_graph, params_graph), (losses_plain, params_plain) = runs
    assert losses_graph == losses_plain
    for name in params_graph:
        np.testing.assert_array_equal(params_graph[name], params_plain[name])


# The same checks on kernels broken on purpose: each mistake must be named at its launch.
BROKEN_KERNELS = {
    "a missing barrier": (
        "if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];\n"
        "        __syncthreads();",
        "if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];",
        "sigmoid_bce: bce differs when threads and blocks run in reverse order"),
    "a write past the end": (
        "out[i] = data[batch[r] * cols + c];",
        "out[i + 1] = data[batch[r] * cols + c];",
        "gather_rows: wrote past the end of the buffer out"),
    "a read past the end": (
        "r_sum += (double)bce[i];",
        "r_sum += (double)bce[i + 1];",
        "batch_loss: out differs from the twin: NaN in different places"),
    "an index past a shared array": (
        "for (int half = ROW_THREADS / 2; half > 0; half >>= 1) {",
        "for (int half = ROW_THREADS; half > 0; half >>= 1) {",
        r"(?s)sigmoid_bce .* undefined behaviour .*out of bounds"),
    "a wrong index": (
        "for (int k = 0; k < ROW_GROUPS; ++k) sum += partial[k][threadIdx.x];",
        "for (int k = 1; k < ROW_GROUPS; ++k) sum += partial[k][threadIdx.x];",
        "column_sum: out differs from the twin: .* elements beyond tolerance"),
}


@pytest.mark.parametrize("mistake", sorted(BROKEN_KERNELS))
def test_a_broken_kernel_is_caught_at_its_launch(cuda_source, monkeypatch, mnist5k, mistake):
    from kernels.cupy_gpu import executors

    correct, broken, message = BROKEN_KERNELS[mistake]
    source = kernel_source()
    assert correct in source, "the kernel changed: update this test's mutation"
    monkeypatch.setattr(executors, "kernel_source", lambda: source.replace(correct, broken))
    config = VAEConfig(latent_dim=4)
    backend = CupyBackend(CudaExecutor, graph=False)
    backend.load(config, export_params(build_model(config)))
    with pytest.raises(AssertionError, match=message):
        backend.train_step(mnist5k.train_x[:100], np.arange(16))
