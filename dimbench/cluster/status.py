"""``dimbench status OUT``: where each point of a folder's cluster submissions stands, read without changing any
file (no lock: it may run beside the runner that follows the array).

    done                 every final row it declares is on disk (merged, or still in its task's shard)
    failed (reason)      on disk, with an error row; or its task failed
    running (job, host)  its task is running
    pending (job)        its task is queued (SLURM's reason given)
    not running (why)    its task ended without measuring it (cancelled, pre-empted, timed out): running the
                         same `dimbench run` command again resubmits it
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dimbench.cluster.collect import task_states
from dimbench.cluster.merge import point_rows
from dimbench.cluster.records import ClusterFolder
from dimbench.results import latest


def point_states(out: Path) -> list[dict[str, Any]]:
    """One entry per point of the folder's submissions (the latest submission of each point): key, state,
    job id, host, detail."""
    records = ClusterFolder(out)
    submissions = records.submissions()
    rows: dict[tuple, dict[str, Any]] = {}
    for row in latest(point_rows(out, records)):
        rows[(row.get("point_key"), row.get("metric"))] = row
    where: dict[str, tuple] = {}
    for submission in submissions:
        for task in submission.tasks:
            for entry in task["points"]:
                where[entry["key"]] = (submission, task, entry)
    states_of: dict[str, dict] = {}
    out_entries = []
    for key, (submission, task, entry) in where.items():
        name = submission.task_name(task["index"])
        if submission.name not in states_of:
            states_of[submission.name] = task_states(records, submission)
        record = records.task_record(name) or {}
        state = states_of[submission.name].get(name)
        wanted = [(key, r) for names in entry["metrics"].values() for r in names]
        have = [rows[w] for w in wanted if w in rows]
        info = {"point": key, "job_id": task.get("job_id"), "task": name, "host": record.get("host") or "",
                "detail": ""}
        errors = [r for r in have if r.get("status") == "error"]
        if len(have) == len(wanted):
            info["state"] = "failed" if errors else "done"
            if errors:
                info["detail"] = f"{errors[0]['metric']}: {errors[0].get('error')}"
        elif record.get("state") == "failed":
            info.update(state="failed", detail=record.get("reason") or "")
        elif state is not None and state.live:
            info["state"] = "pending" if state.state in ("PENDING", "REQUEUED", "REQUEUE_HOLD") else "running"
            info["detail"] = state.reason if info["state"] == "pending" else f"{len(have)}/{len(wanted)} rows"
            info["host"] = info["host"] or state.node
        elif record.get("state") == "running" and state is None:
            info.update(state="running", detail=f"{len(have)}/{len(wanted)} rows")
        else:
            how = record.get("reason") or (f"{state.state}" + (f": {state.reason}" if state.reason else "")
                                          if state else record.get("state", "ended"))
            info.update(state="not running", detail=f"{how}; {len(have)}/{len(wanted)} rows on disk; the same "
                        "`dimbench run` command resubmits it")
        out_entries.append(info)
    return out_entries
