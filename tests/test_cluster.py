"""A suite as an array job (dimbench.cluster), through the real command line: submitit's local executor always,
and a real single-node SLURM (munge + slurmctld + slurmd on localhost, tests/local_slurm.py) where it installs.

Every wait is for an event (rows on disk, a task's record, a process gone), bounded, with what was missing in
the failure message. The merged rows are compared with an in-process run's (the tiny suite's rows are counts:
deterministic).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY_SUITE, cli_env, run_cli
from dimbench import results
from dimbench.metrics.train import TRAIN

pytest.importorskip("submitit", reason="submitit is a dependency of dimbench (pyproject.toml): pip install -e .")

DIT, UVIT, DIM = (f"{m}|r32|b1|float32|cpu" for m in ("dit_s_2", "uvit_s_2", "dim_s_2"))
WAIT_S = 240  # the safety net of every wait (a busy 2-core machine starts several Pythons with torch at once)


def _deterministic(rows: list[dict]) -> dict[tuple, tuple]:
    return {(r["point_key"], r["metric"]): (r["status"], r["value"], r["unit"], r["method"]) for r in rows}


def _unique_rows(out: Path) -> list[dict]:
    rows = results.read_rows(out)
    identities = [results.row_identity(r) for r in rows]
    assert len(identities) == len(set(identities)), "a row was written twice"
    return rows


def _wait(what: str, done, proc: subprocess.Popen | None = None, timeout: float = WAIT_S):
    """Poll ``done()`` until it returns something true; fail naming ``what`` (and the runner's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = done()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the runner ended (exit {proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout:g} s")


def _on_disk(out: Path) -> dict[str, set[str]]:
    """Point -> metrics with rows, merged or still in a shard."""
    from dimbench.cluster.merge import point_rows
    from dimbench.cluster.records import ClusterFolder

    got: dict[str, set[str]] = {}
    for r in point_rows(out, ClusterFolder(out)):
        got.setdefault(r["point_key"], set()).add(r["metric"])
    return got


def _submission(out: Path) -> dict:
    (path,) = sorted((out / "cluster" / "submissions").glob("*.json"))[-1:]
    return json.loads(path.read_text())


def _task_of(submission: dict, key: str) -> dict:
    return next(t for t in submission["tasks"] if any(p["key"] == key for p in t["points"]))


def _task_record(out: Path, submission: dict, task: dict) -> dict:
    path = out / "cluster" / "tasks" / f"{submission['number']:04d}-t{task['index']}.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[tuple, tuple]:
    """The tiny suite's rows from an in-process (local) run."""
    tmp = tmp_path_factory.mktemp("reference")
    suite = tmp / "tiny.yaml"
    suite.write_text(TINY_SUITE.format(timeout=600))
    proc = run_cli("run", str(suite), "--out", str(tmp / "out"), "--no-report", timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return _deterministic(results.read_rows(tmp / "out"))


# ------------------------------------------------------------------------------------------ in-process units


def test_slurm_section_is_validated_like_every_suite_key(tmp_path, write_suite):
    from dimbench.suite import SuiteError, load_suite

    good = load_suite(write_suite(TINY_SUITE.format(timeout=60) + "slurm:\n  partition: gpu\n  time: '1-02:00:00'\n"
                                  "  gpus_per_task: 1\n  sbatch: {constraint: h100, exclusive: true}\n"))
    assert (good.slurm.partition, good.slurm.time, good.slurm.gpus_per_task) == ("gpu", "1-02:00:00", 1)
    assert good.slurm.sbatch == {"constraint": "h100", "exclusive": True} and good.slurm.points_per_task == 1
    bad = write_suite(TINY_SUITE.format(timeout=60) + "slurm:\n  partion: gpu\n  time: soon\n  nodes: 0\n",
                      "bad.yaml")
    with pytest.raises(SuiteError) as exc:
        load_suite(bad)
    assert exc.value.errors == [
        f"{bad}:8: key 'slurm.partion': expected one of the slurm keys (partition, account, qos, time, cpus_per_task, "
        "gpus_per_task, mem_gb, array_parallelism, points_per_task, nodes, gpus_per_node, setup, sbatch), got unknown "
        "key 'partion'",
        f"{bad}:9: key 'slurm.time': expected minutes (an integer >= 1) or a SLURM time ([D-]HH:MM:SS), got 'soon'",
        f"{bad}:10: key 'slurm.nodes': expected an integer >= 1, got 0"]


def test_command_line_overrides_the_section_and_bad_values_name_the_option():
    import argparse
    import dataclasses

    from dimbench.cluster.options import SLURM_SECTION, launch_settings, minutes
    from dimbench.errors import UserError

    base = dataclasses.replace(SLURM_SECTION.defaults(), partition="cpu", sbatch={"constraint": "a100"})
    args = argparse.Namespace(partition="gpu", time="90", gpus_per_task=None, sbatch=["exclusive", "qos=high"])
    got = launch_settings(base, args)
    assert (got.partition, got.time, got.sbatch) == ("gpu", 90, {"constraint": "a100", "exclusive": True,
                                                                 "qos": "high"})
    with pytest.raises(UserError, match=r"^--time: expected minutes"):
        launch_settings(base, argparse.Namespace(time="soon"))
    assert [minutes(t) for t in (5, "5", "1:30", "01:00:01", "1-00:00:00")] == [5, 5, 2, 61, 1440]


def test_shards_merge_each_row_once_and_an_ended_tasks_torn_line_is_cut(tmp_path):
    """Two tasks measured one point (a cancelled array's task ran on): its first final rows stay; a merge read
    twice writes nothing twice; an ended task's half-written line is cut away, a live task's is left alone."""
    from dimbench.cluster.collect import settle
    from dimbench.cluster.records import ClusterFolder, Submission
    from dimbench.runfolder import RunFolder

    out = tmp_path / "out"
    records = ClusterFolder(out)

    def row(key, metric, value, status="ok", at="t0"):
        return {"point_key": key, "metric": metric, "value": value, "status": status, "started_at": at, "extra": {}}

    for d in (records.shards_dir, records.submissions_dir, records.tasks_dir):
        d.mkdir(parents=True)
    for number, tasks in ((1, [[DIT, UVIT]]), (2, [[UVIT], [DIM]])):
        sub = Submission(number=number, launcher="submitit-local", token="x", retry_errors=False, submitted_at="t",
                         host="elsewhere", command="dimbench run", job_ids=[],
                         tasks=[{"index": i, "job_id": str(10 * number + i),
                                 "points": [{"key": k, "point": {}, "metrics": {"params": ["params"]}} for k in keys]}
                                for i, keys in enumerate(tasks)])
        records.save(sub)
        for i in range(len(tasks)):  # every task recorded its end, but the last one, which is "elsewhere"
            if (number, i) != (2, 1):
                records.write_task_record(sub.task_name(i), {"state": "done", "host": "n1", "job_id": f"{number}{i}",
                                                            "environment": {"gpu_name": "H100", "driver": "570"}})
    results.append_rows(records.shard("0001-t0"), [row(DIT, "params", 1.0), row(UVIT, "params", 2.0)])
    results.append_rows(records.shard("0002-t0"), [row(UVIT, "params", 3.0, at="t1")])
    with open(records.shard("0001-t0"), "a") as f:
        f.write('{"point_key": "dit')  # the task was killed mid-write
    results.append_rows(records.shard("0002-t1"), [row(DIM, "params", 4.0)])
    with open(records.shard("0002-t1"), "a") as f:
        f.write('{"point_key": "dim')  # a live task (another host says "UNKNOWN": live) may still finish it

    folder = RunFolder(out)
    try:
        got = settle(folder, refuse_live=False)
        assert got.rows_written == 3 and got.live == 1
        assert any("0001-t0.jsonl" in w and "half-written" in w for w in got.warnings)
        assert settle(folder, refuse_live=False).rows_written == 0  # merged twice: nothing new
    finally:
        folder.close()
    merged = {(r["point_key"], r["metric"]): r["value"] for r in _unique_rows(out)}
    assert merged == {(DIT, "params"): 1.0, (UVIT, "params"): 2.0, (DIM, "params"): 4.0}
    assert records.shard("0001-t0").read_bytes().endswith(b"}\n")  # cut back to its last complete row
    assert records.shard("0002-t1").read_bytes().endswith(b'"dim')  # a live task's shard is never touched


# ---------------------------------------------------------------------------------- submitit's local executor


@pytest.mark.slow
def test_submitit_local_run_gives_the_in_process_rows_and_a_failed_task_is_an_error_row(tmp_path, write_suite,
                                                                                        reference):
    suite = write_suite(TINY_SUITE.format(timeout=600))
    out = tmp_path / "out"
    proc = run_cli("run", str(suite), "--out", str(out), "--no-report", "--launcher", "submitit-local", timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "through submitit-local: 3 points, 3 to measure" in proc.stdout and "Submitted local jobs" in proc.stdout
    assert _deterministic(_unique_rows(out)) == reference
    env = json.loads((out / "environment.json").read_text())
    assert set(env["nodes"]) == {DIT, UVIT, DIM}  # every point's node: host, GPU, driver, its task and job
    assert all(n["hostname"] and "driver" in n and "gpu_name" in n and n["job_id"] for n in env["nodes"].values())
    status = run_cli("status", str(out))
    assert status.returncode == 0 and "3 done" in status.stdout, status.stdout + status.stderr

    # The same suite on CUDA, where the task's node has no GPU: the task fails, and says so in a row per metric.
    cuda = tmp_path / "cuda"
    proc = run_cli("run", str(suite), "--out", str(cuda), "--no-report", "--launcher", "submitit-local", "--device",
                   "cuda", "--points-per-task", "3", timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = _unique_rows(cuda)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"error"}
    assert all("torch sees no CUDA GPU" in r["error"] and "--gpus-per-task" in r["error"] for r in rows)
    status = run_cli("status", str(cuda))
    assert "3 failed" in status.stdout and "torch sees no CUDA GPU" in status.stdout, status.stdout


@pytest.mark.slow
def test_submitit_local_live_array_holds_the_folder_and_a_cancelled_task_is_resubmitted(tmp_path, write_suite,
                                                                                      reference):
    suite = write_suite(TINY_SUITE.format(timeout=600))
    out = tmp_path / "out"
    args = ["run", str(suite), "--out", str(out), "--no-report", "--launcher", "submitit-local",
            "--points-per-task", "1", "--array-parallelism", "3"]
    hang = cli_env(DIMBENCH_INJECT_FAULT=f"{UVIT}#flops=hang")
    proc = run_cli(*args, "--no-wait", env=hang, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Not following it (--no-wait)" in proc.stdout
    submission = _submission(out)
    uvit = _task_of(submission, UVIT)
    try:
        # a second submission into the folder of a live array is refused, naming the array's job
        second = run_cli(*args, timeout=300)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"{out}: array job " in second.stderr and uvit["job_id"] in second.stderr
        assert "still has" in second.stderr and "Traceback" not in second.stderr

        # the event: every point but uvit's flops on disk (uvit hangs in flops, its params written)
        _wait("the other points' rows and uvit's params in the shards",
              lambda: (d := _on_disk(out)).get(DIT, set()) >= {"params", "gmacs"} and
              d.get(DIM, set()) >= {"params", "gmacs"} and "params" in d.get(UVIT, set()))
        status = run_cli("status", str(out))
        assert "running" in status.stdout and uvit["job_id"] in status.stdout, status.stdout
    finally:
        os.kill(int(uvit["job_id"]), signal.SIGTERM)  # cancel the task mid-way (its controller forwards it)
    record = _wait("the cancelled task's record", lambda: (r := _task_record(out, submission, uvit)).get(
        "state") in ("interrupted", "done", "failed") and r)
    assert record["state"] == "interrupted" and "SIGTERM" in record["reason"]
    from dimbench.cluster.scheduler import pid_alive

    _wait("the cancelled task's controller to exit", lambda: not pid_alive(int(uvit["job_id"]), "submitit"))
    status = run_cli("status", str(out))
    assert "not running" in status.stdout and "resubmits it" in status.stdout, status.stdout

    proc = run_cli(*args, timeout=600)  # the same command: only the cancelled point is submitted again
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "3 points, 1 to measure" in proc.stdout and "2 already complete (resumed)" in proc.stdout
    rows = _unique_rows(out)
    assert _deterministic(rows) == reference
    assert len(_submission(out)["tasks"]) == 1


@pytest.mark.slow
def test_submitit_local_requeued_long_task_continues_from_its_state(tmp_path):
    """SIGUSR2 (SLURM's warning before the time limit, or pre-emption) requeues the task; the new attempt skips
    the rows on disk and resumes the long task from its checkpoint in OUT/state."""
    from test_harness import LONG_SUITE

    suite = tmp_path / "long.yaml"
    suite.write_text(LONG_SUITE)
    out = tmp_path / "out"
    env = cli_env(PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-m", "dimbench.cli", "--plugin", "test_harness", "run", str(suite), "--out", str(out),
            "--no-report", "--launcher", "submitit-local"]
    runner = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    key = "dit_s_2|r32|b1|float32|cpu"
    try:
        def held():  # steps 1..7 on disk: the task holds at step 7 (checkpoint at 4)
            from dimbench.cluster.merge import point_rows
            from dimbench.cluster.records import ClusterFolder

            rows = point_rows(out, ClusterFolder(out)) if (out / "cluster").is_dir() else []
            return {r["extra"].get("step") for r in rows if r["metric"] == "toy_loss"} >= set(range(1, 8))

        _wait("steps 1..7 of the long task on disk", held, runner)
        submission = _submission(out)
        task = submission["tasks"][0]
        first = _task_record(out, submission, task)
        os.kill(first["pid"], signal.SIGUSR2)
        _wait("the requeued attempt", lambda: _task_record(out, submission, task).get("attempts") == 2, runner)
        (out / "release").touch()
        stdout, stderr = runner.communicate(timeout=WAIT_S)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 0, stdout + stderr
    rows = _unique_rows(out)
    assert sorted(r["extra"]["step"] for r in rows if r["metric"] == "toy_loss") == list(range(1, 13))
    (steps,) = [r for r in rows if r["metric"] == "toy_steps"]
    assert steps["value"] == 12 and steps["extra"]["resumed_from"] == 4  # from its checkpoint, not from scratch
    assert {r["metric"] for r in rows if r["point_key"] == key} >= {"params", "params_trainable"}


@pytest.mark.slow
def test_a_point_on_several_ranks_trains_in_one_process_group_and_rank_0_writes(tmp_path, write_suite):
    """--gpus-per-node G: each task is G processes (srun's tasks on SLURM; here submitit-local's), every rank runs
    the point's worker in one torch.distributed group (gloo on the CPU) and only rank 0's rows are written."""
    suite = write_suite("name: ddp\nmodels: [dit_tiny_4]\nresolutions: [16]\nbatch_sizes: [8]\nmetrics: [train]\n"
                        "options:\n  train: {steps: 4, log_every: 2, checkpoint_every: 2, warmup: 0}\ndevice: cpu\n")
    out = tmp_path / "out"
    proc = run_cli("run", str(suite), "--out", str(out), "--no-report", "--launcher", "submitit-local",
                   "--gpus-per-node", "2", timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = _unique_rows(out)
    # rank 0's rows once: every final row of the train metric, two logged windows and the held-out loss at the end
    assert sorted((r["metric"], r["status"]) for r in rows) == sorted(
        [(name, "ok") for name in TRAIN.final_rows] + [("train_loss", "ok")] * 2 + [("train_loss_heldout", "ok")])
    (log,) = (out / "logs").glob("dit_tiny_4_r16_b8_float32_cpu-*.log")
    text = log.read_text()
    assert "joined the task's process group: rank 0 of 2 (gloo" in text
    assert "joined the task's process group: rank 1 of 2 (gloo" in text


def test_slurm_launcher_without_slurm_is_one_line(tmp_path, write_suite):
    suite = write_suite(TINY_SUITE.format(timeout=60))
    env = cli_env(PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                       if not (Path(p) / "sbatch").exists()))
    proc = run_cli("run", str(suite), "--out", str(tmp_path / "out"), "--launcher", "slurm", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "dimbench: error: --launcher slurm: sbatch, srun, squeue, scancel not found on PATH: SLURM's commands are "
        "needed on the submitting machine (a login node); without SLURM use --launcher submitit-local"]
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------- a real SLURM


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node SLURM on localhost for this module's tests, stopped (every daemon) afterwards."""
    from local_slurm import LocalSlurm, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.mark.slow
def test_slurm_array_cancelled_task_resubmitted_gives_the_in_process_rows(tmp_path, write_suite, slurm, reference):
    suite = write_suite(TINY_SUITE.format(timeout=600))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dimbench.cli", "run", str(suite), "--out", str(out), "--no-report",
            "--launcher", "slurm", "--time", "10"]
    env = {**cli_env(DIMBENCH_INJECT_FAULT=f"{UVIT}#flops=hang"), "SLURM_CONF": str(slurm.conf)}
    runner = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def merged() -> set[tuple]:
            rows = results.read_rows(out) if (out / "results.jsonl").exists() else []
            return {(r["point_key"], r["metric"]) for r in rows}

        _wait("the other points' rows and uvit's params in results.jsonl",
              lambda: merged() >= {(DIT, "gmacs"), (DIM, "gmacs"), (UVIT, "params")}, runner)
        submission = _submission(out)
        uvit = _task_of(submission, UVIT)
        assert len(submission["tasks"]) == 3 and uvit["job_id"].split("_")[0] == submission["job_ids"][0]
        status = subprocess.run([sys.executable, "-m", "dimbench.cli", "status", str(out)], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert "running" in status.stdout and uvit["job_id"] in status.stdout, status.stdout + status.stderr
        subprocess.run(["scancel", uvit["job_id"]], env=env, check=True, timeout=60)
        stdout, stderr = runner.communicate(timeout=WAIT_S)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 1, stdout + stderr  # the array ended with a point not measured
    assert f"{UVIT}: task 0001-t{uvit['index']} (job {uvit['job_id']}) interrupted: stopped by SIGTERM" in stderr
    assert "Run the same command again to resubmit them." in stderr

    env.pop("DIMBENCH_INJECT_FAULT")
    proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 points, 1 to measure" in proc.stdout
    assert _deterministic(_unique_rows(out)) == reference
    nodes = json.loads((out / "environment.json").read_text())["nodes"]
    assert nodes[UVIT]["slurm"]["SLURM_JOB_ID"] == _submission(out)["tasks"][0]["job_id"]  # measured when resubmitted
    assert nodes[DIT]["job_id"] == _task_of(submission, DIT)["job_id"] and nodes[DIT]["hostname"] == slurm.host

    # a partition that does not exist: SLURM's own message, exit 2
    proc = subprocess.run([*args[:-2], "--fresh", "--partition", "nowhere"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "slurm refused the array of 3 tasks:" in proc.stderr and "invalid partition" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
