"""Measure one sweep point: the loop a worker process runs (:func:`run_job`), and the result rows it makes.

Isolation is the point of the worker process (:mod:`dimbench.processes` starts it): an out-of-memory error, a
crash (even a segfault) or a hang at one point must become a recorded result while the sweep goes on, and PyTorch
often cannot give memory back in-process after an OOM.

A job holds the point, the declarations of the metrics to measure (:class:`~dimbench.metrics.Metric` objects, so a
metric registered by a plugin or a test needs no registry here) and of the point's model, each metric's resolved
options, budgets, and the rows a previous run already wrote. The worker reports through ``send(event)``, the
runner being the only writer of results.jsonl:

- ``{"event": "start", "metric": m, "started_at": ...}`` when a metric starts;
- ``{"event": "rows", "metric": m, "rows": [...]}`` as rows are made: a long task streams them as it goes, a
  short metric sends them all at its end;
- ``{"event": "progress", "metric": m, "step": ..., "total": ..., ...}`` from long tasks;
- ``{"event": "end", "metric": m}`` once every row of the metric was sent;
- ``{"event": "done"}`` after the last metric, or ``{"event": "stop", "reason": "oom"}`` after an out-of-memory
  error (the runner measures the remaining metrics in a fresh process).

A metric that started but never ended is what the runner records as the crash or the timeout.

Testing aid, fault injection: ``DIMBENCH_INJECT_FAULT="SUBSTRING=KIND[;SUBSTRING=KIND...]"`` makes every metric
whose ``"<point key>#<metric>"`` contains SUBSTRING fail with KIND when it starts: ``error`` (an exception),
``oom`` (torch.OutOfMemoryError), ``crash`` (the process kills itself with SIGSEGV) or ``hang`` (it sleeps until
the runner kills it at the metric's timeout). Example: ``DIMBENCH_INJECT_FAULT="dit_s_2|r64=crash"``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from dimbench.environment import now_iso
from dimbench.metrics import row_declaration
from dimbench.metrics.base import Measurement, Metric, MetricContext, SkipMetric
from dimbench.metrics.flops import count_point_flops
from dimbench.points import SweepPoint

FAULT_ENV = "DIMBENCH_INJECT_FAULT"
FAULT_KINDS = ("error", "oom", "crash", "hang")

Send = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------------------------------------------- rows
def point_fields(point: SweepPoint) -> dict[str, Any]:
    return {"suite": point.suite, "point_key": point.key, "model": point.model, "resolution": point.resolution,
            "input_size": point.input_size, "batch": point.batch, "dtype": point.dtype, "device": point.device}


def make_row(point: SweepPoint, metric: Metric, m: Measurement, *, started_at: str,
             duration_s: float) -> dict[str, Any]:
    """One result row in the contract's column order; unit and task come from the metric's declaration."""
    declared = metric.row(m.metric)
    status, value, error = m.status, m.value, m.error
    if m.unit is not None and m.unit != declared.unit:
        status, value, error = "error", None, (f"metric '{metric.name}' measured {m.metric} in {m.unit!r}, but "
                                               f"declares {declared.unit!r}")
    step = m.extra.get("step") if m.extra else None
    if declared.series != (isinstance(step, int) and not isinstance(step, bool)):
        # a row's identity includes its step: without one, every step would be one row; with one on a final row,
        # that row would never count as written
        status, value, error = "error", None, (
            f"metric '{metric.name}': {m.metric} is declared " + ("a series row, one per step, but has no integer "
                                                                 "extra['step']" if declared.series else
                                                                 f"once per point, but has a step ({step!r})"))
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN/inf; a non-finite measurement is a failed one, said so rather than written as null-ok
        status, error, value = "error", f"non-finite value {value!r}", None
    return {
        **point_fields(point),
        "task": declared.task,
        "metric": m.metric,
        "value": value if status == "ok" else None,
        "unit": declared.unit,
        "status": status,
        "method": m.method + adaptation_note(point.model),
        "started_at": started_at,
        "duration_s": round(duration_s, 4),
        "error": error,
        # A compiled point's rows say so in extra (the report's facets tell compiled from eager by it).
        "extra": {**(m.extra or {}), "compile": point.compile} if point.compile else m.extra or {},
    }


def adaptation_note(model: str) -> str:
    """"; model: ADAPTATION ..." for a model of a family that adapts a published design (models.Family.adaptation),
    so that no row of it reads as a measurement of an official configuration; "" otherwise."""
    import models  # already imported wherever rows are made (the metrics import it)

    try:
        adaptation = models.family_of_model(model).adaptation
    except KeyError:  # a model this process does not register: nothing to add
        return ""
    return f"; model: {adaptation}" if adaptation else ""


def failure_rows(point: SweepPoint, metric: Metric, status: str, error: str, started_at: str,
                 duration_s: float = 0.0, rows: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows for a metric that produced nothing (or not these ``rows``): one per final row it declares."""
    names = metric.final_rows if rows is None else rows
    return [make_row(point, metric, Measurement(name, None, None, "not measured", status=status, error=error),
                     started_at=started_at, duration_s=duration_s) for name in names]


def gmacs_per_image(rows: list[dict[str, Any]]) -> float | None:
    """GMACs per image from a ``gmacs`` row (ok) among ``rows``, or None."""
    for row in rows:
        if row.get("metric") == "gmacs" and row.get("status") == "ok" and row.get("value") is not None:
            return row_declaration("gmacs").per_image(row["value"], int(row.get("batch") or 1), row.get("extra"))
    return None


