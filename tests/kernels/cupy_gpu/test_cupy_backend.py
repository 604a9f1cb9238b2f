"""The CuPy GPU backend, checked on the CPU: the launcher's contract with the CUDA source
(kernel names, parameters, argument types), the GEMM translation to cuBLAS's column-major
calls, launch geometry, the graph bookkeeping, and the whole step program run by the NumPy
twins of the kernels through the same agreement gate as every backend. The tests marked
``gpu`` run the real thing and skip, with the reason, where CuPy or a CUDA device is missing.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from checkout import ROOT
from gpu_verification import twins
from gpu_verification.cuda_on_host import C_DTYPES
from gpu_verification.numpy_executor import emulated_backend
from gpu_verification.philox import normal_noise

from bench.gate import judge
from kernels import create_backend
from kernels.cupy_gpu import CupyBackend, cuda_availability, launch, program
from kernels.cupy_gpu.gemm import GemmShapeError, plan_gemm
from kernels.cupy_gpu.launch import kernel_signatures, kernel_source
from kernels.flat_layout import make_layout
from vae_ref import VAEConfig, build_model, export_params
from vae_ref.fixture import read_fixture
from vae_ref.fixtures import COMMITTED_FIXTURE as FIXTURE
from vae_ref.oracle import build_cases, expectation

CUDA = cuda_availability()
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not CUDA.available, reason=CUDA.reason or "")


def loaded(config: VAEConfig, **options) -> CupyBackend:
    backend = emulated_backend(**options)
    backend.load(config, export_params(build_model(config)))
    return backend


# -- the launcher's contract with vae_kernels.cu ------------------------------------------------


def c_kernels() -> dict[str, list[tuple[str, str, bool]]]:
    """name -> [(C type without const/restrict, parameter name, is pointer)]"""
    return kernel_signatures(kernel_source())


def test_the_twins_are_exactly_the_kernels_the_source_defines():
    assert sorted(twins.KERNELS) == sorted(c_kernels())


@pytest.mark.parametrize("name", sorted(twins.KERNELS))
def test_each_twin_takes_the_kernels_parameters_in_order(name):
    twin_params = list(inspect.signature(twins.KERNELS[name]).parameters)[1:]  # after geometry
    assert twin_params == [pname for _, pname, _ in c_kernels()[name]]


def test_the_runtime_imports_no_verification_code_and_no_cupy():
    """The backend's modules, all imported, pull in nothing from tests/ (the twins, the NumPy
    executor, the simulated CuPy) and not CuPy itself (listing backends must work without it)."""
    import subprocess
    import sys

    modules = [f"kernels.cupy_gpu.{p.stem}" for p in launch.SOURCE_DIR.glob("*.py")]
    probe = f"import sys; import {', '.join(modules)}; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.split()
    assert "kernels.cupy_gpu.backend" in loaded
    assert not [
        m
        for m in loaded
        if m.split(".")[0]
        in ("tests", "gpu_verification", "fake_cupy", "cuda_on_host", "cupy", "cupyx")
    ]


def test_the_signature_parser_reads_types_names_and_pointers():
    """The runtime's list of kernels (what the CUDA executor loads) is parsed from the .cu."""
    code = (
        'extern "C" __global__ void k(const float* __restrict__ a, int n,\n'
        "                             unsigned long long seed, double*out) {}\n"
        "__global__ void not_exported(float* a) {}\n"
        'extern "C" __global__ void empty_kernel() {}'
    )
    assert kernel_signatures(code) == {
        "k": [
            ("float", "a", True),
            ("int", "n", False),
            ("unsigned long long", "seed", False),
            ("double", "out", True),
        ],
        "empty_kernel": [],
    }


def all_programs(config: VAEConfig, batch: int, multiprocessors: int = 132):
    layout = make_layout(config, align=64)
    mp = multiprocessors
    return {
        "train (noise drawn)": program.train_step_ops(
            config, layout, batch, generate_noise=True, multiprocessors=mp
        ),
        "train (noise given)": program.train_step_ops(
            config, layout, batch, generate_noise=False, multiprocessors=mp
        ),
        "forward+backward": program.forward_ops(config, layout, batch)
        + program.backward_ops(config, layout, batch, multiprocessors=mp),
    }


