"""U-ViT (Bao et al., arXiv 2209.12152): a ViT denoiser where time, class and patches are all tokens.

Layers of its own, with the official parameter names (patch_embed.proj, time_embed, label_emb, pos_embed,
in_blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, mid_block.*, out_blocks.N.{skip_linear, ...},
norm, decoder_pred, final_layer).

Shapes (N = batch, C = in_channels, S = input_size, p = patch, T = (S/p)^2, D = width, E = extra tokens:
2 with a class token, 1 without):

    x (N, C, S, S) --patch conv--> (N, T, D)
    sequence = [class token (N, 1, D)?, time token (N, 1, D), patches (N, T, D)] + pos_embed (1, E + T, D)
    depth/2 in-blocks (each pushes a skip), 1 mid-block, depth/2 out-blocks (each pops one, LIFO, and fuses it
    with Linear(2D -> D) on concat[hidden, skip])
    LayerNorm -> Linear(D -> p*p*C) -> drop the E extra tokens -> unpatchify (N, C, S, S) -> 3x3 conv or identity

Conventions: ``t`` in [1, 1000] (float, shape (N,)), the discrete DDPM step (the SD schedule, as DiM). The time
token is the raw sinusoid of width D (float32, cos|sin) unless ``mlp_time_embed``. U-ViT predicts epsilon only
(C_out = C). ``num_classes`` counts real classes; with ``null_class`` the label table has one more row, the null
class that ``y=None`` selects. Without a null row (the ImageNet-64 release) ``y`` is required, and an
unconditional model (``num_classes=0``) takes no ``y``: both misuses raise ValueError (the official code would
fail on a shape mismatch or a missing attribute instead).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import CheckpointFormat, CheckpointSupport, count_indexed, shape_of, square_side
from .layers import resize_grid_pos_embed, timestep_sinusoid
from .profiling import component
from .registry import SD_VAE_FACTOR, DiffusionRecipe, Family, Timestep, register_family, register_model


class PatchEmbed(nn.Module):
    """(N, C, S, S) -> (N, (S/p)^2, D): conv with kernel = stride = p, flattened row-major."""

    def __init__(self, patch_size: int, in_channels: int, width: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention, (N, L, D) -> (N, L, D), as U-ViT's release computes it.

    qkv Linear (no bias by default); q, k, v are upcast to float32 before F.scaled_dot_product_attention, so under
    bf16/fp16 autocast the attention itself runs in fp32 (unlike timm's Attention). The fp32 result is cast back
    to the qkv dtype before ``proj``: under autocast ``proj`` would cast it to that dtype anyway, and a model cast
    to bf16 without autocast needs it.
    """

    def __init__(self, width: int, heads: int, qkv_bias: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        qkv = self.qkv(x)
        # (N, L, 3D) with features laid out (3, heads, head_dim) -> (3, N, heads, L, head_dim)
        q, k, v = qkv.reshape(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).float()
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, head_dim), float32
        out = out.transpose(1, 2).reshape(n, length, width).to(qkv.dtype)
        return self.proj(out)


