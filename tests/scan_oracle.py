"""The selective scan's specification, for tests of every backend: the recurrence one step at a time in float64.

Differentiable (autograd gives the reference gradients). Softplus is torch's (identity above 20, as every
backend), the gate SiLU(z); shapes as in ``models.scan.common``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def recurrence64(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """out (batch, d_inner, L), float64: x_t = exp(Δ_t·A) ⊙ x_{t-1} + Δ_t u_t B_t, y_t = C_t·x_t, (y + D·u)·silu(z)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    dt = delta + delta_bias.double()[:, None] if delta_bias is not None else delta
    if delta_softplus:
        dt = F.softplus(dt)
    x = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64, device=u.device)
    ys = []
    for t in range(u.shape[-1]):
        x = torch.exp(dt[:, :, t, None] * A) * x + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((x * C[:, None, :, t]).sum(-1))
    out = torch.stack(ys, dim=-1)
    if D is not None:
        out = out + D.double()[:, None] * u
    if z is not None:
        out = out * F.silu(z.double())
    return out
