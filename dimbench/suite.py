"""Suites: the YAML file's schema (every key's type, default and meaning, declared once below), validation with
``FILE:LINE`` messages, and the expansion of a suite into sweep points.

The keys are documented in docs/suite.md, generated from the declaration (``dimbench schema``). A suite looks
like::

    name: resolution_scaling
    models: [dim_h_2, dit_xl_2, {name: dim_h_2, checkpoint: w.pt, pad_layout: cyclic}]
    resolutions: [256, 512]           # pixels
    batch_sizes: [1]                  # or per resolution: {256: [32, 64], 512: [8]}
    metrics: [params, flops, latency]
    limits:                           # per metric: where it runs (the other points get a "skipped" row)
      latency: {max_gmacs_x_batch: 150}
    options:                          # per metric: its own options (dimbench schema lists them) and timeout
      fvcore: {max_gmacs: 300}
    cpu:                              # applied on the CPU ... (cuda: on a GPU): overrides of SECTION_KEYS
      metrics: [params, flops, memory]

The file is read with ``yaml.safe_load`` semantics; anchors and aliases are refused (an alias bomb would make the
line map explode). Every problem of a file is reported at once, each as ``FILE:LINE: key 'x': expected ..., got
...`` (:class:`SuiteError`, a :class:`~dimbench.errors.UserError`: exit status 2, no traceback). Relative
``checkpoint`` paths are relative to the suite file; a relative ``out`` is relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import types
from pathlib import Path
from typing import Any

import torch
import yaml

import models
from dimbench.cluster.options import SLURM_SECTION
from dimbench.errors import SuiteError, UserError
from dimbench.metrics import METRICS
from dimbench.metrics.common import COMPILE_MODES
from dimbench.metrics.timing import REPEATS, WARMUP
from dimbench.points import Options, SweepPoint
from dimbench.schema import (
    INVALID,
    Choice,
    Integer,
    ListOf,
    MapOf,
    Number,
    PerResolution,
    Problems,
    Record,
    Text,
    Type,
    describe,
    document,
    is_int,
    key,
    path_text,
)

DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICE_SECTIONS = ("cpu", "cuda")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
#: Beyond these sizes a suite still runs, with a warning that says how big it is.
LARGE_SWEEP_POINTS = 200
LARGE_GRID_TOKENS = 512 * 512


def check_device(value: Any) -> bool:
    return isinstance(value, str) and bool(_DEVICE_RE.match(value))


def registered_models() -> list[str]:
    return models.list_models()


def registered_metrics() -> list[str]:
    return list(METRICS)


def metric_options(name: str) -> Record:
    """The options a suite may give a metric (only those given are kept: the rest come from elsewhere)."""
    record = METRICS[name].option_record()
    return Record(record.fields, record.what, partial=True)


MODEL_NAME = Choice(registered_models, "a registered model")
METRIC_NAME = Choice(registered_metrics, "a registered metric")
DTYPE = Choice(DTYPE_NAMES, "a dtype")
RESOLUTIONS = ListOf(Integer(1), "a non-empty list of positive integers (pixels)")
#: ``eager`` (not compiled) or a torch.compile mode.
COMPILE_SETTING = Choice(("eager", *COMPILE_MODES), "eager or a torch.compile mode")


# ----------------------------------------------------------------------------------------------- declarations
@dataclasses.dataclass(frozen=True)
class Limit:
    """Where one metric runs (None: anywhere); ``where`` is FILE:LINE of the rule, for skip reasons."""

    resolutions: tuple[int, ...] | None = key(RESOLUTIONS, None, "only at these resolutions (px)")
    batch_sizes: tuple[int, ...] | None = key(ListOf(Integer(1)), None, "only at these batch sizes")
    dtypes: tuple[str, ...] | None = key(ListOf(DTYPE), None, "only in these dtypes")
    models: tuple[str, ...] | None = key(ListOf(MODEL_NAME), None, "only for these models")
    compile: tuple[str, ...] | None = key(ListOf(COMPILE_SETTING), None,
                                          "only in these compile settings (eager, or torch.compile modes)")
    max_gmacs_x_batch: float | None = key(
        Number(0, note="GMACs per image x batch"), None,
        "only where GMACs per image (meta count) x batch is at most this (the worker checks; the skipped row gives "
        "the cost)")
    where: str = ""


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    checkpoint: str | None = None  # absolute path (relative ones are resolved against the suite file)
    options: Options = Options()  # the family options it sets (models.Family.options)


#: A model entry's own keys; the others are the options of the model's family.
ENTRY_KEYS = ("name", "checkpoint")


class ModelList(Type):
    """``models``: names, or mappings {name, checkpoint, <family options>}; each point identity once."""

    expected = "a non-empty list of model names or mappings {name, checkpoint, <an option of the model's family>}"

    def check(self, value, path, problems):
        if not isinstance(value, list) or not value:
            return problems.expected(path, self.expected, value)
        entries, seen = [], {}
        for i, item in enumerate(value):
            entry = self._entry(item, path + (i,), problems)
            if entry is INVALID:
                entries.append(INVALID)
                continue
            if entry in seen:
                problems.expected(path + (i,), f"each model once (models[{seen[entry]}] is the same model with the "
                                  "same checkpoint and options)", entry.name, f"{entry.name!r} again")
                entries.append(INVALID)
                continue
            seen[entry] = i
            entries.append(entry)
        return INVALID if INVALID in entries else tuple(entries)

    def _entry(self, item, path, problems):
        if isinstance(item, str):
            item, name_path = {"name": item}, path
        elif isinstance(item, dict):
            name_path = path + ("name",)
        else:
            return problems.expected(path, "a model name or a mapping {name, checkpoint, <an option of the model's "
                                     "family>}", item)
        name = MODEL_NAME.check(item.get("name"), name_path, problems)
        if name is INVALID:
            return INVALID
        family = models.family_of_model(name)
        allowed = (*ENTRY_KEYS, *family.options)
        ok = True
        for k in item:
            if k not in allowed:
                owners = [f.display for f in models.list_families() if k in f.options]
                if owners:
                    problems.expected(path + (k,), f"no {k} (a {' and '.join(owners)} option; {name} is a "
                                      f"{family.display} model)", item[k])
                else:
                    problems.expected(path + (k,), f"one of {', '.join(allowed)}", k, f"unknown key {describe(k)}")
                ok = False
        options = {}
        for option, declared in family.options.items():
            if option in item:
                options[option] = Choice(declared.values, " or ".join(declared.values)).check(
                    item[option], path + (option,), problems)
                ok = ok and options[option] is not INVALID
        checkpoint = item.get("checkpoint")
        if checkpoint is not None:
            checkpoint = self._checkpoint(checkpoint, path + ("checkpoint",), problems)
            ok = ok and checkpoint is not INVALID
        return ModelEntry(name, checkpoint, Options(options)) if ok else INVALID

    @staticmethod
    def _checkpoint(value, path, problems):
        if not isinstance(value, str) or not value:
            return problems.expected(path, "a path to a local weights file", value)
        resolved = Path(value).expanduser()
        resolved = resolved if resolved.is_absolute() else problems.base_dir / resolved
        if resolved.is_dir():
            return problems.expected(path, "a weights file (relative paths start at the suite's folder)", value,
                                     f"{value!r}, and {resolved} is a folder")
        if not resolved.is_file():
            return problems.expected(path, "an existing weights file (relative paths start at the suite's folder)",
                                     value, f"{value!r}, and {resolved} does not exist")
        return str(resolved.resolve())


class SectionType(Type):
    """A device section: a mapping, checked key by key against the top level (:func:`section_record`) once the top
    level is known, since what it leaves out is inherited."""

    expected = "a mapping of overrides of the section keys"

    def check(self, value, path, problems):
        return value if isinstance(value, dict) else problems.expected(path, self.expected, value)


LIMITS = MapOf(METRIC_NAME, lambda metric: Record(Limit, what="limit keys"),
               "a mapping {metric: {resolutions, batch_sizes, dtypes, models, compile, max_gmacs_x_batch}}")
OPTIONS = MapOf(METRIC_NAME, metric_options, "a mapping {metric: {option: value}} (dimbench schema lists them)")


@dataclasses.dataclass(frozen=True)
class SuiteFile:
    """Every top-level key of a suite file, with its type, default and meaning: the one statement of the schema."""

    name: str | None = key(Text("a non-empty name without '/'", lambda s: "/" not in s), None,
                           "suite name (default: the file's stem)")
    description: str = key(Text("a string", empty_ok=True), "", "one line for `dimbench list` and reports")
    models: tuple[ModelEntry, ...] = key(ModelList(), doc="registered model names (`dimbench list`), or mappings "
                                         "{name, checkpoint (a local weights file), and any option of the model's "
                                         "family with its value (`dimbench list` shows each family's options: DiM's "
                                         "pad layout)}")
    resolutions: tuple[int, ...] = key(RESOLUTIONS, doc="image sides in pixels")
    batch_sizes: dict = key(PerResolution(ListOf(Integer(1))), [1], "batch sizes (per resolution when a mapping)")
    dtypes: dict = key(PerResolution(ListOf(DTYPE)), ["float32"],
                       "compute dtypes (lower precisions run under torch.autocast with float32 weights)")
    compile: tuple[str, ...] = key(
        ListOf(COMPILE_SETTING), ["eager"],
        "how the timed metrics (latency, train_step, measured memory) run the model: `eager`, or a torch.compile "
        "mode (`default`, `reduce-overhead`, `max-autotune`, `max-autotune-no-cudagraphs`: `torch.compile(model, "
        "mode=...)`, whole model); each setting is its own sweep point (key `...|compile=MODE`; an eager point's "
        "key has no compile part). Compilation is never timed (first call before the warm-up; its wall time is in "
        "the rows' extra). Counting metrics (params, flops, predicted memory) run at the eager point only")
    device: str = key(Text("auto, cpu, cuda or cuda:N", check_device), "auto",
                      "where to run; auto = cuda when available, else cpu (`dimbench run --device` overrides)")
    metrics: tuple[str, ...] = key(ListOf(METRIC_NAME), ["params", "flops"], "suite-level metrics to measure")
    warmup: int = key(WARMUP.type, WARMUP.default, f"{WARMUP.doc} (every timed metric's `warmup` option)")
    repeats: int = key(REPEATS.type, REPEATS.default, f"{REPEATS.doc} (every timed metric's `repeats` option)")
    timeout: float = key(Number(0, "seconds", infinite="no limit"), 600,
                         "seconds one metric may take at one point before its worker is killed (error row), for "
                         "metrics that do not declare their own budget")
    out: str | None = key(Text("a folder path"), None, "output folder (default results/<name>; `--out` overrides)")
    limits: dict = key(LIMITS, {}, "per metric: where it runs; elsewhere it gets a skipped row saying why")
    options: dict = key(OPTIONS, {}, "per metric: its options and `timeout` (`dimbench schema` lists them)")
    cpu: dict = key(SectionType(), {}, "overrides of the section keys on the CPU")
    cuda: dict = key(SectionType(), {}, "overrides of the section keys on a CUDA GPU")
    slurm: Any = key(SLURM_SECTION, {}, "what `dimbench run --launcher slurm` asks SLURM for (the `slurm.*` keys "
                     "below; the command line's options override them)")


#: Keys a device section (cpu:, cuda:) may override: its limits replace the top level's rule for each metric it
#: names; its options are merged key by key over the top level's.
SECTION_KEYS = ("metrics", "resolutions", "batch_sizes", "dtypes", "compile", "warmup", "repeats", "timeout",
                "limits", "options")


def section_record() -> Record:
    return Record([f for f in Record(SuiteFile).fields if f.name in SECTION_KEYS],
                  "keys a device section may override")


# ----------------------------------------------------------------------------------------------------- records
@dataclasses.dataclass(frozen=True)
class Settings:
    """The keys a device section can override, after merging; ``options`` holds every metric's resolved options
    (declared defaults < suite-level warmup/repeats < ``options.<metric>``)."""

    metrics: tuple[str, ...]
    resolutions: tuple[int, ...]
    batch_sizes: dict
    dtypes: dict
    compile: tuple[str, ...]
    warmup: int
    repeats: int
    timeout: float
    limits: dict[str, Limit]
    options: dict[str, dict[str, Any]]
    metrics_where: str  # FILE:LINE the metric list comes from (for skip reasons)

    def at(self, table: dict, resolution: int) -> tuple:
        return table.get(resolution, table.get(None, ()))

    def timeout_of(self, metric: str) -> float:
        """The metric's time budget per point in seconds (math.inf: none)."""
        set_here = self.options[metric]["timeout"]
        if set_here is not None:
            return set_here
        return METRICS[metric].timeout or self.timeout

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change what a measurement gives: each metric's options but its timeout (as JSON
        would hold them). A run folder refuses another run whose fingerprint differs for a metric both measure
        (dimbench.runfolder); limits and device sections decide where a metric runs, not what it gives."""
        options = {m: {k: v for k, v in o.items() if k != "timeout"} for m, o in self.options.items()}
        return json.loads(json.dumps({m: o for m, o in options.items() if o}, default=str))


@dataclasses.dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    description: str
    models: tuple[ModelEntry, ...]
    device: str
    out: str
    sections: dict[str, Settings]  # "cpu" / "cuda" -> merged settings
    warnings: tuple[str, ...] = ()  # FILE:LINE: warning ... (a suite that runs but is unusually large)
    slurm: Any = None  # dimbench.cluster.options.SlurmSettings: the suite's slurm section

    def point_count(self, device_type: str) -> int:
        """How many points the suite has on "cpu" or "cuda" (models x resolutions x batch sizes x dtypes x compile
        settings)."""
        s = self.sections[device_type]
        return (sum(len(s.at(s.batch_sizes, r)) * len(s.at(s.dtypes, r)) for r in s.resolutions) * len(self.models)
                * len(s.compile))

    def settings_for(self, device: str) -> Settings:
        """Merged settings for a resolved device ("cpu", "cuda", "cuda:1")."""
        return self.sections["cuda" if device.startswith("cuda") else "cpu"]

    @property
    def base(self) -> Settings:
        return self.sections["top"]


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


# ------------------------------------------------------------------------------------------------- reading
def _refuse_aliases(text: str, path: Path) -> None:
    """Anchors and aliases are refused: a few nested ones expand to billions of nodes (an "alias bomb")."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise SuiteError([f"{path}:{event.start_mark.line + 1}: YAML anchors and aliases (&name, *name) are "
                              "not accepted in suite files; write the values out"])


