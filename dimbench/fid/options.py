"""The option types of the ``fid`` metric: local paths (checked when the suite is read: relative to the suite's
folder, must exist) and the guidance table; and the up-front check of the options as a whole."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dimbench.fid import protocol
from dimbench.schema import INVALID, Type, describe, is_int, is_number


def _resolve(value: str, problems) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(getattr(problems, "base_dir", Path.cwd())) / p


class LocalPath(Type):
    """A local file or folder (relative paths start at the suite's folder); "" = not given."""

    def __init__(self, kind: str = "file", what: str = "a local file"):
        self.kind = kind
        self.what = what

    @property
    def expected(self) -> str:
        return f"{self.what} (a path; relative paths start at the suite's folder; \"\": none)"

    def check(self, value, path, problems):
        if not isinstance(value, str):
            return problems.expected(path, self.expected, value)
        if not value:
            return ""
        resolved = _resolve(value, problems)
        ok = resolved.is_dir() if self.kind == "folder" else resolved.is_file()
        if not ok:
            state = "does not exist" if not resolved.exists() else f"is not a {self.kind}"
            return problems.expected(path, self.expected, value, f"{value!r}, and {resolved} {state}")
        return str(resolved.resolve())


class PathPerResolution(LocalPath):
    """One local file for every resolution, {resolution: file}, or per model {model: file or {resolution: file}}
    (each family scored against its own paper's reference); returned as a str, {int: str} or {str: ...}."""

    @property
    def expected(self) -> str:
        return (f"{self.what}, a mapping {{resolution: such a file}}, or {{model name: a file or {{resolution: "
                "file}}}} (relative paths start at the suite's folder)")

    def _per_resolution(self, value: dict, path, problems) -> dict:
        out = {}
        for res, item in value.items():
            if not is_int(res) or res < 1:
                problems.expected(path + (res,), "a resolution in pixels as the key", res)
                out[res] = INVALID
            else:
                out[res] = LocalPath(self.kind, self.what).check(item, path + (res,), problems)
        return out

    def check(self, value, path, problems):
        if not isinstance(value, dict):
            return super().check(value, path, problems)
        if value and all(isinstance(k, str) for k in value):  # per model
            out = {model: (self._per_resolution(item, path + (model,), problems) if isinstance(item, dict)
                           else LocalPath(self.kind, self.what).check(item, path + (model,), problems))
                   for model, item in value.items()}
            bad = any(v is INVALID or (isinstance(v, dict) and INVALID in v.values()) for v in out.values())
            return INVALID if bad else out
        out = self._per_resolution(value, path, problems)
        return INVALID if INVALID in out.values() else out


def files_of(reference: Any) -> list[str]:
    """Every file a reference option names (a str, {resolution: file} or {model: file or {resolution: file}})."""
    if isinstance(reference, dict):
        return [f for v in reference.values() for f in files_of(v)]
    return [reference] if isinstance(reference, str) and reference else []


def is_per_model(reference: Any) -> bool:
    return isinstance(reference, dict) and bool(reference) and all(isinstance(k, str) for k in reference)


class GuidanceTable(Type):
    """null (the family's own scale), a number, {resolution: number}, or {model: number or {resolution: number}}."""

    expected = ("null, a guidance scale s >= 0, a mapping {resolution: s}, or {model name: s or {resolution: s}} "
                "(U-ViT/DiM convention; DiT's w = s + 1)")

    def check(self, value, path, problems):
        if value is None:
            return None
        if is_number(value) and value >= 0:
            return float(value)
        if not isinstance(value, dict) or not value:
            return problems.expected(path, self.expected, value)
        out: dict = {}
        for k, v in value.items():
            if is_int(k) and k >= 1 and is_number(v) and v >= 0:
                out[k] = float(v)
            elif isinstance(k, str) and (is_number(v) and v >= 0):
                out[k] = float(v)
            elif isinstance(k, str) and isinstance(v, dict) and v and all(
                    is_int(r) and r >= 1 and is_number(s) and s >= 0 for r, s in v.items()):
                out[k] = {r: float(s) for r, s in v.items()}
            else:
                return problems.expected(path + (k,), "s >= 0 (under a resolution) or a model's s / {resolution: s}",
                                         v, f"{describe(v)} under {describe(k)}")
        return out


def guidance_for(table: Any, model: str, resolution: int) -> float | None:
    """The scale a guidance table gives a model at a resolution; None: the table says nothing (family's own)."""
    if table is None or isinstance(table, float):
        return table
    entry = table.get(model, table)
    if isinstance(entry, float):
        return entry
    value = entry.get(resolution)
    return None if value is None or isinstance(value, dict) else float(value)


def reference_for(reference: Any, resolution: int, model: str | None = None) -> str | None:
    """The reference file for ``model`` at ``resolution``; None when the option names none there."""
    if is_per_model(reference):
        reference = reference.get(model)
    if isinstance(reference, dict):
        return reference.get(resolution)
    return reference or None


class IdentifyTable(Type):
    """{sha256: id}: the suite declares which release or reference file (an id of dimbench/fid/protocols.yaml)
    a file with that SHA-256 is, where the package records no hash for it."""

    @property
    def expected(self) -> str:
        t = protocol.table()
        return ("a mapping {SHA-256 (64 lowercase hex digits): a release or reference id}; ids: "
                + ", ".join([*t.releases, *t.references]))

    def check(self, value, path, problems):

        if value is None:
            return {}
        if not isinstance(value, dict):
            return problems.expected(path, self.expected, value)
        t = protocol.table()
        out = {}
        for sha, fid in value.items():
            if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
                return problems.expected(path + (sha,), "a SHA-256 as the key (64 lowercase hex digits)", sha)
            if fid not in t.releases and fid not in t.references:
                return problems.expected(path + (sha,), self.expected, fid)
            out[sha] = fid
        return out


class UpsampleTable(Type):
    """{model: {resolution: source resolution}} (integers, source < resolution); {} or null: no upsampling.

    Per model, because training-free upsampling is a claim of the models it is named for (DiM, dim.md §8): a
    model not named is not sampled above its checkpoint's resolution (its points there are skipped)."""

    expected = ("a mapping {model name: {resolution: the lower checkpoint resolution it is upsampled from}} "
                "(pixels), e.g. {dim_h_2: {1024: 512, 1536: 512}}")

    def check(self, value, path, problems):
        if value is None:
            return {}
        if not isinstance(value, dict):
            return problems.expected(path, self.expected, value)
        out = {}
        for model, table in value.items():
            if not isinstance(model, str):
                return problems.expected(path + (model,), "a model name (training-free upsampling applies to the "
                                         "models named here only)", model)
            if not isinstance(table, dict) or not table:
                return problems.expected(path + (model,), "a mapping {resolution: lower resolution}", table)
            for k, v in table.items():
                if not (is_int(k) and is_int(v) and 1 <= v < k):
                    return problems.expected(path + (model, k), "a lower resolution (pixels) under a resolution", v)
            out[model] = dict(table)
        return out


def upsample_source(table: Any, model: str, resolution: int) -> int | None:
    """The checkpoint resolution ``model`` is upsampled from to ``resolution``, or None (not upsampled)."""
    return ((table or {}).get(model) or {}).get(resolution)