class Mlp(nn.Module):
    """(N, L, D) -> (N, L, D): fc1 (D -> hidden), exact GELU, fc2 (hidden -> D)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN ViT block (N, L, D) -> (N, L, D); with ``skip``, first fuses Linear(2D -> D)(concat[x, skip])."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, skip: bool = False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * width, width) if skip else None
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            with component("skip_fusion"):
                x = self.skip_linear(torch.cat([x, skip], dim=-1))
        with component("norm_mod"):
            h = self.norm1(x)
        with component("attention"):
            h = self.attn(h)
        with component("residual"):
            x = x + h
        with component("norm_mod"):
            h = self.norm2(x)
        with component("mlp"):
            h = self.mlp(h)
        with component("residual"):
            return x + h


class UViT(nn.Module):
    """U-ViT denoiser: ``model(x, t, y=None) -> (N, C, S, S)`` (see the module docstring for conventions).

    ``depth`` is the official config's depth: depth/2 in-blocks + 1 mid-block + depth/2 out-blocks.
    """

    def __init__(
        self,
        *,
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        patch_size: int = 2,
        depth: int = 20,
        width: int = 1024,
        heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        null_class: bool = True,
        conv: bool = True,
        mlp_time_embed: bool = False,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"U-ViT: input_size {input_size} is not a multiple of patch_size {patch_size}")
        if width % heads:
            raise ValueError(f"U-ViT: width {width} is not divisible by heads {heads}")
        if depth % 2:
            raise ValueError(f"U-ViT: depth {depth} must be even (depth/2 in-blocks, 1 mid, depth/2 out-blocks)")
        self.config: dict[str, Any] = dict(
            input_size=input_size, in_channels=in_channels, num_classes=num_classes, patch_size=patch_size,
            depth=depth, width=width, heads=heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, null_class=null_class,
            conv=conv, mlp_time_embed=mlp_time_embed,
        )
        self.input_size, self.in_channels, self.patch_size = input_size, in_channels, patch_size
        self.num_classes, self.null_class = num_classes, null_class
        self.depth, self.width, self.heads = depth, width, heads
        self.grid = input_size // patch_size
        self.extras = 2 if num_classes > 0 else 1  # [class?, time]

        self.patch_embed = PatchEmbed(patch_size, in_channels, width)
        self.time_embed = (
            nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, width))
            if mlp_time_embed
            else nn.Identity()
        )
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes + int(null_class), width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + self.grid**2, width))
        self.in_blocks = nn.ModuleList(Block(width, heads, mlp_ratio, qkv_bias) for _ in range(depth // 2))
        self.mid_block = Block(width, heads, mlp_ratio, qkv_bias)
        self.out_blocks = nn.ModuleList(Block(width, heads, mlp_ratio, qkv_bias, skip=True) for _ in range(depth // 2))
        self.norm = nn.LayerNorm(width)
        self.decoder_pred = nn.Linear(width, patch_size * patch_size * in_channels)
        self.final_layer = nn.Conv2d(in_channels, in_channels, 3, padding=1) if conv else nn.Identity()
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The official initialisation: pos_embed and every Linear weight truncated normal (std 0.02, cut at
        +-2 absolute), Linear biases 0, LayerNorms weight 1 / bias 0; label table, patch conv and 3x3 conv keep
        PyTorch's defaults."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _class_token(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
        """(N, 1, D) class token, or None for an unconditional model."""
        if self.num_classes == 0:
            if y is not None:
                raise ValueError("this U-ViT is unconditional (num_classes=0): call it with y=None")
            return None
        if y is None:
            if not self.null_class:
                raise ValueError(
                    f"this U-ViT has {self.num_classes} classes and no null class (as the official ImageNet-64 "
                    "config): y is required"
                )
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return self.label_emb(y).unsqueeze(1)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, S, S); each token's features are laid out (p, p, C)."""
        n, g, p, c = x.shape[0], self.grid, self.patch_size, self.in_channels
        x = x.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (N, C, g, p, g, p)
        return x.reshape(n, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, S, S), t (N,) in [1, 1000], y (N,) class indices or None -> epsilon (N, C, S, S)."""
        if tuple(x.shape[1:]) != (self.in_channels, self.input_size, self.input_size):
            # Shapes are static, so this check also holds on the meta device.
            raise ValueError(
                f"U-ViT built for inputs (N, {self.in_channels}, {self.input_size}, {self.input_size}) got "
                f"{tuple(x.shape)}; build it with input_size={x.shape[-1]} (load_checkpoint and "
                "load_resized_state_dict resize the position embedding)"
            )
        with component("patch_embed"):
            h = self.patch_embed(x)  # (N, T, D)
        with component("conditioning"):
            # Cast to the parameters' dtype: a no-op under autocast (fp32 parameters, and then torch.cat promotes
            # the bf16 patches to fp32 as in the official code); needed for a model cast to bf16.
            time_token = self.time_embed(timestep_sinusoid(t, self.width).to(self.pos_embed.dtype)).unsqueeze(1)
            tokens = [time_token, h]
            class_token = self._class_token(y, x.shape[0], x.device)
            if class_token is not None:
                tokens.insert(0, class_token)
        with component("patch_embed"):
            h = torch.cat(tokens, dim=1) + self.pos_embed  # (N, E + T, D)

        skips = []
        for block in self.in_blocks:
            h = block(h)
            skips.append(h)
        h = self.mid_block(h)
        for block in self.out_blocks:
            h = block(h, skips.pop())

        with component("final_layer"):
            h = self.decoder_pred(self.norm(h))[:, self.extras :]  # (N, T, p*p*C)
            return self.final_layer(self.unpatchify(h))


def resize_pos_embed(pos_embed: torch.Tensor, extras: int, grid: int) -> torch.Tensor:
    """(1, extras + g*g, D) -> (1, extras + grid*grid, D): the grid part resized bilinearly, the extra-token
    positions copied (:func:`models.layers.resize_grid_pos_embed`)."""
    return resize_grid_pos_embed(pos_embed, extras, (grid, grid))


def adapt_state_dict(model: UViT, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A U-ViT state_dict for another grid, made to fit ``model``: ``pos_embed`` resized bilinearly.

    Only a position table with the model's width and extra-token count is resized (anything else is left for
    the strict load to report). The input is not modified.
    """
    out = dict(state_dict)
    found = out.get("pos_embed")
    want = model.pos_embed.shape
    if (
        found is not None
        and found.dim() == 3
        and tuple(found.shape) != tuple(want)
        and found.shape[-1] == want[-1]
        and found.shape[1] > model.extras
    ):
        out["pos_embed"] = resize_pos_embed(found, model.extras, model.grid)
    return out


