"""Drawing: every plot of the report is a list of :class:`Panel` drawn by :func:`draw_panels`.

The content model (``content.py``) decides *what* to plot and builds panels from the rows; this module only
decides *how* it looks, so the HTML and the PDF draw the same panels into different containers (a whole
``Figure`` for the HTML's PNG, a ``SubFigure`` of a PDF page).

Strings drawn here come from user-handed result files: they pass through :func:`mpl_text` so a ``$`` in a model
name or an error message cannot switch matplotlib into mathtext (which would raise or mangle the text).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # reports are rendered headless; never open a window

from matplotlib.figure import FigureBase  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

# Colour ramps and markers, one per registered family in its display order (DiM blue circles, DiT orange
# squares, U-ViT green triangles, then a plugin's families), so a reader tells the families apart at a glance;
# models of one family get shades of its ramp. Models of no registered family (results of another version) are
# drawn in greys with diamonds.
_FAMILY_COLOURS = [
    ["#1f5fa8", "#3d8fd1", "#0b3d70", "#6bb3e8"],
    ["#d1521f", "#f08a3c", "#8f2f0b", "#f5b07a"],
    ["#2e8b3a", "#5cbf5f", "#1a5c22", "#98d98e"],
    ["#8a5fb5", "#b08ad6", "#5c3a80", "#d2bbe8"],
    ["#b5478a", "#d977b0", "#7a2a5c", "#ecb3d4"],
    ["#8c564b", "#b3806f", "#5e3a32", "#d9b8ad"],
    ["#17807e", "#3fb8b5", "#0b4f4e", "#8fd9d6"],
]
_FAMILY_MARKERS = ["o", "s", "^", "v", "P", "h", "*"]
_OTHER_COLOURS = ["#555555", "#888888", "#333333", "#aaaaaa"]
_OTHER_MARKER = "D"

FAIL_MARKER = "X"
FAIL_COLOUR = "#c0392b"


def mpl_text(s: object) -> str:
    """Make an untrusted string safe to draw: escape ``$`` so mathtext never triggers."""
    return str(s).replace("\\", "\\\\").replace("$", r"\$")


def _plain(v: float, _pos=None) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"


@dataclasses.dataclass(frozen=True)
class ModelStyle:
    colour: str
    marker: str


def model_styles(models: Sequence[str], slot: Callable[[str], int | None]) -> dict[str, ModelStyle]:
    """A stable colour and marker per model: shades of its family's ramp, in the order given. ``slot(model)`` is
    the position of the model's family among the registered ones (which ramp and marker), None for a model of
    no registered family (greys)."""
    styles: dict[str, ModelStyle] = {}
    used: dict[int | None, int] = {}
    for m in models:
        k = slot(m)
        ramp = _OTHER_COLOURS if k is None else _FAMILY_COLOURS[k % len(_FAMILY_COLOURS)]
        marker = _OTHER_MARKER if k is None else _FAMILY_MARKERS[k % len(_FAMILY_MARKERS)]
        i = used.get(k, 0)
        used[k] = i + 1
        styles[m] = ModelStyle(ramp[i % len(ramp)], marker)
    return styles


@dataclasses.dataclass
class Series:
    """One line: y over resolution (pixels)."""

    label: str
    x: list[float]
    y: list[float]
    colour: str
    marker: str = "o"
    linestyle: str = "-"
    hollow: bool = False  # hollow markers: predicted, not measured
    spread: list[tuple[float, float]] | None = None  # (low, high) per point, drawn as bars (e.g. p10-p90)


@dataclasses.dataclass
class FailMark:
    """A point that did not produce a value (OOM or error): drawn as an X at its resolution."""

    x: float
    status: str  # "oom" | "error" | ...
    colour: str
    label: str  # who failed (model), shown in the annotation


@dataclasses.dataclass
class Panel:
    """One axes: series over resolution, failure marks, optional reference line and marked crossovers."""

    title: str
    ylabel: str
    series: list[Series]
    fails: list[FailMark] = dataclasses.field(default_factory=list)
    xlabel: str = "resolution (pixels, log scale)"
    logy: bool = True
    hline: float | None = None  # e.g. ratio = 1
    hline_label: str = ""
    vlines: list[tuple[float, str, str]] = dataclasses.field(default_factory=list)  # (x, label, colour)
    style_legend: list[tuple[str, str, bool]] = dataclasses.field(default_factory=list)  # (label, ls, hollow)
    xticks: list[float] | None = None
    # A second line under a resolution's tick label: the batch there ("b32") when it varies with resolution.
    xnotes: dict[float, str] = dataclasses.field(default_factory=dict)


def draw_panels(fig: FigureBase, panels: Sequence[Panel], ncols: int | None = None) -> None:
    """Draw panels side by side (or in a grid) into a Figure or SubFigure."""
    n = len(panels)
    ncols = ncols or min(n, 2)
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    # zip stops at the panels; spare grid cells are hidden below
    legends = [_draw_panel(ax, panel, legend=n == 1) for ax, panel in zip(axes.flat, panels, strict=False)]
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if n > 1:
        # Several panels share the model colours: one legend under them all instead of one per panel.
        merged: dict[str, object] = {}
        for handles, labels in legends:
            for h, lab in zip(handles, labels, strict=True):
                merged.setdefault(lab, h)
        if merged:
            # As many columns as fit the width (about 13 characters an inch at this font size), at most 5.
            per_row = int(fig.bbox.width / fig.dpi * 13 // (max(len(lab) for lab in merged) + 6))
            fig.legend(list(merged.values()), list(merged), loc="outside lower center", fontsize=7,
                       ncols=max(1, min(len(merged), 5, per_row)), frameon=False)


#: Labelled resolutions on an axis: beyond this many, a subset spread evenly in log scale (a sweep of 250
#: resolutions would print 250 overlapping labels).
MAX_TICKS = 12
#: Points per line above which markers shrink and error bars lose their caps (they would merge into a band).
DENSE = 40


def _readable_ticks(ticks: list[float]) -> list[float]:
    """At most about :data:`MAX_TICKS` of the sorted ``ticks``, at least 1/MAX_TICKS of the log range apart, the
    first and the last kept."""
    if len(ticks) <= MAX_TICKS:
        return ticks
    lo, hi = math.log2(ticks[0]), math.log2(ticks[-1])
    gap = (hi - lo) / MAX_TICKS
    kept = [ticks[0]]
    for t in ticks[1:-1]:
        if math.log2(t) - math.log2(kept[-1]) >= gap and hi - math.log2(t) >= gap / 2:
            kept.append(t)
    return kept + [ticks[-1]]


def _resolution_axis(ax, xs: Sequence[float], ticks: Sequence[float] | None, notes: dict[float, str]) -> None:
    """Resolution on a log2 axis with the measured resolutions as the labelled ticks (and a note under each; at
    most about MAX_TICKS of them, evenly spread, where there are more)."""
    ax.set_xscale("log", base=2)
    ticks = _readable_ticks(sorted(t for t in set(ticks or xs) if t > 0))
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels([mpl_text(f"{t:g}\n{notes[t]}" if t in notes else f"{t:g}") for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        lo, hi = min(ticks), max(ticks)
        ax.set_xlim(lo / 1.25, hi * 1.25)


def _make_headroom(ax, ys: Sequence[float], fraction: float) -> None:
    """Raise the top of the y axis so the data occupy at most the lower ``fraction`` of it."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        span = math.log10(hi) - math.log10(lo)
        ax.set_ylim(lo, 10 ** (math.log10(lo) + max(span, 1e-9) / fraction))
    else:
        ax.set_ylim(lo, lo + (hi - lo) / fraction)


