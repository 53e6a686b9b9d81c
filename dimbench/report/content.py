"""The report's content, described once: a :class:`Report` of :class:`Section` s (heading, text, figures,
tables). ``html.py`` and ``pdf.py`` only render it, so the two formats never disagree.

Each section is made by one builder function ``(Results) -> Section | list[Section] | None`` listed in
:data:`SECTIONS`; ``None`` means "nothing of this kind in the results" and the section is left out. The sections
that draw measures against resolution (compute, speed, memory, hardware efficiency, and any a plugin's metric
declares) are not written here: ``plotted.py`` builds them from the rows' plot declarations
(:class:`dimbench.metrics.Plot`), so a metric with a plotted row needs nothing in the report. The document model
and shared helpers are in ``document.py``, the growth-exponent and crossover analyses in ``analysis.py``, the
quality and paper-table sections in ``quality.py`` and ``paper.py``.

Row conventions (results.jsonl, see docs/contracts.md) read by the optional sections:

- **Training loss** — ``metric == "train_loss"``, one row per logged step, ``extra["step"]`` the step number,
  ``value`` the loss. Drawn as curves per model and resolution; the last logged value is tabulated.
- **Samples** — ``metric == "samples"``, ``value`` the number of images in the grid, ``extra["path"]`` a PNG
  *inside* the results folder (relative path). Shown as images; a path outside the folder or an unreadable
  file is listed with the reason, not shown.
- **Sample-quality scores** — ``metric == "fid"`` (the standard Inception FID) or any metric starting with
  ``fid_`` or ``fd_`` (a proxy Fréchet distance, which must carry its own name). Lower is better. Tabulated
  model x resolution with the method (weights, reference statistics, number of samples).
- **Published values** — ``metric == "published_<name>"`` (e.g. ``published_gmacs``), ``value`` the number a
  paper reports, ``extra["source"]`` the citation. Compared with the measured ``<name>`` at the same model,
  resolution and batch: measured, published, relative difference.

Everything else is a measured metric (names in the contracts) and goes through the plots and full tables.
"""


from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from models import Family

from . import declared, quality_scores
from .analysis import RatioLine, ratio_lines, ratio_text
from .clip import Clipper
from .data import STATUSES, Results
from .document import (
    MAX_SERIES,
    SPECIAL_METRICS,
    Cell,
    Report,
    Section,
    Table,
    capped_facets,
    capped_rows,
    label,
    panels_figure,
    pivot_table,
    px,
    spread,
)
from .paper import section_paper_tables
from .plots import Panel, Series
from .plotted import growth_line, plotted_sections
from .profile import section_profile
from .quality import section_published, section_quality_scores, section_samples, section_train_loss
from .reference_ratio import section_reference_ratio

PAIR_MARKERS = ["o", "s", "^", "D", "v", "P"]  # one per subject (DiM) model in the ratio plot
HEADLINE_PAIRS = 4  # model pairs the summary names per measure and setting

# --------------------------------------------------------------------------------------------------------------
# Sections: one function each
# --------------------------------------------------------------------------------------------------------------


_SAME = ["resolution", "metric", "device", "dtype", "batch"]  # what an OOM and a success must share to contrast


def _oom_contrast(results: Results, a: str, b: str) -> list[str]:
    """Resolutions where model ``a`` ran out of memory on a measure that ``b`` completed under the same facet."""
    if "oom_rows" not in results.memo:  # (each model's oom rows and the ok rows' keys, found once)
        df = results.df
        results.memo["oom_rows"] = {m: g.sort_values("resolution", kind="stable")
                                    for m, g in df[df["status"] == "oom"].groupby("model", sort=False)}
        ok = df[df["status"] == "ok"]
        results.memo["ok_keys"] = set(ok[["model", *_SAME]].itertuples(index=False, name=None))
    ooms, ok_keys = results.memo["oom_rows"].get(a), results.memo["ok_keys"]
    out: dict[int, str] = {}
    for r in ([] if ooms is None else ooms.itertuples(index=False)):
        if r.resolution not in out and (b, r.resolution, r.metric, r.device, r.dtype, r.batch) in ok_keys:
            out[r.resolution] = (f"{a} ran out of memory at {r.resolution} px ({r.device}, {r.dtype}, batch "
                                 f"{r.batch}), where {b} ran")
    return list(out.values())