@pytest.mark.parametrize("latent", [2, 20, 50])
@pytest.mark.parametrize("batch", [48, 512])  # the column sums in one pass; in row chunks
def test_every_launch_passes_arguments_of_the_declared_c_types(latent, batch):
    """A RawKernel passes a Python float as a C double and an int64 as 8 bytes: an argument of
    the wrong type shifts every later one. Every launch is checked against the C signature,
    pointers against the element type of the buffer they name."""
    config = VAEConfig(latent_dim=latent)
    backend = loaded(config)
    buffers = backend._buffers(batch)
    buffers["data"] = np.zeros((10, 784), np.float32)
    # The programs below are sized for 132 multiprocessors, the backend's buffers for its 4.
    buffers |= {
        name: np.zeros(shape, dtype)
        for name, (shape, dtype) in program.workspace_shapes(config, batch, 132).items()
    }
    signatures = c_kernels()
    for label, ops in all_programs(config, batch).items():
        for op in program.launches(ops):
            declared = signatures[op.kernel]
            assert len(op.args) == len(declared), (label, op.kernel)
            for arg, (ctype, pname, pointer) in zip(op.args, declared):
                where = f"{label}: {op.kernel}({pname})"
                if pointer:
                    assert isinstance(arg, program.Buf | program.Null), where
                    if isinstance(arg, program.Buf):
                        assert buffers[arg.name].dtype == C_DTYPES[ctype], where
                else:
                    assert isinstance(arg, program.Scalar) and arg.ctype == ctype, where


def test_a_step_is_24_launches_of_which_11_are_gemms():
    backend = loaded(VAEConfig(latent_dim=20))
    assert backend.kernels_per_step(128) == {"fused kernels": 13, "gemms": 11}


# -- GEMMs: row-major products as column-major cuBLAS calls -------------------------------------


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_planned_gemm_computes_the_row_major_product(trans_a, trans_b, rng):
    m, k, n = 5, 7, 3
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    c = np.zeros((m, n), np.float32)
    call = plan_gemm(
        "c", "a", "b", {"a": a.shape, "b": b.shape, "c": c.shape}, trans_a=trans_a, trans_b=trans_b
    )
    twins.gemm(call, {"a": a, "b": b}[call.a], {"a": a, "b": b}[call.b], c)
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b)
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-6)
    assert call.flops == 2 * m * n * k


def test_gemm_shape_mismatch_names_the_operands():
    with pytest.raises(GemmShapeError, match=r"h \(4, 6\) = x \(4, 5\) @ w\^T \(6, 4\)"):
        plan_gemm("h", "x", "w", {"x": (4, 5), "w": (6, 4), "h": (4, 6)}, trans_b=True)


def test_the_steps_gemms_do_the_models_flops():
    from bench.throughput import step_flops

    config = VAEConfig(latent_dim=20)
    ops = all_programs(config, 128)["train (noise drawn)"]
    assert sum(call.flops for call in program.gemm_calls(ops)) == step_flops(config, 128)


# -- launch geometry ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 255, 256, 257, 128 * 784, 4096 * 784, 10**8])
def test_elementwise_grids_are_never_empty_and_capped(n):
    g = launch.elementwise(n)
    assert 1 <= g.grid[0] <= launch.MAX_ELEMENTWISE_BLOCKS
    assert g.threads >= min(n, launch.MAX_ELEMENTWISE_BLOCKS * launch.ELEMENTWISE_THREADS)


