"""The pooled step (kernels/numba_cpu/pooled_step.py: one thread pool, oneMKL sequential in each
share) against the serial one (step.py), in both precisions it runs: bf16 (``numba-bf16``) and
float32 (``numba`` where oneMKL is installed and the CPU is Intel's); and which form ``numba``
picks, and why.

The runs need oneMKL (the ``[bf16]`` extra; CI installs it and sets VAE_BENCH_REQUIRE_BF16=1,
so there they may not skip). bf16 runs oneMKL's emulated path where the CPU has no bf16
hardware: the numbers are the same, only the speed is not."""

import functools
import importlib.util
import inspect

import numpy as np
import pytest
from conftest import require_onednn, require_onemkl

from kernels import create_backend
from kernels.numba_cpu import NumbaBackend, engines, float32_step_form, onemkl
from kernels.numba_cpu.bf16 import widen
from vae_ref import VAEConfig
from vae_ref.model import build_model
from vae_ref.params import export_params


def pooled_backend(precision: str) -> NumbaBackend:
    require_onemkl()
    backend = NumbaBackend(precision=precision, allow_emulated=True, step_form="pooled")
    if backend.engine == "onednn":
        require_onednn()
    return backend


def require_gradient_blocks() -> None:
    """Skip where the bf16 step's engine cannot pack an operand once (oneDNN, on an AMD Zen 4):
    its step takes no gradient blocks (engines.packs_b)."""
    engine = engines.in_process("bf16")
    if not engines.packs_b(engine):
        pytest.skip(f"the bf16 step's engine here, {engine}, takes no gradient blocks")


def serial_and_pooled_runs(precision: str, shares: int, batch: int, pooled=None, hidden: int = 16):
    """Two training steps from one state through step.py (the same kernels on one thread; in
    bf16 its bf16 form) and through ``pooled`` (default pooled_step) in ``shares`` shares:
    each run's loss, gradients, parameters, moments and the weights the GEMMs read (bf16
    copies; in float32 the weights themselves). Gradients where the run leaves them in
    ``grads``: where its workspace has gradient blocks (the pooled bf16 step from
    step.GRAD_BLOCKS_MIN_BATCH) Adam takes the weights' gradients from that scratch
    (pooled_step.weight_rows_update), and they are left out."""
    from kernels.numba_cpu import pooled_step, step

    backend = pooled_backend(precision)
    config = VAEConfig(latent_dim=3, hidden_dim=hidden)
    backend.load(config, export_params(build_model(config)))
    bf16 = precision == "bf16"
    rng = np.random.default_rng(batch)
    data = rng.random((max(batch, 64), config.input_dim), dtype=np.float32)
    draws = [
        (
            rng.integers(0, len(data), batch),
            rng.standard_normal((batch, config.latent_dim), dtype=np.float32),
        )
        for _ in range(2)
    ]
    state = (backend.flat, backend.flat16, backend.m, backend.v)
    start = [a.copy() for a in state]
    c, off = config, backend.layout.slot_offsets
    runs = []
    for module, split in ((step, None), (pooled or pooled_step, shares)):
        for live, saved in zip(state, start):
            live[:] = saved
        backend.grads[:] = np.nan  # what a step does not write stays NaN
        ws = step.make_workspace(
            batch, c.input_dim, c.hidden_dim, c.latent_dim, bf16=bf16, shares=split
        )
        # step.py's float32 form takes no weight copies (None); the pooled one reads them
        # from params16, which in float32 is the float32 buffer itself.
        params16 = backend.flat16 if bf16 or split else None
        losses = [
            module.train_step(
                data,
                indices,
                eps,
                backend.flat,
                params16,
                backend.grads,
                backend.m,
                backend.v,
                off,
                1.0,
                3e-4,
                0.9,
                0.999,
                1e-8,
                float(k + 1),
                ws,
            )
            for k, (indices, eps) in enumerate(draws)
        ]
        runs.append(
            {
                "loss": np.array(losses),
                "params": backend.flat.copy(),
                "m": backend.m.copy(),
                "v": backend.v.copy(),
                "params16": widen(backend.flat16) if bf16 else backend.flat.copy(),
            }
        )
        if ws.grad_blocks is None or ws.grad_blocks.size == 0:
            runs[-1]["grads"] = backend.grads.copy()
    return runs


def differing(serial: dict, pooled: dict) -> list[str]:
    """What differs beyond summation order. A different order can move a float32 result by
    an ulp, and where that result is a GEMM operand its bf16 rounding then flips now and then
    (one element's input off by 2^-8), so a few entries of a tensor may differ by more: held
    to a few float32 ulp are all but 1% of its entries (measured: at most 0.04%), and all to
    2% of its scale. In float32 the same bounds hold with room (measured: every entry within
    7e-7 of its tensor's scale)."""
    out = []
    for name in ("loss", "grads", "params", "m", "v", "params16"):
        if name not in pooled:
            continue
        a, b = serial[name], pooled[name]
        scale = np.abs(a).max()
        off = np.abs(b - a)
        if np.mean(off > 1e-5 * (scale + np.abs(a))) > 1e-2 or off.max() > 2e-2 * scale:
            out.append(name)
    return out


