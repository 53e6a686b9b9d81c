"""The "Against DiT-XL/2" section: every model's value divided by one reference model's, over resolution, with the
resolutions where the ratio crosses 1.

Self-contained on purpose (a suite with peers needs it now; the report's own ratio section compares the subject
family with the baselines): it reuses the analysis of that section (:class:`~.analysis.RatioLine`,
:func:`~.analysis.crossings`) and the declared ratio rows (GMACs, times, memory: lower is better), and adds only
the choice of pairs: each model of the run against :data:`REFERENCE`. Shown when the run has a peer (a model of
a family whose role is "other": DiCo, DiG, SANA-cc) and measured the reference and another model on a ratio row
at two resolutions or more.

Published throughput ratios (a paper's img/s of a model over the reference's at the same resolution) are set
beside the measured ones where the run timed both at the paper's point (:func:`published_throughput_ratios`).
"""

from __future__ import annotations

from dimbench.paper import tables

from . import declared
from .analysis import RatioLine, crossings
from .data import Results, batch_tag
from .document import Cell, Section, Table, panels_figure, px, styles_for
from .paper import _measured
from .plots import Panel, Series

#: The model every other one is divided by: the attention baseline the peers' papers all compare with.
REFERENCE = "dit_xl_2"


def reference_lines(results: Results, reference: str = REFERENCE) -> list[RatioLine]:
    """model / reference for every other model, declared ratio row and facet, over their common resolutions."""
    out: list[RatioLine] = []
    for row in declared.ratio_rows():
        if not results.has(row.name, ok=True):
            continue
        for facet in results.facets([row.name]):
            vals = results.values(row.name, facet)
            bat = results.batches([row.name], facet)
            if reference not in vals:
                continue
            for model in results.models:
                if model == reference:
                    continue
                common = [r for r in sorted(set(vals.get(model, {})) & set(vals[reference]))
                          if vals[model][r] > 0 and vals[reference][r] > 0]
                if facet.batch is None and not row.per_pass:  # whole-batch values: the same batch only
                    common = [r for r in common if bat[model][r] == bat[reference][r]]
                if not common:
                    continue
                q = [vals[model][r] / vals[reference][r] for r in common]
                tags = [batch_tag({bat[model][r], bat[reference][r]}) for r in common]
                out.append(RatioLine(model, reference, row, facet, common, q, tags, crossings(common, q)))
    return out


def published_throughput_ratios(results: Results, reference: str = REFERENCE) -> Table | None:
    """For every published throughput table: model img/s / reference img/s, published and measured (at the table's
    point: batch, dtype, device), per resolution."""
    body = []
    for table in tables().values():
        if "throughput" not in table.measures:
            continue
        refs = {r.resolution: r for r in table.rows if r.model == reference and "throughput" in r.values}
        for row in table.rows:
            ref = refs.get(row.resolution)
            if row.model == reference or ref is None or "throughput" not in row.values:
                continue
            published = float(row.values["throughput"]) / float(ref.values["throughput"])
            got = _measured(results, row.model, row.resolution, "throughput", table)
            got_ref = _measured(results, reference, row.resolution, "throughput", table)
            if not (any(results.df["model"] == row.model) and any(results.df["model"] == reference)):
                continue
            if got and got_ref:
                ratio = got / got_ref
                measured = [Cell(f"{ratio:.2f}×"), Cell(f"{(ratio - published) / published * 100:+.1f} %")]
            else:
                measured = [Cell(f"not measured ({table.device or 'any device'}, batch {table.batch}, "
                                 f"{table.dtype or 'any dtype'})", "missing"), Cell("—")]
            body.append([Cell(f"{row.label.split(' (')[0]} / {ref.label.split(' (')[0]}"), Cell(px(row.resolution)),
                         Cell(f"{published:.2f}×"), *measured, Cell(table.title.split(":")[0])])
    if not body:
        return None
    return Table("Throughput relative to DiT-XL/2 as published and as measured by this run at the paper's point. "
                 "Ratios, unlike images per second, carry over between cards.",
                 ["model / reference", "resolution", "published", "measured", "deviation", "source"], body,
                 [False, True, True, True, True, False])