@pytest.mark.parametrize("items", [1, 1000, 208_960, 10**7])
@pytest.mark.parametrize("multiprocessors", [4, 108, 132])
def test_grids_sized_to_the_device_are_whole_waves_of_it(items, multiprocessors):
    g = launch.across_the_device(items, multiprocessors)
    blocks = g.grid[0]
    assert blocks % multiprocessors == 0  # the same number of blocks on each
    assert blocks <= multiprocessors * launch.BLOCKS_PER_MULTIPROCESSOR  # one wave at most
    full = multiprocessors * launch.BLOCKS_PER_MULTIPROCESSOR
    assert g.threads >= items or blocks == full  # every item, or the device full
    assert blocks - multiprocessors < -(-items // launch.ELEMENTWISE_THREADS)  # no spare row


def test_adams_grid_follows_the_device_and_its_bias_corrections_one_thread():
    config = VAEConfig(latent_dim=20)
    layout = make_layout(config, align=64)
    for multiprocessors in (4, 132):
        corrections, update = program.adam_ops(config, layout, multiprocessors)
        assert corrections.geometry.threads == 1
        assert update.geometry == launch.across_the_device(-(-layout.size // 4), multiprocessors)
    assert loaded(config).executor.multiprocessors == 4  # the twins' small device


@pytest.mark.parametrize("cols", [1, 31, 32, 33, 40, 512, 784])
@pytest.mark.parametrize("rows", [1, 127, 128, 300, 2048, 25_601, 65_536])
@pytest.mark.parametrize("multiprocessors", [4, 132])
def test_column_tiles_cover_every_column_and_row(cols, rows, multiprocessors):
    g = launch.column_tiles(rows, cols, multiprocessors)
    assert g.grid[0] * launch.COL_TILE >= cols > (g.grid[0] - 1) * launch.COL_TILE
    assert g.block == (launch.COL_TILE, launch.ROW_GROUPS, 1)
    chunks = g.grid[1]
    per_chunk = launch.chunk_rows(rows, chunks)
    assert chunks * per_chunk >= rows > (chunks - 1) * per_chunk  # every row; no empty chunk
    if chunks > 1:  # split only where each thread of a chunk still has rows to walk
        assert per_chunk >= launch.MIN_CHUNK_ROWS
        assert (
            g.grid[0] * (chunks - 1) < multiprocessors * launch.COLUMN_BLOCKS_PER_MULTIPROCESSOR
        )  # no spare wave


@pytest.mark.parametrize("cols", [512, 40, 784])  # H, 2z at z = 20, the images
def test_column_sums_at_batch_2048_split_the_rows_across_an_h100(cols):
    """One block per 32 columns is 16 blocks for H = 512 (2 for 2z = 40) on 132 SMs: the rows
    are split into chunks (gridDim.y) until the device has a block on every SM."""
    g = launch.column_tiles(2048, cols, 132)
    assert g.grid[1] > 1
    assert g.grid[0] * g.grid[1] >= min(132, 2048 // launch.MIN_CHUNK_ROWS * g.grid[0])


def test_column_sums_at_batch_128_stay_one_pass():
    """The launch-bound batch size gets no second pass: one launch per column sum, as before."""
    for cols in (512, 40, 784):
        assert launch.column_tiles(128, cols, 132).grid[1] == 1
    ops = all_programs(VAEConfig(latent_dim=20), 128)["train (noise drawn)"]
    assert "column_sum_chunks" not in {op.kernel for op in program.launches(ops)}
    assert "column_partials" not in program.workspace_shapes(VAEConfig(latent_dim=20), 128, 132)


def test_a_split_column_sum_is_added_up_by_a_second_pass_into_its_bias_gradient():
    config = VAEConfig(latent_dim=20)
    batch = 2048
    launches = program.launches(all_programs(config, batch)["train (noise drawn)"])
    partials = program.workspace_shapes(config, batch, 132)["column_partials"][0]
    sums = [
        (i, op)
        for i, op in enumerate(launches)
        if op.kernel in ("column_sum", "relu_backward_bias_grad")
    ]
    assert [op.args[-1].value for _, op in sums] == [784, 512, 40, 512]  # cols
    for i, first in sums:
        second = launches[i + 1]
        chunks, cols = first.geometry.grid[1], first.args[-1].value
        assert chunks > 1
        assert first.args[-3] == program.Buf("column_partials")
        assert second.kernel == "column_sum_chunks"
        assert second.args[0] == program.Buf("column_partials")
        assert second.args[1].name.startswith("g:") and second.args[1].name.endswith(".bias")
        assert (second.args[2].value, second.args[3].value) == (chunks, cols)
        assert second.geometry.threads >= cols
        assert partials >= (chunks * cols,)


def test_geometry_rejects_nonsense_sizes():
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            launch.elementwise(bad)


def test_sizes_beyond_32_bit_indices_are_refused_in_one_line_naming_them():
    """The kernels index with 32-bit integers: a buffer of 2^31 elements or more must be
    refused when the program is built, before any launch, naming the buffer and its sizes."""
    launch.elementwise(2**31 - 1)
    with pytest.raises(
        ValueError,
        match=r"^elementwise launch: 2,147,483,648 elements, more "
        r"than the kernels' 32-bit indices reach",
    ):
        launch.elementwise(2**31)
    config = VAEConfig(latent_dim=20)
    layout = make_layout(config, align=64)
    largest = (2**31 - 1) // config.input_dim  # the images are the widest buffers
    program.train_step_ops(config, layout, largest, generate_noise=True, multiprocessors=132)
    too_many = largest + 1
    builders = {
        "train": lambda: program.train_step_ops(
            config, layout, too_many, generate_noise=True, multiprocessors=132
        ),
        "forward": lambda: program.forward_ops(config, layout, too_many),
        "backward": lambda: program.backward_ops(config, layout, too_many, multiprocessors=4),
        "workspaces": lambda: program.workspace_shapes(config, too_many, 132),
    }
    for what, build in builders.items():
        with pytest.raises(ValueError) as refused:
            build()
        message = str(refused.value)
        assert "\n" not in message, what
        assert message.startswith(f"batch {too_many}: buffer "), (what, message)
        assert f"{too_many} x 784 = {too_many * 784:,} elements" in message, (what, message)
        assert "32-bit indices" in message, (what, message)


def test_block_sizes_reach_the_compiler_as_defines():
    for name, value in launch.COMPILE_DEFINES.items():
        assert f"-D{name}={value}" in launch.COMPILE_OPTIONS
    assert launch.ROW_THREADS & (launch.ROW_THREADS - 1) == 0  # tree reductions
    assert launch.LOSS_THREADS & (launch.LOSS_THREADS - 1) == 0


def test_twins_catch_launches_that_would_be_wrong_on_the_gpu():
    f = np.zeros(10, np.float32)
    with pytest.raises(twins.LaunchError, match="launch touches 12"):
        twins.bias_relu(launch.elementwise(12), f, np.zeros(4, np.float32), 3, 4)
    with pytest.raises(twins.LaunchError, match="launches 128 threads for 200 rows"):
        twins.reparameterize_kl(launch.one_thread_per_row(100), *[None] * 9, 200, 2)
    with pytest.raises(twins.LaunchError, match="expects int64"):
        twins.gather_rows(launch.elementwise(4), f, np.zeros(2, np.int32), None, 0, f, 2, 2, None)


# -- the whole program, run by the twins, through the agreement gate ----------------------------


@pytest.mark.parametrize("graph", [True, False])
def test_emulated_step_matches_the_committed_fixture(graph):
    backend = emulated_backend(graph=graph)
    for case, expected in read_fixture(FIXTURE):
        results = judge(backend, case, expected)
        failed = [r.line() for r in results if not r.passed]
        assert not failed


def test_emulated_step_passes_every_gate_case_at_latent_2(mnist5k):
    backend = emulated_backend()
    for case in build_cases(mnist5k.train_x[:256], 2, steps=4):
        failed = [r.line() for r in judge(backend, case, expectation(case)) if not r.passed]
        assert not failed, case.name


def test_graph_and_plain_paths_are_bitwise_identical(mnist5k):
    config = VAEConfig(latent_dim=8)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 1000, 64) for _ in range(3)]
    losses, params = [], []
    for graph in (True, False):
        backend = loaded(config, graph=graph)
        losses.append([backend.train_step(mnist5k.train_x[:1000], i) for i in batches])
        params.append(backend.params())
    assert losses[0] == losses[1]
    for name in params[0]:
        np.testing.assert_array_equal(params[0][name], params[1][name])


def test_drawn_noise_is_philox_keyed_by_seed_and_device_step(mnist5k):
    config = VAEConfig(latent_dim=6, seed=7)
    backend = loaded(config)
    data = mnist5k.train_x[:500]
    for step in (1, 2, 3):
        backend.train_step(data, np.arange(32))
        eps = backend.executor.download(backend._buffers(32)["eps"])
        np.testing.assert_array_equal(eps, normal_noise(7, step, 32, 6))
    assert int(backend.executor.download(backend.flat["step"])[0]) == 3


def test_one_capture_per_batch_size_and_noise_mode(mnist5k):
    backend = loaded(VAEConfig(latent_dim=4))
    data = mnist5k.train_x[:300]
    for _ in range(3):
        backend.train_step(data, np.arange(16))
        backend.train_step(data, np.arange(16), np.zeros((16, 4), np.float32))
        backend.train_step(data, np.arange(8))
    assert backend.executor.captures == 3
    # A new array of the same shape is copied into the resident buffer: graphs stay valid.
    backend.train_step(data.copy(), np.arange(16))
    assert backend.executor.captures == 3
    # Another shape is a new device buffer at a new address: the graphs are captured again.
    backend.train_step(data[:200], np.arange(16))
    assert backend.executor.captures == 4


def test_capturing_does_not_advance_the_state(mnist5k):
    """The first step of each graph runs once plainly (outside the capture) on the real state
    and restores it; the step counter and the parameters must show exactly one step."""
    config = VAEConfig(latent_dim=4)
    a, b = loaded(config, graph=True), loaded(config, graph=False)
    for backend in (a, b):
        backend.train_step(mnist5k.train_x[:100], np.arange(10))
    assert int(a.executor.download(a.flat["step"])[0]) == 1
    pa, pb = a.params(), b.params()
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name])