def _input_mismatch(results: Results, a: str, b: str) -> list[str]:
    """A caveat when two models see different inputs at the same pixel resolution (pixel vs latent models)."""
    df = results.df
    sizes = {m: dict(df.loc[df["model"] == m, ["resolution", "input_size"]].dropna().itertuples(index=False))
             for m in (a, b)}
    differ = [r for r in sizes[a] if r in sizes[b] and sizes[a][r] != sizes[b][r]]
    if not differ:
        return []
    r = differ[0]
    return [f"note that at the same pixel resolution the two models see different inputs (at {r} px: {a} "
            f"{sizes[a][r]}×{sizes[a][r]}, {b} {sizes[b][r]}×{sizes[b][r]}; a pixel-space vs a latent-space "
            "model), so the ratio compares different token counts"]


def _best(lines: list[RatioLine]) -> list[RatioLine]:
    """One line per model pair: the one over the most resolutions (in a batch sweep, then the largest batch)."""
    out: dict[tuple[str, str], RatioLine] = {}
    for ln in lines:
        cur = out.get((ln.subject, ln.other))
        if cur is None or (len(ln.res), ln.facet.batch or 0) > (len(cur.res), cur.facet.batch or 0):
            out[(ln.subject, ln.other)] = ln
    return list(out.values())


def _pairs_text(lines: list[RatioLine]) -> str:
    """``dim / dit = 2.62× at 256 px → 0.869× at 1,536 px, crossover ≈ … (…); dim / uvit = 2.34× → 0.811×,
    crossover ≈ …``: resolutions and the crossover's explanation are given once when the pairs share them."""
    parts = []
    for i, ln in enumerate(lines[:HEADLINE_PAIRS]):
        same = i > 0 and ln.res == lines[0].res
        parts.append(f"{ln.subject} / {ln.other} = {ln.span(not same)}"
                     + (f", {ln.verdict(short=i > 0)}" if ln.verdict() else ""))
    if len(lines) > HEADLINE_PAIRS:  # (20 models make 91 pairs: the rest are in the ratio section)
        parts.append(f"and {len(lines) - HEADLINE_PAIRS} more model pair(s) in the ratio section")
    return "; ".join(parts)


def _other_setting(st: str, main: str) -> str:
    """A setting named by what differs from the main one (``float32`` beside ``cuda, bfloat16``)."""
    differ = [p for p in st.split(", ") if p not in main.split(", ")]
    return ", ".join(differ) or st


def measure_line(lines: list[RatioLine]) -> str:
    """One headline line for one measure: its ratios in the setting (device, dtype) that covers the most
    resolutions, then briefly the other settings."""
    settings = list(dict.fromkeys(ln.setting for ln in lines))
    main = max(settings, key=lambda st: max(len(ln.res) for ln in lines if ln.setting == st))
    first = _best([ln for ln in lines if ln.setting == main])
    sweep = len({ln.facet.batch for ln in lines if ln.setting == main}) > 1
    where = [] if main == "counted" else [main]
    if sweep:
        where.append(f"batch {first[0].facet.batch}, the largest of the sweep")
    if first[0].whole_batch():
        where.append("whole batch, not per image")
    text = first[0].measure + (f" ({'; '.join(where)})" if where else "") + ": " + _pairs_text(first)
    for st in settings:
        if st == main:
            continue
        best = _best([ln for ln in lines if ln.setting == st])
        name = _other_setting(st, main)
        if all(len(ln.res) == 1 for ln in best) and len({ln.res[0] for ln in best}) == 1:
            text += f"; {name} at {px(best[0].res[0])} only: " + ", ".join(
                f"{ln.subject} / {ln.other} = {ratio_text(ln.ratio[0])}" for ln in best)
        else:
            text += f"; {name}: " + _pairs_text(best)
    return text + "."


