"""DiT (Peebles & Xie, arXiv 2212.09748): a ViT denoiser with adaLN-Zero conditioning.

Built from timm's ``PatchEmbed``, ``Attention`` and ``Mlp`` so that parameter names and numerics match the
official checkpoints (x_embedder.proj, t_embedder.mlp.{0,2}, y_embedder.embedding_table, pos_embed,
blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}, final_layer.{linear, adaLN_modulation.1}).

Shapes (N = batch, C = in_channels, S = input_size, p = patch, T = (S/p)^2 tokens, D = width):

    x (N, C, S, S) --patchify--> (N, T, D) + pos_embed (1, T, D)
    c = t_embedder(t) + y_embedder(y)                      (N, D)
    blocks: (N, T, D) -> (N, T, D), each modulated by c
    final_layer: (N, T, p*p*C_out) --unpatchify--> (N, C_out, S, S),  C_out = 2C with learned sigma

Conventions: ``t`` is the DDPM step index in 0 ... 999 (float or int, shape (N,)); ``y`` holds class indices in
0 ... num_classes-1, and ``y=None`` means the null class (row ``num_classes`` of the label table) for every sample.
The model does not drop labels itself: classifier-free-guidance label dropout (p = 0.1 in the paper) belongs to
the training loop, which replaces labels by ``num_classes``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn as nn
from timm.layers import Attention, Mlp, PatchEmbed

from .checkpoints import CheckpointFormat, CheckpointSupport, count_indexed, shape_of, square_side
from .layers import timestep_sinusoid
from .profiling import component
from .registry import SD_VAE_FACTOR, DiffusionRecipe, Family, Timestep, register_family, register_model

TIME_FREQ_DIM = 256  # width of DiT's timestep frequency embedding


def sincos_pos_embed_2d(width: int, grid: int) -> torch.Tensor:
    """DiT's fixed 2-D sine-cosine position table, shape (grid*grid, width), float32.

    Token k = row*grid + col (row-major, as patchify flattens). Channels [0, width/2) encode the column, channels
    [width/2, width) the row; each half is [sin | cos] with frequencies 10000^(-j/(width/4)), j < width/4.
    Computed in float64 and rounded to float32 once, as the official code does (numpy float64 then .float()).
    Always computed on the CPU so that it can be built while the default device is ``meta``.
    """
    if width % 4:
        raise ValueError(f"DiT position embedding needs a width divisible by 4, got {width}")
    quarter = width // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64, device="cpu") / quarter)
    idx = torch.arange(grid, dtype=torch.float64, device="cpu")
    rows, cols = torch.meshgrid(idx, idx, indexing="ij")  # rows[i, j] = i, cols[i, j] = j

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (grid*grid,) -> (grid*grid, width/2)
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).to(torch.float32)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (N, T, D) * (1 + scale) + shift, with shift/scale (N, D) broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _tanh_gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


class TimestepEmbedder(nn.Module):
    """t (N,) -> (N, D): 256-wide sinusoid (float32, cos|sin) -> Linear -> SiLU -> Linear."""

    def __init__(self, width: int, freq_dim: int = TIME_FREQ_DIM):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_sinusoid(t, self.freq_dim)
        # Matches the weights' dtype for a model cast to bf16; under autocast the weights are fp32, so this is a no-op.
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """y (N,) of class indices -> (N, D); table has num_classes + 1 rows, the last being the null class."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, width)

    def forward(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return self.embedding_table(y)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: (N, T, D), c (N, D) -> (N, T, D).

    SiLU -> Linear(D, 6D) on c gives shift/scale/gate for attention then MLP; the Linear is zero-initialised so
    the block starts as the identity.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads=heads, qkv_bias=True)
        # timm decides fused attention from its environment/config at construction; DiT must always go through
        # F.scaled_dot_product_attention (so benchmarks measure the fused kernel whatever TIMM_FUSED_ATTN says).
        self.attn.fused_attn = True
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(in_features=width, hidden_features=int(width * mlp_ratio), act_layer=_tanh_gelu, drop=0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with component("norm_mod"):
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
            h = _modulate(self.norm1(x), shift_a, scale_a)
        with component("attention"):
            h = self.attn(h)
        with component("residual"):
            x = x + gate_a.unsqueeze(1) * h
        with component("norm_mod"):
            h = _modulate(self.norm2(x), shift_m, scale_m)
        with component("mlp"):
            h = self.mlp(h)
        with component("residual"):
            return x + gate_m.unsqueeze(1) * h


class FinalLayer(nn.Module):
    """(N, T, D), c (N, D) -> (N, T, p*p*C_out): LN (no affine), shift/scale from c, Linear."""

    def __init__(self, width: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """DiT denoiser: ``model(x, t, y=None) -> (N, C_out, S, S)`` (see the module docstring for conventions).

    ``pos_embed`` is a frozen parameter (``requires_grad=False``) as in the official code, so official state_dicts
    load strictly and the parameter count equals the official one; it is recomputed for each ``input_size``.
    """

    def __init__(
        self,
        *,
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        patch_size: int = 2,
        depth: int = 28,
        width: int = 1152,
        heads: int = 16,
        mlp_ratio: float = 4.0,
        learn_sigma: bool = True,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"DiT: input_size {input_size} is not a multiple of patch_size {patch_size}")
        if width % heads:
            raise ValueError(f"DiT: width {width} is not divisible by heads {heads}")
        self.config: dict[str, Any] = dict(
            input_size=input_size, in_channels=in_channels, num_classes=num_classes, patch_size=patch_size,
            depth=depth, width=width, heads=heads, mlp_ratio=mlp_ratio, learn_sigma=learn_sigma,
        )
        self.input_size, self.in_channels, self.patch_size = input_size, in_channels, patch_size
        self.num_classes, self.depth, self.width, self.heads = num_classes, depth, width, heads
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.grid = input_size // patch_size

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, width, bias=True)
        self.t_embedder = TimestepEmbedder(width)
        self.y_embedder = LabelEmbedder(num_classes, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2, width), requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(width, patch_size, self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The official initialisation.

        Every Linear Xavier-uniform with bias 0; the patch conv Xavier-uniform on its (D, C*p*p) view, bias 0;
        the label table and both timestep-MLP Linears normal(std 0.02) (official, overriding Xavier for these);
        adaLN modulation Linears and the final output Linear zero (adaLN-Zero: blocks start as the identity,
        the output starts at zero); pos_embed the fixed sin-cos table.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.pos_embed.copy_(sincos_pos_embed_2d(self.width, self.grid).unsqueeze(0).to(self.pos_embed.device))
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C_out) -> (N, C_out, S, S); each token's features are laid out (p, p, C_out)."""
        n, g, p, c = x.shape[0], self.grid, self.patch_size, self.out_channels
        x = x.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (N, C, g, p, g, p)
        return x.reshape(n, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, S, S), t (N,) in 0...999, y (N,) class indices or None (null class) -> (N, C_out, S, S)."""
        with component("patch_embed"):
            h = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        with component("conditioning"):
            c = self.t_embedder(t) + self.y_embedder(y, x.shape[0], x.device)  # (N, D)
        for block in self.blocks:
            h = block(h, c)
        with component("final_layer"):
            return self.unpatchify(self.final_layer(h, c))


def adapt_state_dict(model: DiT, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DiT state_dict for another grid, made to fit ``model``: the fixed sin-cos ``pos_embed`` is recomputed.

    Every other tensor is returned unchanged (their shapes do not depend on the grid). The input is not modified.
    """
    out = dict(state_dict)
    found = out.get("pos_embed")
    if found is not None and tuple(found.shape) != tuple(model.pos_embed.shape) and found.shape[-1] == model.width:
        out["pos_embed"] = sincos_pos_embed_2d(model.width, model.grid).unsqueeze(0).to(found.dtype)
    return out


# ---- checkpoints (docs/models.md §5) ----

# DiT's released .pt files and its train.py checkpoints use the model's own names: no conversion.
# The softmax-attention qkv and the per-block adaLN tell DiT from the peers that share its embedder and final-layer
# names (DiG: GLA projections; SANA-cc: a shared t_block and per-block tables).
_OFFICIAL_KEYS = frozenset({"x_embedder.proj.weight", "t_embedder.mlp.0.weight", "final_layer.linear.weight",
                            "blocks.0.attn.qkv.weight", "blocks.0.adaLN_modulation.1.weight"})


def describe_state_dict(state_dict) -> dict[str, Any]:
    """Architecture facts from a DiT state_dict's shapes (see models.checkpoints.CheckpointSupport.describe);
    extra: ``learn_sigma`` (output channels = 2 x input channels)."""
    width, in_channels, patch, _ = shape_of(state_dict, "x_embedder.proj.weight")
    rows = shape_of(state_dict, "y_embedder.embedding_table.weight")[0]
    out_channels = shape_of(state_dict, "final_layer.linear.weight")[0] // (patch * patch)
    return dict(
        width=width, depth=count_indexed(state_dict, "blocks.", ".attn.qkv.weight"), patch=patch,
        grid=square_side(shape_of(state_dict, "pos_embed")[1], "'pos_embed'"), in_channels=in_channels,
        classes=rows - 1, class_rows=rows, learn_sigma=out_channels == 2 * in_channels,
    )



CHECKPOINTS = CheckpointSupport(
    formats=(
        CheckpointFormat(
            "dit-official",
            keys=_OFFICIAL_KEYS,
            description="DiT's released .pt files (a plain state_dict) or a train.py checkpoint ('model', 'ema')",
        ),
    ),
    describe=describe_state_dict,
    adapt=adapt_state_dict,
    labels={"learn_sigma": "learned sigma"},
    safe_globals=(argparse.Namespace,),  # train.py stores its arguments under "args"
)

# Official sizes: (depth, width, heads) per size letter (docs/models.md §2.2).
_SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}

