"""The cluster's own commands: ``dimbench status OUT`` and ``dimbench collect OUT`` (``dimbench run --launcher
slurm|submitit-local`` is the run command's, :func:`dimbench.cli.cmd_run`)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from dimbench.cluster.collect import settle
from dimbench.cluster.records import ClusterFolder
from dimbench.cluster.status import point_states
from dimbench.console import console
from dimbench.errors import UserError
from dimbench.runfolder import RunFolder


def add_cluster_commands(sub) -> None:
    p = sub.add_parser("status", help="where each point of a cluster run stands: pending, running (job), done, "
                       "failed (reason), not running")
    p.add_argument("out", metavar="OUT", help="the run's output folder")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("collect", help="merge a cluster run's shards into OUT/results.jsonl (each row once)")
    p.add_argument("out", metavar="OUT", help="the run's output folder")
    p.set_defaults(func=cmd_collect)


def cmd_collect(args) -> int:
    out = console()
    folder = RunFolder(args.out, command=f"dimbench collect {args.out}")
    try:
        if not ClusterFolder(folder.path).submissions_dir.is_dir():
            raise UserError(f"{folder.path}: no cluster submission here (nothing to collect: `dimbench run "
                            "--launcher slurm` writes one)")
        got = settle(folder, refuse_live=False)
    finally:
        folder.close()
    for line in got.warnings:
        out.print(f"[yellow]warning:[/] {line}")
    live = f"; {got.live} task(s) still queued or running (collect again later)" if got.live else ""
    out.print(f"{folder.results}: {got.rows_written} rows of {got.points} points merged from "
              f"{folder.path / 'shards'}{live}")
    return 0


def cmd_status(args) -> int:
    out = Path(args.out)
    records = ClusterFolder(out)
    if not out.is_dir():
        raise UserError(f"{out}: no such folder (the --out of a `dimbench run --launcher slurm`)")
    if not records.submissions_dir.is_dir():
        raise UserError(f"{out}: no cluster submission here (`dimbench run --launcher slurm|submitit-local` writes "
                        "one); a local run's progress is on its terminal")
    entries = point_states(out)
    table = Table(title=f"{out}: {len(entries)} points", title_justify="left")
    for col in ("point", "state", "job", "host", "detail"):
        table.add_column(col)
    for e in entries:
        table.add_row(e["point"], e["state"], str(e["job_id"] or ""), e["host"], e["detail"])
    con = console()
    con.print(table)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["state"]] = counts.get(e["state"], 0) + 1
    con.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0
