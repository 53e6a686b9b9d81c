"""Run a suite: plan, resume, one isolated worker per point, durable results, progress, summary.

- Every point runs in a worker process (``dimbench.worker``): an out-of-memory error, an exception, a crash
  (segfault, SIGKILL) or a hang (killed at the suite's per-point ``timeout``) becomes a recorded row with status
  oom / error and the sweep goes on.
- The runner is the only writer of ``OUT/results.jsonl``: each metric's rows are appended (flushed and fsync'ed)
  as soon as the worker reports them.
- Re-running the same command resumes: a suite-level metric whose rows are already in the file (ok, skipped, oom,
  and error unless ``retry_errors``) is not measured again. A half-written last line left by a killed run is cut
  away with a warning. ``fresh`` moves the old results aside (``results.jsonl.bak``) and starts over.
- ``OUT/environment.json`` holds the environment of the first run and, under ``runs``, one entry per invocation
  (command, start, wall time, whether it was interrupted; its own environment too when that differs).
- With several CUDA GPUs and device ``cuda``, points are spread over them: one worker at a time per GPU, pinned
  with ``CUDA_VISIBLE_DEVICES``.
- Ctrl-C (or SIGTERM) stops the workers, keeps every row written, and says how to resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dimbench import results as res
from dimbench.console import UserError
from dimbench.environment import collect, collect_isolated, comparable, now_iso
from dimbench.suite import Plan, PointPlan
from dimbench.worker import failure_rows, gmacs_per_image

START_ENV = "DIMBENCH_WORKER_START"  # "spawn" | "fork": override how workers start (tests use both)
POLL_S = 0.05
LOGS = "logs"
WORK = ".work"


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
    report: tuple[Path, Path] | None = None
    report_error: str | None = None


@dataclasses.dataclass
class _Job:
    plan: PointPlan
    metrics: list[str]
    gmacs_per_image: float | None


# ------------------------------------------------------------------------------------------------- workers
def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class _SpawnHandle:
    """A worker in a fresh interpreter, in its own session (Ctrl-C in the terminal reaches only the runner)."""

    def __init__(self, payload: dict, log: Path, env: dict[str, str]):
        with open(log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dimbench.worker"], stdin=subprocess.PIPE, stdout=logf,
                stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True,
            )
        self.pid = self.proc.pid
        try:
            self.proc.stdin.write(json.dumps(payload).encode())
            self.proc.stdin.close()
        except BrokenPipeError:  # died at once; poll() will say how
            pass

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        _kill_group(self.pid)
        self.proc.wait()


class _ForkedProcess:
    """The runner itself, forked before it starts any thread, running the fork server's loop.

    The runner has already imported torch, the models and the metrics (validation needs them), so its fork
    serves jobs at once, without the seconds a fresh interpreter spends importing them again.
    """

    def __init__(self, log: Path, env: dict[str, str]):
        job_r, job_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        runner = os.getpid()
        pid = os.fork()
        if pid == 0:  # the server: never returns into the runner's code
            try:
                os.setsid()
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.close(job_w)
                os.close(ctl_r)
                logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(logfd, 1)  # also releases the runner's stdout/stderr (a pipe someone may wait on)
                os.dup2(logfd, 2)
                os.close(logfd)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.close(devnull)
                os.environ.update(env)
                from dimbench.worker import serve

                serve(os.fdopen(job_r, "r"), os.fdopen(ctl_w, "w", buffering=1), runner, preload=False)
            finally:
                os._exit(0)
        os.close(job_r)
        os.close(ctl_w)
        self.pid = pid
        self.stdin = os.fdopen(job_w, "wb")
        self.stdout = os.fdopen(ctl_r, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("dimbench worker server", timeout)
            time.sleep(POLL_S)
        return self.returncode


class _ForkServer:
    """Forks one child per job from a process that has torch, the models and the metrics imported.

    That process is the runner's own fork when the runner has no thread yet (the normal case), else a fresh
    ``python -m dimbench.worker --serve``.
    """

    def __init__(self, log: Path, env: dict[str, str]):
        self.log = log
        self.env = env
        self.proc = None
        self.messages: queue.Queue = queue.Queue()
        self.exits: dict[int, int] = {}
        self.dead = False

    def start(self) -> None:
        if threading.active_count() == 1:
            self.proc = _ForkedProcess(self.log, self.env)
        else:  # forking a process with threads is unsafe (locks held by other threads): a fresh interpreter
            with open(self.log, "ab") as logf:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "dimbench.worker", "--serve"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=logf, env={**os.environ, **self.env}, start_new_session=True,
                )
        self.dead = False
        self.messages = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.messages), daemon=True).start()

    @staticmethod
    def _read(stream, messages: queue.Queue) -> None:
        for line in stream:
            try:
                messages.put(json.loads(line))
            except ValueError:
                continue
        messages.put({"event": "eof"})

    def _next(self, timeout: float) -> dict | None:
        try:
            msg = self.messages.get(timeout=timeout)
        except queue.Empty:
            return None
        if msg.get("event") == "eof":
            self.dead = True
        elif msg.get("event") == "exit":
            self.exits[msg["pid"]] = msg["returncode"]
        return msg

    def spawn(self, payload: dict, stop: threading.Event) -> int:
        """Send a job; returns the child's pid. A dead server is restarted (once per call)."""
        for _attempt in (1, 2):
            if self.proc is None or self.dead or self.proc.poll() is not None:
                self.start()
            try:
                self.proc.stdin.write((json.dumps(payload) + "\n").encode())
                self.proc.stdin.flush()
            except OSError:  # it died since the check
                self.dead = True
                continue
            deadline = time.monotonic() + 120  # a fresh interpreter's first job waits for its imports
            while time.monotonic() < deadline and not stop.is_set():
                msg = self._next(0.2)
                if msg is not None and msg.get("event") == "spawned":
                    return int(msg["pid"])
                if self.dead:
                    break
            if stop.is_set():
                break
        raise RuntimeError(f"the worker server did not start a worker (see {self.log})")

    def poll(self, pid: int) -> int | None:
        while self._next(0) is not None:
            pass
        if pid in self.exits:
            return self.exits.pop(pid)
        if self.dead:
            return -signal.SIGKILL  # the server died, and its watchdog-killed child with it
        return None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc.pid)
            self.proc.wait()


