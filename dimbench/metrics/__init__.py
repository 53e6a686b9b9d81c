"""dimbench's suite-level metrics and their registry (see docs/contracts.md).

    >>> from dimbench.metrics import METRICS
    >>> rows = METRICS["flops"].measure(point)                  # outside a runner
    >>> register_metric(MY_METRIC)                              # a metric of one's own (a plugin, a test)

=========== ================================================ ==================================================
metric      rows                                             how
=========== ================================================ ==================================================
params      params, params_trainable                         meta-device model
flops       gmacs, gflops                                    FlopCounterMode on the meta device
fvcore      gmacs_fvcore                                     fvcore FlopCountAnalysis (+ SDPA and scan handlers)
latency     latency_ms, throughput, tflops_achieved, mfu,    wall clock (CPU) / CUDA events; MFU vs measured peak;
            latency_rel                                      _rel: time / a reference matmul timed in the same rounds
train_step  train_step_ms, train_throughput, train_step_rel  forward + MSE + backward + AdamW, timed likewise
memory      mem_predicted_gib, mem_allocated_gib,            FakeTensor prediction; CUDA allocator peaks; NVML
            mem_reserved_gib, mem_device_gib
train       train_loss (per step), train_loss_final,         diffusion training (a long task; weak-to-strong
            train_images_per_s                               fine-tuning from a lower resolution)
quality     fd_proxy, proxy_acc (+ _untrained), samples      samples scored by dimbench's proxy classifier
upsample    fd_proxy_up{2,3}[_ug], proxy_acc_..., samples_.. 2x / 3x sampling, plain and Upsample Guidance
profile     profile_* (per component)                        torch.profiler ranges, meta counts, NVML energy
published   published_{params,gmacs,throughput,fid}          the papers' numbers (dimbench/paper), not measured
gmacs_vari… gmacs_no_scan, gmacs_no_dwconv,                  DiM's count under the hypotheses that could
            gmacs_mamba_fused, gmacs_unpadded, ..._7_8      explain a published count (per named component)
fid         fid, inception_score, kid, precision, recall,    checkpoint sampled N times, decoded, torch-fidelity's
            sample_s_per_image, samples_fid                  Inception features vs reference .npz (local files)
gmacs_conv… gmacs_torchprofile, gmacs_fvcore_fused           the count under other papers' conventions (DiCo's
                                                             torchprofile, DiG's fvcore on a fused MLP)
=========== ================================================ ==================================================

Each metric module declares its :class:`Metric` (rows, options, budget) once; everything else that needs to know
about a row (the worker's task labels, the summary table, the report) asks :func:`row_declaration`.
"""

from __future__ import annotations

from dimbench.metrics.base import (
    EXACT,
    CrossCheck,
    Gate,
    Measurement,
    Metric,
    MetricContext,
    Plot,
    PlotSection,
    Ratio,
    Row,
    SkipMetric,
    Summary,
    generic_row,
)
from dimbench.metrics.conventions import GMACS_CONVENTIONS
from dimbench.metrics.count_variants import GMACS_VARIANTS
from dimbench.metrics.fid import FID
from dimbench.metrics.flops import FLOPS
from dimbench.metrics.fvcore_count import FVCORE
from dimbench.metrics.memory import MEMORY
from dimbench.metrics.params import PARAMS
from dimbench.metrics.profile import PROFILE
from dimbench.metrics.published import PUBLISHED
from dimbench.metrics.quality import QUALITY, UPSAMPLE
from dimbench.metrics.timing import LATENCY, TRAIN_STEP
from dimbench.metrics.train import TRAIN

#: name -> Metric, in registration order (the order of summary columns and report measures).
METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add a metric to the registry. Its name and each of its row names must be new."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is registered already")
    taken = {row: m.name for m in METRICS.values() for row in m.produces}
    clash = [r for r in metric.produces if r in taken]
    if clash:
        raise ValueError(f"metric {metric.name!r}: row {clash[0]!r} is declared by metric {taken[clash[0]]!r}")
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a metric (tests and plugins that register for a while)."""
    METRICS.pop(name, None)


def metric_of_row(row: str) -> Metric | None:
    """The registered metric that declares a row name, or None."""
    for m in METRICS.values():
        if row in m.produces:
            return m
    return None


def row_declaration(row: str, unit: str | None = None, task: str | None = None) -> Row:
    """The declaration of a row name; for a name no registered metric declares, :func:`generic_row`."""
    metric = metric_of_row(row)
    return metric.row(row) if metric is not None else generic_row(row, unit, task)


def declared_rows() -> list[Row]:
    """Every declared row, in registration order."""
    return [r for m in METRICS.values() for r in m.rows]


# The built-in metrics, in the order of the summary columns and the report's measures.
for _metric in (PARAMS, FLOPS, FVCORE, LATENCY, TRAIN_STEP, MEMORY, TRAIN, QUALITY, UPSAMPLE, PROFILE, PUBLISHED,
                GMACS_VARIANTS, FID, GMACS_CONVENTIONS):
    register_metric(_metric)
del _metric

__all__ = [
    "EXACT", "METRICS", "CrossCheck", "Gate", "Measurement", "Metric", "MetricContext", "Plot", "PlotSection", "Ratio",
    "Row", "SkipMetric", "Summary", "declared_rows", "metric_of_row", "register_metric", "row_declaration",
    "unregister_metric",
]
