"""Small layers shared by the model families."""

from __future__ import annotations

import math

import torch
from timm.layers import resample_abs_pos_embed


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


def resize_grid_pos_embed(pos_embed: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(1, prefix + g·g, d) -> (1, prefix + h·w, d) for ``grid`` = (h, w): the grid part resized bilinearly
    (align_corners=False, no antialias, computed in float32, returned in the input's dtype), the ``prefix``
    positions (condition or extra tokens) copied; the table itself when the grid is already (g, g).

    timm's ``resample_abs_pos_embed`` does exactly this arithmetic (tests/test_checkpoints.py proves it against a
    plain F.interpolate); see docs/models.md §6. U-ViT and DiM resize their learnable tables with it.
    """
    n = pos_embed.shape[1] - prefix
    g = math.isqrt(max(n, 0))
    if g * g != n or n == 0:
        raise ValueError(f"position embedding {tuple(pos_embed.shape)}: {n} grid positions is not a square grid")
    if (g, g) == tuple(grid):
        return pos_embed
    # align_corners is left to its bilinear default (False): older timm versions do not take the argument.
    return resample_abs_pos_embed(
        pos_embed, new_size=list(grid), num_prefix_tokens=prefix, interpolation="bilinear", antialias=False
    )
