"""The report's content, described once: a :class:`Report` of :class:`Section` s (heading, text, figures,
tables). ``html.py`` and ``pdf.py`` only render it, so the two formats never disagree.

Each section is made by one builder function ``(Results) -> Section | None`` listed in :data:`SECTIONS`;
``None`` means "nothing of this kind in the results" and the section is left out. Adding a kind of result
is adding one function to that list. The document model and shared helpers are in ``document.py``, the
growth-exponent and crossover analyses in ``analysis.py``, the quality and paper-table sections in
``quality.py``.

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

from .analysis import RATIO_MEASURES, RatioLine, growth_exponent, ratio_lines
from .data import STATUSES, Results
from .document import (
    MEMORY_METRICS,
    METRIC_ORDER,
    SPECIAL_METRICS,
    Cell,
    Report,
    Section,
    Table,
    fail_marks,
    fmt,
    label,
    method_text,
    model_series,
    panels_figure,
    pivot_table,
    px,
    styles_for,
)
from .plots import Panel, Series
from .quality import section_published, section_quality_scores, section_samples, section_train_loss

PAIR_MARKERS = ["o", "s", "^", "D", "v", "P"]  # one per DiM-DiT pair in the ratio plot

# --------------------------------------------------------------------------------------------------------------
# Sections: one function each
# --------------------------------------------------------------------------------------------------------------


def _oom_contrast(results: Results, a: str, b: str) -> list[str]:
    """Resolutions where model ``a`` ran out of memory on a measure that ``b`` completed under the same facet."""
    df = results.df
    out = []
    for res in results.resolutions:
        ra = df[(df["model"] == a) & (df["resolution"] == res) & (df["status"] == "oom")]
        for r in ra.itertuples(index=False):
            done = df[(df["model"] == b) & (df["resolution"] == res) & (df["metric"] == r.metric)
                      & (df["device"] == r.device) & (df["dtype"] == r.dtype) & (df["batch"] == r.batch)
                      & (df["status"] == "ok")]
            if len(done):
                out.append(f"{a} ran out of memory at {res} px ({r.device}, {r.dtype}, batch {r.batch}), where {b} ran")
                break
    return out


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


def _settings(k: int, n: int) -> str:
    """' in k of n settings' (nothing when the measure was taken under one setting only)."""
    if n <= 1:
        return ""
    return f" in all {n} settings" if k == n else f" in {k} of {n} settings"


def headline(results: Results) -> list[str]:
    """The summary's headline: for each DiM-DiT pair, by which measures DiM overtakes DiT and where."""
    lines = ratio_lines(results)
    if not lines:
        return ["No DiM model and DiT model share a resolution with a successful measurement, so these results "
                "hold no DiM vs DiT comparison."]
    out = []
    for a, b in dict.fromkeys((ln.dim, ln.dit) for ln in lines):
        mine = [ln for ln in lines if (ln.dim, ln.dit) == (a, b)]
        over, ahead, behind, never = [], [], [], []
        # One phrase per measure; a measure taken under several settings (device, dtype, batch) is summarised
        # over them (range of crossovers, how many settings), the details being in the DiM vs DiT section.
        for metric in dict.fromkeys(ln.metric for ln in mine):
            group = [ln for ln in mine if ln.metric == metric]
            measure, n = group[0].measure, len(group)
            downs = [x for ln in group for x, d in ln.cross if d == "below"]
            ups = [x for ln in group for x, d in ln.cross if d == "above"]
            if downs:
                k = len({id(ln) for ln in group for _, d in ln.cross if d == "below"})
                where = px(downs[0]) if len(downs) == 1 else f"{min(downs):,.0f}–{px(max(downs))}"
                over.append(f"{measure} above ≈ {where}" + _settings(k, n))
            if ups:
                where = px(ups[0]) if len(ups) == 1 else f"{min(ups):,.0f}–{px(max(ups))}"
                behind.append(f"{measure} above ≈ {where}")
            flat = [ln for ln in group if not ln.cross]
            below = [ln for ln in flat if all(q < 1 for q in ln.ratio)]
            if below:
                ahead.append(measure + _settings(len(below), n))
            rest = [ln for ln in flat if ln not in below]
            if rest:
                if len(rest) == 1 and n == 1:
                    never.append(f"{measure} ({rest[0].trend()})")
                else:
                    last = [ln.ratio[-1] for ln in rest]
                    never.append(f"{measure}{_settings(len(rest), n)} (DiM/DiT at the highest resolution "
                                 f"{min(last):.2f}" + (f"–{max(last):.2f}" if max(last) != min(last) else "") + ")")
        parts = []
        if over:
            parts.append(f"DiM overtakes DiT by {', '.join(over)} (where the DiM/DiT ratio crosses 1, "
                         "interpolated in log space)")
        if ahead:
            parts.append(f"DiM is ahead at every resolution measured by {', '.join(ahead)}")
        if behind:
            parts.append(f"DiM falls behind again by {', '.join(behind)}")
        if never:
            parts.append(f"no crossover within the measured range by {', '.join(never)}")
        parts += _oom_contrast(results, b, a) + _oom_contrast(results, a, b)
        parts += _input_mismatch(results, a, b)
        out.append(f"{a} vs {b}: " + "; ".join(parts) + ".")
    return out


