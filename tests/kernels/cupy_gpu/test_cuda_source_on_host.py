"""The CUDA kernel source itself, run on the CPU (``gpu_verification/cuda_on_host.py``): the real executor
(``CudaExecutor`` over a simulated CuPy) launches the kernels of ``vae_kernels.cu`` built for
the host, and every launch is checked against its NumPy twin and against a run with threads
and blocks in reverse order (a race check). First, that the emulation itself can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_verification import twins
from gpu_verification.cuda_on_host import HostModule, LaunchFailed, unavailable_reason

from bench.gate import judge
from kernels import create_backend
from kernels.cupy_gpu import CudaExecutor, CupyBackend, launch, program
from kernels.cupy_gpu.launch import NVRTC_OPTIONS, kernel_source
from vae_ref import VAEConfig, build_model, export_params
from vae_ref.fixture import read_fixture
from vae_ref.fixtures import COMMITTED_FIXTURE as FIXTURE

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

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
        block_sums.launch(
            "divergent_barrier", (1, 1, 1), (4, 1, 1), [out.ctypes.data], reverse=reverse
        )


def test_an_index_past_a_shared_array_is_refused(block_sums):
    if not block_sums.sanitized:
        pytest.skip("this C++ compiler has no UndefinedBehaviorSanitizer runtime")
    x, out = np.ones(4, np.float32), np.zeros(1, np.float32)
    with pytest.raises(LaunchFailed, match=r"(?s)undefined behaviour .*out of bounds"):
        block_sums.launch("shared_overflow", (1, 1, 1), (4, 1, 1), [x.ctypes.data, out.ctypes.data])


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


@pytest.mark.parametrize(
    "n, geometry",
    [
        (1, launch.Geometry((1, 1, 1), (32, 1, 1))),
        (7, launch.Geometry((1, 1, 1), (32, 1, 1))),  # one float4 and a tail of three
        (4 * 1000 + 3, launch.Geometry((2, 1, 1), (32, 1, 1))),  # each thread strides 15 times
        (4 * 1000 + 3, launch.across_the_device(1001, 132)),
    ],
)
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
    module.launch(
        "adam_bias_corrections",
        (1, 1, 1),
        (1, 1, 1),
        [step.ctypes.data, 3e-4, 0.9, 0.999, corrections.ctypes.data],
    )
    twin = {name: _aligned_zeros(n) for name in state}
    for name, array in state.items():
        twin[name][...] = array
    twin_corrections = np.zeros(2, np.float32)
    twins.adam_bias_corrections(launch.single_thread(), step, 3e-4, 0.9, 0.999, twin_corrections)
    np.testing.assert_array_equal(corrections, twin_corrections)
    scalars = [np.float32(1 - 0.9), np.float32(0.999), np.float32(1 - 0.999), np.float32(1e-8)]
    before = state["params"].copy()
    module.launch(
        "adam",
        geometry.grid,
        geometry.block,
        [
            state["params"].ctypes.data,
            state["grads"].ctypes.data,
            state["m"].ctypes.data,
            state["v"].ctypes.data,
            n,
            *scalars,
            corrections.ctypes.data,
        ],
    )
    twins.adam(
        geometry, twin["params"], twin["grads"], twin["m"], twin["v"], n, *scalars, twin_corrections
    )
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
    adam = [
        op
        for op in backend._program("train", 8, True)
        if isinstance(op, program.Launch) and op.kernel in program.ADAM_KERNELS
    ]
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
        failed = [r.line() for r in judge(backend, case, expected) if not r.passed]
        assert not failed


@pytest.mark.parametrize("latent, batch", [(5, 1), (2, 37), (7, 130), (3, 300)])
def test_the_kernel_source_at_odd_shapes(cuda_source, mnist5k, latent, batch):
    """Batch sizes of one row, an odd count, more rows than one block of the per-row
    kernel, and enough rows for the column sums to be split into row chunks (two of 150 rows
    on the simulated 132 multiprocessors); latent sizes that are not a multiple of Philox's
    four outputs. Every launch is
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
        losses = [
            backend.train_step(data, indices, noise),
            backend.train_step(data, np.arange(batch)),
        ]
        losses.append(
            backend.train_epoch(data, np.arange(min(400, 3 * batch))[::-1].copy(), batch).tolist()
        )
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
        "sigmoid_bce: bce differs when threads and blocks run in reverse order",
    ),
    "a write past the end": (
        "out[i] = data[batch[r] * cols + c];",
        "out[i + 1] = data[batch[r] * cols + c];",
        "gather_rows: wrote past the end of the buffer out",
    ),
    "a read past the end": (
        "r_sum += (double)bce[i];",
        "r_sum += (double)bce[i + 1];",
        "batch_loss: out differs from the twin: NaN in different places",
    ),
    "an index past a shared array": (
        "for (int half = ROW_THREADS / 2; half > 0; half >>= 1) {",
        "for (int half = ROW_THREADS; half > 0; half >>= 1) {",
        r"(?s)sigmoid_bce .* undefined behaviour .*out of bounds",
    ),
    "a wrong index": (
        "for (int k = 0; k < ROW_GROUPS; ++k) sum += partial[k][threadIdx.x];",
        "for (int k = 1; k < ROW_GROUPS; ++k) sum += partial[k][threadIdx.x];",
        "column_sum: sums differs from the twin: .* elements beyond tolerance",
    ),
    "a row chunk left out of the second pass": (
        "for (int k = 1; k < chunks; ++k) total += sums[(long long)k * cols + c];",
        "for (int k = 1; k < chunks - 1; ++k) total += sums[(long long)k * cols + c];",
        "column_sum_chunks: out differs from the twin: .* elements beyond tolerance",
    ),
}
# A batch whose column sums are split into row chunks on the simulated device (132 SMs), for
# the mistakes only a second pass can make; the others take 16 rows.
BROKEN_KERNEL_BATCH = {"a row chunk left out of the second pass": 256}


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
    batch = BROKEN_KERNEL_BATCH.get(mistake, 16)
    with pytest.raises(AssertionError, match=message):
        backend.train_step(mnist5k.train_x[:100], np.arange(batch) % 100)


