"""FLOPs and bytes moved per named component of one forward pass, counted on the meta device (free at any size).

The models mark their components with :func:`models.profiling.component` (names and meanings in
``models.profiling.COMPONENTS``; ranges are flat, so they partition a forward pass; what runs outside every range
is ``other``). FLOPs are counted by the same FlopCounterMode and attention formula as the ``flops`` metric
(:data:`dimbench.metrics.flops.SDPA_FORMULAS`, so they add up to its number), attributed to the innermost open
range; bytes moved by a dispatch mode above it that charges every non-view op with its tensor inputs read once
and its outputs written once (broadcast dimensions counted once): the traffic of an eager run in which each
dispatched op is one kernel and nothing stays in cache; fused kernels move less, and the chunked CPU scan
backend moves more than its op's inputs and output. The ``profile`` metric places each component on a roofline
with them; ``gmacs_variants`` recounts DiM without some of them.
"""

from __future__ import annotations

import collections
import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import models
from dimbench.metrics.common import build_model, point_inputs
from dimbench.metrics.flops import SDPA_FORMULAS
from dimbench.points import SweepPoint
from models.profiling import COMPONENTS

COUNT_METHOD = ("meta-device count: FLOPs by FlopCounterMode (2 per multiply-add, the flops metric's count) and "
                "bytes moved by a dispatch mode (each non-view op reads its inputs once and writes its outputs "
                "once), each attributed to the innermost open named range")


def touched_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel must touch to read or write ``t``: dimensions of stride 0 (broadcasts) count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


class ComponentFlops(FlopCounterMode):
    """FlopCounterMode (with the flops metric's attention mapping) that also adds each count to the innermost
    open named range."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=SDPA_FORMULAS)
        self.by_component: dict[str, int] = collections.defaultdict(int)

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            n = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            self.by_component[models.profiling.current()] += int(n)
        return super()._count_flops(func_packet, out, args, kwargs)


_FREE_OPS = {"_unsafe_view", "lift_fresh", "detach", "alias"}  # no data moves (views without the view tag)


def moves_data(func) -> bool:
    """Whether an op reads and writes tensor data: not a view (returns aliasing an input, read-only) nor a free
    op; in-place ops (write aliases) do move data."""
    if not isinstance(func, torch._ops.OpOverload) or func._overloadpacket.__name__ in _FREE_OPS:
        return False
    for ret in func._schema.returns:
        if ret.alias_info is not None and not ret.alias_info.is_write:
            return False
    return True


class ComponentBytes(TorchDispatchMode):
    """Bytes read and written per op (views and metadata ops are free), by component."""

    def __init__(self) -> None:
        super().__init__()
        self.by_component: dict[str, int] = collections.defaultdict(int)
        self.by_op: dict[str, int] = collections.defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if moves_data(func):
            seen: set[int] = set()
            total = 0
            for leaf in torch.utils._pytree.tree_leaves((args, kwargs, out)):
                if isinstance(leaf, torch.Tensor) and id(leaf) not in seen:
                    seen.add(id(leaf))
                    total += touched_bytes(leaf)
            if isinstance(out, torch.Tensor) and any(out is a for a in torch.utils._pytree.tree_leaves(args)):
                total += touched_bytes(out)  # an in-place op: its tensor is read and written
            self.by_component[models.profiling.current()] += total
            self.by_op[str(func)] += total
        return out


@dataclasses.dataclass
class ComponentCount:
    """FLOPs and bytes of one forward pass per component (``other`` included), and the totals."""

    flops: dict[str, int]
    bytes: dict[str, int]

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


def count_components(point: SweepPoint) -> ComponentCount:
    """FLOPs and bytes moved per component of one forward at the point, on the meta device (no compute)."""
    model = build_model(point, "meta")
    x, t, y = point_inputs(point, model, "meta")
    flops, moved = ComponentFlops(), ComponentBytes()
    with models.profiling.listening(record=False), torch.inference_mode(), flops, moved:
        model(x, t, y)
    names = [c for c in COMPONENTS if c in flops.by_component or c in moved.by_component]
    names += [c for c in {**flops.by_component, **moved.by_component} if c not in names]
    return ComponentCount({c: int(flops.by_component.get(c, 0)) for c in names},
                          {c: int(moved.by_component.get(c, 0)) for c in names})
