"""``gmacs_variants``: DiM's count under the hypotheses that could explain a published count that differs.

The DiM-H/2 counts cited by later papers (210 GMACs at 256 px, 708 at 512) are two thirds of what counting the
architecture gives (311 / 1046). Each row here is DiM's count under one hypothesis of how the cited number was
obtained, measured with the same meta-device counter, per component (``models.profiling`` named ranges):

- ``gmacs_no_scan``: a counter that does not see the selective scan (a custom op);
- ``gmacs_no_dwconv``: nor the depth-wise convolutions (the causal conv1d and the 3x3 grid convs);
- ``gmacs_mamba_fused``: a tracing counter on the official code, whose fast path runs conv1d, x_proj, dt_proj,
  the scan and out_proj inside mamba-ssm's fused ``mamba_inner_fn`` (one autograd Function whose inside a
  tracer does not see): the count keeps only what runs outside it;
- ``gmacs_unpadded``: the h·w grid tokens instead of the padded sequence (5 + (h+3)(w+3)): the per-token
  components scaled by h·w / sequence length (derived from the count, labelled so);
- ``gmacs_input_7_8``: the whole count at 7/8 of the side (224 px for 256, 448 for 512).

The report compares each with the published number and names the closest (:mod:`dimbench.report.paper`).
"""

from __future__ import annotations

import dataclasses

import models
from dimbench.metrics.base import Measurement, Metric, MetricContext, Row, SkipMetric
from dimbench.metrics.profile import count_components
from dimbench.points import SweepPoint

# Components (models.profiling) that run once per token of DiM's padded sequence.
PER_TOKEN = ("norm_mod", "in_proj", "conv1d", "ssm_proj", "scan", "out_proj", "residual", "skip_fusion",
             "scan_switch", "pad")
MAMBA_FUSED = ("conv1d", "ssm_proj", "scan", "out_proj")

VARIANTS = {
    "gmacs_no_scan": "without the selective scan (a counter blind to the custom op)",
    "gmacs_no_dwconv": "without the scan and the depth-wise convs (conv1d, 3x3 grid convs)",
    "gmacs_mamba_fused": "without what mamba-ssm's fused mamba_inner_fn runs (conv1d, x_proj, dt_proj, scan, "
                         "out_proj): a tracing counter on the official fast path",
    "gmacs_unpadded": "the h·w grid tokens instead of the padded sequence (per-token components scaled; derived)",
    "gmacs_input_7_8": "the whole count at 7/8 of the side (224 px for 256, 448 for 512)",
}


def _gmacs(flops: dict[str, int], without: tuple[str, ...] = ()) -> float:
    return sum(n for c, n in flops.items() if c not in without) / 2e9


def variants_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    family = models.family_of_model(point.model)
    if family.name != "dim":
        raise SkipMetric("DiM only: the hypotheses concern DiM's published counts")
    flops = count_components(point).flops
    h = w = point.input_size // models.model_info(point.model).patch_size
    tokens, seq = h * w, models.dim.sequence_length(h, w)
    per_token = sum(flops.get(c, 0) for c in PER_TOKEN)
    unpadded = (sum(flops.values()) - per_token * (1 - tokens / seq)) / 2e9
    side = point.input_size * 7 // 8
    smaller = dataclasses.replace(point, input_size=side, resolution=point.resolution * 7 // 8)
    values = {
        "gmacs_no_scan": _gmacs(flops, ("scan",)),
        "gmacs_no_dwconv": _gmacs(flops, ("scan", "conv1d", "grid_conv")),
        "gmacs_mamba_fused": _gmacs(flops, MAMBA_FUSED),
        "gmacs_unpadded": unpadded,
        "gmacs_input_7_8": _gmacs(count_components(smaller).flops),
    }
    extra = {"batch": point.batch, "components_gmacs": {c: n / 2e9 for c, n in flops.items()},
             "grid_tokens": tokens, "sequence_length": seq, "input_7_8": smaller.input_size}
    method = "meta-device FlopCounterMode per named component (1 MAC = 2 FLOPs), at the point's batch"
    return [Measurement(name, value, "GMAC", f"{VARIANTS[name]}; {method}", dict(extra))
            for name, value in values.items()]


GMACS_VARIANTS = Metric(
    name="gmacs_variants",
    rows=tuple(Row(name, "GMAC", f"GMACs {text}", task="count", per_pass=True) for name, text in VARIANTS.items()),
    fn=variants_metric,
    description="DiM only: its GMACs under each hypothesis that could explain a published count (without the "
    "scan, the depth-wise convs, mamba-ssm's fused inner function; unpadded tokens; 7/8 of the side)",
)
