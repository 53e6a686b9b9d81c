"""The profile section: where each model's forward pass spends its time, per named component (the ``profile``
metric, dimbench/metrics/profile.py).

Read from the ``profile_forward_ms`` rows, whose ``extra["components"]`` holds the whole per-component table of a
point (time, share, FLOPs, bytes, achieved rate, intensity), with how the time was measured, at which size
(``timed_resolution``: on the CPU a costly size is timed at a smaller one, said on every chart and table), the
roofline's measured ceilings (``roofline``) and the saved trace and memory snapshot; and from ``profile_energy_j``.
"""

from __future__ import annotations

import math

from matplotlib.lines import Line2D

from models.profiling import COMPONENTS

from . import plots
from .data import Results
from .document import Cell, Figure, Section, Table, fmt, px, styles_for

# One fixed colour per component name (models/profiling.COMPONENTS order), so a component keeps its colour in
# every chart; names outside the list get grey.
_COMPONENT_COLOURS = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
    "#1f5fa8", "#d1521f", "#2e8b3a", "#8a5fb5", "#b5478a", "#86bcb6", "#499894", "#6b8e23", "#c4a000",
    "#bab0ac",
]


def _components() -> list[str]:
    return list(COMPONENTS)


def _colour(name: str) -> str:
    names = _components()
    return _COMPONENT_COLOURS[names.index(name) % len(_COMPONENT_COLOURS)] if name in names else "#999999"


def _entries(results: Results) -> list[dict]:
    """One entry per profiled point (ok rows), in model then resolution order."""
    rows = results.rows("profile_forward_ms")
    rows = rows[rows["status"] == "ok"]
    out = []
    for r in rows.itertuples(index=False):
        extra = r.extra if isinstance(r.extra, dict) else {}
        comps = [c for c in extra.get("components") or [] if isinstance(c, dict) and "component" in c]
        if not comps:
            continue
        out.append({"model": r.model, "resolution": int(r.resolution), "batch": int(r.batch), "device": r.device,
                    "dtype": r.dtype, "point_key": r.point_key, "value": float(r.value), "extra": extra,
                    "components": comps, "method": r.method})
    order = {m: i for i, m in enumerate(results.models)}
    return sorted(out, key=lambda e: (order.get(e["model"], len(order)), e["resolution"], e["device"], e["batch"]))


def _setting(e: dict) -> str:
    return f"{e['device']}, {e['dtype']}, batch {e['batch']}"


def _tick(e: dict, settings: int) -> str:
    text = px(e["resolution"])
    timed = e["extra"].get("timed_resolution")
    if timed is not None and int(timed) != e["resolution"]:
        text += f"\n(timed at {px(int(timed))})"
    if settings > 1:
        text += f"\n{e['device']} {e['dtype']} b{e['batch']}"
    return text


