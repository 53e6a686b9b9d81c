"""The report's document model (sections of text, figures and tables) and the helpers that fill it.

:mod:`content` decides what the report says and builds a :class:`Report`; :mod:`html` and :mod:`pdf` render
it. The helpers here turn result rows into the pieces every section uses: labels, number formats, captions
that say how a value was obtained, plotted series with their failures, and model x resolution tables. Labels and
what divides by the batch are the rows' declarations (:mod:`.declared`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from . import declared, plots
from .data import STATUSES, Facet, Results
from .plots import FailMark, Panel, Series

# --------------------------------------------------------------------------------------------------------------
# The content model
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    """A table cell; ``status`` (ok|oom|error|skipped|missing) lets renderers colour failures."""

    text: str
    status: str = "ok"


@dataclasses.dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[Cell]]
    numeric: list[bool] | None = None  # right-align these columns

    def __post_init__(self) -> None:
        self.rows = [[c if isinstance(c, Cell) else Cell(str(c)) for c in row] for row in self.rows]
        if self.numeric is None:
            self.numeric = [False] * len(self.columns)


@dataclasses.dataclass
class Figure:
    """A plot: ``draw(container)`` draws into a matplotlib Figure or SubFigure (each renderer makes its own)."""

    title: str
    caption: str
    draw: Callable[[object], None]
    size: tuple[float, float] = (10.0, 4.6)  # inches, for the HTML image; the PDF fits it to the page
    panels: list[Panel] | None = None  # what draw() draws, when it is panels (kept for inspection and tests)


@dataclasses.dataclass
class Section:
    heading: str
    anchor: str
    highlights: list[str] = dataclasses.field(default_factory=list)  # the headline, shown boxed
    paragraphs: list[str] = dataclasses.field(default_factory=list)
    figures: list[Figure] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Report:
    title: str
    subtitle: str
    sections: list[Section]


# --------------------------------------------------------------------------------------------------------------
# How much a report draws: a large folder is summarised, not drawn whole
# --------------------------------------------------------------------------------------------------------------

#: Settings (facets: device, dtype, batch, compile) plotted per section and tabulated per metric; a sweep of 20
#: batch sizes draws 6 of them, evenly spread from the smallest to the largest, and says which it left out.
MAX_FACETS = 6
#: Resolutions (columns) and models (rows) of a model x resolution table, evenly spread, ends included.
MAX_TABLE_COLUMNS = 16
MAX_TABLE_ROWS = 60
#: Lines of a list (failed points, ratios) before it says "and N more".
MAX_LISTED = 40
#: Lines in one ratio panel (model pairs): beyond it the legend would hide the plot.
MAX_SERIES = 12


def spread(items: Sequence, n: int) -> list:
    """At most ``n`` of ``items``, evenly spread, the first and the last included, in their order."""
    if len(items) <= n:
        return list(items)
    picked = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in picked]


def capped_facets(facets: list[Facet]) -> tuple[list[Facet], str]:
    """The facets a section draws (:data:`MAX_FACETS`, evenly spread) and a sentence on those it leaves out
    (empty when none is)."""
    shown = spread(facets, MAX_FACETS)
    left = [f for f in facets if f not in shown]
    if not left:
        return shown, ""
    names = "; ".join(f.label() for f in left[:4]) + ("; …" if len(left) > 4 else "")
    return shown, (f"{len(left)} more setting(s) are not drawn here ({names}): a folder this large is summarised, "
                   f"{MAX_FACETS} settings per section evenly spread from the first to the last; every row is in "
                   "results.jsonl (dimbench.results.load).")


def capped_rows(rows: list, what: str) -> tuple[list, str]:
    """At most :data:`MAX_LISTED` of a table's rows, and the caption's note on the rest."""
    if len(rows) <= MAX_LISTED:
        return rows, ""
    return rows[:MAX_LISTED], (f" The first {MAX_LISTED} of {len(rows):,} {what} are listed; every one is in "
                               "results.jsonl.")


# --------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------

SPECIAL_METRICS = ("train_loss", "samples")  # not pivoted in the full tables


def per_pass(metric: str) -> bool:
    """Whether the row is of one pass over the batch (declared), so that it is divided by the batch."""
    return declared.row(metric).per_pass


def label(metric: str, facet: Facet | None = None) -> str:
    """The metric's declared label; per image where the facet's batch varies and the row is per pass."""
    return declared.label(metric, per_image=facet is not None and facet.batch is None)


def batch_note(metrics: Sequence[str], facet: Facet, instead: str = "") -> str:
    """For a caption: how the values relate to the batch, when it varies with resolution (else nothing);
    ``instead``: what the section says about it in place of the standard text (memory: not per image)."""
    if facet.batch is not None:
        return ""
    head = "The batch varies with resolution (shown under each resolution, b32 = batch 32): "
    if instead:
        return head + instead
    if not any(per_pass(m) for m in metrics):
        return head + "these are rates, the same per image as per batch, so points of different batches compare. "
    return (head + "values are per image — GMACs and times are those of one pass over the batch divided by the "
            "batch; throughput (img/s), TFLOP/s and MFU are rates, the same per image as per batch. ")


def as_measured(metric: str) -> str:
    """What a value of a varying-batch facet is, as measured (the full tables do not divide by the batch)."""
    if per_pass(metric):
        return "values as measured, for one pass over the whole batch (the plots divide them by the batch)"
    return "values as measured, not divided by the batch"


def fmt(value: float | None, metric: str = "") -> str:
    """Numbers at a readable precision; parameter counts in millions (the caption says so)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if metric.startswith("params"):
        return f"{value / 1e6:,.2f} M"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.1f}"
    if a >= 10:
        return f"{value:.2f}"
    if a == 0:
        return "0"
    return f"{value:.3g}"


