"""Sections for quality runs (training loss, samples, sample-quality scores) and paper tables (measured vs
published). Each is one function ``(Results) -> Section | None``; the row conventions are in :mod:`content`."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg

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
    """Sample grids written by a run: every ``samples*`` row (only PNGs inside the results folder are opened)."""
    names = [m for m in results.metrics() if m == "samples" or m.startswith("samples_")]
    if not names:
        return None

    images, problems = [], []
    root = results.dir.resolve()
    for name in names:
        rows = results.rows(name)
        rows = rows[rows["status"] == "ok"]  # failed sample runs are listed with the other failures
        what = "" if name == "samples" else f" — {label(name)}"
        for model, res, extra in rows[["model", "resolution", "extra"]].itertuples(index=False):
            rel = str(extra.get("path", ""))
            path = (root / rel).resolve()
            title = f"{model} @ {res} px{what}"
            if not rel or root not in path.parents or path.suffix.lower() != ".png":
                problems.append([Cell(title), Cell(rel or "(no path)"),
                                 Cell("not a PNG inside the results folder", "error")])
                continue
            try:
                images.append((title, mpimg.imread(path)))
            except Exception as e:  # unreadable image: listed with the reason
                problems.append([Cell(title), Cell(rel), Cell(f"unreadable: {e}", "error")])
    figures = []
    if images:
        figures.append(Figure("Samples", "Generated samples as written by the run (one grid per model, resolution "
                              "and stage; one class per column where class-conditional). "
                              + method_text(results, names),
                              lambda f: plots.draw_images(f, images), (10.0, 3.0 * math.ceil(len(images) / 4))))
    tables = [Table("Sample files that could not be shown.", ["samples", "path", "reason"], problems)
              ] if problems else []
    return Section("Quality: samples", "samples", [], [], figures, tables)


def section_quality_scores(results: Results) -> Section | None:
    """FID, and proxy Fréchet distances: the proxy rows as one table per model and stage (with the sampler,
    steps and guidance that produced each), anything else model x resolution."""
    metrics = [m for m in results.metrics() if m == "fid" or m.startswith(("fid_", "fd_"))]
    if not metrics:
        return None
    staged = [m for m in metrics if m.startswith("fd_") and _stage_rows(results, m)]
    tables = [stage_table(results, staged)] if staged else []
    scored = fid_table(results)
    if scored is not None:
        tables.append(scored)
        metrics = [m for m in metrics if m != "fid"]
    tables += [pivot_table(results, m, f, "Lower is better." + ("" if m == "fid" else
                                                                  " A proxy distance, not the standard FID."))
               for m in metrics if m not in staged for f in results.facets([m])]
    return Section("Quality: sample scores", "quality-scores", [], [], [], tables)


#: The rows of the fid metric shown beside FID, in this order, with their column headers.
FID_COLUMNS = (("fid", "FID ↓"), ("inception_score", "IS ↑"), ("kid", "KID ↓"), ("precision", "precision ↑"),
               ("recall", "recall ↑"), ("sample_s_per_image", "s / image"))


def fid_table(results: Results) -> Table | None:
    """FID and its companions per model, checkpoint and resolution, with how the samples were made (rows of the
    fid metric: their extra names the checkpoint, sampler, guidance, sample count and reference)."""
    if not results.has("fid"):
        return None
    fid_rows = results.rows("fid")
    fid_rows = fid_rows[[isinstance(e, dict) and "inception_sha256" in e for e in fid_rows["extra"]]]
    if not len(fid_rows):
        return None
    present = set(results.metrics())
    others = {name: results.rows(name) if name in present else None for name, _ in FID_COLUMNS[1:]}
    body = []
    for r in fid_rows.sort_values(["model", "resolution"]).itertuples(index=False):
        e = r.extra
        cells = [Cell(r.model), Cell(Path(str(e.get("checkpoint") or "random weights")).name), Cell(px(r.resolution))]
        for name, _ in FID_COLUMNS:
            if name == "fid":
                row = r
            else:
                table = others[name]
                match = table[table["point_key"] == r.point_key] if table is not None else []
                row = next(iter(match.itertuples(index=False)), None) if len(match) else None
            if row is None:
                cells.append(Cell("—", "missing"))
            elif row.status == "ok":
                cells.append(Cell(fmt(float(row.value), name)))
            else:
                cells.append(Cell(row.status, row.status if row.status in ("oom", "error", "skipped") else "error"))
        sampler = f"{e.get('sampler', '?')}, {e.get('sampler_steps', '?')} steps"
        guidance = f"s = {e['guidance_s']:g}" if e.get("guidance_s") else "none"
        if e.get("upsample_factor"):
            sampler += f", upsampled x{e['upsample_factor']}"
        cells += [Cell(str(e.get("n_fake", ""))), Cell(sampler), Cell(guidance),
                  Cell(Path(str(e.get("reference", ""))).name)]
        body.append(cells)
    heads = ["model", "checkpoint", "resolution", *(h for _, h in FID_COLUMNS), "samples", "sampler", "guidance",
             "reference"]
    return Table("FID per model, checkpoint and resolution: torch-fidelity's port of the TF-2015-12-05 Inception "
                 "network from a local weights file; FID with dimbench's Fréchet distance against the reference "
                 "statistics named; IS, KID and precision/recall are torch-fidelity's (KID and precision/recall "
                 "only where the reference holds images); s / image = wall clock of sampling with guidance plus "
                 "decoding per generated image. FID of fewer than 50,000 samples is biased upwards and is not "
                 "comparable with a published FID-50K. The published values are in the Paper tables and Measured "
                 "vs published sections; each row's full method (checkpoint SHA256, seed, files) is in Methods.",
                 heads, body, [False, False, True, True, True, True, True, True, True, True, False, False, False])


def _stage_rows(results: Results, metric: str):
    rows = results.rows(metric)
    return [r for r in rows.itertuples(index=False) if isinstance(r.extra, dict) and "stage" in r.extra]


def _stage_rank(metric: str) -> tuple[int, str]:
    """Untrained, trained (then weak-to-strong, by resolution), then 2x / 3x plain and guided."""
    if metric.endswith("_untrained"):
        return (0, metric)
    if "_up" in metric:
        return (2, metric)
    return (1, metric)


def stage_table(results: Results, metrics: list[str]) -> Table:
    """Model x stage: the proxy distance, the classifier accuracy and how the samples were made."""
    body = []
    for model in results.models:
        found = []
        for metric in metrics:
            paired = results.declaration(metric).pairs_with  # the classifier accuracy of the same samples
            acc_rows = results.rows(paired) if paired else results.rows(metric).iloc[0:0]
            for r in _stage_rows(results, metric):
                if r.model == model:
                    found.append((_stage_rank(metric), int(r.resolution), metric, r, acc_rows))
        for _, _, _, r, acc_rows in sorted(found, key=lambda f: f[:3]):
            acc = acc_rows[(acc_rows["model"] == model) & (acc_rows["point_key"] == r.point_key)]
            acc_cell = (Cell(f"{float(acc['value'].iloc[0]):.1f}") if len(acc) and acc["status"].iloc[0] == "ok"
                        else Cell("—", "missing"))
            e = r.extra
            fd_cell = Cell(f"{float(r.value):.1f}") if r.status == "ok" else Cell(r.status, r.status)
            sampler = f"{e.get('sampler', '?')}, {e.get('sampler_steps', '?')} steps"
            guidance = f"s = {e['guidance_s']:g} (w = {e['guidance_w']:g})" if e.get("guidance_s") else "none"
            body.append([Cell(model), Cell(str(e["stage"])), Cell(px(e.get("image_px", r.resolution))),
                         fd_cell, acc_cell, Cell(sampler), Cell(guidance), Cell(str(e.get("n_fake", "")))])
    return Table("Proxy quality per model and stage: Fréchet distance of the features of dimbench's own small "
                 "classifier, trained on the digits' train split, between generated images and the held-out real "
                 "digits (lower is better; a proxy, NOT the standard FID; comparable only within this run's "
                 "classifier and sample counts), and that classifier's accuracy on class-conditional samples "
                 "(higher is better; 10 % is chance). Each row's full method is in the Methods section.",
                 ["model", "stage", "images", "proxy FD", "accuracy %", "sampler", "guidance", "samples"], body,
                 [False, False, True, True, True, False, False, True])


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
            if extra.get("table_id") or value is None or value != value:
                continue  # a row of dimbench's own paper tables: laid out in the "Paper tables" section
            got = results.rows(measured)
            got = got[(got["model"] == model) & (got["resolution"] == res) & (got["batch"] == batch)
                      & (got["status"] == "ok")]
            mv = float(got["value"].iloc[0]) if len(got) else None
            diff = (f"{(mv - value) / value * 100:+.2f} %" if mv is not None and value else "—")
            rows.append([Cell(model), Cell(px(res)), Cell(label(measured)), Cell(fmt(mv, measured),
                         "ok" if mv is not None else "missing"), Cell(fmt(value, measured)), Cell(diff),
                         Cell(str(extra.get("source", "source not given")))])
    if not rows:
        return None
    table = Table("Measured vs published values (difference = (measured − published) / published).",
                  ["model", "resolution", "measure", "measured", "published", "difference", "source"], rows,
                  [False, True, False, True, True, True, False])
    return Section("Measured vs published", "published", [], [], [], [table])
