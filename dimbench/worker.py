"""Measure one sweep point in a process of its own: ``python -m dimbench.worker``.

Isolation is the point: an out-of-memory error, a crash (even a segfault) or a hang at one point must become a
recorded result while the sweep goes on, and PyTorch often cannot give memory back in-process after an OOM.

Protocol (the runner is the only writer of results.jsonl; the worker only reports):

- The job (one JSON object) arrives on stdin: the point, the suite-level metrics to measure, the metric options,
  budgets, the path of an *events file* and of a log file.
- The worker appends one JSON event per line to the events file, flushed as it goes:
  ``{"event": "start", "metric": m}``, ``{"event": "rows", "metric": m, "rows": [...]}``, then
  ``{"event": "done"}``; after an out-of-memory error it reports the rows and ``{"event": "stop"}`` and exits,
  and the runner measures the remaining metrics in a fresh process. A metric that started but never reported
  rows is what the runner records as the crash / timeout.
- Its stdout and stderr go to the point's log file (tracebacks of error rows are there).

Two ways to start a worker (``dimbench.runner`` picks; ``DIMBENCH_WORKER_START=spawn|fork`` overrides):

- *spawn*: a fresh interpreter per point (always used for CUDA: no CUDA state can leak from a parent).
- *fork*: a fork server that has torch, the models and the metrics imported forks a child per job (the runner's
  own fork, made before the runner starts any thread; else ``python -m dimbench.worker --serve``). The child is
  just as isolated (own address space, own process group), but starts in milliseconds instead of the ~4-7 s an
  interpreter spends importing torch and timm: this is what keeps a CPU sweep of a dozen points fast. The
  server never runs a tensor op itself, so the children inherit no thread pools.

Testing aid, fault injection: ``DIMBENCH_INJECT_FAULT="SUBSTRING=KIND[;SUBSTRING=KIND...]"`` makes every metric
whose ``"<point key>#<metric>"`` contains SUBSTRING fail with KIND when it starts: ``error`` (an exception),
``oom`` (torch.OutOfMemoryError), ``crash`` (the process kills itself with SIGSEGV) or ``hang`` (it sleeps until
the runner's per-point timeout kills it). Example: ``DIMBENCH_INJECT_FAULT="dit_s_2|r64=crash"``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

FAULT_ENV = "DIMBENCH_INJECT_FAULT"
FAULT_KINDS = ("error", "oom", "crash", "hang")

COUNT_ROWS = {"params", "params_trainable", "gmacs", "gflops", "gmacs_fvcore"}
COUNT_METRICS = {"params", "flops", "fvcore"}


def default_task(metric: str) -> str:
    """The contract's ``task`` of a row: count (params, flops), train_step (train_*), else forward.

    A Measurement may carry its own ``task`` attribute, which wins.
    """
    if metric in COUNT_ROWS or metric in COUNT_METRICS:
        return "count"
    if metric.startswith("train_"):
        return "train_step"
    return "forward"


def parse_faults(spec: str | None) -> list[tuple[str, str]]:
    """``"a=error;b=hang"`` -> [("a", "error"), ("b", "hang")]; a malformed spec is an error (it is a test aid)."""
    out = []
    for part in (spec or "").split(";"):
        part = part.strip()
        if not part:
            continue
        substring, sep, kind = part.rpartition("=")
        if not sep or not substring or kind not in FAULT_KINDS:
            raise ValueError(f"{FAULT_ENV}={spec!r}: expected SUBSTRING=KIND[;...] with KIND one of "
                             f"{', '.join(FAULT_KINDS)}, got {part!r}")
        out.append((substring, kind))
    return out


def inject_fault(faults: list[tuple[str, str]], point_key: str, metric: str) -> None:
    """Act out the first fault whose substring occurs in ``"<point key>#<metric>"`` (see the module docstring)."""
    target = f"{point_key}#{metric}"
    for substring, kind in faults:
        if substring not in target:
            continue
        message = f"injected fault '{kind}' ({FAULT_ENV}={substring}={kind})"
        if kind == "error":
            raise RuntimeError(message)
        if kind == "oom":
            import torch

            raise getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)(message)
        print(message, file=sys.stderr, flush=True)
        if kind == "crash":
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)  # die like a real segfault, no Python handler
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(10)  # the signal is delivered asynchronously
        while kind == "hang":
            time.sleep(3600)


def is_oom(exc: BaseException) -> bool:
    """torch's out-of-memory error, or the CPU allocator's failure (a plain RuntimeError)."""
    import torch

    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if t)
    if isinstance(exc, oom_types):
        return True
    text = str(exc)
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "can't allocate memory" in text or "out of memory" in text.lower() or isinstance(exc, MemoryError)
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def point_fields(point: Any) -> dict[str, Any]:
    return {
        "suite": point.suite,
        "point_key": point.key,
        "model": point.model,
        "resolution": point.resolution,
        "input_size": point.input_size,
        "batch": point.batch,
        "dtype": point.dtype,
        "device": point.device,
    }


def make_row(point: Any, metric: str, *, status: str, value: float | None = None, unit: str | None = None,
             method: str = "not measured", error: str | None = None, extra: dict | None = None,
             task: str | None = None, started_at: str, duration_s: float) -> dict[str, Any]:
    """One result row in the contract's column order."""
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN/inf; a non-finite measurement is a failed one, said so rather than written as null-ok
        status, error, value = "error", f"non-finite value {value!r}", None
    return {
        **point_fields(point),
        "task": task or default_task(metric),
        "metric": metric,
        "value": value if status == "ok" else None,
        "unit": unit,
        "status": status,
        "method": method,
        "started_at": started_at,
        "duration_s": round(duration_s, 4),
        "error": error,
        "extra": extra or {},
    }


