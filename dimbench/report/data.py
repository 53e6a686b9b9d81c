"""Reading a results folder into one clean table, and selecting from it.

The rows come from a user-handed ``results.jsonl`` (one JSON object per line, see docs/contracts.md), read
with :func:`dimbench.results.load`; nothing about them is trusted: missing columns are added, numbers are
coerced, rows without a model, metric or resolution are dropped, and each of these is *reported* in
:attr:`Results.notes`, never silent. A torn last line (a run killed while writing) is noted; a damaged line
elsewhere is a :class:`ReportError` naming the file and line.

A row's *facet* is what it was measured under: (task, device, dtype, batch). Counted metrics (``task ==
"count"``: params, FLOPs) do not depend on device or dtype, so when their values agree across those they are
collapsed to one facet per batch instead of being plotted once per device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from dimbench import results as results_store

from .plots import family_of

COLUMNS = list(results_store.COLUMNS)
STATUSES = results_store.STATUSES
FAILED = ("oom", "error")
_FAMILY_ORDER = {"dim": 0, "dit": 1, "uvit": 2}


class ReportError(Exception):
    """The results folder cannot make a report (missing, empty, unreadable); the message names the path."""


def _natural(s: str) -> list[Any]:
    """Sort key that orders dim_b_2 < dim_b_10 and dim_l < dim_xl by the embedded numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def model_order(models) -> list[str]:
    """DiM first, then DiT, then U-ViT, then anything else; within a family by name."""
    return sorted(set(models), key=lambda m: (_FAMILY_ORDER.get(family_of(m), 9), family_of(m), _natural(m)))


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def normalise(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Every row of the file -> DataFrame with every contract column, typed, one row per (point, metric, step)."""
    notes: list[str] = []
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    df = df[COLUMNS].copy()
    usable = df["model"].notna() & df["metric"].notna() & df["resolution"].map(lambda v: _num(v) is not None)
    if (~usable).any():
        notes.append(f"{int((~usable).sum())} row(s) without a model, metric or numeric resolution were ignored.")
    df = df[usable].copy()
    for c in ("suite", "model", "metric", "unit", "method", "error", "dtype", "device", "task", "started_at"):
        df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    df["status"] = df["status"].map(lambda v: str(v) if isinstance(v, str) and v else "unknown")
    df["resolution"] = df["resolution"].map(lambda v: int(round(_num(v))))
    df["batch"] = df["batch"].map(lambda v: int(_num(v)) if _num(v) is not None else 0)
    df["input_size"] = df["input_size"].map(lambda v: int(_num(v)) if _num(v) is not None else None)
    df["value"] = df["value"].map(_num)
    df["extra"] = df["extra"].map(lambda v: v if isinstance(v, dict) else {})
    df["step"] = df["extra"].map(lambda e: _num(e.get("step")))
    key = df["point_key"].map(lambda v: str(v) if v is not None and v == v else "")
    synth = df["model"] + "|r" + df["resolution"].astype(str) + "|b" + df["batch"].astype(str) + "|" + df["dtype"]
    df["point_key"] = key.where(key != "", synth + "|" + df["device"])
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
    return df.reset_index(drop=True), notes


def load_environment(directory: Path) -> tuple[dict, list[str]]:
    try:
        env = results_store.read_environment(directory)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return {}, [f"environment.json is not valid JSON ({e}); the device and versions are unknown."]
    if env is None:
        return {}, ["environment.json is missing: the device and versions are unknown."]
    if not isinstance(env, dict):
        return {}, ["environment.json is not a JSON object; ignored."]
    return env, []


@dataclasses.dataclass(frozen=True)
class Facet:
    """What a value was measured under; ``None`` fields match anything (collapsed counted metrics)."""

    task: str | None
    device: str | None
    dtype: str | None
    batch: int | None

    def label(self) -> str:
        parts = []
        if self.device is not None:
            parts.append(self.device)
        if self.dtype is not None:
            parts.append(self.dtype)
        if self.batch is not None:
            parts.append(f"batch {self.batch}")
        if self.task is not None and self.task not in ("forward", "count"):
            parts.append(self.task)
        if self.device is None:
            parts.append("counted: any device and dtype")
        return ", ".join(parts)

    def mask(self, df: pd.DataFrame) -> pd.Series:
        m = pd.Series(True, index=df.index)
        for f in ("task", "device", "dtype", "batch"):
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

    # ---- what is there --------------------------------------------------------------------------------
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.df["metric"]))

    def has(self, metric: str, ok: bool = False) -> bool:
        """Whether the metric was attempted somewhere (a row that is not "skipped"), or succeeded (``ok``).

        A metric skipped everywhere (e.g. CUDA-only memory on a CPU run) gets no plot or table of its own; the
        full-results section lists it with the reasons."""
        st = self.df.loc[self.df["metric"] == metric, "status"]
        return bool((st == "ok").any()) if ok else bool((st != "skipped").any())

    def rows(self, metric: str) -> pd.DataFrame:
        return self.df[self.df["metric"] == metric]

    def is_collapsible(self, metric: str) -> bool:
        """A counted metric whose values agree across device and dtype for each (model, resolution, batch)."""
        if metric not in self._collapsible:
            rows = self.rows(metric)
            ok = rows[rows["status"] == "ok"]
            same = (ok.groupby(["model", "resolution", "batch"])["value"]
                    .agg(lambda v: float(v.max() - v.min()) <= 1e-9 * max(abs(float(v.max())), 1.0)).all())
            self._collapsible[metric] = bool(len(rows)) and bool((rows["task"] == "count").all()) and bool(same)
        return self._collapsible[metric]

    def facets(self, metrics: list[str]) -> list[Facet]:
        """The distinct facets the given metrics were attempted under (skipped rows aside), in a stable order."""
        out: list[Facet] = []
        for metric in metrics:
            rows = self.rows(metric)
            rows = rows[rows["status"] != "skipped"]
            if not len(rows):
                continue
            if self.is_collapsible(metric):
                fs = [Facet(None, None, None, int(b)) for b in sorted(set(rows["batch"]))]
            else:
                combos = rows[["task", "device", "dtype", "batch"]].drop_duplicates()
                fs = [Facet(t, dv, dt, int(b)) for t, dv, dt, b in combos.itertuples(index=False)]
            for f in fs:
                if f not in out:
                    out.append(f)
        return sorted(out, key=lambda f: (f.device or "", f.dtype or "", f.batch or 0, f.task or ""))

    def select(self, metric: str, facet: Facet) -> pd.DataFrame:
        rows = self.rows(metric)
        if self.is_collapsible(metric):
            facet = Facet(None, None, None, facet.batch)
        elif facet.device is None:
            return rows.iloc[0:0]
        return rows[facet.mask(rows)]

    def values(self, metric: str, facet: Facet) -> dict[str, dict[int, float]]:
        """model -> resolution -> value, for the ok rows of a metric under a facet."""
        rows = self.select(metric, facet)
        rows = rows[rows["status"] == "ok"]
        out: dict[str, dict[int, float]] = {}
        for m, r, v in rows[["model", "resolution", "value"]].itertuples(index=False):
            out.setdefault(m, {}).setdefault(int(r), float(v))
        return {m: out[m] for m in self.models if m in out}

    def attempted(self, metric: str, facet: Facet) -> bool:
        """Whether the metric has a row other than "skipped" under this facet."""
        return bool((self.select(metric, facet)["status"] != "skipped").any())

    def failures(self, metrics: list[str], facet: Facet) -> list[tuple[str, int, str]]:
        """(model, resolution, status) of the OOM / error rows of these metrics under a facet, deduplicated."""
        seen: list[tuple[str, int, str]] = []
        for metric in metrics:
            rows = self.select(metric, facet)
            rows = rows[rows["status"].isin(FAILED) | ~rows["status"].isin(STATUSES)]
            for m, r, s in rows[["model", "resolution", "status"]].itertuples(index=False):
                if (m, int(r), s) not in seen:
                    seen.append((m, int(r), s))
        return seen

    def methods(self, metric: str, facet: Facet | None = None) -> list[str]:
        """How the metric's values were obtained (skipped rows measured nothing, so they do not count)."""
        rows = self.rows(metric) if facet is None else self.select(metric, facet)
        rows = rows[rows["status"] != "skipped"]
        return [m for m in dict.fromkeys(rows["method"]) if m]

    def unit(self, metric: str) -> str:
        rows = self.rows(metric)
        units = [u for u in dict.fromkeys(rows.loc[rows["status"] != "skipped", "unit"]) if u]
        return " / ".join(units) if units else "unit not recorded"

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
            raw = results_store.load(jsonl, all_rows=True)
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