def headline(results: Results) -> list[str]:
    """The summary's headline: one line per measure (DiM / DiT, and DiM / U-ViT where present: the ratio at the
    lowest and highest resolution and where it crosses 1), then out-of-memory contrasts and caveats."""
    lines = ratio_lines(results)
    subject = declared.subject_name()
    if not lines:
        compared = [row for row in declared.ratio_rows() if results.has(row.name, ok=True)]
        if not compared:  # (a quality or training suite: nothing of what the ratios compare was measured)
            return []
        baselines = " or ".join(f.display for f in declared.baselines()) or "baseline"
        return [f"No {subject} model shares a resolution with a {baselines} model with a successful measurement of "
                f"{', '.join(row.name for row in compared)}, so these results hold no {subject} / {baselines} ratio."]
    # A predicted measure is left out where a measured one of the same unit is compared (predicted peak memory
    # beside the allocator's): the measurement suffices.
    measured_units = {ln.row.unit for ln in lines if not ln.predicted}
    out = []
    for row in declared.ratio_rows():
        group = [ln for ln in lines if ln.metric == row.name]
        if group and not (row.predicted and row.unit in measured_units):
            out.append(measure_line(group))
    pairs = list(dict.fromkeys((ln.subject, ln.other) for ln in lines))
    ooms = list(dict.fromkeys(t for a, b in pairs for t in _oom_contrast(results, b, a) + _oom_contrast(results, a, b)))
    if ooms:
        more = f"; and {len(ooms) - 6:,} more (‘Failed and skipped points’)" if len(ooms) > 6 else ""
        out.append("; ".join(ooms[:6]) + more + ".")
    out += [t[0].upper() + t[1:] + "." for a, b in pairs for t in _input_mismatch(results, a, b)]
    return out


# How each selective-scan backend (rows' extra["scan_backend"]) bears on the timings of the models that scan.
SCAN_BACKENDS = {
    "chunked": "pure PyTorch, slow and bound by kernel launches rather than FLOPs, so these times (and the time "
               "ratios) are far above what a fused scan kernel gives; GMACs are unaffected",
    "reference": "the sequential pure-PyTorch recurrence (the test oracle), very slow: these times are not "
                 "representative; GMACs are unaffected",
    "cpu_fused": "dimbench's fused C kernel for the CPU (the whole op in one pass per block of channels, compiled "
                 "on first use)",
    "mamba_ssm": "mamba-ssm's fused CUDA kernel",
    "triton": "Triton GPU kernel",
}


def scan_note(results: Results) -> str | None:
    """Which scan backend the timed rows that record one ran with (a reader needs it next to those timings)."""
    df = results.df
    timed = df[(df["status"] == "ok") & (df["task"] != "count")]
    scanned = timed[timed["extra"].map(lambda e: bool(e.get("scan_backend")))]
    if not len(scanned):
        return None
    used = list(dict.fromkeys(str(e["scan_backend"]) for e in scanned["extra"]))
    # Why a backend ran, where it was not simply auto's first choice: a fallback (cpu_fused without a compiler)
    # or a request is said, never silent.
    why = {}
    for e in scanned["extra"]:
        reason = str(e.get("scan_backend_why") or "")
        if reason and ("unavailable" in reason or "not chosen" in reason or reason.startswith("requested")):
            why.setdefault(str(e["scan_backend"]), reason)
    # Named by family ("DiM's"); a model of no registered family by its own name.
    ran = set(scanned["model"])
    who = list(dict.fromkeys(getattr(declared.family(m), "display", m) for m in results.models if m in ran))
    return f"The timed rows of {declared.and_join(who)} record the selective scan on " + "; ".join(
        (f"the {b} backend: {SCAN_BACKENDS[b]}" if b in SCAN_BACKENDS else f"the {b} backend")
        + (f" ({why[b]})" if b in why else "") for b in used) + "."


