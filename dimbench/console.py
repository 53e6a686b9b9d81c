"""How the command line talks to its user: the rich console and the summary table of a run.

Only the command-line front ends use this module (tests/test_architecture.py checks it). Library code raises the
errors of :mod:`dimbench.errors`, which the front ends print as one line and exit status 2; the runner's live
display is :mod:`dimbench.progress`. The summary table is handed its columns: this module knows no metric.
"""

from __future__ import annotations

import re
import sys

from rich.console import Console
from rich.table import Table


def console(stderr: bool = False) -> Console:
    """A rich console; plain text (no colour codes, no live display) when the stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    # Logs and pipes get a fixed wide layout (rich would assume 80 columns and fold the summary table).
    width = None if stream.isatty() else 240
    return Console(file=stream, highlight=False, width=width, soft_wrap=True)


# -------------------------------------------------------------------------------------------- summary table
_STATUS_CELL = {"oom": "[red]OOM[/]", "error": "[red]error[/]", "skipped": "[dim]skipped[/]"}


def summary_table(rows: list[dict], columns: list, title: str = "Summary"):
    """A rich Table: one line per point (model, px, batch, dtype), one column per measured row of ``columns``
    (declared rows with a summary column, Row.summary, in the order to show: header, scale and format come from
    each declaration).

    ``rows`` should hold one row per (point, metric) (see results.latest). Returns (table, notes, problems,
    skips): each shown column's full method, the error/oom cells with their message, and the skipped cells
    grouped by reason, so every cell on screen says how it was obtained or why it is empty.
    """
    points: dict[str, dict] = {}
    cells: dict[tuple[str, str], dict] = {}
    model_order: dict[str, int] = {}
    for row in rows:
        points.setdefault(row["point_key"], row)
        cells[(row["point_key"], row["metric"])] = row
        model_order.setdefault(row["model"], len(model_order))
    def compiled(row: dict) -> str:
        extra = row.get("extra")
        return str(extra.get("compile") or "eager") if isinstance(extra, dict) else "eager"

    points = dict(sorted(points.items(), key=lambda kv: (
        model_order[kv[1]["model"]], kv[1]["resolution"], kv[1]["batch"], kv[1]["dtype"], compiled(kv[1]) != "eager",
        kv[0])))
    # A column nobody measured (CUDA-only metrics on the CPU, say) would only say "skipped" on every line: it is
    # left out, and its reason still appears among the skipped notes.
    measured = {m for (_, m), row in cells.items() if row.get("status") != "skipped"}
    present = [c for c in columns if c.name in measured]
    devices = {p["device"] for p in points.values()}
    modes = {compiled(p) for p in points.values()}
    lead = (["model", "px", "batch", "dtype"] + (["device"] if len(devices) > 1 else [])
            + (["compile"] if modes != {"eager"} else []))
    if len(devices) == 1:
        title = f"{title} — device {devices.pop()}"
    table = Table(title=title, title_justify="left")
    for header in lead:
        longest = max([len(header)] + [len(compiled(p) if header == "compile" else
                                           str(p[header if header != "px" else "resolution"]))
                                       for p in points.values()])
        table.add_column(header, justify="right" if header in ("px", "batch") else "left", no_wrap=True,
                         min_width=longest)
    for col in present:
        table.add_column(col.summary.header, justify="right", no_wrap=True)
    methods: dict[str, set[str]] = {}
    problems: list[str] = []
    skipped: dict[str, list[str]] = {}
    for key, p in points.items():
        line = [p["model"], str(p["resolution"]), str(p["batch"]), p["dtype"]]
        if "device" in lead:
            line.append(p["device"])
        if "compile" in lead:
            line.append(compiled(p))
        for col in present:
            row = cells.get((key, col.name))
            if row is None:
                line.append("")
            elif row["status"] == "ok" and row.get("value") is not None:
                value = col.per_image(row["value"], int(row.get("batch") or 1), row.get("extra")) \
                    if col.summary.per_image else float(row["value"])
                line.append(col.summary.fmt.format(value * col.summary.scale))
                methods.setdefault(col.name, set()).add(row.get("method") or "")
            else:
                line.append(_STATUS_CELL.get(row["status"], row["status"]))
                if row["status"] in ("error", "oom"):
                    problems.append(f"{key} {col.name}: {row['status']}: {row.get('error')}")
        for col in columns:
            row = cells.get((key, col.name))
            if row is not None and row["status"] == "skipped":
                # one group per kind of reason: the per-point numbers in it (GMACs, lines) do not split groups
                kind = re.sub(r"\d+(\.\d+)?", "#", str(row.get("error")))
                skipped.setdefault(kind, []).append((f"{key} {col.name}", str(row.get("error"))))
        table.add_row(*line)
    notes = [f"{col.name}: {m}" for col in present for m in sorted(methods.get(col.name, ()))]
    skips = [f"{len(group)} cell(s), e.g. {group[0][0]}: {group[0][1]}" for group in skipped.values()]
    return table, notes, problems, skips
