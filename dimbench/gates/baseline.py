"""The baseline file: what a gate compares a run with.

A baseline is a JSON object (an untrusted file: read with ``json``, every field checked before use)::

    {"format": "dimbench-baseline", "version": 2, "created_at": "...", "suite": "ci_counts",
     "source": {"results": "...", "git": {...}, "versions": {...},
                "device_classes": {"cpu": "cpu: AMD EPYC, 2 threads"}},
     "tolerances": {"latency_rel": 0.3, ...},
     "entries": [{"point_key": "dit_s_2|r32|b1|float32|cpu", "model": "dit_s_2", "resolution": 32, "batch": 1,
                  "dtype": "float32", "device": "cpu", "device_class": "cpu: AMD EPYC, 2 threads",
                  "metric": "gmacs", "value": 0.1, "unit": "GMAC", "status": "ok", "method": "..."},
                 {..., "metric": "latency_rel", "value": 0.49, ..., "samples": [0.48, 0.51, ...]}, ...]}

Entries are the final rows of the gated metrics (those whose declaration has a gate policy, see
:mod:`dimbench.gates`), one per (point, metric): ok values, and oom or skipped points as such (an oom point that
starts to fit is an improvement; a point that starts to run out of memory is a regression). Error rows are left
out with a warning: a baseline holds results, not failures. ``tolerances`` are the declared ones at the time the
baseline was written, kept in the file so that a team can tighten or widen one by editing it (the command line's
``--tolerance`` overrides both).

An ok entry of a row whose gate declares samples (the timing ratios: one value per repeat, the value their median)
keeps them, rounded to 6 significant digits, so that the gate can test a change for significance. Version 2 added
them; a version-1 file (no samples) still loads, and its timing rows are then decided by the tolerance alone.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from dimbench.errors import BaselineError
from dimbench.files import atomic_write, loads
from dimbench.metrics import row_declaration
from dimbench.results import STATUSES, ResultsError, read_environment, read_rows, results_path

FORMAT = "dimbench-baseline"
VERSION = 2
#: the versions this dimbench reads (1: before entries kept their samples)
READABLE_VERSIONS = (1, 2)
#: statuses a baseline entry may have (errors are never baselined).
ENTRY_STATUSES = ("ok", "oom", "skipped")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One gated row of the baseline (or of a run, for comparison)."""

    point_key: str
    model: str
    resolution: int
    batch: int
    dtype: str
    device: str
    device_class: str
    metric: str
    value: float | None
    unit: str
    status: str
    method: str = ""
    samples: tuple[float, ...] | None = None  # the repeats whose median is ``value`` (rows that declare them)

    @property
    def identity(self) -> tuple[str, str]:
        return self.point_key, self.metric

    def point_label(self) -> str:
        """"dit_s_2 32px b1 float32 cpu", plus what else tells the point apart (compile=, pad=, ckpt=)."""
        settings = self.point_key.split("|")[5:]  # the key's optional parts (dimbench.points.SweepPoint.key)
        return " ".join([f"{self.model} {self.resolution}px b{self.batch} {self.dtype} {self.device}", *settings])


@dataclasses.dataclass
class Baseline:
    entries: dict[tuple[str, str], Entry]
    tolerances: dict[str, float]
    suite: str
    created_at: str
    source: dict[str, Any]
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "created_at": self.created_at,
            "suite": self.suite,
            "source": self.source,
            "tolerances": dict(sorted(self.tolerances.items())),
            "entries": [_entry_json(e) for _, e in sorted(self.entries.items())],
        }


def _entry_json(entry: Entry) -> dict[str, Any]:
    data = dataclasses.asdict(entry)
    if entry.samples is None:
        del data["samples"]  # the counts and memory rows: the entry reads as in a version-1 file
    else:
        data["samples"] = [float(f"{s:.6g}") for s in entry.samples]
    return data


def device_class(env: dict[str, Any] | None, device: str) -> str:
    """What timings depend on: the GPU's name for a CUDA row, the CPU model and thread count for a CPU row."""
    env = env or {}
    if str(device).startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        devices = env.get("cuda_devices") if isinstance(env.get("cuda_devices"), list) else []
        name = next((d.get("name") for d in devices if isinstance(d, dict) and d.get("index") == index), None) \
            or env.get("gpu_name")
        return f"cuda: {name}" if name else "cuda: unknown GPU"
    cpu = env.get("cpu") if isinstance(env.get("cpu"), dict) else {}
    model = cpu.get("model") or cpu.get("processor") or "unknown CPU"
    return f"cpu: {model}, {cpu.get('torch_threads', '?')} threads"


@dataclasses.dataclass
class Run:
    """A run folder's gated final rows, its environment, its suite name(s) and what to warn about."""

    entries: dict[tuple[str, str], Entry]
    env: dict[str, Any]
    suites: list[str]
    warnings: list[str]