def section_reference_ratio(results: Results) -> Section | None:
    if not any(declared.has_role(m, "other") for m in results.models):
        return None  # no peer in the run: the subject-vs-baselines section says it all
    lines = reference_lines(results)
    if not any(len(ln.res) > 1 for ln in lines):
        return None
    name = declared.family(REFERENCE).display + "-XL/2" if declared.family(REFERENCE) else REFERENCE
    styles = styles_for(results)
    figures = []
    settings = list(dict.fromkeys(ln.setting for ln in lines))
    for setting in settings:
        group = [ln for ln in lines if ln.setting == setting and len(ln.res) > 1]
        panels = []
        for measure in dict.fromkeys(ln.measure for ln in group):
            mine = [ln for ln in group if ln.measure == measure]
            several = len({ln.facet.batch for ln in mine}) > 1  # name the batch only where it tells lines apart
            series = [Series(ln.subject + (f" (batch {ln.facet.batch})" if several else ""), ln.res, ln.ratio,
                             styles[ln.subject].colour, styles[ln.subject].marker, ":" if ln.predicted else "-",
                             ln.predicted) for ln in mine]
            vlines = [(x, f"{ln.subject}: {px(x)}", styles[ln.subject].colour) for ln in mine for x, _ in ln.cross]
            panels.append(Panel(measure, f"{measure} / {name}'s (lower = cheaper)", series, hline=1.0,
                                hline_label=f"parity with {name}", vlines=vlines))
        if not panels:
            continue
        crossed = [f"{ln.subject} {ln.measure} ≈ {px(x)}" for ln in group for x, _ in ln.cross]
        caption = (f"Each model's value divided by {name}'s at the same resolution ({setting}); below 1 the model "
                   "needs less. GMACs and times per image, memory of the whole batch (same batch for both). Dotted "
                   "lines with hollow markers are predicted, not measured. Vertical lines mark where a ratio crosses "
                   "1 (interpolated in log resolution and log ratio): " + (", ".join(crossed) or "none in range")
                   + ".")
        size = (8.5, 5.2) if len(panels) == 1 else (11.0, 4.8 * ((len(panels) + 1) // 2))
        figures.append(panels_figure(f"Against {name} — {setting}", caption, panels, size))
    rows = []
    for ln in lines:
        fam = declared.family(ln.subject)
        note = " (adaptation)" if fam is not None and fam.adaptation else ""
        cross = "; ".join(f"{px(x)} ({'cheaper' if d == 'below' else 'dearer'} above)" for x, d in ln.cross)
        rows.append([Cell(ln.subject + note), Cell(ln.measure), Cell(ln.setting), Cell(ln.batch_text()),
                     Cell(f"{ln.ratio[0]:.3f} at {px(ln.res[0])}"), Cell(f"{ln.ratio[-1]:.3f} at {px(ln.res[-1])}"),
                     Cell(cross or ("single resolution" if len(ln.res) == 1 else "none in range"))])
    out_tables = [Table(f"Every model / {name} and the crossover resolutions (value / {name}'s value at the same "
                        "resolution, device, dtype and batch).",
                        ["model", "measure", "setting", "batch", "ratio (lowest res.)", "ratio (highest res.)",
                         "crossover"], rows)]
    published = published_throughput_ratios(results)
    if published is not None:
        out_tables.append(published)
    adapted = [m for m in results.models if (f := declared.family(m)) is not None and f.adaptation]
    paras = [f"{name} is the reference every peer paper compares with; each ratio is measured under one counter, one "
             "timer and one setting for all models."]
    if adapted:
        paras.append(", ".join(adapted) + ": " + declared.family(adapted[0]).adaptation + ".")
    return Section(f"Against {name}", "reference-ratio", [], paras, figures, out_tables)
