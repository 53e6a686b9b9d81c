"""One task of a cluster array, on its node: the same runner and worker code as a local run, on the task's points,
writing its rows to its own shard.

A task first checks that it sees the results folder it was submitted into (the submission's token), then
measures each of its points in a worker process exactly as ``dimbench run`` does (a crash, an out-of-memory error
or a hang at one point is a recorded row and the task goes on), with rows fsync'ed into
``OUT/shards/NNNN-tK.jsonl`` before the worker may go on. Its record (``OUT/cluster/tasks/NNNN-tK.json``) says
where it runs, the node's environment (host, GPU, driver), and how it ended:

- done: every point measured (rows may be errors: those are results);
- interrupted: stopped by SIGTERM/SIGINT (scancel, pre-emption): no rows for what was not measured, a rerun of
  the same command resubmits it;
- failed: the task itself failed (it could not load a plugin, say): its unmeasured points get an error row
  with the reason, and the exception goes on to the scheduler (state FAILED).

SIGUSR2 (SLURM's warning before the time limit, or a pre-emption notice; submitit asks for it) checkpoints: the
task is requeued with the same number, appends to the same shard, skips what is on disk, and a long task
resumes from its own state folder (``OUT/state``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import submitit
import torch
from rich.console import Console
from submitit.helpers import DelayedSubmission

from dimbench import results as res
from dimbench.cluster.records import ClusterFolder
from dimbench.environment import collect, collect_isolated, now_iso
from dimbench.plugins import load_plugins
from dimbench.runfolder import RunFolder
from dimbench.runner import Interrupted, Runner
from dimbench.suite import Plan
from dimbench.worker import failure_rows

DISTRIBUTED_ENV = "DIMBENCH_DISTRIBUTED"


@dataclasses.dataclass
class TaskSpec:
    """What one task measures (pickled by submitit)."""

    out: str
    submission: str  # "0003"
    index: int
    token: str
    plan: Plan  # the task's points only
    retry_errors: bool
    plugins: list[str]
    argv: list[str]
    ranks: int = 1  # > 1: every point runs on all ranks under torch.distributed (rows from rank 0)

    @property
    def name(self) -> str:
        return f"{self.submission}-t{self.index}"


class FolderNotShared(RuntimeError):
    """The task does not see the results folder it was submitted into."""


class ShardFolder(RunFolder):
    """The results folder as a task sees it: rows on disk are results.jsonl's (read, never written) and its own
    shard's; it writes to its shard only. No lock: the shard has one writer, and the submitting runner holds the
    folder (a task may run on another machine, where a lock would not hold anyway)."""

    def __init__(self, out: Path, shard: Path, *, discard: bool = False):
        self.path = Path(out)
        self.results = shard
        self.merged = self.path / res.RESULTS_FILE
        self.environment_path = self.path / res.ENVIRONMENT_FILE
        self.logs = self.path / "logs"
        self.discard = discard
        self._lock_fd = None
        self.logs.mkdir(parents=True, exist_ok=True)
        shard.parent.mkdir(parents=True, exist_ok=True)

    def read_rows(self, *, retry_errors: bool = False) -> tuple[list[dict[str, Any]], str | None]:
        torn = None if self.discard else res.repair_torn_tail(self.results)  # this task is the shard's only writer
        merged, _ = res.read_complete_rows(self.merged)  # the runner may be appending: complete lines only
        rows = merged + res.read_rows(self.results)
        self.final = res.final_statuses(rows, retry_errors=retry_errors)
        return rows, torn

    def environment(self) -> dict[str, Any] | None:
        return None

    def check_suite(self, *args, **kwargs) -> None:
        """Checked once, by the submitting runner, against the folder's record."""

    def has_rows(self) -> bool:
        return False

    def append(self, rows: list[dict[str, Any]]) -> int:
        if self.discard:  # a rank other than 0 of a task across nodes: rank 0 writes the point's rows
            return len(rows)
        return res.append_rows(self.results, rows)

    def write_environment(self, record: dict[str, Any]) -> None:
        raise AssertionError("a task writes its task record, never environment.json")


