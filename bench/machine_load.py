"""What else the machine did while a run timed its backends: the CPU time that other processes
and the hypervisor took from the CPUs this process may use, and the load average at the
start and the end.

A speed-up measured while another process held a core is not the kernels' (seen on an AMD Zen
4 machine: torch eager at 963 samples/s at z = 2 and 13,432 at z = 50 in one run, and
nothing said so). Linux's /proc/stat counts, per CPU, the time spent busy (user, nice,
system, irq, softirq) and stolen by the hypervisor (steal) in USER_HZ ticks (proc(5));
``os.times`` counts this process's own CPU time, all its threads. Over a timed stage, the
busy time of our CPUs less our own is what other processes took. Elsewhere than Linux the
shares are None and only the load average is kept.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from kernels.cpu_features import cpuinfo_field

# A stage is called busy when other processes took at least this many cores on average, or
# the hypervisor stole as many: half a core held for the whole stage, or a whole one for half.
BUSY_CORES = 0.5
_USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC_STAT = Path("/proc/stat")


def _our_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _ticks(cpus: set[int], proc_stat: Path = _PROC_STAT) -> tuple[int, int] | None:
    """Busy and stolen ticks summed over ``cpus`` (proc(5): the ``cpuN`` lines' user, nice,
    system, idle, iowait, irq, softirq, steal), None where /proc/stat cannot be read."""
    try:
        lines = proc_stat.read_text().splitlines()
    except OSError:
        return None
    busy = stolen = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        values = [int(v) for v in fields[:8]] + [0] * (8 - len(fields[:8]))
        user, nice, system, _idle, _iowait, irq, softirq, steal = values
        busy += user + nice + system + irq + softirq
        stolen += steal
    return busy, stolen


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


class Watch:
    """Started when a stage starts; ``result()`` when it ends: what others took meanwhile."""

    def __init__(self) -> None:
        self.cpus = _our_cpus()
        self.load_start = _load()
        self.ticks = _ticks(self.cpus)
        own = os.times()
        self.own = own.user + own.system
        self.wall = time.monotonic()

    def result(self) -> dict:
        """``seconds``; ``others_cores`` and ``steal_cores``: the cores, on average over the
        stage, that other processes and the hypervisor took from our CPUs (None where
        unknown); ``cpus``: how many CPUs ours are; the 1-minute load average at the start
        and end."""
        wall = time.monotonic() - self.wall
        own = os.times()
        ticks = _ticks(self.cpus)
        others = steal = None
        if self.ticks is not None and ticks is not None and wall > 0:
            busy = (ticks[0] - self.ticks[0]) / _USER_HZ
            others = round(max(0.0, busy - (own.user + own.system - self.own)) / wall, 3)
            steal = round((ticks[1] - self.ticks[1]) / _USER_HZ / wall, 3)
        return {
            "seconds": round(wall, 3),
            "cpus": len(self.cpus),
            "others_cores": others,
            "steal_cores": steal,
            "load_start": self.load_start,
            "load_end": _load(),
        }


def busy(record: dict) -> bool:
    """Whether a stage's record says the machine was busy (BUSY_CORES)."""
    return any((record.get(k) or 0) >= BUSY_CORES for k in ("others_cores", "steal_cores"))


def busy_stages(cells: list[dict]) -> list[str]:
    """'z = 2, batch 128: other processes took 0.98 of the 2 CPUs ...' for each timed stage
    of a run's ``cells`` during which the machine was ``busy``; cells written before the
    load was kept have none, and a record that is not one is passed over."""
    found = []
    for cell in cells:
        loads = cell.get("machine_load")
        for batch, record in loads.items() if isinstance(loads, dict) else ():
            if isinstance(record, dict) and busy(record):
                found.append(f"z = {cell['latent']}, batch {batch}: {describe(record)}")
    return found


def describe(record: dict) -> str:
    """'other processes took 0.98 of the 2 CPUs this run used, the hypervisor 0.00; load
    average 1.90 → 2.10'."""
    parts = []
    if record.get("others_cores") is not None:
        parts.append(
            f"other processes took {record['others_cores']:.2f} of the "
            f"{record['cpus']} CPUs this run used, the hypervisor "
            f"{record['steal_cores']:.2f}"
        )
    if record.get("load_start") is not None:
        parts.append(f"load average {record['load_start']:.2f} → {record['load_end']:.2f}")
    return "; ".join(parts)


def cpu_frequency() -> dict:
    """The CPU frequency governor and current frequency where Linux shows them (cpufreq in
    /sys; a VM often has none), else the first CPU's MHz from /proc/cpuinfo; {} where
    neither can be read."""
    found = {}
    cpufreq = Path("/sys/devices/system/cpu/cpu0/cpufreq")
    for key, name, scale in (
        ("governor", "scaling_governor", None),
        ("mhz", "scaling_cur_freq", 1000),
    ):
        try:
            text = (cpufreq / name).read_text().strip()
        except OSError:
            continue
        found[key] = text if scale is None else round(int(text) / scale)
    if "mhz" not in found:
        mhz = cpuinfo_field(("cpu MHz",))
        if mhz:
            try:
                found["mhz"] = round(float(mhz))
            except ValueError:
                pass
    return found
