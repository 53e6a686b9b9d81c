"""Suites: the YAML schema (with every default, in one place), validation with file:line messages, and the
expansion of a suite into sweep points.

A suite file (read with ``yaml.safe_load`` semantics) looks like::

    name: resolution_scaling          # default: the file's stem
    description: ...
    models: [dim_h_2, dit_xl_2, {name: dim_h_2, checkpoint: w.pt, pad_layout: cyclic}]
    resolutions: [256, 512]           # pixels
    batch_sizes: [1]                  # or per resolution: {256: [32, 64], 512: [8]}
    dtypes: [float32]                 # or per resolution, like batch_sizes
    device: auto                      # auto | cpu | cuda | cuda:N   (``dimbench run --device`` overrides)
    metrics: [params, flops]          # names in dimbench.metrics.METRICS
    warmup: 2                         # untimed iterations before timing
    repeats: 5                        # timed iterations
    timeout: 600                      # seconds one point may take before its worker is killed
    out: results/resolution_scaling   # default results/<name>; ``dimbench run --out`` overrides
    limits:                           # per metric: where it runs (the other points get a "skipped" row)
      fvcore: {resolutions: [256]}
      latency: {max_gmacs_x_batch: 150}   # GMACs per image (meta count) x batch must not exceed this
    cpu:                              # applied when the run's device is the CPU ...
      metrics: [params, flops, memory, latency]
      batch_sizes: [1]
    cuda:                             # ... or a CUDA GPU: overrides any of the keys in SECTION_KEYS
      batch_sizes: {256: [32], 512: [8]}

A metric of the top-level ``metrics`` list that a device section leaves out gets a ``skipped`` row on that
device, saying so. Relative ``checkpoint`` paths are relative to the suite file; a relative ``out`` is relative
to the working directory.

Every problem of a file is reported at once, each as ``FILE:LINE: key 'x': expected ..., got ...``
(:class:`SuiteError`, a :class:`~dimbench.console.UserError`: exit status 2, no traceback).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dimbench.console import UserError
from dimbench.points import SweepPoint

REQUIRED = object()  # marks a key without a default


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of the schema: the expected form (in words, used in messages), its default, what it means."""

    expected: str
    default: Any
    doc: str


DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICE_SECTIONS = ("cpu", "cuda")
PAD_LAYOUTS = ("lateral", "cyclic")

#: The schema: every top-level key, its expected form and its default. Nothing else holds suite defaults.
SCHEMA: dict[str, Key] = {
    "name": Key("a non-empty name without '/'", None, "suite name (default: the file's stem)"),
    "description": Key("a string", "", "one line for `dimbench list` and reports"),
    "models": Key(
        "a non-empty list of model names or mappings {name, checkpoint, pad_layout}",
        REQUIRED,
        "registered model names (see `dimbench list`)",
    ),
    "resolutions": Key("a non-empty list of positive integers (pixels)", REQUIRED, "image sides in pixels"),
    "batch_sizes": Key(
        "a list of positive integers, or a mapping {resolution: list of positive integers}",
        [1],
        "batch sizes (per resolution when a mapping)",
    ),
    "dtypes": Key(
        f"a list of {', '.join(DTYPE_NAMES)}, or a mapping {{resolution: such a list}}",
        ["float32"],
        "compute dtypes (lower precisions run under torch.autocast)",
    ),
    "device": Key("auto, cpu, cuda or cuda:N", "auto", "where to run; auto = cuda when available, else cpu"),
    "metrics": Key("a non-empty list of metric names", ["params", "flops"], "suite-level metrics to measure"),
    "warmup": Key("an integer >= 0", 2, "untimed iterations before timed ones"),
    "repeats": Key("an integer >= 1", 5, "timed iterations (the median is reported)"),
    "timeout": Key("a number of seconds > 0", 600, "per point: a worker running longer is killed (error row)"),
    "out": Key("a folder path", None, "output folder (default results/<name>)"),
    "limits": Key(
        "a mapping {metric: {resolutions, batch_sizes, dtypes, models, max_gmacs_x_batch}}",
        {},
        "where expensive metrics run; elsewhere they get a skipped row",
    ),
    "cpu": Key("a mapping of overrides for CPU runs", {}, "overrides of SECTION_KEYS on the CPU"),
    "cuda": Key("a mapping of overrides for CUDA runs", {}, "overrides of SECTION_KEYS on a CUDA GPU"),
}
#: Keys a device section (cpu:, cuda:) may override.
SECTION_KEYS = ("metrics", "resolutions", "batch_sizes", "dtypes", "warmup", "repeats", "timeout", "limits")
LIMIT_KEYS = ("resolutions", "batch_sizes", "dtypes", "models", "max_gmacs_x_batch")
MODEL_KEYS = ("name", "checkpoint", "pad_layout")


