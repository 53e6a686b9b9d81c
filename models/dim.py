"""DiM — Diffusion Mamba (Teng et al., arXiv 2405.14224), as its official release runs it.

Shapes below: b = batch, C = input channels, p = patch, (h, w) = token grid (input side / p), d = width,
P = (h + 3)(w + 3) = padded grid length, S = 5 + P = sequence length ([t, y, q1, q2, q3, padded grid]).

Forward pass (docs/models.md §4):

    x (b, C, h·p, w·p) ─patch conv─► grid (b, h·w, d) + pos ─3×3 dw conv─► pad ─► [t, y, q1..q3, padded grid]
    ─► N blocks, each: [skip fusion] → scan switch → x + (1+gate)·Mamba(RMSNorm(x)·(1+scale)+shift)
    ─► drop front 5 tokens, un-pad ─► 3×3 dw conv ─► RMSNorm, modulation from SiLU(τ + y_tok) ─► Linear ─► unpatchify

Token reordering (pad insertion, scan switches, pad removal) uses index maps computed once per (grid, pad layout,
device) with arange arithmetic and applied with ``index_select``, so the forward has no Python loops over tokens
and runs on the meta device. The small pure functions (``scan_orders``, ``order_sequence``, ``switch_map``,
``pad_source_map``, ``pad_insert``, ``pad_remove``, ``resize_pos_embed``) are public for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._guards import detect_fake_mode

from . import dim_convert
from .checkpoints import CheckpointError, CheckpointFormat, CheckpointSupport
from .layers import resize_grid_pos_embed, timestep_sinusoid
from .profiling import component
from .registry import (
    SD_VAE_FACTOR,
    DiffusionRecipe,
    Family,
    FamilyOption,
    Timestep,
    register_family,
    register_model,
)
from .scan import selective_scan
from .scan.conv import conv1d_silu

__all__ = [
    "DiM",
    "MambaMixer",
    "DiMBlock",
    "SCAN_CYCLE",
    "N_FRONT",
    "N_PAD",
    "PAD_LAYOUTS",
    "scan_orders",
    "skip_producers",
    "skip_consumers",
    "sequence_length",
    "order_sequence",
    "switch_map",
    "pad_source_map",
    "unpad_map",
    "pad_insert",
    "pad_remove",
    "resize_pos_embed",
    "adapt_state_dict",
    "choose_pad_layout",
    "RELEASE_GRID",
]

# The four scan orders in the order blocks cycle through them: row-major, row-major reversed (whole sequence
# flipped), column-major, column-major reversed.
SCAN_CYCLE = (0, -2, 1, -1)
N_FRONT = 5  # tokens in front of the grid that never move: time token, class token, q1, q2, q3
N_PAD = 3  # pad tokens closing every row and column of the grid (= the Mamba conv kernel, d_conv)
D_CONV = 3
D_STATE = 16
EXPAND = 2
PAD_LAYOUTS = ("lateral", "cyclic")
N_COND = 2  # condition tokens (time, class) that have a position embedding, in front of the grid
RELEASE_GRID = 16  # token grid of DiM's 256-px releases (4x32x32 latents, patch 2), trained "lateral"


# ----------------------------------------------------------------------------------------------------------------
# Scan orders and skips (pure functions of the depth)


def scan_orders(depth: int) -> list[int]:
    """The scan order each block uses (docs/models.md §4.1): values in {0, -2, 1, -1}.

    Block 0 uses 0; blocks 1 .. mid-1 cycle forward through SCAN_CYCLE (index l mod 4), mid = 1 + (depth-1)/2;
    the mid block steps back one index and every later block one more; the last block is forced to 0 so that
    un-padding gathers a row-major sequence.
    """
    if not isinstance(depth, int) or depth < 1 or depth % 2 == 0:
        raise ValueError(f"DiM depth must be a positive odd number of blocks, got {depth!r}")
    mid = 1 + (depth - 1) // 2
    index = [l % 4 if l < mid else (mid - 2 - (l - mid)) % 4 for l in range(depth)]
    orders = [SCAN_CYCLE[i] for i in index]
    orders[-1] = 0
    return orders


def skip_producers(depth: int) -> list[int]:
    """Blocks whose output is pushed as a long skip: 1 .. (depth-1)/2 (block 0 is a stem)."""
    return list(range(1, (depth - 1) // 2 + 1))


def skip_consumers(depth: int) -> list[int]:
    """Blocks that fuse a popped skip before their scan switch: (depth+1)/2 .. depth-1 (LIFO pairing)."""
    return list(range((depth + 1) // 2, depth))


# ----------------------------------------------------------------------------------------------------------------
# Index maps over the padded grid (built once per grid; LongTensors on CPU)


def sequence_length(h: int, w: int) -> int:
    """Tokens in DiM's sequence for an h×w token grid: 2 condition + 3 q tokens + (h+3)(w+3)."""
    return N_FRONT + (h + N_PAD) * (w + N_PAD)