# ---- checkpoints (docs/models.md §5) ----

# U-ViT's nnet.pth / nnet_ema.pth use the model's own names: no conversion.
_OFFICIAL_KEYS = frozenset({"patch_embed.proj.weight", "decoder_pred.weight", "pos_embed"})


def describe_state_dict(state_dict) -> dict[str, Any]:
    """Architecture facts from a U-ViT state_dict's shapes (see models.checkpoints.CheckpointSupport.describe).

    ``depth`` is the official config's (2 x in-blocks; blocks = depth + 1). ``classes`` is None: the class table
    may or may not end with a null row (1001 rows in the ImageNet-256/512 releases, 1000 in ImageNet-64's).
    Extras: ``conv`` (3x3 output conv), ``mlp_time_embed``.
    """
    width, in_channels, patch, _ = shape_of(state_dict, "patch_embed.proj.weight")
    rows = shape_of(state_dict, "label_emb.weight")[0] if "label_emb.weight" in state_dict else 0
    extras = 2 if rows else 1  # [class?, time]
    return dict(
        width=width, depth=2 * count_indexed(state_dict, "in_blocks.", ".attn.qkv.weight"), patch=patch,
        grid=square_side(shape_of(state_dict, "pos_embed")[1] - extras, "'pos_embed'"), in_channels=in_channels,
        classes=None, class_rows=rows, conv="final_layer.weight" in state_dict,
        mlp_time_embed="time_embed.0.weight" in state_dict,
    )