def run_entries(results_dir: str | os.PathLike) -> Run:
    """The gated final rows of a run folder ({(point_key, metric): Entry}), with its environment.

    The last row of each identity wins (a resumed run with ``--retry-errors`` appends the new value after the
    error); series rows (per step) are not gated. Error rows are returned too (status "error"): the gate treats
    a point that now fails as a regression.
    """
    folder = Path(results_dir)
    if not results_path(folder).exists():
        raise BaselineError(f"{folder}: no {results_path(folder).name} here (expected the output folder of "
                            "`dimbench run`)")
    try:
        rows = read_rows(folder)
        env = read_environment(folder) or {}
    except ResultsError as exc:
        raise BaselineError(str(exc)) from None
    warnings = [] if env else [f"{folder}: no environment.json: the device class is unknown, so timings and "
                               "measured memory are not compared"]
    entries: dict[tuple[str, str], Entry] = {}
    suites = sorted({str(r.get("suite")) for r in rows if r.get("suite")})
    source = results_path(folder)
    for lineno, row in enumerate(rows, start=1):  # read_rows keeps every line but a torn last one, in order
        extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
        if extra.get("step") is not None:
            continue
        metric = row.get("metric")
        if not isinstance(metric, str) or row_declaration(metric).gate_policy is None:
            continue
        entry = _row_entry(row, metric, env, f"{source}:{lineno}")
        if entry.status == "error" and row.get("status") == "ok":
            warnings.append(f"{source}:{lineno}: {metric} at {entry.point_label()} is not a finite number "
                            f"({row.get('value')!r}): counted as an error")
        entries[entry.identity] = entry
    return Run(entries, env, suites, warnings)


def _row_entry(row: dict[str, Any], metric: str, env: dict[str, Any], where: str) -> Entry:
    """The Entry of one result row; a row that is not a well-formed result names its file and line (exit 2). An
    ok row whose value is not a finite number becomes an error entry: the gate must not pass it."""
    def need(key: str, kind: type, what: str) -> Any:
        value = row.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BaselineError(f"{where}: key '{key}': expected {what}, got {json.dumps(value)[:60]}")
        return value

    status = need("status", str, "a status string")
    if status not in STATUSES:
        raise BaselineError(f"{where}: key 'status': expected one of {', '.join(STATUSES)}, got {status!r}")
    value = row.get("value")
    finite = _number(value)
    if status == "ok" and not finite:
        status = "error"
    device = need("device", str, "a device string")
    gate = row_declaration(metric).gate_policy
    extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
    samples = gate.samples(extra) if status == "ok" and gate is not None and gate.samples is not None else None
    return Entry(
        point_key=need("point_key", str, "a point key string"), model=need("model", str, "a model name"),
        resolution=need("resolution", int, "an integer"), batch=need("batch", int, "an integer"),
        dtype=need("dtype", str, "a dtype string"), device=device,
        device_class=device_class(env, device) if env else "unknown", metric=metric,
        value=float(value) if status == "ok" else None, unit=str(row.get("unit") or ""), status=status,
        method=str(row.get("method") or ""),
        samples=tuple(samples) if samples and all(_number(s) for s in samples) else None,
    )


def build_baseline(results_dir: str | os.PathLike, previous: Baseline | None = None) -> tuple[Baseline, list[str]]:
    """A baseline of a run folder; with ``previous``, an update of it: each (point, metric) this run measured
    replaces its entry, every other entry is kept (and said, when it sits at a point of this run: ``--replace``
    drops such stale entries). Returns (baseline, warnings)."""
    run = run_entries(results_dir)
    entries, env, warnings = run.entries, run.env, run.warnings
    errors = [e for e in entries.values() if e.status == "error"]
    if errors:
        warnings.append(f"{len(errors)} error row(s) not baselined (a baseline holds results, not failures), e.g. "
                        f"{errors[0].metric} at {errors[0].point_label()}; rerun with --retry-errors to measure them")
    kept = {k: e for k, e in entries.items() if e.status in ENTRY_STATUSES}
    if not kept:
        raise BaselineError(f"{results_dir}: no gated rows to baseline (the gated metrics are those with a gate "
                            "policy: counts, predicted and measured memory, timings relative to the reference)")
    merged = dict(previous.entries) if previous else {}
    points = {e.point_key for e in kept.values()}
    stale = [e for k, e in merged.items() if e.point_key in points and k not in kept]
    if stale:
        warnings.append(f"{len(stale)} entr(ies) at this run's points that it did not measure are kept from the "
                        f"previous baseline, e.g. {stale[0].metric} at {stale[0].point_label()} (--replace drops them)")
    merged.update(kept)
    tolerances = dict(previous.tolerances) if previous else {}
    for metric in {e.metric for e in kept.values()}:
        tolerances.setdefault(metric, row_declaration(metric).gate_policy.tolerance)
    source = {
        "results": str(Path(results_dir).resolve()),
        "command": env.get("command"),
        "git": env.get("git"),
        "versions": env.get("versions"),
        "device_classes": dict(sorted({e.device: e.device_class for e in kept.values()}.items())),
        "points": len(points),
        "entries": len(kept),
    }
    if previous:  # kept entries came from earlier runs: their provenance stays in the file
        source["earlier"] = [*previous.source.get("earlier", []), {k: v for k, v in previous.source.items()
                                                                   if k != "earlier"}]
    suite = ", ".join(sorted({*(previous.suite.split(", ") if previous and previous.suite else []), *run.suites}))
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return Baseline(merged, tolerances, suite, now, source), warnings


