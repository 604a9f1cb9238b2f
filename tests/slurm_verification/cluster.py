"""Start a real single-node Slurm in a directory: munge (authentication) with a fresh key,
slurmctld (the controller) and slurmd (the node) on 127.0.0.1, on free ports, every file of
theirs (config, state, spool, logs, pids, the munge socket) inside that directory. Debian's
``slurm-wlm`` and ``munge`` packages provide the daemons; nothing outside the directory is
touched, and ``stop`` ends all three.

The config is the smallest that schedules jobs without cgroups or accounting (process
tracking by /proc, no task plugin), as Slurm's own quick-start config (doc/html/
quickstart_admin.shtml, etc/slurm.conf.example) runs a node; the node's CPUs are this
machine's, so slurmd's self-check does not drain it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


def _program(name: str) -> str:
    """Where ``name`` is: on the PATH, else in /usr/sbin (Debian's daemons, off a user's
    PATH)."""
    return shutil.which(name) or f"/usr/sbin/{name}"


def missing() -> list[str]:
    """The programs a cluster needs that are not installed here."""
    return [name for name in DAEMONS if not Path(_program(name)).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A running single-node Slurm; ``env`` is what its client commands need."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("state", "spool", "munge"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "munge").chmod(0o700)
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._processes: list[subprocess.Popen] = []

    def start(self, timeout: float = 60.0) -> Cluster:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge = self.root / "munge"
        self._spawn(
            [
                _program("munged"),
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'seed'}",
            ],
            "munged.out",
        )
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged's socket")
        self.conf.write_text(self._config())
        self._spawn([_program("slurmctld"), "-D", "-f", str(self.conf)], "slurmctld.out")
        self._spawn([_program("slurmd"), "-D", "-f", str(self.conf), "-N", self.host], "slurmd.out")
        self._wait(self._node_idle, timeout, "the node to come up idle")
        return self

    def _config(self) -> str:
        r = self.root
        return "\n".join(
            [
                "ClusterName=vaebench",
                f"SlurmctldHost={self.host}(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                f"AuthInfo=socket={self.munge_socket}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={r / 'state'}",
                f"SlurmdSpoolDir={r / 'spool'}",
                f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                f"SlurmdPidFile={r / 'slurmd.pid'}",
                f"SlurmctldLogFile={r / 'slurmctld.log'}",
                f"SlurmdLogFile={r / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "SchedulerType=sched/backfill",
                "MpiDefault=none",
                "ReturnToService=2",
                "SlurmdTimeout=300",
                "InactiveLimit=0",
                "KillWait=5",
                f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=1000 "
                "State=UNKNOWN",
                f"PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def _spawn(self, command: list[str], log: str) -> None:
        out = open(self.root / log, "wb")  # noqa: SIM115 - held by the daemon until stop
        self._processes.append(
            subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        )

    def _node_idle(self) -> bool:
        for p in self._processes:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited ({p.returncode}): {self.logs()}")
        state = subprocess.run(
            [_program("sinfo"), "-h", "-N", "-o", "%T"],
            env=self.env,
            capture_output=True,
            text=True,
        )
        return state.returncode == 0 and state.stdout.strip() == "idle"

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        """The daemons' logs' last lines, for a failure's message."""
        parts = []
        for path in sorted(
            [*self.root.glob("*.log"), *self.root.glob("*.out"), *self.root.glob("munge/*.log")]
        ):
            lines = path.read_text(errors="replace").splitlines()[-8:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        for p in reversed(self._processes):
            p.terminate()
        for p in self._processes:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
