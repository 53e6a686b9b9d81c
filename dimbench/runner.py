"""Run a suite: plan against what is already on disk, one isolated worker per point, rows appended durably as
they arrive, progress, and what the run leaves behind. Process plumbing lives in :mod:`dimbench.processes`, the
output folder (lock, records, I/O errors) in :mod:`dimbench.runfolder`.

- Every point runs in a worker process: an out-of-memory error, an exception, a crash (segfault, SIGKILL) or a
  hang becomes a recorded row with status oom / error, and the sweep goes on.
- Rows reach the results file as the worker sends them (a long task streams them while it runs), each batch
  fsync'ed before the worker is told it may go on, so a task never checkpoints past rows that are not on disk. A
  row is written once: its identity is (point, metric, step), and a row whose identity is already on disk (final:
  ok, skipped, oom; error unless ``retry_errors``) is not written again, except that a measurement supersedes a
  skip.
- Resume: a metric is complete at a point when every final row it declares is on disk, and they are not all
  skips (a skip may no longer apply: a suite's limit or device section changed, fvcore got installed); only
  incomplete metrics are measured again (a long task resumes from its own checkpoint in ``OUT/state``). A
  half-written last line left by a killed run is cut away with a warning.
- Time budgets are per metric and start when the metric starts: ``options.<metric>.timeout`` if the suite sets
  it, else the metric's own (a training task declares none: ``math.inf``), else the suite's ``timeout``. A metric
  that runs past it is killed and recorded as an error; the point's other metrics go on in a fresh worker.
- Ctrl-C or SIGTERM sets a flag that every part of the run watches: workers are killed, every row written stays,
  the run record is completed, and the message says how to resume (a second Ctrl-C exits at once).
- With several CUDA GPUs and device ``cuda``, points are spread over them, one worker at a time per GPU.
"""

from __future__ import annotations

import dataclasses
import queue
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

import models
from dimbench import processes
from dimbench.cluster.collect import settle
from dimbench.cluster.records import refuse_live_array
from dimbench.environment import collect, collect_isolated, now_iso
from dimbench.errors import UserError
from dimbench.metrics import METRICS
from dimbench.plugins import loaded_plugins
from dimbench.progress import progress_bar
from dimbench.results import ResultsWriteError, row_identity
from dimbench.runfolder import RunFolder, is_complete
from dimbench.suite import Plan, PointPlan
from dimbench.worker import Job, failure_rows, gmacs_per_image

POLL_S = 0.1
IDLE_S = 300.0  # a worker between metrics (starting, or after its last) longer than this is stuck: killed


class Interrupted(Exception):
    """The run was stopped by Ctrl-C / SIGTERM; everything reported so far is in the results file."""


@dataclasses.dataclass
class RunSummary:
    out: Path
    results: Path
    points: int
    measured_points: int
    rows_written: int
    wall_s: float
    counts: dict[str, int]  # status -> rows written by this invocation


@dataclasses.dataclass
class _PointJob:
    plan: PointPlan
    metrics: list[str]


@dataclasses.dataclass
class _Outcome:
    """How one worker ended: the metrics it finished, the one it was in, and why it stopped."""

    finished: list[str] = dataclasses.field(default_factory=list)
    current: str | None = None
    current_at: str | None = None
    current_t: float = 0.0
    ended: str | None = None  # "done" | "stop" (out of memory: the rest in a fresh worker)
    timed_out: str | None = None  # the metric killed at its budget, or "start-up"
    interrupted: bool = False
    returncode: int | None = None


