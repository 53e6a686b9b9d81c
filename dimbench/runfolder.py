"""A run's output folder: one run at a time (a lock), what it holds (results, environment, logs, long tasks'
state), the record that keeps another suite's rows out of it, and rows written once by identity. The suite
runner and every command that writes rows (``dimbench train``, ``dimbench fid``) open their folder here, so the
rule is one: a lock, a record of what wrote the folder (environment.json), a one-line refusal to mix another
suite's or command's rows unless asked, and a row whose identity is on disk is not written again.

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
import shlex
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from dimbench import results as res
from dimbench.environment import collect, comparable, now_iso
from dimbench.errors import UserError
from dimbench.files import loads
from dimbench.metrics.base import STATE_DIR, slug

LOGS = "logs"
LOCK_FILE = "run.lock"
#: What --fresh moves aside (to NAME.bak), so that a new run starts from nothing (a cluster run's records and
#: shards too: dimbench.cluster.records).
FRESH_MOVES = (res.RESULTS_FILE, res.ENVIRONMENT_FILE, STATE_DIR, LOGS, "cluster", "shards")


class RunFolder:
    """An output folder opened for one run: locked until :meth:`close`."""

    def __init__(self, path: Path, *, fresh: bool = False, command: str = "", also_fresh: tuple[str, ...] = ()):
        self.path = Path(path)
        self.results = self.path / res.RESULTS_FILE
        self.environment_path = self.path / res.ENVIRONMENT_FILE
        self.logs = self.path / LOGS
        self._lock_fd: int | None = None
        self._also_fresh = also_fresh  # a command's own files that --fresh moves aside too (train: checkpoint.pt)
        #: identity (results.row_identity) -> status of the final rows on disk (read_rows, then append_once)
        self.final: dict[tuple, str] = {}
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
        for name in FRESH_MOVES + self._also_fresh:
            src = self.path / name
            if src.exists():
                dst = self.path / f"{name}.bak"
                if dst.is_dir():
                    shutil.rmtree(dst)
                os.replace(src, dst)

    # --- reading
    def read_rows(self, *, retry_errors: bool = False) -> tuple[list[dict[str, Any]], str | None]:
        """Every row on disk, and the warning about a half-written last line that was cut away (or None). Notes
        which identities are final (:func:`dimbench.results.final_statuses`): error rows too unless
        ``retry_errors``."""
        torn = res.repair_torn_tail(self.results)
        rows = res.read_rows(self.results)
        self.final = res.final_statuses(rows, retry_errors=retry_errors)
        return rows, torn

    def environment(self) -> dict[str, Any] | None:
        return res.read_environment(self.environment_path)

    def check_suite(self, record: dict[str, Any] | None, suite: str, device_type: str, settings: dict[str, Any],
                    allow_mixed: bool, this: str | None = None) -> None:
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
            there = (f"suite '{record.get('suite')}' ({record.get('suite_file')})" if record.get("suite_file")
                     else f"`dimbench {record.get('suite')}`")  # a command's record names no suite file
            problems.append(f"it holds results of {there}, this run is {this or f'suite {suite!r}'}")
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

    def append_once(self, rows: list[dict[str, Any]], *, replace: bool = False,
                    retry_errors: bool = False) -> list[dict[str, Any]]:
        """Append, durably, the rows whose identity (point, metric, step) is not final on disk yet, one per
        identity; returns them. A measurement supersedes a skip. ``replace`` writes them even so: a new measurement
        of the same identity (a training run taken further supersedes its final rows; the last row wins on
        reading). ResultsWriteError when the disk refuses (no complete row is lost)."""
        if replace:
            firsts: dict[tuple, dict[str, Any]] = {}
            for row in rows:
                firsts.setdefault(res.row_identity(row), row)  # (of two copies in one batch, the first)
            new = list(firsts.values())
        else:
            new = res.rows_to_write(rows, self.final)
        if new:
            self.append(new)
            self.final.update(res.final_statuses(new, retry_errors=retry_errors))
        return new

    def begin_record(self, record: dict[str, Any] | None, current: dict[str, Any], *, suite: str,
                     suite_file: str | None, device_type: str, settings: dict[str, Any],
                     entry: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Write (first run) or extend (resume) environment.json: the environment ``current`` of the first run,
        the suite (or command) whose rows the folder holds, its settings per device type, and this invocation's
        ``entry`` under ``runs``. Returns the record (for :meth:`end_record`) and what differs from the folder's
        environment (a warning for the caller to show)."""
        if record is None:
            record = {**current, "suite": suite, "suite_file": suite_file, "settings": {}, "runs": []}
        elif not self.has_rows():  # an earlier run wrote no row: the folder is this suite's now
            record.update(suite=suite, suite_file=suite_file, settings={})
        differ: list[str] = []
        if record.get("runs"):
            before, now = comparable(record), comparable(current)
            differ = [k for k in before if before[k] != now[k]]
            if differ:
                entry["environment"] = current
        known = record.setdefault("settings", {}).setdefault(device_type, {})
        if any(known[m] != v for m, v in settings.items() if m in known):
            entry["settings"] = settings  # --allow-mixed: this run's own settings, beside the folder's
        known.update({m: v for m, v in settings.items() if m not in known})  # metrics the suite added
        record.setdefault("runs", []).append(entry)
        self.write_environment(record)
        return record, differ

    def end_record(self, record: dict[str, Any], entry: dict[str, Any], *, wall_s: float, interrupted: bool,
                   rows_written: int, stopped_by: str | None = None) -> None:
        """Complete this invocation's entry of environment.json (ResultsWriteError on a full disk)."""
        entry.update(finished_at=now_iso(), wall_s=round(wall_s, 3), interrupted=interrupted,
                     rows_written=rows_written)
        if stopped_by is not None:
            entry["stopped_by"] = stopped_by
        self.write_environment(record)

    def write_environment(self, record: dict[str, Any]) -> None:
        res.write_json_atomic(self.environment_path, record)

    def log(self, key: str) -> Path:
        return self.logs / f"{slug(key)}.log"


