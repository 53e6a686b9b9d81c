"""The report's content, described once: a :class:`Report` of :class:`Section` s (heading, text, figures,
tables). ``html.py`` and ``pdf.py`` only render it, so the two formats never disagree.

Each section is made by one builder function ``(Results) -> Section | None`` listed in :data:`SECTIONS`;
``None`` means "nothing of this kind in the results" and the section is left out. Adding a kind of result
is adding one function to that list.

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

import dataclasses
import datetime as _dt
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import plots
from .data import STATUSES, Facet, Results
from .plots import FailMark, Panel, Series, family_of

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
# Small helpers
# --------------------------------------------------------------------------------------------------------------

# Display name, y-axis label for each known metric; unknown metrics show their own name and unit.
METRIC_LABELS = {
    "params": "parameters",
    "params_trainable": "trainable parameters",
    "gmacs": "GMACs (multiply-accumulates, 1 per multiply-add)",
    "gflops": "GFLOPs (2 per multiply-add)",
    "gmacs_fvcore": "GMACs by fvcore (cross-check)",
    "latency_ms": "forward latency",
    "throughput": "forward throughput",
    "train_step_ms": "training-step time",
    "train_throughput": "training throughput",
    "mem_predicted_gib": "predicted peak memory (FakeTensor)",
    "mem_allocated_gib": "allocator peak (max_memory_allocated)",
    "mem_reserved_gib": "allocator reserved peak (max_memory_reserved)",
    "mem_device_gib": "device memory used (NVML, incl. CUDA context)",
    "tflops_achieved": "achieved TFLOP/s",
    "mfu": "model FLOP utilisation",
}
METRIC_ORDER = list(METRIC_LABELS)
MEMORY_METRICS = [  # (metric, line style, hollow markers = predicted)
    ("mem_allocated_gib", "-", False),
    ("mem_reserved_gib", "--", False),
    ("mem_device_gib", "-.", False),
    ("mem_predicted_gib", ":", True),
]
# Lower-is-better measures compared as a DiM / DiT ratio, with their line style in the ratio plot.
# Colour per measure; predicted values dotted with hollow markers, as in the memory plot.
RATIO_MEASURES = [  # (metric, measure, colour, predicted)
    ("gmacs", "GMACs", "#1d2733", False),
    ("latency_ms", "forward latency", "#d1521f", False),
    ("train_step_ms", "training-step time", "#8a5fb5", False),
    ("mem_allocated_gib", "allocator peak memory", "#2e8b3a", False),
    ("mem_predicted_gib", "predicted peak memory", "#2e8b3a", True),
]
PAIR_MARKERS = ["o", "s", "^", "D", "v", "P"]
SPECIAL_METRICS = ("train_loss", "samples")  # not pivoted in the full tables


def label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


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


def _join(items: Sequence[str], empty: str = "not recorded") -> str:
    items = [i for i in items if i]
    return "; ".join(items) if items else empty


def _method_text(results: Results, metrics: Sequence[str], facet: Facet | None = None) -> str:
    """'metric: method' for each metric, plus the backends that ran, for a caption."""
    parts = []
    for m in metrics:
        if results.has(m):
            parts.append(f"{label(m)}: {_join(results.methods(m, facet))}")
    backends = results.backends(list(metrics), facet)
    text = "Method — " + " | ".join(parts) + "."
    if backends:
        text += " Backends: " + ", ".join(backends) + "."
    return text


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")


def _fail_marks(results: Results, metrics: list[str], facet: Facet, styles) -> list[FailMark]:
    return [FailMark(r, s, styles[m].colour if m in styles else "#777777", m)
            for m, r, s in results.failures(metrics, facet)]


def _model_series(results: Results, metric: str, facet: Facet, styles, labels: dict[str, str] | None = None,
                  linestyle: str = "-", hollow: bool = False, spread: bool = False) -> list[Series]:
    """One series per model; with ``spread``, the rows' p10/p90 (extra ``p10_ms``/``p90_ms``) as bars."""
    out = []
    bounds = _spread(results, metric, facet) if spread else {}
    for model, by_res in results.values(metric, facet).items():
        rs = sorted(by_res)
        s = Series((labels or {}).get(model, model), rs, [by_res[r] for r in rs], styles[model].colour,
                   styles[model].marker, linestyle, hollow)
        if all((model, r) in bounds for r in rs):
            s.spread = [bounds[(model, r)] for r in rs]
        out.append(s)
    return out


