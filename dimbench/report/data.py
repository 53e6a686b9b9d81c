"""Reading a results folder into one clean table, and selecting from it.

The rows come from a user-handed ``results.jsonl`` (one JSON object per line, see docs/contracts.md), read
with :func:`dimbench.results.load`; nothing about them is trusted: missing columns are added, numbers are
coerced, rows without a model, metric or resolution are dropped, and each of these is *reported* in
:attr:`Results.notes`, never silent. A torn last line (a run killed while writing) is noted; a damaged line
elsewhere is a :class:`ReportError` naming the file and line.

A row's *facet* is what it was measured under: (task, device, dtype, batch, compile). ``compile`` is the
torch.compile mode of a compiled point (``extra.compile``; column ``compile``, "eager" when absent): where a
folder holds compiled rows, eager and compiled values are separate facets (eager-vs-eager,
compiled-vs-compiled). Counted metrics (``task == "count"``: params, FLOPs) do not depend on device or dtype, so
when their values agree across those they are collapsed to one facet instead of being plotted once per device.

The batch of a facet depends on how the suite chose it (:meth:`Results.facets`):

- the same batch at every point: one facet with that batch, values as measured (one pass over the batch);
- one batch per point, different across resolutions (a suite that fills the chip at low resolution and shrinks
  the batch as the tokens grow): one facet with ``batch=None``, whose values are **per image** so that points
  of different batches join one curve (:meth:`dimbench.metrics.Row.per_image`: rows declared per pass, GMACs
  and times, divided by the batch; rates such as img/s, TFLOP/s and MFU, and memory, as measured; memory is for
  the whole batch and cannot be normalised, so its plots name the batch at each point);
- several batches at one point (a batch sweep): one facet per batch, values as measured, as for a fixed batch.

A model's *variants* (points built with family options or from a checkpoint: what the point key adds after
model, resolution, batch, dtype and device) are separate series where the results hold more than one of them,
named ``model [pad=cyclic]`` (:data:`.declared.VARIANT`; the family is still the model's), so two variants never
overwrite each other at a resolution.

Every string of the rows and of environment.json is capped on loading (:mod:`.clip`), and the notes say so.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dimbench import results as results_store
from dimbench.errors import ReportError
from dimbench.metrics import Row

from . import declared
from .clip import Clipper

COLUMNS = list(results_store.COLUMNS)
STATUSES = results_store.STATUSES
FAILED = ("oom", "error")
TEXT_COLUMNS = ("suite", "model", "metric", "unit", "method", "error", "dtype", "device", "task", "started_at")


def _natural(s: str) -> list[Any]:
    """Sort key that orders dim_b_2 < dim_b_10 and dim_l < dim_xl by the embedded numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def model_order(models) -> list[str]:
    """By family (the registry's order: DiM, DiT, U-ViT), then by name; models of no registered family last."""
    def key(m: str) -> tuple:
        fam = declared.family(m)
        return (0, fam.order, fam.name, _natural(m)) if fam is not None else (1, 0, "", _natural(m))

    return sorted(set(models), key=key)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _text(v: Any, clip: Clipper) -> str:
    """A text cell: "" for none; strings were capped already, anything else (a list where text belongs) may still
    make a long string."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v if isinstance(v, str) else clip.text(str(v))


def normalise(raw: list[dict[str, Any]]) -> tuple[pd.DataFrame, list[str]]:
    """Every row of the file -> DataFrame with every contract column, typed, one row per (point, metric, step);
    every string capped (:mod:`.clip`). One pass over the rows in plain Python, building the columns (a folder of
    100,000 points has 200,000 rows: no per-cell pandas call)."""
    notes: list[str] = []
    clip = Clipper()
    names = COLUMNS + ["step", "compile"]
    cols: dict[str, list[Any]] = {c: [] for c in names}
    texts = set(TEXT_COLUMNS)
    dropped = 0
    for row in raw:
        resolution = _num(row.get("resolution"))
        if row.get("model") is None or row.get("metric") is None or resolution is None:
            dropped += 1
            continue
        extra = row.get("extra")
        extra = clip.value(extra) if isinstance(extra, dict) else {}
        for c in texts:
            cols[c].append(_text(clip.value(row.get(c)), clip))
        status = row.get("status")
        cols["status"].append(clip.text(status) if isinstance(status, str) and status else "unknown")
        cols["resolution"].append(int(round(resolution)))
        batch, size = _num(row.get("batch")), _num(row.get("input_size"))
        cols["batch"].append(int(batch) if batch is not None else 0)
        cols["input_size"].append(int(size) if size is not None else None)
        cols["value"].append(_num(row.get("value")))
        cols["extra"].append(extra)
        cols["duration_s"].append(clip.value(row.get("duration_s")))
        cols["step"].append(_num(extra.get("step")))
        cols["compile"].append(_text(extra.get("compile"), clip) or "eager")
        key = _text(clip.value(row.get("point_key")), clip)
        cols["point_key"].append(key or f"{cols['model'][-1]}|r{cols['resolution'][-1]}|b{cols['batch'][-1]}|"
                                        f"{cols['dtype'][-1]}|{cols['device'][-1]}")
    if dropped:
        notes.append(f"{dropped} row(s) without a model, metric or numeric resolution were ignored.")
    df = pd.DataFrame({c: pd.Series(cols[c], dtype=object if c not in ("resolution", "batch") else "int64")
                       for c in names})
    df["value"] = df["value"].astype(float)
    df["step"] = df["step"].astype(float)
    # Points of one model built differently (family options, another checkpoint) are separate series: where the
    # results hold several variants of a model, each variant is named by what its key adds ("dim_h_2 [pad=cyclic]").
    # "base_model" keeps the registry name: what the papers' tables and the family look-ups are keyed by.
    df["variant"] = df["point_key"].map(point_variant)
    df["base_model"] = df["model"]
    several = df.groupby("model")["variant"].transform("nunique") > 1
    renamed = several & (df["variant"] != "")
    df.loc[renamed, "model"] = [declared.VARIANT.format(model=m, variant=v)
                                for m, v in zip(df.loc[renamed, "model"], df.loc[renamed, "variant"], strict=True)]
    # A resumed run may re-measure a point (e.g. after an error); the file is append-only, so the last row wins.
    n = len(df)
    df = df.drop_duplicates(subset=["point_key", "metric", "step"], keep="last")
    if len(df) < n:
        notes.append(f"{n - len(df)} earlier row(s) superseded by a later run of the same point were ignored.")
    # An "ok" row needs a value; one without is reported as an error rather than plotted as a hole.
    broken = (df["status"] == "ok") & df["value"].isna()
    if broken.any():
        df.loc[broken, "status"] = "error"
        df.loc[broken, "error"] = "row says ok but has no numeric value"
        notes.append(f"{int(broken.sum())} row(s) marked ok had no numeric value; shown as errors.")
    return df.reset_index(drop=True), notes + clip.notes("the results")


def point_variant(key: str) -> str:
    """What a point key adds to the model to say how it was built (``pad=cyclic``, ``ckpt=<file name>``): the
    parts after model, resolution, batch, dtype and device, but the compile setting (a facet of its own)."""
    parts = [p for p in str(key).split("|")[5:] if p and not p.startswith("compile=")]
    return ", ".join(f"ckpt={Path(p[5:]).name}" if p.startswith("ckpt=") else p for p in parts)


def load_environment(directory: Path) -> tuple[dict, list[str]]:
    """environment.json with its strings capped, and notes on what was wrong with it or cut from it."""
    try:
        env = results_store.read_environment(directory)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return {}, [f"environment.json is not valid JSON ({e}); the device and versions are unknown."]
    except results_store.ResultsError as e:  # newer dimbench.results says so itself (not JSON, not an object)
        return {}, [f"environment.json cannot be used ({e}); the device and versions are unknown."]
    if env is None:
        return {}, ["environment.json is missing: the device and versions are unknown."]
    if not isinstance(env, dict):
        return {}, ["environment.json is not a JSON object; ignored."]
    clip = Clipper()
    env = clip.value(env)
    return env, clip.notes("environment.json")


def batch_tag(batches) -> str:
    """The batch(es) of one point for a plot label: ``b32``; ``b8/b4`` where the models differ."""
    return "/".join(f"b{b}" for b in sorted(set(batches), reverse=True))


@dataclasses.dataclass(frozen=True)
class Facet:
    """What a value was measured under; ``None`` fields match anything: device and dtype for collapsed counted
    metrics, the batch where it varies with resolution (then the facet's values are per image)."""

    task: str | None
    device: str | None
    dtype: str | None
    batch: int | None
    compile: str | None = None  # "eager" or a torch.compile mode; None where the folder has no compiled rows

    def label(self) -> str:
        parts = []
        if self.device is not None:
            parts.append(self.device)
        if self.dtype is not None:
            parts.append(self.dtype)
        if self.compile is not None:
            parts.append("eager" if self.compile == "eager" else f"torch.compile(mode={self.compile})")
        parts.append(f"batch {self.batch}" if self.batch is not None else "batch varies with resolution")
        if self.task is not None and self.task not in ("forward", "count"):
            parts.append(self.task)
        if self.device is None:
            parts.append("counted: any device and dtype")
        return ", ".join(parts)

    def mask(self, df: pd.DataFrame) -> pd.Series:
        m = pd.Series(True, index=df.index)
        for f in ("task", "device", "dtype", "batch", "compile"):
            v = getattr(self, f)
            if v is not None:
                m &= df[f] == v
        return m


class Results:
    """A loaded results folder: rows, environment, notes, and selection helpers used by every section."""

    def __init__(self, directory: Path, df: pd.DataFrame, env: dict, notes: list[str]):
        self.dir = directory
        self.df = df
        self.env = env
        self.notes = notes
        self.models = model_order(df["model"])
        self.resolutions = sorted(set(int(r) for r in df["resolution"]))
        self._collapsible: dict[str, bool] = {}
        # Each metric's rows once, and each (metric, facet) selection once: sections ask for them again and
        # again, and a boolean mask over a 200,000-row frame per question made a large folder take hours.
        self._by_metric = {m: g for m, g in df.groupby("metric", sort=False)}
        self._selected: dict[tuple[str, Facet], pd.DataFrame] = {}
        #: analyses several sections share (the ratio lines), computed once
        self.memo: dict[str, Any] = {}

    # ---- what is there --------------------------------------------------------------------------------
    def metrics(self) -> list[str]:
        return list(self._by_metric)  # (in the order of their first row)

    def has(self, metric: str, ok: bool = False) -> bool:
        """Whether the metric was attempted somewhere (a row that is not "skipped"), or succeeded (``ok``).

        A metric skipped everywhere (e.g. CUDA-only memory on a CPU run) gets no plot or table of its own; the
        full-results section lists it with the reasons."""
        key = f"has:{metric}:{ok}"
        if key not in self.memo:
            st = self.rows(metric)["status"]
            self.memo[key] = bool((st == "ok").any()) if ok else bool((st != "skipped").any())
        return self.memo[key]

    def rows(self, metric: str) -> pd.DataFrame:
        rows = self._by_metric.get(metric)
        return rows if rows is not None else self.df.iloc[0:0]

    def declaration(self, metric: str) -> Row:
        """The row's declaration (for a row nobody declares: its own name, the unit recorded, as measured)."""
        units = [u for u in pd.unique(self.rows(metric)["unit"]) if u]
        return declared.row(metric, units[0] if units else None)

    def is_collapsible(self, metric: str) -> bool:
        """A counted metric whose values agree across device and dtype for each (model, resolution, batch)."""
        if metric not in self._collapsible:
            rows = self.rows(metric)
            ok = rows[rows["status"] == "ok"]
            groups = ok.groupby(["model", "resolution", "batch"])["value"]  # (vectorised: no Python per group)
            hi, lo = groups.max(), groups.min()
            same = ((hi - lo) <= 1e-9 * np.maximum(hi.abs(), 1.0)).all()
            self._collapsible[metric] = bool(len(rows)) and bool((rows["task"] == "count").all()) and bool(same)
        return self._collapsible[metric]

    def facets(self, metrics: list[str]) -> list[Facet]:
        """The distinct facets the given metrics were attempted under (skipped rows aside), in a stable order.

        Per (task, device, dtype), or for all rows of a collapsed counted metric: one facet per batch, except where
        every point (model, resolution) has a single batch and the batches differ: then one facet whose batch
        varies with resolution (``batch=None``, values per image). See the module docstring."""
        out: list[Facet] = []
        mixed = bool((self.df["compile"] != "eager").any())  # compiled rows here: eager facets say "eager"
        for metric in metrics:
            rows = self.rows(metric)
            rows = rows[rows["status"] != "skipped"]
            if not len(rows):
                continue
            if self.is_collapsible(metric):
                groups = [((None, None, None, None), rows)]
            else:
                groups = list(rows.groupby(["task", "device", "dtype", "compile"], sort=False))
            for (task, device, dtype, compiled), g in groups:
                compiled = compiled if mixed else None
                batches = sorted(set(int(b) for b in g["batch"]))
                one_per_point = bool((g.groupby(["model", "resolution"])["batch"].nunique() == 1).all())
                sizes = [None] if len(batches) > 1 and one_per_point else batches
                fs = [Facet(task, device, dtype, b, compiled) for b in sizes]
                out += [f for f in fs if f not in out]
        return sorted(out, key=lambda f: (f.device or "", f.dtype or "", f.compile not in (None, "eager"),
                                          f.compile or "", f.batch or 0, f.task or ""))

    def facet_resolutions(self, metrics: list[str], facet: Facet) -> list[int]:
        """The resolutions these metrics were attempted at under a facet (skipped rows aside)."""
        out: set[int] = set()
        for metric in metrics:
            rows = self.select(metric, facet)
            out |= set(int(r) for r in rows.loc[rows["status"] != "skipped", "resolution"])
        return sorted(out)

    def select(self, metric: str, facet: Facet) -> pd.DataFrame:
        found = self._selected.get((metric, facet))
        if found is None:
            rows = self.rows(metric)
            if self.is_collapsible(metric):
                found = rows[Facet(None, None, None, facet.batch).mask(rows)]
            elif facet.device is None:
                found = rows.iloc[0:0]
            else:
                found = rows[facet.mask(rows)]
            self._selected[(metric, facet)] = found
        return found

    def values(self, metric: str, facet: Facet) -> dict[str, dict[int, float]]:
        """model -> resolution -> value, for the ok rows of a metric under a facet; per image where the facet's
        batch varies (:meth:`dimbench.metrics.Row.per_image`: what the row recorded per image, else a per-pass
        value / batch)."""
        out: dict[str, dict[int, float]] = {}
        row = self.declaration(metric)
        for m, r, v, b, extra in self._ok(metric, facet):
            if facet.batch is None:
                v = _per_image(row, v, b, extra)
            if v is not None:
                out.setdefault(m, {}).setdefault(r, float(v))
        return {m: out[m] for m in self.models if m in out}

    def spread(self, metric: str, facet: Facet) -> dict[tuple[str, int], tuple[float, float]]:
        """(model, resolution) -> (p10, p90) of the timed repeats (extra ``p10_ms``/``p90_ms``), scaled like
        :meth:`values`."""
        out = {}
        row = self.declaration(metric)
        for m, r, _, b, extra in self._ok(metric, facet):
            lo, hi = _num(extra.get("p10_ms")), _num(extra.get("p90_ms"))
            if facet.batch is None and lo is not None and hi is not None:
                lo, hi = row.per_image(lo, b), row.per_image(hi, b)  # repeats of the pass, not recorded per image
            if lo is not None and hi is not None:
                out.setdefault((m, r), (lo, hi))
        return out

    def batches(self, metrics: list[str], facet: Facet) -> dict[str, dict[int, int]]:
        """model -> resolution -> batch of the rows (any status but skipped) of these metrics under a facet."""
        out: dict[str, dict[int, int]] = {}
        for metric in metrics:
            rows = self.select(metric, facet)
            rows = rows[rows["status"] != "skipped"]
            for m, r, b in rows[["model", "resolution", "batch"]].itertuples(index=False):
                out.setdefault(m, {}).setdefault(int(r), int(b))
        return out

    def batch_tags(self, metrics: list[str], facet: Facet) -> dict[int, str]:
        """resolution -> ``b32`` (the batch there) when the facet's batch varies with resolution, else empty."""
        if facet.batch is not None:
            return {}
        by_res: dict[int, set[int]] = {}
        for by_model in self.batches(metrics, facet).values():
            for r, b in by_model.items():
                by_res.setdefault(r, set()).add(b)
        return {r: batch_tag(bs) for r, bs in sorted(by_res.items())}

    def _ok(self, metric: str, facet: Facet):
        rows = self.select(metric, facet)
        rows = rows[rows["status"] == "ok"]
        for m, r, v, b, extra in rows[["model", "resolution", "value", "batch", "extra"]].itertuples(index=False):
            yield m, int(r), float(v), int(b), extra

    def attempted(self, metric: str, facet: Facet) -> bool:
        """Whether the metric has a row other than "skipped" under this facet."""
        return bool((self.select(metric, facet)["status"] != "skipped").any())

    def failures(self, metrics: list[str], facet: Facet) -> list[tuple[str, int, str]]:
        """(model, resolution, status) of the OOM / error rows of these metrics under a facet, deduplicated."""
        seen: dict[tuple[str, int, str], None] = {}
        for metric in metrics:
            rows = self.select(metric, facet)
            rows = rows[rows["status"].isin(FAILED) | ~rows["status"].isin(STATUSES)]
            for m, r, s in rows[["model", "resolution", "status"]].itertuples(index=False):
                seen.setdefault((m, int(r), s))
        return list(seen)

    def methods(self, metric: str, facet: Facet | None = None) -> list[str]:
        """How the metric's values were obtained (skipped rows measured nothing, so they do not count)."""
        rows = self.rows(metric) if facet is None else self.select(metric, facet)
        rows = rows[rows["status"] != "skipped"]
        return [m for m in pd.unique(rows["method"]) if m]

    def unit(self, metric: str) -> str:
        """The unit(s) the rows recorded, else the declared one."""
        rows = self.rows(metric)
        units = [u for u in pd.unique(rows.loc[rows["status"] != "skipped", "unit"]) if u]
        return " / ".join(units) if units else declared.row(metric).unit or "unit not recorded"

    def backends(self, metrics: list[str], facet: Facet | None = None) -> list[str]:
        """``key=value`` for every extra field naming a backend (scan, attention) in these rows."""
        seen: dict[str, None] = {}
        for metric in metrics:
            rows = self.rows(metric) if facet is None else self.select(metric, facet)
            for extra in rows.loc[rows["status"] == "ok", "extra"]:
                for k, v in extra.items():
                    if "backend" in str(k).lower() and isinstance(v, (str, int, float)):
                        seen[f"{k}={v}"] = None
        return list(seen)


def _per_image(row: Row, value: float, batch: int, extra: dict) -> float | None:
    """The row's value per image; a recorded per-image value that is not a finite number counts as not recorded."""
    key = f"{row.name}_per_image"
    recorded = _num(extra.get(key))
    return row.per_image(value, batch, {key: recorded} if recorded is not None else None)


def load(directory: str | Path) -> Results:
    """Read a results folder (or its results.jsonl). Raises ReportError naming the path when unusable."""
    p = Path(directory)
    if p.is_file() and p.suffix == ".jsonl":
        p = p.parent
    if not p.exists():
        raise ReportError(f"results folder not found: {p}")
    if not p.is_dir():
        raise ReportError(f"not a results folder (not a directory): {p}")
    jsonl = p / results_store.RESULTS_FILE
    if not jsonl.exists():
        raise ReportError(f"no {jsonl.name} in {p}: nothing to report (has a suite run into this folder?)")
    # Every row (all_rows): the report keeps one row per (point, metric, step) itself, so that training-loss
    # rows (one per logged step) survive. A torn last line comes back as a warning; it goes into the notes.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            raw = results_store.read_rows(jsonl)
        except results_store.ResultsError as e:
            raise ReportError(f"{jsonl} cannot be read: {e}") from None
    notes = [f"{w.message} (a run was interrupted while writing it)." for w in caught
             if "last line" in str(w.message)]
    if not len(raw):
        raise ReportError(f"{jsonl} holds no result rows: nothing to report")
    df, more = normalise(raw)
    if not len(df):
        raise ReportError(f"{jsonl} holds no usable result rows: {' '.join(notes + more)}")
    env, env_notes = load_environment(p)
    return Results(p, df, env, notes + more + env_notes)