class Runner:
    """Runs one plan into its output folder. ``run()`` returns a RunSummary or raises Interrupted / UserError.

    ``console`` (a rich Console) receives the run's notes and its live progress display; the command line hands
    it its own, a script gets a plain one on stdout."""

    def __init__(self, plan: Plan, *, fresh: bool = False, retry_errors: bool = False, allow_mixed: bool = False,
                 argv: list[str] | None = None, console=None):
        self.plan = plan
        self.out = Path(plan.out)
        self.fresh = fresh
        self.retry_errors = retry_errors
        self.allow_mixed = allow_mixed
        self.argv = list(argv if argv is not None else sys.argv)
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.metrics = dict(METRICS)
        self.device_type = "cuda" if plan.device.startswith("cuda") else "cpu"
        self.stop = threading.Event()
        self.signal_name: str | None = None
        self.lock = threading.Lock()
        self.written: list[dict[str, Any]] = []
        self.write_error: UserError | None = None
        self.disk: dict[str, list[dict[str, Any]]] = {}  # point key -> its rows on disk
        self.folder: RunFolder | None = None

    # ------------------------------------------------------------------------------------------ the whole run
    def run(self) -> RunSummary:
        t0 = time.monotonic()
        restore = self._catch_signals()
        try:
            self.folder = self._open_folder()
            try:
                return self._run(t0)
            finally:
                self.folder.close()
        finally:
            restore()

    def _open_folder(self) -> RunFolder:
        """The output folder, locked for this run. A folder that a live cluster array writes into is refused;
        rows a finished one left in shards are merged first (dimbench.cluster.collect)."""
        refuse_live_array(self.out)  # before --fresh moves anything aside
        folder = RunFolder(self.out, fresh=self.fresh, command=shlex.join(self.argv))
        try:
            for warning in settle(folder, refuse_live=False, retry_errors=self.retry_errors).warnings:
                self.console.print(f"[yellow]warning:[/] {warning}")
        except BaseException:
            folder.close()
            raise
        return folder

    def _workers(self, jobs: list[_PointJob]) -> tuple[str, Any, list[processes.Slot]]:
        """How workers start (the method's name), its multiprocessing context, and the slots they run in."""
        method = processes.start_method(self.plan.device)
        ctx = processes.context(method) if jobs else None  # (the CLI may have started the fork server already)
        return method, ctx, processes.slots(self.plan.device)

    def _run(self, t0: float) -> RunSummary:
        folder = self.folder
        rows, torn = folder.read_rows(retry_errors=self.retry_errors)
        if torn:
            self.console.print(f"[yellow]warning:[/] {torn} (cut away; the metric it belonged to is measured again)")
        record = folder.environment()
        folder.check_suite(record, self.plan.suite.name, self.device_type, self.plan.settings.fingerprint(),
                           self.allow_mixed)
        self._check_declarations()
        for row in rows:
            self.disk.setdefault(row.get("point_key"), []).append(row)
        jobs, skip_rows, complete = self._plan()
        method, ctx, slots = self._workers(jobs)
        entry = self._record_start(record)
        try:
            self._append(skip_rows)
            self._announce(jobs, complete, len(slots), method)
            if jobs and not self.stop.is_set():
                self._execute(jobs, slots, ctx)
        finally:
            wall = time.monotonic() - t0
            self._record_finish(entry, wall)
        if self.write_error is not None:
            raise self.write_error
        if self.signal_name is not None:
            raise Interrupted(self._resume_hint())
        return RunSummary(out=self.out, results=folder.results, points=len(self.plan.points),
                          measured_points=len(jobs), rows_written=len(self.written), wall_s=wall,
                          counts=_count(self.written))

    def _catch_signals(self):
        """Ctrl-C and SIGTERM set the stop flag (a second one exits at once); returns what restores them."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame):
            if self.signal_name is not None:
                raise KeyboardInterrupt
            self.signal_name = signal.Signals(signum).name
            self.stop.set()

        for s in previous:
            signal.signal(s, on_signal)
        return lambda: [signal.signal(s, h) for s, h in previous.items()]

    @property
    def final(self) -> dict[tuple, str]:
        """identity -> status of the final rows on disk (kept by the run folder)."""
        return self.folder.final

    # ---------------------------------------------------------------------------------------- what to measure
    def _on_disk(self, key: str, metric: str) -> list[str | None]:
        """The status on disk of each final row the metric declares at a point (None: not there)."""
        return [self.final.get((key, row, None)) for row in self.metrics[metric].final_rows]

    def _plan(self) -> tuple[list[_PointJob], list[dict[str, Any]], int]:
        """Jobs for the incomplete metrics, rows for the skipped ones not on disk yet, and how many points are
        complete already. A metric to run whose rows are all skips is run again (its skip may no longer hold)."""
        jobs, skip_rows, complete = [], [], 0
        for pp in self.plan.points:
            key = pp.point.key
            for metric, reason in pp.skipped.items():
                if None in self._on_disk(key, metric):
                    skip_rows += failure_rows(pp.point, self.metrics[metric], "skipped", reason, now_iso())
            todo = [m for m in pp.run if not is_complete(self.final, key, self.metrics[m].final_rows)]
            if todo:
                jobs.append(_PointJob(pp, todo))
            else:
                complete += 1
        return jobs, skip_rows, complete

    def _append(self, rows: list[dict[str, Any]]) -> bool:
        """Append the rows not on disk yet, durably; False when they could not be written (the run then stops,
        having lost no complete row)."""
        with self.lock:
            if self.write_error is not None:
                return False
            try:
                new = self.folder.append_once(rows, retry_errors=self.retry_errors)
            except ResultsWriteError as exc:
                self.write_error = UserError(f"{exc}. Free some space (or fix the folder) and run the same command "
                                             "again: it measures the rest")
                self.stop.set()
                return False
            self.written.extend(new)
            for row in new:
                self.disk.setdefault(row["point_key"], []).append(row)
            return True

    def _check_declarations(self) -> None:
        """Every metric and model of the plan can be handed to a worker (a UserError names the one that cannot)."""
        names = {m for pp in self.plan.points for m in pp.run}
        processes.pack([self.metrics[m] for m in names])
        for model in {pp.point.model for pp in self.plan.points}:
            info = models.model_info(model)
            processes.pack((info, info.family_info))

    # ------------------------------------------------------------------------------------------- the workers
    def _execute(self, jobs: list[_PointJob], slots: list[processes.Slot], ctx) -> None:
        todo: queue.Queue = queue.Queue()
        for job in jobs:
            todo.put(job)
        errors: list[BaseException] = []
        with progress_bar(self.console, total=len(self.plan.points),
                          completed=len(self.plan.points) - len(jobs)) as progress:

            def work(slot: processes.Slot) -> None:
                while not self.stop.is_set():
                    try:
                        job = todo.get_nowait()
                    except queue.Empty:
                        return
                    t, before = time.monotonic(), len(self.written)
                    try:
                        self._run_point(job, slot, ctx, progress)
                    except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                        errors.append(exc)
                        self.stop.set()
                        return
                    if not self.stop.is_set():
                        key = job.plan.point.key  # (other slots write rows of their own points meanwhile)
                        rows = [r for r in self.written[before:] if r["point_key"] == key]
                        progress.finished(job.plan.point, rows, time.monotonic() - t)

            threads = [threading.Thread(target=work, args=(s,), daemon=True, name=f"dimbench-{s.name}")
                       for s in slots]
            for th in threads:
                th.start()
            for th in threads:
                th.join()  # signals only set the stop flag, so the main thread can simply wait
        if errors:
            raise errors[0]

    def _worker_job(self, pp: PointPlan, pending: list[str]) -> Job:
        point = pp.point
        on_disk = {m: {(r["metric"], row_identity(r)[2]) for r in self.disk.get(point.key, [])
                       if row_identity(r) in self.final and r["metric"] in self.metrics[m].produces}
                   for m in pending}
        info = models.model_info(point.model)
        return Job(point=point, metrics=[self.metrics[m] for m in pending],
                   options={m: self.plan.settings.options[m] for m in pending}, out_dir=str(self.out),
                   budget={m: b for m, b in pp.budget.items() if m in pending},
                   gmacs_per_image=gmacs_per_image(self.disk.get(point.key, [])), on_disk=on_disk,
                   model=(info, info.family_info), plugins=loaded_plugins())

    def _run_point(self, job: _PointJob, slot: processes.Slot, ctx, progress) -> None:
        pp, point = job.plan, job.plan.point
        pending = list(job.metrics)
        log = self.folder.log(point.key)
        while pending and not self.stop.is_set():
            _log_line(log, f"=== {now_iso()} worker ({ctx.get_start_method()}, {slot.name}) for {', '.join(pending)}")
            try:
                worker = processes.Worker(ctx, self._worker_job(pp, pending), log, slot.env)
            except Exception as exc:  # noqa: BLE001 - cannot start (no memory for a process, say)
                self._fail(point, pending, "error", f"could not start a worker: {type(exc).__name__}: {exc}")
                return
            try:
                outcome = self._follow(worker, point, progress)
            finally:
                if not worker.ended:  # an unexpected error here must not leave the worker measuring on
                    self._handle_late(worker.kill(), _Outcome(), worker, point, progress)
            if outcome.interrupted:
                return
            pending = [m for m in pending if m not in outcome.finished]
            current = outcome.current
            if outcome.timed_out == "start-up":
                self._fail(point, pending, "error", f"the worker did not start a metric within {IDLE_S:g} s "
                           f"(log: {log})")
                return
            if outcome.timed_out == "idle":
                continue  # stuck between two metrics: the rest in a fresh worker
            if outcome.timed_out:
                budget = self.plan.settings.timeout_of(current)
                self._fail(point, [current], "error", f"timeout after {budget:g} s", outcome.current_at,
                           time.monotonic() - outcome.current_t)
                pending.remove(current)
                continue  # the point's other metrics in a fresh worker
            if outcome.ended == "done":
                return
            if outcome.ended == "stop":
                continue  # out of memory: the rest in a fresh process
            reason = _exit_reason(outcome.returncode, log)  # died without saying done: crash, kill, failure
            if current:
                self._fail(point, [current], "error", f"{reason} while measuring '{current}'", outcome.current_at,
                           time.monotonic() - outcome.current_t)
                pending.remove(current)
            elif not outcome.finished:  # no progress at all: another worker would fail the same way
                self._fail(point, pending, "error", f"{reason} before measuring anything")
                return

    def _follow(self, worker: processes.Worker, point, progress) -> _Outcome:
        """Read the worker's events until it ends, runs past a budget, or the run is stopped."""
        out = _Outcome()
        deadline = time.monotonic() + IDLE_S
        while True:
            for ev in worker.events(POLL_S):
                self._handle(ev, out, worker, point, progress)
                if ev.get("event") == "start":
                    deadline = out.current_t + self.plan.settings.timeout_of(out.current)
                elif ev.get("event") == "end":
                    deadline = time.monotonic() + IDLE_S
            if worker.ended:
                out.returncode = worker.exitcode(wait=10)
                if out.returncode is None:
                    self._handle_late(worker.kill(), out, worker, point, progress)
                    out.returncode = worker.exitcode()
                worker.close()
                return out
            if self.stop.is_set():
                self._handle_late(worker.kill(), out, worker, point, progress)
                out.interrupted = True
                return out
            if time.monotonic() > deadline:
                self._handle_late(worker.kill(), out, worker, point, progress)
                if out.current:
                    out.timed_out = out.current
                elif out.ended is None:  # stuck before its first metric, or between two
                    out.timed_out = "idle" if out.finished else "start-up"
                return out

    def _handle(self, ev: dict[str, Any], out: _Outcome, worker: processes.Worker, point, progress) -> None:
        kind, metric = ev.get("event"), ev.get("metric")
        if kind == "start":
            out.current, out.current_at, out.current_t = metric, ev.get("started_at"), time.monotonic()
            progress.note(point, metric)
        elif kind == "rows":
            worker.acknowledge(self._append(ev["rows"]))
        elif kind == "progress":
            progress.note(point, metric, ev)
        elif kind == "end":
            out.finished.append(metric)
            out.current = None
        elif kind in ("done", "stop"):
            out.ended = kind

    def _handle_late(self, events: list[dict[str, Any]], out: _Outcome, worker, point, progress) -> None:
        """Events a killed worker had sent before it died: its rows are written like any others."""
        for ev in events:
            if ev.get("event") == "rows":
                self._append(ev["rows"])
            else:
                self._handle(ev, out, worker, point, progress)

    def _fail(self, point, metrics: list[str], status: str, error: str, started_at: str | None = None,
              duration_s: float = 0.0) -> None:
        self._append([r for m in metrics for r in failure_rows(point, self.metrics[m], status, error,
                                                                started_at or now_iso(), duration_s)])

    # ---------------------------------------------------------------------------------------------- records
    def _record_start(self, record: dict[str, Any] | None) -> dict[str, Any]:
        """Write (first run) or extend (resume) environment.json; returns this run's entry."""
        if self.device_type == "cpu":
            current = collect(self.argv, self.plan.device)
        else:  # never touch CUDA device state in the runner: it would sit beside the measured workers
            current = collect_isolated(self.argv, self.plan.device)
        suite = self.plan.suite
        entry: dict[str, Any] = {"started_at": now_iso(), "command": current.get("command"), "suite": suite.name,
                                 "device": self.plan.device, "finished_at": None, "wall_s": None,
                                 "interrupted": None, "rows_written": None}
        self._record, differ = self.folder.begin_record(
            record, current, suite=suite.name, suite_file=str(suite.path), device_type=self.device_type,
            settings=self.plan.settings.fingerprint(), entry=entry)
        if differ:
            self.console.print(f"[yellow]warning:[/] resuming in a different environment ({', '.join(differ)} "
                               f"differ from {self.folder.environment_path}); this run's environment is kept "
                               "in its 'runs' entry")
        return entry

    def _record_finish(self, entry: dict[str, Any], wall_s: float) -> None:
        try:
            self.folder.end_record(self._record, entry, wall_s=wall_s, interrupted=self.signal_name is not None,
                                   rows_written=len(self.written),
                                   stopped_by=str(self.write_error) if self.write_error is not None else None)
        except ResultsWriteError as exc:
            self.write_error = self.write_error or exc

    def _announce(self, jobs: list[_PointJob], complete: int, nslots: int, method: str) -> None:
        total = len(self.plan.points)
        where = f"{nslots} GPUs" if nslots > 1 else self.plan.device
        line = (f"Suite [bold]{self.plan.suite.name}[/] on {where}: {total} points, {len(jobs)} to measure "
                f"(workers: {method}), results -> {self.folder.results}")
        if complete:
            line += f"; {complete} already complete (resumed)"
        self.console.print(line)

    def _resume_hint(self) -> str:
        cmd = [a for a in self.argv if a != "--fresh"]
        if "--out" not in cmd and not any(a.startswith("--out=") for a in cmd):
            cmd += ["--out", str(self.out)]
        return (f"interrupted ({self.signal_name}): {len(self.written)} rows written this time are kept in "
                f"{self.folder.results}; resume with: {shlex.join(cmd)}")


def _count(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row.get("status")] = out.get(row.get("status"), 0) + 1
    return out


def _log_line(log: Path, text: str) -> None:
    """A line in the point's log; best effort (a full disk is reported by the results file, not here)."""
    try:
        with open(log, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError:
        pass


def _log_tail(log: Path) -> str | None:
    """The last informative line of a worker log (the fatal error, usually)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    lines = [ln for ln in lines if not ln.startswith("===")]
    return lines[-1][:300] if lines else None


def _exit_reason(rc: int | None, log: Path) -> str:
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        what = f"worker killed by {name}"
        if rc == -signal.SIGSEGV:
            what = "worker crashed (SIGSEGV, segmentation fault)"
        elif rc == -signal.SIGKILL:
            what += " (possibly the kernel's out-of-memory killer)"
    else:
        what = f"worker exited with status {rc}"
    tail = _log_tail(log)
    return what + (f"; last log line: {tail}" if tail else "") + f" (log: {log})"