def _spread(results: Results, metric: str, facet: Facet) -> dict[tuple[str, int], tuple[float, float]]:
    rows = results.select(metric, facet)
    out = {}
    for m, r, extra in rows.loc[rows["status"] == "ok", ["model", "resolution", "extra"]].itertuples(index=False):
        lo, hi = extra.get("p10_ms"), extra.get("p90_ms")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            out.setdefault((m, int(r)), (float(lo), float(hi)))
    return out


def _styles(results: Results):
    return plots.model_styles(results.models)


def _pivot_table(results: Results, metric: str, facet: Facet, caption_extra: str = "") -> Table:
    """Model x resolution for one metric and facet; failed cells say OOM / error / skipped."""
    rows = results.select(metric, facet)
    resolutions = sorted(set(int(r) for r in rows["resolution"]))
    models = [m for m in results.models if m in set(rows["model"])]
    cells: dict[tuple[str, int], Cell] = {}
    for m, r, v, s in rows[["model", "resolution", "value", "status"]].itertuples(index=False):
        if (m, int(r)) in cells:
            continue
        text = fmt(v, metric) if s == "ok" else {"oom": "OOM", "error": "error", "skipped": "skipped"}.get(s, s)
        cells[(m, int(r))] = Cell(text, s if s in STATUSES else "error")
    body = [[Cell(m)] + [cells.get((m, r), Cell("—", "missing")) for r in resolutions] for m in models]
    unit = results.unit(metric) + (" (shown in millions)" if metric.startswith("params") else "")
    caption = (f"{label(metric)} [{unit}] — {facet.label()}. Method: {_join(results.methods(metric, facet))}."
               + (f" {caption_extra}" if caption_extra else ""))
    return Table(caption, ["model"] + [px(r) for r in resolutions], body, [False] + [True] * len(resolutions))


# --------------------------------------------------------------------------------------------------------------
# Analyses shared by sections and the summary
# --------------------------------------------------------------------------------------------------------------


def growth_exponent(res: Sequence[float], values: Sequence[float]) -> tuple[float | None, float | None]:
    """Exponent of value vs number of tokens (tokens ∝ resolution²): least-squares slope over all points,
    and the local slope between the two largest resolutions (where the asymptotic term shows)."""
    pts = sorted((r, v) for r, v in zip(res, values, strict=True) if r > 0 and v > 0)
    if len(pts) < 2:
        return None, None
    lt = np.log(np.array([r for r, _ in pts], dtype=float) ** 2)
    lv = np.log(np.array([v for _, v in pts], dtype=float))
    fit = float(np.polyfit(lt, lv, 1)[0])
    local = float((lv[-1] - lv[-2]) / (lt[-1] - lt[-2]))
    return fit, local


def crossings(res: Sequence[float], ratio: Sequence[float]) -> list[tuple[float, str]]:
    """Where ratio crosses 1, interpolated linearly in (log resolution, log ratio); with the direction:
    "below" = the ratio drops below 1 going up in resolution (DiM becomes cheaper), "above" = the reverse."""
    pts = sorted((r, q) for r, q in zip(res, ratio, strict=True) if r > 0 and q > 0)
    out: list[tuple[float, str]] = []
    for (r0, q0), (r1, q1) in zip(pts, pts[1:], strict=False):  # neighbours
        l0, l1 = math.log(q0), math.log(q1)
        if l0 == 0 or l0 * l1 >= 0:
            continue
        t = l0 / (l0 - l1)
        x = math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0)))
        out.append((x, "below" if l1 < 0 else "above"))
    return out