class _ForkHandle:
    def __init__(self, server: _ForkServer, payload: dict, stop: threading.Event):
        self.server = server
        self.pid = server.spawn(payload, stop)

    def poll(self) -> int | None:
        return self.server.poll(self.pid)

    def kill(self) -> None:
        _kill_group(self.pid)
        deadline = time.monotonic() + 10
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_S)


class _Slot:
    """One worker at a time: the CPU, or one GPU (``env`` pins it with CUDA_VISIBLE_DEVICES)."""

    def __init__(self, name: str, env: dict[str, str], method: str, work: Path):
        self.name = name
        self.env = env
        self.method = method
        self.server = _ForkServer(work / f"server-{_slug(name)}.log", env) if method == "fork" else None

    def start(self, payload: dict, log: Path, stop: threading.Event):
        if self.server is not None:
            return _ForkHandle(self.server, payload, stop)
        return _SpawnHandle(payload, log, self.env)

    def warm_up(self) -> None:
        """Start the fork server early, so its imports overlap with the runner's own set-up."""
        if self.server is not None and self.server.proc is None:
            self.server.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def kill(self) -> None:
        if self.server is not None:
            self.server.kill()


def _start_method(device: str) -> str:
    forced = os.environ.get(START_ENV)
    if forced:
        if forced not in ("spawn", "fork"):
            raise UserError(f"{START_ENV}={forced!r}: expected spawn or fork")
        return forced
    # CUDA must never be initialised in a parent that forks; the CPU gains a lot from preloaded imports.
    return "fork" if device == "cpu" and hasattr(os, "fork") else "spawn"