def test_want_loss_false_may_skip_the_loss(mnist5k):
    backend = loaded(VAEConfig(latent_dim=4))
    assert backend.train_step(mnist5k.train_x[:100], np.arange(10), want_loss=False) is None


def test_evaluate_matches_the_reference(mnist5k):
    import torch

    from vae_ref.evaluate import evaluate_elbo

    config = VAEConfig(latent_dim=5)
    model = build_model(config)
    backend = emulated_backend()
    backend.load(config, export_params(model))
    x = mnist5k.test_x[:300]
    ours = backend.evaluate(x, seed=3, batch_size=128)
    with torch.no_grad():
        ref = evaluate_elbo(model.eval(), x, seed=3, batch_size=128)
    assert abs(ours.reconstruction - ref.reconstruction) < 1e-3 * abs(ref.reconstruction)
    mu, logvar = backend.encode(x[:10])
    assert mu.shape == logvar.shape == (10, 5)
    assert backend.decode(mu).shape == (10, 784)


def test_bad_input_is_refused_before_any_kernel_runs(mnist5k):
    backend = loaded(VAEConfig(latent_dim=4))
    data = mnist5k.train_x[:50]
    with pytest.raises(IndexError, match=r"lie in \[0, 50\)"):
        backend.train_step(data, np.array([0, 50]))
    with pytest.raises(ValueError, match="1-D integer"):
        backend.train_step(data, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"eps must have shape \(2, 4\)"):
        backend.train_step(data, np.array([0, 1]), np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        backend.forward_backward(np.zeros((3, 10), np.float32), np.zeros((3, 4), np.float32))


def test_the_emulator_has_no_tf32():
    with pytest.raises(ValueError, match="TF32"):
        loaded(VAEConfig(latent_dim=4), tf32=True)


# -- without a GPU: listed, unavailable, with the reason ---------------------------------------


@pytest.mark.parametrize("name", ["cupy", "cupy-nograph", "cupy-tf32"])
def test_cupy_backends_say_why_they_are_unavailable(name):
    backend = create_backend(name)
    status = backend.availability()
    if CUDA.available:
        assert status.available
    else:
        assert not status.available and ("CuPy" in status.reason or "CUDA" in status.reason)
        from kernels.base import BackendUnavailable

        with pytest.raises(BackendUnavailable, match=name):
            config = VAEConfig(latent_dim=4)
            backend.load(config, export_params(build_model(config)))
        with pytest.raises(BackendUnavailable, match=name):
            backend.device_name()


@pytest.mark.parametrize("name", ["cupy", "cupy-nograph", "cupy-tf32"])
def test_cupy_backends_offer_their_capabilities_by_protocol(name):
    """What the harness may ask of the CuPy backends, asked as it asks: by protocol."""
    from kernels.base import (
        Backend,
        DeviceInfo,
        EpochRunner,
        LaunchFloor,
        MemoryReport,
        StageBreakdown,
    )

    backend = create_backend(name)
    for protocol in (Backend, EpochRunner, StageBreakdown, LaunchFloor, DeviceInfo, MemoryReport):
        assert isinstance(backend, protocol), protocol.__name__


def test_the_emulated_backend_describes_its_stand_in_device():
    backend = emulated_backend()
    assert backend.device == "cpu" and backend.name == "cupy-emulated"
    assert backend.device_name() == "the host CPU (NumPy twins of the kernels)"
    peak, how = backend.gemm_peak(size=32, repeats=2)
    assert peak > 0 and how == "32x32 float32 GEMM via the twin (NumPy's BLAS)"


# -- on a GPU --------------------------------------------------------------------------------


@gpu
@needs_gpu
@pytest.mark.parametrize("name", ["cupy", "cupy-nograph"])
def test_gpu_step_matches_the_committed_fixture(name):
    backend = create_backend(name)
    for case, expected in read_fixture(FIXTURE):
        failed = [r.line() for r in judge(backend, case, expected) if not r.passed]
        assert not failed


@gpu
@needs_gpu
def test_gpu_losses_are_bitwise_reproducible_and_graph_equals_plain(gate_digits):
    config = VAEConfig(latent_dim=20)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 1000, 128) for _ in range(20)]
    runs = []
    for name in ("cupy", "cupy", "cupy-nograph"):
        backend = create_backend(name)
        backend.load(config, export_params(build_model(config)))
        runs.append([backend.train_step(gate_digits[:1000], i) for i in batches])
    assert runs[0] == runs[1] == runs[2]