class SuiteError(UserError):
    """A suite that cannot run; ``errors`` holds one ``FILE:LINE: ...`` message per problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


# --------------------------------------------------------------------------------------------------- records
@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    checkpoint: str | None = None  # absolute path (relative ones are resolved against the suite file)
    pad_layout: str | None = None


@dataclasses.dataclass(frozen=True)
class Limit:
    """Where one metric runs. ``None`` = no restriction. ``where`` = FILE:LINE of the rule, for skip reasons."""

    where: str
    resolutions: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    max_gmacs_x_batch: float | None = None


PerResolution = dict  # {None: values for every resolution} or {resolution: values}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The keys a device section can override, after merging."""

    metrics: tuple[str, ...]
    resolutions: tuple[int, ...]
    batch_sizes: PerResolution
    dtypes: PerResolution
    warmup: int
    repeats: int
    timeout: float
    limits: dict[str, Limit]
    metrics_where: str  # FILE:LINE the metric list comes from (for skip reasons)

    def at(self, table: PerResolution, resolution: int) -> tuple:
        return table.get(resolution, table.get(None, ()))


@dataclasses.dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    description: str
    models: tuple[ModelEntry, ...]
    device: str
    out: str
    base: Settings
    sections: dict[str, Settings]  # "cpu" / "cuda" -> merged settings

    def settings_for(self, device: str) -> Settings:
        """Merged settings for a resolved device ("cpu", "cuda", "cuda:1")."""
        return self.sections["cuda" if device.startswith("cuda") else "cpu"]


@dataclasses.dataclass(frozen=True)
class PointPlan:
    """One point of a run: what the worker measures, and what is recorded as skipped without running."""

    point: SweepPoint
    run: tuple[str, ...]  # suite-level metrics to measure, in order
    skipped: dict[str, str]  # suite-level metric -> reason
    budget: dict[str, float]  # suite-level metric -> max GMACs x batch (checked by the worker)


@dataclasses.dataclass(frozen=True)
class Plan:
    suite: Suite
    device: str
    settings: Settings
    out: Path
    points: tuple[PointPlan, ...]


# ---------------------------------------------------------------------------------------- registries (lazy)
def known_models() -> dict[str, Any]:
    """name -> models.ModelInfo of every registered model."""
    import models

    return {name: models.model_info(name) for name in models.list_models()}


def known_metrics() -> dict[str, Any]:
    """name -> dimbench.metrics.Metric of every suite-level metric."""
    from dimbench.metrics import METRICS

    return dict(METRICS)


# ------------------------------------------------------------------------------------------------- helpers
def describe(value: Any) -> str:
    """How a YAML value is named in a message ("got ...")."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _path_str(path: tuple) -> str:
    """("models", 0, "name") -> "models[0].name"."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool) and out:
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _scalar(node: yaml.Node) -> Any:
    """The Python value safe_load gives a node (so 256 is an int and 'yes' a bool, as in the loaded data)."""
    if not isinstance(node, yaml.ScalarNode):
        return f"<{node.id}>"  # a list or mapping used as a key: only ever reported, never looked up
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node)
    finally:
        loader.dispose()


