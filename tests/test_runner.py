"""A run, end to end through the real CLI: results and environment, faults recorded while the sweep goes on,
timeouts, interrupts and resuming (a killed run, a cut-off last line), how workers start (a script without a
main guard, a metric defined in ``__main__``), and points spread over GPUs. The worker's own protocol is
tests/test_worker.py; the run folder's rules and file faults are tests/test_runfolder.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import (
    DIT,
    ROOT,
    TINY_SUITE,
    TWO_MODELS,
    cli_env,
    marked_processes,
    read_jsonl,
    run_cli,
    start_cli,
    unique_rows,
    wait_for_rows,
)
from dimbench import results

# ----------------------------------------------------------------------------------------- end to end (the CLI)


def _statuses(out) -> dict[tuple[str, str], dict]:
    return {(r["point_key"], r["metric"]): r for r in read_jsonl(out / "results.jsonl")}


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _stopped_by_a_signal(runner: subprocess.Popen, out, said: str) -> str:
    """A run stopped by a signal exits 130 without a traceback, saying ``said`` on stderr (returned), and its
    record says it was interrupted and counts the rows on disk."""
    stdout, stderr = runner.communicate(timeout=120)
    assert runner.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr and said in stderr, stderr
    env = json.loads((out / "environment.json").read_text())
    assert env["runs"][-1]["interrupted"] is True
    rows = read_jsonl(out / "results.jsonl") if (out / "results.jsonl").exists() else []
    assert env["runs"][-1]["rows_written"] == len(rows)
    return stderr


@pytest.mark.slow
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
    stderr = _stopped_by_a_signal(runner, out, "resume with: dimbench run")
    assert f"--out {out}" in stderr
    assert len(results.read_rows(out)) >= 4


@pytest.mark.slow
def test_interrupt_during_start_up_is_clean(tmp_path, write_suite):
    """Ctrl-C as the run starts (its announcement printed, no worker running yet, or one starting)."""
    suite = write_suite(TINY_SUITE.format(timeout=120))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dimbench.cli", "run", str(suite), "--out", str(out), "--no-report"]
    runner = subprocess.Popen(args, env=cli_env(DIMBENCH_INJECT_FAULT="#params=hang"), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert runner.stdout.readline().startswith("Suite tiny on cpu")  # waits for the event: the run has begun
    runner.send_signal(signal.SIGINT)
    _stopped_by_a_signal(runner, out, "resume with: dimbench run")


@pytest.mark.slow
def test_resume_after_a_cut_off_last_line_measures_the_lost_rows_once(tmp_path, write_suite):
    suite = write_suite(TWO_MODELS.format(timeout=600))
    out = tmp_path / "out"
    assert run_cli("run", str(suite), "--out", str(out), "--no-report").returncode == 0
    complete = unique_rows(out)
    lines = (out / "results.jsonl").read_bytes().splitlines(keepends=True)
    # the last row (gflops of the last point) half written; the one before it (gmacs) whole
    (out / "results.jsonl").write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])

    proc = run_cli("run", str(suite), "--out", str(out), "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "half-written last line" in proc.stdout
    after = unique_rows(out)
    assert {results.row_identity(r) for r in after} == {results.row_identity(r) for r in complete}
    assert after[-1]["metric"] == "gflops" and after[-1]["status"] == "ok"


@pytest.mark.slow
def test_sigterm_leaves_a_run_record_that_counts_the_rows_written(tmp_path, write_suite):
    suite = write_suite(TWO_MODELS.format(timeout=600))
    out = tmp_path / "out"
    proc = start_cli(["run", str(suite), "--out", str(out), "--no-report"], DIMBENCH_INJECT_FAULT="uvit_s_2=hang")
    wait_for_rows(out, proc, DIT, {"params", "gmacs"})
    proc.send_signal(signal.SIGTERM)
    _stopped_by_a_signal(proc, out, "interrupted (SIGTERM)")


# ----------------------------------------------------------------------------------------- how workers start


@pytest.mark.slow
def test_a_script_without_a_main_guard_can_run_a_suite(tmp_path):
    """Workers never run the caller's ``__main__`` again (multiprocessing would, for a script without an
    ``if __name__ == "__main__"`` guard: every worker would start a run of its own)."""
    script = tmp_path / "bench.py"
    script.write_text(
        "from dimbench.runner import Runner\n"
        "from dimbench.suite import expand, parse_suite\n"
        f"suite = parse_suite('models: [dit_s_2]\\nresolutions: [32]\\ndevice: cpu\\n', __import__('pathlib').Path("
        f"{str(tmp_path / 's.yaml')!r}))\n"
        f"print(Runner(expand(suite, out={str(tmp_path / 'out')!r})).run().counts)\n")
    from conftest import cli_env

    proc = subprocess.run([sys.executable, str(script)], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "{'ok': 4}"


@pytest.mark.slow
def test_a_metric_defined_in_the_running_script_is_a_clear_error(tmp_path):
    """Workers cannot import ``__main__``: a metric defined there is refused up front, by name."""
    script = tmp_path / "mine.py"
    script.write_text(
        "from pathlib import Path\n"
        "from dimbench.metrics import Measurement, Metric, Row, register_metric\n"
        "from dimbench.runner import Runner\n"
        "from dimbench.suite import expand, parse_suite\n"
        "def mine(point, ctx):\n"
        "    return [Measurement('mine_ms', 1.0, None, 'made up')]\n"
        "if __name__ == '__main__':\n"
        "    register_metric(Metric('mine', (Row('mine_ms', 'ms', 'mine'),), mine, 'defined in a script'))\n"
        f"    suite = parse_suite('models: [dit_s_2]\\nresolutions: [32]\\nmetrics: [mine]\\ndevice: cpu\\n', "
        f"Path({str(tmp_path / 's.yaml')!r}))\n"
        "    try:\n"
        f"        Runner(expand(suite, out={str(tmp_path / 'out')!r})).run()\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n")
    from conftest import cli_env

    proc = subprocess.run([sys.executable, str(script)], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("UserError mine is defined in the script being run (__main__), which worker "
                                   "processes do not import: define metrics and models in an importable module")


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
