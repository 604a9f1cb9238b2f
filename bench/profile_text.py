"""``vae-bench profile``'s text: the gate's verdicts, the throughput table, each
reduced-precision row against its rivals and its GEMM peak, and each backend's breakdown."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from vae_ref import VAEConfig

from . import tables
from .pipeline import GateRecord
from .throughput import Measurement, peak_key, step_flops


def _gate_lines(gates: Mapping[str, GateRecord], timed: set[str]) -> list[str]:
    """The gate's verdict on every backend asked for, and what became of it."""
    cases = list(dict.fromkeys(c.case for g in gates.values() for c in g.comparisons))
    lines = [
        f"agreement gate before timing ({', '.join(cases) or 'no case run'}; each tensor "
        "against the float64 oracle):"
    ]
    for name, g in gates.items():
        fate = ""
        if g.verdict == "fail":
            fate = (
                "; timed anyway (--include-failed): its row is UNGATED, its numbers not the "
                "reference's computation"
                if name in timed
                else "; not timed (--include-failed times it anyway)"
            )
        lines.append(f"  {name:<18} {g.summary()}{fate}")
    return lines


def _gate_cell(gate: GateRecord | None) -> str:
    if gate is None:
        return "-"
    return f"pass {gate.worst_fraction:.0%}" if gate.verdict == "pass" else "UNGATED"


def _mixed_precision_lines(
    results: list[Measurement],
    table: pd.DataFrame,
    flops: int,
    peaks: dict[str, tuple[float, str, str]],
) -> list[str]:
    """Each reduced-precision row against what it competes with, from this run's medians:
    its float32 twin (``kernels.FLOAT32_TWINS``), every other row
    of its precision (the best of them named), and the physical limit (its step's FLOPs at
    that precision's GEMM peak, measured in this run)."""
    speed = dict(zip(table.backend, table.samples_per_s))
    lines = []
    for r in results:
        if r.precision == "float32":
            continue
        parts = []
        twin = tables.float32_twin(r.backend, r.precision)
        if twin in speed:
            parts.append(f"{speed[r.backend] / speed[twin]:.2f}x {twin} (float32)")
        rivals = {
            m.backend: speed[r.backend] / speed[m.backend]
            for m in results
            if m.precision == r.precision and m.backend != r.backend
        }
        if rivals:
            best = min(rivals, key=rivals.__getitem__)
            parts.append(
                ", ".join(f"{ratio:.2f}x {name}" for name, ratio in rivals.items())
                + f" (best {r.precision} peer: {best})"
            )
        peak = peaks.get(peak_key(r.device, r.precision))
        if peak is not None:
            floor_ms = flops / (peak[0] * 1e9) * 1e3
            parts.append(
                f"its step is {r.median_ms / floor_ms:.1f}x its GEMMs' FLOPs at the "
                f"{r.precision} GEMM peak ({floor_ms:.3f} ms at {peak[0]:,.0f} GFLOP/s)"
            )
        if "gemms" in r.stages and "step" in r.stages:
            parts.append(f"{r.stages['step'] / r.stages['gemms']:.2f}x its own {r.precision} GEMMs")
        gain = (
            r.gemm_only_ms / r.stages["gemms"]
            if "gemms" in r.stages and not math.isnan(r.gemm_only_ms)
            else None
        )
        if gain is not None:
            parts.append(
                f"its {r.precision} GEMMs {gain:.2f}x the float32 GEMMs alone "
                "(NumPy BLAS, same shapes, same windows)"
            )
        if parts:
            lines.append(f"{r.backend} ({r.precision} GEMM inputs): " + "; ".join(parts))
        if gain is not None and gain < BF16_GEMM_GAIN_FLOOR:
            lines.append(
                f"{r.backend}: WARNING: its {r.precision} GEMMs ran at only {gain:.2f}x the "
                f"float32 ones here (bf16 hardware at work gives {BF16_GEMM_GAIN_FLOOR}x or "
                "more): the library emulates bf16 on this CPU or the cores' arithmetic is "
                "shared, so these are not the numbers of bf16 hardware"
            )
    return lines


# The least gain of a CPU backend's reduced-precision GEMMs over the float32 GEMMs alone
# (both its step's 11, timed in the same windows) that shows bf16 hardware at work. The CPU's
# flags cannot say it: a library picks its code path by more than them, and without a bf16
# path it converts to float32 and runs no faster. Between the gains measured with and without
# bf16 hardware (results/README.md: 3.65x with AMX, 1.0x on a Zen 4).
BF16_GEMM_GAIN_FLOOR = 1.25


# How far (as a factor) a backend's breakdown of its step may lie outside its windows'
# min-max before the report says the two were measured under different conditions: single
# calls of the parts are timed apart from the windows' back-to-back steps.
BREAKDOWN_SLACK = 1.25


