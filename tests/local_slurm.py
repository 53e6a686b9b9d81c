"""A real single-node SLURM on this machine, for the cluster tests: munge and SLURM (Debian's ``munge`` and
``slurm-wlm``) configured for localhost in a private folder, started, and stopped again.

Nothing here touches the system's /etc/slurm or /etc/munge: the daemons read a config, key, sockets, state and
logs under ``root``, and clients find them through ``SLURM_CONF`` (in :attr:`LocalSlurm.env`). Ports are picked
free, so a second cluster (another test session) does not collide. Waits are for events (the node idle, a daemon
gone), each bounded, each failing with what the daemon's log says.

    with LocalSlurm(tmp / "slurm") as cluster:       # or: cluster = LocalSlurm(...).start() ... cluster.stop()
        subprocess.run(["sbatch", ...], env=cluster.env)

``python tests/local_slurm.py start|stop ROOT`` does the same from a shell (the timings in the README used it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: The programs a local cluster needs (Debian: apt-get install slurm-wlm munge).
PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "srun", "sinfo")
PARTITION = "debug"
START_TIMEOUT_S = 60.0


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def unavailable_reason() -> str | None:
    """Why a local cluster cannot be started here (None: it can)."""
    missing = missing_programs()
    if missing:
        return f"SLURM/munge not installed ({', '.join(missing)} missing; Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a local SLURM needs root here (slurmd starts jobs as their user)"
    return None


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class LocalSlurm:
    """munged + slurmctld + slurmd for one node (this host, ``cpus`` CPUs) under ``root``."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.cpus = cpus
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pids: dict[str, Path] = {}

    # ---------------------------------------------------------------------------------------------- set-up
    def _write_config(self) -> None:
        munge = self.root / "munge"
        for d in (munge, self.root / "ctld", self.root / "spool", self.root / "log"):
            d.mkdir(parents=True, exist_ok=True)
        munge.chmod(0o700)
        ctld_port, slurmd_port = _free_ports(2)
        # SlurmdParameters=config_overrides: the node is what this file says (no drain when the machine differs).
        # No accounting daemon: finished jobs are read from squeue while slurmctld keeps them (MinJobAge).
        self.conf.write_text(f"""\
ClusterName=dimbench-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self.root / 'ctld'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=1
MessageTimeout=20
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        key = munge / "munge.key"
        if not key.exists():
            subprocess.run([_program("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o600)

    def _start(self, name: str, args: list[str], pidfile: Path) -> None:
        proc = subprocess.run(args, capture_output=True, text=True, env=self.env, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} did not start (exit {proc.returncode}): {proc.stderr.strip()}"
                               f"{self._log_tail(name)}")
        self._pids[name] = pidfile

    def start(self) -> LocalSlurm:
        """Start munged, slurmctld and slurmd; returns once the node accepts jobs (idle)."""
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self._write_config()
        try:
            munge = self.root / "munge"
            self._start("munged", [_program("munged"), "--force", f"--socket={self.munge_socket}",
                                   f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                                   f"--log-file={self.root / 'log' / 'munged.log'}",
                                   f"--seed-file={munge / 'munged.seed'}"], munge / "munged.pid")
            self._start("slurmctld", [_program("slurmctld"), "-c", "-f", str(self.conf)],
                        self.root / "slurmctld.pid")
            self._start("slurmd", [_program("slurmd"), "-c", "-f", str(self.conf)], self.root / "slurmd.pid")
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env)
            state = (proc.stdout.strip() or proc.stderr.strip())
            if proc.returncode == 0 and state.rstrip("*") in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the local SLURM node never became idle within {START_TIMEOUT_S:g} s (sinfo: "
                           f"{state!r}){self._log_tail('slurmctld')}{self._log_tail('slurmd')}")

    def _log_tail(self, name: str) -> str:
        log = self.root / "log" / f"{name}.log"
        try:
            lines = log.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            return ""
        return f"\n  {log}:\n    " + "\n    ".join(lines) if lines else ""

    # --------------------------------------------------------------------------------------------- tear-down
    def stop(self) -> None:
        """Stop the daemons (slurmd, slurmctld, munged), waiting for each to be gone; then nothing of this cluster
        runs any more (its jobs were slurmd's children)."""
        for name in ("slurmd", "slurmctld", "munged"):
            pidfile = self._pids.pop(name, None)
            pid = _read_pid(pidfile) if pidfile else None
            if pid is None:
                continue
            _terminate(pid)

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def _terminate(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, wait for the process to be gone (bounded), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            return


def main(argv: list[str]) -> int:
    """``start ROOT`` (prints the SLURM_CONF to export) / ``stop ROOT``."""
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python tests/local_slurm.py start|stop ROOT", file=sys.stderr)
        return 2
    cluster = LocalSlurm(Path(argv[1]).resolve())
    if argv[0] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    cluster._pids = {"slurmd": cluster.root / "slurmd.pid", "slurmctld": cluster.root / "slurmctld.pid",
                     "munged": cluster.root / "munge" / "munged.pid"}
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
