"""What a cluster run keeps in the results folder (which must be on a filesystem every node shares):

    OUT/cluster/submissions/NNNN.json   one per submission: launcher, job ids, each task's points, the token
                                         tasks check, retry_errors, who submitted what and when
    OUT/cluster/tasks/NNNN-tK.json      one per task, written by the task: state (running, done, failed,
                                         interrupted), job id, host, pid, the node's environment, the reason
    OUT/cluster/submitit/               submitit's pickles and each task's stdout/stderr
    OUT/shards/NNNN-tK.jsonl            the task's rows: its own file, one writer (a requeued task appends to it)

The runner on the submitting machine (or ``dimbench collect``) is the only writer of results.jsonl and merges the
shards into it (:mod:`dimbench.cluster.merge`). A folder whose last array still has live tasks is refused to any
other run (:func:`refuse_live_array`), whichever machine it starts on: flock alone does not hold across nodes.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import socket
from pathlib import Path
from typing import Any

from dimbench.cluster.scheduler import scheduler_for
from dimbench.errors import UserError
from dimbench.results import write_json_atomic

CLUSTER = "cluster"
SHARDS = "shards"
FINAL_TASK_STATES = ("done", "failed", "interrupted")


@dataclasses.dataclass
class Submission:
    """One submission of an array into a folder."""

    number: int
    launcher: str  # "slurm" | "submitit-local"
    tasks: list[dict[str, Any]]  # [{"index": k, "job_id": "123_4", "points": [key, ...]}]
    token: str
    retry_errors: bool
    submitted_at: str
    host: str
    command: str
    job_ids: list[str] = dataclasses.field(default_factory=list)  # as the scheduler names the array (or its jobs)

    @property
    def name(self) -> str:
        return f"{self.number:04d}"

    def task_name(self, index: int) -> str:
        return f"{self.name}-t{index}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ClusterFolder:
    """The cluster records of one results folder."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.root = self.out / CLUSTER
        self.submissions_dir = self.root / "submissions"
        self.tasks_dir = self.root / "tasks"
        self.submitit_dir = self.root / "submitit"
        self.shards_dir = self.out / SHARDS

    # --- submissions
    def submissions(self) -> list[Submission]:
        out = []
        for path in sorted(self.submissions_dir.glob("*.json")) if self.submissions_dir.is_dir() else []:
            try:
                out.append(Submission(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                raise UserError(f"{path}: not a submission record ({exc}); move it away if it is not one") from None
        return out

    def new_submission(self, launcher: str, retry_errors: bool, command: str, submitted_at: str) -> Submission:
        previous = self.submissions()
        number = (previous[-1].number + 1) if previous else 1
        for d in (self.submissions_dir, self.tasks_dir, self.submitit_dir, self.shards_dir):
            d.mkdir(parents=True, exist_ok=True)
        return Submission(number=number, launcher=launcher, tasks=[], token=secrets.token_hex(8),
                          retry_errors=retry_errors, submitted_at=submitted_at, host=socket.gethostname(),
                          command=command)

    def save(self, submission: Submission) -> None:
        write_json_atomic(self.submissions_dir / f"{submission.name}.json", submission.to_dict())

    # --- tasks
    def shard(self, task: str) -> Path:
        return self.shards_dir / f"{task}.jsonl"

    def task_record_path(self, task: str) -> Path:
        return self.tasks_dir / f"{task}.json"

    def task_record(self, task: str) -> dict[str, Any] | None:
        path = self.task_record_path(task)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"state": "unreadable", "reason": f"{path} is not readable as JSON"}

    def write_task_record(self, task: str, record: dict[str, Any]) -> None:
        write_json_atomic(self.task_record_path(task), record)


def task_ended(record: dict[str, Any] | None) -> bool:
    return bool(record) and record.get("state") in FINAL_TASK_STATES


def live_tasks(folder: ClusterFolder, submission: Submission) -> list[tuple[str, str]]:
    """(job id, state) of the submission's tasks that are still queued or running."""
    open_tasks = [t for t in submission.tasks if not task_ended(folder.task_record(submission.task_name(t["index"])))]
    if not open_tasks:
        return []
    states = scheduler_for(submission.launcher).states([t["job_id"] for t in open_tasks], submission)
    return [(t["job_id"], states[t["job_id"]].state) for t in open_tasks if states[t["job_id"]].live]


def refuse_live_array(out: Path) -> None:
    """A UserError when an array submitted into ``out`` still has tasks queued or running (its job id named)."""
    folder = ClusterFolder(out)
    if not folder.submissions_dir.is_dir():
        return
    for submission in folder.submissions():
        live = live_tasks(folder, submission)
        if live:
            jobs = sorted({job.split("_")[0] for job, _ in live})
            raise UserError(
                f"{out}: array job {', '.join(jobs)} ({submission.launcher}, submitted {submission.submitted_at} on "
                f"{submission.host} by `{submission.command}`) still has {len(live)} task(s) queued or running in "
                f"this folder; wait for it (dimbench status {out}), cancel it "
                f"({'scancel ' + ' '.join(jobs) if submission.launcher == 'slurm' else 'kill ' + ' '.join(jobs)}), "
                "or give this run another --out")

