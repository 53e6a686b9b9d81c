"""FLOPs per forward pass, counted with torch.utils.flop_counter.FlopCounterMode on the meta device.

Conventions (docs/method.md): FlopCounterMode counts 2 FLOPs per multiply-add; the papers' "GFLOPs" are
multiply-adds. Both are reported under unambiguous names: ``gflops`` = counted FLOPs / 1e9 and
``gmacs`` = counted FLOPs / 2 / 1e9. Only the ops FlopCounterMode has formulas for are counted: matrix products,
convolutions, attention and the selective scan (a custom op with its own registered formula); elementwise ops,
norms and softmax are not, as in the papers' counts.

Attention is counted on every path:

- Under ``torch.inference_mode`` (how dimbench counts) ``scaled_dot_product_attention`` reaches the counter as one
  composite op. It is mapped here to the standard formula (QK^T and AV products), so attention is counted, and
  attributed to attention, whatever device the tensors are on and whichever kernel would run.
- With autograd enabled the dispatcher first resolves it to a kernel. On the meta device that is the math path
  (counted as bmm); on CPU tensors it is ``_scaled_dot_product_flash_attention_for_cpu``, which
  FlopCounterMode's table lacks (it would silently count 0): this module registers a formula for it and its
  backward at import.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_backward_flop_count

from dimbench.metrics.base import Measurement, Metric, MetricContext, Plot, PlotSection, Ratio, Row, Summary
from dimbench.metrics.common import ATTENTION_KERNELS, build_model, point_inputs
from dimbench.points import SweepPoint

aten = torch.ops.aten

METHOD = "meta-device FlopCounterMode, inference_mode (1 MAC = 2 FLOPs)"


def attention_flops(query_shape, key_shape, value_shape) -> int:
    """FLOPs of softmax(QK^T)V without the softmax: two batched products, 2 FLOPs per multiply-add.

    Shapes are (..., L, E): every leading dimension (batch, heads) is a batch of independent products.
    A causal mask is not discounted (none of these models uses one).
    """
    *lead, l_q, e = query_shape
    l_k = key_shape[-2]
    e_v = value_shape[-1]
    batch = math.prod(lead)
    return 2 * batch * l_q * l_k * e + 2 * batch * l_q * l_k * e_v


def _sdpa_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(query_shape, key_shape, value_shape)


def _sdpa_backward_formula(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _register_cpu_attention_formulas() -> None:
    """Give the CPU flash-attention kernels a formula (missing from FlopCounterMode's table: counted 0)."""
    for packet_name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_formula),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_backward_formula),
    ):
        packet = getattr(aten, packet_name, None)
        if packet is not None and packet not in flop_registry:  # a newer torch may ship its own
            register_flop_formula(packet)(formula)


_register_cpu_attention_formulas()

#: FlopCounterMode's ``custom_mapping`` for every count dimbench makes (this module's and the per-component count
#: of dimbench.metrics.component_count): the composite SDPA op as it reaches a dispatch mode under inference_mode
#: (see the module docstring). FlopCounterMode decomposes any op whose OpOverload is not a key of its table before
#: looking its packet up, so the overload is listed too: that keeps SDPA whole (counted once, by this formula,
#: attributed to attention) instead of letting it decompose into whichever kernel the device would pick.
SDPA_FORMULAS = {
    aten.scaled_dot_product_attention: _sdpa_formula,
    aten.scaled_dot_product_attention.default: _sdpa_formula,
}

_ATTENTION_OPS = set(ATTENTION_KERNELS) | {"scaled_dot_product_attention"}


def _category(op_name: str) -> str:
    """Group an op for the breakdown: attention, scan, matmul, conv or other."""
    namespace, _, name = op_name.rpartition(".")
    if name in _ATTENTION_OPS or "attention" in name:
        return "attention"
    if namespace == "dimbench_scan" or "scan" in name:
        return "scan"
    if name in ("mm", "addmm", "bmm", "baddbmm", "_scaled_mm"):
        return "matmul"
    if "conv" in name:
        return "conv"
    return "other"