def order_sequence(order: int, h: int, w: int) -> torch.Tensor:
    """(P,) long: the row-major padded-grid index of the token at each position of scan ``order``."""
    H, W = h + N_PAD, w + N_PAD
    rows = torch.arange(H * W).view(H, W)
    if order == 0:
        return rows.reshape(-1)
    if order == -2:
        return rows.reshape(-1).flip(0)
    if order == 1:
        return rows.t().reshape(-1)
    if order == -1:
        return rows.t().reshape(-1).flip(0)
    raise ValueError(f"scan order must be one of {SCAN_CYCLE}, got {order!r}")


def switch_map(from_order: int, to_order: int, h: int, w: int) -> torch.Tensor:
    """(P,) long: ``seq_to = seq_from[:, map]`` re-orders a padded grid from one scan order to another."""
    src = order_sequence(from_order, h, w)
    inverse = torch.empty_like(src)
    inverse[src] = torch.arange(src.numel())
    return inverse[order_sequence(to_order, h, w)]


def pad_source_map(h: int, w: int, layout: str) -> torch.Tensor:
    """(P,) long: for each row-major padded position, its source in ``[grid (h·w), p0, p1, p2]``.

    Real tokens keep their row-major index. "lateral": each real row ends p0 p1 p2 and the 3 bottom rows are all
    p0 / all p1 / all p2. "cyclic": pad positions are filled p0, p1, p2, p0, ... in row-major order (so each real
    row still ends p0 p1 p2, and the bottom rows continue the cycle).
    """
    if layout not in PAD_LAYOUTS:
        raise ValueError(f"pad_layout must be one of {PAD_LAYOUTS}, got {layout!r}")
    H, W = h + N_PAD, w + N_PAD
    r = torch.arange(H).view(H, 1).expand(H, W)
    c = torch.arange(W).view(1, W).expand(H, W)
    real = (r < h) & (c < w)
    if layout == "lateral":
        pad_id = torch.where(r < h, c - w, r - h)
    else:
        pad_rank = torch.cumsum((~real).reshape(-1).long(), 0).view(H, W) - 1
        pad_id = pad_rank % N_PAD
    return torch.where(real, r * w + c, h * w + pad_id).reshape(-1)


def unpad_map(h: int, w: int) -> torch.Tensor:
    """(h·w,) long: positions of the real tokens in a row-major padded grid, in row-major grid order."""
    r = torch.arange(h).view(h, 1)
    c = torch.arange(w).view(1, w)
    return (r * (w + N_PAD) + c).reshape(-1)


def pad_insert(grid: torch.Tensor, pad_tokens: torch.Tensor, h: int, w: int, layout: str) -> torch.Tensor:
    """grid (b, h·w, d), pad_tokens (3, d) -> padded grid (b, P, d) in row-major order."""
    b = grid.shape[0]
    source = torch.cat([grid, pad_tokens.unsqueeze(0).expand(b, -1, -1).to(grid.dtype)], dim=1)
    return source.index_select(1, pad_source_map(h, w, layout).to(grid.device))


