"""The ``reference`` backend: the selective-scan recurrence written out step by step, in float32.

For every step t (slices taken with ``unbind`` so that autograd stores one small node per step instead of a
full-tensor index backward, which would make the backward quadratic in L):

    Ā_t = exp(Δ_t ⊗ A)                      (batch, d_inner, N)
    x_t = Ā_t ⊙ x_{t-1} + (Δ_t·u_t) ⊗ B_t   x_0 = 0
    y_t = Σ_n x_t[..., n] · C_t[n]          (batch, d_inner)

then out = (y + D·u)·silu(z). L Python steps: readable and slow; it is the in-package oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import finish, prepare, tracking


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True) -> Tensor:
    """Sequential selective scan; shapes as in ``models.scan.common``; returns (batch, d_inner, L) in u's dtype."""
    u32, dt, A32, B32, C32 = prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, d_inner, _ = u32.shape
    x = u32.new_zeros(batch, d_inner, A32.shape[1])  # state (batch, d_inner, N)
    dtu = dt * u32
    ys = []
    for dt_t, dtu_t, B_t, C_t in zip(dt.unbind(-1), dtu.unbind(-1), B32.unbind(-1), C32.unbind(-1), strict=True):
        decay = torch.exp(dt_t.unsqueeze(-1) * A32)                  # (batch, d_inner, N)
        x = decay * x + dtu_t.unsqueeze(-1) * B_t.unsqueeze(1)
        ys.append(torch.matmul(x, C_t.unsqueeze(-1)).squeeze(-1))    # (batch, d_inner)
    y = torch.stack(ys, dim=-1)
    return finish(y, u32, D, z, u.dtype, inplace=not tracking(u32, dt, A32, B32, C32, D, z))
