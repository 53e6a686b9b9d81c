"""Named ranges around the models' components, for per-component profiling; free when nobody listens.

A model marks a component with ``with component("scan"): ...``. When no profiler and no counter listens (the
default, and always under ``torch.compile``) :func:`component` returns one shared ``nullcontext``: a global read
and a function call, no allocation, no dispatcher work, nothing on tensors, so numerics and traced graphs are
untouched. When listening (:func:`listening`) it opens a ``torch.profiler.record_function`` range named
``dimbench/<name>`` (seen by the PyTorch profiler, its Chrome trace, and on CUDA by the kernels launched inside it)
and pushes the name on a stack that dispatch-mode counters read (:func:`current`): FLOPs and bytes are attributed
to the innermost open component. Ranges are meant to be flat (a component holds no other), so the ranges of one
forward pass partition it; whatever runs outside every range is reported as ``other``.

The component names are a shared contract (docs/contracts.md, "Profile rows"): :data:`COMPONENTS`, in the order
they are reported. Pure Python state, so it is harmless on the meta device and under FakeTensorMode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: Every component name a model may mark, in report order, with what it covers. "other" is the un-ranged rest.
COMPONENTS: dict[str, str] = {
    "patch_embed": "patch embedding: patch conv, position embedding, token assembly",
    "conditioning": "timestep sinusoid and MLP, label embedding, shared modulation (DiM), condition tokens",
    "grid_conv": "3x3 depth-wise convs over the token grid: DiM's (after the patch embedding, before the final "
                 "layer), DiG's per block (in the block's scan order)",
    "pad": "DiM's sequence build with pad insertion, and pad removal after the last block",
    "scan_switch": "re-ordering of the sequence from one scan order to the next (DiM; DiG's reversal and transpose)",
    "skip_fusion": "long-skip fusion (DiM, U-ViT, DiG's skip variants)",
    "norm_mod": "per block: norm and modulation (adaLN Linear for DiT, RMSNorm·(1+scale)+shift for DiM)",
    "in_proj": "DiM per block: Mamba in-projection to x and z",
    "conv1d": "DiM per block: causal depth-wise conv1d and SiLU",
    "ssm_proj": "DiM per block: x_proj and dt_proj (Δ, B, C), A = -exp(A_log)",
    "scan": "DiM per block: the selective scan op (SiLU(z) gate and D skip inside)",
    "out_proj": "DiM per block: Mamba out-projection",
    "attention": "per block: qkv projection, attention, output projection (DiT / U-ViT softmax attention, DiG's "
                 "gated linear attention with its gate and norm, SANA-cc's ReLU linear attention)",
    "mlp": "per block: MLP (DiT / U-ViT fc1, GELU, fc2; DiG's SwiGLU; SANA-cc's Mix-FFN; DiCo's 1x1-conv FFN)",
    "residual": "per block: the (gated) residual add, x + gate·f(x) (DiM, DiT) or x + f(x) (U-ViT)",
    "final_layer": "final norm and modulation, output Linear, unpatchify (U-ViT: its 3x3 output conv; DiCo: 3x3)",
    "conv_module": "DiCo per block: the conv module in place of attention (1x1 conv, 3x3 depth-wise conv, GELU, "
                   "compact channel attention, 1x1 conv)",
    "resample": "DiCo: down/up-sampling convs with PixelUnshuffle/PixelShuffle, skip concatenation, 1x1 reduce convs",
    "other": "whatever ran outside every named range",
}

PREFIX = "dimbench/"

_NULL = contextlib.nullcontext()
_listeners = 0  # how many profiles/counters are listening (nested listening is allowed)
_recording = 0  # how many of them want profiler ranges (record_function) as well as the name stack
_stack: list[str] = []


class _Range:
    """An open component: a profiler range plus the name on the counters' stack."""

    __slots__ = ("name", "_rf")

    def __init__(self, name: str):
        self.name = name
        self._rf = torch.profiler.record_function(PREFIX + name) if _recording else None

    def __enter__(self) -> _Range:
        _stack.append(self.name)
        if self._rf is not None:
            self._rf.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._rf is not None:
                self._rf.__exit__(*exc)
        finally:
            _stack.pop()


def component(name: str) -> contextlib.AbstractContextManager:
    """A named range around one component (see the module docstring); a no-op unless :func:`listening`."""
    if not _listeners:
        return _NULL
    if torch.compiler.is_compiling():  # compiled graphs get no Python side effects from here
        return _NULL
    return _Range(name)


def enabled() -> bool:
    """Whether ranges are open now (someone is listening)."""
    return _listeners > 0


def current() -> str:
    """The innermost open component, or "other" outside every range."""
    return _stack[-1] if _stack else "other"


@contextlib.contextmanager
def listening(record: bool = True) -> Iterator[None]:
    """Turn the named ranges on for the duration (a profiler or a counter is about to read them).

    ``record``: open ``torch.profiler.record_function`` ranges (for a profiler); False: only keep the name stack
    that :func:`current` reads (a dispatch-mode counter on the meta device needs no profiler ranges).
    """
    global _listeners, _recording
    _listeners += 1
    _recording += int(record)
    try:
        yield
    finally:
        _listeners -= 1
        _recording -= int(record)
        if not _listeners:
            _stack.clear()


__all__ = ["COMPONENTS", "PREFIX", "component", "current", "enabled", "listening"]
