"""``gmacs_conventions``: a model's count under the counting conventions other papers used for their "GFLOPs".

dimbench's own count (``gmacs``, the flops metric) is uniform: FlopCounterMode's multiply-adds of matrix products
and convolutions, plus attention and every custom kernel (selective scan, gated linear attention) by its formula;
element-wise work is not counted. Papers count differently, and a published number is reproduced only under the
convention that produced it (shared/spec/peers.md §1.5, §3.3). Each row here is the same meta-device pass counted
under one published convention:

- ``gmacs_torchprofile``: torchprofile's ``profile_macs`` as DiCo's README and paper use it: the uniform count plus
  one multiply-add per element of every element-wise multiply (``aten.mul`` outputs). It reproduces DiCo's
  published 4.25 / 16.88 / 60.24 / 87.30 G at 256 px exactly.
- ``gmacs_fvcore_fused``: what fvcore's trace of a model sees when its custom kernels are opaque and its MLP
  down-projection runs inside a fused autograd Function (fla's SwiGLU-linear, DiG's official code): the uniform
  count minus every custom kernel (GLA, scan) and minus every ``mlp.down_proj`` module, plus fvcore's 4
  operations per element of each LayerNorm without affine parameters (5 with them). This is the reconstruction of
  DiG's published 89.40 GFLOPs (XL/2, 256 px) in peers.md §3.3, not a run of fvcore on the official code.

Both are defined for every model (the parts are in ``extra``); the paper tables compare each published number
with the row of its own convention, beside dimbench's uniform count.
"""

from __future__ import annotations

import re

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from dimbench.metrics.base import Measurement, Metric, MetricContext, Row
from dimbench.metrics.common import build_model, point_inputs
from dimbench.metrics.flops import SDPA_FORMULAS
from dimbench.points import SweepPoint

aten = torch.ops.aten

CONVENTIONS = {
    "gmacs_torchprofile": "GMACs in torchprofile's convention (DiCo's papers): dimbench's count plus one per element "
                          "of every element-wise multiply",
    "gmacs_fvcore_fused": "GMACs as fvcore sees a model with opaque custom kernels and a fused MLP down-projection "
                          "(DiG's papers): dimbench's count without custom kernels and mlp.down_proj, plus 4 per "
                          "LayerNorm element (5 with affine)",
}

_DOWN_PROJ = re.compile(r"(^|\.)mlp\.down_proj$")
_LAYER_NORMS = (aten.native_layer_norm.default, aten.layer_norm.default)


class _ElementCounter(TorchDispatchMode):
    """Counts the output elements of element-wise multiplies and the input elements of LayerNorms (with or
    without affine parameters) that reach the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.mul_elements = 0
        self.layer_norm = {"plain": 0, "affine": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket is aten.mul:
            self.mul_elements += out.numel()
        elif func in _LAYER_NORMS:
            weight = args[2] if len(args) > 2 else (kwargs or {}).get("weight")
            self.layer_norm["plain" if weight is None else "affine"] += args[0].numel()
        return out


def count_conventions(point: SweepPoint) -> dict[str, float | int]:
    """The parts each convention is made of, for one forward pass at the point (meta device)."""
    model = build_model(point, "meta")
    x, t, y = point_inputs(point, model, "meta")
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS)
    elements = _ElementCounter()
    with torch.inference_mode(), counter, elements:
        model(x, t, y)
    counts = counter.get_flop_counts()
    total = int(counter.get_total_flops())
    custom = sum(int(n) for op, n in counts.get("Global", {}).items() if str(op).startswith("dimbench_"))
    # Module names are "<Class>.a.b.c"; nested modules repeat their parents' counts, so only the leaves match.
    down = sum(int(n) for name, ops in counts.items() if _DOWN_PROJ.search(name) for n in ops.values())
    return {"flops": total, "custom_kernel_flops": custom, "mlp_down_proj_flops": down,
            "mul_elements": elements.mul_elements, "layer_norm_elements": elements.layer_norm["plain"],
            "layer_norm_affine_elements": elements.layer_norm["affine"]}


def conventions_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    parts = count_conventions(point)
    macs = parts["flops"] / 2
    values = {
        "gmacs_torchprofile": (macs + parts["mul_elements"]) / 1e9,
        "gmacs_fvcore_fused": (macs - (parts["custom_kernel_flops"] + parts["mlp_down_proj_flops"]) / 2
                               + 4 * parts["layer_norm_elements"] + 5 * parts["layer_norm_affine_elements"]) / 1e9,
    }
    extra = {"batch": point.batch, "gmacs_uniform": macs / 1e9,
             "custom_kernel_gmacs": parts["custom_kernel_flops"] / 2e9,
             "mlp_down_proj_gmacs": parts["mlp_down_proj_flops"] / 2e9,
             **{k: parts[k] for k in ("mul_elements", "layer_norm_elements", "layer_norm_affine_elements")}}
    method = "meta-device FlopCounterMode (1 MAC = 2 FLOPs) with a dispatch-mode element count, at the point's batch"
    return [Measurement(name, value, "GMAC", f"{CONVENTIONS[name]}; {method}", dict(extra))
            for name, value in values.items()]


GMACS_CONVENTIONS = Metric(
    name="gmacs_conventions",
    rows=tuple(Row(name, "GMAC", text.split(":")[0], task="count", per_pass=True, deterministic=True)
               for name, text in CONVENTIONS.items()),
    fn=conventions_metric,
    description="GMACs under the counting conventions of other papers (torchprofile's, DiCo; fvcore's on a fused "
    "MLP, DiG), to compare each published count with its own convention",
)