def failure_rows(point: Any, produces: tuple[str, ...], status: str, error: str, started_at: str,
                 duration_s: float, task: str | None = None) -> list[dict[str, Any]]:
    """Rows for a suite-level metric that produced nothing: one per row metric it would have produced."""
    return [make_row(point, name, status=status, error=error, started_at=started_at, duration_s=duration_s,
                     task=task) for name in produces]


def gmacs_per_image(rows: list[dict[str, Any]]) -> float | None:
    """GMACs per image from a flops metric's ``gmacs`` row (extra.gmacs_per_image, else value / batch)."""
    for row in rows:
        if row.get("metric") == "gmacs" and row.get("status") == "ok" and row.get("value") is not None:
            extra = row.get("extra") or {}
            if extra.get("gmacs_per_image") is not None:
                return float(extra["gmacs_per_image"])
            return float(row["value"]) / max(int(row.get("batch") or 1), 1)
    return None


class Events:
    """Appends events to the job's events file, one flushed JSON line each."""

    def __init__(self, path: str):
        self._f = open(path, "a", encoding="utf-8")

    def emit(self, **event: Any) -> None:
        self._f.write(json.dumps(event, default=str) + "\n")
        self._f.flush()


def _now() -> str:
    from dimbench.environment import now_iso

    return now_iso()


def run_job(job: dict[str, Any]) -> int:
    """Measure the job's metrics at its point, reporting through the events file. Returns the exit status."""
    events = Events(job["events"])
    from dimbench.metrics import METRICS, SkipMetric
    from dimbench.points import SweepPoint

    point = SweepPoint.from_dict(job["point"])
    options = dict(job.get("options") or {})
    budget: dict[str, float] = job.get("budget") or {}
    known_gmacs: float | None = job.get("gmacs_per_image")
    faults = parse_faults(os.environ.get(FAULT_ENV))
    produced: list[dict[str, Any]] = []

    for name in job["metrics"]:
        metric = METRICS[name]
        started_at = _now()
        t0 = time.perf_counter()
        events.emit(event="start", metric=name, started_at=started_at)
        task = "count" if name in COUNT_METRICS else ("train_step" if name == "train_step" else None)
        try:
            inject_fault(faults, point.key, name)
            if name in budget:
                skip = _over_budget(point, name, budget[name], known_gmacs, produced, METRICS, options)
                if skip:
                    raise SkipMetric(skip)
            measurements = metric.fn(point, options)
            duration = time.perf_counter() - t0
            rows = [
                make_row(point, m.metric, status=m.status, value=m.value, unit=m.unit, method=m.method,
                         error=m.error, extra=m.extra, task=getattr(m, "task", None), started_at=started_at,
                         duration_s=duration)
                for m in measurements
            ]
            if not rows:
                rows = failure_rows(point, metric.produces, "error", f"metric '{name}' returned no measurement",
                                    started_at, duration, task)
        except SkipMetric as exc:
            rows = failure_rows(point, metric.produces, "skipped", str(exc), started_at,
                                time.perf_counter() - t0, task)
        except Exception as exc:  # noqa: BLE001 - any failure of a metric is a recorded result
            oom = is_oom(exc)
            traceback.print_exc()
            rows = failure_rows(point, metric.produces, "oom" if oom else "error", first_line(exc), started_at,
                                time.perf_counter() - t0, task)
            if oom:
                # Memory is often not recoverable in-process after an OOM: report, stop, and let the runner
                # measure the remaining metrics in a fresh process.
                events.emit(event="rows", metric=name, rows=rows)
                events.emit(event="stop", reason="oom")
                return 0
        produced.extend(rows)
        events.emit(event="rows", metric=name, rows=rows)
    events.emit(event="done")
    return 0


