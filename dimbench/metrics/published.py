"""``published``: the numbers the papers publish for a point, written as ``published_<measure>`` rows.

Not a measurement: each row's value is the paper's number (``dimbench/paper/published.yaml``), its method names the
source, and ``extra`` holds the table, the printed precision and the point the number applies to (a throughput
published at batch 64 in float32 on a GPU). The report's "Paper tables" section puts each table in the paper's
layout with the measured value, the published one and the deviation. A point with nothing published gets skipped
rows saying so.
"""

from __future__ import annotations

from dimbench.metrics.base import Measurement, Metric, MetricContext, Row
from dimbench.paper import half_unit, published_at
from dimbench.points import SweepPoint

#: measure -> (unit, label, task) of its published row.
MEASURES = {
    "params": ("count", "published parameters", "count"),
    "gmacs": ("GMAC", "published GMACs (the papers' “GFLOPs”)", "count"),
    "throughput": ("img/s", "published throughput", "forward"),
    "fid": ("FID", "published FID-50K", "evaluate"),
}


def published_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    found = {}
    for table, row in published_at(point.model, point.resolution):
        for measure, value in row.values.items():
            found.setdefault(measure, (table, row, value))  # the first table that publishes it
    out = []
    for measure, (unit, _, _) in MEASURES.items():
        name = f"published_{measure}"
        if measure not in found:
            out.append(Measurement(name, None, unit, "published value", status="skipped",
                                   error=f"nothing published for {point.model} at {point.resolution} px"))
            continue
        table, row, value = found[measure]
        extra = {"table_id": table.id, "table": table.title, "row_label": row.label, "source": table.source.cite(),
                 "source_note": table.source.note, "convention": table.convention, "printed": str(value),
                 "half_unit": float(half_unit(value)), "applies_to": {"batch": table.batch, "dtype": table.dtype,
                                                                     "device": table.device or "any"}}
        out.append(Measurement(name, float(value), unit, f"published: {table.source.cite()}", extra))
    return out


PUBLISHED = Metric(
    name="published",
    rows=tuple(Row(f"published_{m}", unit, label, task=task) for m, (unit, label, task) in MEASURES.items()),
    fn=published_metric,
    description="the papers' published numbers for the point (params, GMACs, throughput, FID) with their "
    "sources, for the report's paper tables (not measurements)",
)