@gpu
@needs_gpu
def test_gpu_tf32_runs_and_stays_close(gate_digits):
    config = VAEConfig(latent_dim=20)
    params = export_params(build_model(config))
    losses = []
    for name in ("cupy", "cupy-tf32"):
        backend = create_backend(name)
        backend.load(config, params)
        losses.append(backend.train_step(gate_digits[:1000], np.arange(128)).loss)
    assert abs(losses[0] - losses[1]) < 1e-2 * abs(losses[0])


@gpu
@needs_gpu
def test_gpu_launch_floor_is_measured():
    backend = create_backend("cupy")
    backend.load(VAEConfig(latent_dim=20), export_params(build_model(VAEConfig(latent_dim=20))))
    floor = backend.launch_floor(128)
    assert floor["nodes"] == floor["launches"] == 24  # nothing captured yet: the program's
    assert 0 < floor["seconds_per_node"] < 1e-4
    backend.train_step(np.zeros((1000, 784), np.float32), np.arange(128), want_loss=False)
    captured = backend.launch_floor(128)  # the graph's own nodes: cuBLAS may add kernels
    assert captured["nodes"] >= 24 and captured["launches"] == 24
    stages = backend.stage_times(np.zeros((1000, 784), np.float32), 128, repeats=3)
    assert set(stages) == {"step", "gemms", "fused kernels", "adam"}
    assert all(t > 0 for t in stages.values())