def describe_device(env: dict, devices: list[str]) -> str:
    """The hardware in words, from environment.json: GPU name and driver, or the CPU's cores."""
    parts = []
    gpu = env.get("gpu_name") or env.get("device_name")
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
    """(commit, dirty) from environment.json's ``git`` record (or a plain ``git_commit``)."""
    g = env.get("git")
    if isinstance(g, dict):
        return str(g.get("commit") or ""), bool(g.get("dirty"))
    return str(env.get("git_commit") or ""), False


def section_summary(results: Results) -> Section:
    df = results.df
    env = results.env
    counts = {s: int((df["status"] == s).sum()) for s in STATUSES}
    other = int((~df["status"].isin(STATUSES)).sum())
    suites = [s for s in dict.fromkeys(df["suite"]) if s]
    devices = list(dict.fromkeys(df.loc[df["task"] != "count", "device"])) or list(dict.fromkeys(df["device"]))
    ran = (f"Suite {', '.join(suites) or '(unnamed)'}: {len(results.models)} model(s) "
           f"({', '.join(results.models)}) at {len(results.resolutions)} resolution(s) "
           f"({', '.join(str(r) for r in results.resolutions)} px); "
           f"batch {', '.join(map(str, sorted(set(df['batch']))))}; "
           f"dtype {', '.join(dict.fromkeys(d for d in df['dtype'] if d)) or 'n/a'}. "
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
    gm = "gmacs" if results.has("gmacs", ok=True) else None
    if gm:
        exps = []
        for facet in results.facets([gm])[:1]:
            for model, by_res in results.values(gm, facet).items():
                fit, local = growth_exponent(list(by_res), list(by_res.values()))
                if local is not None:
                    exps.append(f"{model} ×tokens^{local:.2f}")
        if exps:
            highlights.append("GMACs growth at the top of the range (local exponent vs number of tokens; 1 = "
                              "linear, 2 = quadratic): " + ", ".join(exps) + ".")
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


def section_compute(results: Results) -> Section | None:
    metric = next((m for m in ("gmacs", "gflops") if results.has(m)), None)
    if metric is None:
        return None
    styles = styles_for(results)
    figures, tables = [], []
    for facet in results.facets([metric]):
        vals = results.values(metric, facet)
        exp_rows, labels = [], {}
        for model, by_res in vals.items():
            fit, local = growth_exponent(list(by_res), list(by_res.values()))
            if fit is not None:
                labels[model] = f"{model} (exponent {fit:.2f} fit, {local:.2f} local)"
            rs = sorted(by_res)
            exp_rows.append([Cell(model), Cell(f"{rs[0]}–{rs[-1]} px ({len(rs)})"), Cell(fmt(by_res[rs[0]])),
                             Cell(fmt(by_res[rs[-1]])), Cell("—" if fit is None else f"{fit:.3f}"),
                             Cell("—" if local is None else f"{local:.3f}")])
        panel = Panel(f"{label(metric)} vs resolution — {facet.label()}", f"{label(metric)} [{results.unit(metric)}]",
                      model_series(results, metric, facet, styles, labels),
                      fail_marks(results, [metric], facet, styles))
        cap = (f"Compute per forward pass vs resolution, log-log, {facet.label()}. The legend gives each model's "
               "growth exponent versus the number of tokens (tokens ∝ resolution²): the least-squares slope over "
               "all resolutions and the local slope between the two largest. ≈ 1 means linear in tokens (DiM's "
               "selective scan, and the per-token MLPs of every model); it tends to 2 where attention's quadratic "
               "term dominates (DiT, U-ViT). " + method_text(results, [metric], facet))
        figures.append(panels_figure(f"{label(metric)} vs resolution", cap, [panel], (8.5, 5.2)))
        if exp_rows:
            tables.append(Table(f"Growth of {label(metric)} with the number of tokens — {facet.label()}. Exponent = "
                                "d log(GMACs) / d log(tokens).",
                                ["model", "resolutions", "at lowest", "at highest", "exponent (fit)",
                                 "exponent (local)"], exp_rows, [False, False, True, True, True, True]))
    paragraphs = ["GMACs count multiply-accumulates, one per multiply-add: the unit the DiT, U-ViT and DiM papers "
                  "call “GFLOPs”. GFLOPs = 2 × GMACs (PyTorch's FlopCounterMode convention); both are in the "
                  "full tables."]
    check = _fvcore_agreement(results)
    if check:
        paragraphs.append(check)
    return Section("Compute (GMACs)", "compute", [], paragraphs, figures, tables)


def _fvcore_agreement(results: Results) -> str | None:
    if not (results.has("gmacs", ok=True) and results.has("gmacs_fvcore", ok=True)):
        return None
    worst = None
    for facet in results.facets(["gmacs"]):
        a, b = results.values("gmacs", facet), results.values("gmacs_fvcore", facet)
        for m in a:
            for r in set(a[m]) & set(b.get(m, {})):
                d = abs(a[m][r] - b[m][r]) / max(abs(a[m][r]), 1e-12)
                if worst is None or d > worst[0]:
                    worst = (d, m, r)
    if worst is None:
        return None
    return (f"Cross-check: fvcore's count agrees with the meta-device count within {worst[0] * 100:.2f} % at every "
            f"common point (largest difference: {worst[1]} at {worst[2]} px).")


def _speed_section(results: Results, heading: str, anchor: str, time_metric: str, rate_metric: str,
                   what: str) -> Section | None:
    metrics = [m for m in (time_metric, rate_metric) if results.has(m)]
    if not metrics:
        return None
    styles = styles_for(results)
    figures, tables = [], []
    for facet in results.facets(metrics):
        panels = []
        for metric in metrics:
            if not results.attempted(metric, facet):
                continue
            unit = results.unit(metric)
            panels.append(Panel(label(metric), f"{label(metric)} [{unit}]",
                                model_series(results, metric, facet, styles, spread=metric == time_metric),
                                fail_marks(results, [metric], facet, styles)))
        if not panels:
            continue
        bars = any(s.spread for p in panels for s in p.series)
        cap = (f"{what}, {facet.label()}. " + ("Bars on the time: p10–p90 of the timed repeats. " if bars else "")
               + method_text(results, metrics, facet))
        figures.append(panels_figure(f"{heading} — {facet.label()}", cap, panels))
    paras = []
    if any(f.device == "cpu" for f in results.facets(metrics)):
        paras.append("CPU timings come from a shared, noisy machine: compare models by their ratio in the same run, "
                     "not by absolute values.")
    return Section(heading, anchor, [], paras, figures, tables)


def section_speed(results: Results) -> Section | None:
    return _speed_section(results, "Speed: forward pass", "speed", "latency_ms", "throughput",
                          "Latency and throughput (images per second) of one denoising forward pass vs resolution, "
                          "log-log")


def section_training(results: Results) -> Section | None:
    return _speed_section(results, "Speed: training step", "training", "train_step_ms", "train_throughput",
                          "Time and throughput of one training step (forward + backward + optimizer step) vs "
                          "resolution, log-log")


def section_memory(results: Results) -> Section | None:
    present = [(m, ls, h) for m, ls, h in MEMORY_METRICS if results.has(m)]
    if not present:
        return None
    styles = styles_for(results)
    figures = []
    for facet in results.facets([m for m, _, _ in present]):
        series: list[Series] = []
        labelled: set[str] = set()
        legend = []
        for metric, ls, hollow in present:
            got = model_series(results, metric, facet, styles, linestyle=ls, hollow=hollow)
            if got:
                legend.append((label(metric) + (" — predicted" if hollow else " — measured"), ls, hollow))
            for s in got:
                # One legend entry per model (colour); the line-style legend says which source.
                if s.label in labelled:
                    s.label = "_nolegend_"
                else:
                    labelled.add(s.label)
                series.append(s)
        panel = Panel(f"Peak memory — {facet.label()}", "memory [GiB]", series,
                      fail_marks(results, [m for m, _, _ in present], facet, styles), style_legend=legend)
        cap = (f"Peak memory vs resolution, log-log, {facet.label()}. Line style gives the source: solid = "
               "allocator peak (tensors only), dashed = allocator reserved, dash-dot = NVML device-wide used "
               "(includes the CUDA context), dotted with hollow markers = predicted under FakeTensorMode "
               "(not measured). " + method_text(results, [m for m, _, _ in present], facet))
        figures.append(panels_figure(f"Peak memory — {facet.label()}", cap, [panel], (8.5, 5.2)))
    return Section("Memory", "memory", [], [], figures)


def section_ratio(results: Results) -> Section | None:
    lines = ratio_lines(results)
    if not lines:
        return None
    pairs = list(dict.fromkeys((ln.dim, ln.dit) for ln in lines))
    marker = {p: PAIR_MARKERS[i % len(PAIR_MARKERS)] for i, p in enumerate(pairs)}
    measure_order = {m[0]: i for i, m in enumerate(RATIO_MEASURES)}
    # Group lines into plots by measured facet (device, dtype, batch); counted lines join every group of their
    # batch, or stand alone where nothing was measured at that batch.
    groups: dict[tuple, list[RatioLine]] = {}
    for ln in lines:
        if ln.facet.device is not None:
            groups.setdefault((ln.facet.device, ln.facet.dtype, ln.facet.batch), []).append(ln)
    for ln in lines:
        if ln.facet.device is None:
            keys = [k for k in groups if k[2] == ln.facet.batch and ln not in groups[k]]
            if not keys:
                keys = [(None, None, ln.facet.batch)]
            for k in keys:
                groups.setdefault(k, []).append(ln)
    figures = []
    for (device, dtype, batch), group in groups.items():
        series, vlines = [], []
        for ln in sorted(group, key=lambda ln: measure_order[ln.metric]):
            name = f"{ln.measure}: {ln.dim} / {ln.dit}"
            if ln.facet.task not in (None, "forward", "count", "train_step"):
                name += f" ({ln.facet.task})"
            series.append(Series(name, ln.res, ln.ratio, ln.colour, marker[(ln.dim, ln.dit)],
                                 ":" if ln.predicted else "-", ln.predicted))
            for x, _ in ln.cross:
                vlines.append((x, f"{ln.measure}: {px(x)}", ln.colour))
        where = ", ".join(str(p) for p in (device, dtype) if p) or "counted"
        where += f", batch {batch}"
        panel = Panel(f"DiM / DiT ratio — {where}", "DiM / DiT (lower = DiM cheaper)", series, hline=1.0,
                      hline_label="parity (ratio 1)", vlines=vlines)
        crossed = [f"{ln.measure} ≈ {px(x)}" for ln in group for x, _ in ln.cross]
        cap = (f"Ratio of DiM to DiT per resolution ({where}) for each lower-is-better measure present; below 1 DiM "
               "needs less. Colour = measure, marker = model pair; dotted lines with hollow markers are predicted, not "
               "measured. Thin dotted vertical lines mark where a ratio crosses 1 (interpolated linearly in log "
               "resolution and log ratio): " + (", ".join(crossed) if crossed else "none in the range measured")
               + ".")
        figures.append(panels_figure(f"DiM / DiT ratio — {where}", cap, [panel], (8.5, 5.2)))
    rows = []
    for ln in lines:
        cross = "; ".join(f"{px(x)} (DiM {'cheaper' if d == 'below' else 'dearer'} above)" for x, d in ln.cross)
        rows.append([Cell(ln.dim), Cell(ln.dit), Cell(ln.measure), Cell(ln.facet.label()),
                     Cell(f"{ln.ratio[0]:.3f} at {ln.res[0]} px"), Cell(f"{ln.ratio[-1]:.3f} at {ln.res[-1]} px"),
                     Cell(cross or "none in range")])
    table = Table("DiM / DiT ratios and crossover resolutions (ratio = DiM value / DiT value at the same "
                  "resolution, facet and batch).",
                  ["DiM", "DiT", "measure", "measured under", "ratio (lowest res.)", "ratio (highest res.)",
                   "crossover"], rows)
    return Section("DiM vs DiT", "ratio", [ln.sentence() for ln in lines], [], figures, [table])


def section_efficiency(results: Results) -> Section | None:
    metrics = [m for m in ("tflops_achieved", "mfu") if results.has(m)]
    if not metrics:
        return None
    styles = styles_for(results)
    figures = []
    for facet in results.facets(metrics):
        panels = [Panel(label(m), f"{label(m)} [{results.unit(m)}]",
                        model_series(results, m, facet, styles), fail_marks(results, [m], facet, styles),
                        logy=False) for m in metrics if results.attempted(m, facet)]
        if not panels:
            continue
        cap = (f"How close each model runs to the hardware, {facet.label()}: achieved TFLOP/s = counted FLOPs / "
               "measured time; MFU = achieved / the card's peak. " + method_text(results, metrics, facet))
        figures.append(panels_figure(f"Hardware efficiency — {facet.label()}", cap, panels))
    return Section("Hardware efficiency", "efficiency", [], [], figures)


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
    if rows:
        tables.append(Table("Points that ran out of memory or failed, with the recorded message (one line per "
                            "point and message).",
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
        srows = [[Cell(", ".join(m)), Cell(f"{len(p)}: " + ", ".join(p)), Cell(reason, "skipped")]
                 for reason, (m, p) in by_reason.items()]
        tables.append(Table("Skipped measurements, grouped by the reason recorded.",
                            ["metrics", "points (model @ px)", "reason"], srows))
    return Section("Failed and skipped points", "failures", [], paras, [], tables)


def section_full_tables(results: Results) -> Section:
    known = [m for m in METRIC_ORDER if m in results.metrics()]
    known += [m for m in results.metrics() if m not in known and m not in SPECIAL_METRICS
              and not m.startswith(("published_", "fid", "fd_"))]
    metrics = [m for m in known if results.has(m)]
    tables = [pivot_table(results, m, f) for m in metrics for f in results.facets([m])]
    paras = ["Every metric, model × resolution. OOM = out of memory, error = failed (message in ‘Failed and "
             "skipped points’), skipped = not applicable there, — = not run."]
    never = [m for m in known if m not in metrics]
    if never:
        reasons = []
        for m in never:
            why = [e for e in dict.fromkeys(results.rows(m)["error"]) if e]
            reasons.append(f"{m} ({why[0]}" + (f"; and {len(why) - 1} other reason(s)" if len(why) > 1 else "")
                           + ")" if why else m)
        paras.append("Skipped at every point, so not tabulated: " + "; ".join(reasons) + ".")
    return Section("Full results", "tables", [], paras, [], tables)


def section_methods(results: Results) -> Section:
    paras = [
        "Counting: GMACs are multiply-accumulates (one per multiply-add), the unit the DiT, U-ViT and DiM papers "
        "report as “GFLOPs”; GFLOPs here are true floating-point operations, 2 per multiply-add (1 MAC = 2 FLOPs). "
        "Counts are for one forward pass at the stated batch, without classifier-free guidance.",
        "Timing: on a GPU with CUDA events after warm-up, the median of repeats; on a CPU with the wall clock. "
        "Throughput is images per second for one denoising forward pass (or one training step). The exact "
        "procedure of every number is in its caption and in the table below.",
        "Memory: ‘allocator peak’ is torch.cuda.max_memory_allocated (tensors only); ‘reserved’ adds the caching "
        "allocator's free blocks; ‘device’ is NVML's device-wide used memory, including the CUDA context and "
        "anything else on the card; ‘predicted’ is computed under FakeTensorMode without allocating, and is a "
        "prediction, not a measurement.",
        "Ratios and crossovers: ratio = DiM value / DiT value at the same resolution, facet and batch; a crossover "
        "is where the ratio crosses 1, interpolated linearly between neighbouring resolutions in log resolution "
        "and log ratio.",
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
        rows.append([Cell(metric), Cell(unit or "—"), Cell(task or "—"), Cell(method or "not recorded"),
                     Cell(", ".join(bk) or "—")])
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
            out.append((key, " ".join(str(x) for x in v)))
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


# The report, in order. The summary is computed from the same analyses as the sections below it.
SECTIONS: list[Callable[[Results], Section | None]] = [
    section_summary,
    section_ratio,
    section_compute,
    section_speed,
    section_training,
    section_memory,
    section_efficiency,
    section_train_loss,
    section_samples,
    section_quality_scores,
    section_published,
    section_failures,
    section_full_tables,
    section_methods,
    section_environment,
]


def build(results: Results) -> Report:
    """The whole report's content from loaded results."""
    sections = [s for s in (b(results) for b in SECTIONS) if s is not None]
    suites = [s for s in dict.fromkeys(results.df["suite"]) if s]
    title = "dimbench report" + (f": {', '.join(suites)}" if suites else "")
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    subtitle = f"Results folder {Path(results.dir).resolve()} · report generated {now}"
    return Report(title, subtitle, sections)
