"""Numeric precision of FID sampling as each paper ran it: float32, TF32, or bf16 / fp16 autocast.

The official runs keep float32 weights: U-ViT and DiM launch their evaluation with ``accelerate --mixed_precision
fp16`` / ``bf16``, which runs the network's forward under ``torch.autocast`` and converts its outputs back to
float32 (the sampler's arithmetic stays float32), and decode under ``torch.cuda.amp.autocast()`` (float16); DiT
samples in float32 with TF32 matmuls (``torch.backends.cuda.matmul.allow_tf32 = True``; convolutions use TF32 by
PyTorch's default). These are CUDA settings: on the CPU dimbench runs float32 and the rows say so.
Inception features are always extracted in float32 with TF32 off (:func:`strict_float32`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import torch

from dimbench.fid.protocol import PRECISION_TEXT, PRECISIONS

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Plan:
    asked: str  # one of PRECISIONS
    ran: str  # what runs on this device
    note: str  # in words, for the method text

    @property
    def autocast(self) -> torch.dtype | None:
        return AUTOCAST.get(self.ran)


def plan(asked: str, device: torch.device) -> Plan:
    """What runs for precision ``asked`` on ``device``: itself on CUDA; float32 on any other device."""
    if asked not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {asked!r}")
    if device.type == "cuda" or asked == "float32":
        return Plan(asked, asked, PRECISION_TEXT[asked])
    return Plan(asked, "float32", f"float32 on the {device.type.upper()} ({asked} asked: "
                f"{PRECISION_TEXT[asked]} is a CUDA setting here)")


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """CUDA's TF32 switches for matmuls and cuDNN convolutions set to ``enabled``, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def numerics(p: Plan) -> contextlib.AbstractContextManager:
    """The switches a plan runs under: TF32 on for "tf32", off otherwise (float32 is strict; under autocast the
    ops autocast keeps in float32 run without TF32 too)."""
    return tf32(p.ran == "tf32")


def strict_float32() -> contextlib.AbstractContextManager:
    """float32 with TF32 off: how Inception features are extracted whatever the sampling precision."""
    return tf32(False)


def forward(model: Callable, p: Plan, device: torch.device) -> Callable:
    """``model`` as the official runs call it: under autocast of the plan's dtype with the output converted back
    to float32 (accelerate's ``convert_outputs_to_fp32``), or ``model`` itself for float32 and TF32."""
    dtype = p.autocast
    if dtype is None:
        return model

    def run(*args, **kwargs):
        with torch.autocast(device.type, dtype=dtype):
            out = model(*args, **kwargs)
        return out.float()

    return run