@dataclasses.dataclass
class FlopCount:
    """A FlopCounterMode count of one call: total FLOPs (2 per MAC) and FLOPs per op."""

    flops: int
    by_op: dict[str, int]

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9

    def by_category(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op, n in self.by_op.items():
            cat = _category(op)
            out[cat] = out.get(cat, 0) + n
        return out

    def share(self, category: str) -> float:
        """Fraction of the counted FLOPs in one category (0 when nothing was counted)."""
        return self.by_category().get(category, 0) / self.flops if self.flops else 0.0


def count_flops(fn, *args: Any, **kwargs: Any) -> FlopCount:
    """Count ``fn(*args, **kwargs)`` under FlopCounterMode and torch.inference_mode.

    Works with tensors on any device; on the meta device nothing is computed. Attention counts whether it arrives
    as the composite op, as a CPU/CUDA kernel or decomposed (see the module docstring).
    """
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS)
    with torch.inference_mode(), counter:
        fn(*args, **kwargs)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(flops=int(counter.get_total_flops()), by_op=by_op)


def count_model_flops(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> FlopCount:
    """FLOPs of one denoising forward ``model(x, t, y)``."""
    return count_flops(model, x, t, y)


def count_point_flops(point: SweepPoint) -> FlopCount:
    """FLOPs of one forward at the point's model, input size and batch, counted on the meta device (free)."""
    model = build_model(point, "meta")
    x, t, y = point_inputs(point, model, "meta")
    return count_model_flops(model, x, t, y)


def flops_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    """gmacs and gflops of one forward pass at the point's batch (per image and per-op breakdown in extra)."""
    count = count_point_flops(point)
    cats = count.by_category()
    extra = {
        "batch": point.batch,
        "gmacs_per_image": count.gmacs / point.batch,
        "gflops_per_image": count.gflops / point.batch,
        "by_op_gflops": {op: n / 1e9 for op, n in sorted(count.by_op.items())},
        "by_category_gflops": {c: n / 1e9 for c, n in sorted(cats.items())},
        "attention_share": count.share("attention"),
        "scan_share": count.share("scan"),
        "counted": "matmul, conv, attention (QK^T and AV), selective scan (its registered formula); "
        "elementwise ops, norms and softmax not counted",
        "dtype_independent": True,
    }
    return [
        Measurement("gmacs", count.gmacs, "GMAC", METHOD + "; GMACs = counted FLOPs / 2", extra),
        Measurement("gflops", count.gflops, "GFLOP", METHOD, dict(extra)),
    ]


# The report's section of these rows against resolution (dimbench.report.plotted): GMACs, or GFLOPs where a run
# holds no GMACs, with each model's growth exponent versus the number of tokens.
COMPUTE = PlotSection(
    "compute", "Compute (GMACs)", order=10, title="{label} vs resolution", panel="{label} vs resolution — {facet}",
    table="Compute", size=(8.5, 5.2),
    caption="Compute {per} vs resolution, log-log, {facet}. ",
    notes="The legend gives each model's growth exponent versus the number of tokens (tokens ∝ resolution²): the "
    "least-squares slope over all resolutions and the local slope between the two largest. ≈ 1 means linear in tokens "
    "(DiM's selective scan, and the per-token MLPs of every model); it tends to 2 where attention's quadratic term "
    "dominates (DiT, U-ViT). ",
    paragraphs=("GMACs count multiply-accumulates, one per multiply-add: the unit the DiT, U-ViT and DiM papers call "
                "“GFLOPs”. GFLOPs = 2 × GMACs (PyTorch's FlopCounterMode convention); both are in the full tables.",))

FLOPS = Metric(
    name="flops",
    rows=(
        Row("gmacs", "GMAC", "GMACs (multiply-accumulates, 1 per multiply-add)", task="count", per_pass=True,
            per_image_label="GMACs per image", deterministic=True,
            summary=Summary("GMACs/img\n(meta count)", per_image=True), ratio=Ratio("GMACs per image", "#1d2733"),
            plot=Plot(COMPUTE, growth=True)),
        Row("gflops", "GFLOP", "GFLOPs (2 per multiply-add)", task="count", per_pass=True,
            per_image_label="GFLOPs per image", deterministic=True,
            plot=Plot(COMPUTE, growth=True, only_without="gmacs")),
    ),
    fn=flops_metric,
    description="multiply-accumulates and FLOPs of one forward pass at the point's batch, counted on the meta "
    "device with FlopCounterMode (attention and the selective scan included)",
)
