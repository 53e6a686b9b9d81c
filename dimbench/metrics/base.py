"""What a metric is: its declaration (the rows it writes, its options, its time budget) and its context.

A metric declares every row it writes once, as a :class:`Row`: name, unit, the label used in tables and plots,
the task it measures, whether it grows with the batch (per pass) or is already per image, whether it is
deterministic (gates compare it exactly), how it appears in the run's summary table, in the report's DiM ratios
and in the report's plots against resolution (:class:`Plot`, in a :class:`PlotSection` the metric declares).
The worker's task labels, the summary table, the report's labels, sections, plots, per-image handling and ratio
measures are all read from these declarations, so adding a metric is one new file plus its registration
(:func:`dimbench.metrics.register_metric`).

A metric's function is ``fn(point, ctx) -> list[Measurement] | None``. ``ctx`` (:class:`MetricContext`) holds
its options and, for long-running tasks (training, sampling), what lets them live in the runner: ``ctx.emit``
streams rows as they are made (the runner appends each one durably at once), ``ctx.progress`` reports the step,
rate and latest loss to the runner's display, ``ctx.state_dir`` is a folder of the run kept across interrupts for
the task's own checkpoint, and ``ctx.on_disk(row, step)`` says which rows a previous, interrupted run already
wrote (they are never written twice).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dimbench.points import SweepPoint
from dimbench.schema import Field, Number, Record

TASKS = ("count", "forward", "train_step", "train", "sample", "evaluate")


@dataclasses.dataclass(frozen=True)
class Summary:
    """How a row appears in the run's summary table: the column header (unit and how it was obtained), a scale
    applied to the value, the number format, and whether the cell shows the value per image."""

    header: str
    fmt: str = "{:.1f}"
    scale: float = 1.0
    per_image: bool = False


@dataclasses.dataclass(frozen=True)
class Ratio:
    """A lower-is-better measure the report compares as DiM / baseline: its name there and its plot colour."""

    measure: str
    colour: str


@dataclasses.dataclass(frozen=True)
class Gate:
    """How ``dimbench gate`` compares a row with its baseline (see :mod:`dimbench.gates`).

    ``tolerance``: the largest relative change that passes (0.3 = 30 %; 0 = exactly equal). ``worse``: the
    direction that fails ("higher" for times and memory, "lower" for rates); None: a change either way fails
    (counts: a count that moves means the model is no longer the one baselined). ``same_device``: the value
    depends on the hardware (timings, measured memory), so it is compared only when the run and its baseline
    come from the same device class; counts compare anywhere; "cuda": only CUDA rows depend on the card (the
    memory prediction follows the attention kernel and scan backend a GPU would run). ``samples``: for a row
    summarising repeated measurements (a median of timings), how to read them from the row's ``extra`` (a list
    whose median is the value, or None when the row has none); the baseline keeps them, and the gate then calls a
    change beyond the tolerance a regression only when a Mann-Whitney U test finds it significant.
    """

    tolerance: float
    worse: str | None = None
    same_device: bool | str = False  # True, False, or "cuda": the same device class for CUDA rows only
    samples: Callable[[dict[str, Any]], list[float] | None] | None = None

    def __post_init__(self) -> None:
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ValueError(f"Gate.tolerance must be a finite number >= 0, got {self.tolerance!r}")
        if self.worse not in (None, "higher", "lower"):
            raise ValueError(f"Gate.worse must be 'higher', 'lower' or None, got {self.worse!r}")
        if self.same_device not in (True, False, "cuda"):
            raise ValueError(f"Gate.same_device must be True, False or 'cuda', got {self.same_device!r}")

    def needs_same_device(self, device: str) -> bool:
        """Whether a row on ``device`` is compared only within one device class."""
        return self.same_device is True or (self.same_device == "cuda" and str(device).startswith("cuda"))


#: The gate of a deterministic row that declares none: exact equality, either direction fails.
EXACT = Gate(0.0)


@dataclasses.dataclass(frozen=True)
class PlotSection:
    """A section of the report that draws declared rows against resolution: one figure per facet (device, dtype,
    batch, compile setting), or a table where a facet was measured at a single resolution. The rows that name it
    in their :class:`Plot` are its content; it is declared once, by the metric that owns it.

    Texts are templates: ``{facet}`` is the facet ("cpu, float32, batch 1"), ``{heading}`` the heading,
    ``{label}`` a row's label (per image where the batch varies), ``{unit}`` its unit, and in ``caption``
    ``{per}`` says "per image" or "per forward pass". ``caption`` opens each figure's caption; the note on a
    varying batch follows (``batch_note`` replaces its standard text: memory is never per image), then ``notes``,
    then how each value was obtained. ``together``: every row in one panel, told apart by line style (else one
    panel per row); ``title``, ``panel`` and ``ylabel`` name the figure, each panel and its y axis. ``table``:
    what a single-resolution table is called (default: the heading). ``paragraphs``: the section's text;
    ``cpu_paragraph``: added where a facet ran on the CPU. ``order`` places the section among the plotted ones.
    """

    anchor: str
    heading: str
    caption: str
    notes: str = ""
    paragraphs: tuple[str, ...] = ()
    cpu_paragraph: str = ""
    batch_note: str = ""
    together: bool = False
    title: str = "{heading} — {facet}"
    panel: str = "{label}"
    ylabel: str = "{label} [{unit}]"
    table: str = ""
    size: tuple[float, float] = (10.0, 4.6)
    order: int = 100


@dataclasses.dataclass(frozen=True)
class Plot:
    """How the report draws a row against resolution: in ``section``, on a ``"log"`` or ``"linear"`` y axis, with
    ``linestyle`` (what tells rows apart in a section drawn ``together``; a predicted row is drawn hollow and after
    the measured ones). ``spread``: bars from the p10/p90 of the timed repeats the row records. ``growth``: each
    model's growth exponent versus the number of tokens, in the legend and a table. ``only_without``: drawn only
    where the results hold no ``only_without`` row (the same quantity in another unit: GFLOPs where no GMACs)."""

    section: PlotSection
    scale: str = "log"
    linestyle: str = "-"
    spread: bool = False
    growth: bool = False
    only_without: str | None = None

    def __post_init__(self) -> None:
        if self.scale not in ("log", "linear"):
            raise ValueError(f"Plot.scale must be 'log' or 'linear', got {self.scale!r}")


@dataclasses.dataclass(frozen=True)
class CrossCheck:
    """The row measures again, another way, what row ``of`` measures; the report says how far the two agree, in
    words that start ``says`` ("fvcore's count agrees with the meta-device count")."""

    of: str
    says: str


@dataclasses.dataclass(frozen=True)
class Row:
    """One row a metric writes.

    ``per_pass``: the value is that of one pass over the batch (GMACs, times), so per image = value / batch;
    otherwise it is a rate or a quantity that does not divide by the batch (img/s, memory, parameters).
    ``predicted``: the value is predicted, not measured (drawn hollow and dotted). ``deterministic``: the same
    code and point always give the same value (counts): regression gates compare it exactly. ``series``: the
    metric writes this row once per step (``extra["step"]``) as it goes; such rows do not decide whether the
    metric is complete, its other rows do. ``gate``: how regression gates compare it (:class:`Gate`); a
    deterministic row without one is compared exactly, any other row without one is not gated. ``plot``: how the
    report draws it against resolution (:class:`Plot`; None: in the tables only). ``pairs_with``: the row shown
    beside it in the report's tables (a proxy distance's classifier accuracy at the same point).
    ``cross_check``: the row it checks (:class:`CrossCheck`).
    """

    name: str
    unit: str
    label: str
    task: str = "forward"
    per_pass: bool = False
    per_image_label: str | None = None
    predicted: bool = False
    deterministic: bool = False
    series: bool = False
    summary: Summary | None = None
    ratio: Ratio | None = None
    gate: Gate | None = None
    plot: Plot | None = None
    pairs_with: str | None = None
    cross_check: CrossCheck | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"row {self.name!r}: task must be one of {', '.join(TASKS)}, got {self.task!r}")

    @property
    def gate_policy(self) -> Gate | None:
        """The gate this row is compared under: its own, :data:`EXACT` for a deterministic row, else None."""
        return self.gate if self.gate is not None else (EXACT if self.deterministic else None)

    def display(self, per_image: bool = False) -> str:
        """The label; once divided by the batch (``per_image``), the per-image label."""
        if per_image and self.per_pass:
            return self.per_image_label or f"{self.label} per image"
        return self.label

    def per_image(self, value: float | None, batch: int, extra: dict | None = None) -> float | None:
        """A value of this row per image: ``extra["<name>_per_image"]`` when the metric recorded it, else value /
        batch for a per-pass row, the value itself for the others; None when it cannot be known."""
        recorded = (extra or {}).get(f"{self.name}_per_image")
        if recorded is not None:
            return float(recorded)
        if value is None or not self.per_pass:
            return value
        return float(value) / batch if batch and batch > 0 else None


def generic_row(name: str, unit: str | None = None, task: str | None = None) -> Row:
    """The declaration assumed for a row no registered metric declares (results of another version, a plugin
    not loaded here): its own name as label, as measured, not per pass."""
    return Row(name, unit or "", name, task if task in TASKS else "forward")


@dataclasses.dataclass
class Measurement:
    """One value a metric produced. The worker adds the point's fields, the declared unit and task, the status
    and timing to make a result row. Series rows put their step in ``extra["step"]``."""

    metric: str  # a row name the metric declares, e.g. "gmacs", "latency_ms"
    value: float | None
    unit: str | None  # None: the declared unit; otherwise it must equal the declared unit
    method: str  # how the value was obtained, in words a reader can check
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: str = "ok"  # "ok" | "skipped" (a metric that cannot apply here says why in error)
    error: str | None = None

    @property
    def step(self) -> Any:
        return self.extra.get("step")


class SkipMetric(Exception):
    """Raised by a metric that does not apply at this point (for example CUDA-only on the CPU); the reason is
    recorded as a ``skipped`` row, never silently dropped."""


@dataclasses.dataclass(frozen=True)
class Metric:
    """A suite-level metric.

    ``rows`` declares every row it writes. ``options`` declares the options a suite may set for it under
    ``options: {<name>: {...}}`` (``timeout`` is every metric's option and need not be declared). ``timeout``
    is its default time budget in seconds per point: None means the suite's ``timeout``; long tasks set their
    own (``math.inf``: no limit, the task bounds itself by its options). An option that is also a top-level suite
    key (``warmup``, ``repeats``) takes that key's value unless ``options.<name>`` sets it. A long task (training,
    sampling) is a metric like the others: it streams rows and progress through its context, keeps its checkpoint
    in ``ctx.state_dir``, declares its per-step rows ``series`` and its budget (``math.inf``: none).

    ``compiles``: the metric runs the model under the point's ``compile`` setting (torch.compile, see
    :func:`dimbench.metrics.common.compile_model`); a metric that does not (counts, predictions, long tasks) is
    skipped at a compiled point, with the reason: torch.compile does not change what it measures, which the eager
    point of the same suite holds.

    The ``fn`` should be a module-level function: the declaration is handed to worker processes.
    """

    name: str
    rows: tuple[Row, ...]
    fn: Callable[[SweepPoint, MetricContext], list[Measurement] | None]
    description: str
    options: tuple[Field, ...] = ()
    timeout: float | None = None
    compiles: bool = False

    def __post_init__(self) -> None:
        names = [r.name for r in self.rows]
        if not names or len(names) != len(set(names)):
            raise ValueError(f"metric {self.name!r}: rows must be declared, each once (got {names})")
        if all(r.series for r in self.rows):
            raise ValueError(f"metric {self.name!r}: declare at least one row that is not a series (its presence on "
                             "disk is what says the metric is complete)")
        if any(f.name == "timeout" for f in self.options):
            raise ValueError(f"metric {self.name!r}: 'timeout' is every metric's option; set Metric.timeout")

    @property
    def produces(self) -> tuple[str, ...]:
        """The names of the rows it writes."""
        return tuple(r.name for r in self.rows)

    @property
    def final_rows(self) -> tuple[str, ...]:
        """The rows that must all be on disk for the metric to be complete at a point (series rows aside)."""
        return tuple(r.name for r in self.rows if not r.series)

    def check_options(self, options: Mapping[str, Any], model_names: Sequence[str], resolutions: Sequence[int],
                      batches: Sequence[int] = ()) -> list[tuple[str, str]]:
        """``(option, message)`` for each problem of the metric's resolved ``options`` taken as a whole, for a suite
        measuring ``model_names`` at ``resolutions`` (px) and the batch sizes ``batches`` this metric runs at: what
        a run would stop on (a required local file, its checksum, a table that must cover every resolution, a
        gradient accumulation that must divide every batch). The suite reports each at the option's FILE:LINE
        when it is read, before any point runs. Each option's own type is checked already; this default finds no
        further problem, and a metric with whole-option rules overrides it (a subclass: fid's ``FidMetric``)."""
        return []

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"metric {self.name!r} declares no row {name!r} (it declares {', '.join(self.produces)})")

    def option_record(self) -> Record:
        """The record a suite's ``options.<name>`` is checked against (its own options plus ``timeout``)."""
        timeout_doc = ("seconds this metric may run at one point before its worker is killed; when not set: "
                       + ("none (the task bounds itself)" if self.timeout == math.inf else
                          f"{self.timeout:g}" if self.timeout else "the suite's `timeout`"))
        timeout = Field("timeout", Number(0, "seconds", infinite="no limit"), None, timeout_doc)
        return Record([*self.options, timeout], what=f"options of metric '{self.name}'")

    def measure(self, point: SweepPoint, *, out_dir: str | None = None, **options: Any) -> list[Measurement]:
        """Run the metric here and now, outside a runner (tests, notebooks): options at their declared defaults
        unless given; rows a long task emits are collected and returned with the rest."""
        defaults = {k: v for k, v in self.option_record().defaults().items() if k != "timeout"}  # the runner's
        unknown = [k for k in options if k not in defaults]
        if unknown:
            raise TypeError(f"metric {self.name!r} has no option {unknown[0]!r} (options: {', '.join(defaults)})")
        ctx = MetricContext(self, point, {**defaults, **options}, out_dir=out_dir)
        return ctx.collect(self.fn(point, ctx))


