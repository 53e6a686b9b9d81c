"""A run's output folder: one run at a time (a lock), what it holds (results, environment, logs, long tasks'
state), and the record that keeps another suite's rows out of it.

    OUT/results.jsonl     every row (dimbench.results); the runner is its only writer
    OUT/environment.json  the environment of the first run, the suite, its measurement settings, and one entry
                          per invocation under ``runs``
    OUT/logs/             one log per point (worker output, tracebacks of error rows)
    OUT/state/            long tasks' own checkpoints, kept across interrupts (``ctx.state_dir``)
    OUT/run.lock          held (flock) while a run writes; says which run holds it

Every I/O problem a user can meet here (``--out`` naming a file, a read-only folder, a full disk, a damaged
environment.json, a folder in use or holding another suite's results) is a :class:`~dimbench.errors.UserError`
that names the path.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from dimbench import results as res
from dimbench.environment import now_iso
from dimbench.errors import UserError
from dimbench.metrics.base import STATE_DIR, slug

LOGS = "logs"
LOCK_FILE = "run.lock"
#: What --fresh moves aside (to NAME.bak), so that a new run starts from nothing (a cluster run's records and
#: shards too: dimbench.cluster.records).
FRESH_MOVES = (res.RESULTS_FILE, res.ENVIRONMENT_FILE, STATE_DIR, LOGS, "cluster", "shards")


class RunFolder:
    """An output folder opened for one run: locked until :meth:`close`."""

    def __init__(self, path: Path, *, fresh: bool = False, command: str = ""):
        self.path = Path(path)
        self.results = self.path / res.RESULTS_FILE
        self.environment_path = self.path / res.ENVIRONMENT_FILE
        self.logs = self.path / LOGS
        self._lock_fd: int | None = None
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: exists and is not a folder (--out names the run's output folder)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock(command)
            if fresh:
                self._move_aside()
            self.logs.mkdir(exist_ok=True)
        except OSError as exc:
            self.close()
            raise UserError(f"{exc.filename or self.path}: cannot use as the run's output folder "
                            f"({exc.strerror or exc})") from None

    # --- one run at a time
    def _lock(self, command: str) -> None:
        lock = self.path / LOCK_FILE
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(f"{self.path}: another run is writing into this folder ({holder}); wait for it to end, "
                            "or give this run another --out") from None
        self._lock_fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": now_iso()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)

    def close(self) -> None:
        """Release the lock (the kernel does it too when the process dies, however it dies)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _move_aside(self) -> None:
        for name in FRESH_MOVES:
            src = self.path / name
            if src.exists():
                dst = self.path / f"{name}.bak"
                if dst.is_dir():
                    shutil.rmtree(dst)
                os.replace(src, dst)

    # --- reading
    def read_rows(self) -> tuple[list[dict[str, Any]], str | None]:
        """Every row on disk, and the warning about a half-written last line that was cut away (or None)."""
        torn = res.repair_torn_tail(self.results)
        return res.read_rows(self.results), torn

    def environment(self) -> dict[str, Any] | None:
        return res.read_environment(self.environment_path)

    def check_suite(self, record: dict[str, Any] | None, suite: str, device_type: str, settings: dict[str, Any],
                    allow_mixed: bool) -> None:
        """Refuse a run of another suite, or of other measurement settings, into a folder that holds results.

        The folder's record (environment.json) names the suite of its rows and, per device type, the settings
        that change what a measurement gives (dimbench.suite.Settings.fingerprint: each metric's options). A
        metric measured on one side only is no conflict (a suite may add metrics). ``allow_mixed`` accepts the
        mix (rows already there are kept and not measured again).
        """
        if record is None or allow_mixed or not self.has_rows():
            return
        problems = []
        if record.get("suite") not in (None, suite):
            problems.append(f"it holds results of suite '{record.get('suite')}' ({record.get('suite_file')}), "
                            f"this run is suite '{suite}'")
        before = (record.get("settings") or {}).get(device_type) or {}
        common = sorted(set(before) & set(settings))
        differences = _differences({m: before[m] for m in common}, {m: settings[m] for m in common})
        if differences:
            problems.append(f"its {device_type} rows were measured with other settings: " + "; ".join(differences))
        if problems:
            raise UserError(f"{self.path}: " + "; ".join(problems) + ". Mixing would put rows of different "
                            "measurements side by side: give this run another --out, start over here with --fresh "
                            "(the old files are kept as .bak), or pass --allow-mixed to add to it anyway")

    def has_rows(self) -> bool:
        return self.results.exists() and self.results.stat().st_size > 0

    # --- writing
    def append(self, rows: list[dict[str, Any]]) -> int:
        return res.append_rows(self.results, rows)

    def write_environment(self, record: dict[str, Any]) -> None:
        res.write_json_atomic(self.environment_path, record)

    def log(self, key: str) -> Path:
        return self.logs / f"{slug(key)}.log"


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "a run whose details are not recorded"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, `{holder.get('command')}`, since "
            f"{holder.get('since')}")


def _differences(before: Any, now: Any, prefix: str = "") -> list[str]:
    """'latency.repeats: 5 there, 2 now' for every leaf that differs."""
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(before) | set(now), key=str):
            out += _differences(before.get(k), now.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if before == now:
        return []
    return [f"{prefix}: {json.dumps(before)} there, {json.dumps(now)} now"]