# -- a whole epoch from a device-side permutation ------------------------------------------------


@pytest.mark.parametrize("graph", [True, False])
def test_an_epoch_on_the_device_equals_its_steps_one_by_one(mnist5k, graph):
    """train_epoch (permutation uploaded once, a device batch cursor, one graph replayed) takes
    the same batches, draws the same noise and reaches the same weights, bit for bit, as
    train_step called per batch; the last, shorter batch included."""
    config = VAEConfig(latent_dim=6)
    data = mnist5k.train_x[:300]
    order = np.random.default_rng(0).permutation(len(data))
    by_epoch, by_step = loaded(config, graph=graph), loaded(config, graph=graph)
    history = by_epoch.train_epoch(data, order, 64)
    steps = [by_step.train_step(data, order[k : k + 64]) for k in range(0, len(order), 64)]
    assert history.shape == (5, 3)  # 300 = 4 x 64 + 44
    np.testing.assert_array_equal(history, np.array(steps))
    for name, value in by_epoch.params().items():
        np.testing.assert_array_equal(value, by_step.params()[name])
    # A second epoch reuses the graphs and restarts the cursor.
    captures = by_epoch.executor.captures
    again = by_epoch.train_epoch(data, order[::-1].copy(), 64)
    assert again.shape == (5, 3) and np.isfinite(again).all()
    assert by_epoch.executor.captures == captures


def test_epoch_input_is_checked(mnist5k):
    backend = loaded(VAEConfig(latent_dim=4))
    data = mnist5k.train_x[:50]
    with pytest.raises(IndexError, match=r"order must lie in \[0, 50\)"):
        backend.train_epoch(data, np.array([0, 50]), 8)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        backend.train_epoch(data, np.arange(10), 0)


def test_training_through_the_harness_uses_the_device_epoch(mnist5k):
    from bench.training import train_backend

    config = VAEConfig(latent_dim=4, epochs=2, batch_size=100)
    backend = emulated_backend()
    calls = []
    original = backend.train_epoch
    backend.train_epoch = lambda *a: calls.append(a[2]) or original(*a)
    result = train_backend(
        backend, config, mnist5k.train_x[:250], mnist5k.test_x[:100], progress=False
    )
    assert calls == [100, 100] and len(result.history) == 2
    assert result.history[-1].train_elbo > result.history[0].train_elbo - 50


@gpu
@needs_gpu
def test_gpu_epoch_equals_its_steps(gate_digits):
    config = VAEConfig(latent_dim=20)
    data = gate_digits[:1000]
    order = np.random.default_rng(0).permutation(len(data))
    by_epoch, by_step = create_backend("cupy"), create_backend("cupy")
    for backend in (by_epoch, by_step):
        backend.load(config, export_params(build_model(config)))
    history = by_epoch.train_epoch(data, order, 128)
    steps = [by_step.train_step(data, order[k : k + 128]) for k in range(0, len(order), 128)]
    np.testing.assert_array_equal(history, np.array(steps))


def test_stage_breakdown_times_each_part_and_restores_the_state(mnist5k):
    """The GPU breakdown's bookkeeping, run by the twins with tiny counts (their times mean
    nothing; on the CPU the public stage_times returns none)."""
    backend = loaded(VAEConfig(latent_dim=4))
    data = mnist5k.train_x[:100]
    backend.train_step(data, np.arange(16))
    before = backend.params()
    assert backend.stage_times(data, 16) == {}
    times = backend._stage_times(data, 16, repeats=2, replays=2)
    assert set(times) == {"step", "gemms", "fused kernels", "adam"}
    assert all(t > 0 for t in times.values())
    for name, value in backend.params().items():
        np.testing.assert_array_equal(value, before[name])
    assert int(backend.executor.download(backend.flat["step"])[0]) == 1


# -- the CUDA executor's own code, on a simulated CuPy (tests/gpu_verification/fake_cupy.py) ---------------------


@pytest.fixture
def simulated_cuda(monkeypatch, request):
    """The simulated CuPy, as CuPy 14.2 (the GPU machines'), or the version parametrized."""
    from gpu_verification import fake_cupy

    fake_cupy.install(monkeypatch, version=getattr(request, "param", "14.2.0"))
    return fake_cupy