@pytest.mark.parametrize("precision", ["bf16", "float32"])
@pytest.mark.parametrize("shares", [1, 2, 3])
def test_the_pooled_step_is_the_serial_one_split_into_shares(precision, shares):
    """With 16 hidden units and 784 pixels, a batch of 7 splits each wide GEMM's output by
    columns, 40 the hidden layers' by rows and the output layer's by columns, and 900 every
    one by rows (pooled_step.output_block); each must give the serial step's numbers."""
    for batch in (7, 40, 900):
        serial, pooled = serial_and_pooled_runs(precision, shares, batch)
        assert not differing(serial, pooled), (precision, shares, batch)


# A batch the bf16 step takes in gradient blocks (step.GRAD_BLOCKS_MIN_BATCH or more).
BLOCKED_BATCH = 100


@pytest.mark.parametrize("shares", [2, 3])
def test_the_bf16_steps_blocks_of_gradient_rows_are_the_serial_steps_update(shares):
    """Pooled bf16 takes each weight's gradient a block of rows at a time, every block's GEMM
    reading one packed operand (pooled_step.weight_rows_update); with 512 hidden units a
    share's rows of the first and last weights span several blocks, the last one partial
    with 3 shares."""
    require_gradient_blocks()
    serial, pooled = serial_and_pooled_runs("bf16", shares, BLOCKED_BATCH, hidden=512)
    assert "grads" not in pooled  # the blocked form: the gradients stayed in scratch
    assert not differing(serial, pooled), shares


@pytest.mark.slow
@pytest.mark.parametrize(
    ("original", "mutated"),
    [
        # Each block one row short: the last row of every block is never updated.
        ("            b1 = min(b0 + rows, c1)\n", "            b1 = min(b0 + rows, c1) - 1\n"),
        # The shared operand packed without its first image: every block's GEMM reads a wrong
        # operand. (Not packing it at all is no mutant to run: oneMKL then reads a header of
        # zeros and the process dies of a division by zero.)
        (
            "            pack_b(rows, rows_of, packed)\n",
            "            pack_b(rows, rows_of[1:], packed)\n",
        ),
    ],
)
def test_the_comparison_fails_a_wrong_blocked_update(original, mutated):
    require_gradient_blocks()
    mutant = mutant_of_pooled_step(original, mutated)
    serial, pooled = serial_and_pooled_runs("bf16", 2, BLOCKED_BATCH, pooled=mutant, hidden=512)
    assert {"params", "m", "v"} <= set(differing(serial, pooled))


