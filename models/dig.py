"""DiG (Zhu et al., arXiv 2405.18428): DiT with gated linear attention and a four-way spatial reorientation.

Written from the description in shared/spec/peers.md §3 (no code of the official release is used); parameter
names are the official ones (x_embedder.proj, pos_embed, t_embedder.mlp.{0,2}, y_embedder.embedding_table,
blocks.N.{attn.{q,k,v,g,o}_proj, attn.gk_proj.{0,1}, attn.g_norm_swish_gate, mlp.gate_proj, mlp.down_proj,
adaLN_modulation.1, dw_conv, skip_linear}, final_layer.{linear, adaLN_modulation.1}), so an official state_dict
loads strictly.

Shapes (N = batch, S = input side, p = patch, s = S/p, T = s², C = width, h heads, dk = C/(2h), dv = C/h):

    x (N, 4, S, S) --patchify--> (N, T, C) + frozen sin-cos pos_embed;  c = t_embedder(t) + y_embedder(y)
    block i (sequence in scan order i mod 4: row-major, reversed row-major, column-major, reversed column-major):
        [skip blocks: h = skip_linear(concat[h, popped skip])]
        h = h + gate1 · GLA(LN(h)·(1+scale1)+shift1);  h = h + gate2 · SwiGLU(LN(h)·(1+scale2)+shift2)
        h = dw_conv3x3(h laid row-major on the s x s grid in its *current* order)     (replaces h, no residual)
        then h is reversed, and after odd blocks the grid is also transposed: the next block's order
    final_layer (DiT's) --unpatchify--> (N, 8, S, S)

GLA (models.gla): q, k = Linear(C -> C/2) (no bias), v, g = Linear(C -> C) (no bias), the forget gate
logsigmoid(Linear(16 -> C/2, bias)(Linear(C -> 16)(u))) / 16, causal recurrence in the current scan order with q
scaled by dk^-1/2, per-head RMSNorm (eps 1e-6, weight of length dv shared by the heads) times swish(g), o_proj.
SwiGLU: gate_proj C -> 2I ([gate | up], no bias), silu(gate)·up in float32, down_proj I -> C (no bias), with
I = 256·ceil(floor(8C/3) / 256).

Long skips (the ``skip`` variants): blocks with index > depth/2 fuse the output pushed after block depth-2-i
(LIFO; outputs after blocks i < depth/2 - 1 are pushed, after that block's reversal and transposition). Every
other skip therefore joins tokens in another scan order, at mismatched positions: that is the official function,
replicated (:func:`skip_alignment`).

Conventions as DiT's: ``t`` is the DDPM step index in 0 ... 999; ``y=None`` the null class; learned sigma. The
token grid is fixed at construction; the depth must be a multiple of 4 so that the output comes back in raster
order (the official code does not undo the permutation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed

from .checkpoints import CheckpointFormat, CheckpointSupport, count_indexed, shape_of, square_side
from .dit import DiT, DiTBlock, FinalLayer, LabelEmbedder, TimestepEmbedder, adapt_state_dict, sincos_pos_embed_2d
from .gla import gated_linear_attention
from .profiling import component
from .registry import SD_VAE_FACTOR, DiffusionRecipe, Family, Timestep, register_family, register_model

GATE_RANK = 16  # the forget gate's low rank, and its logit normaliser
GLA_INIT_GAIN = 2**-2.5  # Xavier gain of every Linear of the attention module
SKIP_KINDS = ("none", "skip", "skipzero")


def mlp_hidden(width: int) -> int:
    """SwiGLU width: 2/3 of 4C, rounded up to a multiple of 256 (L: 2816, not 2730)."""
    return 256 * math.ceil(int(width * 4 * 2 / 3) / 256)


class RMSNormSwishGate(nn.Module):
    """o (..., dv), g (..., dv) -> RMSNorm(o)·weight·swish(g), in float32 (returned in o's dtype)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, o: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        of, gf = o.float(), g.float()
        normed = of * torch.rsqrt(of.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float() * F.silu(gf)).to(o.dtype)


class GatedLinearAttention(nn.Module):
    """(N, T, C) -> (N, T, C): causal GLA over the sequence in its current order (see the module docstring)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % (2 * heads):
            raise ValueError(f"DiG: width {width} is not divisible by 2 x heads ({heads})")
        self.heads, self.dk, self.dv = heads, width // (2 * heads), width // heads
        self.q_proj = nn.Linear(width, width // 2, bias=False)
        self.k_proj = nn.Linear(width, width // 2, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.g_proj = nn.Linear(width, width, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(width, GATE_RANK, bias=False), nn.Linear(GATE_RANK, width // 2))
        self.o_proj = nn.Linear(width, width, bias=False)
        self.g_norm_swish_gate = RMSNormSwishGate(self.dv)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        n, tokens, width = u.shape

        def heads(x: torch.Tensor, dim: int) -> torch.Tensor:  # (N, T, h*dim) -> (N, h, T, dim)
            return x.reshape(n, tokens, self.heads, dim).transpose(1, 2)

        q, k = heads(self.q_proj(u), self.dk), heads(self.k_proj(u), self.dk)
        v = heads(self.v_proj(u), self.dv)
        gk = heads(F.logsigmoid(self.gk_proj(u)) / GATE_RANK, self.dk)
        o = gated_linear_attention(q, k, v, gk, self.dk**-0.5).transpose(1, 2)  # (N, T, h, dv)
        g = self.g_proj(u).reshape(n, tokens, self.heads, self.dv)
        return self.o_proj(self.g_norm_swish_gate(o, g).reshape(n, tokens, width))


class SwiGLU(nn.Module):
    """(N, T, C) -> (N, T, C): down_proj(silu(gate)·up) with [gate | up] = gate_proj(x); the product in float32."""

    def __init__(self, width: int):
        super().__init__()
        hidden = mlp_hidden(width)
        self.gate_proj = nn.Linear(width, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x).chunk(2, dim=-1)
        return self.down_proj((F.silu(gate.float()) * up.float()).to(gate.dtype))


class DiGBlock(DiTBlock):
    """(N, T, C), c (N, C) [, skip (N, T, C)] -> (N, T, C), all in the block's scan order on a ``grid`` x ``grid``
    token grid: DiT's adaLN-Zero block (its forward) with GLA and SwiGLU, then the depth-wise conv."""

    def __init__(self, width: int, heads: int, grid: int, skip: bool = False):
        nn.Module.__init__(self)  # DiT's layers are replaced, not built
        self.grid = grid
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = GatedLinearAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(width)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.dw_conv = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.skip_linear = nn.Linear(2 * width, width) if skip else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            with component("skip_fusion"):
                x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = super().forward(x, c)
        with component("grid_conv"):
            n, tokens, width = x.shape
            grid = x.reshape(n, self.grid, self.grid, width).permute(0, 3, 1, 2)
            return self.dw_conv(grid).permute(0, 2, 3, 1).reshape(n, tokens, width)


def reorient(x: torch.Tensor, index: int, grid: int) -> torch.Tensor:
    """The sequence after block ``index``: reversed, and after odd blocks the s x s grid transposed as well."""
    x = x.flip(1)
    if index % 2:
        n, tokens, width = x.shape
        x = x.reshape(n, grid, grid, width).transpose(1, 2).reshape(n, tokens, width)
    return x


def skip_pairs(depth: int) -> dict[int, int]:
    """{block taking a skip: block whose (reoriented) output it takes}, as the official loop pairs them."""
    pushed = list(range(depth // 2 - 1))
    return {i: pushed.pop() for i in range(depth) if i > depth // 2}


def skip_alignment(depth: int) -> dict[int, bool]:
    """{skip block: whether the skip is in the block's own scan order}. The output pushed after block j is in
    order (j + 1) mod 4, block i scans in order i mod 4: every other skip joins mismatched positions."""
    return {i: (j + 1) % 4 == i % 4 for i, j in skip_pairs(depth).items()}


class DiG(nn.Module):
    """DiG denoiser: ``model(x, t, y=None) -> (N, C_out, S, S)`` (see the module docstring).

    ``skip``: "none", "skip" (long skips, Xavier-initialised fusion) or "skipzero" (the fusion starts as the
    pass-through [I | 0] of the current stream); the two skip kinds differ only in their initialisation.
    """

    family = "dig"

    def __init__(
        self,
        *,
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        patch_size: int = 2,
        depth: int = 28,
        width: int = 1152,
        heads: int = 18,
        skip: str = "none",
        learn_sigma: bool = True,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"DiG: input_size {input_size} is not a multiple of patch_size {patch_size}")
        if depth % 4:
            raise ValueError(f"DiG: depth {depth} must be a multiple of 4 (the scan order has period 4 and the "
                             "output must come back in raster order)")
        if skip not in SKIP_KINDS:
            raise ValueError(f"DiG: skip must be one of {', '.join(SKIP_KINDS)}, got {skip!r}")
        self.config: dict[str, Any] = dict(
            input_size=input_size, in_channels=in_channels, num_classes=num_classes, patch_size=patch_size,
            depth=depth, width=width, heads=heads, skip=skip, learn_sigma=learn_sigma,
        )
        self.input_size, self.in_channels, self.patch_size = input_size, in_channels, patch_size
        self.num_classes, self.depth, self.width, self.heads, self.skip = num_classes, depth, width, heads, skip
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.grid = input_size // patch_size

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, width, bias=True)
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = LabelEmbedder(num_classes, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2, width), requires_grad=False)
        takes_skip = skip_pairs(depth) if skip != "none" else {}
        self.blocks = nn.ModuleList(DiGBlock(width, heads, self.grid, i in takes_skip) for i in range(depth))
        self.final_layer = FinalLayer(width, patch_size, self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The official initialisation (peers.md §3.4), in its order.

        The attention modules' Linears Xavier-uniform with gain 2^-2.5 (the gate's second bias 0, the norm
        weight 1), and nothing below touches them; every other Linear Xavier-uniform (gain 1), bias 0; every
        3x3 depth-wise conv the identity (centre tap 1, bias 0); pos_embed the sin-cos table; the patch conv
        Xavier on its 2-D view, bias 0; label table and timestep-MLP weights N(0, 0.02); adaLN, final adaLN and
        final Linear zero; "skipzero" fusions [I | 0]. A fresh model outputs exactly 0.
        """
        attention = {id(m) for block in self.blocks for m in block.attn.modules()}
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=GLA_INIT_GAIN if id(m) in attention else 1.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for block in self.blocks:
            block.attn.g_norm_swish_gate.weight.fill_(1.0)
            conv = block.dw_conv
            conv.weight.zero_()
            conv.weight[:, :, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
            nn.init.zeros_(conv.bias)
        self.pos_embed.copy_(sincos_pos_embed_2d(self.width, self.grid).unsqueeze(0).to(self.pos_embed.device))
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zeroed = [block.adaLN_modulation[-1] for block in self.blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for lin in zeroed:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        if self.skip == "skipzero":
            for block in self.blocks:
                if block.skip_linear is not None:
                    block.skip_linear.weight.zero_()
                    block.skip_linear.weight[:, : self.width] = torch.eye(self.width)
                    nn.init.zeros_(block.skip_linear.bias)

    unpatchify = DiT.unpatchify  # (N, T, p*p*C_out) -> (N, C_out, S, S), as DiT

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, S, S), t (N,) in 0...999, y (N,) class indices or None (null class) -> (N, C_out, S, S)."""
        with component("patch_embed"):
            h = self.x_embedder(x) + self.pos_embed
        with component("conditioning"):
            c = self.t_embedder(t) + self.y_embedder(y, x.shape[0], x.device)
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            h = block(h, c, skips.pop() if block.skip_linear is not None else None)
            with component("scan_switch"):
                h = reorient(h, i, self.grid)
            if self.skip != "none" and i < self.depth // 2 - 1:
                skips.append(h)
        with component("final_layer"):
            return self.unpatchify(self.final_layer(h, c))


# ---- checkpoints: official state_dicts use the model's own names (no conversion) ----

_OFFICIAL_KEYS = frozenset({"x_embedder.proj.weight", "pos_embed", "blocks.0.attn.gk_proj.0.weight",
                            "blocks.0.dw_conv.weight", "final_layer.linear.weight"})


def describe_state_dict(state_dict) -> dict[str, Any]:
    """Architecture facts from a DiG state_dict's shapes (models.checkpoints.CheckpointSupport.describe).

    Extras: ``heads`` (width / the length of the output norm's weight, dv), ``skip`` ("skip" when the file has
    long-skip fusions: "skip" and "skipzero" differ only in their initialisation), ``learn_sigma``.
    """
    width, in_channels, patch, _ = shape_of(state_dict, "x_embedder.proj.weight")
    rows = shape_of(state_dict, "y_embedder.embedding_table.weight")[0]
    out_channels = shape_of(state_dict, "final_layer.linear.weight")[0] // (patch * patch)
    dv = shape_of(state_dict, "blocks.0.attn.g_norm_swish_gate.weight")[0]
    return dict(
        width=width, depth=count_indexed(state_dict, "blocks.", ".attn.q_proj.weight"), patch=patch,
        grid=square_side(shape_of(state_dict, "pos_embed")[1], "'pos_embed'"), in_channels=in_channels,
        classes=rows - 1, class_rows=rows, heads=width // dv,
        skip="skip" if count_indexed(state_dict, "blocks.", ".skip_linear.weight") else "none",
        learn_sigma=out_channels == 2 * in_channels,
    )


def data_kwargs(description: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Everything the shapes tell (depth, width, heads, patch, skip variant, channels, classes, learned sigma), so
    an official DiG of any size loads under any DiG name; ``heads=`` given to load_checkpoint overrides."""
    out = {k: description[k] for k in ("in_channels", "depth", "width", "heads", "learn_sigma")}
    skip = description["skip"]
    if skip == "skip" and settings.get("skip") == "skipzero":
        skip = "skipzero"  # same parameters; keep the name's initialisation (irrelevant once loaded)
    return out | {"num_classes": description["classes"], "patch_size": description["patch"], "skip": skip}


CHECKPOINTS = CheckpointSupport(
    formats=(CheckpointFormat("dig-official", keys=_OFFICIAL_KEYS,
                              description="DiG's train-multi-nodes.py checkpoints (a state_dict, or 'model'/'ema')"),),
    describe=describe_state_dict,
    adapt=adapt_state_dict,  # DiT's: the frozen sin-cos pos_embed recomputed for the model's grid
    data_kwargs=data_kwargs,
    labels={"heads": "heads", "skip": "long skips", "learn_sigma": "learned sigma"},
)

# Official sizes (peers.md §3.3): depth, width, heads (XL: 18 heads, "head18").
_SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 18)}
_OFFICIAL_NAME = {"s": "DiG-S/2-bid-layer-dwconv-qdir", "b": "DiG-B/2-bid-layer-dwconv-qdir",
                  "l": "DiG-L/2-bid-layer-dwconv-qdir", "xl": "DiG-XL/2-bid-layer-dwconv-qdir-head18"}

FAMILY = register_family(Family(
    name="dig",
    display="DiG",
    description="DiG (Zhu et al., arXiv 2405.18428): DiT with gated linear attention in four alternating scan "
    "orders and a depth-wise conv per block",
    timestep=Timestep(0, 999, integer=True, meaning="DDPM step index in 0 ... 999 (integer), as DiT"),
    role="other",
    order=4,
    sizes={(depth, width): letter.upper() for letter, (depth, width, _) in _SIZES.items()},
    module_types=(DiG,),
    checkpoints=CHECKPOINTS,
    # peers.md §3.7: DiT's diffusion and sampling code (linear betas, learned sigma, 250 DDPM steps), guidance
    # 1.5 (s = 0.5 in the U-ViT convention) on DiT's 3 guided channels.
    diffusion=DiffusionRecipe("linear", "ddpm", 250, 0.5, guided_channels=3),
))

for _size, (_depth, _width, _heads) in _SIZES.items():
    _variants = ("none", "skip", "skipzero") if _size in ("s", "xl") else ("none",)
    for _skip in _variants:
        _suffix = "" if _skip == "none" else f"_{_skip}"
        _official = _OFFICIAL_NAME[_size] + ("" if _skip == "none" else f"-{_skip}")
        register_model(
            f"dig_{_size}_2{_suffix}", family="dig", official=_official,
            description=f"{_official}: depth {_depth}, width {_width}, {_heads} heads (dk 32, dv 64), patch 2, "
            + ("" if _skip == "none" else "U-ViT-style long skips (half of them misaligned, as released)"
               + (", fusion initialised to [I | 0], " if _skip == "skipzero" else ", "))
            + "learned sigma",
            latent_factor=SD_VAE_FACTOR, input_size=32, in_channels=4, num_classes=1000, patch_size=2, depth=_depth,
            width=_width,
            heads=_heads, skip=_skip,
        )(DiG)

# dimbench's own size, matched to dit_tiny_4 (width 64, 4 heads, patch 4, 1-channel 16 px, 10 classes) except the
# depth: 4, not 5, because DiG's scan order has period 4 and the output must come back in raster order.
register_model(
    "dig_tiny_4", family="dig", official="dimbench",
    description="dimbench's tiny DiG for CPU quality checks: 4 blocks (a multiple of 4), width 64, 4 heads, patch 4, "
    "1-channel 16 px, 10 classes, learned sigma",
    input_size=16, in_channels=1, num_classes=10, patch_size=4, depth=4, width=64, heads=4,
)(DiG)
register_model(
    "dig_tiny_2", family="dig", official="dimbench",
    description="dimbench's tiny DiG for the CPU quality suite: 4 blocks (a multiple of 4), width 64, 4 heads, patch "
    "2, 1-channel 8 px (16 tokens), 10 classes, learned sigma",
    input_size=8, in_channels=1, num_classes=10, patch_size=2, depth=4, width=64, heads=4,
)(DiG)