def pad_remove(padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """padded grid (b, P, d) in row-major order -> grid (b, h·w, d)."""
    return padded.index_select(1, unpad_map(h, w).to(padded.device))


@dataclass(frozen=True)
class _SequenceMaps:
    """Index maps over the whole sequence (front tokens included) for one grid, layout and device."""

    build: torch.Tensor  # (S,) into [cond(2), q(3), grid(h·w), pads(3)] -> sequence in order 0
    unpad: torch.Tensor  # (h·w,) into a sequence in order 0 -> real grid tokens
    switch: dict[tuple[int, int], torch.Tensor]  # (S,) per (from, to) order pair


_MAP_CACHE: dict[tuple[int, int, str, str], _SequenceMaps] = {}


def _sequence_maps(h: int, w: int, layout: str, device: torch.device) -> _SequenceMaps:
    """Index maps for one grid, cached per (grid, layout, device).

    Built outside inference mode (gather saves its index for backward, so an inference tensor cached by an
    inference-mode forward would break a later training step), and never cached when built under a fake-tensor
    mode (a memory prediction would otherwise leave fake maps behind for the next real forward).
    """
    key = (h, w, layout, str(device))
    if torch.compiler.is_compiling():
        # Traced by torch.compile: maps cached by an earlier eager forward are read as constants, else built in
        # the graph; no fake-mode test (Dynamo's fake tensors are its own) and no cache write (no side effect).
        maps = _MAP_CACHE.get(key)
        return maps if maps is not None else _build_sequence_maps(h, w, layout, device)
    faking = detect_fake_mode() is not None
    maps = None if faking else _MAP_CACHE.get(key)
    if maps is not None:
        return maps
    with torch.inference_mode(False):
        maps = _build_sequence_maps(h, w, layout, device)
    if not faking:
        _MAP_CACHE[key] = maps
    return maps


def _build_sequence_maps(h: int, w: int, layout: str, device: torch.device) -> _SequenceMaps:
    front = torch.arange(N_FRONT)

    def full(grid_map: torch.Tensor) -> torch.Tensor:
        return torch.cat([front, grid_map + N_FRONT]).to(device)

    return _SequenceMaps(
        build=full(pad_source_map(h, w, layout)),
        unpad=(unpad_map(h, w) + N_FRONT).to(device),
        switch={(a, b): full(switch_map(a, b, h, w)) for a in SCAN_CYCLE for b in SCAN_CYCLE if a != b},
    )


# ----------------------------------------------------------------------------------------------------------------
# Position embedding resizing (weak-to-strong, training-free upsampling)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 2 + g·g, d) -> (1, 2 + h·w, d): the grid part resized bilinearly, the 2 condition positions copied
    (:func:`models.layers.resize_grid_pos_embed`)."""
    return resize_grid_pos_embed(pos_embed, N_COND, grid)


def adapt_state_dict(model: DiM, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A dimbench-named DiM state_dict with its position embedding resized to ``model``'s grid (new dict).

    This is the weak-to-strong path (e.g. 16×16 tokens at 256 px -> 32×32 at 512 px); every other parameter
    transfers unchanged. Raises if ``pos_embed`` is missing or its width differs from the model's.
    """
    if "pos_embed" not in state_dict:
        raise KeyError("DiM state_dict has no 'pos_embed' (convert official names first with models.dim_convert)")
    src = state_dict["pos_embed"]
    want = model.pos_embed.shape
    if src.ndim != 3 or src.shape[0] != 1 or src.shape[2] != want[2]:
        raise ValueError(f"'pos_embed' has shape {tuple(src.shape)}; the model expects (1, N, {want[2]})")
    out = dict(state_dict)
    if src.shape != want:
        with torch.no_grad():
            out["pos_embed"] = resize_pos_embed(src, model.grid).contiguous()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Modules


class MambaMixer(nn.Module):
    """Plain Mamba-1 along the sequence: (b, S, d) -> (b, S, d).

    in_proj -> x, z (b, d_inner, S); x -> causal depth-wise conv1d (kernel 3) -> SiLU; x_proj -> (dt, B, C);
    Δ = softplus(dt_proj(dt) + bias) (inside the scan); y = selective_scan(...)·SiLU(z); out_proj.
    """

    def __init__(self, d_model: int, d_state: int = D_STATE, d_conv: int = D_CONV, expand: int = EXPAND):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        # Causal: padded d_conv-1 on both sides, the last d_conv-1 outputs dropped in forward.
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        self.A_log = nn.Parameter(torch.empty(di, d_state))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, d_model, bias=False)

    @torch.no_grad()
    def reset_parameters(self, depth: int) -> None:
        """Mamba-1 initialisation; out_proj re-drawn kaiming-uniform (a=√5) and divided by √depth."""
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        lo, hi = math.log(1e-3), math.log(0.1)
        dt = torch.exp(torch.rand_like(self.dt_proj.bias) * (hi - lo) + lo).clamp(min=1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(A).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight.div_(math.sqrt(depth))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, S, d = h.shape
        di, R, N = self.d_inner, self.dt_rank, self.d_state
        with component("in_proj"):
            # One GEMM for the whole batch, laid out (2·d_inner, b·S) so x, z come out with a contiguous last axis.
            xz = torch.matmul(self.in_proj.weight, h.reshape(b * S, d).t()).view(2 * di, b, S).transpose(0, 1)
            # split, not two slices: its backward is one cat of the two gradients, where each slice's backward
            # zero-fills a whole (b, 2·d_inner, S) gradient and copies its half in (a tenth of a tiny DiM's CPU step)
            x, z = xz.split(di, dim=1)  # (b, d_inner, S) each
        with component("conv1d"):
            # (b, d_inner, S), contiguous: silu(conv1d(x)[..., :S]), one fused kernel on CUDA with the triton scan
            x = conv1d_silu(x, self.conv1d)
        with component("ssm_proj"):
            # Batched products with the weight expanded over the batch: torch.matmul(2-D, 3-D) would copy x.
            x_dbl = torch.matmul(self.x_proj.weight.expand(b, -1, -1), x)  # (b, R + 2N, S)
            # (b, d_inner, S); dt_proj's bias is added inside the scan
            delta = torch.matmul(self.dt_proj.weight.expand(b, -1, -1), x_dbl[:, :R])
            B, C = x_dbl[:, R : R + N], x_dbl[:, R + N :]  # (b, N, S) each
            A = -torch.exp(self.A_log.float())
        with component("scan"):
            y = selective_scan(
                x, delta, A, B, C, D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True
            )  # (b, d_inner, S), already multiplied by SiLU(z)
        with component("out_proj"):
            return F.linear(y.transpose(1, 2), self.out_proj.weight)  # (b, S, d)


class SkipFusion(nn.Module):
    """U-ViT long skip: (hidden (b, S, d), skip (b, S, d)) -> (b, S, d).

    d <= 512: one Linear(2d -> d) on concat(hidden, skip); d > 512: Linear(hidden) + Linear(skip) (the same map
    with a cheaper parameterisation, as in the official code).
    """

    def __init__(self, width: int):
        super().__init__()
        self.split = width > 512
        if self.split:
            self.from_hidden = nn.Linear(width, width)
            self.from_skip = nn.Linear(width, width)
        else:
            self.proj = nn.Linear(2 * width, width)

    def forward(self, hidden: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.split:
            out = self.from_hidden(hidden) + self.from_skip(skip)
        else:
            out = self.proj(torch.cat([hidden, skip], dim=-1))
        return out.to(hidden.dtype)  # autocast returns bf16; the residual stream stays in its own dtype


class DiMBlock(nn.Module):
    """x (b, S, d), c (b, 3, d) -> x + (1 + gate)·Mamba(RMSNorm(x)·(1 + scale) + shift), (shift, scale, gate) =
    mod_table + c. Skip fusion (``skip``) and the scan switch are applied by the caller, before ``forward``."""

    def __init__(self, width: int, consumes_skip: bool):
        super().__init__()
        self.mod_table = nn.Parameter(torch.empty(3, width))
        self.norm = nn.RMSNorm(width, eps=1e-5)
        self.mixer = MambaMixer(width)
        self.skip = SkipFusion(width) if consumes_skip else None

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with component("norm_mod"):
            shift, scale, gate = (self.mod_table + c).unsqueeze(2).unbind(1)  # (b, 1, d) each
            h = torch.addcmul(shift, self.norm(x), 1 + scale)
        h = self.mixer(h)
        with component("residual"):
            return torch.addcmul(x, h, 1 + gate)


class DiM(nn.Module):
    """Class-conditional DiM: ``model(x, t, y=None) -> eps``.

    x: (b, in_channels, H, W) with H, W multiples of ``patch_size`` (any grid; the position embedding is resized
    bilinearly when it differs from ``input_size``). t: (b,) or scalar, the DDPM step in [1, 1000] (fractional
    allowed; the official convention, not DiT's 0..999). y: (b,) long class labels in [0, num_classes], where
    ``num_classes`` (and y=None) is the null class. Returns (b, in_channels, H, W) (ε-prediction, no learned σ).
    The residual stream stays in the parameters' dtype (fp32 under autocast).
    """

    def __init__(
        self,
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        patch_size: int = 2,
        depth: int = 49,
        width: int = 1536,
        pad_layout: str = "lateral",
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        if pad_layout not in PAD_LAYOUTS:
            raise ValueError(f"pad_layout must be one of {PAD_LAYOUTS}, got {pad_layout!r}")
        self.orders = tuple(scan_orders(depth))  # validates depth
        self.input_size, self.in_channels, self.num_classes = input_size, in_channels, num_classes
        self.patch_size, self.depth, self.width, self.pad_layout = patch_size, depth, width, pad_layout
        self.grid = (input_size // patch_size, input_size // patch_size)
        d, K = width, num_classes + 1

        self.patch_embed = nn.Conv2d(in_channels, d, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.empty(1, 2 + self.grid[0] * self.grid[1], d))
        self.t_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))  # MLP_t of adaLN-single
        self.y_mod = nn.Embedding(K, d)  # class table of the modulation path
        self.adaln = nn.Linear(d, 3 * d)  # shared Linear(d -> 3d): shift, scale, gate
        self.y_token = nn.Embedding(K, d)  # class *token* table (separate)
        self.q_tokens = nn.Parameter(torch.empty(N_PAD, d))  # q1..q3 between condition tokens and grid
        self.pad_tokens = nn.Parameter(torch.empty(N_PAD, d))  # p0, p1, p2
        self.smooth_in = nn.Conv2d(d, d, 3, padding=1, groups=d)
        self.smooth_out = nn.Conv2d(d, d, 3, padding=1, groups=d)
        consumers = set(skip_consumers(depth))
        self.blocks = nn.ModuleList(DiMBlock(d, l in consumers) for l in range(depth))
        self._producers = frozenset(skip_producers(depth))
        self.final_norm = nn.RMSNorm(d, eps=1e-5)
        self.final_mod = nn.Linear(d, 2 * d)  # shift, scale
        self.final_proj = nn.Linear(d, patch_size * patch_size * in_channels)
        self.reset_parameters()

    @property
    def config(self) -> dict[str, Any]:
        """The constructor keywords that rebuild this model (the pad layout as it is now)."""
        return dict(
            input_size=self.input_size, in_channels=self.in_channels, num_classes=self.num_classes,
            patch_size=self.patch_size, depth=self.depth, width=self.width, pad_layout=self.pad_layout,
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """docs/models.md §3: Linear biases 0 (not dt_proj's), tables and tokens normal(0.02), pos embed 0, per-block
        tables randn/√d, Mamba init, everything else PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for m in (self.t_mlp[0], self.t_mlp[2]):
            nn.init.normal_(m.weight, std=0.02)
        for p in (self.y_mod.weight, self.y_token.weight, self.q_tokens, self.pad_tokens):
            nn.init.normal_(p, std=0.02)
        nn.init.zeros_(self.pos_embed)
        for blk in self.blocks:
            nn.init.normal_(blk.mod_table)
            blk.mod_table.div_(math.sqrt(self.width))
            blk.mixer.reset_parameters(self.depth)  # sets dt_proj's bias after the zeroing above

    def _smooth(self, conv: nn.Conv2d, grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Depth-wise 3×3 conv over the token grid: (b, h·w, d) -> (b, h·w, d) in grid's dtype.

        The (b, h, w, d) tokens are handed to the conv as a channels-last NCHW view (no transpose copy)."""
        b, _, d = grid.shape
        out = conv(grid.view(b, h, w, d).permute(0, 3, 1, 2))
        return out.permute(0, 2, 3, 1).reshape(b, h * w, d).to(grid.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None) -> torch.Tensor:
        b, C, H_in, W_in = x.shape
        p, d = self.patch_size, self.width
        if C != self.in_channels or H_in % p or W_in % p:
            raise ValueError(
                f"DiM expects x of shape (b, {self.in_channels}, H, W) with H, W multiples of {p}; got {tuple(x.shape)}"
            )
        h, w = H_in // p, W_in // p
        dtype = self.pos_embed.dtype
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        if y is None:
            y = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
        if t.shape != (b,) or y.shape != (b,):
            raise ValueError(f"t and y must have shape ({b},) (or t scalar); got {tuple(t.shape)}, {tuple(y.shape)}")

        with component("conditioning"):
            # Conditioning: shared modulation c (b, 3, d); time token = raw sinusoid (b, d); class token (b, d).
            t_sin = timestep_sinusoid(t, d).to(dtype)
            y_tok = self.y_token(y)
            e = self.t_mlp(timestep_sinusoid(t, 256).to(dtype)) + self.y_mod(y)
            c = self.adaln(F.silu(e)).view(b, 3, d)

        with component("patch_embed"):
            pos = resize_pos_embed(self.pos_embed, (h, w))  # returns the parameter itself on the native grid
            grid = self.patch_embed(x).flatten(2).transpose(1, 2).to(dtype) + pos[:, 2:]  # (b, h·w, d)
        with component("grid_conv"):
            grid = self._smooth(self.smooth_in, grid, h, w)
        with component("conditioning"):
            cond = torch.stack([t_sin, y_tok], dim=1) + pos[:, :2]  # (b, 2, d)

        with component("pad"):
            maps = _sequence_maps(h, w, self.pad_layout, x.device)
            source = torch.cat(
                [cond, self.q_tokens.expand(b, -1, -1), grid, self.pad_tokens.expand(b, -1, -1)], dim=1
            )
            seq = source.index_select(1, maps.build)  # (b, S, d) in scan order 0

        skips: list[torch.Tensor] = []
        order = 0
        for l, blk in enumerate(self.blocks):
            if blk.skip is not None:
                with component("skip_fusion"):
                    seq = blk.skip(seq, skips.pop())
            if self.orders[l] != order:
                with component("scan_switch"):
                    seq = seq.index_select(1, maps.switch[(order, self.orders[l])])
                order = self.orders[l]
            seq = blk(seq, c)
            if l in self._producers:
                skips.append(seq)

        with component("pad"):
            grid = seq.index_select(1, maps.unpad)  # the last block scans in order 0 (row-major)
        with component("grid_conv"):
            grid = self._smooth(self.smooth_out, grid, h, w)
        with component("final_layer"):
            shift, scale = self.final_mod(F.silu(t_sin + y_tok)).unsqueeze(1).chunk(2, dim=-1)  # (b, 1, d) each
            out = self.final_proj(torch.addcmul(shift, self.final_norm(grid), 1 + scale))  # (b, h·w, p·p·C)
            out = out.view(b, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)
            return out.reshape(b, C, h * p, w * p)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints (docs/models.md §5): official names converted by models.dim_convert; the pad layout chosen at load


def choose_pad_layout(explicit: str | None, checkpoint_grid: int, target_grid: int, saved: str | None = None):
    """DiM's pad layout for loaded weights, and why: ``(layout, reason)`` (docs/models.md §4.3).

    The layout is not stored in official checkpoints; it follows how the weights are used: an explicit choice
    wins; a target grid larger than the checkpoint's training grid means training-free upsampling, run
    "cyclic"; a dimbench file keeps the layout it was saved with; a checkpoint trained on a grid larger than the
    256-px releases' 16x16 (the 512 fine-tune, grid 32) is "cyclic"; otherwise (256-px releases and smaller)
    "lateral".
    """
    if explicit is not None:
        if explicit not in PAD_LAYOUTS:
            raise CheckpointError(f"pad_layout must be one of {', '.join(PAD_LAYOUTS)}, got {explicit!r}")
        return explicit, "given explicitly"
    if target_grid > checkpoint_grid:
        return "cyclic", f"input grid {target_grid} > the checkpoint's training grid {checkpoint_grid} (upsampling)"
    if saved is not None:
        return saved, "as saved in the dimbench checkpoint"
    if checkpoint_grid > RELEASE_GRID:
        return "cyclic", f"checkpoint trained on a {checkpoint_grid}x{checkpoint_grid} grid (the 512 fine-tune)"
    return "lateral", (
        f"checkpoint trained on a {checkpoint_grid}x{checkpoint_grid} grid, not larger than the 256-px releases' "
        f"{RELEASE_GRID}x{RELEASE_GRID} (trained lateral)"
    )


def _choose_options(given: dict, saved: dict, description: dict, settings: dict) -> dict[str, tuple[str, str]]:
    """The pad layout for a load (models.checkpoints.CheckpointSupport.choose_options)."""
    target_grid = settings["input_size"] // settings["patch_size"]
    layout = choose_pad_layout(given.get("pad_layout"), description["grid"], target_grid, saved.get("pad_layout"))
    return {"pad_layout": layout}


def describe_state_dict(state_dict) -> dict[str, Any]:
    """Architecture facts from a dimbench-named DiM state_dict (models.dim_convert.infer_dim_config)."""
    cfg = dim_convert.infer_dim_config(state_dict)
    return dict(
        width=cfg["width"], depth=cfg["depth"], patch=cfg["patch_size"], grid=cfg["grid"],
        in_channels=cfg["in_channels"], classes=cfg["num_classes"], class_rows=cfg["num_classes"] + 1,
    )


_DIMBENCH_KEYS = frozenset({"patch_embed.weight", "pos_embed", "pad_tokens"})


CHECKPOINTS = CheckpointSupport(
    formats=(
        CheckpointFormat(
            "dim-official",
            detect=dim_convert.is_official_dim,
            convert=dim_convert.official_to_dimbench,
            description="DiM's nnet.pth / nnet_ema.pth (official diffusers-style names, converted)",
        ),
        CheckpointFormat(
            "dim-dimbench",
            keys=_DIMBENCH_KEYS,
            description="a plain state_dict of dimbench's DiM (dimbench names)",
        ),
    ),
    describe=describe_state_dict,
    adapt=adapt_state_dict,
    choose_options=_choose_options,
)

FAMILY = register_family(Family(
    name="dim",
    display="DiM",
    description="Diffusion Mamba (Teng et al., arXiv 2405.14224): multi-directional Mamba scans over a padded "
    "token grid, local depth-wise convolutions, long skips",
    timestep=Timestep(1, 1000, integer=False, meaning="DDPM step n in [1, 1000] (float; fractions allowed)"),
    role="subject",
    order=0,
    sizes={(25, 512): "S", (49, 1024): "L", (49, 1536): "H"},
    # A point that sets the pad layout shows it as "pad=<layout>" in its key (the key results have always had).
    options={"pad_layout": FamilyOption(
        PAD_LAYOUTS, key="pad",
        description="where the pad tokens go (lateral: closing rows and the bottom; cyclic: p0 p1 p2 repeated in "
        "row-major order), docs/models.md §4.2")},
    module_types=(DiM,),
    checkpoints=CHECKPOINTS,
    # dim.md §5-7: SD scaled-linear betas, DPM-Solver++ with 50 evaluations, s = 0.4 at 256 px; the fine-tune
    # at a higher resolution switches the pad layout to cyclic (§6).
    diffusion=DiffusionRecipe("sd_scaled_linear", "dpm_solver++", 50, 0.4, finetune={"pad_layout": "cyclic"}),
))

# ----------------------------------------------------------------------------------------------------------------
# Official configurations (docs/models.md §2.1)


@register_model(
    "dim_s_2",
    family="dim",
    official="cifar10_S_DiM",
    description="DiM-S/2, CIFAR-10 pixels, unconditional (null class)",
    input_size=32,
    in_channels=3,
    num_classes=10,
    patch_size=2,
    depth=25,
    width=512,
)
def dim_s_2(**kwargs) -> DiM:
    return DiM(**kwargs)


@register_model(
    "dim_l_2",
    family="dim",
    official="imagenet256_L_DiM",
    description="DiM-L/2, ImageNet 256 latents",
    latent_factor=SD_VAE_FACTOR,
    input_size=32,
    in_channels=4,
    num_classes=1000,
    patch_size=2,
    depth=49,
    width=1024,
)
def dim_l_2(**kwargs) -> DiM:
    return DiM(**kwargs)


@register_model(
    "dim_h_2",
    family="dim",
    official="imagenet256_H_DiM",
    description="DiM-H/2, ImageNet 256 latents (input_size=64, pad_layout='cyclic' for the 512 fine-tune)",
    latent_factor=SD_VAE_FACTOR,
    input_size=32,
    in_channels=4,
    num_classes=1000,
    patch_size=2,
    depth=49,
    width=1536,
)
def dim_h_2(**kwargs) -> DiM:
    return DiM(**kwargs)


@register_model(
    "dim_tiny_4",
    family="dim",
    official="dimbench",
    description="dimbench's tiny DiM for CPU quality checks: 5 blocks, width 64, patch 4, 1-channel 16 px, 10 classes",
    input_size=16,
    in_channels=1,
    num_classes=10,
    patch_size=4,
    depth=5,
    width=64,
)
def dim_tiny_4(**kwargs) -> DiM:
    return DiM(**kwargs)


@register_model(
    "dim_tiny_2",
    family="dim",
    official="dimbench",
    description="dimbench's tiny DiM for the CPU quality suite: 5 blocks, width 64, patch 2, 1-channel 8 px (a 4x4 "
    "token grid, 54 tokens with DiM's pads and front tokens), 10 classes",
    input_size=8,
    in_channels=1,
    num_classes=10,
    patch_size=2,
    depth=5,
    width=64,
)
def dim_tiny_2(**kwargs) -> DiM:
    return DiM(**kwargs)
