"""Shards into results.jsonl: every task's rows, each once, by the folder's one writer.

The same guarantees as a local run: a row is appended when its identity (point, metric, step) is not final on
disk yet (:func:`dimbench.results.rows_to_write`), so a point measured by two tasks (a task of a cancelled array
that ran on after the resubmission was planned) keeps its first final rows; a row already in results.jsonl, byte
for byte, is never appended again (merging twice, or a merge cut short, changes nothing). A shard's half-written
last line is left alone while its task may still be appending, and cut away (with a warning) once it has ended:
its row was never acknowledged to the worker, so the metric is measured again on resubmission. The environment
of the node that measured each point (host, GPU, driver, SLURM job) goes to environment.json under ``nodes``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dimbench import results as res
from dimbench.cluster.records import ClusterFolder, Submission


def canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


class ShardReader:
    """The complete lines each shard gained since the last read (a shard only grows, one writer)."""

    def __init__(self, rows_on_disk: list[dict[str, Any]]):
        self.offsets: dict[Path, int] = {}
        self.lines: dict[Path, int] = {}
        self.seen = {canonical(r) for r in rows_on_disk}

    def new_rows(self, shard: Path) -> list[dict[str, Any]]:
        start = self.offsets.get(shard, 0)
        try:
            with open(shard, "rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # complete lines only: the task may be writing the next one
        rows = []
        for raw in data[:end].split(b"\n")[:-1]:
            self.lines[shard] = self.lines.get(shard, 0) + 1
            try:
                row = json.loads(raw)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                raise res.ResultsError(f"{shard}:{self.lines[shard]}: not a result row ({exc}); fix or remove the "
                                       "line, then run `dimbench collect` again") from None
            if canonical(row) not in self.seen:
                rows.append(row)
        self.offsets[shard] = start + end
        return rows

    def written(self, rows: list[dict[str, Any]]) -> None:
        self.seen.update(canonical(r) for r in rows)


def merge(records: ClusterFolder, submissions: list[Submission], reader: ShardReader,
          append: Callable[[list[dict[str, Any]]], list[dict[str, Any]] | None],
          nodes: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Hand every shard's new rows to ``append`` (which returns the rows it wrote, or None when it could not
    write); record the node of each point that got rows in ``nodes``. Returns point key -> rows written."""
    touched: dict[str, list[dict[str, Any]]] = {}
    for submission in submissions:
        for task in submission.tasks:
            name = submission.task_name(task["index"])
            rows = reader.new_rows(records.shard(name))
            if not rows:
                continue
            written = append(rows)
            if written is None:
                return touched
            reader.written(rows)
            record = records.task_record(name) or {}
            for row in written:
                touched.setdefault(row["point_key"], []).append(row)
            for key in {r["point_key"] for r in written}:
                nodes[key] = {"task": name, "job_id": record.get("job_id") or task.get("job_id"),
                              "measured_at": record.get("started_at"), "hostname": record.get("host"),
                              **(record.get("environment") or {})}
    return touched


def repair_ended(records: ClusterFolder, submission: Submission, ended: set[str]) -> list[str]:
    """Cut away the half-written last line of the shards of ended tasks; the warnings."""
    out = []
    for task in submission.tasks:
        name = submission.task_name(task["index"])
        if name in ended:
            torn = res.repair_torn_tail(records.shard(name))
            if torn:
                out.append(f"{torn} (cut away; its metric is measured again when the point is resubmitted)")
    return out


def point_rows(out: Path, records: ClusterFolder) -> list[dict[str, Any]]:
    """Every complete row of a folder, merged or still in a shard, without changing any file (for status)."""
    rows, _ = res.read_complete_rows(out / res.RESULTS_FILE)
    for shard in sorted(records.shards_dir.glob("*.jsonl")) if records.shards_dir.is_dir() else []:
        rows += res.read_complete_rows(shard)[0]
    return rows
