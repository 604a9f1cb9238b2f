"""PyTorch on CUDA as a baseline: unavailable with a clear reason where there is no GPU; the
device code path (resident data set, indices and noise on the device, no wait when no loss is
wanted) matches the CPU path; on a GPU, matches the CPU backend (its gate: test_backends)."""

import numpy as np
import pytest
import torch

from kernels import BackendUnavailable, BatchLoss, create_backend
from kernels.pytorch import TorchBackend
from vae_ref import VAEConfig, build_model, evaluate_elbo, export_params

NO_CUDA_REASONS = (
    "this torch build has no CUDA (torch.version.cuda is None); install a CUDA build of torch",
    "no CUDA device visible (torch.cuda.is_available() is False)",
)
CUDA_STATUS = create_backend("torch-cuda").availability()
needs_gpu = pytest.mark.skipif(
    not CUDA_STATUS.available, reason=CUDA_STATUS.reason or "CUDA unavailable"
)


def fresh_params(latent=4, seed=0):
    config = VAEConfig(latent_dim=latent, seed=seed)
    return config, export_params(build_model(config))


def batch(n=16, latent=4, seed=1):
    rng = np.random.default_rng(seed)
    return (
        rng.random((n, 784), dtype=np.float32),
        rng.standard_normal((n, latent), dtype=np.float32),
    )


@pytest.mark.parametrize(
    "name, description",
    [
        ("torch-cuda", "PyTorch eager on CUDA, default Adam"),
        ("torch-cuda-compile", "torch.compile(mode='reduce-overhead') on CUDA, Adam(fused=True)"),
    ],
)
def test_cuda_backends_are_named_and_described(name, description):
    backend = create_backend(name)
    assert backend.name == name
    assert backend.description == description
    assert backend.settings()["device"] == "cuda"


