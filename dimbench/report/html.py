"""Render a :class:`~dimbench.report.document.Report` as ONE self-contained HTML file.

Plots are embedded as base64 PNG (``data:`` URIs), the stylesheet is inline, and nothing refers to the network,
so the file reads offline and prints (a print stylesheet keeps figures and table rows whole). Every string that
goes into the document passes through :func:`esc` — rows come from user-handed files.
"""

from __future__ import annotations

import base64
import html
import io

from matplotlib.figure import Figure as MplFigure

from .document import Cell, Figure, Report, Section, Table

PNG_DPI = 110


def esc(s: object) -> str:
    """Escape for HTML text and attribute values (quotes included)."""
    return html.escape(str(s), quote=True)


def figure_png(fig: Figure, dpi: int = PNG_DPI) -> bytes:
    """Draw a content figure into its own matplotlib Figure and return PNG bytes."""
    mfig = MplFigure(figsize=fig.size, layout="constrained")
    fig.draw(mfig)
    buf = io.BytesIO()
    mfig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


CSS = """
:root { --ink:#1d2733; --muted:#5b6675; --line:#d6dbe1; --accent:#1f5fa8; --bad:#b03a2e; --skip:#8a6d1d; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink);
       margin: 0 auto; max-width: 1100px; padding: 24px 32px 64px; }
header h1 { margin: 0 0 4px; font-size: 28px; }
header p { margin: 0; color: var(--muted); font-size: 13px; word-break: break-all; }
nav { margin: 16px 0 8px; padding: 8px 12px; border: 1px solid var(--line); border-radius: 6px; font-size: 13px;
      display: flex; flex-wrap: wrap; gap: 4px 0; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; white-space: nowrap; }
h2 { margin-top: 36px; padding-bottom: 4px; border-bottom: 2px solid var(--line); font-size: 21px; }
.highlights { background: #eef4fb; border-left: 4px solid var(--accent); padding: 10px 16px; margin: 12px 0; }
.highlights ul { margin: 0; padding-left: 18px; }
.highlights li { margin: 4px 0; }
figure { margin: 18px 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; }
figcaption b { color: var(--ink); }
.table-wrap { overflow-x: auto; margin: 14px 0 24px; }
table { border-collapse: collapse; font-size: 13px; min-width: 50%; }
caption { caption-side: top; text-align: left; font-size: 13px; color: var(--muted); padding-bottom: 6px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; vertical-align: top; }
th { background: #f2f4f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.oom, td.error, td.unknown { color: var(--bad); font-weight: 600; background: #fbeeec; }
td.skipped { color: var(--skip); background: #fbf6e6; }
td.missing { color: #aab; }
td.msg { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; word-break: break-word; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  nav { display: none; }
  h2 { break-after: avoid; page-break-after: avoid; }
  figure, .highlights { break-inside: avoid; page-break-inside: avoid; }
  tr { break-inside: avoid; page-break-inside: avoid; }
  thead { display: table-header-group; }  /* repeat a split table's header on the next page */
  caption { break-after: avoid; page-break-after: avoid; }
  .table-wrap { overflow: visible; }
  a { color: inherit; text-decoration: none; }
}
"""


def _table(t: Table) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in t.columns)
    body = []
    for row in t.rows:
        tds = []
        for i, cell in enumerate(row):
            cell = cell if isinstance(cell, Cell) else Cell(str(cell))
            classes = []
            if t.numeric and i < len(t.numeric) and t.numeric[i]:
                classes.append("num")
            if cell.status != "ok":
                classes.append(cell.status)
            column = t.columns[i] if i < len(t.columns) else ""
            if column in ("message", "method", "value"):  # free text: monospace, may wrap anywhere
                classes.append("msg")
            cls = f' class="{esc(" ".join(classes))}"' if classes else ""
            tds.append(f"<td{cls}>{esc(cell.text)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="table-wrap"><table><caption>{esc(t.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _figure(f: Figure) -> str:
    data = base64.b64encode(figure_png(f)).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(f.title)}">'
            f"<figcaption><b>{esc(f.title)}.</b> {esc(f.caption)}</figcaption></figure>")


def _section(s: Section) -> str:
    parts = [f'<section id="{esc(s.anchor)}"><h2>{esc(s.heading)}</h2>']
    if s.highlights:
        parts.append('<div class="highlights"><ul>' + "".join(f"<li>{esc(h)}</li>" for h in s.highlights)
                     + "</ul></div>")
    parts += [f"<p>{esc(p)}</p>" for p in s.paragraphs]
    parts += [_figure(f) for f in s.figures]
    parts += [_table(t) for t in s.tables]
    parts.append("</section>")
    return "\n".join(parts)


def render(report: Report) -> str:
    """The HTML document as a string."""
    nav = "\n".join(f'<a href="#{esc(s.anchor)}">{esc(s.heading)}</a>' for s in report.sections)
    body = "\n".join(_section(s) for s in report.sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(report.title)}</title><style>{CSS}</style></head>\n<body>"
        f"<header><h1>{esc(report.title)}</h1><p>{esc(report.subtitle)}</p></header>"
        f"<nav>{nav}</nav>\n{body}\n"
        "<footer>Made by dimbench from the results folder named above. Every plot and table is generated from "
        "its rows; captions say what was measured and how.</footer></body></html>\n"
    )