def data_kwargs(description: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Input channels, and real classes = class rows minus the null row when the model has one
    (``null_class``, from the registered config or the caller; False for the ImageNet-64 release)."""
    rows, null = description["class_rows"], bool(settings.get("null_class", True))
    return {"in_channels": description["in_channels"], "num_classes": max(rows - int(null), 0) if rows else 0}



CHECKPOINTS = CheckpointSupport(
    formats=(
        CheckpointFormat(
            "uvit-official",
            keys=_OFFICIAL_KEYS,
            description="U-ViT's nnet.pth / nnet_ema.pth (plain state_dicts)",
        ),
    ),
    describe=describe_state_dict,
    adapt=adapt_state_dict,
    data_kwargs=data_kwargs,
    labels={"conv": "3x3 output conv", "mlp_time_embed": "time-embedding MLP"},
)

FAMILY = register_family(Family(
    name="uvit",
    display="U-ViT",
    description="U-ViT (Bao et al., arXiv 2209.12152): a ViT with every input as a token and long skips",
    timestep=Timestep(1, 1000, integer=False, meaning="DDPM step n in [1, 1000] (float; fractions allowed)"),
    role="baseline",
    order=2,
    sizes={(12, 512): "S", (16, 768): "M", (20, 1024): "L", (28, 1152): "H"},
    module_types=(UViT,),
    checkpoints=CHECKPOINTS,
    # baselines.md: SD scaled-linear betas (as DiM), DPM-Solver with 50 evaluations, s = 0.4 at 256 px.
    diffusion=DiffusionRecipe("sd_scaled_linear", "dpm_solver++", 50, 0.4),
))

# ---- official configurations (docs/models.md §2.3) ----


def _register(name: str, official: str, description: str, **defaults: Any) -> None:
    register_model(name, family="uvit", official=official, description=description, **defaults)(UViT)


_register(
    "uvit_s_2", "cifar10_uvit_small", "U-ViT-S/2, CIFAR-10 pixels, unconditional, 3x3 output conv",
    input_size=32, in_channels=3, num_classes=0, patch_size=2, depth=12, width=512, heads=8, conv=True,
)
_register(
    "uvit_m_4", "imagenet64_uvit_mid", "U-ViT-M/4, ImageNet-64 pixels, 1000 classes without a null row",
    input_size=64, in_channels=3, num_classes=1000, patch_size=4, depth=16, width=768, heads=12,
    null_class=False, conv=True,
)
_register(
    "uvit_l_2", "imagenet256_uvit_large", "U-ViT-L/2, ImageNet-256 latents, 1000 classes + null, 3x3 output conv",
    latent_factor=SD_VAE_FACTOR,
    input_size=32, in_channels=4, num_classes=1000, patch_size=2, depth=20, width=1024, heads=16, conv=True,
)
_register(
    "uvit_h_2", "imagenet256_uvit_huge", "U-ViT-H/2, ImageNet-256 latents, 1000 classes + null, no output conv",
    latent_factor=SD_VAE_FACTOR,
    input_size=32, in_channels=4, num_classes=1000, patch_size=2, depth=28, width=1152, heads=16, conv=False,
)
_register(
    "uvit_l_4", "imagenet512_uvit_large", "U-ViT-L/4, ImageNet-512 latents, 1000 classes + null, 3x3 output conv",
    latent_factor=SD_VAE_FACTOR,
    input_size=64, in_channels=4, num_classes=1000, patch_size=4, depth=20, width=1024, heads=16, conv=True,
)
_register(
    "uvit_h_4", "imagenet512_uvit_huge", "U-ViT-H/4, ImageNet-512 latents, 1000 classes + null, no output conv",
    latent_factor=SD_VAE_FACTOR,
    input_size=64, in_channels=4, num_classes=1000, patch_size=4, depth=28, width=1152, heads=16, conv=False,
)

# ---- dimbench's own size (official="dimbench"), matched to dim_tiny_4 and dit_tiny_4 ----
_register(
    "uvit_tiny_4", "dimbench", "dimbench's tiny U-ViT for CPU quality checks: 5 blocks (config depth 4: 2 in, 1 mid, "
    "2 out), width 64, 4 heads, patch 4, 1-channel 16 px, 10 classes + null, 3x3 output conv",
    input_size=16, in_channels=1, num_classes=10, patch_size=4, depth=4, width=64, heads=4, conv=True,
)
_register(
    "uvit_tiny_2", "dimbench", "dimbench's tiny U-ViT for the CPU quality suite: 5 blocks (config depth 4: 2 in, 1 "
    "mid, 2 out), width 64, 4 heads, patch 2, 1-channel 8 px (16 tokens), 10 classes + null, 3x3 output conv",
    input_size=8, in_channels=1, num_classes=10, patch_size=2, depth=4, width=64, heads=4, conv=True,
)