def _read_holder(fd: int) -> str:
    try:
        holder = loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict):
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


def is_complete(final: dict[tuple, str], key: str, rows: tuple[str, ...]) -> bool:
    """Whether every one of these final rows of point ``key`` is among ``final`` (identity -> status,
    :func:`dimbench.results.final_statuses`), and they are not all skips (the runner's rule for a complete
    metric)."""
    found = [final.get((key, name, None)) for name in rows]
    return None not in found and set(found) != {"skipped"}


class CommandRun:
    """A command that writes rows into a run folder (``dimbench train``, ``fid``, ``profile``), under the suite
    runner's rule: the folder locked for the command's whole run, its record (environment.json, ``suite`` = the
    command's name, no suite file) checked, so that another suite's or command's rows, or rows of other settings,
    are refused in one line unless ``allow_mixed``, then extended with this invocation's entry; rows written once
    by identity (:meth:`RunFolder.append_once`). Use as a context manager; on a torchrun rank other than 0 open
    none (rank 0 writes)."""

    def __init__(self, out: Path, *, command: str, argv: list[str], device: str, settings: dict[str, Any],
                 allow_mixed: bool = False, fresh: bool = False, also_fresh: tuple[str, ...] = (), warn=print):
        self.t0 = time.monotonic()
        self.folder = RunFolder(out, fresh=fresh, command=shlex.join(argv), also_fresh=also_fresh)
        self.rows_written = 0
        try:
            _, torn = self.folder.read_rows()
            if torn:
                warn(f"warning: {torn} (cut away)")
            device_type = "cuda" if device.startswith("cuda") else "cpu"
            record = self.folder.environment()
            self.folder.check_suite(record, command, device_type, settings, allow_mixed, this=f"`dimbench {command}`")
            current = collect(argv, device)
            self.entry: dict[str, Any] = {"started_at": now_iso(), "command": current.get("command"),
                                          "suite": command, "device": device, "finished_at": None, "wall_s": None,
                                          "interrupted": None, "rows_written": None}
            self.record, differ = self.folder.begin_record(
                record, current, suite=command, suite_file=None, device_type=device_type,
                settings=settings, entry=self.entry)
            if differ:
                warn(f"warning: resuming in a different environment ({', '.join(differ)} differ from "
                     f"{self.folder.environment_path}); this run's environment is kept in its 'runs' entry")
        except BaseException:
            self.folder.close()
            raise

    def complete(self, key: str, rows: tuple[str, ...]) -> bool:
        """Whether every one of these final rows of point ``key`` is on disk (final, and not all skips)."""
        return is_complete(self.folder.final, key, rows)

    def write(self, rows: list[dict[str, Any]], *, replace: bool = False) -> list[dict[str, Any]]:
        """Append the rows whose identity is not on disk (``replace``: even so); returns those written."""
        new = self.folder.append_once(rows, replace=replace)
        self.rows_written += len(new)
        return new

    def close(self, *, interrupted: bool = False, stopped_by: str | None = None) -> None:
        """Complete this invocation's entry of the record and release the lock."""
        try:
            self.folder.end_record(self.record, self.entry, wall_s=time.monotonic() - self.t0,
                                   interrupted=interrupted, rows_written=self.rows_written, stopped_by=stopped_by)
        finally:
            self.folder.close()

    def __enter__(self) -> CommandRun:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        stopped = None if exc is None or isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        try:
            self.close(interrupted=isinstance(exc, KeyboardInterrupt), stopped_by=stopped)
        except res.ResultsWriteError:
            if exc is None:
                raise  # (when the command failed already, its own error is the one to report)
