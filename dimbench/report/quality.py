"""Sections for quality runs (training loss, samples, sample-quality scores) and paper tables (measured vs
published). Each is one function ``(Results) -> Section | None``; the row conventions are in :mod:`content`."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg

from . import plots, quality_scores
from .data import Results
from .document import Cell, Figure, Section, Table, fmt, label, method_text, pivot_table, px, styles_for


def section_train_loss(results: Results) -> Section | None:
    """Training-loss curves per model, one panel per resolution, with the held-out loss dashed beside each; the
    last logged values tabulated."""
    if not results.has("train_loss", ok=True):
        return None
    logged = _curve_rows(results, "train_loss")
    if not len(logged):
        return None
    heldout = _curve_rows(results, "train_loss_heldout")
    styles = styles_for(results)
    panels, table_rows = [], []
    for res in sorted(set(int(r) for r in logged["resolution"])):
        curves = []
        for model in results.models:
            g = logged[(logged["model"] == model) & (logged["resolution"] == res)].sort_values("step")
            if not len(g):
                continue
            colour = styles[model].colour
            curves.append(plots.Curve(f"{model} (training)", list(g["step"]), list(g["value"]), colour))
            h = heldout[(heldout["model"] == model) & (heldout["resolution"] == res)].sort_values("step")
            if len(h):
                curves.append(plots.Curve(f"{model} (held-out)", list(h["step"]), list(h["value"]), colour, "--"))
            table_rows.append([Cell(model), Cell(px(res)), Cell(f"{int(g['step'].iloc[-1])}"),
                               Cell(fmt(float(g["value"].iloc[-1]))),
                               Cell(fmt(float(h["value"].iloc[-1]))) if len(h) else Cell("—", "missing")])
        panels.append((f"{px(res)}: {_training_stage(results, res)}", curves))
    caption = ("Training loss per logged window (solid) and the loss of the same model on held-out data (dashed: "
               "the digits' test split, every example with fixed noise and times, so it moves only with the model); "
               "a held-out curve that rises while the training loss falls is overfitting. One curve per point (the "
               "first seed's run). The exact recipes are in the Methods section.")
    width = 5.0 * len(panels) + 1.0
    fig = Figure("Training and held-out loss", caption,
                 lambda f: plots.draw_curve_panels(f, panels, "step", "loss (log scale)", logy=True),
                 (min(width, 11.0), 4.4))
    table = Table("Last logged training and held-out loss.", ["model", "resolution", "step", "training loss",
                                                               "held-out loss"], table_rows,
                  [False, True, True, True, True])
    return Section("Quality: training loss", "train-loss", [], [], [fig], [table])


def _curve_rows(results: Results, metric: str):
    if not results.has(metric, ok=True):
        return results.df.iloc[0:0]
    rows = results.rows(metric)
    return rows[(rows["status"] == "ok") & rows["step"].notna()]


def _training_stage(results: Results, res: int) -> str:
    """'trained from scratch' or 'weak-to-strong fine-tune', from the final training rows at that resolution."""
    rows = results.rows("train_loss_final")
    stages = [str(e.get("stage", "")) for e in rows[rows["resolution"] == res]["extra"]]
    if stages and all(st.startswith("weak-to-strong") for st in stages):
        return "weak-to-strong fine-tune"
    return "trained from scratch" if stages else "training"


#: what a sample row's name says about its stage, for grouping the grids
def _sample_group(name: str, extra: dict) -> tuple[int, str]:
    if name == "samples":
        w2s = "weak-to-strong" in str(extra.get("stage", ""))
        return (1, "weak-to-strong fine-tune") if w2s else (0, "trained")
    return (2, "training-free upsampling")


def section_samples(results: Results) -> Section | None:
    """Sample grids written by a run: every ``samples*`` row (only PNGs inside the results folder are opened).

    Grids written one row per class (``extra.grid``) are drawn large, the class beside each row, grouped by stage
    (trained, weak-to-strong, upsampling per model); other grids as they are, in one figure."""
    names = [m for m in results.metrics() if m == "samples" or m.startswith("samples_")]
    if not names:
        return None
    grouped: dict[tuple, list[plots.ClassGrid]] = {}
    plain, problems = [], []
    root = results.dir.resolve()
    for name in names:
        rows = results.rows(name)
        rows = rows[rows["status"] == "ok"]  # failed sample runs are listed with the other failures
        what = "" if name == "samples" else f" — {label(name)}"
        for model, res, extra, key in rows[["model", "resolution", "extra", "point_key"]].itertuples(index=False):
            rel = str(extra.get("path", ""))
            path = (root / rel).resolve()
            title = f"{model} @ {res} px{what}"
            if not rel or root not in path.parents or path.suffix.lower() != ".png":
                problems.append([Cell(title), Cell(rel or "(no path)"),
                                 Cell("not a PNG inside the results folder", "error")])
                continue
            try:
                image = mpimg.imread(path)
            except Exception as e:  # unreadable image: listed with the reason
                problems.append([Cell(title), Cell(rel), Cell(f"unreadable: {e}", "error")])
                continue
            grid = extra.get("grid")
            if not isinstance(grid, dict) or not isinstance(grid.get("classes"), list):
                plain.append((title, image))
                continue
            rank, stage = _sample_group(name, extra)
            px_img = int(extra.get("image_px") or res * int(extra.get("factor") or 1))
            group = (rank, stage, model if rank == 2 else px_img)
            grouped.setdefault(group, []).append(plots.ClassGrid(
                _grid_title(results, model, key, name, px_img, rank), image, grid["classes"],
                int(grid.get("tile_px") or 8)))
    figures = []
    for (rank, stage, which), grids in sorted(grouped.items(), key=lambda kv: (kv[0][0], str(kv[0][2]))):
        ncols = min(len(grids), 4 if rank == 2 else 3)
        rows_of = math.ceil(len(grids) / ncols)
        title = (f"Samples: {stage}, {which}" if rank == 2 else f"Samples: {stage} models at {px(which)}")
        caption = ("One row per class, the class written at the left, samples in generation order (the first seed's "
                   "model where several were trained). Above each grid: the proxy FD as a multiple of the real-digit "
                   "floor and the classifier's accuracy (mean over seeds). "
                   + ("Plain = the model sampled at the higher resolution with its position embedding resized; UG = "
                      "with Upsample Guidance. " if rank == 2 else "")
                   + "How the samples were made: the Methods section.")
        figures.append(Figure(title, caption, lambda f, g=grids, n=ncols: plots.draw_class_grids(f, g, n),
                              (3.2 * ncols, 3.9 * rows_of)))
    if plain:
        figures.append(Figure("Samples", "Generated samples as written by the run (one grid per model, resolution "
                              "and stage). " + method_text(results, names),
                              lambda f: plots.draw_images(f, plain), (10.0, 3.0 * math.ceil(len(plain) / 4))))
    tables = [Table("Sample files that could not be shown.", ["samples", "path", "reason"], problems)
              ] if problems else []
    return Section("Quality: samples", "samples", [], [], figures, tables)


def _grid_title(results: Results, model: str, key: str, name: str, px_img: int, rank: int) -> str:
    """'dim_tiny_2' over 'FD 2.1x floor · 98 %' (upsampling: the factor and guidance instead of the model)."""
    suffix = name[len("samples"):]
    fd = quality_scores.final_value(results, "fd_proxy" + suffix, key)
    paired = results.declaration("fd_proxy" + suffix).pairs_with
    acc = quality_scores.final_value(results, paired, key) if paired else None
    head = model
    if rank == 2:
        head = f"{name[len('samples_up'):].split('_')[0]}x ({px(px_img)}), " + ("UG" if suffix.endswith("_ug")
                                                                                 else "plain")
    scores = []
    if fd is not None and fd[1].get("x_floor"):
        scores.append(f"FD {fd[0]:.0f} = {fd[1]['x_floor']:.1f}x floor")
    if acc is not None:
        scores.append(f"{acc[0]:.0f} %")
    return head + ("\n" + " · ".join(scores) if scores else "")


def section_quality_scores(results: Results) -> Section | None:
    """FID, and proxy Fréchet distances: the proxy rows as one table per model and stage against the real-digit
    floor, with the verdict per family and what its training cost; anything else model x resolution."""
    metrics = [m for m in results.metrics() if m == "fid" or m.startswith(("fid_", "fd_"))]
    if not metrics:
        return None
    staged = quality_scores.staged_metrics(results)
    tables = [quality_scores.stage_table(results)] if staged else []
    cost = quality_scores.training_table(results) if staged else None
    tables += [cost] if cost is not None else []
    scored = fid_table(results)
    if scored is not None:
        tables.append(scored)
        metrics = [m for m in metrics if m != "fid"]
    shown = set(staged) | ({"fd_proxy_real"} if staged else set())
    tables += [pivot_table(results, m, f, "Lower is better." + ("" if m == "fid" else
                                                                  " A proxy distance, not the standard FID."))
               for m in metrics if m not in shown for f in results.facets([m])]
    highlights = quality_scores.verdicts(results) if staged else []
    return Section("Quality: sample scores", "quality-scores", highlights, [], [], tables)


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
