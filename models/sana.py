"""SANA-cc: SANA's linear-attention DiT block (Xie et al., arXiv 2410.10629), class-conditional. An ADAPTATION.

SANA has no class-conditional ImageNet model: every release is text-to-image with cross-attention. dimbench's
SANA-XL/2-cc (shared/spec/peers.md §2.5) keeps SANA's defining block at the DiT-XL shape of the official
``SanaMS_600M_P2_D28`` (28 blocks, width 1152, patch 2) and conditions it the DiT way:

- kept: ReLU linear attention (36 heads of 32, no 1/√d, ε = 1e-8, the core in float32 outside autocast),
  Mix-FFN (GLUMBConv: 1x1 to 2·Hd with SiLU, 3x3 depth-wise, value·SiLU(gate), 1x1 back, Hd = 2.5C), adaLN-single
  (one shared t_block, a 6 x C table per block, the final layer's 2 x C table on the raw condition), no position
  embedding, SANA's initialisation (nothing zero-initialised; the convs keep PyTorch's defaults);
- changed: the text cross-attention, caption MLP and y-norm are removed; the condition is c = t_emb + y_emb with
  DiT's label table (1001 rows, the last the null class, N(0, 0.02)); learned sigma (8 output channels) for
  dimbench's DiT diffusion; the timestep is not truncated to an integer (SanaMS's ``long()``), as ``t`` is one.

Parameter names follow the official block (x_embedder.proj, t_embedder.mlp.{0,2}, t_block.1, y_embedder.
embedding_table, blocks.N.{scale_shift_table, attn.qkv, attn.proj, mlp.inverted_conv.conv, mlp.depth_conv.conv,
mlp.point_conv.conv}, final_layer.{scale_shift_table, linear}).

Linear attention, per head (q, k after ReLU; v; all float32):

    o_i = Σ_j v_j (q_i·k_j) / (Σ_j q_i·k_j + ε)

computed as SANA does: v padded with a row of ones, S = v′ kᵀ ((d+1) x d, summed over tokens), out = S q, the last
row the denominator: O(N·d²) per head, the N x N matrix never formed. A query whose ReLU is all zero gets 0 / ε = 0.

Conventions as DiT's: ``t`` in 0 ... 999, ``y=None`` the null class.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed

from .checkpoints import CheckpointFormat, CheckpointSupport, count_indexed, shape_of
from .dit import DiT, LabelEmbedder, TimestepEmbedder
from .profiling import component
from .registry import SD_VAE_FACTOR, DiffusionRecipe, Family, Timestep, register_family, register_model

HEAD_DIM = 32  # SANA's linear heads are 32 wide whatever the width
EPS = 1e-8  # the official blocks' ε (the class default and diffusers' port use 1e-15)
FP16_MAX = 65504.0

ADAPTATION = ("ADAPTATION of SANA (no official class-conditional SANA exists): SANA's linear-attention block at "
              "SanaMS_600M_P2_D28's shape, text cross-attention replaced by DiT's class conditioning")


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """SANA's ReLU linear attention, (B, H, N, d) x3 -> (B, H, N, d), float32 (see the module docstring).

    ReLU is applied in the inputs' dtype, then the core runs in float32 with autocast off; the result is float32
    (float64 for float64 inputs).
    """
    q, k = F.relu(q), F.relu(k)
    # Autocast exists for real devices only; on the meta device there is nothing to turn off.
    no_autocast = torch.autocast(q.device.type, enabled=False) if q.device.type in ("cuda", "cpu") else nullcontext()
    with no_autocast:
        dtype = torch.promote_types(q.dtype, torch.float32)  # float32 (float64 stays float64, for the tests)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        v = F.pad(v, (0, 1), value=1.0)  # (B, H, N, d + 1): the last channel sums the scores
        state = v.transpose(-1, -2) @ k  # (B, H, d + 1, d)
        out = q @ state.transpose(-1, -2)  # (B, H, N, d + 1)
        return out[..., :-1] / (out[..., -1:] + eps)


class LinearAttention(nn.Module):
    """(N, T, C) -> (N, T, C): qkv (no bias), C/32 ReLU linear heads, proj (bias)."""

    def __init__(self, width: int):
        super().__init__()
        if width % HEAD_DIM:
            raise ValueError(f"SANA: width {width} is not a multiple of the linear head dim {HEAD_DIM}")
        self.heads = width // HEAD_DIM
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, width = x.shape
        # [q | k | v], head j owning channels [32j, 32j + 32): (N, T, 3, h, d) -> (3, N, h, T, d)
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, HEAD_DIM).permute(2, 0, 3, 1, 4)
        out = relu_linear_attention(q, k, v).to(x.dtype).transpose(1, 2).reshape(n, tokens, width)
        out = self.proj(out)
        if torch.get_autocast_dtype("cuda") == torch.float16:
            # SANA clips to the fp16 range whenever the configured autocast GPU dtype is fp16 (torch's default,
            # even without autocast): harmless unless activations leave that range; replicated.
            out = out.clamp(-FP16_MAX, FP16_MAX)
        return out


class ConvLayer(nn.Module):
    """A conv under the official ``.conv`` name."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MixFFN(nn.Module):
    """GLUMBConv: (N, T, C) on an h x w grid (row-major) -> (N, T, C)."""

    def __init__(self, width: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.inverted_conv = ConvLayer(width, 2 * hidden, 1)
        self.depth_conv = ConvLayer(2 * hidden, 2 * hidden, 3, groups=2 * hidden)
        self.point_conv = ConvLayer(hidden, width, 1, bias=False)

    def forward(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        n, tokens, width = x.shape
        h = x.reshape(n, grid, grid, width).permute(0, 3, 1, 2)
        h = self.depth_conv(F.silu(self.inverted_conv(h)))  # SiLU on both halves before the depth-wise conv
        value, gate = h.chunk(2, dim=1)
        h = self.point_conv(value * F.silu(gate))
        return h.flatten(2).transpose(1, 2)


class SanaBlock(nn.Module):
    """(N, T, C), t0 (N, 6C) -> (N, T, C): gated linear attention then gated Mix-FFN, adaLN-single."""

    def __init__(self, width: int, mlp_ratio: float, grid: int):
        super().__init__()
        self.grid = grid
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = LinearAttention(width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = MixFFN(width, mlp_ratio)
        self.scale_shift_table = nn.Parameter(torch.randn(6, width) / width**0.5)

    def forward(self, x: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
        with component("norm_mod"):
            mods = self.scale_shift_table[None] + t0.reshape(x.shape[0], 6, -1)
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods.chunk(6, dim=1)  # each (N, 1, C)
            h = self.norm1(x) * (1 + scale_a) + shift_a
        with component("attention"):
            h = self.attn(h)
        with component("residual"):
            x = x + gate_a * h
        with component("norm_mod"):
            h = self.norm2(x) * (1 + scale_m) + shift_m
        with component("mlp"):
            h = self.mlp(h, self.grid)
        with component("residual"):
            return x + gate_m * h


class FinalLayer(nn.Module):
    """T2IFinalLayer: (N, T, C), c (N, C) -> (N, T, p*p*C_out); shift/scale = table + c (no SiLU, no t_block)."""

    def __init__(self, width: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, width) / width**0.5)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + c[:, None]).chunk(2, dim=1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class SanaCC(nn.Module):
    """SANA-cc denoiser: ``model(x, t, y=None) -> (N, C_out, S, S)`` (see the module docstring)."""

    family = "sana_cc"

    def __init__(
        self,
        *,
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        patch_size: int = 2,
        depth: int = 28,
        width: int = 1152,
        mlp_ratio: float = 2.5,
        learn_sigma: bool = True,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"SANA-cc: input_size {input_size} is not a multiple of patch_size {patch_size}")
        self.config: dict[str, Any] = dict(
            input_size=input_size, in_channels=in_channels, num_classes=num_classes, patch_size=patch_size,
            depth=depth, width=width, mlp_ratio=mlp_ratio, learn_sigma=learn_sigma,
        )
        self.input_size, self.in_channels, self.patch_size = input_size, in_channels, patch_size
        self.num_classes, self.depth, self.width = num_classes, depth, width
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.grid = input_size // patch_size

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, width, bias=True)
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = LabelEmbedder(num_classes, width)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.blocks = nn.ModuleList(SanaBlock(width, mlp_ratio, self.grid) for _ in range(depth))
        self.final_layer = FinalLayer(width, patch_size, self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """SANA's initialisation (peers.md §2.3) plus DiT's label table.

        Every Linear Xavier-uniform, bias 0; the patch conv Xavier on its 2-D view with its default bias (SANA
        does not zero it); the timestep-MLP and t_block weights N(0, 0.02); the label table N(0, 0.02) (DiT's,
        part of the adaptation); the scale-shift tables randn/√C (at construction); the Mix-FFN convs PyTorch's
        defaults. Nothing is zero-initialised: not the gates, not the final Linear (SANA's choice, kept).
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1]):
            nn.init.normal_(lin.weight, std=0.02)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)

    unpatchify = DiT.unpatchify  # (N, T, p*p*C_out) -> (N, C_out, S, S), as DiT

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, S, S), t (N,) in 0...999, y (N,) class indices or None (null class) -> (N, C_out, S, S)."""
        with component("patch_embed"):
            h = self.x_embedder(x)  # no position embedding
        with component("conditioning"):
            c = self.t_embedder(t) + self.y_embedder(y, x.shape[0], x.device)
            t0 = self.t_block(c)  # computed once, shared by every block
        for block in self.blocks:
            h = block(h, t0)
        with component("final_layer"):
            return self.unpatchify(self.final_layer(h, c))


# ---- checkpoints: no official class-conditional SANA exists; dimbench's own saved models (plain state_dicts) ----

_KEYS = frozenset({"x_embedder.proj.weight", "t_block.1.weight", "blocks.0.scale_shift_table",
                   "blocks.0.mlp.inverted_conv.conv.weight", "final_layer.scale_shift_table"})


def describe_state_dict(state_dict) -> dict[str, Any]:
    """Architecture facts from a SANA-cc state_dict's shapes. ``grid``: the model has no position table, so the
    token grid is not in the file; the registered 256-px grid (16) is assumed. Extra: ``mlp_ratio``."""
    width, in_channels, patch, _ = shape_of(state_dict, "x_embedder.proj.weight")
    rows = shape_of(state_dict, "y_embedder.embedding_table.weight")[0]
    out_channels = shape_of(state_dict, "final_layer.linear.weight")[0] // (patch * patch)
    hidden = shape_of(state_dict, "blocks.0.mlp.point_conv.conv.weight")[1]
    return dict(
        width=width, depth=count_indexed(state_dict, "blocks.", ".attn.qkv.weight"), patch=patch, grid=32 // patch,
        in_channels=in_channels, classes=rows - 1, class_rows=rows, mlp_ratio=hidden / width,
        learn_sigma=out_channels == 2 * in_channels,
    )


def data_kwargs(description: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    out = {k: description[k] for k in ("in_channels", "depth", "width", "mlp_ratio", "learn_sigma")}
    return out | {"num_classes": description["classes"], "patch_size": description["patch"]}


def adapt_state_dict(model: SanaCC, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """No position embedding: nothing depends on the grid (a new dict)."""
    return dict(state_dict)


CHECKPOINTS = CheckpointSupport(
    formats=(CheckpointFormat("sana-cc", keys=_KEYS, description="a plain state_dict of dimbench's SANA-cc "
                              "adaptation (no official class-conditional SANA exists)"),),
    describe=describe_state_dict,
    adapt=adapt_state_dict,
    data_kwargs=data_kwargs,
    labels={"mlp_ratio": "Mix-FFN ratio", "learn_sigma": "learned sigma"},
)

FAMILY = register_family(Family(
    name="sana_cc",
    display="SANA-cc",
    description="SANA-cc, an ADAPTATION: SANA's (Xie et al., arXiv 2410.10629) ReLU linear-attention block with "
    "Mix-FFN and adaLN-single, class-conditioned the DiT way (no official class-conditional SANA exists)",
    timestep=Timestep(0, 999, integer=True, meaning="DDPM step index in 0 ... 999 (integer), as DiT"),
    role="other",
    order=5,
    sizes={(28, 1152): "XL"},
    module_types=(SanaCC,),
    checkpoints=CHECKPOINTS,
    # Trained the DiT way (part of the adaptation): linear betas, learned sigma, 250 DDPM steps, DiT's guidance.
    diffusion=DiffusionRecipe("linear", "ddpm", 250, 0.5, guided_channels=3),
    adaptation=ADAPTATION,
))

register_model(
    "sana_xl_2_cc", family="sana_cc", official="adaptation (of SanaMS_600M_P2_D28)",
    description="SANA-XL/2-cc, an ADAPTATION: 28 blocks, width 1152, 36 ReLU linear heads of 32, Mix-FFN 2.5, "
    "adaLN-single, no position embedding, patch 2, DiT class conditioning, learned sigma",
    latent_factor=SD_VAE_FACTOR, input_size=32, in_channels=4, num_classes=1000, patch_size=2, depth=28, width=1152,
    mlp_ratio=2.5,
)(SanaCC)

# dimbench's own size, matched to dit_tiny_4 (5 blocks, width 64, patch 4, 1-channel 16 px, 10 classes): 2 linear
# heads of 32.
register_model(
    "sana_tiny_4_cc", family="sana_cc", official="dimbench",
    description="dimbench's tiny SANA-cc (an ADAPTATION) for CPU quality checks: 5 blocks, width 64, 2 linear heads, "
    "patch 4, 1-channel 16 px, 10 classes, learned sigma",
    input_size=16, in_channels=1, num_classes=10, patch_size=4, depth=5, width=64, mlp_ratio=2.5,
)(SanaCC)
register_model(
    "sana_tiny_2_cc", family="sana_cc", official="dimbench",
    description="dimbench's tiny SANA-cc (an ADAPTATION) for the CPU quality suite: 5 blocks, width 64, 2 linear "
    "heads, patch 2, 1-channel 8 px (16 tokens), 10 classes, learned sigma",
    input_size=8, in_channels=1, num_classes=10, patch_size=2, depth=5, width=64, mlp_ratio=2.5,
)(SanaCC)
