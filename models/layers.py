"""Small layers shared by the model families."""

from __future__ import annotations

import math

import torch


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [cos half | sin half], shape (N, dim).

    Computed in float32 whatever ``t``'s dtype, as DiT, U-ViT and DiM's official code do: float64 would move
    large-t outputs by ~2e-5 relative and break agreement with the official checkpoints' outputs.
    An odd ``dim`` gets one zero column at the end (the official convention).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.reshape(-1).to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
