"""The report's measure-vs-resolution sections, built from the rows' plot declarations.

Every registered row that declares a :class:`~dimbench.metrics.Plot` is drawn against resolution in the
:class:`~dimbench.metrics.PlotSection` it names (compute, speed, memory, hardware efficiency: each declared by
its metric, as is a plugin's): one figure per facet (device, dtype, batch, compile setting), a panel per row or
every row in one panel told apart by line style, failures marked, and a table instead where a facet was
measured at a single resolution. Nothing here knows a row's name: what a section says, how its rows are drawn
and which other rows it reports on (a growth exponent, a cross-check) are the declarations'.
"""

from __future__ import annotations

import re

from dimbench.metrics import PlotSection, Row, declared_rows

from .analysis import growth_exponent
from .data import Facet, Results
from .document import (
    Cell,
    Section,
    Table,
    batch_note,
    capped_facets,
    fail_marks,
    fmt,
    label,
    method_text,
    model_series,
    panels_figure,
    point_table,
    styles_for,
)
from .plots import Panel, Series

BARS = "Bars on the time: p10–p90 of the timed repeats. "  # Results.spread reads the timed repeats' p10/p90
GROWTH_TABLE = ("Growth of {label} with the number of tokens — {facet}. Exponent = d log({unit}s) / "
                "d log(tokens).")


def plot_sections() -> list[tuple[PlotSection, list[Row]]]:
    """Each declared plot section (by its anchor, the first declaration of it) with its rows, in the sections'
    order; rows in registration order, predicted ones after the measured ones."""
    found: dict[str, tuple[PlotSection, list[Row]]] = {}
    for row in declared_rows():
        if row.plot is not None:
            found.setdefault(row.plot.section.anchor, (row.plot.section, []))[1].append(row)
    ordered = sorted(found.values(), key=lambda item: item[0].order)  # stable: ties keep declaration order
    return [(section, sorted(rows, key=lambda r: r.predicted)) for section, rows in ordered]


def plotted_sections(results: Results) -> list[Section]:
    """Every plot section with something to show in these results."""
    built = (section_for(results, section, rows) for section, rows in plot_sections())
    return [s for s in built if s is not None]


def _fill(template: str, **fields: str) -> str:
    """``{name}`` replaced for the names given; any other brace is left as written."""
    return re.sub(r"\{(\w+)\}", lambda m: fields.get(m.group(1), m.group(0)), template)


def section_for(results: Results, section: PlotSection, rows: list[Row]) -> Section | None:
    """One plot section: a figure per facet of the rows the results hold (a table where a facet has a single
    resolution), its declared text, growth tables and cross-checks. None when the results hold none of its rows."""
    rows = [r for r in rows if results.has(r.name) and not (r.plot.only_without
                                                            and results.has(r.plot.only_without))]
    if not rows:
        return None
    metrics = [r.name for r in rows]
    styles = styles_for(results)
    figures, tables = [], []
    facets, left_out = capped_facets(results.facets(metrics))  # a large folder is summarised, and says so
    for facet in facets:
        if len(results.facet_resolutions(metrics, facet)) < 2:
            tables.append(point_table(results, metrics, facet, section.table or section.heading))
            continue
        fields = {"facet": facet.label(), "heading": section.heading}
        if section.together:
            panels = [_together_panel(results, section, rows, facet, styles, fields)]
            fields["label"] = label(metrics[0], facet)
        else:
            panels = []
            for row in rows:
                if not results.attempted(row.name, facet):
                    continue
                panel, growth = _row_panel(results, section, row, facet, styles, fields,
                                           results.batch_tags(metrics, facet))
                panels.append(panel)
                tables += [growth] if growth else []
                fields.setdefault("label", label(row.name, facet))
        if not panels:
            continue
        bars = any(s.spread for p in panels for s in p.series)
        per = "per image" if facet.batch is None else "per forward pass"
        caption = (_fill(section.caption, per=per, **fields) + batch_note(metrics, facet, section.batch_note)
                   + _fill(section.notes, **fields) + (BARS if bars else "") + method_text(results, metrics, facet))
        figures.append(panels_figure(_fill(section.title, **fields), caption, panels, section.size))
    paragraphs = list(section.paragraphs) + cross_checks(results, metrics)
    if section.cpu_paragraph and any(f.device == "cpu" for f in results.facets(metrics)):
        paragraphs.append(section.cpu_paragraph)
    if left_out:
        paragraphs.append(left_out)
    return Section(section.heading, section.anchor, [], paragraphs, figures, tables)