def describe_device(env: dict, devices: list[str]) -> str:
    """The hardware in words, from environment.json (dimbench.environment.collect): GPU name and driver, or the
    CPU's cores."""
    parts = []
    gpu = env.get("gpu_name")
    if isinstance(gpu, (list, tuple)):
        gpu = ", ".join(map(str, gpu))
    if gpu:
        parts.append(str(gpu))
    if env.get("driver"):
        parts.append(f"driver {env['driver']}")
    cpu = env.get("cpu") if isinstance(env.get("cpu"), dict) else {}
    if "cpu" in devices and cpu:
        parts.append(f"CPU {cpu.get('processor') or ''} with {cpu.get('cores', '?')} cores".replace("  ", " "))
    return ", ".join(parts)


def _git(env: dict) -> tuple[str, bool]:
    """(commit, dirty) from environment.json's ``git`` record."""
    g = env.get("git")
    if isinstance(g, dict):
        return str(g.get("commit") or ""), bool(g.get("dirty"))
    return "", False


def _batch_text(results: Results) -> str:
    """``batch 1`` / ``batch 1, 8`` / ``batch varies with resolution: 32 at 256 px, …`` (one batch per resolution)."""
    df = results.df
    per_res = df.groupby("resolution")["batch"].unique()
    batches = sorted(set(int(b) for b in df["batch"]))
    if len(batches) > 1 and all(len(b) == 1 for b in per_res):
        return "batch varies with resolution: " + ", ".join(f"{int(b[0])} at {r} px" for r, b in per_res.items())
    return "batch " + ", ".join(map(str, batches))


def _dtype_text(results: Results) -> str:
    """The dtypes, each with the resolutions it was measured at when not all (``bfloat16, float32 at 256 px
    only``); counted rows, which hold for any dtype, aside."""
    df = results.df[results.df["task"] != "count"]
    if not len(df):
        df = results.df
    every = set(df["resolution"])
    parts = []
    for d in (x for x in pd.unique(df["dtype"]) if x):
        res = sorted(set(df.loc[df["dtype"] == d, "resolution"]))
        parts.append(d if set(res) == every else f"{d} at {', '.join(map(str, res))} px only")
    return ", ".join(parts) or "n/a"


def section_summary(results: Results) -> Section:
    df = results.df
    env = results.env
    counts = {s: int((df["status"] == s).sum()) for s in STATUSES}
    other = int((~df["status"].isin(STATUSES)).sum())
    suites = [s for s in pd.unique(df["suite"]) if s]
    devices = list(pd.unique(df.loc[df["task"] != "count", "device"])) or list(pd.unique(df["device"]))
    shown = results.resolutions if len(results.resolutions) <= 24 else [results.resolutions[0], "…",
                                                                         results.resolutions[-1]]
    ran = (f"Suite {', '.join(suites) or '(unnamed)'}: {len(results.models)} model(s) "
           f"({', '.join(results.models)}) at {len(results.resolutions)} resolution(s) "
           f"({', '.join(str(r) for r in shown)} px); {_batch_text(results)}; "
           f"dtype {_dtype_text(results)}. "
           f"{df['point_key'].nunique()} point(s), {len(df)} row(s): {counts['ok']} ok, {counts['oom']} out of "
           f"memory, {counts['error']} error(s), {counts['skipped']} skipped" + (f", {other} other" if other else "")
           + ".")
    on = f"Device: {', '.join(d for d in devices if d) or 'unknown'}"
    described = describe_device(env, devices)
    if described:
        on += f" ({described})"
    versions = env.get("versions") if isinstance(env.get("versions"), dict) else {}
    if versions.get("torch"):
        on += f"; torch {versions['torch']}"
    commit, dirty = _git(env)
    if commit:
        on += f"; dimbench commit {commit[:12]}" + (" with uncommitted changes" if dirty else "")
    on += "."
    highlights = headline(results)
    growth = growth_line(results)
    if growth:
        highlights.append(growth)
    scan = scan_note(results)
    if scan:
        highlights.append(scan)
    highlights += quality_scores.headlines(results)  # a quality run: whether each family learned, first
    paragraphs = [ran, on]
    if any(d == "cpu" for d in devices) and results.has("latency_ms"):
        paragraphs.append("Timings here were taken on a CPU: they are for smoke runs and relative comparisons "
                          "(ratios measured side by side), not for absolute speed.")
    n_fail = counts["oom"] + counts["error"] + other
    if n_fail:
        paragraphs.append(f"{n_fail} row(s) did not produce a value (out of memory or error). They are marked ✗ "
                          "in the plots and listed with their messages under ‘Failed and skipped points’.")
    paragraphs += results.notes
    return Section("Summary", "summary", highlights, paragraphs)