def profile_text(
    results: list[Measurement],
    config: VAEConfig,
    batch: int,
    peaks: dict[str, tuple[float, str, str]],
    gates: Mapping[str, GateRecord] | None = None,
) -> str:
    """The throughput table and per-backend breakdowns, as text. ``peaks`` maps a device to
    its GEMM peak (GFLOP/s, how measured, its name); speed-ups are over each peer on the
    same device in this run (``tables.speedup``). ``gates``, each backend's verdict of the
    agreement gate that ran before the timing (``pipeline.execute``), adds it above the table and
    in each row; a row timed despite a failed gate says UNGATED."""
    flops = step_flops(config, batch)
    lines = [
        f"step: batch {batch}, z {config.latent_dim}, hidden {config.hidden_dim}: "
        f"{flops / 1e6:.0f} MFLOP in 11 GEMMs"
    ]
    if gates is not None:
        lines += _gate_lines(gates, {r.backend for r in results})
    lines += [
        f"{device} ({name}) GEMM peak {peak:.0f} GFLOP/s ({source})"
        for device, (peak, source, name) in peaks.items()
    ]
    gflops = {device: peak for device, (peak, _, _) in peaks.items()}
    table = tables.results_frame(
        r.row(
            config,
            batch,
            gflops,
            dataset="",
            seed=0,
            agreement=gates[r.backend].verdict if gates and r.backend in gates else "",
        )
        for r in results
    )
    lines += tables.throughput_table(
        table,
        None if gates is None else {r.backend: _gate_cell(gates.get(r.backend)) for r in results},
    )
    lines += _mixed_precision_lines(results, table, flops, peaks)
    lines.append(
        "samples/s of each timed window, in the order they ran (window i of every "
        "backend in round i):"
    )
    lines += [f"  {r.backend:<18} {r.window_samples_per_s}" for r in table.itertuples()]
    ceiling = next((r.gemm_only_ms for r in results if not math.isnan(r.gemm_only_ms)), None)
    if ceiling is not None:
        lines.append(
            f"the step's 11 GEMMs alone (NumPy BLAS, same shapes, same windows): "
            f"{ceiling:.3f} ms/step = {batch / ceiling * 1e3:,.0f} samples/s, the "
            "ceiling of a CPU step that calls NumPy's BLAS"
        )
    lines += [
        f"{r.backend} settings: {tables.settings_text(r.settings)}" for r in results if r.settings
    ]
    lines += _backend_notes(results)
    lines += _breakdown_lines(results)
    return "\n".join(lines)


def _backend_notes(results: list[Measurement]) -> list[str]:
    """Each backend's compile time, launch-latency floor and failed diagnostics."""
    lines = []
    for r in results:
        if r.settings.get("compile_seconds") is not None:
            lines.append(
                f"{r.backend}: JIT compile or on-disk cache load "
                f"{r.settings['compile_seconds']:.2f} s in this process (in its "
                "warm-up, or in the gate where the gate ran first)"
            )
    for r in results:
        if r.launch_floor:
            f = r.launch_floor
            launches = int(f.get("launches", f["nodes"]))
            counted = f"{int(f['nodes'])} graph nodes" + (
                f" ({launches} launches)" if launches != int(f["nodes"]) else ""
            )
            lines.append(
                f"{r.backend}: launch-latency floor {r.floor_ms:.3f} ms = {counted} x "
                f"{f['seconds_per_node'] * 1e6:.2f} us per empty graph node; its step is "
                f"{r.median_ms / r.floor_ms:.2f}x the floor"
            )
    for r in results:
        for name, reason in r.diagnostic_errors.items():
            lines.append(f"{r.backend}: {name} failed: {reason}")
    return lines


def _breakdown_lines(results: list[Measurement]) -> list[str]:
    """Each backend's step taken apart, and a warning where the parts contradict its
    windows."""
    lines = []
    for r in results:
        if r.stages:
            parts = ", ".join(f"{k} {v:.3f} ms" for k, v in r.stages.items())
            lines.append(f"{r.backend} breakdown: {parts}")
            if "gemms" in r.stages and "step" in r.stages:
                lines.append(
                    f"{r.backend}: the GEMMs alone take {r.stages['gemms'] / r.stages['step']:.0%} "
                    f"of its step ({r.stages['gemms']:.3f} of {r.stages['step']:.3f} ms, "
                    "measured interleaved, beside its windows); everything else costs "
                    f"{max(r.stages['step'] - r.stages['gemms'], 0):.3f} ms"
                )
            step = r.stages.get("step")
            low, high = min(r.ms_per_step), max(r.ms_per_step)
            if step is not None and not low / BREAKDOWN_SLACK <= step <= high * BREAKDOWN_SLACK:
                lines.append(
                    f"{r.backend}: WARNING: its breakdown's step ({step:.3f} ms) lies outside "
                    f"its timed windows ({low:.2f}-{high:.2f} ms): the machine changed while "
                    "they ran; rerun before quoting either"
                )
    return lines