# -- the column sums alone, against their twins bit for bit --------------------------------
# The twins of the column sums add in the kernels' order, so how the rows are split into
# chunks and added back is checked exactly, not to a tolerance.


def _column_sum_inputs(rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gradients spanning six orders of magnitude (so that the order of the additions shows
    in the bits) and activations, about half of them positive."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-3, 3, (rows, cols))
    grad = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    return grad, rng.standard_normal((rows, cols)).astype(np.float32)


def _column_sum_of(
    run_kernel, relu: bool, grad: np.ndarray, act: np.ndarray, geometry: launch.Geometry
) -> tuple[np.ndarray, np.ndarray]:
    """A bias gradient's column sum as a step makes it: the first pass on ``geometry``, then,
    with more than one row chunk, the second. ``run_kernel(name, geometry, args)`` runs a
    kernel (the source or its twin) on flat arrays. Returns (the sums, grad after)."""
    rows, cols = grad.shape
    chunks = geometry.grid[1]
    grad = grad.copy().reshape(-1)
    out = np.zeros(cols, np.float32)
    sums = np.zeros(chunks * cols, np.float32) if chunks > 1 else out
    if relu:
        run_kernel("relu_backward_bias_grad", geometry, [grad, act.reshape(-1), sums, rows, cols])
    else:
        run_kernel("column_sum", geometry, [grad, sums, rows, cols])
    if chunks > 1:
        run_kernel("column_sum_chunks", launch.elementwise(cols), [sums, out, chunks, cols])
    return out, grad.reshape(rows, cols)


def _on_host(module: HostModule, reverse: bool = False):
    def run(name, geometry, args):
        addresses = [a.ctypes.data if isinstance(a, np.ndarray) else a for a in args]
        module.launch(name, geometry.grid, geometry.block, addresses, reverse=reverse)

    return run


def _as_twin(name, geometry, args):
    twins.KERNELS[name](geometry, *args)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32)