def _compared(lines: list[RatioLine]) -> list[Family]:
    """The baseline families these lines compare with, in display order."""
    return [f for f in declared.baselines() if any(ln.family is f for ln in lines)]


def _ratio_heading(lines: list[RatioLine]) -> str:
    """``DiM vs DiT and U-ViT``: the families' display names."""
    return f"{declared.subject_name()} vs " + declared.and_join([f.display for f in _compared(lines)])


def section_ratio(results: Results) -> Section | None:
    lines = ratio_lines(results)
    if not lines:
        return None
    drawn, left_out = capped_facets(list(dict.fromkeys(ln.facet for ln in lines)))
    lines = [ln for ln in lines if ln.facet in drawn]
    subject = declared.subject_name()
    dims = list(dict.fromkeys(ln.subject for ln in lines))
    marker = {d: PAIR_MARKERS[i % len(PAIR_MARKERS)] for i, d in enumerate(dims)}
    # One figure per setting (device, dtype); counted lines (any device and dtype, per image) join every one, or
    # stand alone where nothing was measured. Settings measured at a single resolution are in the table only.
    settings = list(dict.fromkeys(ln.setting for ln in lines if ln.setting != "counted")) or ["counted"]
    figures = []
    for setting in settings:
        group = [ln for ln in lines if ln.setting in (setting, "counted")]
        if len({r for ln in group if ln.setting == setting for r in ln.res}) < 2:
            continue
        tags: dict[int, set[str]] = {}
        for ln in group:
            if ln.facet.batch is None:
                for r, t in zip(ln.res, ln.batches, strict=True):
                    tags.setdefault(r, set()).add(t)
        sweep = {ln.metric for ln in group if ln.facet.batch is not None
                 and len({x.facet.batch for x in group if x.metric == ln.metric}) > 1}
        panels = []
        hidden = 0
        for fam in _compared(group):
            series, vlines = [], []
            lines_of = [ln for ln in group if ln.family is fam]
            drawn_lines = spread(lines_of, MAX_SERIES)  # (many model pairs: a legend of hundreds hides the plot)
            hidden += len(lines_of) - len(drawn_lines)
            for ln in drawn_lines:
                name = ln.measure + (f" ({ln.subject})" if len(dims) > 1 else "") + (
                    f" (batch {ln.facet.batch})" if ln.metric in sweep else "")
                series.append(Series(name, ln.res, ln.ratio, ln.colour, marker[ln.subject],
                                     ":" if ln.predicted else "-", ln.predicted))
                vlines += [(x, f"{ln.measure} vs {ln.other}: {px(x)}", ln.colour) for x, _ in ln.cross]
            vlines = vlines if len(vlines) <= 6 else []  # (more marked crossovers would bury the plot: the caption)
            if series:
                pair = f"{subject} / {fam.display}"
                panels.append(Panel(pair, f"{pair} (lower = {subject} cheaper)", series, hline=1.0,
                                    hline_label="parity (ratio 1)", vlines=vlines,
                                    xnotes={r: "/".join(sorted(t)) for r, t in tags.items()}))
        crossed = [f"{ln.measure} vs {ln.other} ≈ {px(x)}" for ln in group for x, _ in ln.cross]
        crossed = crossed[:10] + ([f"and {len(crossed) - 10} more (in the table)"] if len(crossed) > 10 else [])
        cap = (f"Ratio of {subject} to each comparator model at each resolution ({setting}) for every "
               f"lower-is-better measure present; below 1 {subject} needs less. GMACs and times are per image; where "
               "the batch varies with resolution (shown under each resolution) both models ran the same batch at each "
               "point, so the ratio is the same per image as per pass, while memory is that of the whole batch. "
               "Colour = measure, "
               f"marker = {subject} model; dotted lines with hollow markers are predicted, not measured. Thin dotted "
               "vertical lines mark where a ratio crosses 1 (interpolated linearly in log resolution and log "
               "ratio): " + (", ".join(crossed) if crossed else "none in the range measured") + ".")
        if hidden:
            cap += (f" {hidden} more model pair(s) are not drawn ({MAX_SERIES} lines per panel at most, evenly "
                    "spread); every ratio is in the table below.")
        size = (8.5, 5.2) if len(panels) == 1 else (11.0, 5.4)
        figures.append(panels_figure(f"{_ratio_heading(group)} ratio — {setting}", cap, panels, size))
    rows = []
    for ln in lines:
        cross = "; ".join(f"{px(x)} ({subject} {'cheaper' if d == 'below' else 'dearer'} above)"
                          for x, d in ln.cross)
        rows.append([Cell(f"{ln.subject} / {ln.other}"), Cell(ln.measure), Cell(ln.setting), Cell(ln.batch_text()),
                     Cell(f"{ln.ratio[0]:.3f} at {ln.res[0]} px"), Cell(f"{ln.ratio[-1]:.3f} at {ln.res[-1]} px"),
                     Cell(cross or ("single resolution" if len(ln.res) == 1 else "none in range"))])
    rows, more = capped_rows(rows, "ratios")
    table = Table(f"Ratios of {subject} to the other models and crossover resolutions. Ratio = {subject} value / "
                  "other value at the same resolution, device, dtype and batch; GMACs and times per image (the same "
                  "ratio as per pass), memory for the whole batch. Batch: at the lowest → highest resolution where it "
                  "varies." + more,
                  [f"{subject} / other", "measure", "setting", "batch", "ratio (lowest res.)", "ratio (highest res.)",
                   "crossover"], rows)
    paras = ["The summary gives the headline ratio of each measure; every ratio is in the table below."]
    if left_out:
        paras.append(left_out)
    return Section(_ratio_heading(lines), "ratio", [], paras, figures, [table])