@dataclasses.dataclass
class RatioLine:
    dim: str
    dit: str
    metric: str
    measure: str
    colour: str
    predicted: bool
    facet: Facet
    res: list[int]
    ratio: list[float]
    cross: list[tuple[float, str]]

    def trend(self) -> str:
        lo, hi = self.res[0], self.res[-1]
        return f"DiM/DiT {self.ratio[0]:.2f} at {lo} px → {self.ratio[-1]:.2f} at {hi} px"

    def sentence(self) -> str:
        """One line for the DiM vs DiT section: where (if anywhere) DiM overtakes DiT on this measure."""
        where = self.facet.label()
        lo, hi = self.res[0], self.res[-1]
        span = f"{lo}–{hi} px" if lo != hi else f"{lo} px"
        if self.cross:
            parts = [f"{self.dim} {'overtakes' if d == 'below' else 'falls behind'} {self.dit} above ≈ {px(x)}"
                     for x, d in self.cross]
            return (f"{self.measure} ({where}): " + "; ".join(parts)
                    + f" (ratio crosses 1, interpolated in log space; {self.trend()}).")
        if all(q < 1 for q in self.ratio):
            verdict = f"{self.dim} is ahead of {self.dit} at every resolution measured ({span})"
        elif all(q > 1 for q in self.ratio):
            verdict = f"{self.dim} is behind {self.dit} at every resolution measured ({span}); no crossover in range"
        else:
            verdict = f"{self.dim} and {self.dit} are level within the range measured ({span})"
        return f"{self.measure} ({where}): {verdict} ({self.trend()})."


def ratio_lines(results: Results) -> list[RatioLine]:
    """DiM / DiT for every (DiM model, DiT model) pair, lower-is-better measure and facet with common points."""
    dims = [m for m in results.models if family_of(m) == "dim"]
    dits = [m for m in results.models if family_of(m) == "dit"]
    out: list[RatioLine] = []
    for metric, measure, colour, predicted in RATIO_MEASURES:
        if not results.has(metric, ok=True):
            continue
        for facet in results.facets([metric]):
            vals = results.values(metric, facet)
            for a in dims:
                for b in dits:
                    common = sorted(set(vals.get(a, {})) & set(vals.get(b, {})))
                    common = [r for r in common if vals[a][r] > 0 and vals[b][r] > 0]
                    if not common:
                        continue
                    q = [vals[a][r] / vals[b][r] for r in common]
                    out.append(RatioLine(a, b, metric, measure, colour, predicted, facet, common, q,
                                         crossings(common, q)))
    return out


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
    styles = _styles(results)
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
                      _model_series(results, metric, facet, styles, labels),
                      _fail_marks(results, [metric], facet, styles))
        cap = (f"Compute per forward pass vs resolution, log-log, {facet.label()}. The legend gives each model's "
               "growth exponent versus the number of tokens (tokens ∝ resolution²): the least-squares slope over "
               "all resolutions and the local slope between the two largest. ≈ 1 means linear in tokens (DiM's "
               "selective scan, and the per-token MLPs of every model); it tends to 2 where attention's quadratic "
               "term dominates (DiT, U-ViT). " + _method_text(results, [metric], facet))
        figures.append(_panels_figure(f"{label(metric)} vs resolution", cap, [panel], (8.5, 5.2)))
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


def _panels_figure(title: str, caption: str, panels: list[Panel], size=(10.0, 4.6)) -> Figure:
    return Figure(title, caption, lambda fig: plots.draw_panels(fig, panels), size, panels)