class TaskRunner(Runner):
    """The runner of a task: its points, into its shard; its start and end go to its task record."""

    def __init__(self, spec: TaskSpec, records: ClusterFolder, job_id: str | None, rank: int = 0, **kwargs):
        super().__init__(spec.plan, retry_errors=spec.retry_errors, allow_mixed=True, argv=spec.argv, **kwargs)
        self.spec = spec
        self.records = records
        self.job_id = job_id
        self.rank = rank
        self.requeued = False

    def _open_folder(self) -> RunFolder:
        return ShardFolder(self.out, self.records.shard(self.spec.name), discard=self.rank != 0)

    def _record_start(self, record: dict[str, Any] | None) -> dict[str, Any]:
        env = (collect(self.argv, self.plan.device) if self.device_type == "cpu"
               else collect_isolated(self.argv, self.plan.device))
        entry = {"state": "running", "task": self.spec.name, "job_id": self.job_id, "host": socket.gethostname(),
                 "pid": os.getpid(), "started_at": now_iso(), "points": [pp.point.key for pp in self.plan.points],
                 "environment": node_environment(env)}
        previous = self.records.task_record(self.spec.name)
        if previous and previous.get("started_at"):
            entry["attempts"] = previous.get("attempts", 1) + 1  # requeued: pre-empted, or its time was up
        self._write_record(entry)
        return entry

    def _record_finish(self, entry: dict[str, Any], wall_s: float) -> None:
        if self.requeued:
            state = "requeued"
        elif self.signal_name is not None:
            state = "interrupted"
        else:
            state = "done"
        entry.update(state=state, ended_at=now_iso(), wall_s=round(wall_s, 3), rows_written=len(self.written))
        if self.signal_name is not None:
            entry["reason"] = f"stopped by {self.signal_name}"
        if self.write_error is not None:
            entry.update(state="failed", reason=str(self.write_error))
        self._write_record(entry)

    def _write_record(self, entry: dict[str, Any]) -> None:
        if self.rank == 0:
            self.records.write_task_record(self.spec.name, entry)

    def _announce(self, jobs, complete: int, nslots: int, method: str) -> None:
        print(f"task {self.spec.name} (job {self.job_id}) on {socket.gethostname()}: {len(self.plan.points)} points, "
              f"{len(jobs)} to measure (workers: {method}), rows -> {self.folder.results}", flush=True)

    def unmeasured_rows(self, reason: str) -> list[dict[str, Any]]:
        """Error rows for every final row of the task's points that is not on disk (the task failed)."""
        folder = ShardFolder(self.out, self.records.shard(self.spec.name))
        folder.read_rows(retry_errors=self.retry_errors)
        on_disk = folder.final
        out = []
        for pp in self.plan.points:
            for metric in pp.run:
                missing = tuple(r for r in self.metrics[metric].final_rows
                                if on_disk.get((pp.point.key, r, None)) is None)
                if missing:
                    out += failure_rows(pp.point, self.metrics[metric], "error", reason, now_iso(), 0.0, missing)
        return out


def node_environment(record: dict[str, Any]) -> dict[str, Any]:
    """What is kept per point of a node's environment: host, GPU, driver, versions, and SLURM's word on where."""
    keep = ("hostname", "gpu_name", "driver", "cuda_devices", "cuda_visible_devices", "versions", "git", "error")
    out = {k: record.get(k) for k in keep if k in record}
    out["cpu_model"] = (record.get("cpu") or {}).get("model")
    slurm = {k: v for k, v in os.environ.items() if k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID",
                                                          "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST",
                                                          "SLURM_JOB_PARTITION", "SLURM_JOB_ACCOUNT")}
    if slurm:
        out["slurm"] = slurm
    return out