def _line_map(node: yaml.Node, problems: Problems, path: tuple = ()) -> dict[tuple, int]:
    """Map each key path (("models", 0, "name"), ...) to its 1-based line; note duplicate keys."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            k = yaml.SafeLoader("").construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else \
                f"<{key_node.id}>"
            line = key_node.start_mark.line + 1
            if k in seen:
                problems.append((path + (k,), f"key '{path_text(path + (k,))}': expected each key once, got it "
                                              f"again (first on line {seen[k]})"))
            seen[k] = line
            lines.update(_line_map(value_node, problems, path + (k,)))
            lines[path + (k,)] = line  # the key's own line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_map(item, problems, path + (i,)))
    return lines


class _Located(Problems):
    """Problems that know the file (for FILE:LINE) and the suite's folder (for relative checkpoints)."""

    def __init__(self, path: Path, lines: dict[tuple, int]):
        super().__init__()
        self.file = path
        self.base_dir = path.parent
        self.lines = lines

    def line(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def where(self, path: tuple) -> str:
        return f"{self.file}:{self.line(path)}"

    def messages(self) -> list[str]:
        located = sorted({(self.line(p), m) for p, m in self})
        return [f"{self.file}:{line}: {msg}" for line, msg in located]


def parse_suite(text: str, path: Path) -> Suite:
    """Validate a suite's text (``path`` is used for messages and relative paths). Raises SuiteError."""
    try:
        _refuse_aliases(text, path)
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
        keys = ", ".join(f.name for f in Record(SuiteFile).fields)
        raise SuiteError([f"{path}:1: expected a mapping of suite keys ({keys}), got {got}"])
    problems = _Located(path, {})
    problems.lines = _line_map(node, problems)
    top = Record(SuiteFile, "suite keys").check(data, (), problems)
    sections = {}
    for section in DEVICE_SECTIONS:
        raw = data.get(section, {})
        merged = section_record().check(raw, (section,), problems, inherit=top) if top is not INVALID else INVALID
        sections[section] = INVALID if merged is INVALID else types.SimpleNamespace(**merged)
    _check_geometry(data, problems)  # on the raw values, so it reports beside the file's other problems
    settings = {}
    if top is not INVALID and INVALID not in sections.values():
        settings["top"] = _settings(top, data, (), top, problems)
        for section in DEVICE_SECTIONS:
            settings[section] = _settings(sections[section], data.get(section) or {}, (section,), top, problems)
    if top is not INVALID and INVALID not in sections.values():
        _check_unmeasured(data, top, sections, problems)
    if problems:
        raise SuiteError(problems.messages())
    name = top.name or path.stem
    suite = Suite(path=path, name=name, description=top.description, models=top.models, device=top.device,
                  out=top.out or f"results/{name}", sections=settings, slurm=top.slurm)
    return dataclasses.replace(suite, warnings=tuple(_size_warnings(suite, problems)))


def _settings(values: Any, raw: dict, at: tuple, top: SuiteFile, problems: _Located) -> Settings | None:
    """Merge a section's values over the top level's, resolve every metric's options, check the tables."""
    limits = {m: dataclasses.replace(rule, where=problems.where(at + ("limits", m)) if "limits" in raw and m in
                                     raw["limits"] else problems.where(("limits", m)))
              for m, rule in ({**top.limits, **values.limits} if at else top.limits).items()}

    # Each option, lowest first: the metric's default, the top-level key of its name (warmup, repeats), the top
    # level's options.<metric>, then the same two from the device section.
    layers = [(top, top.options, {"warmup", "repeats"})]
    if at:
        layers.append((values, values.options if "options" in raw else {}, {"warmup", "repeats"} & set(raw)))
    options = {}
    for metric in dict.fromkeys(top.metrics + values.metrics):
        resolved = dict(METRICS[metric].option_record().defaults())
        for keys, given, named in layers:
            resolved.update({k: getattr(keys, k) for k in named if k in resolved})
            resolved.update(given.get(metric, {}))
        options[metric] = resolved
        # Each metric checks its resolved options as a whole (Metric.check_options: required local files, their
        # checksums, a table covering every resolution): every problem is reported here, before any point runs.
        if metric in values.metrics:
            given = [(at + ("options", metric), values.options if at and "options" in raw else {}),
                     (("options", metric), top.options)]
            names = [entry.name for entry in top.models]
            rule = limits.get(metric)  # the batch sizes it runs at (train: does grad_accum divide each?)
            batches = sorted({b for bs in values.batch_sizes.values() for b in bs
                              if rule is None or rule.batch_sizes is None or b in rule.batch_sizes})
            for option, message in METRICS[metric].check_options(resolved, names, values.resolutions, batches):
                where = next((p + (option,) for p, opts in given if option in (opts.get(metric) or {})),
                             ("options", metric) if metric in top.options else ("metrics",))
                problems.append((where, message))
    for table_key in ("batch_sizes", "dtypes"):
        table = getattr(values, table_key)
        missing = [r for r in values.resolutions if None not in table and r not in table]
        if missing:
            where = at + (table_key,) if table_key in raw else (table_key,)
            problems.expected(where, f"an entry for every resolution ({', '.join(map(str, values.resolutions))})",
                              None, f"none for {', '.join(map(str, missing))}")
    if len(set(values.compile)) < len(values.compile):
        where = at + ("compile",) if "compile" in raw else ("compile",)
        twice = [c for c in dict.fromkeys(values.compile) if values.compile.count(c) > 1]
        problems.expected(where, "each compile setting once", list(values.compile), f"{', '.join(twice)} twice")
    metrics_where = problems.where(at + ("metrics",) if "metrics" in raw else ("metrics",))
    return Settings(metrics=values.metrics, resolutions=values.resolutions, batch_sizes=values.batch_sizes,
                    dtypes=values.dtypes, compile=values.compile, warmup=values.warmup, repeats=values.repeats,
                    timeout=values.timeout,
                    limits=limits, options=options, metrics_where=metrics_where)


def _check_unmeasured(data: dict, top: SuiteFile, sections: dict, problems: _Located) -> None:
    """limits and options name only metrics the suite measures somewhere (a rule for another would do nothing)."""
    measured = list(dict.fromkeys(top.metrics + tuple(m for s in sections.values() for m in s.metrics)))
    for at, raw in [((), data)] + [((s,), data[s]) for s in DEVICE_SECTIONS if isinstance(data.get(s), dict)]:
        for table in ("limits", "options"):
            for metric in raw.get(table) or {}:
                if metric not in measured:
                    problems.expected(at + (table, metric), f"a metric the suite measures ({', '.join(measured)})",
                                      metric)


def _check_geometry(data: dict, problems: _Located) -> None:
    """Every resolution (top level and sections) must give a whole token grid for every (registered) model."""
    raw_models = data.get("models") if isinstance(data.get("models"), list) else []
    names = [m if isinstance(m, str) else m.get("name") if isinstance(m, dict) else None for m in raw_models]
    names = [n for n in dict.fromkeys(names) if isinstance(n, str) and n in registered_models()]
    for at in [()] + [(s,) for s in DEVICE_SECTIONS if isinstance(data.get(s), dict)]:
        raw = (data if not at else data[at[0]]).get("resolutions")
        if not isinstance(raw, list):
            continue
        for i, res in enumerate(raw):
            if not is_int(res) or res < 1:
                continue  # reported by the type check
            for name in names:
                info = models.model_info(name)
                if res % info.resolution_step:
                    problems.expected(at + ("resolutions", i), f"a resolution divisible by {info.resolution_step} for "
                                      f"{name} ({info.resolution_rule()})", res)


def _size_warnings(suite: Suite, problems: _Located) -> list[str]:
    """Warnings for a suite that will run but is unusually large (hundreds of points, huge token grids)."""
    out = []
    for section in DEVICE_SECTIONS:
        points = suite.point_count(section)
        if points > LARGE_SWEEP_POINTS:
            out.append(f"{problems.where(('resolutions',))}: warning: on {section} this suite has {points} points "
                       f"(models x resolutions x batch sizes x dtypes); each runs in its own worker")
    biggest = max(r for s in suite.sections.values() for r in s.resolutions)
    for entry in suite.models:
        info = models.model_info(entry.name)
        side = info.input_size(biggest) // info.patch_size
        if side * side > LARGE_GRID_TOKENS:
            out.append(f"{problems.where(('resolutions',))}: warning: {biggest} px gives {entry.name} a {side}x{side} "
                       f"token grid ({side * side:,} tokens per image): counting on the meta device is cheap, but "
                       "timing and memory may take very long or run out of memory (recorded as oom)")
            break
    return list(dict.fromkeys(out))


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
def resolve_device(requested: str, what: str = "device") -> str:
    """auto -> cuda when torch sees a GPU, else cpu; a CUDA request without a GPU is a user error (``what`` names
    the option in the message: "--device" on a command line)."""
    if not check_device(requested):
        raise UserError(f"{what} {requested!r}: expected auto, cpu, cuda or cuda:N")
    if requested == "cpu":
        return "cpu"

    available = torch.cuda.is_available()
    if requested == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise UserError(f"{what} {requested!r} requested, but torch sees no CUDA GPU here (use --device cpu)")
    if ":" in requested and int(requested.split(":")[1]) >= torch.cuda.device_count():
        raise UserError(f"{what} {requested!r} requested, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return requested


def _limit_reason(limit: Limit, point: SweepPoint) -> str | None:
    for attr, value, unit in (("resolutions", point.resolution, " px"), ("batch_sizes", point.batch, ""),
                              ("dtypes", point.dtype, ""), ("models", point.model, ""),
                              ("compile", point.compile or "eager", "")):
        allowed = getattr(limit, attr)
        if allowed is not None and value not in allowed:
            shown = ", ".join(f"{a}{unit}" for a in allowed)
            return f"suite limit ({limit.where}): {attr} {shown} only, this point has {value}{unit}"
    return None


def expand(suite: Suite, device: str | None = None, out: str | os.PathLike | None = None, *,
           here: bool = True) -> Plan:
    """The run's points, in order (compile setting, resolution, model, batch, dtype), for a device (default: the
    suite's). ``here=False``: the points run elsewhere (cluster nodes), ``device`` is taken as resolved there."""
    resolved = resolve_device(device or suite.device) if here else device
    settings = suite.settings_for(resolved)
    device_type = "cuda" if resolved.startswith("cuda") else "cpu"
    all_metrics = tuple(dict.fromkeys(suite.base.metrics + settings.metrics))
    plans = []
    # Compile setting first (as listed: eager, then the compiled ones), then resolution-major: a run cut short
    # still holds every model at the resolutions it reached, eager before compiled.
    for mode, res, entry in itertools.product(settings.compile, settings.resolutions, suite.models):
        batches, dtypes = settings.at(settings.batch_sizes, res), settings.at(settings.dtypes, res)
        for batch, dtype in itertools.product(batches, dtypes):
            point = SweepPoint(
                suite=suite.name, model=entry.name, resolution=res,
                input_size=models.model_info(entry.name).input_size(res),
                batch=batch, dtype=dtype, device=resolved, metrics=all_metrics, checkpoint=entry.checkpoint,
                options=entry.options, compile=None if mode == "eager" else mode,
            )
            run, skipped, budget = [], {}, {}
            for metric in all_metrics:
                limit = settings.limits.get(metric)
                if metric not in settings.metrics:
                    skipped[metric] = (f"not measured on {device_type}: the suite's {device_type} section "
                                       f"({settings.metrics_where}) leaves it out")
                elif point.compile and not METRICS[metric].compiles:
                    skipped[metric] = (f"not run compiled: {metric} does not run the model under torch.compile "
                                       "(its value does not depend on it); see the eager point")
                elif limit and _limit_reason(limit, point):
                    skipped[metric] = _limit_reason(limit, point)
                else:
                    if limit and limit.max_gmacs_x_batch is not None:
                        budget[metric] = limit.max_gmacs_x_batch
                    run.append(metric)
            plans.append(PointPlan(point, tuple(run), skipped, budget))
    out_dir = Path(out if out is not None else suite.out)
    return Plan(suite=suite, device=resolved, settings=settings, out=out_dir, points=tuple(plans))


def schema_markdown() -> str:
    """docs/suite.md: every suite key, a device section's keys, the limit keys and each metric's options."""
    lines = ["# Suite files", "", "Generated from the declaration in `dimbench/suite.py` (`dimbench schema`); "
             "do not edit by hand.", ""]
    lines += document(Record(SuiteFile), "## Top-level keys")
    lines += ["", f"A device section (`cpu:`, `cuda:`) may override: {', '.join(f'`{k}`' for k in SECTION_KEYS)}. "
              "Its `limits` replace the top level's rule for each metric it names; its `options` are merged key by "
              "key over the top level's.", ""]
    lines += document(Record(Limit), "## `limits.<metric>`")
    lines += [""] + document(SLURM_SECTION, "## `slurm`")
    lines += ["", "Used by `dimbench run --launcher slurm` (and `submitit-local`); not part of the measurement "
              "settings a results folder checks. README, 'On a cluster'."]
    lines += ["", "## `options.<metric>`", "",
              "Options that are also top-level keys (`warmup`, `repeats`) take the key's value unless set here. "
              "Each option, lowest first: the metric's default, the top-level key, the top level's `options`, the "
              "device section's key, the device section's `options`."]
    for name, metric in METRICS.items():
        lines += [""] + document(metric.option_record(), f"### `{name}`")
    return "\n".join(lines) + "\n"


__all__ = ["Limit", "ModelEntry", "Plan", "PointPlan", "Settings", "Suite", "SuiteError", "check_device", "expand",
           "load_suite", "parse_suite", "resolve_device", "schema_markdown"]