def _row_panel(results: Results, section: PlotSection, row: Row, facet: Facet, styles, fields: dict[str, str],
               xnotes: dict[int, str]) -> tuple[Panel, Table | None]:
    """One row's panel (its models' growth exponents in the legend when declared) and the growth table;
    ``xnotes``: the batch under each resolution, that of the section's rows."""
    name = label(row.name, facet)
    here = {**fields, "label": name, "unit": results.unit(row.name)}
    labels, growth = {}, None
    if row.plot.growth:
        labels, growth = _growth(results, row, facet, here)
    series = model_series(results, row.name, facet, styles, labels, linestyle=row.plot.linestyle,
                          hollow=row.predicted, spread=row.plot.spread)
    panel = Panel(_fill(section.panel, **here), _fill(section.ylabel, **here), series,
                  fail_marks(results, [row.name], facet, styles), logy=row.plot.scale == "log", xnotes=xnotes)
    return panel, growth


def _together_panel(results: Results, section: PlotSection, rows: list[Row], facet: Facet, styles,
                    fields: dict[str, str]) -> Panel:
    """Every row in one panel: one legend entry per model (its colour) and one per row (its line style; predicted
    rows hollow)."""
    metrics = [r.name for r in rows]
    series: list[Series] = []
    labelled: set[str] = set()
    legend = []
    for row in rows:
        got = model_series(results, row.name, facet, styles, linestyle=row.plot.linestyle, hollow=row.predicted)
        if got:
            legend.append((label(row.name) + (" — predicted" if row.predicted else " — measured"),
                           row.plot.linestyle, row.predicted))
        for s in got:
            if s.label in labelled:
                s.label = "_nolegend_"
            else:
                labelled.add(s.label)
            series.append(s)
    here = {**fields, "unit": results.unit(metrics[0])}
    return Panel(_fill(section.panel, **here), _fill(section.ylabel, **here), series,
                 fail_marks(results, metrics, facet, styles), logy=rows[0].plot.scale == "log",
                 style_legend=legend, xnotes=results.batch_tags(metrics, facet))


def _growth(results: Results, row: Row, facet: Facet, fields: dict[str, str]) -> tuple[dict[str, str], Table | None]:
    """Legend labels with each model's growth exponent versus the number of tokens, and their table."""
    labels, body = {}, []
    for model, by_res in results.values(row.name, facet).items():
        fit, local = growth_exponent(list(by_res), list(by_res.values()))
        if fit is not None:
            labels[model] = f"{model} (exponent {fit:.2f} fit, {local:.2f} local)"
        rs = sorted(by_res)
        body.append([Cell(model), Cell(f"{rs[0]}–{rs[-1]} px ({len(rs)})"), Cell(fmt(by_res[rs[0]])),
                     Cell(fmt(by_res[rs[-1]])), Cell("—" if fit is None else f"{fit:.3f}"),
                     Cell("—" if local is None else f"{local:.3f}")])
    if not body:
        return labels, None
    table = Table(_fill(GROWTH_TABLE, **fields), ["model", "resolutions", "at lowest", "at highest",
                                                  "exponent (fit)", "exponent (local)"],
                  body, [False, False, True, True, True, True])
    return labels, table


def growth_line(results: Results) -> str | None:
    """For the summary: each model's local growth exponent of the first growth-declared row measured, at the top
    of the range, in the first facet."""
    row = next((r for r in declared_rows() if r.plot and r.plot.growth and results.has(r.name, ok=True)), None)
    if row is None:
        return None
    exps = []
    for facet in results.facets([row.name])[:1]:
        for model, by_res in results.values(row.name, facet).items():
            _, local = growth_exponent(list(by_res), list(by_res.values()))
            if local is not None:
                exps.append(f"{model} ×tokens^{local:.2f}")
    if not exps:
        return None
    return (f"{row.unit}s growth at the top of the range (local exponent vs number of tokens; 1 = linear, 2 = "
            "quadratic): " + ", ".join(exps) + ".")


def cross_checks(results: Results, metrics: list[str]) -> list[str]:
    """A sentence per declared cross-check of these rows: the largest relative difference at a common point."""
    out = []
    for check in (r for r in declared_rows() if r.cross_check is not None and r.cross_check.of in metrics):
        of = check.cross_check.of
        if not (results.has(of, ok=True) and results.has(check.name, ok=True)):
            continue
        worst = None
        for facet in results.facets([of]):
            a, b = results.values(of, facet), results.values(check.name, facet)
            for m in a:
                for r in set(a[m]) & set(b.get(m, {})):
                    d = abs(a[m][r] - b[m][r]) / max(abs(a[m][r]), 1e-12)
                    if worst is None or d > worst[0]:
                        worst = (d, m, r)
        if worst is not None:
            out.append(f"Cross-check: {check.cross_check.says} within {worst[0] * 100:.2f} % at every common point "
                       f"(largest difference: {worst[1]} at {worst[2]} px).")
    return out