class MetricContext:
    """What a metric's function gets besides its point (see the module docstring).

    ``options``: the metric's options (declared defaults, overridden by the suite). ``out_dir``: the run's
    folder (None outside a run).
    """

    def __init__(self, metric: Metric, point: SweepPoint, options: dict[str, Any], *, out_dir: str | None = None,
                 on_rows: Callable[[list[Measurement]], None] | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None,
                 on_disk: Iterable[tuple[str, Any]] = ()):
        self.metric = metric
        self.point = point
        self.options = options
        self.out_dir = out_dir
        self._on_rows = on_rows
        self._on_progress = on_progress
        self._on_disk = set(on_disk)
        self._collected: list[Measurement] = []

    @property
    def state_dir(self) -> Path:
        """A folder for this metric at this point that survives interrupts and resumes (the task's checkpoint);
        inside the run's folder, or a temporary folder outside a run. Created on first use."""
        if getattr(self, "_state_dir", None) is None:
            if self.out_dir is None:
                base = Path(tempfile.mkdtemp(prefix=f"dimbench-{self.metric.name}-"))
            else:
                base = Path(self.out_dir) / STATE_DIR / slug(self.point.key) / self.metric.name
            base.mkdir(parents=True, exist_ok=True)
            self._state_dir = base
        return self._state_dir

    def on_disk(self, row: str, step: Any = None) -> bool:
        """Whether a previous run already wrote this row (at this step): it will not be written again."""
        return (row, step) in self._on_disk

    def emit(self, *measurements: Measurement) -> None:
        """Stream rows now: inside a runner this returns once they are appended to the results durably, so a
        checkpoint saved after it never counts rows that are not on disk (rows already on disk are dropped)."""
        rows = [m for m in measurements if not self.on_disk(m.metric, m.step)]
        if self._on_rows is None:
            self._collected.extend(rows)
        elif rows:
            self._on_rows(rows)

    def progress(self, step: int, total: int | None = None, **info: Any) -> None:
        """Report progress (step of total, and anything worth showing: ``loss=0.12``); the runner's display
        shows it with the rate of steps."""
        if self._on_progress is not None:
            self._on_progress({"step": step, "total": total, **info})

    def collect(self, returned: list[Measurement] | None) -> list[Measurement]:
        """The rows emitted outside a runner followed by those returned at the end."""
        out, self._collected = self._collected, []
        return out + list(returned or [])


STATE_DIR = "state"


def slug(text: str) -> str:
    """A point key made safe as a file name; a short hash keeps keys that differ only in punctuation apart
    (``ckpt=/a/x_y.pt`` and ``ckpt=/a/x/y.pt``), so two points never share a log or a checkpoint."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
