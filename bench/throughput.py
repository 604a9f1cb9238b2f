"""Steady-state training throughput, measured the way the harness promises: every backend
warmed up first (compile time reported apart), timed windows interleaved across backends
(A B C A B C ...) so machine drift hits all alike, medians with min-max, and the effective
GFLOP/s as a fraction of this machine's GEMM peak measured in the same process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from kernels.base import (
    Backend,
    DeviceInfo,
    LaunchFloor,
    MemoryReport,
    StageBreakdown,
    gemm_inputs_of,
)
from kernels.timing import interleaved_times
from vae_ref import VAEConfig, build_model, export_params

from . import tables
from .run_presets import PROFILE_WINDOW_STEPS, PROFILE_WINDOWS


def step_flops(config: VAEConfig, batch: int) -> int:
    """FLOPs of one training step's 11 GEMMs (everything else is O(B (D + H)))."""
    d, h, z = config.input_dim, config.hidden_dim, config.latent_dim
    # forward: x W1^T, heads, decoder fc1, output: 2DH + 3ZH multiply-adds per image;
    # backward: dW_out, d dec_h, dW_dec, dz, dW_heads, dh, dW1: 3DH + 6ZH.
    return 2 * batch * (5 * d * h + 9 * z * h)


def gemm_peak(size: int = 2048, repeats: int = 5) -> tuple[float, str]:
    """Best GFLOP/s of a large float32 GEMM on this CPU, over numpy's BLAS and PyTorch's."""
    import torch

    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    out = np.empty_like(a)
    ta, tout = torch.from_numpy(a), torch.from_numpy(out)
    times = interleaved_times(
        {"numpy BLAS": lambda: np.dot(a, a, out), "torch": lambda: torch.mm(ta, ta, out=tout)},
        repeats,
    )
    best = {name: 2 * size**3 / min(t) / 1e9 for name, t in times.items()}
    name = max(best, key=best.__getitem__)
    return best[name], f"{size}x{size} float32 GEMM via {name}"


def bf16_gemm_peak(size: int = 2048, repeats: int = 5) -> tuple[float, str]:
    """Best GFLOP/s of a large GEMM on bf16 operands with float32 accumulation on this CPU,
    through PyTorch (oneDNN; AMX tiles where the CPU has them; its output rounded to bf16):
    the physical limit of a bf16 step, as ``gemm_peak`` is of a float32 one."""
    import torch

    a = torch.randn(size, size).to(torch.bfloat16)
    out = torch.empty(size, size, dtype=torch.bfloat16)
    seconds = min(interleaved_times({"mm": lambda: torch.mm(a, a, out=out)}, repeats)["mm"])
    return 2 * size**3 / seconds / 1e9, f"{size}x{size} bf16 GEMM via torch"


def peak_key(device: str, precision: str) -> str:
    """The key of ``device_peaks`` a row of this device and GEMM precision is measured by."""
    return device if precision == "float32" else f"{device} {precision}"