def _line_map(node: yaml.Node, errors: list[tuple[int, str]], path: tuple = ()) -> dict[tuple, int]:
    """Map each key path (("models", 0, "name"), ...) to its 1-based line; note duplicate keys in ``errors``."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                errors.append((line, f"key '{_path_str(path + (key,))}': expected each key once, got it again "
                                     f"(first on line {seen[key]})"))
            seen[key] = line
            lines.update(_line_map(value_node, errors, path + (key,)))
            lines[path + (key,)] = line  # the key's own line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_map(item, errors, path + (i,)))
    return lines


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(value: Any) -> bool:
    return isinstance(value, str) and bool(_DEVICE_RE.match(value))


# ------------------------------------------------------------------------------------------------ validation
class _Checker:
    """Collects every problem of one file with its line."""

    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path = path
        self.lines = lines
        self.errors: list[tuple[int, str]] = []

    def line(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def where(self, path: tuple) -> str:
        return f"{self.path}:{self.line(path)}"

    def error(self, path: tuple, expected: str, got: str) -> None:
        self.errors.append((self.line(path), f"key '{_path_str(path)}': expected {expected}, got {got}"))

    # --- typed readers: return the value, or None after recording an error
    def int_list(self, value: Any, path: tuple, expected: str, *, minimum: int = 1) -> tuple[int, ...] | None:
        if not isinstance(value, list) or not value:
            self.error(path, expected, describe(value))
            return None
        ok = True
        for i, v in enumerate(value):
            if not _is_int(v) or v < minimum:
                self.error(path + (i,), f"an integer >= {minimum}", describe(v))
                ok = False
        return tuple(value) if ok else None

    def str_list(self, value: Any, path: tuple, expected: str, allowed: dict | tuple, what: str) -> tuple | None:
        if not isinstance(value, list) or not value:
            self.error(path, expected, describe(value))
            return None
        ok = True
        for i, v in enumerate(value):
            if not isinstance(v, str) or v not in allowed:
                self.error(path + (i,), f"{what} ({', '.join(allowed) or 'none registered'})", describe(v))
                ok = False
        return tuple(value) if ok else None

    def per_resolution(self, value: Any, path: tuple, expected: str, read: Callable) -> PerResolution | None:
        if isinstance(value, dict):
            table: PerResolution = {}
            ok = True
            for res, items in value.items():
                if not _is_int(res) or res < 1:
                    self.error(path + (res,), "a resolution in pixels (positive integer) as the key", describe(res))
                    ok = False
                    continue
                got = read(items, path + (res,))
                if got is None:
                    ok = False
                else:
                    table[res] = got
            if not value:
                self.error(path, expected, "an empty mapping")
                return None
            return table if ok else None
        got = read(value, path)
        return None if got is None else {None: got}


def _read_settings(
    ck: _Checker, data: dict, path: tuple, metrics_known: dict, models_known: dict, parent: Settings | None
) -> Settings | None:
    """Read the overridable keys of ``data`` (top level when parent is None, else a device section)."""
    ok = True

    def get(key):
        if key in data:
            return data[key], True
        if parent is not None:
            return getattr(parent, key), False
        default = SCHEMA[key].default
        return (list(default) if isinstance(default, list) else default), True

    def fail():
        nonlocal ok
        ok = False

    metrics_val, fresh = get("metrics")
    metrics = metrics_val
    if fresh:
        metrics = ck.str_list(metrics_val, path + ("metrics",), SCHEMA["metrics"].expected, metrics_known,
                              "a registered metric")
        if metrics is None:
            fail()
    metrics_where = ck.where(path + ("metrics",)) if "metrics" in data else (
        parent.metrics_where if parent else ck.where(("metrics",)))

    res_val, fresh = get("resolutions")
    resolutions = res_val
    if fresh:
        if res_val is REQUIRED:
            ck.errors.append((1, f"key 'resolutions': expected {SCHEMA['resolutions'].expected}, got nothing "
                                 "(the key is missing)"))
            resolutions = None
        else:
            resolutions = ck.int_list(res_val, path + ("resolutions",), SCHEMA["resolutions"].expected)
        if resolutions is None:
            fail()

    bs_val, fresh = get("batch_sizes")
    batch_sizes = bs_val
    if fresh:
        batch_sizes = ck.per_resolution(
            bs_val, path + ("batch_sizes",), SCHEMA["batch_sizes"].expected,
            lambda v, p: ck.int_list(v, p, "a non-empty list of positive integers"),
        )
        if batch_sizes is None:
            fail()

    dt_val, fresh = get("dtypes")
    dtypes = dt_val
    if fresh:
        dtypes = ck.per_resolution(
            dt_val, path + ("dtypes",), SCHEMA["dtypes"].expected,
            lambda v, p: ck.str_list(v, p, f"a non-empty list of {', '.join(DTYPE_NAMES)}", DTYPE_NAMES, "a dtype"),
        )
        if dtypes is None:
            fail()

    scalars = {}
    for key, test in (
        ("warmup", lambda v: _is_int(v) and v >= 0),
        ("repeats", lambda v: _is_int(v) and v >= 1),
        ("timeout", lambda v: _is_number(v) and v > 0),
    ):
        val, fresh = get(key)
        if fresh and not test(val):
            ck.error(path + (key,), SCHEMA[key].expected, describe(val))
            fail()
        scalars[key] = val

    lim_val, fresh = get("limits")
    limits = lim_val
    if fresh:
        limits = _read_limits(ck, lim_val, path + ("limits",), metrics_known, models_known)
        if limits is None:
            fail()
        elif parent is not None:
            limits = {**parent.limits, **limits}  # a section's rule for a metric replaces the top-level one

    if not ok:
        return None
    # Per-resolution tables must cover every resolution they are used with.
    for key, table in (("batch_sizes", batch_sizes), ("dtypes", dtypes)):
        if None not in table:
            missing = [r for r in resolutions if r not in table]
            if missing:
                where = path + (key,) if key in data else (key,)
                ck.error(where, f"an entry for every resolution ({', '.join(map(str, resolutions))})",
                         f"none for {', '.join(map(str, missing))}")
                ok = False
    if not ok:
        return None
    return Settings(
        metrics=tuple(metrics), resolutions=tuple(resolutions), batch_sizes=batch_sizes, dtypes=dtypes,
        warmup=scalars["warmup"], repeats=scalars["repeats"], timeout=float(scalars["timeout"]), limits=limits,
        metrics_where=metrics_where,
    )


def _read_limits(ck: _Checker, value: Any, path: tuple, metrics_known: dict, models_known: dict):
    if not isinstance(value, dict):
        ck.error(path, SCHEMA["limits"].expected, describe(value))
        return None
    out: dict[str, Limit] = {}
    ok = True
    for metric, rule in value.items():
        p = path + (metric,)
        if metric not in metrics_known:
            ck.error(p, f"a registered metric as the key ({', '.join(metrics_known) or 'none registered'})",
                     describe(metric))
            ok = False
            continue
        if not isinstance(rule, dict) or not rule:
            ck.error(p, f"a mapping with any of {', '.join(LIMIT_KEYS)}", describe(rule))
            ok = False
            continue
        fields: dict[str, Any] = {}
        for key, v in rule.items():
            q = p + (key,)
            if key == "resolutions" or key == "batch_sizes":
                fields[key] = ck.int_list(v, q, "a non-empty list of positive integers")
            elif key == "dtypes":
                fields[key] = ck.str_list(v, q, f"a non-empty list of {', '.join(DTYPE_NAMES)}", DTYPE_NAMES,
                                          "a dtype")
            elif key == "models":
                fields[key] = ck.str_list(v, q, "a non-empty list of model names", models_known, "a registered model")
            elif key == "max_gmacs_x_batch":
                fields[key] = float(v) if _is_number(v) and v > 0 else None
                if fields[key] is None:
                    ck.error(q, "a number > 0 (GMACs per image x batch)", describe(v))
            else:
                ck.error(q, f"one of {', '.join(LIMIT_KEYS)}", f"unknown key {describe(key)}")
                fields[key] = None
            if fields[key] is None:
                ok = False
        if ok:
            out[metric] = Limit(where=ck.where(p), **fields)
    return out if ok else None


def _read_models(ck: _Checker, value: Any, models_known: dict, base_dir: Path) -> tuple[ModelEntry, ...] | None:
    path = ("models",)
    if value is REQUIRED:
        ck.errors.append((1, f"key 'models': expected {SCHEMA['models'].expected}, got nothing (the key is missing)"))
        return None
    if not isinstance(value, list) or not value:
        ck.error(path, SCHEMA["models"].expected, describe(value))
        return None
    known = ", ".join(models_known) or "none registered"
    entries = []
    ok = True
    for i, item in enumerate(value):
        p = path + (i,)
        if isinstance(item, str):
            item = {"name": item}
            name_path = p
        elif isinstance(item, dict):
            name_path = p + ("name",)
            for key in item:
                if key not in MODEL_KEYS:
                    ck.error(p + (key,), f"one of {', '.join(MODEL_KEYS)}", f"unknown key {describe(key)}")
                    ok = False
        else:
            ck.error(p, "a model name or a mapping {name, checkpoint, pad_layout}", describe(item))
            ok = False
            continue
        name = item.get("name")
        if not isinstance(name, str) or name not in models_known:
            ck.error(name_path, f"a registered model ({known})", describe(name))
            ok = False
            continue
        checkpoint = item.get("checkpoint")
        if checkpoint is not None:
            if not isinstance(checkpoint, str) or not checkpoint:
                ck.error(p + ("checkpoint",), "a path to a local weights file", describe(checkpoint))
                ok = False
            else:
                resolved = Path(checkpoint).expanduser()
                resolved = resolved if resolved.is_absolute() else base_dir / resolved
                if not resolved.is_file():
                    ck.error(p + ("checkpoint",), "an existing weights file (relative paths start at the suite's "
                             "folder)", f"{checkpoint!r}, and {resolved} does not exist")
                    ok = False
                checkpoint = str(resolved.resolve())
        pad = item.get("pad_layout")
        if pad is not None:
            if pad not in PAD_LAYOUTS:
                ck.error(p + ("pad_layout",), " or ".join(PAD_LAYOUTS), describe(pad))
                ok = False
            elif models_known[name].family != "dim":
                ck.error(p + ("pad_layout",), f"no pad_layout (a DiM option; {name} is family "
                         f"{models_known[name].family})", describe(pad))
                ok = False
        entries.append(ModelEntry(name, checkpoint, pad))
    return tuple(entries) if ok else None


def _check_geometry(ck: _Checker, entries: list[ModelEntry], models_known: dict, raw: Any, path: tuple) -> None:
    """Every resolution must give a whole token grid for every model.

    Works on the raw list, so it reports alongside other problems of the same file (valid items only).
    """
    if not isinstance(raw, list):
        return
    for i, res in enumerate(raw):
        if not _is_int(res) or res < 1:
            continue  # reported by the type check
        for entry in entries:
            info = models_known[entry.name]
            patch = info.patch_size
            if info.latent:
                if res % (8 * patch):
                    ck.error(path + (i,), f"a resolution divisible by {8 * patch} for {entry.name} (a latent "
                             f"model: resolution/8 must be divisible by its patch {patch})", str(res))
            elif res % patch:
                ck.error(path + (i,), f"a resolution divisible by {patch} for {entry.name} (a pixel model: "
                         f"resolution must be divisible by its patch {patch})", str(res))


def _raw_model_names(raw: Any) -> list[str]:
    if not isinstance(raw, list):
        return []
    names = [item if isinstance(item, str) else item.get("name") if isinstance(item, dict) else None for item in raw]
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))


def parse_suite(text: str, path: Path) -> Suite:
    """Validate a suite's text (``path`` is used for messages and relative paths). Raises SuiteError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        raise SuiteError([f"{path}:{line}: invalid YAML: {problem}" + (f" ({context})" if context else "")]) \
            from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else describe(data)
        raise SuiteError([f"{path}:1: expected a mapping of suite keys ({', '.join(SCHEMA)}), got {got}"])

    dup: list[tuple[int, str]] = []
    lines = _line_map(node, dup)
    ck = _Checker(path, lines)
    ck.errors.extend(dup)

    try:
        models_known = known_models()
    except Exception as exc:  # the registry itself is broken: say so instead of calling every model unknown
        raise SuiteError([f"{path}:1: cannot check model names: importing the model registry failed: "
                          f"{type(exc).__name__}: {exc}"]) from None
    try:
        metrics_known = known_metrics()
    except Exception as exc:
        raise SuiteError([f"{path}:1: cannot check metric names: importing dimbench.metrics failed: "
                          f"{type(exc).__name__}: {exc}"]) from None

    for key in data:
        if key not in SCHEMA:
            ck.error((key,), f"one of the suite keys ({', '.join(SCHEMA)})", f"unknown key {describe(key)}")

    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        ck.error(("name",), SCHEMA["name"].expected, describe(name))
    description = data.get("description", SCHEMA["description"].default)
    if not isinstance(description, str):
        ck.error(("description",), SCHEMA["description"].expected, describe(description))
    device = data.get("device", SCHEMA["device"].default)
    if not check_device(device):
        ck.error(("device",), SCHEMA["device"].expected, describe(device))
    out = data.get("out", SCHEMA["out"].default)
    if out is None:
        out = f"results/{name}"
    elif not isinstance(out, str) or not out:
        ck.error(("out",), SCHEMA["out"].expected, describe(out))

    entries = _read_models(ck, data.get("models", REQUIRED), models_known, path.parent)
    base = _read_settings(ck, data, (), metrics_known, models_known, None)

    sections: dict[str, Settings] = {}
    for section in DEVICE_SECTIONS:
        raw = data.get(section, {})
        if raw is None or not isinstance(raw, dict):
            ck.error((section,), f"a mapping with any of {', '.join(SECTION_KEYS)}", describe(raw))
            continue
        bad = [k for k in raw if k not in SECTION_KEYS]
        for k in bad:
            ck.error((section, k), f"one of the keys a device section may override ({', '.join(SECTION_KEYS)})",
                     f"unknown key {describe(k)}")
        if base is None or bad:
            continue
        merged = _read_settings(ck, raw, (section,), metrics_known, models_known, base)
        if merged is not None:
            sections[section] = merged

    valid_models = [ModelEntry(n) for n in _raw_model_names(data.get("models")) if n in models_known]
    _check_geometry(ck, valid_models, models_known, data.get("resolutions"), ("resolutions",))
    for section in DEVICE_SECTIONS:
        if isinstance(data.get(section), dict):
            _check_geometry(ck, valid_models, models_known, data[section].get("resolutions"), (section, "resolutions"))

    if ck.errors:
        errors = sorted(set(ck.errors), key=lambda e: (e[0], e[1]))
        raise SuiteError([f"{path}:{line}: {msg}" for line, msg in errors])
    return Suite(path=path, name=name, description=description, models=entries, device=device, out=out,
                 base=base, sections=sections)