class PointTask:
    """The callable submitit runs on a node: ``PointTask()(spec)``. Checkpointable: on SIGUSR2 the task is
    requeued and starts again from what is on disk."""

    def __init__(self) -> None:
        self.runner: TaskRunner | None = None

    def __call__(self, spec: TaskSpec) -> dict[str, Any]:
        records = ClusterFolder(Path(spec.out))
        check_folder(records, spec)
        job_id, rank = _job_identity(spec)
        self.runner = None
        try:
            load_plugins(spec.plugins)
            self.runner = TaskRunner(spec, records, job_id, rank, console=_task_console())
            _check_device(spec)
            summary = self.runner.run()
        except Interrupted as exc:
            print(str(exc), file=sys.stderr, flush=True)
            return {"task": spec.name, "state": "requeued" if self.runner.requeued else "interrupted"}
        except Exception as exc:  # the task itself failed: its unmeasured points are recorded errors
            from dimbench.worker import first_line

            reason = f"task {spec.name} (job {job_id}) failed on {socket.gethostname()}: {first_line(exc)}"
            if rank == 0:
                runner = self.runner or TaskRunner(spec, records, job_id, rank, console=_task_console())
                res.append_rows(records.shard(spec.name), runner.unmeasured_rows(reason))
                record = records.task_record(spec.name) or {"task": spec.name, "job_id": job_id,
                                                              "host": socket.gethostname()}
                record.update(state="failed", reason=reason, ended_at=now_iso())
                records.write_task_record(spec.name, record)
            raise
        return {"task": spec.name, "state": "done", "rows_written": summary.rows_written}

    def checkpoint(self, spec: TaskSpec):
        """submitit calls this on SIGUSR2 (the time limit is near, or the task is pre-empted): stop measuring (rows
        on disk stay; a long task's checkpoint is in OUT/state) and requeue this task as it is."""
        if self.runner is not None:
            self.runner.requeued = True
            self.runner.signal_name = "SIGUSR2 (requeued)"
            self.runner.stop.set()
        return DelayedSubmission(PointTask(), spec)


def check_folder(records: ClusterFolder, spec: TaskSpec) -> None:
    """Refuse to measure when the results folder here is not the one the task was submitted into (a path that
    exists on every node but is not shared: node-local scratch, say). A folder that is not there at all fails the
    same way. A folder that is not shared cannot be detected in general (README, 'On a cluster')."""
    path = records.submissions_dir / f"{spec.submission}.json"
    try:
        token = json.loads(path.read_text()).get("token")
    except (OSError, ValueError) as exc:
        token, why = None, f"cannot read {path}: {exc}"
    else:
        why = f"{path} holds another submission's token"
    if token != spec.token:
        raise FolderNotShared(f"the results folder {spec.out} as seen from {socket.gethostname()} is not the one this "
                              f"task was submitted into ({why}): it must be on a filesystem shared by the submitting "
                              "machine and every node")


def _job_identity(spec: TaskSpec) -> tuple[str | None, int]:
    """The scheduler's job id of this task and its rank (0 unless the task spans several ranks, which then join
    one torch.distributed group: RANK, WORLD_SIZE, MASTER_ADDR, ... for the workers)."""
    try:
        env = submitit.JobEnvironment()
    except (ImportError, RuntimeError, KeyError):
        return None, 0
    if spec.ranks > 1:
        hosts = env.hostnames
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
                          LOCAL_WORLD_SIZE=str(env.num_tasks // max(env.num_nodes, 1)), MASTER_ADDR=hosts[0],
                          MASTER_PORT=str(20000 + int(env.raw_job_id) % 20000), **{DISTRIBUTED_ENV: "1"})
    return env.job_id, env.global_rank


def _check_device(spec: TaskSpec) -> None:
    if spec.plan.device.startswith("cuda"):
        if torch.cuda.device_count() == 0:
            raise RuntimeError(f"the points are on {spec.plan.device}, but torch sees no CUDA GPU on "
                               f"{socket.gethostname()} (CUDA_VISIBLE_DEVICES="
                               f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}): ask for GPUs with --gpus-per-task")


def _task_console():

    return Console(file=sys.stdout, no_color=True, width=160)