def step_gemms(config: VAEConfig, batch: int, seed: int = 0):
    """A callable running one training step's 11 GEMMs alone (the shapes ``step_flops``
    counts), with NumPy's BLAS on contiguous float32 operands into preallocated outputs, as
    a fused CPU step would: the ceiling of a CPU step that calls NumPy's BLAS. (A step with
    a GEMM engine of its own can pass it: Numba's pooled step calls oneMKL on each worker's
    share; a numba row's own GEMMs are in its stage breakdown.)"""
    d, h, z, b = config.input_dim, config.hidden_dim, config.latent_dim, batch
    rng = np.random.default_rng(seed)

    def a(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    x, w1, w_heads, w_dec, w_out = a(b, d), a(h, d), a(2 * z, h), a(h, z), a(d, h)
    hid, heads, code, dec, logits = a(b, h), a(b, 2 * z), a(b, z), a(b, h), a(b, d)
    g_out, g_dec, g_heads, g_w1 = a(d, h), a(h, z), a(2 * z, h), a(h, d)
    d_dec, d_code, d_hid = a(b, h), a(b, z), a(b, h)
    products = [  # forward, then backward (output layer first)
        (x, w1.T, hid),
        (hid, w_heads.T, heads),
        (code, w_dec.T, dec),
        (dec, w_out.T, logits),
        (logits.T, dec, g_out),
        (logits, w_out, d_dec),
        (d_dec.T, code, g_dec),
        (d_dec, w_dec, d_code),
        (heads.T, hid, g_heads),
        (heads, w_heads, d_hid),
        (d_hid.T, x, g_w1),
    ]

    def run() -> None:
        for left, right, out in products:
            np.dot(left, right, out)

    return run


def device_peaks(backends: list[Backend]) -> dict[str, tuple[float, str, str]]:
    """(GFLOP/s, how measured, device name) of each device the available ``backends`` use:
    the host CPU measured here (``gemm_peak``), an accelerator by the first of its backends
    of each GEMM precision that describes it (``DeviceInfo``), so the harness never needs the
    library behind it."""
    from .provenance import cpu_model

    peaks = {"cpu": (*gemm_peak(), cpu_model())}
    if any(b.device == "cpu" and gemm_inputs_of(b) == "bf16" for b in backends):
        peaks[peak_key("cpu", "bf16")] = (*bf16_gemm_peak(), cpu_model())
    for backend in backends:
        # A mixed-precision accelerator backend (cupy-tf32) measures its own precision's peak.
        key = peak_key(backend.device, gemm_inputs_of(backend))
        if key in peaks or not isinstance(backend, DeviceInfo):
            continue
        if backend.availability().available:
            peaks[key] = (*backend.gemm_peak(), backend.device_name())
    return peaks


class TimingColumns(TypedDict):
    """A measurement's columns of the results table (``Measurement.columns``), typed as
    ``tables.ResultRow`` types them."""

    samples_per_s: float
    samples_per_s_min: float
    samples_per_s_max: float
    window_samples_per_s: str
    ms_per_step: float
    gflops: float
    pct_peak: float
    launch_floor_ms: float
    warmup_s: float
    peak_memory_mb: float
    gemm_only_ms: float


# Rounds of a backend's stage breakdown (each round: every part once), spread over its
# windows: the 50 a breakdown took in one burst before they were spread.
BREAKDOWN_ROUNDS = 50


@dataclass
class Measurement:
    backend: str
    description: str
    warmup_seconds: float  # load + first steps: JIT / torch.compile / cache load
    device: str = "cpu"
    precision: str = "float32"  # of the GEMM operands (kernels.base.MixedPrecision)
    ms_per_step: list[float] = field(default_factory=list)  # one per timed window
    settings: dict = field(default_factory=dict)
    # ms per step of each part, if the backend tells (StageBreakdown): medians over windows
    stages: dict[str, float] = field(default_factory=dict)
    launch_floor: dict[str, float] = field(default_factory=dict)  # GPU: nodes x node cost
    peak_memory_bytes: float = math.nan  # of one step, if the backend tells (MemoryReport)
    # The step's 11 GEMMs alone on this device, timed in the same windows (CPU rows only).
    gemm_only_ms: float = math.nan
    # Diagnostics (stage breakdown, launch floor, memory) that failed: name -> why. They
    # never cost the timing itself.
    diagnostic_errors: dict[str, str] = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.ms_per_step))

    @property
    def floor_ms(self) -> float:
        return self.launch_floor.get("floor_seconds", math.nan) * 1e3

    def row(
        self, config: VAEConfig, batch: int, peaks: Mapping[str, float], **identity
    ) -> tables.ResultRow:
        """This measurement's row of the results table: its backend at ``config``'s latent
        size and ``batch``, timed against its device's GEMM peak in ``peaks`` (GFLOP/s by
        ``peak_key``); ``identity``: the row's other fields (gate verdict, data set, seed)."""
        return tables.ResultRow(
            backend=self.backend,
            device=self.device,
            precision=self.precision,
            latent_dim=config.latent_dim,
            batch_size=batch,
            **identity,
            **self.columns(config, batch, peak_of(peaks, self.device, self.precision)),
        )

    def columns(self, config: VAEConfig, batch: int, peak_gflops: float) -> TimingColumns:
        """This measurement's columns of the results table (``tables.RESULT_COLUMNS``): the
        one place where samples/s, GFLOP/s and % of peak are worked out."""
        ms = self.median_ms
        gflops = step_flops(config, batch) / (ms / 1e3) / 1e9
        return {
            "samples_per_s": batch / ms * 1e3,
            "samples_per_s_min": batch / max(self.ms_per_step) * 1e3,
            "samples_per_s_max": batch / min(self.ms_per_step) * 1e3,
            "window_samples_per_s": tables.windows_text(batch / np.array(self.ms_per_step) * 1e3),
            "ms_per_step": ms,
            "gflops": gflops,
            "pct_peak": 100 * gflops / peak_gflops,
            "launch_floor_ms": self.floor_ms,
            "warmup_s": self.warmup_seconds,
            "peak_memory_mb": self.peak_memory_bytes / 1e6,
            "gemm_only_ms": self.gemm_only_ms,
        }


