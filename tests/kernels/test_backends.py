"""The backend interface: every registered backend honours it; the torch backends pass the
gate; bad input is refused with a clear message; training through the interface learns."""

import inspect

import numpy as np
import pytest

from bench.gate import judge
from bench.training import train_backend
from kernels import BACKENDS, FLOAT32_TWINS, Backend, create_backend
from kernels.base import (
    DeviceInfo,
    EpochRunner,
    LaunchFloor,
    MemoryReport,
    MixedPrecision,
    StageBreakdown,
    gemm_inputs_of,
)
from vae_ref import VAEConfig, build_model, export_params
from vae_ref.oracle import build_cases, expectation

PROTOCOLS = (
    Backend,
    EpochRunner,
    StageBreakdown,
    LaunchFloor,
    DeviceInfo,
    MemoryReport,
    MixedPrecision,
)


def protocol_problems(obj, protocol) -> list[str]:
    """Where ``obj`` does not honour ``protocol`` as a caller uses it: an attribute missing,
    or a method that cannot be called as the protocol's signature allows (every parameter by
    its kind, keyword-only ones by name). isinstance on a runtime-checkable protocol sees
    only that the names exist."""
    problems = []
    for name in sorted(
        getattr(protocol, "__protocol_attrs__", None) or typing_protocol_members(protocol)
    ):
        if not hasattr(obj, name):
            problems.append(f"no {name}")
            continue
        declared = getattr(protocol, name, None)
        if not callable(declared):
            continue
        wanted = list(inspect.signature(declared).parameters.values())[1:]  # less self
        positional = [object() for p in wanted if p.kind is p.POSITIONAL_OR_KEYWORD]
        keywords = {p.name: object() for p in wanted if p.kind is p.KEYWORD_ONLY}
        try:
            inspect.signature(getattr(obj, name)).bind(*positional, **keywords)
        except TypeError as error:
            problems.append(f"{name}: {error}")
    return problems


def typing_protocol_members(protocol) -> set[str]:
    """The members a protocol declares (Python < 3.12 has no __protocol_attrs__)."""
    from typing import _get_protocol_attrs  # type: ignore[attr-defined]

    return set(_get_protocol_attrs(protocol))


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_implements_the_protocol_and_reports_availability(name):
    backend = create_backend(name)
    assert protocol_problems(backend, Backend) == []
    for protocol in PROTOCOLS[1:]:
        if isinstance(backend, protocol):
            assert protocol_problems(backend, protocol) == [], protocol.__name__
    status = backend.availability()
    assert isinstance(status.available, bool)
    assert status.available or status.reason


def test_every_reduced_precision_backend_has_a_float32_twin_of_its_own_kind():
    """precision_cost and the profile set a bf16 or TF32 row beside its twin, found in the
    registry (a name's suffix once stood for it: a plugin's "foo-bf16" became "foo")."""
    made = {name: create_backend(name) for name in BACKENDS}
    reduced = {name for name, backend in made.items() if gemm_inputs_of(backend) != "float32"}
    assert set(FLOAT32_TWINS) == reduced
    for name, twin in FLOAT32_TWINS.items():
        assert gemm_inputs_of(made[twin]) == "float32", twin
        assert type(made[twin]) is type(made[name]), (name, twin)


def test_the_protocol_check_sees_a_signature_isinstance_does_not():
    class Torch(type(create_backend("torch"))):
        def train_step(self, data, indices, eps=None):  # no want_loss
            return super().train_step(data, indices, eps)

        def evaluate(self, x, seed=0):  # no batch_size
            return super().evaluate(x, seed=seed)

    wrong = Torch()
    assert isinstance(wrong, Backend)  # the names are all there
    assert [p.split(":")[0] for p in protocol_problems(wrong, Backend)] == [
        "evaluate",
        "train_step",
    ]
    assert protocol_problems(create_backend("torch"), Backend) == []


CUDA = create_backend("torch-cuda").availability()
ON_A_GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUDA.available, reason=CUDA.reason or "CUDA unavailable"),
]


@pytest.mark.parametrize(
    "name",
    [
        "torch",
        "torch-fused-adam",
        pytest.param("torch-compile", marks=pytest.mark.slow),
        *(pytest.param(name, marks=ON_A_GPU) for name in ("torch-cuda", "torch-cuda-compile")),
    ],
)
def test_torch_backends_pass_the_gate(gate_digits, name):
    case = build_cases(gate_digits, 10, steps=5)
    backend = create_backend(name)
    for c in (case[0], case[-1]):
        bad = [r.line() for r in judge(backend, c, expectation(c)) if not r.passed]
        assert not bad, bad


def available(name: str) -> Backend:
    backend = create_backend(name)
    if not backend.availability().available:
        pytest.skip(backend.availability().reason)
    return backend


@pytest.mark.parametrize("name", ["torch", "numba", "jax"])
def test_params_round_trip_through_every_available_backend(name):
    config = VAEConfig(latent_dim=6)
    params = export_params(build_model(config))
    backend = available(name)
    backend.load(config, params)
    back = backend.params()
    assert set(back) == set(params)
    assert all(np.array_equal(back[n], params[n]) for n in params)