def px(res: float) -> str:
    return f"{res:,.0f} px"


def join_text(items: Sequence[str], empty: str = "not recorded") -> str:
    items = [i for i in items if i]
    return "; ".join(items) if items else empty


def method_text(results: Results, metrics: Sequence[str], facet: Facet | None = None) -> str:
    """'metric: method' for each metric, plus the backends that ran, for a caption."""
    parts = []
    for m in metrics:
        if results.has(m):
            parts.append(f"{label(m)}: {join_text(results.methods(m, facet))}")
    backends = results.backends(list(metrics), facet)
    text = "Method — " + " | ".join(parts) + "."
    if backends:
        text += " Backends: " + ", ".join(backends) + "."
    return text


def fail_marks(results: Results, metrics: list[str], facet: Facet, styles) -> list[FailMark]:
    return [FailMark(r, s, styles[m].colour if m in styles else "#777777", m)
            for m, r, s in results.failures(metrics, facet)]


def model_series(results: Results, metric: str, facet: Facet, styles, labels: dict[str, str] | None = None,
                  linestyle: str = "-", hollow: bool = False, spread: bool = False) -> list[Series]:
    """One series per model (per image where the facet's batch varies); with ``spread``, the rows' p10/p90
    (extra ``p10_ms``/``p90_ms``) as bars."""
    out = []
    bounds = results.spread(metric, facet) if spread else {}
    for model, by_res in results.values(metric, facet).items():
        rs = sorted(by_res)
        s = Series((labels or {}).get(model, model), rs, [by_res[r] for r in rs], styles[model].colour,
                   styles[model].marker, linestyle, hollow)
        if all((model, r) in bounds for r in rs):
            s.spread = [bounds[(model, r)] for r in rs]
        out.append(s)
    return out


def styles_for(results: Results):
    return plots.model_styles(results.models, declared.family_slot)


def pivot_table(results: Results, metric: str, facet: Facet, caption_extra: str = "") -> Table:
    """Model x resolution for one metric and facet; failed cells say OOM / error / skipped."""
    rows = results.select(metric, facet)
    every_resolution = sorted(set(int(r) for r in rows["resolution"]))
    every_model = [m for m in results.models if m in set(rows["model"])]
    resolutions, models = spread(every_resolution, MAX_TABLE_COLUMNS), spread(every_model, MAX_TABLE_ROWS)
    cut = [f"{len(kept)} of its {len(every):,} {what}" for kept, every, what in
           ((resolutions, every_resolution, "resolutions"), (models, every_model, "models")) if len(kept) < len(every)]
    cells: dict[tuple[str, int], Cell] = {}
    for m, r, v, s in rows[["model", "resolution", "value", "status"]].itertuples(index=False):
        if (m, int(r)) in cells:
            continue
        text = fmt(v, metric) if s == "ok" else {"oom": "OOM", "error": "error", "skipped": "skipped"}.get(s, s)
        cells[(m, int(r))] = Cell(text, s if s in STATUSES else "error")
    body = [[Cell(m)] + [cells.get((m, r), Cell("—", "missing")) for r in resolutions] for m in models]
    unit = results.unit(metric) + (" (shown in millions)" if metric.startswith("params") else "")
    tags = results.batch_tags([metric], facet)
    caption = (f"{label(metric)} [{unit}] — {facet.label()}"
               + (f". The batch of each resolution in brackets; {as_measured(metric)}" if tags else "")
               + f". Method: {join_text(results.methods(metric, facet))}."
               + (f" Showing {' and '.join(cut)} (evenly spread, the ends included); every value is in "
                  "results.jsonl." if cut else "")
               + (f" {caption_extra}" if caption_extra else ""))
    heads = [px(r) + (f" ({tags[r]})" if r in tags else "") for r in resolutions]
    return Table(caption, ["model"] + heads, body, [False] + [True] * len(resolutions))


def point_table(results: Results, metrics: Sequence[str], facet: Facet, what: str) -> Table:
    """Model x metric at the one resolution a facet was measured at (a plot of single dots says less)."""
    metrics = [m for m in metrics if results.attempted(m, facet)]
    (res,) = results.facet_resolutions(list(metrics), facet)
    body = []
    for model in results.models:
        cells = []
        for m in metrics:
            rows = results.select(m, facet)
            rows = rows[(rows["model"] == model) & (rows["resolution"] == res) & (rows["status"] != "skipped")]
            if not len(rows):
                cells.append(Cell("—", "missing"))
            else:
                r = rows.iloc[0]
                ok = r["status"] == "ok"
                cells.append(Cell(fmt(r["value"], m) if ok else ("OOM" if r["status"] == "oom" else "error"),
                                  r["status"] if r["status"] in STATUSES else "error"))
        if any(c.status != "missing" for c in cells):
            body.append([Cell(model)] + cells)
    cols = ["model"] + [f"{label(m)} [{results.unit(m)}]" for m in metrics]
    caption = (f"{what} — {facet.label()}, measured at {px(res)} only, so tabulated rather than plotted. Values as "
               f"measured. {method_text(results, metrics, facet)}")
    return Table(caption, cols, body, [False] + [True] * len(metrics))


def panels_figure(title: str, caption: str, panels: list[Panel], size=(10.0, 4.6)) -> Figure:
    return Figure(title, caption, lambda fig: plots.draw_panels(fig, panels), size, panels)