def _slots(device: str, work: Path) -> list[_Slot]:
    method = _start_method(device)
    if device == "cuda":
        import torch

        count = torch.cuda.device_count()
        if count > 1:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
            return [_Slot(f"cuda{i}", {"CUDA_VISIBLE_DEVICES": gpu}, method, work) for i, gpu in enumerate(ids)]
    return [_Slot(device, {}, method, work)]


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _log_tail(log: Path) -> str | None:
    """The last informative line of a worker log (the fatal error, usually)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    lines = [ln for ln in lines if not ln.startswith("===")]
    return lines[-1][:300] if lines else None


def _exit_reason(rc: int, log: Path) -> str:
    if rc < 0:
        what = f"worker killed by {_signal_name(rc)}"
        if rc == -signal.SIGSEGV:
            what = "worker crashed (SIGSEGV, segmentation fault)"
        elif rc == -signal.SIGKILL:
            what += " (possibly the kernel's out-of-memory killer)"
    else:
        what = f"worker exited with status {rc}"
    tail = _log_tail(log)
    return what + (f"; last log line: {tail}" if tail else "") + f" (log: {log})"


# --------------------------------------------------------------------------------------------------- runner
class Runner:
    """Runs one plan into its output folder. ``run()`` returns a RunSummary or raises Interrupted."""

    def __init__(self, plan: Plan, *, fresh: bool = False, retry_errors: bool = False,
                 argv: list[str] | None = None, console=None, build_report: bool = True):
        from dimbench.console import console as make_console

        self.plan = plan
        self.out = Path(plan.out)
        self.results = self.out / res.RESULTS_FILE
        self.fresh = fresh
        self.retry_errors = retry_errors
        self.argv = list(argv if argv is not None else sys.argv)
        self.console = console or make_console()
        self.do_report = build_report
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.written: list[dict[str, Any]] = []
        self.metrics = self._metric_registry()

    @staticmethod
    def _metric_registry() -> dict[str, Any]:
        from dimbench.metrics import METRICS

        return dict(METRICS)

    # --- bookkeeping
    def _produces(self, metric: str) -> tuple[str, ...]:
        m = self.metrics.get(metric)
        return tuple(m.produces) if m is not None and m.produces else (metric,)

    def _append(self, rows: list[dict[str, Any]]) -> None:
        with self.lock:
            res.append_rows(self.results, rows)
            self.written.extend(rows)

    def _prepare_folder(self) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / LOGS).mkdir(exist_ok=True)
        (self.out / WORK).mkdir(exist_ok=True)
        if self.fresh:
            for name in (res.RESULTS_FILE, res.ENVIRONMENT_FILE):
                if (self.out / name).exists():
                    os.replace(self.out / name, self.out / f"{name}.bak")
            shutil.rmtree(self.out / LOGS, ignore_errors=True)
            (self.out / LOGS).mkdir()
        torn = res.repair_torn_tail(self.results)
        if torn:
            self.console.print(f"[yellow]warning:[/] {torn} (cut away; the metric it belonged to is measured again)")
        try:
            return res.read_rows(self.results)
        except res.ResultsError as exc:
            raise UserError(str(exc)) from None

    def _environment(self, started_at: str) -> dict[str, Any]:
        """Write (first run) or extend (resume) environment.json; returns the current run's entry."""
        path = self.out / res.ENVIRONMENT_FILE
        if self.plan.device == "cpu":
            current = collect(self.argv, self.plan.device)
        else:  # never touch CUDA device state in the runner: it would sit beside the measured workers
            current = collect_isolated(self.argv, self.plan.device)
        record = res.read_environment(path) if path.exists() else None
        entry: dict[str, Any] = {"started_at": started_at, "command": current.get("command"),
                                 "device": self.plan.device, "finished_at": None, "wall_s": None,
                                 "interrupted": None}
        if record is None:
            record = {**current, "suite": self.plan.suite.name, "suite_file": str(self.plan.suite.path), "runs": []}
        else:
            before, now = comparable(record), comparable(current)
            differ = [k for k in before if before[k] != now[k]]
            if differ:
                self.console.print(f"[yellow]warning:[/] resuming in a different environment ({', '.join(differ)} "
                                   f"differ from {path}); this run's environment is kept in its 'runs' entry")
                entry["environment"] = current
        record.setdefault("runs", []).append(entry)
        res.write_json_atomic(path, record)
        self._record = record
        return entry

    def _finish_environment(self, entry: dict[str, Any], wall_s: float, interrupted: bool, rows: int) -> None:
        entry.update(finished_at=now_iso(), wall_s=round(wall_s, 3), interrupted=interrupted, rows_written=rows)
        res.write_json_atomic(self.out / res.ENVIRONMENT_FILE, self._record)

    # --- planning against what is already there
    def _jobs(self, rows: list[dict[str, Any]]) -> tuple[list[_Job], list[dict[str, Any]], int]:
        done = res.completed(rows, retry_errors=self.retry_errors)
        by_key: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_key.setdefault(row.get("point_key"), []).append(row)
        jobs, skip_rows, complete = [], [], 0
        for pp in self.plan.points:
            key = pp.point.key

            def finished(metric: str, key: str = key) -> bool:
                return any((key, name) in done for name in self._produces(metric))

            for metric, reason in pp.skipped.items():
                if not finished(metric):
                    skip_rows += failure_rows(pp.point, self._produces(metric), "skipped", reason, now_iso(), 0.0,
                                              _suite_task(metric))
            todo = [m for m in pp.run if not finished(m)]
            if todo:
                jobs.append(_Job(pp, todo, gmacs_per_image(by_key.get(key, []))))
            else:
                complete += 1
        return jobs, skip_rows, complete

    # --- one point
    def _run_point(self, job: _Job, slot: _Slot, progress) -> None:
        pp = job.plan
        point = pp.point
        timeout = self.plan.settings.timeout
        deadline = None  # set when the first worker is running: a fork server's one-time imports do not count
        pending = list(job.metrics)
        log = self.out / LOGS / f"{_slug(point.key)}.log"
        attempt = 0
        while pending and not self.stop.is_set():
            attempt += 1
            events = self.out / WORK / f"{_slug(point.key)}.{attempt}.events"
            events.unlink(missing_ok=True)
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"=== {now_iso()} worker ({slot.method}, {slot.name}) for {', '.join(pending)}\n")
            payload = {
                "point": point.to_dict(),
                "metrics": pending,
                "options": {"warmup": self.plan.settings.warmup, "repeats": self.plan.settings.repeats,
                            "out_dir": str(self.out), "out": str(self.out), "timeout": timeout},
                "budget": {m: b for m, b in pp.budget.items() if m in pending},
                "gmacs_per_image": job.gmacs_per_image,
                "events": str(events),
                "log": str(log),
                "env": slot.env,
            }
            try:
                handle = slot.start(payload, log, self.stop)
            except (OSError, RuntimeError) as exc:
                if self.stop.is_set():
                    return
                self._append([r for m in pending for r in failure_rows(
                    point, self._produces(m), "error", f"could not start a worker: {exc}", now_iso(), 0.0,
                    _suite_task(m))])
                return
            if deadline is None:
                deadline = time.monotonic() + timeout
            outcome = self._follow(handle, events, deadline, point, progress)
            events.unlink(missing_ok=True)
            if outcome["interrupted"]:
                return
            pending = [m for m in pending if m not in outcome["finished"]]
            current = outcome["current"]
            if outcome["timed_out"]:
                msg = f"timeout after {timeout:g} s"
                rows = []
                if current:
                    rows += failure_rows(point, self._produces(current), "error", msg, outcome["current_at"],
                                         time.monotonic() - outcome["current_t"], _suite_task(current))
                for m in pending:
                    if m != current:
                        rows += failure_rows(point, self._produces(m), "error",
                                             f"not run: the point's {msg} (while measuring "
                                             f"'{current or 'worker start-up'}')", now_iso(), 0.0, _suite_task(m))
                self._append(rows)
                return
            if outcome["ended"] == "done":
                pending = []  # (a worker that says done has reported every metric it was given)
            elif outcome["ended"] == "stop":
                continue  # out of memory: the rest in a fresh process
            else:  # died without saying done: crash, kill, or failure before the first metric
                reason = _exit_reason(outcome["returncode"], log)
                if current:
                    self._append(failure_rows(point, self._produces(current), "error",
                                              f"{reason} while measuring '{current}'", outcome["current_at"],
                                              time.monotonic() - outcome["current_t"], _suite_task(current)))
                    pending.remove(current)
                elif not outcome["finished"]:  # no progress at all: retrying would fail the same way
                    self._append([r for m in pending for r in failure_rows(
                        point, self._produces(m), "error", f"{reason} before measuring anything", now_iso(), 0.0,
                        _suite_task(m))])
                    return

    def _follow(self, handle, events: Path, deadline: float, point, progress) -> dict[str, Any]:
        """Tail the worker's events until it exits, times out, or the run is stopped."""
        state: dict[str, Any] = {"finished": [], "current": None, "current_at": None, "current_t": None,
                                 "ended": None, "returncode": None, "timed_out": False, "interrupted": False}
        pos = 0
        buf = b""

        def drain() -> None:
            nonlocal pos, buf
            try:
                with open(events, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except FileNotFoundError:
                return
            pos += len(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                kind = ev.get("event")
                if kind == "start":
                    state.update(current=ev["metric"], current_at=ev.get("started_at") or now_iso(),
                                 current_t=time.monotonic())
                    if progress is not None:
                        progress.note(point, ev["metric"])
                elif kind == "rows":
                    self._append(ev["rows"])
                    state["finished"].append(ev["metric"])
                    state["current"] = None
                elif kind in ("done", "stop"):
                    state["ended"] = kind

        while True:
            drain()
            rc = handle.poll()
            if rc is not None:
                drain()
                state["returncode"] = rc
                return state
            if self.stop.is_set():
                handle.kill()
                state["interrupted"] = True
                return state
            if time.monotonic() > deadline:
                handle.kill()
                drain()
                state["timed_out"] = state["ended"] is None
                return state
            time.sleep(POLL_S)

    # --- the whole run
    def run(self) -> RunSummary:
        t0 = time.monotonic()
        started_at = now_iso()
        rows = self._prepare_folder()
        slots = _slots(self.plan.device, self.out / WORK)
        jobs, skip_rows, complete = self._jobs(rows)
        if jobs:
            for slot in slots:
                slot.warm_up()
        interrupted = False
        entry = None
        old_handler = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            entry = self._environment(started_at)
            self._append(skip_rows)
            self._announce(jobs, complete, len(slots), slots[0].method)
            self._execute(jobs, slots, complete)
        except KeyboardInterrupt:
            interrupted = True
            self.stop.set()
        finally:
            for slot in slots:
                (slot.kill if interrupted else slot.close)()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, old_handler)
            wall = time.monotonic() - t0
            if entry is not None:
                self._finish_environment(entry, wall, interrupted, len(self.written))
        if interrupted:
            raise Interrupted(self._resume_hint())
        summary = RunSummary(out=self.out, results=self.results, points=len(self.plan.points),
                             measured_points=len(jobs), rows_written=len(self.written), wall_s=wall,
                             counts=_count(self.written))
        shutil.rmtree(self.out / WORK, ignore_errors=True)
        return summary

    def _announce(self, jobs: list[_Job], complete: int, nslots: int, method: str) -> None:
        total = len(self.plan.points)
        where = f"{nslots} GPUs" if nslots > 1 else self.plan.device
        line = (f"Suite [bold]{self.plan.suite.name}[/] on {where}: {total} points, {len(jobs)} to measure "
                f"(workers: {method}), results -> {self.results}")
        if complete:
            line += f"; {complete} already complete (resumed)"
        self.console.print(line)

    def _execute(self, jobs: list[_Job], slots: list[_Slot], complete: int) -> None:
        from dimbench.console import progress_bar

        todo: queue.Queue = queue.Queue()
        for job in jobs:
            todo.put(job)
        errors: list[BaseException] = []
        with progress_bar(self.console, total=len(self.plan.points), completed=complete) as progress:

            def work(slot: _Slot) -> None:
                while not self.stop.is_set():
                    try:
                        job = todo.get_nowait()
                    except queue.Empty:
                        return
                    t = time.monotonic()
                    before = len(self.written)
                    try:
                        self._run_point(job, slot, progress)
                    except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                        errors.append(exc)
                        self.stop.set()
                        return
                    if not self.stop.is_set():
                        progress.finished(job.plan.point, self.written[before:], time.monotonic() - t)

            threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in slots]
            for th in threads:
                th.start()
            try:
                for th in threads:
                    while th.is_alive():
                        th.join(timeout=0.2)  # a timed join keeps the main thread responsive to Ctrl-C
            except KeyboardInterrupt:
                self.stop.set()  # each thread kills its worker at its next poll and records nothing more
                for th in threads:
                    th.join(timeout=30)
                raise
        if errors:
            raise errors[0]

    def _resume_hint(self) -> str:
        cmd = [a for a in self.argv]
        if "--fresh" in cmd:
            cmd.remove("--fresh")
        if "--out" not in cmd and not any(a.startswith("--out=") for a in cmd):
            cmd += ["--out", str(self.out)]
        return (f"interrupted: {len(self.written)} rows written this time are kept in {self.results}; "
                f"resume with: {shlex.join(cmd)}")


def _suite_task(metric: str) -> str | None:
    return {"params": "count", "flops": "count", "fvcore": "count", "train_step": "train_step"}.get(metric)


def _count(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row.get("status")] = out.get(row.get("status"), 0) + 1
    return out


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def build_report(out: Path) -> tuple[tuple[Path, Path] | None, str | None]:
    """dimbench.report.build_report(out) when the report package is there; (paths, None) or (None, why not)."""
    try:
        from dimbench.report import build_report as _build
    except ImportError as exc:
        return None, f"report not built: dimbench.report is not available ({exc})"
    try:
        html, pdf = _build(out)
        return (Path(html), Path(pdf)), None
    except Exception as exc:  # noqa: BLE001 - a report failure is reported, never fatal to the run
        return None, f"report failed: {type(exc).__name__}: {exc}"
