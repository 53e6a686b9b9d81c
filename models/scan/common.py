"""Shared pieces of the pure-PyTorch scan backends: input checks, the Δ prologue and the D/z epilogue.

Shapes (mamba-ssm convention), used throughout ``models.scan``:

    u, delta, z : (batch, d_inner, L)
    A           : (d_inner, N)          N = d_state
    B, C        : (batch, N, L)
    D, delta_bias: (d_inner,)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """Raise ValueError naming the argument and the expected shape when the inputs do not fit together.

    Only shapes, dtypes and devices are read, so this works on meta and fake tensors.
    """
    def shape(t):
        return tuple(t.shape)

    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, Tensor):
            raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must have shape (batch, d_inner, L); got {shape(u)}")
    batch, d_inner, length = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"selective_scan: A must have shape (d_inner, d_state) = ({d_inner}, N); got {shape(A)}")
    n = A.shape[1]
    expected = {
        "delta": (delta, (batch, d_inner, length)),
        "B": (B, (batch, n, length)),
        "C": (C, (batch, n, length)),
        "D": (D, (d_inner,)),
        "z": (z, (batch, d_inner, length)),
        "delta_bias": (delta_bias, (d_inner,)),
    }
    for name, (t, want) in expected.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"selective_scan: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        if shape(t) != want:
            raise ValueError(
                f"selective_scan: {name} must have shape {want} (from u {shape(u)} = (batch, d_inner, L) "
                f"and A {shape(A)} = (d_inner, d_state)); got {shape(t)}"
            )
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C),
                    ("D", D), ("z", z), ("delta_bias", delta_bias)):
        if t is None:
            continue
        if not t.is_floating_point():
            raise TypeError(f"selective_scan: {name} must be a floating-point tensor; got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}; "
                             "all inputs must be on one device")


def prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Cast to float32 and form Δ.

    Returns (u32, dt, A32, B32, C32) with dt = softplus(delta + delta_bias) (softplus only if asked),
    shapes as the inputs. ``.float()`` returns float32 inputs themselves: callers must not modify them in place.
    """
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float().unsqueeze(-1)
    if delta_softplus:
        dt = F.softplus(dt)
    return u.float(), dt, A.float(), B.float(), C.float()


def finish(y: Tensor, u32: Tensor, D, z, dtype: torch.dtype, inplace: bool) -> Tensor:
    """out = (y + D·u) · silu(z), cast to ``dtype``; y (batch, d_inner, L) float32, our own buffer.

    ``inplace`` lets the epilogue reuse y's memory (only when autograd is not recording); the result is
    always contiguous.
    """
    y = y.contiguous()
    if D is not None:
        Du = D.float().unsqueeze(-1)
        y = y.addcmul_(u32, Du) if inplace else torch.addcmul(y, u32, Du)
    if z is not None:
        gate = F.silu(z.float())
        y = y.mul_(gate) if inplace else y * gate
    return y.to(dtype)


def tracking(*tensors) -> bool:
    """True when autograd would record operations on these tensors (then no in-place tricks)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


#: The names of the scan's inputs, in the order of the op's arguments and of its backward's gradients.
INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