def test_cpu_backends_keep_their_names():
    assert [create_backend(n).name for n in ("torch", "torch-fused-adam", "torch-compile")] == [
        "torch",
        "torch-fused-adam",
        "torch-compile",
    ]
    assert create_backend("torch").settings()["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("name", ["torch-cuda", "torch-cuda-compile"])
def test_cuda_backends_without_cuda_say_why(name):
    backend = create_backend(name)
    status = backend.availability()
    assert not status.available
    assert status.reason in NO_CUDA_REASONS
    config, params = fresh_params()
    with pytest.raises(BackendUnavailable, match="CUDA"):
        backend.load(config, params)


@pytest.mark.parametrize("name", ["torch", "torch-fused-adam", "torch-compile", "numba"])
def test_cpu_backends_return_the_loss_even_when_not_wanted(name):
    config, params = fresh_params()
    backend = create_backend(name)
    backend.load(config, params)
    x, eps = batch()
    result = backend.train_step(x, np.arange(8), eps[:8], want_loss=False)
    assert isinstance(result, BatchLoss)
    assert np.isfinite(result.loss)


def device_path_backend(**options):
    """A CPU backend driven through the device code path (what torch-cuda runs)."""
    backend = TorchBackend(**options)
    backend._resident = True
    return backend


@pytest.mark.parametrize("draw_noise", [False, True])
def test_the_device_path_matches_the_cpu_path(draw_noise):
    config, params = fresh_params()
    plain, device = TorchBackend(), device_path_backend()
    plain.load(config, params)
    device.load(config, params)
    data, _ = batch(n=40)
    rng = np.random.default_rng(2)
    for _ in range(3):
        indices = rng.integers(0, len(data), 8)
        eps = None if draw_noise else rng.standard_normal((8, 4), dtype=np.float32)
        assert device.train_step(data, indices, eps) == plain.train_step(data, indices, eps)
    assert device.train_step(data, np.arange(8), want_loss=False) is None
    plain.train_step(data, np.arange(8))
    device.synchronize()
    mine, theirs = device.params(), plain.params()
    assert all(np.array_equal(mine[n], theirs[n]) for n in theirs)


def test_the_device_path_uploads_a_data_set_once_per_array():
    config, params = fresh_params()
    backend = device_path_backend()
    backend.load(config, params)
    data, _ = batch(n=40)
    backend.train_step(data, np.arange(8))
    resident = backend._data_device
    backend.train_step(data, np.arange(8, 16))
    assert backend._data_device is resident
    other = data.copy()
    backend.train_step(other, np.arange(8))
    assert backend._data_device is not resident and backend._data_host is other
    with pytest.raises(IndexError, match=r"batch indices must lie in \[0, 40\)"):
        backend.train_step(other, np.array([0, 40]))


def test_device_path_evaluation_is_the_reference_evaluation():
    config, params = fresh_params()
    backend = device_path_backend()
    backend.load(config, params)
    x, _ = batch(n=50)
    assert backend.evaluate(x, seed=3, batch_size=20) == evaluate_elbo(
        backend.model, x, seed=3, batch_size=20
    )


def loaded_on_gpu(name):
    config, params = fresh_params()
    backend = create_backend(name)
    backend.load(config, params)
    reference = create_backend("torch")
    reference.load(config, params)
    return backend, reference


def assert_close(got, want, what):
    scale = max(1.0, float(np.max(np.abs(want))))
    error = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
    assert error <= 1e-4 * scale, f"{what}: max error {error:.3g} (scale {scale:.3g})"


@pytest.mark.gpu
@needs_gpu
def test_torch_cuda_forward_backward_matches_the_cpu_backend():
    gpu, cpu = loaded_on_gpu("torch-cuda")
    x, eps = batch()
    got, want = gpu.forward_backward(x, eps), cpu.forward_backward(x, eps)
    assert_close(got.loss, want.loss, "loss")
    assert_close(got.reconstruction, want.reconstruction, "reconstruction")
    assert_close(got.kl, want.kl, "kl")
    for name in want.intermediates:
        assert_close(got.intermediates[name], want.intermediates[name], name)
    for name in want.grads:
        assert_close(got.grads[name], want.grads[name], f"grad {name}")
    for got_part, want_part in zip(gpu.encode(x), cpu.encode(x)):
        assert_close(got_part, want_part, "encode")
    assert_close(gpu.decode(eps), cpu.decode(eps), "decode")
    assert_close(gpu.evaluate(x).elbo, cpu.evaluate(x).elbo, "evaluate")
    settings = gpu.settings()
    assert settings["gpu"] and settings["cuda"] == torch.version.cuda
    assert settings["matmul_allow_tf32"] is False and settings["cudnn_allow_tf32"] is False


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", ["torch-cuda", "torch-cuda-compile"])
def test_train_step_without_the_loss_returns_none_then_synchronizes(name):
    gpu, cpu = loaded_on_gpu(name)
    data, _ = batch(n=64)
    rng = np.random.default_rng(5)
    for _ in range(4):  # reduce-overhead records its CUDA graph after warm-up calls
        indices = rng.integers(0, len(data), 16)
        eps = rng.standard_normal((16, 4), dtype=np.float32)
        assert gpu.train_step(data, indices, eps, want_loss=False) is None
        cpu.train_step(data, indices, eps)
    gpu.synchronize()
    got = gpu.train_step(data, np.arange(16), np.zeros((16, 4), np.float32))
    want = cpu.train_step(data, np.arange(16), np.zeros((16, 4), np.float32))
    assert isinstance(got, BatchLoss)
    assert_close(np.array(got), np.array(want), "losses after 4 steps")
    assert gpu.train_step(data, np.arange(16)) is not None  # noise from the device generator
    gpu.synchronize()
    assert set(gpu.stage_times(data, 16, repeats=2)) <= {"forward+backward", "adam"}


def test_the_cuda_memory_is_the_allocators_peak_over_one_warm_step_less_the_data(monkeypatch):
    """torch-cuda's MemoryReport through the CUDA caching allocator's API, without a GPU: the
    device path on the CPU, with torch.cuda's statistics replaced by a ledger that counts the
    steps since the last reset. monkeypatch.setattr refuses a name torch.cuda lacks, so a
    renamed API fails here too."""
    config, params = fresh_params()
    backend = device_path_backend()
    backend.load(config, params)
    data, _ = batch(n=40)
    events, step_bytes = [], 3 << 20
    real_step = backend.train_step

    def step(*args, **kwargs):
        events.append("step")
        return real_step(*args, **kwargs)

    def peak(device=None):
        events.append("peak")
        resident = backend._data_device.numel() * backend._data_device.element_size()
        since_reset = events[events.index("reset") :].count("step") if "reset" in events else 2
        return resident + since_reset * step_bytes

    monkeypatch.setattr(backend, "train_step", step)
    monkeypatch.setattr(backend, "_cuda", True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    monkeypatch.setattr(
        torch.cuda, "reset_peak_memory_stats", lambda device=None: events.append("reset")
    )
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", peak)
    assert backend.peak_memory_bytes(data, 8) == step_bytes  # one step, the data set excluded
    # Warmed first (compiles and the allocator's first blocks are not the step's peak), the
    # statistics reset after the device finished, the step measured after it finished too.
    assert events == ["step", "sync", "reset", "step", "sync", "peak"]
    after = backend.params()
    assert all(np.array_equal(after[n], params[n]) for n in params)
