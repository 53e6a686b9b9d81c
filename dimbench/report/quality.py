"""Sections for quality runs (training loss, samples, sample-quality scores) and paper tables (measured vs
published). Each is one function ``(Results) -> Section | None``; the row conventions are in :mod:`content`."""

from __future__ import annotations

import math

from . import plots
from .data import Results
from .document import Cell, Figure, Section, Table, fmt, label, method_text, pivot_table, px, styles_for


def section_train_loss(results: Results) -> Section | None:
    """Training-loss curves per model and resolution, and the last logged loss."""
    if not results.has("train_loss", ok=True):
        return None
    rows = results.rows("train_loss")
    rows = rows[(rows["status"] == "ok") & rows["step"].notna()]
    if not len(rows):
        return None
    styles = styles_for(results)
    curves, table_rows = [], []
    for (model, res), g in rows.groupby(["model", "resolution"], sort=False):
        g = g.sort_values("step")
        curves.append(plots.Curve(f"{model} @ {res} px", list(g["step"]), list(g["value"]), styles[model].colour))
        table_rows.append([Cell(model), Cell(px(res)), Cell(f"{int(g['step'].iloc[-1])}"),
                           Cell(fmt(float(g["value"].iloc[-1])))])
    fig = Figure("Training loss", "Training loss per logged step. " + method_text(results, ["train_loss"]),
                 lambda f: plots.draw_curves(f, "Training loss", "step", "loss", curves), (8.5, 5.0))
    table = Table("Last logged training loss.", ["model", "resolution", "step", "loss"], table_rows,
                  [False, True, True, True])
    return Section("Quality: training loss", "train-loss", [], [], [fig], [table])


def section_samples(results: Results) -> Section | None:
    """Sample images written by a run (only PNGs inside the results folder are opened)."""
    if not results.has("samples"):
        return None
    import matplotlib.image as mpimg

    rows = results.rows("samples")
    rows = rows[rows["status"] == "ok"]  # failed sample runs are listed with the other failures
    images, problems = [], []
    root = results.dir.resolve()
    for model, res, extra in rows[["model", "resolution", "extra"]].itertuples(index=False):
        rel = str(extra.get("path", ""))
        path = (root / rel).resolve()
        if not rel or root not in path.parents or path.suffix.lower() != ".png":
            problems.append([Cell(model), Cell(px(res)), Cell(rel or "(no path)"),
                             Cell("not a PNG inside the results folder", "error")])
            continue
        try:
            images.append((f"{model} @ {res} px", mpimg.imread(path)))
        except Exception as e:  # unreadable image: listed with the reason
            problems.append([Cell(model), Cell(px(res)), Cell(rel), Cell(f"unreadable: {e}", "error")])
    figures = []
    if images:
        figures.append(Figure("Samples", "Generated samples as written by the run (one grid per model and "
                              "resolution). " + method_text(results, ["samples"]),
                              lambda f: plots.draw_images(f, images), (10.0, 3.0 * math.ceil(len(images) / 4))))
    tables = [Table("Sample files that could not be shown.", ["model", "resolution", "path", "reason"], problems)
              ] if problems else []
    return Section("Quality: samples", "samples", [], [], figures, tables)


def section_quality_scores(results: Results) -> Section | None:
    """FID and proxy Fréchet distances, model x resolution."""
    metrics = [m for m in results.metrics() if m == "fid" or m.startswith(("fid_", "fd_"))]
    if not metrics:
        return None
    tables = [pivot_table(results, m, f, "Lower is better." + ("" if m == "fid" else
                                                                 " A proxy distance, not the standard FID."))
              for m in metrics for f in results.facets([m])]
    return Section("Quality: sample scores", "quality-scores", [], [], [], tables)


def section_published(results: Results) -> Section | None:
    """Measured values beside the numbers papers publish for the same model and resolution."""
    pubs = [m for m in results.metrics() if m.startswith("published_")]
    if not pubs:
        return None
    rows = []
    for pub in pubs:
        measured = pub[len("published_"):]
        for model, res, batch, value, extra in results.rows(pub)[
                ["model", "resolution", "batch", "value", "extra"]].itertuples(index=False):
            got = results.rows(measured)
            got = got[(got["model"] == model) & (got["resolution"] == res) & (got["batch"] == batch)
                      & (got["status"] == "ok")]
            mv = float(got["value"].iloc[0]) if len(got) else None
            diff = (f"{(mv - value) / value * 100:+.2f} %" if mv is not None and value else "—")
            rows.append([Cell(model), Cell(px(res)), Cell(label(measured)), Cell(fmt(mv, measured),
                         "ok" if mv is not None else "missing"), Cell(fmt(value, measured)), Cell(diff),
                         Cell(str(extra.get("source", "source not given")))])
    table = Table("Measured vs published values (difference = (measured − published) / published).",
                  ["model", "resolution", "measure", "measured", "published", "difference", "source"], rows,
                  [False, True, False, True, True, True, False])
    return Section("Measured vs published", "published", [], [], [], [table])