def load_suite(path: str | os.PathLike) -> Suite:
    """Read and validate a suite file. Raises SuiteError (one message per problem) or UserError."""
    p = Path(path)
    if not p.exists():
        hint = ""
        candidate = Path(__file__).resolve().parent.parent / "suites" / f"{p.stem}.yaml"
        if not p.suffix and candidate.exists():
            hint = f" (did you mean {candidate}?)"
        raise UserError(f"{p}: no such suite file{hint}")
    if p.is_dir():
        raise UserError(f"{p}: is a folder, expected a suite .yaml file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read the suite file ({exc})") from None
    return parse_suite(text, p)


# -------------------------------------------------------------------------------------------------- expansion
def resolve_device(requested: str) -> str:
    """auto -> cuda when torch sees a GPU, else cpu; a CUDA request without a GPU is a user error."""
    if not check_device(requested):
        raise UserError(f"device {requested!r}: expected auto, cpu, cuda or cuda:N")
    if requested == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if requested == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise UserError(f"device {requested!r} requested, but torch sees no CUDA GPU here (use --device cpu)")
    if ":" in requested and int(requested.split(":")[1]) >= torch.cuda.device_count():
        raise UserError(f"device {requested!r} requested, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return requested


def input_size_for(model: str, resolution: int, models_known: dict | None = None) -> int:
    """Side of the model's input: resolution/8 for latent models, the resolution itself for pixel models."""
    info = (models_known or known_models())[model]
    return resolution // 8 if info.latent else resolution


def _limit_reason(limit: Limit, point: SweepPoint) -> str | None:
    for attr, value, unit in (
        ("resolutions", point.resolution, " px"),
        ("batch_sizes", point.batch, ""),
        ("dtypes", point.dtype, ""),
        ("models", point.model, ""),
    ):
        allowed = getattr(limit, attr)
        if allowed is not None and value not in allowed:
            shown = ", ".join(f"{a}{unit}" for a in allowed)
            return f"suite limit ({limit.where}): {attr} {shown} only, this point has {value}{unit}"
    return None


def expand(suite: Suite, device: str | None = None, out: str | os.PathLike | None = None) -> Plan:
    """The run's points, in order (resolution, model, batch, dtype), for a device (default: the suite's)."""
    resolved = resolve_device(device or suite.device)
    settings = suite.settings_for(resolved)
    models_known = known_models()
    device_type = "cuda" if resolved.startswith("cuda") else "cpu"
    plans = []
    # Resolution-major: a run cut short still holds every model at the resolutions it reached.
    for res, entry in itertools.product(settings.resolutions, suite.models):
        batches, dtypes = settings.at(settings.batch_sizes, res), settings.at(settings.dtypes, res)
        for batch, dtype in itertools.product(batches, dtypes):
            all_metrics = tuple(dict.fromkeys(suite.base.metrics + settings.metrics))
            point = SweepPoint(
                suite=suite.name, model=entry.name, resolution=res,
                input_size=input_size_for(entry.name, res, models_known), batch=batch, dtype=dtype,
                device=resolved, metrics=all_metrics, checkpoint=entry.checkpoint, pad_layout=entry.pad_layout,
            )
            run, skipped, budget = [], {}, {}
            for metric in all_metrics:
                if metric not in settings.metrics:
                    skipped[metric] = (f"not measured on {device_type}: the suite's {device_type} section "
                                       f"({settings.metrics_where}) leaves it out")
                    continue
                limit = settings.limits.get(metric)
                reason = _limit_reason(limit, point) if limit else None
                if reason:
                    skipped[metric] = reason
                    continue
                if limit and limit.max_gmacs_x_batch is not None:
                    budget[metric] = limit.max_gmacs_x_batch
                run.append(metric)
            plans.append(PointPlan(point, tuple(run), skipped, budget))
    out_dir = Path(out if out is not None else suite.out)
    return Plan(suite=suite, device=resolved, settings=settings, out=out_dir, points=tuple(plans))
