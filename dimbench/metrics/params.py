"""Parameter counts, taken from the model built on the meta device (no memory, no initialisation cost)."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from dimbench.metrics.base import Measurement, Metric, MetricContext, Row, Summary
from dimbench.metrics.common import build_model
from dimbench.points import SweepPoint


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Counts of a model's parameters (shared parameters once) and buffers.

    ``total`` counts every nn.Parameter, frozen or not (so DiT's fixed sine-cosine ``pos_embed``, a Parameter with
    requires_grad=False in the official code, is included, as in the official counts); ``trainable`` only those
    with requires_grad; ``frozen`` names the others. Buffers are not parameters and are reported apart.
    """
    total = trainable = 0
    frozen: list[str] = []
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen.append(name)
    buffers = sum(b.numel() for b in model.buffers())
    return {"total": total, "trainable": trainable, "frozen": frozen, "buffer_elements": buffers}


def params_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    counts = parameter_counts(build_model(point, "meta"))
    extra = {"frozen_parameters": counts["frozen"], "buffer_elements": counts["buffer_elements"]}
    return [
        Measurement(
            "params",
            counts["total"],
            "count",
            "meta-device model: every nn.Parameter, frozen ones included (buffers excluded)",
            extra,
        ),
        Measurement(
            "params_trainable",
            counts["trainable"],
            "count",
            "meta-device model: nn.Parameters with requires_grad=True (frozen tables such as DiT's fixed pos_embed "
            "excluded)",
            dict(extra),
        ),
    ]


PARAMS = Metric(
    name="params",
    rows=(
        Row("params", "count", "parameters", task="count", deterministic=True,
            summary=Summary("params M\n(counted)", scale=1e-6)),
        Row("params_trainable", "count", "trainable parameters", task="count", deterministic=True),
    ),
    fn=params_metric,
    description="parameter counts (total, including frozen tables; and trainable), on the meta device",
)