def section_failures(results: Results) -> Section:
    """OOM and errors one line per point and message; skipped rows grouped by their reason (they are many)."""
    df = results.df
    bad = df[df["status"] != "ok"]
    failed = bad[bad["status"] != "skipped"]
    skipped = bad[bad["status"] == "skipped"]
    groups: dict[tuple, list[str]] = {}
    first: dict[tuple, tuple] = {}
    for r in failed.itertuples(index=False):
        k = (r.point_key, r.status, r.error)
        groups.setdefault(k, []).append(r.metric)
        first.setdefault(k, (r.model, r.resolution, r.batch, r.dtype, r.device))
    keys = sorted(groups, key=lambda k: (k[1] != "oom", results.models.index(first[k][0]), first[k][1]))
    rows = []
    for k in keys:
        model, res, batch, dtype, device = first[k]
        status = k[1] if k[1] in STATUSES else "error"
        rows.append([Cell(model), Cell(px(res)), Cell(str(batch)), Cell(dtype), Cell(device),
                     Cell(k[1].upper() if k[1] == "oom" else k[1], status), Cell(", ".join(groups[k])),
                     Cell(k[2] or "(no message recorded)")])
    n_oom, n_err, n_skip = int((df["status"] == "oom").sum()), len(failed) - int((df["status"] == "oom").sum()), \
        len(skipped)
    paras = [f"{n_oom} row(s) ran out of memory, {n_err} failed with an error and {n_skip} were skipped (the metric "
             "does not apply there or the suite limited it, e.g. a CUDA-only measurement on a CPU run). OOM and "
             "errors are also marked ✗ in the plots." if len(bad) else
             "Every point produced all its values: nothing ran out of memory, failed or was skipped."]
    tables = []
    rows, more = capped_rows(rows, "failed points")
    if rows:
        tables.append(Table("Points that ran out of memory or failed, with the recorded message (one line per "
                            "point and message)." + more,
                            ["model", "resolution", "batch", "dtype", "device", "status", "metrics", "message"], rows,
                            [False, True, True, False, False, False, False, False]))
    if len(skipped):
        by_reason: dict[str, tuple[list[str], list[str]]] = {}
        for r in skipped.itertuples(index=False):
            metrics, points = by_reason.setdefault(r.error or "(no reason recorded)", ([], []))
            if r.metric not in metrics:
                metrics.append(r.metric)
            point = f"{r.model} @ {r.resolution}"
            if point not in points:
                points.append(point)
        srows = [[Cell(", ".join(m)), Cell(f"{len(p)}: " + ", ".join(p[:20]) + (", …" if len(p) > 20 else "")),
                  Cell(reason, "skipped")] for reason, (m, p) in by_reason.items()]
        srows, more = capped_rows(srows, "reasons")
        tables.append(Table("Skipped measurements, grouped by the reason recorded." + more,
                            ["metrics", "points (model @ px)", "reason"], srows))
    return Section("Failed and skipped points", "failures", [], paras, [], tables)