def _draw_panel(ax, p: Panel, legend: bool = True) -> tuple[list, list[str]]:
    """Draw one panel; returns its legend entries (drawn in the axes too when ``legend``)."""
    xs: list[float] = []
    ys: list[float] = []
    for s in p.series:
        pts = [(x, y, b) for x, y, b in zip(s.x, s.y, s.spread or [None] * len(s.x), strict=True)
               if y is not None and math.isfinite(y)]
        if not pts:
            continue
        pts.sort(key=lambda t: t[0])
        px, py = [t[0] for t in pts], [t[1] for t in pts]
        xs += px
        ys += py
        dense = len(pts) > DENSE
        if s.spread:
            lo = [max(y - b[0], 0.0) for _, y, b in pts]
            hi = [max(b[1] - y, 0.0) for _, y, b in pts]
            ax.errorbar(px, py, yerr=[lo, hi], fmt="none", ecolor=s.colour, elinewidth=1,
                        capsize=0 if dense else 2.5, alpha=0.8)
            ys += [b[0] for _, _, b in pts if b[0] > 0] + [b[1] for _, _, b in pts]
        ax.plot(
            px,
            py,
            linestyle=s.linestyle,
            marker=s.marker,
            color=s.colour,
            markerfacecolor="white" if s.hollow else s.colour,
            markersize=2 if dense else 5,
            linewidth=1.6,
            label=mpl_text(s.label),
        )
    xs += [f.x for f in p.fails]
    _resolution_axis(ax, xs, p.xticks, p.xnotes)
    positive = [y for y in ys if y > 0]
    if p.logy and positive:
        ax.set_yscale("log")
        # Plain numbers (0.6, 2, 300) read better than 6x10^-1; minor ticks are labelled only when the axis
        # spans less than about a decade, where there would otherwise be no label at all.
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        span = max(positive) / min(positive)
        if span < 12:
            # Within about a decade the default minor ticks (2..9) can leave a stretch like 1-2 unlabelled.
            ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)))
            ax.yaxis.set_minor_formatter(FuncFormatter(_plain))
        elif span < 120:
            # Up to about two decades: label 2 and 5 within each decade too.
            ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2, 5)))
            ax.yaxis.set_minor_formatter(FuncFormatter(_plain))
        else:
            ax.yaxis.set_minor_formatter(NullFormatter())
    if not (p.logy and positive) and ys and min(ys) >= 0:
        ax.set_ylim(bottom=0)  # a linear axis of a non-negative quantity (utilisation) starts at zero
    if not ys:
        # Nothing succeeded in this panel: keep the axes (so the failures are visible) and say so.
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no successful measurement", transform=ax.transAxes, ha="center", va="center",
                color="#777777")
    if p.hline is not None:
        ax.axhline(p.hline, color="#444444", linewidth=1, linestyle="--", zorder=0)
        if p.hline_label:
            ax.annotate(mpl_text(p.hline_label), (0.01, p.hline), xycoords=("axes fraction", "data"),
                        xytext=(0, 3), textcoords="offset points", fontsize=7, color="#444444")
    for x, label, colour in p.vlines:
        # Labelled in the legend, not on the plot: crossovers of different measures are often close together.
        ax.axvline(x, color=colour, linewidth=1.3, linestyle=(0, (1, 1.5)), label=mpl_text(f"crossover {label}"))
    # Failures sit in a band along the top edge (they have no value), stacked when several fail at one
    # resolution; the y range is stretched so the measured data stay below that band.
    if p.fails and ys:
        _make_headroom(ax, ys, 0.78)
    stack: dict[float, int] = {}
    lo, hi = ax.get_xlim()
    for f in p.fails:
        k = stack.get(f.x, 0)
        stack[f.x] = k + 1
        yfrac = 0.94 - 0.07 * k
        (mark,) = ax.plot([f.x], [yfrac], marker=FAIL_MARKER, color=f.colour, markeredgecolor=FAIL_COLOUR,
                          markersize=9, linestyle="none", transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
        right_half = math.log(f.x) > (math.log(lo) + math.log(hi)) / 2
        note = ax.annotate(mpl_text(f"{f.status.upper()} {f.label}"), (f.x, yfrac), xycoords=("data", "axes fraction"),
                           xytext=(-7 if right_half else 7, -3), textcoords="offset points", fontsize=6.5,
                           color=FAIL_COLOUR, ha="right" if right_half else "left")
        # Marks and notes must not make constrained layout shrink the axes.
        mark.set_in_layout(False)
        note.set_in_layout(False)
    ax.set_title(mpl_text(p.title), fontsize=10)
    ax.set_xlabel(mpl_text(p.xlabel + (" · batch under each" if p.xnotes else "")), fontsize=8.5)
    ax.set_ylabel(mpl_text(p.ylabel), fontsize=8.5)
    ax.tick_params(which="both", labelsize=7.5)
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    for label, ls, hollow in p.style_legend:
        handles.append(Line2D([], [], color="#333333", linestyle=ls, marker="o",
                              markerfacecolor="white" if hollow else "#333333", markersize=4))
        labels.append(mpl_text(label))
    if p.fails:
        handles.append(Line2D([], [], color="#999999", marker=FAIL_MARKER, markeredgecolor=FAIL_COLOUR,
                              linestyle="none", markersize=8))
        labels.append("OOM / error: no value")
    if handles and legend:
        ax.legend(handles, labels, fontsize=6.5, loc="best", framealpha=0.85)
    return handles, labels


@dataclasses.dataclass
class Curve:
    """A curve over an arbitrary x (training loss over steps)."""

    label: str
    x: list[float]
    y: list[float]
    colour: str
    linestyle: str = "-"


def draw_curves(fig: FigureBase, title: str, xlabel: str, ylabel: str, curves: Sequence[Curve],
                logy: bool = False) -> None:
    """Plain line plot (training loss curves)."""
    draw_curve_panels(fig, [(title, curves)], xlabel, ylabel, logy)


def draw_images(fig: FigureBase, images: Sequence[tuple[str, object]], ncols: int = 4) -> None:
    """A grid of images (sample grids), each titled."""
    n = max(len(images), 1)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (title, img) in zip(axes.flat, images, strict=False):  # spare axes stay off
        # one-channel images (grey digits) read back as 2-D arrays: grey, not a false-colour map
        ax.imshow(img, cmap="gray" if getattr(img, "ndim", 3) == 2 else None)
        ax.set_title(mpl_text(title), fontsize=8)


def draw_curve_panels(fig: FigureBase, panels: Sequence[tuple[str, Sequence[Curve]]], xlabel: str, ylabel: str,
                      logy: bool = False) -> None:
    """Line plots side by side, one per (title, curves) (training and held-out loss per resolution)."""
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for ax, (title, curves) in zip(axes, panels, strict=False):
        for c in curves:
            ax.plot(c.x, c.y, color=c.colour, linewidth=1.3, linestyle=c.linestyle, label=mpl_text(c.label),
                    marker="." if len(c.x) < 8 else None)  # a short curve (a brief fine-tune) still shows
        if logy:
            ax.set_yscale("log")
        ax.set_title(mpl_text(title), fontsize=10)
        ax.set_xlabel(mpl_text(xlabel), fontsize=8.5)
        ax.set_ylabel(mpl_text(ylabel), fontsize=8.5)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7.5)
        if curves:
            ax.legend(fontsize=6.5)


@dataclasses.dataclass
class ClassGrid:
    """A sample grid written one row per class: ``image`` (H, W[, C]) with ``len(classes)`` rows of tiles of
    ``tile_px`` pixels and 1-pixel gaps; ``title`` above it."""

    title: str
    image: object
    classes: Sequence[int]
    tile_px: int


def draw_class_grids(fig: FigureBase, grids: Sequence[ClassGrid], ncols: int = 3) -> None:
    """Sample grids side by side, each with its class written beside every row; pixels drawn as crisp blocks."""
    n = max(len(grids), 1)
    ncols = min(ncols, n)
    axes = fig.subplots(math.ceil(n / ncols), ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, g in zip(axes.flat, grids, strict=False):
        ax.set_axis_on()
        img = g.image
        ax.imshow(img, cmap="gray" if getattr(img, "ndim", 3) == 2 else None, interpolation="nearest", vmin=0,
                  vmax=1)
        step = g.tile_px + 1
        ax.set_yticks([r * step + (g.tile_px - 1) / 2 for r in range(len(g.classes))],
                      [str(c) for c in g.classes], fontsize=7)
        ax.tick_params(axis="y", length=0, pad=2)
        ax.set_xticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(mpl_text(g.title), fontsize=8)