BOTH_CUPYS = pytest.mark.parametrize("simulated_cuda", ["13.6.0", "14.2.0"], indirect=True)


@pytest.mark.parametrize("name", ["cupy", "cupy-nograph"])
def test_cuda_executor_passes_the_gate_on_a_simulated_cupy(simulated_cuda, name):
    """The executor's pointers, cuBLAS argument order, typed kernel arguments, staging copies
    and graph capture, with device memory and kernels simulated on the host: the whole step
    must still agree with the reference."""
    backend = create_backend(name)
    assert backend.availability().available
    for case, expected in read_fixture(FIXTURE):
        failed = [r.line() for r in judge(backend, case, expected) if not r.passed]
        assert not failed
    assert backend.settings()["gpu"].startswith("Simulated GPU")


def test_both_executors_do_everything_the_backend_asks_of_an_executor(simulated_cuda):
    """The stand-in that the CPU tests run the backend on answers to every member of the
    Executor protocol, as the CUDA executor does."""
    from gpu_verification.numpy_executor import NumpyExecutor

    from kernels.cupy_gpu.executors import CudaExecutor, Executor

    members = [
        name for name in (*vars(Executor), *Executor.__annotations__) if not name.startswith("_")
    ]
    assert {"run", "capture", "replay", "device_name", "multiprocessors"} <= set(members)
    for executor in (CudaExecutor(), NumpyExecutor()):
        missing = [name for name in members if not hasattr(executor, name)]
        assert not missing, (type(executor).__name__, missing)


@BOTH_CUPYS
@pytest.mark.parametrize("name, compute", [("cupy", "TF32 off"), ("cupy-tf32", "TF32")])
def test_the_device_is_described_by_the_backend_on_a_simulated_cupy(simulated_cuda, name, compute):
    """DeviceInfo before any load (the executor is made on first need, once): the device's
    name from its properties, and the GEMM peak measured through the backend's own cuBLAS
    handle with its compute type (the simulation's clock says 1 ms a product)."""
    backend = create_backend(name)
    assert backend.device_name() == "Simulated GPU (tests/gpu_verification/fake_cupy.py)"
    executor = backend.executor
    peak, how = backend.gemm_peak(size=48, repeats=2)
    assert (
        how == f"48x48 float32 GEMM via cuBLAS (cublasGemmEx, as the backend calls it), {compute}"
    )
    assert peak == pytest.approx(2 * 48**3 / 1e-3 / 1e9)
    config = VAEConfig(latent_dim=4)
    backend.load(config, export_params(build_model(config)))
    assert backend.executor is executor  # made once


@BOTH_CUPYS
def test_cuda_executor_epoch_and_timing_aids_on_a_simulated_cupy(simulated_cuda, mnist5k):
    config = VAEConfig(latent_dim=6)
    params = export_params(build_model(config))
    data = mnist5k.train_x[:300]
    order = np.random.default_rng(0).permutation(len(data))
    cuda = create_backend("cupy")
    cuda.load(config, params)
    twin = emulated_backend()
    twin.load(config, params)
    np.testing.assert_array_equal(
        cuda.train_epoch(data, order, 64), twin.train_epoch(data, order, 64)
    )
    assert cuda.train_step(data, order[:64], want_loss=False) is None
    assert cuda.kernels_per_step(64) == {"fused kernels": 13, "gemms": 11}
    assert cuda.launch_floor(64)["nodes"] == 24  # counted in the captured graph
    assert cuda.executor.graph_nodes(next(iter(cuda._graphs.values()))) == 24
    assert set(cuda.stage_times(data, 64, repeats=1, replays=1)) == {
        "step",
        "gemms",
        "fused kernels",
        "adam",
    }