FAMILY = register_family(Family(
    name="dit",
    display="DiT",
    description="Diffusion Transformer (Peebles & Xie, arXiv 2212.09748): a ViT with adaLN-Zero conditioning",
    timestep=Timestep(0, 999, integer=True, meaning="DDPM step index in 0 ... 999 (integer)"),
    role="baseline",
    order=1,
    sizes={(depth, width): letter.upper() for letter, (depth, width, _) in _SIZES.items()},
    module_types=(DiT,),
    checkpoints=CHECKPOINTS,
    # baselines.md: linear betas 1e-4 -> 0.02, ε-MSE plus the learned-variance term, 250 DDPM steps, w = 1.5
    # on the first 3 latent channels.
    diffusion=DiffusionRecipe("linear", "ddpm", 250, 0.5, guided_channels=3),
))

# ---- official configurations (docs/models.md §2.2): each size with patch 2, 4 and 8 ----

for _size, (_depth, _width, _heads) in _SIZES.items():
    for _patch in (2, 4, 8):
        _official = f"DiT-{_size.upper()}/{_patch}"
        register_model(
            f"dit_{_size}_{_patch}", family="dit", official=_official,
            description=f"{_official}: depth {_depth}, width {_width}, {_heads} heads, learned sigma",
            latent_factor=SD_VAE_FACTOR, input_size=32, in_channels=4, num_classes=1000, patch_size=_patch,
            depth=_depth, width=_width, heads=_heads,
        )(DiT)

# ---- dimbench's own size (official="dimbench"): the tiny model of the CPU quality checks, matched to
# dim_tiny_4 and uvit_tiny_4 (5 blocks, width 64, patch 4, 1-channel 16 px, 10 classes) ----
register_model(
    "dit_tiny_4", family="dit", official="dimbench",
    description="dimbench's tiny DiT for CPU quality checks: 5 blocks, width 64, 4 heads, patch 4, 1-channel 16 px, "
    "10 classes, learned sigma",
    input_size=16, in_channels=1, num_classes=10, patch_size=4, depth=5, width=64, heads=4,
)(DiT)
register_model(
    "dit_tiny_2", family="dit", official="dimbench",
    description="dimbench's tiny DiT for the CPU quality suite: 5 blocks, width 64, 4 heads, patch 2, 1-channel 8 px "
    "(16 tokens), 10 classes, learned sigma",
    input_size=8, in_channels=1, num_classes=10, patch_size=2, depth=5, width=64, heads=4,
)(DiT)
