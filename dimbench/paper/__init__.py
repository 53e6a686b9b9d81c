"""Published numbers as data (``published.yaml``) and how a measurement is compared with one.

    >>> from dimbench.paper import tables, published_at
    >>> tables()["dit_table4"].rows[0]            # PublishedRow(label="DiT-S/8", model="dit_s_8", ...)
    >>> published_at("dit_xl_2", 256)             # every published value for that model and resolution
    >>> compare_published(118.62, Decimal("118.64"))   # -> Comparison(difference=-0.00017, beyond_rounding=...)

A published value carries its printed precision: "77" stands for anything in [76.5, 77.5). A measured value is
compared with that interval as well as with the printed number: ``difference`` is (measured - published) /
published, ``beyond_rounding`` the relative distance from the interval (0 inside it). Only ``beyond_rounding``
says whether the paper's number is reproduced.
"""

from __future__ import annotations

import dataclasses
import functools
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

import yaml

DATA_FILE = "published.yaml"


@dataclasses.dataclass(frozen=True)
class Source:
    paper: str
    table: str
    page: str | None
    note: str = ""

    def cite(self) -> str:
        return f"{self.paper}, {self.table}" + (f", p. {self.page}" if self.page else "")


@dataclasses.dataclass(frozen=True)
class PublishedRow:
    """One row of a paper's table: a model at a resolution, and its published value per measure."""

    label: str
    model: str
    resolution: int
    values: dict[str, Decimal]
    details: dict[str, str] = dataclasses.field(default_factory=dict)  # other keys, e.g. the FID's release


@dataclasses.dataclass(frozen=True)
class PublishedTable:
    id: str
    title: str
    source: Source
    convention: str
    measures: dict[str, str]  # measure (a result-row name) -> the paper's column heading
    rows: tuple[PublishedRow, ...]
    batch: int | None = 1  # the point the numbers apply to; None: any batch
    dtype: str | None = None  # None: any dtype (counts do not depend on it)
    device: str | None = None  # None: any device


@dataclasses.dataclass(frozen=True)
class Comparison:
    difference: float  # (measured - published) / published
    beyond_rounding: float  # relative distance of measured from the published value's rounding interval


def half_unit(value: Decimal) -> Decimal:
    """Half a unit of the last printed digit: "19.70" -> 0.005, "77" -> 0.5, "860e6" -> 5e5."""
    return Decimal(5) * Decimal(10) ** (value.as_tuple().exponent - 1)


def compare_published(measured: float, published: Decimal) -> Comparison:
    pub = float(published)
    half = float(half_unit(published))
    gap = max(0.0, abs(measured - pub) - half)
    return Comparison((measured - pub) / pub, gap / abs(pub))


class PublishedDataError(ValueError):
    """The packaged published.yaml is malformed (a packaging bug: the message names the key)."""


def _parse(data: Any) -> dict[str, PublishedTable]:
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
        raise PublishedDataError(f"{DATA_FILE}: expected a mapping with 'tables'")
    out = {}
    for tid, t in data["tables"].items():
        where = f"{DATA_FILE}: tables.{tid}"
        try:
            src = t["source"]
            measures = dict(t["measures"])
            rows = []
            for i, r in enumerate(t["rows"]):
                values = {}
                for m in (m for m in measures if m in r):
                    if not isinstance(r[m], str):  # a YAML number loses its printed precision ("19.70" -> 19.7)
                        raise PublishedDataError(f"{where}.rows[{i}].{m}: expected the value as printed, a quoted "
                                                 f"string, got {r[m]!r}")
                    values[m] = Decimal(r[m])
                if not values:
                    raise PublishedDataError(f"{where}.rows[{i}]: no value for any of {list(measures)}")
                details = {str(k): str(v) for k, v in r.items() if k not in ("label", "model", "resolution")
                           and k not in measures}
                rows.append(PublishedRow(str(r["label"]), str(r["model"]), int(r["resolution"]), values, details))
            point = {"batch": 1, "dtype": "any", "device": "any", **(t.get("point") or {})}
            batch, dtype, device = (None if point[k] == "any" else point[k] for k in ("batch", "dtype", "device"))
            out[tid] = PublishedTable(
                tid, str(t["title"]), Source(str(src["paper"]), str(src["table"]), src.get("page"),
                                             str(src.get("note") or "")),
                str(t.get("convention") or ""), measures, tuple(rows), None if batch is None else int(batch),
                dtype, device)
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            if isinstance(exc, PublishedDataError):
                raise
            raise PublishedDataError(f"{where}: {type(exc).__name__}: {exc}") from None
    return out


@functools.cache
def tables() -> dict[str, PublishedTable]:
    """Every published table, by id, in the file's order."""
    text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")
    return _parse(yaml.safe_load(text))


def published_at(model: str, resolution: int) -> list[tuple[PublishedTable, PublishedRow]]:
    """Every (table, row) that publishes something for ``model`` at ``resolution``."""
    return [(t, r) for t in tables().values() for r in t.rows if r.model == model and r.resolution == resolution]


__all__ = ["Comparison", "PublishedRow", "PublishedTable", "Source", "compare_published", "half_unit",
           "published_at", "tables"]