@pytest.mark.parametrize("name", ["numba", "jax"])
def test_compiled_backends_evaluate_the_reference_terms_on_the_shared_noise(mnist5k, name):
    """evaluate: per-image terms averaged over batches (the last one short), with noise drawn
    batch by batch from default_rng(seed); the reference's own terms on that noise agree."""
    import torch

    from vae_ref import loss_terms

    config = VAEConfig(latent_dim=5)
    model = build_model(config).eval()
    backend = available(name)
    backend.load(config, export_params(model))
    x = mnist5k.test_x[:250]
    ours = backend.evaluate(x, seed=3, batch_size=100)
    rng, totals = np.random.default_rng(3), np.zeros(2)
    for start in (0, 100, 200):
        xb = torch.from_numpy(x[start : start + 100])
        eps = torch.from_numpy(rng.standard_normal((len(xb), 5), dtype=np.float32))
        with torch.no_grad():
            terms = loss_terms(model(xb, eps), xb, config)
        totals += [terms.reconstruction.double().sum().item(), terms.kl.double().sum().item()]
    reconstruction, kl = totals / len(x)
    assert ours.reconstruction == pytest.approx(reconstruction, rel=1e-5)
    assert ours.kl == pytest.approx(kl, rel=1e-4)
    assert ours.elbo == pytest.approx(-(ours.reconstruction + ours.kl))
    assert backend.evaluate(x, seed=4, batch_size=100).reconstruction != ours.reconstruction


@pytest.mark.parametrize("name", ["numba", "jax"])
def test_compiled_cpu_backends_refuse_bad_batches_before_compiled_code(name):
    """Numba's gather reads any address and XLA's clamps: each index is checked on the host
    (kernels/inputs.py), with the data set's bounds in the message."""
    backend = create_backend(name)
    if not backend.availability().available:
        pytest.skip(backend.availability().reason)
    config = VAEConfig(latent_dim=4)
    backend.load(config, export_params(build_model(config)))
    data = np.zeros((10, 784), np.float32)
    for bad in ([0, 10], [-1, 2]):
        with pytest.raises(IndexError, match=r"batch indices must lie in \[0, 10\)"):
            backend.train_step(data, np.array(bad))
    with pytest.raises(ValueError, match="indices must be a non-empty 1-D integer array"):
        backend.train_step(data, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"eps must have shape \(2, 4\)"):
        backend.train_step(data, np.array([0, 1]), np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"images must be a non-empty \(N, 784\) array"):
        backend.forward_backward(np.zeros((3, 783), np.float32), np.zeros((3, 4), np.float32))


def test_numba_records_the_threads_it_runs_not_those_asked_for():
    numba = pytest.importorskip("numba")
    config = VAEConfig(latent_dim=4)
    backend = create_backend("numba", threads=10_000)
    try:
        backend.load(config, export_params(build_model(config)))
        assert backend.settings()["threads"] == numba.get_num_threads()
        assert backend.settings()["threads"] <= numba.config.NUMBA_NUM_THREADS
    finally:
        create_backend("numba").load(config, export_params(build_model(config)))


@pytest.mark.parametrize("name", ["numba", "torch-fused-adam", "jax"])
def test_training_through_the_interface_learns_and_is_reproducible(mnist5k, name):
    config = VAEConfig(latent_dim=8, epochs=2, seed=3)
    x, t = mnist5k.train_x[:2000], mnist5k.test_x[:300]
    first = train_backend(available(name), config, x, t, progress=False)
    again = train_backend(create_backend(name), config, x, t, progress=False)
    assert first.history[1].test_elbo > first.history[0].test_elbo > -450  # untrained: ~ -543
    assert [r.test_elbo for r in first.history] == [r.test_elbo for r in again.history]


def test_numba_training_matches_the_reference_within_seed_noise(mnist5k):
    """Same data and settings, three seeds each: the backends' mean test ELBOs differ by less
    than the spread the seeds themselves produce (plus a nat)."""
    x, t = mnist5k.train_x, mnist5k.test_x
    ours, reference = [], []
    for seed in (0, 1, 2):
        config = VAEConfig(latent_dim=10, epochs=3, seed=seed)
        ours.append(
            train_backend(create_backend("numba"), config, x, t, progress=False).final.test_elbo
        )
        reference.append(
            train_backend(create_backend("torch"), config, x, t, progress=False).final.test_elbo
        )
    spread = max(np.ptp(ours), np.ptp(reference))
    assert abs(np.mean(ours) - np.mean(reference)) < spread + 1.0, (ours, reference)


def test_an_unavailable_backend_says_why_and_the_cli_exits_2(monkeypatch, capsys):
    import importlib.util

    from bench.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "numba" else real_find_spec(name, *a),
    )
    status = create_backend("numba").availability()
    assert not status.available and "numba is not installed (pip install numba)" in status.reason
    assert main(["check", "--backend", "numba", "--latents", "2"]) == 2
    assert "backend 'numba' is unavailable here: numba is not installed" in capsys.readouterr().err


def test_torch_compile_fails_loudly_at_its_variant_limit_instead_of_running_eagerly(monkeypatch):
    """Past dynamo's limit of compiled variants a function silently runs eagerly, which would
    time eager PyTorch under the name torch-compile. The limit is raised, and hitting it is an
    error naming the setting."""
    import torch._dynamo
    import torch._dynamo.config as dynamo

    from kernels import BackendFailed, pytorch

    torch._dynamo.reset()  # variants other tests compiled count toward the limit too
    limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    flags = [
        n for n in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit") if hasattr(dynamo, n)
    ]
    monkeypatch.setattr(pytorch, "RECOMPILE_LIMIT", 2)
    data = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    config = VAEConfig(latent_dim=3)
    # dynamo's own patch restores its settings afterwards (loading sets the flags).
    with dynamo.patch(**{limit: 2}, **{name: getattr(dynamo, name) for name in flags}):
        backend = create_backend("torch-compile")
        backend.load(config, export_params(build_model(config)))
        backend.train_step(data, np.arange(8))
        backend.train_step(data, np.arange(16))
        with pytest.raises(
            BackendFailed, match="limit of compiled variants .* RECOMPILE_LIMIT = 2"
        ):
            backend.train_step(data, np.arange(24))