@functools.cache
def mutant_of_pooled_step(original: str, mutated: str):
    """pooled_step compiled afresh with one line of its source changed (and no on-disk
    cache, which would hold the real one's code); one module per mutation. Compiled serially
    (``parallel=False``: the shares' iterations in turn): the same arithmetic share by share,
    which is what the comparison judges, in less time (the parallel step itself is compared
    by the tests above)."""
    from kernels.numba_cpu import pooled_step

    source = inspect.getsource(pooled_step)
    assert source.count(original) == 1, original
    assert source.count("parallel=True") >= 2
    source = (
        source.replace(original, mutated)
        .replace("cache=True", "cache=False")
        .replace("parallel=True", "parallel=False")
    )
    spec = importlib.util.spec_from_loader("kernels.numba_cpu.pooled_step_mutant", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "kernels.numba_cpu"
    exec(compile(source, "<pooled_step mutant>", "exec"), module.__dict__)
    return module


@pytest.mark.slow
def test_a_mutant_without_its_mutation_passes_the_comparison():
    """The control of the mutants above and below: compiled as they are (serially), the
    pooled step unchanged is the serial one; so what they fail on is their mutation, not the
    way they were compiled."""
    line = "        return 0, m, c0, c1\n"
    unchanged = mutant_of_pooled_step(line, line)
    for batch, hidden in ((BLOCKED_BATCH, 512), (7, 16)):
        serial, pooled = serial_and_pooled_runs("bf16", 2, batch, pooled=unchanged, hidden=hidden)
        assert not differing(serial, pooled), batch


@pytest.mark.slow
def test_the_comparison_fails_a_pooled_step_whose_shares_miss_a_column():
    """Each share's column block one short (its last column never computed): the split the
    test above checks, done wrong, is seen. In bf16 (the precision that always runs pooled)
    only: the shares are computed by the same function in both, and each mutant's compile
    costs CI half a minute."""
    mutant = mutant_of_pooled_step(
        "        return 0, m, c0, c1\n", "        return 0, m, c0, c1 - 1\n"
    )
    serial, pooled = serial_and_pooled_runs("bf16", 2, 7, pooled=mutant)
    assert {"loss", "params"} <= set(differing(serial, pooled))


# -- which step numba runs --------------------------------------------------------------------


ZEN3 = ["sse4_2", "avx", "avx2", "fma", "f16c"]
ZEN4 = [*ZEN3, "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"]
SAPPHIRE_RAPIDS = [*ZEN4, "amx_tile", "amx_bf16"]


@pytest.mark.parametrize(
    "vendor, flags, form",
    [
        ("GenuineIntel", SAPPHIRE_RAPIDS, "pooled"),  # measured: 1.5x its GEMMs at batch 128
        ("GenuineIntel", ZEN3, "pooled"),
        ("AuthenticAMD", ZEN3, "pooled"),  # measured: 1.14-1.26x at batch 128
        ("AuthenticAMD", ZEN4, "serial"),  # not measured yet
        (None, ZEN3, "serial"),
        ("CentaurHauls", ZEN3, "serial"),
    ],
)
def test_numba_runs_pooled_where_measured_faster_and_serial_elsewhere(
    monkeypatch, vendor, flags, form
):
    import kernels.cpu_features as cpu_features

    monkeypatch.setattr(onemkl, "library_problem", lambda: None)
    monkeypatch.setattr(cpu_features, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(cpu_features, "cpu_isa", lambda: flags)
    chosen, why = float32_step_form()
    assert chosen == form, why
    assert float32_step_form(vendor or "", flags)[0] == form  # given, not read
    assert create_backend("numba").pooled == (form == "pooled")
    assert create_backend("numba-bf16").pooled  # bf16 has one form
    if form == "serial":
        assert f"{vendor or 'an unknown vendor'}'s" in why and "AVX-512" in why
    monkeypatch.setattr(onemkl, "library_problem", lambda: "oneMKL is not installed (pip ...)")
    assert float32_step_form() == ("serial", "oneMKL is not installed (pip ...)")


def test_a_pooled_step_asked_for_without_onemkl_is_unavailable_and_says_why(monkeypatch):
    monkeypatch.setattr(onemkl, "library_problem", lambda: "oneMKL is not installed (pip ...)")
    status = NumbaBackend(step_form="pooled").availability()
    assert not status.available and status.reason == "oneMKL is not installed (pip ...)"
    assert NumbaBackend(step_form="serial").availability().available


def test_step_forms_that_do_not_exist_are_refused():
    with pytest.raises(ValueError, match="step_form must be one of"):
        NumbaBackend(step_form="threaded")
    with pytest.raises(ValueError, match="bf16 step runs pooled only"):
        NumbaBackend(precision="bf16", step_form="serial")


@pytest.mark.parametrize("form", ["pooled", "serial"])
def test_numba_records_its_step_form_and_gemm_engine(form):
    backend = pooled_backend("float32") if form == "pooled" else NumbaBackend(step_form=form)
    config = VAEConfig(latent_dim=2, hidden_dim=16)
    backend.load(config, export_params(build_model(config)))
    settings = backend.settings()
    assert settings["step"].startswith(form + " (")
    if form == "pooled":
        assert settings["gemm_engine"] == "oneMKL cblas_sgemm"
        assert settings["step_shares"] == settings["threads"]
        assert settings["threading_layer"] in ("omp", "tbb", "workqueue")  # after its warm-up
        assert settings["gemm_choice"] == engines.why_in_process("float32")
        assert backend.flat16 is backend.flat  # the GEMMs read the float32 weights
    else:
        assert settings["gemm_engine"].startswith("NumPy BLAS")
        assert backend.flat16 is None


def test_the_pooled_step_takes_onemkl_back_to_one_thread_on_every_entry():
    """Another backend's load in the same process (the serial numba step's configure_threads
    limits every BLAS, oneMKL included, to its thread count) must not leave oneMKL's own pool
    running inside each of Numba's workers: the pooled backend sets it to one thread again
    whenever it enters its compiled step."""
    from threadpoolctl import threadpool_limits

    backend = pooled_backend("float32")
    config = VAEConfig(latent_dim=2, hidden_dim=16)
    backend.load(config, export_params(build_model(config)))
    assert onemkl.threads() == 1
    data = np.random.default_rng(0).random((8, config.input_dim), dtype=np.float32)
    for enter in (
        lambda: backend.train_step(data, np.arange(8)),
        lambda: backend.forward_backward(data, np.zeros((8, 2), np.float32)),
        lambda: backend.encode(data),
        lambda: backend.evaluate(data, batch_size=8),
    ):
        # What loading the serial numba backend does (configure_threads), at a count that
        # does not depend on this machine's CPUs.
        limit = threadpool_limits(limits=2, user_api="blas")  # noqa: F841  (kept alive)
        assert onemkl.threads() == 2
        enter()
        assert onemkl.threads() == 1


def test_the_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    from kernels.cpu_features import cpu_vendor

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: avx2\n")
    assert cpu_vendor(cpuinfo) == "AuthenticAMD"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # Arm: no vendor_id
    assert cpu_vendor(cpuinfo) is None
    assert cpu_vendor(tmp_path / "missing") is None