def dumps_baseline(baseline: Baseline) -> str:
    """The file's text: one key per line, but each entry's samples on one line."""
    text = json.dumps(baseline.to_json(), indent=1)
    return re.sub(r'("samples": )\[([^\]]*)\]',
                  lambda m: m[1] + "[" + ", ".join(s.strip() for s in m[2].split(",")) + "]", text) + "\n"


def write_baseline(baseline: Baseline, path: str | os.PathLike) -> Path:
    """Write atomically (:func:`dimbench.files.atomic_write`; its WriteError names the file): a killed write never
    leaves half a file. An update (read, merge, write) holds :func:`dimbench.files.folder_lock` around all three
    (``dimbench baseline`` does)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BaselineError(f"{p}: cannot write the baseline ({exc.strerror or exc})") from None
    atomic_write(p, dumps_baseline(baseline))
    baseline.path = p
    return p


# ---------------------------------------------------------------------------------------------------- reading
def load_baseline(path: str | os.PathLike) -> Baseline:
    """Read and check a baseline file; every problem names the file and the key (BaselineError, exit 2)."""
    p = Path(path)
    try:
        data = loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"{p}: no such baseline file (write one with `dimbench baseline RESULTS_DIR -o {p}`)") \
            from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BaselineError(f"{p}: not readable as JSON ({exc})") from None
    check = _Checker(p)
    if not isinstance(data, dict):
        check.fail("", "a JSON object (a dimbench baseline)", data)
    if data.get("format") != FORMAT:
        check.fail("format", f"{FORMAT!r} (a file written by `dimbench baseline`)", data.get("format"))
    if data.get("version") not in READABLE_VERSIONS or isinstance(data.get("version"), bool):
        versions = " or ".join(map(str, READABLE_VERSIONS))
        check.fail("version", f"{versions} (the baseline versions this dimbench reads)", data.get("version"))
    tolerances = check.mapping(data, "tolerances")
    for metric, tol in tolerances.items():
        if not _number(tol) or tol < 0:
            check.fail(f"tolerances.{metric}", "a number >= 0 (a relative change: 0.3 = 30 %)", tol)
    raw = data.get("entries")
    if not isinstance(raw, list):
        check.fail("entries", "a list of baseline entries", raw)
    entries: dict[tuple[str, str], Entry] = {}
    for i, item in enumerate(raw):
        entry = check.entry(item, f"entries[{i}]")
        if entry.identity in entries:
            check.fail(f"entries[{i}]", f"one entry per (point, metric); {entry.identity} appears twice", item)
        entries[entry.identity] = entry
    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    return Baseline(entries, {k: float(v) for k, v in tolerances.items()}, str(data.get("suite") or ""),
                    str(data.get("created_at") or ""), source, p)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, expected: str, got: Any) -> None:
        shown = json.dumps(got)[:80] if not isinstance(got, str) else repr(got[:80])
        where = f"key '{key}': " if key else ""
        raise BaselineError(f"{self.path}: {where}expected {expected}, got {shown}")

    def mapping(self, data: dict, key: str) -> dict:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.fail(key, "an object", value)
        return value

    def entry(self, item: Any, key: str) -> Entry:
        if not isinstance(item, dict):
            self.fail(key, "an object", item)
        fields = {}
        for name, kind in (("point_key", str), ("model", str), ("dtype", str), ("device", str),
                           ("device_class", str), ("metric", str), ("unit", str), ("status", str)):
            if not isinstance(item.get(name), kind):
                self.fail(f"{key}.{name}", "a string", item.get(name))
            fields[name] = item[name]
        for name in ("resolution", "batch"):
            if not isinstance(item.get(name), int) or isinstance(item.get(name), bool):
                self.fail(f"{key}.{name}", "an integer", item.get(name))
            fields[name] = item[name]
        if fields["status"] not in ENTRY_STATUSES:
            self.fail(f"{key}.status", " or ".join(map(repr, ENTRY_STATUSES)), fields["status"])
        value = item.get("value")
        if fields["status"] == "ok" and not _number(value):
            self.fail(f"{key}.value", "a finite number (the entry's status is ok)", value)
        if fields["status"] != "ok" and value is not None:
            self.fail(f"{key}.value", f"null (the entry's status is {fields['status']})", value)
        method = item.get("method", "")
        samples = item.get("samples")
        if samples is not None and not (isinstance(samples, list) and samples and all(map(_number, samples))
                                        and fields["status"] == "ok"):
            self.fail(f"{key}.samples", "a non-empty list of finite numbers (an ok entry's repeats), or no key",
                      samples)
        return Entry(**fields, value=float(value) if value is not None else None,
                     method=method if isinstance(method, str) else "",
                     samples=tuple(float(s) for s in samples) if samples is not None else None)