def _speed_section(results: Results, heading: str, anchor: str, time_metric: str, rate_metric: str,
                   what: str) -> Section | None:
    metrics = [m for m in (time_metric, rate_metric) if results.has(m)]
    if not metrics:
        return None
    styles = _styles(results)
    figures, tables = [], []
    for facet in results.facets(metrics):
        panels = []
        for metric in metrics:
            if not results.attempted(metric, facet):
                continue
            unit = results.unit(metric)
            panels.append(Panel(label(metric), f"{label(metric)} [{unit}]",
                                _model_series(results, metric, facet, styles, spread=metric == time_metric),
                                _fail_marks(results, [metric], facet, styles)))
        if not panels:
            continue
        bars = any(s.spread for p in panels for s in p.series)
        cap = (f"{what}, {facet.label()}. " + ("Bars on the time: p10–p90 of the timed repeats. " if bars else "")
               + _method_text(results, metrics, facet))
        figures.append(_panels_figure(f"{heading} — {facet.label()}", cap, panels))
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
    styles = _styles(results)
    figures = []
    for facet in results.facets([m for m, _, _ in present]):
        series: list[Series] = []
        labelled: set[str] = set()
        legend = []
        for metric, ls, hollow in present:
            got = _model_series(results, metric, facet, styles, linestyle=ls, hollow=hollow)
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
                      _fail_marks(results, [m for m, _, _ in present], facet, styles), style_legend=legend)
        cap = (f"Peak memory vs resolution, log-log, {facet.label()}. Line style gives the source: solid = "
               "allocator peak (tensors only), dashed = allocator reserved, dash-dot = NVML device-wide used "
               "(includes the CUDA context), dotted with hollow markers = predicted under FakeTensorMode "
               "(not measured). " + _method_text(results, [m for m, _, _ in present], facet))
        figures.append(_panels_figure(f"Peak memory — {facet.label()}", cap, [panel], (8.5, 5.2)))
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
        figures.append(_panels_figure(f"DiM / DiT ratio — {where}", cap, [panel], (8.5, 5.2)))
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
    styles = _styles(results)
    figures = []
    for facet in results.facets(metrics):
        panels = [Panel(label(m), f"{label(m)} [{results.unit(m)}]",
                        _model_series(results, m, facet, styles), _fail_marks(results, [m], facet, styles),
                        logy=False) for m in metrics if results.attempted(m, facet)]
        if not panels:
            continue
        cap = (f"How close each model runs to the hardware, {facet.label()}: achieved TFLOP/s = counted FLOPs / "
               "measured time; MFU = achieved / the card's peak. " + _method_text(results, metrics, facet))
        figures.append(_panels_figure(f"Hardware efficiency — {facet.label()}", cap, panels))
    return Section("Hardware efficiency", "efficiency", [], [], figures)


def section_train_loss(results: Results) -> Section | None:
    if not results.has("train_loss", ok=True):
        return None
    rows = results.rows("train_loss")
    rows = rows[(rows["status"] == "ok") & rows["step"].notna()]
    if not len(rows):
        return None
    styles = _styles(results)
    curves, table_rows = [], []
    for (model, res), g in rows.groupby(["model", "resolution"], sort=False):
        g = g.sort_values("step")
        curves.append(plots.Curve(f"{model} @ {res} px", list(g["step"]), list(g["value"]), styles[model].colour))
        table_rows.append([Cell(model), Cell(px(res)), Cell(f"{int(g['step'].iloc[-1])}"),
                           Cell(fmt(float(g["value"].iloc[-1])))])
    fig = Figure("Training loss", "Training loss per logged step. " + _method_text(results, ["train_loss"]),
                 lambda f: plots.draw_curves(f, "Training loss", "step", "loss", curves), (8.5, 5.0))
    table = Table("Last logged training loss.", ["model", "resolution", "step", "loss"], table_rows,
                  [False, True, True, True])
    return Section("Quality: training loss", "train-loss", [], [], [fig], [table])


def section_samples(results: Results) -> Section | None:
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
                              "resolution). " + _method_text(results, ["samples"]),
                              lambda f: plots.draw_images(f, images), (10.0, 3.0 * math.ceil(len(images) / 4))))
    tables = [Table("Sample files that could not be shown.", ["model", "resolution", "path", "reason"], problems)
              ] if problems else []
    return Section("Quality: samples", "samples", [], [], figures, tables)


def section_quality_scores(results: Results) -> Section | None:
    metrics = [m for m in results.metrics() if m == "fid" or m.startswith(("fid_", "fd_"))]
    if not metrics:
        return None
    tables = [_pivot_table(results, m, f, "Lower is better." + ("" if m == "fid" else
                                                                 " A proxy distance, not the standard FID."))
              for m in metrics for f in results.facets([m])]
    return Section("Quality: sample scores", "quality-scores", [], [], [], tables)


def section_published(results: Results) -> Section | None:
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
    tables = [_pivot_table(results, m, f) for m in metrics for f in results.facets([m])]
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