def over_budget(point: SweepPoint, limit: float, gmacs: float, how: str = "meta count") -> str | None:
    """The skip reason when GMACs per image x batch exceeds the suite's ``max_gmacs_x_batch`` (else None)."""
    cost = gmacs * point.batch
    if cost <= limit:
        return None
    return (f"over the suite's budget: {gmacs:.1f} GMACs per image ({how}) x batch {point.batch} = {cost:.1f} > "
            f"max_gmacs_x_batch {limit:g}")


# ---------------------------------------------------------------------------------------------------- faults
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
            raise torch.OutOfMemoryError(message)
        print(message, file=sys.stderr, flush=True)
        if kind == "crash":
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)  # die like a real segfault, no Python handler
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(10)  # the signal is delivered asynchronously
        while kind == "hang":
            time.sleep(3600)


def is_oom(exc: BaseException) -> bool:
    """torch's out-of-memory error, or the CPU allocator's failure (a plain RuntimeError)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ------------------------------------------------------------------------------------------------------ a job
@dataclasses.dataclass
class Job:
    """What one worker process measures (pickled to it)."""

    point: SweepPoint
    metrics: list[Metric]
    options: dict[str, dict[str, Any]]  # metric -> resolved options
    out_dir: str | None = None
    budget: dict[str, float] = dataclasses.field(default_factory=dict)  # metric -> max GMACs x batch
    gmacs_per_image: float | None = None  # known from rows on disk, else measured when a budget needs it
    on_disk: dict[str, set] = dataclasses.field(default_factory=dict)  # metric -> {(row, step)} already written
    model: tuple | None = None  # (ModelInfo, Family) of the point's model, for a worker that lacks it
    plugins: list[str] = dataclasses.field(default_factory=list)  # loaded in the worker first
    env: dict[str, str] = dataclasses.field(default_factory=os.environ.copy)  # the runner's, when the job was made


def run_job(job: Job, send: Send) -> None:
    """Measure the job's metrics at its point, reporting through ``send``."""
    point = job.point
    faults = parse_faults(os.environ.get(FAULT_ENV))
    gmacs = job.gmacs_per_image
    for metric in job.metrics:
        started_at = now_iso()
        t0 = time.perf_counter()
        send({"event": "start", "metric": metric.name, "started_at": started_at})
        sent: set[str] = set()

        def emit(measurements: list[Measurement], metric: Metric = metric, started_at: str = started_at,
                 t0: float = t0, sent: set = sent) -> None:
            rows = [make_row(point, metric, m, started_at=started_at, duration_s=time.perf_counter() - t0)
                    for m in measurements]
            sent.update(m.metric for m in measurements)
            send({"event": "rows", "metric": metric.name, "rows": rows})

        options = {k: v for k, v in job.options.get(metric.name, {}).items() if k != "timeout"}  # the runner's
        ctx = MetricContext(metric, point, options, out_dir=job.out_dir, on_rows=emit,
                            on_progress=lambda info, name=metric.name: send({"event": "progress", "metric": name,
                                                                             **info}),
                            on_disk=job.on_disk.get(metric.name, ()))
        try:
            inject_fault(faults, point.key, metric.name)
            if metric.name in job.budget:
                how = "meta count"
                if gmacs is None:
                    gmacs, how = _count_gmacs(point), "meta count, made for this check"
                reason = over_budget(point, job.budget[metric.name], gmacs, how)
                if reason:
                    raise SkipMetric(reason)
            returned = metric.fn(point, ctx) or []
            undeclared = [m.metric for m in returned if m.metric not in metric.produces]
            if undeclared:
                raise ValueError(f"metric '{metric.name}' returned row {undeclared[0]!r}, which it does not declare "
                                 f"(it declares {', '.join(metric.produces)})")
            if returned:
                emit(list(returned))
            missing = [r for r in metric.final_rows if r not in sent and not ctx.on_disk(r)]
            if missing:
                send({"event": "rows", "metric": metric.name, "rows": failure_rows(
                    point, metric, "error", f"metric '{metric.name}' produced no {', '.join(missing)} row",
                    started_at, time.perf_counter() - t0, tuple(missing))})
            if gmacs is None:
                gmacs = gmacs_per_image([make_row(point, metric, m, started_at=started_at, duration_s=0)
                                         for m in returned if m.metric == "gmacs"])
        except SkipMetric as exc:
            _fail(send, point, metric, "skipped", str(exc), started_at, t0, sent)
        except Exception as exc:  # noqa: BLE001 - any failure of a metric is a recorded result
            traceback.print_exc()
            oom = is_oom(exc)
            _fail(send, point, metric, "oom" if oom else "error", first_line(exc), started_at, t0, sent)
            if oom:
                # Memory is often not recoverable in-process after an OOM: report, stop, and let the runner
                # measure the remaining metrics in a fresh process.
                send({"event": "end", "metric": metric.name})
                send({"event": "stop", "reason": "oom"})
                return
        send({"event": "end", "metric": metric.name})
    send({"event": "done"})


def _fail(send: Send, point, metric: Metric, status: str, error: str, started_at: str, t0: float, sent: set) -> None:
    """Failure rows for the final rows the metric has not sent yet."""
    rest = tuple(r for r in metric.final_rows if r not in sent)
    if rest:
        send({"event": "rows", "metric": metric.name,
              "rows": failure_rows(point, metric, status, error, started_at, time.perf_counter() - t0, rest)})


def _count_gmacs(point: SweepPoint) -> float | None:
    """GMACs per image of the point's model, counted at batch 1 on the meta device (for a budget check)."""
    return count_point_flops(dataclasses.replace(point, batch=1)).gmacs