def _draw_shares(fig, by_model: dict[str, list[dict]], key: str, ylabel: str, settings: int) -> None:
    """One panel per model: a stacked bar per profiled point, one segment per component."""
    n = len(by_model)
    ncols = min(n, 2)
    axes = fig.subplots(math.ceil(n / ncols), ncols, squeeze=False)
    seen: dict[str, object] = {}
    for ax, (model, entries) in zip(axes.flat, by_model.items(), strict=False):
        xs = list(range(len(entries)))
        bottoms = [0.0] * len(entries)
        for name in _ordered_names(entries):
            heights = [next((float(c.get(key) or 0.0) for c in e["components"] if c["component"] == name), 0.0)
                       for e in entries]
            bars = ax.bar(xs, heights, bottom=bottoms, color=_colour(name), width=0.7, edgecolor="white",
                          linewidth=0.4)
            seen.setdefault(name, bars)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        ax.set_xticks(xs, [plots.mpl_text(_tick(e, settings)) for e in entries], fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel(plots.mpl_text(ylabel), fontsize=8)
        ax.set_title(plots.mpl_text(model), fontsize=9.5)
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if seen:
        fig.legend(list(seen.values()), [plots.mpl_text(s) for s in seen], loc="outside lower center", fontsize=7,
                   ncols=min(len(seen), 6), frameon=False)


def _ordered_names(entries: list[dict]) -> list[str]:
    names = _components()
    found = {c["component"] for e in entries for c in e["components"]}
    return [n for n in names if n in found] + sorted(found - set(names))


def _draw_roofline(fig, entries: list[dict], styles) -> None:
    """Achieved GFLOP/s against arithmetic intensity per component and point, under each device's measured roof."""
    ax = fig.subplots()
    xs, ys = [], []
    for e in entries:
        marker = styles[e["model"]].marker if e["model"] in styles else "D"
        for c in e["components"]:
            x, y = c.get("intensity"), c.get("achieved_gflops")
            if not x or not y or x <= 0 or y <= 0:
                continue
            ax.scatter([x], [y], color=_colour(c["component"]), marker=marker, s=22, alpha=0.85,
                       edgecolors="black", linewidths=0.3)
            xs.append(x)
            ys.append(y)
    if not xs:
        return
    lo, hi = min(xs) / 2, max(xs) * 2
    roofs = {}
    for e in entries:
        roof = e["extra"].get("roofline") or {}
        if roof.get("peak_gflops") and roof.get("bandwidth_gbps"):
            roofs.setdefault(roof.get("device", e["device"]), roof)
    for i, (device, roof) in enumerate(roofs.items()):
        peak, bw = float(roof["peak_gflops"]), float(roof["bandwidth_gbps"])
        ridge = peak / bw
        grid = sorted({lo, hi, min(max(ridge, lo), hi)})
        ax.plot(grid, [min(peak, bw * g) for g in grid], color="black", linestyle=["-", "--", ":"][i % 3],
                linewidth=1.1, label=plots.mpl_text(f"roof {device}: {peak:,.0f} GFLOP/s, {bw:,.0f} GB/s"))
        hi = max(hi, ridge * 2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity [FLOP/byte] (meta count at the timed size)", fontsize=8)
    ax.set_ylabel("achieved [GFLOP/s] (component FLOPs / component time)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="both", alpha=0.25)
    handles = [Line2D([], [], color=_colour(n), marker="o", linestyle="none", markersize=6)
               for n in _ordered_names(entries)]
    labels = list(_ordered_names(entries))
    models = list(dict.fromkeys(e["model"] for e in entries))
    handles += [Line2D([], [], color="#555555", marker=styles[m].marker if m in styles else "D",
                             linestyle="none", markersize=6) for m in models]
    labels += models
    line_handles, line_labels = ax.get_legend_handles_labels()
    ax.legend(handles + line_handles, [plots.mpl_text(lab) for lab in labels + line_labels], fontsize=6.5,
              loc="lower right", ncols=2, framealpha=0.85)


def _top_table(entries: list[dict], top: int = 5) -> Table:
    body = []
    for e in entries:
        timed = int(e["extra"].get("timed_resolution") or e["resolution"])
        where = px(e["resolution"]) + (f" (timed at {px(timed)})" if timed != e["resolution"] else "")
        ranked = sorted(e["components"], key=lambda c: -float(c.get("share_pct") or 0.0))[:top]
        for i, c in enumerate(ranked):
            body.append([Cell(e["model"] if i == 0 else ""), Cell(where if i == 0 else ""),
                         Cell(_setting(e) if i == 0 else ""), Cell(c["component"]),
                         Cell(fmt(c.get("ms"))), Cell(f"{float(c.get('share_pct') or 0):.1f}"),
                         Cell(fmt(c.get("gflop"))), Cell(fmt(c.get("gbytes"))),
                         Cell(fmt(c.get("achieved_gflops")) if c.get("achieved_gflops") else "—"),
                         Cell(fmt(c.get("intensity")) if c.get("intensity") else "—")])
    kinds = sorted({str(e["extra"].get("time_kind", "?")) for e in entries})
    return Table(
        f"The {top} components that take the most time, per profiled point. Time: {', '.join(kinds)} per forward "
        "pass (mean of the profiled passes). GFLOPs and GB moved: meta-device count at the requested resolution; "
        "achieved GFLOP/s and intensity (FLOP/byte): at the timed resolution.",
        ["model", "resolution", "setting", "component", "time ms", "share %", "GFLOPs", "GB moved",
         "achieved GFLOP/s", "FLOP/byte"], body, [False, False, False, False, True, True, True, True, True, True])


def _files_table(results: Results, entries: list[dict]) -> Table:
    energy = results.rows("profile_energy_j")
    body = []
    for e in entries:
        rows = energy[energy["point_key"] == e["point_key"]]
        if len(rows) and rows["status"].iloc[0] == "ok":
            j = Cell(f"{float(rows['value'].iloc[0]):.3f}")
        elif len(rows):
            j = Cell(str(rows["error"].iloc[0] or rows["status"].iloc[0]), "skipped")
        else:
            j = Cell("—", "missing")
        body.append([Cell(e["model"]), Cell(px(e["resolution"])), Cell(_setting(e)),
                     Cell(str(e["extra"].get("trace") or "not saved")),
                     Cell(str(e["extra"].get("memory_snapshot") or "— (CUDA only)")), j])
    return Table("Saved traces (paths inside the results folder; open a Chrome trace in https://ui.perfetto.dev or "
                 "chrome://tracing, a memory snapshot in https://pytorch.org/memory_viz) and the energy per image "
                 "(NVML, CUDA only; the reason where not measured).",
                 ["model", "resolution", "setting", "trace", "memory snapshot", "energy J/image"], body,
                 [False, False, False, False, False, True])


def section_profile(results: Results) -> Section | None:
    """Stacked time and FLOP shares per model across resolutions, the top components, the roofline, traces and
    energy per image."""
    entries = _entries(results)
    if not entries:
        return None
    settings = len({_setting(e) for e in entries})
    by_model: dict[str, list[dict]] = {}
    for e in entries:
        by_model.setdefault(e["model"], []).append(e)
    rows = math.ceil(len(by_model) / 2)
    size = (10.0, 1.0 + 3.4 * rows)
    kinds = sorted({str(e["extra"].get("time_kind", "?")) for e in entries})
    fallback = [e for e in entries if int(e["extra"].get("timed_resolution") or e["resolution"]) != e["resolution"]]
    paras = [
        "Each model's forward pass is split into its named components (models/profiling.py: the patch embedding, "
        "conditioning, per block the norm/modulation, projections, convolutions, the selective scan or attention "
        "and MLP, scan switches and pads, skip fusion, the final layer); 'other' is what runs outside every range. "
        f"Times are {', '.join(kinds)} from torch.profiler (the profiler's bookkeeping included: compare components "
        "with each other; the latency rows give the un-profiled speed).",
    ]
    if fallback:
        paras.append("Timed at a smaller size on the CPU (too costly to time at the requested one): "
                     + "; ".join(f"{e['model']} @ {px(e['resolution'])} timed at "
                                 f"{px(int(e['extra']['timed_resolution']))}" for e in fallback)
                     + ". Their time shares are those of the smaller size; their FLOP and byte shares those of the "
                     "requested size (meta count).")
    roofs = {}
    for e in entries:
        roof = e["extra"].get("roofline") or {}
        if roof:
            roofs.setdefault(roof.get("device", e["device"]), roof)
    for device, roof in roofs.items():
        try:  # a results file of another version, or hand-edited: say what is missing rather than fail
            peak, bandwidth = float(roof["peak_gflops"]), float(roof["bandwidth_gbps"])
        except (KeyError, TypeError, ValueError):
            paras.append(f"Roofline ceilings on {device}: recorded incompletely, not used.")
            continue
        paras.append(f"Roofline ceilings on {device}: {peak:,.0f} GFLOP/s "
                     f"({roof.get('peak_method', '?')}) and {bandwidth:,.0f} GB/s "
                     f"({roof.get('bandwidth_method', '?')}), both measured by dimbench in the profiled process.")
    if not roofs:
        paras.append("No roofline ceilings were recorded with these rows: the roofline shows the points only.")
    backends = sorted({f"scan={e['extra'].get('scan_backend') or 'none'}, attention="
                       f"{e['extra'].get('attention_backend') or 'none'}" for e in entries})
    paras.append("Backends that ran: " + "; ".join(backends) + ".")
    figures = [
        Figure("Share of time per component", "Share of the profiled forward time per component, one stacked bar "
               "per resolution (a tick 'timed at' names the size actually timed). " + paras[0],
               lambda f: _draw_shares(f, by_model, "share_pct", "share of time [%]", settings), size),
        Figure("Share of FLOPs per component", "Share of the counted FLOPs (meta device, FlopCounterMode, 2 per "
               "multiply-add) per component at the requested resolution: how the work moves as the resolution "
               "grows. Elementwise ops, norms and softmax count no FLOPs (they move bytes).",
               lambda f: _draw_shares(f, by_model, "flop_share_pct", "share of FLOPs [%]", settings), size),
        Figure("Roofline of the components", "Each dot is one component of one profiled point (colour: component, "
               "marker: model): achieved GFLOP/s (its FLOPs at the timed size / its time) against its arithmetic "
               "intensity (FLOPs / bytes moved, each op reading its inputs and writing its outputs once). "
               "Components without FLOPs (pads, switches, norms) are not drawn. Lines: the measured roofs.",
               lambda f: _draw_roofline(f, entries, styles_for(results)), (8.5, 5.5)),
    ]
    tables = [_top_table(entries), _files_table(results, entries)]
    return Section("Profile: time per component", "profile", [], paras, figures, tables)