def section_full_tables(results: Results) -> Section:
    """Every measured row (declared rows in registration order, then the others), model x resolution."""
    known = [m for m in declared.row_order() if m in results.metrics()]
    known += [m for m in results.metrics() if m not in known and m not in SPECIAL_METRICS
              and not m.startswith(("published_", "fid", "fd_"))]
    # A series row has many values per point (one per step or component): a model x resolution cell cannot hold
    # them; its own section shows them.
    metrics = [m for m in known if results.has(m) and not results.declaration(m).series]
    tables, left_out = [], []
    for m in metrics:
        facets, note = capped_facets(results.facets([m]))
        tables += [pivot_table(results, m, f) for f in facets]
        left_out += [f"{label(m)}: {note}"] if note else []
    paras = ["Every metric, model × resolution. OOM = out of memory, error = failed (message in ‘Failed and "
             "skipped points’), skipped = not applicable there, — = not run."] + left_out
    never = [m for m in known if m not in metrics]
    if never:
        reasons = []
        for m in never:
            why = [e for e in pd.unique(results.rows(m)["error"]) if e]
            reasons.append(f"{label(m)} ({why[0]}" + (f"; and {len(why) - 1} other reason(s)" if len(why) > 1
                                                      else "") + ")" if why else label(m))
        paras.append("Skipped at every point, so not tabulated: " + "; ".join(reasons) + ".")
    return Section("Full results", "tables", [], paras, [], tables)