def measure(
    backends: list[Backend],
    config: VAEConfig,
    data: np.ndarray,
    *,
    batch: int,
    repeats: int = PROFILE_WINDOWS,
    steps: int = PROFILE_WINDOW_STEPS,
    warmup_steps: int = 20,
    settle_seconds: float = 0.3,
    seed: int = 0,
    backend_noise: bool = False,
    on_round: Callable[[int, int, float], None] | None = None,
) -> list[Measurement]:
    """Time ``steps`` training steps per window, ``repeats`` windows per backend, interleaved.

    Each window starts with ``settle_seconds`` of untimed steps: the previous backend's thread
    pool (OpenBLAS's and OpenMP's workers busy-wait for a while after their last job) must go
    idle before the clock starts, or each backend is charged for its predecessor's spin. A
    window ends when the backend's device has finished (``synchronize``); steps inside it do
    not wait for their losses. With ``backend_noise`` each backend draws its own noise (on
    the GPU: inside the step) instead of receiving it from the host. ``on_round(done,
    repeats, seconds_per_round)`` is told after each round of windows but the last.

    A backend's stage breakdown is sampled right after each of its windows (a few rounds of
    its parts each time, ``BREAKDOWN_ROUNDS`` in all) and its medians taken over the windows,
    so the breakdown's step and the table's are measured under the same conditions (taken in
    one burst after the last window, a busy stretch of the machine put a breakdown's step at
    2.5 times the table's)."""
    rng = np.random.default_rng(seed)

    def noise():
        return (
            None
            if backend_noise
            else rng.standard_normal((batch, config.latent_dim), dtype=np.float32)
        )

    results = _warm_up(backends, config, data, batch, warmup_steps, rng, noise)
    # The GEMMs-alone ceiling takes its turn in the same rotation, for the CPU rows.
    gemms = step_gemms(config, batch, seed) if any(b.device == "cpu" for b in backends) else None
    gemm_ms: list[float] = []
    # Each backend's stage-breakdown samples, one per window, while it gives them.
    breakdowns: list[list[dict[str, float]]] = [[] for _ in backends]
    asking = [isinstance(b, StageBreakdown) for b in backends]
    rounds = -(-BREAKDOWN_ROUNDS // repeats)
    started = time.perf_counter()
    for done in range(repeats):
        if on_round is not None and done:  # (rounds done, of how many, seconds per round)
            on_round(done, repeats, (time.perf_counter() - started) / done)
        if gemms is not None:
            gemm_ms.append(_settled_ms(lambda _: gemms(), steps, settle_seconds))
        for i, (backend, result) in enumerate(zip(backends, results)):
            # Inputs are drawn before the clock starts: the window times the steps alone.
            window = [(rng.integers(0, len(data), batch), noise()) for _ in range(steps)]
            result.ms_per_step.append(_window_ms(backend, data, window, settle_seconds))
            if asking[i]:
                asking[i] = _sample_breakdown(backend, result, data, batch, rounds, breakdowns[i])
    _add_diagnostics(backends, results, breakdowns, gemm_ms, data, batch)
    return results


def _window_ms(backend: Backend, data: np.ndarray, window: list, settle_seconds: float) -> float:
    """One timed window: ``backend``'s training steps on the batches and noise of ``window``
    (drawn before), in ms per step, the device finished at its end."""
    return _settled_ms(
        lambda k: backend.train_step(data, *window[k], want_loss=False),
        len(window),
        settle_seconds,
        backend.synchronize,
    )


def _sample_breakdown(
    backend: Backend,
    result: Measurement,
    data: np.ndarray,
    batch: int,
    rounds: int,
    samples: list[dict[str, float]],
) -> bool:
    """One sample of ``backend``'s stage breakdown, right after its window, into ``samples``;
    whether to ask it again (not after it failed, the reason kept, or had nothing to
    measure here)."""
    assert isinstance(backend, StageBreakdown)  # asked only of those that give one
    sample = _diagnostic(
        result, "stage breakdown", backend.stage_times, data, batch, repeats=rounds
    )
    if sample:
        samples.append(sample)
    return bool(sample)


def _warm_up(
    backends: list[Backend],
    config: VAEConfig,
    data: np.ndarray,
    batch: int,
    warmup_steps: int,
    rng: np.random.Generator,
    noise: Callable[[], np.ndarray | None],
) -> list[Measurement]:
    """Each backend loaded with the same initial weights and run ``warmup_steps`` steps (its
    compile time, or its cache's load, included in the time kept): its Measurement."""
    params = export_params(build_model(config))
    results = []
    for backend in backends:
        start = time.perf_counter()
        backend.load(config, params)
        for _ in range(warmup_steps):
            backend.train_step(data, rng.integers(0, len(data), batch), noise())
        backend.synchronize()
        results.append(
            Measurement(
                backend.name,
                backend.description,
                time.perf_counter() - start,
                device=backend.device,
                precision=gemm_inputs_of(backend),
                settings=backend.settings(),
            )
        )
    return results


def _settled_ms(
    step: Callable[[int], object],
    count: int,
    settle_seconds: float,
    synchronize: Callable[[], None] = lambda: None,
) -> float:
    """Milliseconds per call of ``step(k)``, k = 0 .. count - 1, timed after
    ``settle_seconds`` of untimed ``step(0)`` calls, from a finished device to a finished
    device (``synchronize``)."""
    settle_until = time.perf_counter() + settle_seconds
    while time.perf_counter() < settle_until:
        step(0)
    synchronize()
    start = time.perf_counter()
    for k in range(count):
        step(k)
    synchronize()
    return (time.perf_counter() - start) / count * 1e3


def _add_diagnostics(
    backends: list[Backend],
    results: list[Measurement],
    breakdowns: list[list[dict[str, float]]],
    gemm_ms: list[float],
    data: np.ndarray,
    batch: int,
) -> None:
    """Each measurement's GEMMs-alone ceiling (CPU rows), the medians of its breakdown's
    samples, its launch floor and its peak memory, where the backend offers them."""
    for backend, result, samples in zip(backends, results, breakdowns):
        if backend.device == "cpu" and gemm_ms:
            result.gemm_only_ms = float(np.median(gemm_ms))
        if samples:
            result.stages = {
                name: float(np.median([s[name] for s in samples])) * 1e3 for name in samples[0]
            }
        if isinstance(backend, LaunchFloor):
            result.launch_floor = (
                _diagnostic(result, "launch floor", backend.launch_floor, batch) or {}
            )
        if isinstance(backend, MemoryReport):
            memory = _diagnostic(result, "memory", backend.peak_memory_bytes, data, batch)
            result.peak_memory_bytes = math.nan if memory is None else float(memory)


def _diagnostic(result: Measurement, name: str, compute, *args, **kwargs):
    """``compute(*args, **kwargs)``, or None with the reason kept in
    ``result.diagnostic_errors``: a diagnostic that fails (a driver call the device refuses,
    say) is reported, and the measurement it comes after is kept."""
    try:
        return compute(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - whatever the device raised, keep the timing
        result.diagnostic_errors[name] = f"{type(error).__name__}: {error}"
        return None


def peak_of(peaks: Mapping[str, float], device: str, precision: str) -> float:
    """The GEMM peak (GFLOP/s) a row of ``device`` and ``precision`` is measured against: its
    precision's on that device, else the device's float32 one, else NaN."""
    return peaks.get(peak_key(device, precision), peaks.get(device, math.nan))