def _over_budget(point, name, limit, known_gmacs, produced, metrics, options) -> str | None:
    """The skip reason when GMACs per image x batch exceeds the suite's limit for ``name`` (else None)."""
    gmacs = gmacs_per_image(produced) if known_gmacs is None else known_gmacs
    how = "meta count"
    if gmacs is None:
        import dataclasses

        one = dataclasses.replace(point, batch=1)
        rows = [{"metric": m.metric, "status": m.status, "value": m.value, "batch": 1, "extra": m.extra}
                for m in metrics["flops"].fn(one, options)]
        gmacs = gmacs_per_image(rows)
        how = "meta count, made for this check"
    if gmacs is None:
        return None
    cost = gmacs * point.batch
    if cost <= limit:
        return None
    return (f"over the suite's budget: {gmacs:.1f} GMACs per image ({how}) x batch {point.batch} = {cost:.1f} > "
            f"max_gmacs_x_batch {limit:g}")


def _watch_parent(parent: int, on_orphan) -> None:
    """Exit when the parent process goes away (a killed runner must not leave workers measuring on)."""

    def loop():
        while True:
            if os.getppid() != parent:
                on_orphan()
                os._exit(70)
            time.sleep(0.5)

    threading.Thread(target=loop, daemon=True, name="dimbench-parent-watch").start()


def _spawned_main() -> int:
    """One job from stdin, in this fresh interpreter."""
    _watch_parent(os.getppid(), lambda: None)
    job = json.loads(sys.stdin.read())
    os.environ.update(job.get("env") or {})
    return run_job(job)


def serve(jobs, control, parent: int, *, preload: bool = True) -> None:
    """The fork server's loop: one JSON job per line on ``jobs``; per job, fork a child that runs it.

    Control messages on ``control`` (a line each): ``{"event": "ready"}``, ``{"event": "spawned", "pid": N}``,
    ``{"event": "exit", "pid": N, "returncode": R}`` (R negative: killed by signal -R). The server exits when
    ``jobs`` closes or ``parent`` (the runner) goes away, killing a running child with it.
    """
    child: list[int] = []

    def kill_child():
        for pid in child:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    _watch_parent(parent, kill_child)
    preload_error = None
    if preload:
        try:  # the expensive imports, done once; children inherit them
            import torch  # noqa: F401

            import dimbench.metrics  # noqa: F401
            import models  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - a child will hit (and record) the same error
            preload_error = first_line(exc)
    control.write(json.dumps({"event": "ready", "preload_error": preload_error}) + "\n")

    for line in jobs:
        if not line.strip():
            continue
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: own process group, own log, the job's environment
            status = 1
            try:
                os.setsid()
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.close(log)
                jobs.close()
                control.close()
                os.environ.update(job.get("env") or {})
                _watch_parent(os.getppid(), lambda: None)
                status = run_job(job)
            except BaseException:  # noqa: BLE001 - report in the log; the runner records the missing rows
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        child[:] = [pid]
        control.write(json.dumps({"event": "spawned", "pid": pid}) + "\n")
        _, wait_status = os.waitpid(pid, 0)
        child.clear()
        control.write(json.dumps({"event": "exit", "pid": pid,
                                  "returncode": os.waitstatus_to_exitcode(wait_status)}) + "\n")


def _serve() -> int:
    """``--serve`` in a fresh interpreter: jobs on stdin, control messages on the original stdout (fd 1 is
    then pointed at stderr, so that nothing else printed can corrupt them)."""
    control = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    serve(sys.stdin, control, os.getppid())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--serve"]:
        return _serve()
    if argv:
        print("usage: python -m dimbench.worker [--serve]  (a job as JSON on stdin; see the module docstring)",
              file=sys.stderr)
        return 2
    return _spawned_main()


if __name__ == "__main__":
    sys.exit(main())
