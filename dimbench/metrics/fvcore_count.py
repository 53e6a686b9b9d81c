"""Cross-check of the FLOP count with fvcore's FlopCountAnalysis, the tool the papers used.

fvcore counts one FLOP per multiply-add, so its total is reported as ``gmacs_fvcore``. Out of the box it has no
handler for scaled_dot_product_attention (DiT-XL/2 at 256 px would count 114.5 GMACs instead of 118.6) nor for
dimbench's selective-scan custom op: both are added here.

fvcore traces the model with torch.jit.trace, and tracing does not work on meta tensors (the meta convolution
kernel rejects traced sizes), so it runs on real CPU tensors: the model is allocated without initialisation and
zero-filled (a count depends on shapes only), traced at batch 1, and the count scaled by the point's batch (every
op of these models is linear in the batch). That costs one real forward pass, so points whose meta-device count
exceeds the metric's option ``max_gmacs`` per image (default 250; a suite sets it under
``options: {fvcore: {max_gmacs: N}}``) are skipped with that reason. fvcore is optional
(no release since 2022; absent on the GPU machines): without it the metric is skipped with that reason. Its
warnings and log lines are kept out of user output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import warnings
from collections import Counter
from typing import Any

import torch

from dimbench.metrics.base import CrossCheck, Measurement, Metric, MetricContext, Row, SkipMetric, Summary
from dimbench.metrics.common import build_model, make_inputs
from dimbench.metrics.flops import attention_flops, count_point_flops
from dimbench.points import SweepPoint
from dimbench.schema import Field, Number
from models import scan
from models.scan import scan_flops

METHOD = (
    "fvcore FlopCountAnalysis (1 MAC = 1 FLOP) with dimbench handlers for SDPA and the selective scan; jit trace of "
    "a zero-filled CPU model at batch 1 (scan output stubbed: shapes only), scaled by the batch"
)

SDPA_OP = "aten::scaled_dot_product_attention"
SCAN_OP = "dimbench_scan::selective_scan"


@contextlib.contextmanager
def _quiet():
    """Silence fvcore's import/trace warnings, its logger and anything it prints."""
    loggers = [logging.getLogger(n) for n in ("fvcore", "fvcore.nn.jit_analysis", "iopath")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _import_fvcore():
    # Only this metric needs fvcore, and importing it warns (it calls the deprecated torch.jit.script): not at
    # the import of every metric.
    try:
        with _quiet():
            from fvcore.nn import FlopCountAnalysis
            from fvcore.nn.jit_handles import get_shape
    except ImportError as e:
        raise SkipMetric(f"fvcore is not installed ({e}); the FlopCounterMode count (flops) stands alone") from None
    return FlopCountAnalysis, get_shape


def _is_none(value) -> bool:
    return value.type().kind() == "NoneType"


def sdpa_handler(inputs, outputs) -> int:
    """fvcore handler for aten::scaled_dot_product_attention: multiply-adds of QK^T and AV."""
    _, get_shape = _import_fvcore()
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    return attention_flops(q, k, v) // 2


def scan_handler(inputs, outputs) -> int:
    """fvcore handler for the selective-scan custom op: its registered formula, halved to multiply-adds.

    Argument order (docs/contracts.md): u (batch, d_inner, L), delta, A (d_inner, N), B, C, D, z, ...
    """
    _, get_shape = _import_fvcore()
    batch, d_inner, length = get_shape(inputs[0])
    n_state = get_shape(inputs[2])[1]
    has_d = len(inputs) > 5 and not _is_none(inputs[5])
    has_z = len(inputs) > 6 and not _is_none(inputs[6])
    return scan_flops(batch, d_inner, length, n_state, has_d, has_z) // 2


def fvcore_count(model, inputs: tuple, *, with_sdpa: bool = True, with_scan: bool = True) -> dict[str, Any]:
    """Run fvcore's FlopCountAnalysis on ``model(*inputs)``; returns total MACs, per-operator MACs and what
    fvcore skipped. ``with_sdpa=False`` shows what fvcore alone counts (attention missing)."""
    flop_count_analysis, _ = _import_fvcore()
    handlers = {}
    if with_sdpa:
        handlers[SDPA_OP] = sdpa_handler
    if with_scan:
        handlers[SCAN_OP] = scan_handler
    with _quiet():
        analysis = flop_count_analysis(model, inputs).set_op_handle(**handlers)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        total = int(analysis.total())
        by_op = {str(k): int(v) for k, v in analysis.by_operator().items()}
        unsupported = dict(Counter(analysis.unsupported_ops()))
    return {"macs": total, "by_operator": by_op, "unsupported_ops": unsupported}


@contextlib.contextmanager
def _shapes_only_scan():
    """Make every selective scan in this block return zeros instead of computing.

    The traced graph holds the custom op as one node whatever backend computes it, and fvcore's count of it
    depends on shapes only, so running the real scan under the tracer (several times slower than a plain
    forward) buys nothing. A backend that returns zeros is registered and requested through the environment
    variable the scan registry reads, and both are restored afterwards.
    """
    name = "dimbench_fvcore_shapes_only"
    previous = os.environ.get(scan.ENV_VAR)
    scan.register_backend(
        name,
        lambda u, *args: torch.zeros_like(u),
        lambda device: (True, "returns zeros: for fvcore's trace, which needs shapes only"),
        description="zeros of the output's shape (fvcore trace only)",
        replace=True,
    )
    os.environ[scan.ENV_VAR] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(scan.ENV_VAR, None)
        else:
            os.environ[scan.ENV_VAR] = previous
        scan.unregister_backend(name)


def _zeroed_cpu_model(point: SweepPoint):
    """The point's model on the CPU without initialisation cost: built on meta, allocated, zero-filled."""
    model = build_model(point, "meta").to_empty(device="cpu")
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.zero_()
    return model


def fvcore_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    _import_fvcore()
    limit = float(ctx.options["max_gmacs"])
    per_image = count_point_flops(dataclasses.replace(point, batch=1)).gmacs
    if per_image > limit:
        raise SkipMetric(
            f"fvcore traces with a real CPU forward pass; {per_image:.1f} GMACs per image exceeds the limit of "
            f"{limit:g} (the suite's options.fvcore.max_gmacs); the meta-device count (flops) covers this point"
        )
    model = _zeroed_cpu_model(point)
    x, t, y = make_inputs(point.model, 1, point.input_size, "cpu", in_channels=getattr(model, "in_channels", None))
    # jit.trace takes tensors only: an unconditional model is traced without y (its default None).
    inputs = (x, t) if y is None else (x, t, y)
    with _shapes_only_scan():
        result = fvcore_count(model, inputs)
    macs = result["macs"] * point.batch
    extra = {
        "batch": point.batch,
        "traced_batch": 1,
        "gmacs_per_image": result["macs"] / 1e9,
        "by_operator_gmacs_per_image": {k: v / 1e9 for k, v in sorted(result["by_operator"].items())},
        "unsupported_ops": result["unsupported_ops"],
        "counted": "fvcore defaults (matmul, linear, conv, einsum, norms, upsample, ...) plus SDPA and the scan",
    }
    return [Measurement("gmacs_fvcore", macs / 1e9, "GMAC", METHOD, extra)]


FVCORE = Metric(
    name="fvcore",
    rows=(
        Row("gmacs_fvcore", "GMAC", "GMACs by fvcore (cross-check)", task="count", per_pass=True,
            per_image_label="GMACs per image by fvcore", deterministic=True,
            summary=Summary("GMACs/img\n(fvcore)", per_image=True),
            cross_check=CrossCheck("gmacs", "fvcore's count agrees with the meta-device count")),
    ),
    fn=fvcore_metric,
    description="cross-check of gmacs with fvcore's FlopCountAnalysis (handlers for SDPA and the scan added)",
    options=(
        Field("max_gmacs", Number(0), 250, "GMACs per image (meta count) above which the real CPU trace is "
              "skipped, said so in the row"),
    ),
)
