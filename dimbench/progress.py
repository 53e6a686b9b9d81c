"""The live display of a run: a rich progress bar over its points, one printed line per finished point, and for a
long task (training) its step, rate and latest loss. The runner drives it; the command line chooses the console.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _Progress:
    """A rich progress bar over the points of a run, one printed line per finished point, and for a long task its
    step, rate and latest loss in the bar's description."""

    def __init__(self, con: Console, total: int, completed: int):
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