def section_methods(results: Results) -> Section:
    subject = declared.subject_name()
    baselines = [f.display for f in declared.baselines()]
    versus = (baselines[0] if baselines else "baseline") + (f" (or {', '.join(baselines[1:])})"
                                                             if len(baselines) > 1 else "")
    paras = [
        "Counting: GMACs are multiply-accumulates (one per multiply-add), the unit the DiT, U-ViT and DiM papers "
        "report as “GFLOPs”; GFLOPs here are true floating-point operations, 2 per multiply-add (1 MAC = 2 FLOPs). "
        "Counts are for one forward pass at the stated batch, without classifier-free guidance; where the batch "
        "varies with resolution they are shown per image (the count for the batch / the batch).",
        "Timing: on a GPU with CUDA events after warm-up, the median of repeats; on a CPU with the wall clock. "
        "Throughput is images per second for one denoising forward pass (or one training step). The exact "
        "procedure of every number is in its caption and in the table below.",
        "Memory: ‘allocator peak’ is torch.cuda.max_memory_allocated (tensors only); ‘reserved’ adds the caching "
        "allocator's free blocks; ‘device’ is NVML's device-wide used memory, including the CUDA context and "
        "anything else on the card; ‘predicted’ is computed under FakeTensorMode without allocating, and is a "
        "prediction, not a measurement.",
        "Batch: a suite may shrink the batch as the resolution grows (to fill the card at low resolution). Plots "
        "then join the points of different batches per image — GMACs and times divided by the batch; throughput, "
        "TFLOP/s and MFU are rates and unchanged — and name the batch under each resolution. Memory cannot be "
        "divided by the batch (weights are paid once) and is shown for the whole batch. A batch sweep (several "
        "batches at one point) is plotted one batch at a time, as measured.",
        f"Ratios and crossovers: ratio = {subject} value / {versus} value at the same resolution, device, dtype and "
        "batch, per image for GMACs and times (the same as per pass, both models having run the same batch); a "
        "crossover is where the ratio crosses 1, interpolated linearly between neighbouring resolutions in log "
        "resolution and log ratio. The summary's line per measure takes the device and dtype measured at the most "
        "resolutions (in a batch sweep, the largest batch).",
    ]
    env_backends = [(k, v) for k, v in _flatten(results.env) if "backend" in k.lower()]
    if env_backends:
        paras.append("Backends recorded in the environment: "
                     + "; ".join(f"{k} = {v}" for k, v in env_backends) + ".")
    measured = results.df[results.df["status"] != "skipped"]
    combos = measured[["metric", "unit", "task", "method"]].drop_duplicates()
    rows = []
    for metric, unit, task, method in combos.itertuples(index=False):
        bk = results.backends([metric])
        name = label(metric)
        unit = unit or declared.row(metric).unit
        rows.append([Cell(metric if name == metric else f"{name} ({metric})"), Cell(unit or "—"), Cell(task or "—"),
                     Cell(method or "not recorded"), Cell(", ".join(bk) or "—")])
    table = Table("How each metric was obtained (as recorded in the rows).",
                  ["metric", "unit", "task", "method", "backends"], rows)
    return Section("Method notes", "methods", [], paras, [], [table])


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _flatten(v, key + ".")
        elif isinstance(v, (list, tuple)):
            # each item was capped on loading, but many of them still make a long line
            out.append((key, Clipper().text(" ".join(str(x) for x in v))))
        else:
            out.append((key, str(v)))
    return out


def section_environment(results: Results) -> Section:
    if not results.env:
        return Section("Environment", "environment", [], ["No environment was recorded (environment.json missing "
                                                          "or unreadable): versions and device are unknown."])
    rows = [[Cell(k), Cell(v)] for k, v in _flatten(results.env)]
    return Section("Environment", "environment", [], [], [],
                   [Table("The environment the results were measured in (environment.json).", ["field", "value"],
                          rows)])


# The report, in order. The summary is computed from the same analyses as the sections below it. The
# measure-vs-resolution sections (compute, speed, memory, efficiency, a plugin's) come from the rows' plot
# declarations (plotted.py), in their declared order.
SECTIONS: list[Callable[[Results], Section | list[Section] | None]] = [
    section_summary,
    section_ratio,
    section_reference_ratio,
    plotted_sections,
    section_profile,
    section_train_loss,
    section_samples,
    section_quality_scores,
    section_paper_tables,
    section_published,
    section_failures,
    section_full_tables,
    section_methods,
    section_environment,
]


def build(results: Results, progress: Callable[[str], None] | None = None) -> Report:
    """The whole report's content from loaded results; ``progress(text)`` is told each section as it starts."""
    sections = []
    for i, make in enumerate(SECTIONS, 1):
        if progress is not None:
            progress(f"section {i}/{len(SECTIONS)}: {make.__name__.removeprefix('section_').replace('_', ' ')}")
        made = make(results)
        sections += made if isinstance(made, list) else [made] if made is not None else []
    suites = [s for s in pd.unique(results.df["suite"]) if s]
    title = "dimbench report" + (f": {', '.join(suites)}" if suites else "")
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    subtitle = f"Results folder {Path(results.dir).resolve()} · report generated {now}"
    return Report(title, subtitle, sections)
