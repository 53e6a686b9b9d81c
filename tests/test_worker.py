"""The worker in-process: the events and rows it reports per metric (failures, skips, non-finite values,
undeclared or missing rows), series rows, stopping after an out-of-memory error, budget skips, and the fault
injection spec."""

from __future__ import annotations

import pytest

from dimbench import results
from dimbench.metrics import METRICS, Measurement, Metric, Row, SkipMetric
from dimbench.points import SweepPoint
from dimbench.worker import Job, parse_faults, run_job


def _point(**kw) -> SweepPoint:
    base = dict(suite="t", model="dit_s_2", resolution=32, input_size=4, batch=2, dtype="float32", device="cpu",
                metrics=())
    base.update(kw)
    return SweepPoint(**base)


def _run(metrics: list[str], **job) -> list[dict]:
    events: list[dict] = []
    job = Job(point=_point(), metrics=[METRICS[m] for m in metrics], options={m: {} for m in metrics}, **job)
    run_job(job, events.append)
    return events


def _ok(point, ctx):
    return [Measurement("fake_ms", 12.5, "ms", "made up for a test", {"batch": point.batch})]


def _skip(point, ctx):
    raise SkipMetric("does not apply here")


def _boom(point, ctx):
    raise ValueError("broken metric\nsecond line")


def _oom(point, ctx):
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")


def _nan(point, ctx):
    return [Measurement("fake_nan", float("nan"), "ms", "made up")]


def _stray(point, ctx):
    return [Measurement("not_declared", 1.0, None, "made up")]


def _partial(point, ctx):
    return [Measurement("fake_e", 1.0, None, "made up")]


@pytest.fixture
def fake_metrics(monkeypatch):
    """Metrics that succeed, skip, fail, run out of memory, return NaN, an undeclared row or too few rows."""
    for name, fn, rows in (("fake_ok", _ok, ("fake_ms",)), ("fake_skip", _skip, ("fake_a", "fake_b")),
                           ("fake_boom", _boom, ("fake_c",)), ("fake_oom", _oom, ("fake_d",)),
                           ("fake_nan", _nan, ("fake_nan",)), ("fake_stray", _stray, ("fake_s",)),
                           ("fake_partial", _partial, ("fake_e", "fake_f"))):
        declared = tuple(Row(r, "ms", f"{r} label", task="count" if name == "fake_skip" else "forward") for r in rows)
        monkeypatch.setitem(METRICS, name, Metric(name, declared, fn, "test metric"))


def test_worker_reports_rows_per_metric_and_survives_failures(fake_metrics, capfd):
    events = _run(["fake_ok", "fake_skip", "fake_boom", "fake_nan", "fake_stray", "fake_partial", "fake_ok"])
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "rows", "end"] * 5 + ["start", "rows", "rows", "end"] + ["start", "rows", "end", "done"]
    rows = [r for e in events if e["event"] == "rows" for r in e["rows"]]
    assert [(r["metric"], r["status"]) for r in rows] == [
        ("fake_ms", "ok"), ("fake_a", "skipped"), ("fake_b", "skipped"), ("fake_c", "error"), ("fake_nan", "error"),
        ("fake_s", "error"), ("fake_e", "ok"), ("fake_f", "error"), ("fake_ms", "ok")]
    first = rows[0]
    assert list(first)[: len(results.COLUMNS)] == list(results.COLUMNS)
    assert first["point_key"] == "dit_s_2|r32|b2|float32|cpu" and first["value"] == 12.5
    assert first["task"] == "forward" and first["extra"] == {"batch": 2} and first["duration_s"] >= 0
    assert rows[1]["task"] == "count"  # the task comes from the declaration of the row
    assert rows[1]["error"] == "does not apply here" and rows[1]["value"] is None
    assert rows[3]["error"] == "ValueError: broken metric"
    assert "non-finite value nan" in rows[4]["error"]
    assert "returned row 'not_declared', which it does not declare" in rows[5]["error"]
    assert rows[7]["error"] == "metric 'fake_partial' produced no fake_f row"
    assert "ValueError: broken metric" in capfd.readouterr().err  # the traceback goes to the worker's log


def _series(point, ctx):
    return [Measurement("fake_loss", 1.0, None, "made up", {}),  # a per-step row without its step
            Measurement("fake_final", 2.0, None, "made up", {"step": 3})]  # a final row with one


def test_series_rows_need_a_step_and_final_rows_none(monkeypatch):
    rows = (Row("fake_loss", "loss", "loss", series=True), Row("fake_final", "count", "steps"))
    monkeypatch.setitem(METRICS, "fake_series", Metric("fake_series", rows, _series, "test metric"))
    events = _run(["fake_series"])
    got = {r["metric"]: r for e in events if e["event"] == "rows" for r in e["rows"]}
    assert "declared a series row, one per step, but has no integer extra['step']" in got["fake_loss"]["error"]
    assert "declared once per point, but has a step (3)" in got["fake_final"]["error"]
    with pytest.raises(ValueError, match="at least one row that is not a series"):
        Metric("only_series", rows[:1], _series, "cannot tell when it is complete")


def test_worker_stops_after_out_of_memory(fake_metrics):
    events = _run(["fake_ok", "fake_oom", "fake_ok"])
    assert [e["event"] for e in events] == ["start", "rows", "end", "start", "rows", "end", "stop"]
    oom = events[4]["rows"][0]
    assert oom["status"] == "oom" and oom["error"].startswith("OutOfMemoryError: CUDA out of memory")


def test_worker_budget_skips_with_the_cost(fake_metrics):
    events = _run(["fake_ok"], budget={"fake_ok": 15}, gmacs_per_image=10.0)
    row = events[1]["rows"][0]
    assert row["status"] == "skipped"
    assert "10.0 GMACs per image (meta count) x batch 2 = 20.0 > max_gmacs_x_batch 15" in row["error"]
    events = _run(["fake_ok"], budget={"fake_ok": 25}, gmacs_per_image=10.0)
    assert events[1]["rows"][0]["status"] == "ok"


def test_fault_spec_parsing():
    assert parse_faults("dit_s_2|r64=crash; uvit#flops=hang") == [("dit_s_2|r64", "crash"), ("uvit#flops", "hang")]
    assert parse_faults("") == []
    with pytest.raises(ValueError, match="KIND one of error, oom, crash, hang"):
        parse_faults("dit=explode")
