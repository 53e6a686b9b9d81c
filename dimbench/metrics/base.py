"""What every metric shares: the measurement record, the skip signal, and how a point becomes a model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from dimbench.points import SweepPoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class Measurement:
    """One value a metric produced. The worker adds the point's fields, status and timing to make a row."""

    metric: str  # row metric name, e.g. "gmacs", "latency_ms"
    value: float | None
    unit: str  # "GMAC", "GFLOP", "ms", "img/s", "GiB", "count", "TFLOP/s", "%"
    method: str  # how the value was obtained, in words a reader can check
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: str = "ok"  # "ok" | "skipped" (a metric that cannot apply here says why in error)
    error: str | None = None


class SkipMetric(Exception):
    """Raised by a metric that does not apply at this point (for example CUDA-only on the CPU); the reason is
    recorded as a ``skipped`` row, never silently dropped."""


@dataclasses.dataclass(frozen=True)
class Metric:
    """A suite-level metric: ``fn(point, options) -> list[Measurement]``.

    ``produces`` lists the row metric names it writes (used for resume bookkeeping, reports and docs).
    """

    name: str
    produces: tuple[str, ...]
    fn: Callable[[SweepPoint, dict[str, Any]], list[Measurement]]
    description: str
