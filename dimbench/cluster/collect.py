"""``dimbench collect OUT``, and what every run does first in a folder that a cluster array wrote into: merge the
shards into results.jsonl, cut away the torn last line of an ended task's shard, give the points of a task that
failed before it could record anything an error row, and note each point's node in environment.json.

The caller holds the folder (:class:`dimbench.runfolder.RunFolder`: the flock on the submitting machine), so
results.jsonl has one writer; tasks only ever write their own shards and records.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dimbench import results as res
from dimbench.cluster.merge import ShardReader, merge, repair_ended
from dimbench.cluster.records import ClusterFolder, Submission, refuse_live_array, task_ended
from dimbench.cluster.scheduler import FAILED_STATES, TaskState, scheduler_for
from dimbench.environment import now_iso
from dimbench.metrics import METRICS
from dimbench.points import SweepPoint
from dimbench.runfolder import RunFolder
from dimbench.worker import failure_rows


@dataclasses.dataclass
class Collected:
    rows_written: int = 0
    points: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)
    live: int = 0  # tasks still queued or running


def task_states(records: ClusterFolder, submission: Submission) -> dict[str, TaskState]:
    """Task name -> the scheduler's word, asked only for tasks whose own record does not say they ended."""
    open_tasks = {submission.task_name(t["index"]): t for t in submission.tasks
                  if not task_ended(records.task_record(submission.task_name(t["index"])))}
    if not open_tasks:
        return {}
    states = scheduler_for(submission.launcher).states([t["job_id"] for t in open_tasks.values()], submission)
    return {name: states[t["job_id"]] for name, t in open_tasks.items()}


def failed_task_rows(records: ClusterFolder, submission: Submission, states: dict[str, TaskState],
                     final: dict[tuple, str]) -> list[dict[str, Any]]:
    """Error rows for the unmeasured points of tasks that the scheduler says failed (FAILED, OUT_OF_MEMORY,
    BOOT_FAIL) without their own record saying so: they died before, or without, writing one."""
    out = []
    for task in submission.tasks:
        name = submission.task_name(task["index"])
        state = states.get(name)
        if state is None or state.live or state.state not in FAILED_STATES:
            continue
        log = records.submitit_dir / f"{task['job_id']}_0_log.err"
        reason = (f"task {name} (job {task['job_id']}) ended {state.state}"
                  f"{' on ' + state.node if state.node else ''} before recording a result; its log: {log} "
                  "(a results folder that the node does not see ends a task so: README, 'On a cluster')")
        for entry in task["points"]:
            point = SweepPoint.from_dict(entry["point"])
            for metric, rows in entry["metrics"].items():
                missing = tuple(r for r in rows if final.get((point.key, r, None)) is None)
                if missing and metric in METRICS:
                    out += failure_rows(point, METRICS[metric], "error", reason, now_iso(), 0.0, missing)
    return out


def settle(folder: RunFolder, *, refuse_live: bool, record: dict[str, Any] | None = None,
           retry_errors: bool | None = None) -> Collected:
    """Merge what the folder's arrays left in shards into results.jsonl (see the module docstring). With
    ``refuse_live``, a folder whose array still runs is refused (UserError naming the job) before anything is
    read. ``record``: the environment record to note nodes in (default: the folder's environment.json, written
    back when it changed)."""
    records = ClusterFolder(folder.path)
    if not records.submissions_dir.is_dir():
        return Collected()
    submissions = records.submissions()
    if not submissions:
        return Collected()
    if refuse_live:
        refuse_live_array(folder.path)
    retry = submissions[-1].retry_errors if retry_errors is None else retry_errors
    rows, torn = folder.read_rows()
    done = Collected(warnings=[torn] if torn else [])
    final = res.final_statuses(rows, retry_errors=retry)
    own_record = record is None
    record = folder.environment() if own_record else record
    nodes: dict[str, Any] = (record or {}).setdefault("nodes", {}) if record is not None else {}

    def append(new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        to_write = res.rows_to_write(new, final)
        folder.append(to_write)
        final.update(res.final_statuses(to_write, retry_errors=retry))
        return to_write

    reader = ShardReader(rows)
    touched = merge(records, submissions, reader, append, nodes)
    for submission in submissions:
        states = task_states(records, submission)
        done.live += sum(1 for s in states.values() if s.live)
        ended = {t for t, s in states.items() if not s.live} | {
            submission.task_name(t["index"]) for t in submission.tasks
            if task_ended(records.task_record(submission.task_name(t["index"])))}
        done.warnings += repair_ended(records, submission, ended)
        for key, rows_ in merge(records, [submission], reader, append, nodes).items():  # a line ended meanwhile
            touched.setdefault(key, []).extend(rows_)
        failed = append(failed_task_rows(records, submission, states, final))
        for row in failed:
            touched.setdefault(row["point_key"], []).append(row)
    done.rows_written = sum(len(v) for v in touched.values())
    done.points = len(touched)
    if own_record and record is not None and touched:
        folder.write_environment(record)
    return done
