"""Reports: a results folder -> report.html (one self-contained file) and report.pdf (multi-page).

    >>> from dimbench.report import build_report
    >>> html_path, pdf_path = build_report("runs/smoke")        # writes into the results folder
    >>> build_report("runs/smoke", out_dir="reports/smoke")     # or elsewhere

Both formats are rendered from one content description (``content.build``: sections of text, figures and
tables), so they always say the same thing. ``data`` reads the folder, ``plots`` draws, ``html`` and ``pdf``
render; labels, per-image handling, ratio measures and model families are the declarations' (``declared``). A
missing or empty folder raises :class:`ReportError` naming the path (a ``UserError``: the command line prints it
as one line).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dimbench.files import atomic_write, folder_lock

from . import content, data
from . import html as html_render
from . import pdf as pdf_render
from .data import ReportError

__all__ = ["ReportError", "build_report"]


def build_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 progress: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """Write report.html and report.pdf for a results folder; returns their paths. ``progress(text)`` is told
    each step (reading, each section, each format) as it starts: a large folder takes a while."""
    say = progress or (lambda text: None)
    say(f"reading {Path(results_dir)}")
    results = data.load(results_dir)
    say(f"{len(results.df):,} rows, {results.df['point_key'].nunique():,} points, {len(results.models)} model(s), "
        f"{len(results.resolutions)} resolution(s)")
    report = content.build(results, say)
    out = Path(out_dir) if out_dir is not None else results.dir
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / "report.html"
    pdf_path = out / "report.pdf"
    figures = sum(len(s.figures) for s in report.sections)
    say(f"drawing the HTML ({figures} figures)")
    html_text = html_render.render(report)
    # Atomic writes: a crash never leaves a half-written report looking complete, nor a temporary file; the lock
    # keeps a second report of the same folder from pairing its HTML with this one's PDF.
    with folder_lock(html_path, what="a report"):
        atomic_write(html_path, html_text)
        say("drawing the PDF")
        atomic_write(pdf_path, lambda f: pdf_render.render(report, f))
    return html_path, pdf_path
