"""Render a :class:`~dimbench.report.document.Report` as a multi-page PDF (matplotlib ``PdfPages``, A4 portrait).

Text, plots and tables flow over the pages in the content's order (tables split between rows, repeating their
header; a plot moves to the next page whole, its caption under it). :func:`layout` plans the pages before
anything is drawn, so the page count is known (the footer says "page i of n") and testable.

Text goes in as TrueType (``pdf.fonttype`` 42) so the PDF is searchable and ``pdftotext`` can read it. Strings
from the results pass through :func:`~dimbench.report.plots.mpl_text` (no mathtext from a ``$``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure as MplFigure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle
from matplotlib.textpath import TextToPath

from .document import Figure, Report, Table
from .plots import mpl_text

_TEXT_TO_PATH = TextToPath()

PAGE_W, PAGE_H = 8.27, 11.69  # A4, inches
MARGIN = 0.6
FOOTER = 0.35  # reserved at the bottom for the page number
WIDTH = PAGE_W - 2 * MARGIN
BOTTOM = PAGE_H - MARGIN - FOOTER  # lowest y (from the top) content may reach

SIZE = {"title": 19, "subtitle": 8, "h2": 14, "text": 9.5, "table": 7, "caption": 8.5, "small": 7}
BAD = "#b03a2e"
SKIP = "#8a6d1d"
MUTED = "#5b6675"


def _line(pt: float) -> float:
    """Line height in inches for a font size in points."""
    return pt * 1.38 / 72


@functools.lru_cache(maxsize=20000)
def text_width(s: str, pt: float, weight: str = "normal") -> float:
    """Width in inches of a string as matplotlib will draw it (DejaVu Sans metrics, no mathtext)."""
    w, _, _ = _TEXT_TO_PATH.get_text_width_height_descent(s, FontProperties(size=pt, weight=weight), ismath=False)
    return w / 72


def _split_word(word: str, width_in: float, pt: float, weight: str) -> list[str]:
    """Break a word longer than the line (paths, long messages) into pieces that fit."""
    pieces, cur = [], ""
    for ch in word:
        if cur and text_width(cur + ch, pt, weight) > width_in:
            pieces.append(cur)
            cur = ""
        cur += ch
    return pieces + [cur]


def _wrap(text: str, width_in: float, pt: float, weight: str = "normal") -> list[str]:
    """Greedy word wrap by measured width, keeping explicit line breaks."""
    out: list[str] = []
    for para in str(text).splitlines() or [""]:
        line = ""
        for word in para.split():
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, pt, weight) <= width_in:
                line = candidate
                continue
            if line:
                out.append(line)
            parts = _split_word(word, width_in, pt, weight) if text_width(word, pt, weight) > width_in else [word]
            out += parts[:-1]
            line = parts[-1]
        out.append(line)
    return out


# ---- page plan --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TextBlock:
    lines: list[str]
    pt: float
    weight: str = "normal"
    colour: str = "#1d2733"
    indent: float = 0.0
    boxed: bool = False  # headline box: light background and an accent bar
    bullet: bool = False

    @property
    def height(self) -> float:
        return len(self.lines) * _line(self.pt) + (2 * BOX_PAD if self.boxed else 0.0)


@dataclasses.dataclass
class TableBlock:
    header: list[list[str]]  # wrapped lines per header cell
    rows: list[tuple[list[list[str]], list[str]]]  # (wrapped lines per cell, status per cell)
    widths: list[float]  # inches
    numeric: list[bool]

    @staticmethod
    def row_height(cells: list[list[str]]) -> float:
        return max(len(c) for c in cells) * _line(SIZE["table"]) + 0.05

    @property
    def height(self) -> float:
        return self.row_height(self.header) + sum(self.row_height(c) for c, _ in self.rows)


@dataclasses.dataclass
class FigureBlock:
    """A plot across the text width at its own aspect ratio, its title above and its caption below."""

    figure: Figure
    title_lines: list[str]
    body: float  # plot height, inches
    caption_lines: list[str]

    @classmethod
    def of(cls, f: Figure) -> FigureBlock:
        body = min(WIDTH * f.size[1] / f.size[0], 6.5)
        return cls(f, _wrap(f.title, WIDTH, FIG_TITLE, "bold"), body, _wrap(f.caption, WIDTH, SIZE["caption"]))

    @property
    def title_h(self) -> float:
        return len(self.title_lines) * _line(FIG_TITLE) + 0.04

    @property
    def height(self) -> float:
        return self.title_h + self.body + 0.06 + len(self.caption_lines) * _line(SIZE["caption"])


@dataclasses.dataclass
class Page:
    blocks: list[tuple[float, object]] = dataclasses.field(default_factory=list)  # (y from the top, block)

    @property
    def figures(self) -> list[tuple[float, FigureBlock]]:
        return [(y, b) for y, b in self.blocks if isinstance(b, FigureBlock)]


FIG_TITLE = 10.5
BOX_PAD = 0.04
BULLET_W = 0.16
CELL_PAD = 0.04  # inches of padding on each side of a table cell
WRAP_SLACK = 0.005  # inches added to a column's natural width (see _column_widths)


def _column_widths(t: Table) -> list[float]:
    """Column widths in inches: each column's natural width, and where the table is wider than the page, the
    widest columns capped at one common width (water-filling) so that it fits; capped columns wrap."""
    pt = SIZE["table"]
    natural = []
    for i, name in enumerate(t.columns):
        w = text_width(str(name), pt, "bold")
        for r in t.rows:
            if i < len(r):
                w = max(w, text_width(r[i].text, pt))
        # + WRAP_SLACK: the cell wraps its text to (width - 2 * CELL_PAD), and without slack the rounding of that
        # subtraction split a column's widest entry ("3000" as "300" over "0")
        natural.append(w + 2 * CELL_PAD + WRAP_SLACK)
    if sum(natural) <= WIDTH:
        return natural
    order = sorted(natural)
    fixed = 0.0
    for k, w in enumerate(order):
        cap = (WIDTH - fixed) / (len(order) - k)
        if w > cap:
            break
        fixed += w
    return [min(w, cap) for w in natural]


def _table_block(t: Table) -> TableBlock:
    """The whole table as one block, every cell wrapped to its column (the planner splits it between pages)."""
    pt = SIZE["table"]
    widths = _column_widths(t)
    header = [_wrap(str(c), widths[i] - 2 * CELL_PAD, pt, "bold") for i, c in enumerate(t.columns)]
    rows = []
    for r in t.rows:
        cells = [_wrap(r[i].text if i < len(r) else "", widths[i] - 2 * CELL_PAD, pt) for i in range(len(t.columns))]
        rows.append((cells, [r[i].status if i < len(r) else "missing" for i in range(len(t.columns))]))
    return TableBlock(header, rows, widths, list(t.numeric or [False] * len(t.columns)))


class _Planner:
    def __init__(self) -> None:
        self.pages: list[Page] = []
        self.y = BOTTOM + 1  # forces a new page on first use

    def new_page(self) -> None:
        self.pages.append(Page())
        self.y = MARGIN

    def room(self) -> float:
        return BOTTOM - self.y

    def place(self, block, gap: float = 0.08, keep: float = 0.0) -> None:
        """Put a block on the current page, or on a new one if it (plus ``keep`` inches of what follows) won't fit."""
        if block.height + keep > self.room() and self.y > MARGIN:
            self.new_page()
        self.pages[-1].blocks.append((self.y, block))
        self.y += block.height + gap

    def text(self, text: str, pt: float, gap: float = 0.08, keep: float = 0.0, **kw) -> None:
        """Wrapped text, split across pages between lines if it is taller than what is left."""
        lines = _wrap(text, WIDTH - kw.get("indent", 0.0) - (BULLET_W if kw.get("bullet") else 0.0), pt,
                      kw.get("weight", "normal"))
        while lines:
            fit = max(int(self.room() // _line(pt)), 0)
            if fit == 0 or (fit < len(lines) and fit < 3):
                self.new_page()
                continue
            head, lines = lines[:fit], lines[fit:]
            self.place(TextBlock(head, pt, **kw), gap=gap if not lines else 0.0, keep=keep)
            kw["bullet"] = False  # a bullet continued on the next page gets no second bullet

    def table(self, t: Table) -> None:
        block = _table_block(t)
        # the caption stays with the header and the first rows, never alone at the foot of a page
        start = TableBlock.row_height(block.header) + sum(TableBlock.row_height(c) for c, _ in block.rows[:2])
        self.text(t.caption, SIZE["caption"], gap=0.04, keep=start, colour=MUTED)
        rows = list(block.rows)
        while rows:
            head_h = TableBlock.row_height(block.header)
            avail = self.room() - head_h
            take, used = 0, 0.0
            for cells, _ in rows:
                h = TableBlock.row_height(cells)
                if used + h > avail:
                    break
                take, used = take + 1, used + h
            if take == 0:
                if self.y > MARGIN:
                    self.new_page()
                    continue
                take = 1  # a single row taller than a page: draw it and let it clip
            self.place(TableBlock(block.header, rows[:take], block.widths, block.numeric), gap=0.22)
            rows = rows[take:]
            if rows:
                self.new_page()


def layout(report: Report) -> list[Page]:
    """Plan every page of the PDF: text, figures and tables flow in order, each section under its heading."""
    p = _Planner()
    p.new_page()
    p.text(report.title, SIZE["title"], weight="bold", gap=0.05)
    p.text(report.subtitle, SIZE["subtitle"], colour=MUTED, gap=0.25)
    for s in report.sections:
        figures = [FigureBlock.of(f) for f in s.figures]
        # Keep the heading with the start of what follows it (a plot, or a few lines of text or table).
        keep = figures[0].height if figures and not (s.highlights or s.paragraphs) else 0.8
        p.text(s.heading, SIZE["h2"], weight="bold", gap=0.08, keep=keep)
        for i, h in enumerate(s.highlights):
            last = i == len(s.highlights) - 1
            p.text(h, SIZE["text"], gap=0.12 if last else 0.0, colour="#173f6d", indent=0.12, boxed=True,
                   bullet=True)
        for para in s.paragraphs:
            p.text(para, SIZE["text"], gap=0.1)
        for fb in figures:
            p.place(fb, gap=0.25)
        for t in s.tables:
            p.table(t)
        p.y += 0.15
    return p.pages


# ---- drawing ----------------------------------------------------------------------------------------------


def _draw_text(fig: MplFigure, y: float, b: TextBlock) -> None:
    if b.boxed:
        fig.add_artist(Rectangle((MARGIN, PAGE_H - y - b.height), WIDTH, b.height, transform=fig.dpi_scale_trans,
                                 facecolor="#eef4fb", edgecolor="none"))
        fig.add_artist(Rectangle((MARGIN, PAGE_H - y - b.height), 0.05, b.height, transform=fig.dpi_scale_trans,
                                 facecolor="#1f5fa8", edgecolor="none"))
        y += BOX_PAD
    x = MARGIN + b.indent
    if b.bullet:
        fig.text(x, PAGE_H - y, "•", fontsize=b.pt, color=b.colour, va="top", transform=fig.dpi_scale_trans)
        x += BULLET_W
    for i, line in enumerate(b.lines):
        fig.text(x, PAGE_H - y - i * _line(b.pt), mpl_text(line), fontsize=b.pt,
                 fontweight=b.weight, color=b.colour, va="top", ha="left", transform=fig.dpi_scale_trans)


def _draw_table(fig: MplFigure, y: float, b: TableBlock) -> None:
    pt = SIZE["table"]
    pad = CELL_PAD

    def row(cells, statuses, y0, header=False):
        h = TableBlock.row_height(cells)
        x = MARGIN
        for i, (lines, w) in enumerate(zip(cells, b.widths, strict=True)):
            status = statuses[i] if statuses else "ok"
            face = "#e9edf2" if header else {"oom": "#fbeeec", "error": "#fbeeec", "skipped": "#fbf6e6"}.get(
                status, "white")
            fig.add_artist(Rectangle((x, PAGE_H - y0 - h), w, h, transform=fig.dpi_scale_trans, facecolor=face,
                                     edgecolor="#c9cfd6", linewidth=0.5))
            colour = {"oom": BAD, "error": BAD, "skipped": SKIP, "missing": "#99a"}.get(status, "#1d2733")
            right = b.numeric[i] and not header
            for k, line in enumerate(lines):
                fig.text(x + w - pad if right else x + pad, PAGE_H - y0 - 0.025 - k * _line(pt), mpl_text(line),
                         fontsize=pt, va="top", ha="right" if right else "left", color=colour,
                         fontweight="bold" if header or status in ("oom", "error") else "normal",
                         transform=fig.dpi_scale_trans)
            x += w
        return h

    y += row(b.header, None, y, header=True)
    for cells, statuses in b.rows:
        y += row(cells, statuses, y)


def _footer(fig: MplFigure, title: str, i: int, n: int) -> None:
    fig.text(MARGIN, MARGIN * 0.6, mpl_text(title), fontsize=SIZE["small"], color=MUTED,
             transform=fig.dpi_scale_trans)
    fig.text(PAGE_W - MARGIN, MARGIN * 0.6, f"page {i} of {n}", fontsize=SIZE["small"], color=MUTED, ha="right",
             transform=fig.dpi_scale_trans)


def _page_figure(page: Page) -> MplFigure:
    """A page's matplotlib Figure. Plots are drawn into horizontal sub-figure bands at their planned places;
    constrained layout sizes each plot inside its band (w_pad, in inches, keeps the side margins)."""
    if not page.figures:
        return MplFigure(figsize=(PAGE_W, PAGE_H))
    fig = MplFigure(figsize=(PAGE_W, PAGE_H), layout="constrained")
    fig.get_layout_engine().set(w_pad=MARGIN * 0.8, h_pad=0.02, hspace=0, wspace=0)
    bands, cursor, bodies = [], 0.0, []
    for y, fb in page.figures:
        top = y + fb.title_h
        bands.append(max(top - cursor, 1e-3))
        bands.append(fb.body)
        bodies.append((len(bands) - 1, fb))
        cursor = top + fb.body
    bands.append(max(PAGE_H - cursor, 1e-3))
    subs = fig.subfigures(len(bands), 1, height_ratios=bands)
    for i, fb in bodies:
        fb.figure.draw(subs[i])
    return fig


def _draw_figure_text(fig: MplFigure, y: float, b: FigureBlock) -> None:
    for i, line in enumerate(b.title_lines):
        fig.text(MARGIN, PAGE_H - y - i * _line(FIG_TITLE), mpl_text(line), fontsize=FIG_TITLE, fontweight="bold",
                 va="top", transform=fig.dpi_scale_trans)
    y0 = y + b.title_h + b.body + 0.06
    for i, line in enumerate(b.caption_lines):
        fig.text(MARGIN, PAGE_H - y0 - i * _line(SIZE["caption"]), mpl_text(line), fontsize=SIZE["caption"],
                 color=MUTED, va="top", transform=fig.dpi_scale_trans)


def render(report: Report, path: str | Path) -> int:
    """Write the PDF; returns the number of pages."""
    pages = layout(report)
    n = len(pages)
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path, metadata={
            "Title": report.title, "Creator": "dimbench"}) as pdf:
        for i, page in enumerate(pages, 1):
            fig = _page_figure(page)
            for y, block in page.blocks:
                if isinstance(block, TableBlock):
                    _draw_table(fig, y, block)
                elif isinstance(block, FigureBlock):
                    _draw_figure_text(fig, y, block)
                else:
                    _draw_text(fig, y, block)
            _footer(fig, report.title, i, n)
            pdf.savefig(fig)
    return n
