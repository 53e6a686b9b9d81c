"""How dimbench talks to its user: the error that becomes one line and exit status 2, and rich helpers.

Any part of dimbench (the checkpoint commands too) may raise :class:`UserError` for a mistake the user can fix;
``dimbench.cli`` prints its message as one line on stderr and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import re
import sys

from rich.console import Console

EXIT_USAGE = 2  # a user's mistake (bad suite, bad argument, missing file): same status argparse uses
EXIT_INTERRUPTED = 130  # the shell's convention for a run stopped by Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """A mistake the user can fix. ``str(error)`` is the whole message; several lines allowed (one per problem)."""


def console(stderr: bool = False) -> Console:
    """A rich console; plain text (no colour codes, no live display) when the stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    # Logs and pipes get a fixed wide layout (rich would assume 80 columns and fold the summary table).
    width = None if stream.isatty() else 240
    return Console(file=stream, highlight=False, width=width, soft_wrap=True)


# ------------------------------------------------------------------------------------------------ progress
class _Progress:
    """A rich progress bar over the points of a run, one printed line per finished point, and for a long task its
    step, rate and latest loss in the bar's description."""

    def __init__(self, con: Console, total: int, completed: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = con
        self.total = total
        self.done = completed
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=con, transient=True,
        )
        self.task = self.progress.add_task("points", total=total, completed=completed)
        self._steps: dict[tuple[str, str], tuple[float, int]] = {}  # (point, metric) -> first report (time, step)

    def note(self, point, metric: str, info: dict | None = None) -> None:
        """What runs now; ``info`` is a long task's progress event (step, total, and e.g. loss)."""
        text = f"{point.key} · {metric}"
        if info:
            text += " · " + long_task_status(self._steps, (point.key, metric), info)
        self.progress.update(self.task, description=text)

    def finished(self, point, rows: list[dict], seconds: float) -> None:
        self.done += 1
        self.progress.update(self.task, advance=1, description="points")
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        parts = [f"{n} {status}" for status, n in sorted(counts.items())]
        problems = [r for r in rows if r["status"] in ("error", "oom")]
        style = "red" if problems else "green"
        line = (f"[{style}]{'✗' if problems else '✓'}[/] [{self.done}/{self.total}] {point.key}  "
                f"{seconds:.1f} s wall  rows: {', '.join(parts) or 'none'}")
        if problems:
            line += f"  ({problems[0]['metric']}: {problems[0]['status']}: {problems[0]['error']})"
        self.progress.console.print(line, markup=True, highlight=False)


def long_task_status(first: dict, key: tuple, info: dict) -> str:
    """'step 120/1000, 3.2 steps/s, loss 0.1234' from a progress event; the rate since the task's first report
    in this run (``first`` remembers it per task)."""
    import time

    step = int(info.get("step") or 0)
    t0, s0 = first.setdefault(key, (time.monotonic(), step))
    parts = [f"step {step}" + (f"/{info['total']}" if info.get("total") else "")]
    elapsed = time.monotonic() - t0
    if step > s0 and elapsed > 0:
        parts.append(f"{(step - s0) / elapsed:.3g} steps/s")
    for name, value in info.items():
        if name not in ("event", "metric", "step", "total"):
            parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(parts)


class progress_bar:  # noqa: N801 - used as a context manager, like rich's own
    """``with progress_bar(console, total=N, completed=k) as p: p.note(point, metric); p.finished(...)``."""

    def __init__(self, con: Console, total: int, completed: int = 0):
        self._p = _Progress(con, total, completed)

    def __enter__(self) -> _Progress:
        self._p.progress.start()
        return self._p

    def __exit__(self, *exc) -> None:
        self._p.progress.stop()


# -------------------------------------------------------------------------------------------- summary table
_STATUS_CELL = {"oom": "[red]OOM[/]", "error": "[red]error[/]", "skipped": "[dim]skipped[/]"}


def summary_columns() -> list:
    """The declared rows that have a summary column (Row.summary), in registration order."""
    from dimbench.metrics import declared_rows

    return [r for r in declared_rows() if r.summary is not None]


def summary_table(rows: list[dict], title: str = "Summary"):
    """A rich Table: one line per point (model, px, batch, dtype), one column per measured row metric that
    declares a summary column (header, scale and format from the declaration).

    ``rows`` should hold one row per (point, metric) (see results.latest). Returns (table, notes, problems,
    skips): each shown column's full method, the error/oom cells with their message, and the skipped cells
    grouped by reason, so every cell on screen says how it was obtained or why it is empty.
    """
    from rich.table import Table

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
    columns = summary_columns()
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