def _tiles(rows: int, cols: int, chunks: int) -> launch.Geometry:
    """The column sums' grid with any number of row chunks, not only the launcher's choice."""
    return launch.Geometry(
        (-(-cols // launch.COL_TILE), chunks, 1), (launch.COL_TILE, launch.ROW_GROUPS, 1)
    )


# (rows, cols, grid): the launcher's split of the heads' sum at batch 2048 on an H100
# (16 chunks); uneven tiles; chunks of unequal length; an empty last chunk; one chunk.
COLUMN_SUM_CASES = [
    (2048, 40, launch.column_tiles(2048, 40, 132)),
    (300, 70, _tiles(300, 70, 3)),
    (1000, 96, _tiles(1000, 96, 7)),
    (5, 33, _tiles(5, 33, 4)),
    (130, 45, _tiles(130, 45, 1)),
]


def _column_sum_mismatches(module: HostModule) -> list[str]:
    """Every case of COLUMN_SUM_CASES, both kernels: where the source (in either thread
    order) and the twins differ in a single bit."""
    found = []
    for rows, cols, geometry in COLUMN_SUM_CASES:
        grad, act = _column_sum_inputs(rows, cols, rows + cols)
        for relu in (False, True):
            where = (
                f"{'relu_backward_bias_grad' if relu else 'column_sum'} {rows}x{cols} on {geometry}"
            )
            twin = _column_sum_of(_as_twin, relu, grad, act, geometry)
            for reverse in (False, True):
                source = _column_sum_of(_on_host(module, reverse), relu, grad, act, geometry)
                for what, got, want in zip(("sums", "grad"), source, twin):
                    if not np.array_equal(_bits(got), _bits(want)):
                        order = "reverse" if reverse else "forward"
                        found.append(f"{where}: {what} differs ({order} thread order)")
    return found


@pytest.fixture(scope="module")
def host_kernels():
    return HostModule(kernel_source(), NVRTC_OPTIONS)


def test_column_sums_in_row_chunks_equal_their_twins_bit_for_bit(host_kernels):
    assert _column_sum_mismatches(host_kernels) == []


def _single_pass_order(values: np.ndarray) -> np.ndarray:
    """The column sums in the order of the kernel before rows were split into chunks, with
    plain loops: thread y adds rows y, y + ROW_GROUPS, ... in turn, then the ROW_GROUPS
    thread sums are added in order of y, each addition rounded to float32."""
    rows, cols = values.shape
    thread_sums = np.zeros((launch.ROW_GROUPS, cols), np.float32)
    for y in range(launch.ROW_GROUPS):
        for r in range(y, rows, launch.ROW_GROUPS):
            thread_sums[y] += values[r]
    total = np.zeros(cols, np.float32)
    for y in range(launch.ROW_GROUPS):
        total += thread_sums[y]
    return total


@pytest.mark.parametrize("rows", [1, 37, 128, 130, 1000])
def test_one_row_chunk_is_the_single_pass_sum_bit_for_bit(host_kernels, rows):
    """With one row chunk (every batch up to 2 x MIN_CHUNK_ROWS - 1, batch 128 among them)
    the sums are those of the single pass, bit for bit, from the source and the twins."""
    cols = 70
    assert launch.column_tiles(128, 512, 132).grid[1] == 1  # the launch-bound batch size
    geometry = _tiles(rows, cols, 1)
    grad, act = _column_sum_inputs(rows, cols, rows)
    masked = np.where(act > 0, grad, np.float32(0))
    for relu, summed in ((False, grad), (True, masked)):
        expected = _bits(_single_pass_order(summed))
        for run in (_on_host(host_kernels), _as_twin):
            sums, _ = _column_sum_of(run, relu, grad, act, geometry)
            np.testing.assert_array_equal(_bits(sums), expected)


# Summation orders changed on purpose, each of which leaves the sums within float rounding of
# the right ones: only the bit-for-bit comparison with the twins can tell. (source: correct
# text, its mutation), or (twin: the kernel's name, a replacement twin).
def _twin_adding_chunks_last_to_first(g, sums, out, chunks, cols):
    parts = sums[: chunks * cols].reshape(chunks, cols)
    total = parts[chunks - 1].copy()
    for k in range(chunks - 2, -1, -1):
        total += parts[k]
    out[:cols] = total


REORDERED_SUMS = {
    "the second pass adds the chunks last to first": (
        "source",
        (
            "float total = sums[c];\n"
            "        for (int k = 1; k < chunks; ++k) total += sums[(long long)k * cols + c];",
            "float total = sums[(long long)(chunks - 1) * cols + c];\n"
            "        for (int k = chunks - 2; k >= 0; --k) total += sums[(long long)k * cols + c];",
        ),
    ),
    "the first pass adds the thread sums last to first": (
        "source",
        (
            "for (int k = 0; k < ROW_GROUPS; ++k) sum += partial[k][threadIdx.x];",
            "for (int k = ROW_GROUPS - 1; k >= 0; --k) sum += partial[k][threadIdx.x];",
        ),
    ),
    "shorter row chunks, the last one taking the rest": (
        "source",
        (
            "int chunk = (rows - 1) / (int)gridDim.y + 1;\n"
            "    int first = (int)blockIdx.y * chunk;\n"
            "    int end = rows - first < chunk ? rows : first + chunk;",
            "int chunk = rows / (int)gridDim.y;\n"
            "    int first = (int)blockIdx.y * chunk;\n"
            "    int end = blockIdx.y + 1 == gridDim.y ? rows : first + chunk;",
        ),
    ),
    "the twin adds the chunks last to first": (
        "twin",
        ("column_sum_chunks", _twin_adding_chunks_last_to_first),
    ),
}


@pytest.mark.parametrize("mistake", sorted(REORDERED_SUMS))
def test_a_column_sum_in_another_order_is_caught(host_kernels, monkeypatch, mistake):
    side, (original, replacement) = REORDERED_SUMS[mistake]
    if side == "source":
        source = kernel_source()
        assert original in source, "the kernel changed: update this test's mutation"
        module = HostModule(source.replace(original, replacement), NVRTC_OPTIONS)
    else:
        monkeypatch.setitem(twins.KERNELS, original, replacement)
        module = host_kernels
    assert _column_sum_mismatches(module)
