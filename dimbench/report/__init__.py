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

from pathlib import Path

from . import content, data
from . import html as html_render
from . import pdf as pdf_render
from .data import ReportError

__all__ = ["ReportError", "build_report"]


def build_report(results_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write report.html and report.pdf for a results folder; returns their paths."""
    results = data.load(results_dir)
    report = content.build(results)
    out = Path(out_dir) if out_dir is not None else results.dir
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / "report.html"
    pdf_path = out / "report.pdf"
    # Write to a temporary name first so a crash never leaves a half-written report looking complete, and no
    # temporary file behind either.
    tmp = html_path.with_suffix(".html.tmp")
    tmp_pdf = pdf_path.with_suffix(".pdf.tmp")
    try:
        tmp.write_text(html_render.render(report), encoding="utf-8")
        tmp.replace(html_path)
        pdf_render.render(report, tmp_pdf)
        tmp_pdf.replace(pdf_path)
    finally:
        for leftover in (tmp, tmp_pdf):
            leftover.unlink(missing_ok=True)
    return html_path, pdf_path