@pytest.mark.slow
@BOTH_CUPYS
def test_the_harness_runs_the_gpu_profile_on_a_simulated_cupy(
    simulated_cuda, monkeypatch, tmp_path, capsys
):
    """The harness's GPU paths — the GPU's GEMM peak through CuPy, the device and launch-floor
    columns, the GPU lines of the summary, compare on a GPU table — before any GPU runs them.
    On CuPy 13 as on 14: CuPy 13's own Graph has dropped its cudaGraph_t by the time it is
    returned, so counting the launch floor's nodes through it failed, and took the run with
    it."""
    import pandas as pd

    from bench.cli import main

    peak, stages = CupyBackend.gemm_peak, CupyBackend.stage_times
    monkeypatch.setattr(
        CupyBackend,
        "gemm_peak",  # a small product: the simulation is slow
        lambda self: peak(self, size=64, repeats=1),
    )
    monkeypatch.setattr(
        CupyBackend,
        "stage_times",  # the simulation's times mean nothing
        lambda self, data, batch, repeats=1: stages(self, data, batch, 1, 1),
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--preset",
                "gpu",
                "--backends",
                "cupy",
                "--latents",
                "2",
                "--batch-sizes",
                "64",
                "--epochs",
                "1",
                "--repeats",
                "1",
                "--window-steps",
                "2",
                "--iwae-k",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = pd.read_csv(out / "results.csv")
    row = rows[rows.backend == "cupy"].iloc[0]
    assert row.device == "cuda" and row.agreement == "pass"
    assert row.launch_floor_ms > 0 and np.isfinite(row.final_test_elbo)
    summary = (out / "summary.md").read_text()
    assert (
        "GPU Simulated GPU" in summary
        and "via cuBLAS (cublasGemmEx, as the backend calls it), TF32 off" in summary
    )
    capsys.readouterr()
    assert main(["compare", str(out), str(out)]) == 0


@BOTH_CUPYS
def test_captured_graphs_are_destroyed_when_dropped(simulated_cuda, mnist5k):
    """The executor owns its graphs: each cudaGraph_t is destroyed once instantiated (its
    nodes counted first), each executable graph when the graph object goes."""
    import gc

    gc.collect()
    before = simulated_cuda.live_graphs()
    backend = create_backend("cupy")
    config = VAEConfig(latent_dim=4)
    backend.load(config, export_params(build_model(config)))
    data = mnist5k.train_x[:100]
    backend.train_step(data, np.arange(16))
    backend.train_step(data, np.arange(8))
    assert simulated_cuda.live_graphs() == before + 2  # two executable graphs, no cudaGraph_t
    assert backend.launch_floor(16)["nodes"] == 24
    assert simulated_cuda.live_graphs() == before + 2  # the probe's graph is gone too
    del backend
    gc.collect()
    assert simulated_cuda.live_graphs() == before


@BOTH_CUPYS
def test_an_error_while_capturing_is_the_error_raised(simulated_cuda, monkeypatch, mnist5k):
    """A call CUDA refuses during capture fails and invalidates the capture, so ending the
    capture fails as well; the first error must be the one reported (the second is a note),
    and the stream must be usable afterwards."""
    from kernels.cupy_gpu.executors import CudaExecutor

    backend = create_backend("cupy")
    config = VAEConfig(latent_dim=4)
    backend.load(config, export_params(build_model(config)))
    plain_run = CudaExecutor.run

    def run_then_wait(self, ops, buffers):  # a synchronization slipped into the program
        plain_run(self, ops, buffers)
        self.stream.synchronize()

    monkeypatch.setattr(CudaExecutor, "run", run_then_wait)
    ops = backend._program("forward", 16)
    with pytest.raises(
        simulated_cuda.CUDARuntimeError, match="cudaErrorStreamCaptureUnsupported"
    ) as caught:
        backend.executor.capture(ops, backend._buffers(16))
    assert any(
        "cudaErrorStreamCaptureInvalidated" in note
        for note in getattr(caught.value, "__notes__", caught.value.args)
    )
    monkeypatch.setattr(CudaExecutor, "run", plain_run)
    graph = backend.executor.capture(ops, backend._buffers(16))  # no capture left open
    assert backend.executor.graph_nodes(graph) == len(ops)


def test_the_step_memory_is_every_device_buffer_it_holds_but_the_data(mnist5k):
    """The flat buffers, the batch's workspaces (counted once, views excluded), not the
    resident data set; more with a larger batch; the epoch's buffers once there is one."""
    backend = emulated_backend()
    config = VAEConfig(latent_dim=4)
    backend.load(config, export_params(build_model(config)))
    data = mnist5k.train_x[:300]
    flat = 4 * backend.layout.size * 4 + 4  # params, grads, m, v (float32) and the counter
    small, large = backend.peak_memory_bytes(data, 16), backend.peak_memory_bytes(data, 64)
    assert flat < small < large
    # 48 more images: at least their pixels, logits and logits' gradient (3 x 784 floats).
    assert large - small >= 48 * 3 * 784 * 4
    assert small < flat + 16 * 8 * 784 * 4 + 4096  # and no data set (300 x 784 floats)
    # At 512 rows the heads' column sum (8 wide) is split into row chunks on the twins' four
    # multiprocessors: its scratch buffer is held, and counted, with the other workspaces.
    shapes = program.workspace_shapes(config, 512, backend.executor.multiprocessors)
    assert shapes["column_partials"] == ((launch.column_chunks(512, 8, 4) * 8,), np.float32)
    workspaces = sum(
        int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values()
    )
    assert backend.peak_memory_bytes(data, 512) == flat + workspaces
    backend.train_epoch(data, np.arange(300), 16)
    assert backend.peak_memory_bytes(data, 16) > small  # the epoch's order and losses
