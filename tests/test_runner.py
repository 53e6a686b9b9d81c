"""The runner and its workers, end to end through the real CLI: results + environment, faults recorded while
the sweep goes on, a killed run resumed without recomputing, and the worker's protocol in-process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT, TINY_SUITE, cli_env, marked_processes, read_jsonl, run_cli
from dimbench import results
from dimbench.metrics import METRICS, Measurement, Metric, Row, SkipMetric
from dimbench.points import SweepPoint
from dimbench.worker import Job, parse_faults, run_job

# --------------------------------------------------------------------------------------------- worker, in-process


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


# ----------------------------------------------------------------------------------------- end to end (the CLI)


def _statuses(out) -> dict[tuple[str, str], dict]:
    return {(r["point_key"], r["metric"]): r for r in read_jsonl(out / "results.jsonl")}


def test_smoke_suite_produces_results_and_environment(tmp_path):
    out = tmp_path / "smoke"
    proc = run_cli("run", "smoke", "--out", str(out), "--no-report")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = read_jsonl(out / "results.jsonl")
    df = results.load(out)
    assert set(df.point_key) == {f"{m}|r{r}|b1|float32|cpu" for m in ("dim_s_2", "dit_s_2", "uvit_s_2")
                                 for r in (32, 64)}
    assert len(df) == len(rows)  # nothing measured twice
    assert not df.status.isin(["error", "oom"]).any(), df[df.status.isin(["error", "oom"])].to_string()
    ok = df[df.status == "ok"]
    assert {"params", "gmacs", "gflops", "mem_predicted_gib", "latency_ms", "train_step_ms",
            "gmacs_fvcore"} <= set(ok.metric)
    assert (ok.method.str.len() > 0).all() and ok.unit.notna().all()
    # the budget's skips say why, with the cost
    skipped_latency = df[(df.metric == "latency_ms") & (df.status == "skipped")]
    assert len(skipped_latency) == 4 and skipped_latency.error.str.contains("over the suite's budget").all()
    env = json.loads((out / "environment.json").read_text())
    for key in ("versions", "git", "tf32", "attention_backends_enabled", "scan_backends", "command", "runs"):
        assert key in env
    assert env["versions"]["torch"] and env["command"].startswith("dimbench run smoke")
    assert env["runs"][0]["wall_s"] > 0 and env["runs"][0]["interrupted"] is False
    for header in ("GMACs/img", "(meta count)", "mem GiB", "(predicted)", "fwd ms", "(median)"):
        assert header in proc.stdout
    assert "How each column was obtained" in proc.stdout and "Wall time of this run" in proc.stdout


def test_faults_are_recorded_and_the_sweep_goes_on(tmp_path, write_suite):
    suite = write_suite(TINY_SUITE.format(timeout=600))
    out = tmp_path / "out"
    faults = "dit_s_2=error;uvit_s_2|r32|b1|float32|cpu#flops=crash;dim_s_2|r32|b1|float32|cpu#params=oom"
    proc = run_cli("run", str(suite), "--out", str(out), "--no-report", env=cli_env(DIMBENCH_INJECT_FAULT=faults))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    rows = _statuses(out)
    dit, uvit, dim = "dit_s_2|r32|b1|float32|cpu", "uvit_s_2|r32|b1|float32|cpu", "dim_s_2|r32|b1|float32|cpu"
    for metric in ("params", "params_trainable", "gmacs", "gflops"):
        assert rows[(dit, metric)]["status"] == "error"
        assert "injected fault 'error'" in rows[(dit, metric)]["error"]
    # the crash hits flops only: params (measured before it) stays ok
    assert rows[(uvit, "params")]["status"] == "ok"
    crash = rows[(uvit, "gmacs")]
    assert crash["status"] == "error" and "SIGSEGV" in crash["error"] and "while measuring 'flops'" in crash["error"]
    # out of memory in params: recorded as oom, and flops measured by a fresh worker
    assert rows[(dim, "params")]["status"] == "oom"
    assert rows[(dim, "gmacs")]["status"] == "ok" and rows[(dim, "gmacs")]["value"] > 0
    (log,) = (out / "logs").glob("uvit_s_2_r32_b1_float32_cpu-*.log")  # the key, made a file name, and its hash
    assert "injected fault 'crash'" in log.read_text()


def test_spawned_workers_record_a_crash_too(tmp_path, write_suite):
    """The spawn start method (a fresh interpreter per point: what CUDA runs use) reports the same way."""
    suite = write_suite(TINY_SUITE.format(timeout=120).replace("[dit_s_2, uvit_s_2, dim_s_2]", "[dit_s_2]"))
    out = tmp_path / "out"
    proc = run_cli("run", str(suite), "--out", str(out), "--no-report",
                   env=cli_env(DIMBENCH_WORKER_START="spawn", DIMBENCH_INJECT_FAULT="#flops=crash"))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "(workers: spawn)" in proc.stdout
    rows = _statuses(out)
    dit = "dit_s_2|r32|b1|float32|cpu"
    assert rows[(dit, "params")]["status"] == "ok" and rows[(dit, "params")]["value"] > 0
    assert rows[(dit, "gmacs")]["status"] == "error" and "SIGSEGV" in rows[(dit, "gmacs")]["error"]


def test_hung_metric_is_killed_at_its_timeout_and_the_point_goes_on(tmp_path, write_suite):
    # the hanging metric's own budget is short; every other metric keeps the suite's (nothing bets on speed)
    suite = write_suite(TINY_SUITE.format(timeout=600).replace("[dit_s_2, uvit_s_2, dim_s_2]", "[dit_s_2, uvit_s_2]")
                        + "options:\n  params: {timeout: 4}\n")
    out = tmp_path / "out"
    proc = run_cli("run", str(suite), "--out", str(out), "--no-report",
                   env=cli_env(DIMBENCH_INJECT_FAULT="dit_s_2|r32|b1|float32|cpu#params=hang"))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = _statuses(out)
    dit = "dit_s_2|r32|b1|float32|cpu"
    assert rows[(dit, "params")]["error"] == "timeout after 4 s"
    assert rows[(dit, "params_trainable")]["error"] == "timeout after 4 s"
    assert rows[(dit, "gmacs")]["status"] == "ok"  # the budget is per metric: flops ran in a fresh worker
    uvit = rows[("uvit_s_2|r32|b1|float32|cpu", "gmacs")]
    assert uvit["status"] == "ok"  # the next point ran

    # errors are final on a plain resume, measured again with --retry-errors (and only they)
    retry = run_cli("run", str(suite), "--out", str(out), "--no-report", "--retry-errors")
    assert retry.returncode == 0, retry.stderr + retry.stdout
    latest = {(r["point_key"], r["metric"]): r for r in results.latest(results.read_rows(out))}
    assert latest[(dit, "params")]["status"] == "ok"
    assert latest[("uvit_s_2|r32|b1|float32|cpu", "gmacs")] == uvit
    assert len(results.read_rows(out)) == len(rows) + 2  # the two retried rows, nothing else written again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc to find leftover workers")
def test_killed_run_resumes_without_recomputing(tmp_path, write_suite):
    suite = write_suite(TINY_SUITE.format(timeout=120).replace("[dit_s_2, uvit_s_2, dim_s_2]", "[dit_s_2, uvit_s_2]"))
    out = tmp_path / "out"
    mark = f"DIMBENCH_TEST_MARK_{uuid.uuid4().hex}"
    args = [sys.executable, "-m", "dimbench.cli", "run", str(suite), "--out", str(out), "--no-report"]
    # The second point hangs, so the runner is certainly still running when it is killed.
    env = cli_env(DIMBENCH_INJECT_FAULT="uvit_s_2=hang", DIMBENCH_TEST_MARK=mark)
    runner = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dit = "dit_s_2|r32|b1|float32|cpu"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = results.read_rows(out) if (out / "results.jsonl").exists() else []
            if {r["metric"] for r in done if r["point_key"] == dit} >= {"params", "gmacs"}:
                break
            assert runner.poll() is None, "the runner ended before it was killed"
            time.sleep(0.2)
        else:
            pytest.fail("the first point's rows never appeared")
    finally:
        runner.kill()  # SIGKILL: no chance to clean up
        runner.wait()
    # the workers notice their runner is gone and exit by themselves
    deadline = time.monotonic() + 10
    while marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marked_processes(mark) == []

    before = read_jsonl(out / "results.jsonl")
    with open(out / "results.jsonl", "a") as f:
        f.write('{"suite": "tiny", "point_key": "uvit')  # as if killed in the middle of a write
    proc = run_cli("run", str(suite), "--out", str(out), "--no-report")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "half-written last line" in proc.stdout
    after = read_jsonl(out / "results.jsonl")
    assert after[: len(before)] == before  # old rows untouched (same started_at, same values)
    keys = [(r["point_key"], r["metric"]) for r in after]
    assert len(keys) == len(set(keys))  # nothing measured twice
    assert {m for p, m in keys if p == "uvit_s_2|r32|b1|float32|cpu"} == {"params", "params_trainable", "gmacs",
                                                                          "gflops"}
    assert "1 already complete (resumed)" in proc.stdout
    env = json.loads((out / "environment.json").read_text())
    assert len(env["runs"]) == 2 and env["runs"][0]["finished_at"] is None  # the killed run never finished



def test_fresh_moves_old_results_aside(tmp_path):
    """--fresh: the next run starts from nothing; the old results, environment and state are kept as .bak."""
    from dimbench.runfolder import RunFolder

    out = tmp_path / "o"
    old = [{"point_key": "dit_s_2|r32|b1|float32|cpu", "metric": "params", "status": "ok", "value": 1.0}]
    results.append_rows(out, old)
    (out / "state").mkdir()
    (out / "logs").mkdir()
    folder = RunFolder(out)
    assert folder.read_rows() == (old, None)  # a resume reads them
    folder.close()
    folder = RunFolder(out, fresh=True)
    assert folder.read_rows() == ([], None)
    folder.close()
    assert read_jsonl(out / "results.jsonl.bak") == old and not (out / "results.jsonl").exists()
    assert (out / "state.bak").is_dir() and not (out / "state").exists()
    assert (out / "logs.bak").is_dir() and list((out / "logs").iterdir()) == []  # old rows' log references hold


def test_interrupt_keeps_results_and_says_how_to_resume(tmp_path, write_suite):
    suite = write_suite(TINY_SUITE.format(timeout=120).replace("[dit_s_2, uvit_s_2, dim_s_2]", "[dit_s_2, uvit_s_2]"))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dimbench.cli", "run", str(suite), "--out", str(out), "--no-report"]
    runner = subprocess.Popen(args, env=cli_env(DIMBENCH_INJECT_FAULT="uvit_s_2=hang"), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # the event: the first point's rows on disk (never signal before it)
        if (out / "results.jsonl").exists() and len(results.read_rows(out)) >= 4:
            break
        assert runner.poll() is None, runner.communicate()
        time.sleep(0.2)
    else:
        runner.kill()
        pytest.fail("the first point's rows never appeared")
    runner.send_signal(signal.SIGINT)  # what Ctrl-C sends
    stdout, stderr = runner.communicate(timeout=120)
    assert runner.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert "resume with: dimbench run" in stderr and f"--out {out}" in stderr
    assert len(results.read_rows(out)) >= 4
    env = json.loads((out / "environment.json").read_text())
    assert env["runs"][-1]["interrupted"] is True


def test_interrupt_during_start_up_is_clean(tmp_path, write_suite):
    """Ctrl-C as the run starts (its announcement printed, no worker running yet, or one starting)."""
    suite = write_suite(TINY_SUITE.format(timeout=120))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dimbench.cli", "run", str(suite), "--out", str(out), "--no-report"]
    runner = subprocess.Popen(args, env=cli_env(DIMBENCH_INJECT_FAULT="#params=hang"), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert runner.stdout.readline().startswith("Suite tiny on cpu")  # waits for the event: the run has begun
    runner.send_signal(signal.SIGINT)
    stdout, stderr = runner.communicate(timeout=120)
    assert runner.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr and "resume with: dimbench run" in stderr
    env = json.loads((out / "environment.json").read_text())
    assert env["runs"][-1]["interrupted"] is True
    rows = read_jsonl(out / "results.jsonl") if (out / "results.jsonl").exists() else []
    assert env["runs"][-1]["rows_written"] == len(rows)


# ----------------------------------------------------------------------------------------------- GPU spreading


def test_points_are_spread_over_gpus(monkeypatch, tmp_path):
    """One worker at a time per GPU, pinned with CUDA_VISIBLE_DEVICES; every point runs exactly once."""
    import threading

    import torch

    from dimbench import processes
    from dimbench import runner as runner_mod
    from dimbench.runfolder import RunFolder
    from dimbench.suite import expand, parse_suite

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    slots = processes.slots("cuda")
    assert [s.env for s in slots] == [{"CUDA_VISIBLE_DEVICES": g} for g in ("2", "5", "7")]
    assert processes.start_method("cuda") == "spawn" and processes.start_method("cpu") == "forkserver"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in processes.slots("cuda")] == ["0", "1", "2"]
    assert [s.env for s in processes.slots("cuda:1")] == [{}]  # a named GPU: no spreading

    suite = parse_suite(TINY_SUITE.format(timeout=10).replace("resolutions: [32]", "resolutions: [32, 64]"),
                        tmp_path / "s.yaml")
    plan = expand(suite, device="cpu", out=tmp_path / "out")
    run = runner_mod.Runner(plan, argv=["dimbench"])
    run.folder = RunFolder(plan.out)
    seen: list[tuple[str, str]] = []
    busy: dict[str, int] = {}
    together = threading.Barrier(3)  # the first job of each slot waits until all three slots hold one
    lock = threading.Lock()

    def fake_run_point(job, slot, ctx, progress):
        with lock:
            busy[slot.name] = busy.get(slot.name, 0) + 1
            assert busy[slot.name] == 1, "two workers on one GPU"
            first = slot.name not in {name for name, _ in seen}
        if first:
            together.wait(timeout=60)  # raises BrokenBarrierError unless the three slots run at once
        with lock:
            busy[slot.name] -= 1
            seen.append((slot.name, job.plan.point.key))

    monkeypatch.setattr(run, "_run_point", fake_run_point)
    jobs, _, _ = run._plan()
    run._execute(jobs, slots, ctx=None)
    run.folder.close()
    assert sorted(k for _, k in seen) == sorted(pp.point.key for pp in plan.points)  # each once
    assert len({name for name, _ in seen}) == 3  # all GPUs used, in parallel (the barrier was passed)
