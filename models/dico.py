"""DiCo (Ai et al., arXiv 2505.11196): a U-shaped convolutional diffusion backbone with compact channel attention.

Written from the description in shared/spec/peers.md §1 (no code of the official release is used); parameter
names are the official ones, so the released state_dicts (S/B/L/XL at 256 px) load strictly:
x_embedder.proj, t_embedder_{1,2,3}.mlp.{0,2}, y_embedder.embedding_table_{0,1,2},
{encoder_level_1, encoder_level_2, latent, decoder_level_2, decoder_level_1}.N.{conv1..conv5, ca.1,
adaLN_modulation.1}, down1_2 / down2_3 / up3_2 / up2_1 .body.0, reduce_chan_level{2,1},
final_layer.{adaLN_modulation.1, out_proj}.

Shapes (N = batch, S = input side, C = width; no patchify: every latent pixel is a token):

    x (N, 4, S, S) --3x3 conv--> (N, C, S, S)        encoder level 1: d0 blocks at width C, condition c1
    --3x3 conv C -> C/2, PixelUnshuffle(2)-->  (N, 2C, S/2, S/2)   encoder level 2: d1 blocks, c2
    --3x3 conv 2C -> C, PixelUnshuffle(2)-->   (N, 4C, S/4, S/4)   latent: d2 blocks, c3
    --3x3 conv 4C -> 8C, PixelShuffle(2)-->    (N, 2C, S/2, S/2), concat [up, encoder 2], 1x1 4C -> 2C; d3 blocks, c2
    --3x3 conv 2C -> 4C, PixelShuffle(2)-->    (N, C, S, S), concat [up, encoder 1], 1x1 2C -> 2C; d4 blocks
                                               at width 2C, c2
    final: channel LayerNorm, (1 + scale), + shift from c2, 3x3 conv 2C -> 8     (N, 8, S, S)

Three independent conditioning widths: c1 = t_C + y_C, c2 = t_2C + y_2C, c3 = t_4C + y_4C, each a DiT timestep MLP
plus a label table with a null row. A block (width D, condition c of width D):

    shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))           (each (N, D, 1, 1))
    a = conv3(CCA(GELU(dwconv3x3(conv1(LN2d(x)·(1+scale1)+shift1)))));  x = x + gate1·a
    b = conv5(GELU(conv4(LN2d(x)·(1+scale2)+shift2)));                   x = x + gate2·b

CCA (compact channel attention) is a ⊙ sigmoid(conv1x1(global average pool(a))), D -> D with bias.

Conventions as DiT's: ``t`` is the DDPM step index in 0 ... 999; ``y`` holds class indices, ``y=None`` the null
class (row ``num_classes``); label dropout belongs to the training loop. Output: ε in channels 0-3, the
variance interpolation in 4-7 (learned sigma). The side must be a multiple of 4; nothing depends on it otherwise
(no position embedding), so one model runs at every resolution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import CheckpointFormat, CheckpointSupport, count_indexed, shape_of
from .dit import TimestepEmbedder
from .profiling import component
from .registry import SD_VAE_FACTOR, DiffusionRecipe, Family, Timestep, register_family, register_model

LEVELS = ("encoder_level_1", "encoder_level_2", "latent", "decoder_level_2", "decoder_level_1")
#: Width of each level as a multiple of C, and which condition (1: c1 of width C, 2: c2, 3: c3) it takes.
LEVEL_WIDTH = (1, 2, 4, 2, 2)
LEVEL_CONDITION = (1, 2, 3, 2, 2)


def layer_norm_2d(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of each pixel, no affine, eps 1e-6: (N, D, H, W) -> (N, D, H, W)."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=1e-6).permute(0, 3, 1, 2)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (N, D, H, W) * (1 + scale) + shift, with shift/scale (N, D) broadcast over the pixels."""
    return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class LabelEmbedder(nn.Module):
    """y (N,) -> three embeddings of widths C, 2C, 4C, one table each (num_classes + 1 rows, the last the null
    class that ``y=None`` selects)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...]):
        super().__init__()
        self.num_classes = num_classes
        for i, width in enumerate(widths):
            self.add_module(f"embedding_table_{i}", nn.Embedding(num_classes + 1, width))

    def forward(self, y: torch.Tensor | None, batch: int, device: torch.device) -> list[torch.Tensor]:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return [table(y) for table in self.children()]


class DiCoBlock(nn.Module):
    """(N, D, H, W), c (N, D) -> (N, D, H, W): the conv module (in place of attention) and the conv FFN, each
    modulated and gated by c (adaLN-Zero)."""

    def __init__(self, width: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.conv1 = nn.Conv2d(width, width, 1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.conv3 = nn.Conv2d(width, width, 1)
        self.ca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width, 1))
        self.conv4 = nn.Conv2d(width, hidden, 1)
        self.conv5 = nn.Conv2d(hidden, width, 1)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with component("norm_mod"):
            shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
            a = _modulate(layer_norm_2d(x), shift1, scale1)
        with component("conv_module"):
            a = F.gelu(self.conv2(self.conv1(a)))  # no activation between the 1x1 and the depth-wise conv
            a = self.conv3(a * torch.sigmoid(self.ca(a)))  # compact channel attention, no reduction
        with component("residual"):
            x = x + gate1[:, :, None, None] * a
        with component("norm_mod"):
            b = _modulate(layer_norm_2d(x), shift2, scale2)
        with component("mlp"):
            b = self.conv5(F.gelu(self.conv4(b)))
        with component("residual"):
            return x + gate2[:, :, None, None] * b


class Resample(nn.Module):
    """3x3 conv without bias, then PixelUnshuffle(2) (down: channels x2 after a halving conv) or PixelShuffle(2)
    (up); ``body.0`` is the conv, as in the official names."""

    def __init__(self, in_channels: int, out_channels: int, down: bool):
        super().__init__()
        shuffle = nn.PixelUnshuffle(2) if down else nn.PixelShuffle(2)
        self.body = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), shuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FinalLayer(nn.Module):
    """(N, D, H, W), c (N, D) -> (N, out, H, W): channel LN, shift/scale from c, 3x3 conv (zero-initialised)."""

    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out_proj = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.out_proj(_modulate(layer_norm_2d(x), shift, scale))


class DiCo(nn.Module):
    """DiCo denoiser: ``model(x, t, y=None) -> (N, C_out, S, S)`` (see the module docstring).

    ``depths``: blocks per level (encoder 1, encoder 2, latent, decoder 2, decoder 1). ``input_size`` is recorded
    (and checked against the input) but shapes no parameter: the model is the same at every resolution.
    """

    family = "dico"

    def __init__(
        self,
        *,
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        patch_size: int = 1,
        width: int = 416,
        depths: tuple[int, ...] | list[int] = (9, 9, 10, 9, 9),
        mlp_ratio: float = 2.0,
        learn_sigma: bool = True,
    ):
        super().__init__()
        if patch_size != 1:
            raise ValueError(f"DiCo has no patch embedding (every latent pixel is a token): patch_size must be 1, "
                             f"got {patch_size}")
        if width % 2:
            raise ValueError(f"DiCo: width {width} must be even (the first down conv halves it)")
        if input_size % 4:
            raise ValueError(f"DiCo: input_size {input_size} must be a multiple of 4 (two 2x down-samplings)")
        depths = tuple(int(d) for d in depths)
        if len(depths) != len(LEVELS):
            raise ValueError(f"DiCo: depths must give {len(LEVELS)} levels ({', '.join(LEVELS)}), got {depths}")
        self.config: dict[str, Any] = dict(
            input_size=input_size, in_channels=in_channels, num_classes=num_classes, patch_size=1, width=width,
            depths=list(depths), mlp_ratio=mlp_ratio, learn_sigma=learn_sigma,
        )
        self.input_size, self.in_channels, self.patch_size = input_size, in_channels, 1
        self.num_classes, self.width, self.depths, self.depth = num_classes, width, depths, sum(depths)
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        c = width

        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_channels, c, 3, padding=1)
        self.t_embedder_1 = TimestepEmbedder(c)
        self.y_embedder = LabelEmbedder(num_classes, (c, 2 * c, 4 * c))
        self.t_embedder_2 = TimestepEmbedder(2 * c)
        self.t_embedder_3 = TimestepEmbedder(4 * c)
        for name, mult, depth in zip(LEVELS, LEVEL_WIDTH, depths, strict=True):
            self.add_module(name, nn.ModuleList(DiCoBlock(mult * c, mlp_ratio) for _ in range(depth)))
        self.down1_2 = Resample(c, c // 2, down=True)
        self.down2_3 = Resample(2 * c, c, down=True)
        self.up3_2 = Resample(4 * c, 8 * c, down=False)
        self.reduce_chan_level2 = nn.Conv2d(4 * c, 2 * c, 1)
        self.up2_1 = Resample(2 * c, 4 * c, down=False)
        self.reduce_chan_level1 = nn.Conv2d(2 * c, 2 * c, 1)
        self.final_layer = FinalLayer(2 * c, self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The official initialisation (peers.md §1.6), in its order.

        Every Linear and Conv2d Xavier-uniform on its own weight tensor (for a conv the 4-D tensor, whose fans
        include the kernel area: a depth-wise 3x3 has fan_in 9), biases 0; then the stem Xavier-uniform on its
        2-D view (DiT's rule); label tables and timestep-MLP weights N(0, 0.02); every adaLN Linear, the final
        adaLN Linear and the final 3x3 conv zero. A fresh model outputs exactly 0.
        """
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        stem = self.x_embedder.proj
        nn.init.xavier_uniform_(stem.weight.view(stem.weight.shape[0], -1))
        nn.init.zeros_(stem.bias)
        for table in self.y_embedder.children():
            nn.init.normal_(table.weight, std=0.02)
        for embedder in (self.t_embedder_1, self.t_embedder_2, self.t_embedder_3):
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        zeroed = [block.adaLN_modulation[-1] for name in LEVELS for block in getattr(self, name)]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.out_proj]
        for m in zeroed:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def _level(self, name: str, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for block in getattr(self, name):
            h = block(h, c)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, S, S) with S a multiple of 4, t (N,) in 0...999, y (N,) or None -> (N, C_out, S, S)."""
        if x.shape[1] != self.in_channels or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"DiCo takes (N, {self.in_channels}, H, W) with H and W multiples of 4, got "
                             f"{tuple(x.shape)}")
        with component("patch_embed"):
            h = self.x_embedder.proj(x)
        with component("conditioning"):
            y1, y2, y3 = self.y_embedder(y, x.shape[0], x.device)
            conds = {1: self.t_embedder_1(t) + y1, 2: self.t_embedder_2(t) + y2, 3: self.t_embedder_3(t) + y3}
        enc1 = self._level("encoder_level_1", h, conds[1])
        with component("resample"):
            h = self.down1_2(enc1)
        enc2 = self._level("encoder_level_2", h, conds[2])
        with component("resample"):
            h = self.down2_3(enc2)
        h = self._level("latent", h, conds[3])
        with component("resample"):
            h = self.reduce_chan_level2(torch.cat([self.up3_2(h), enc2], dim=1))
        h = self._level("decoder_level_2", h, conds[2])
        with component("resample"):
            h = self.reduce_chan_level1(torch.cat([self.up2_1(h), enc1], dim=1))
        h = self._level("decoder_level_1", h, conds[2])
        with component("final_layer"):
            return self.final_layer(h, conds[2])


# ---- checkpoints: the released .pt files use the model's own names (no conversion) ----

_OFFICIAL_KEYS = frozenset({
    "x_embedder.proj.weight", "t_embedder_1.mlp.0.weight", "y_embedder.embedding_table_0.weight",
    "reduce_chan_level1.weight", "final_layer.out_proj.weight",
})
#: The side the released checkpoints were trained at (256 px); DiCo has no position table to read it from.
RELEASE_SIDE = 32


def describe_state_dict(state_dict) -> dict[str, Any]:
    """Architecture facts from a DiCo state_dict's shapes (models.checkpoints.CheckpointSupport.describe).

    ``depth`` counts every block; extras: ``depths`` per level and ``mlp_ratio``. DiCo has no patch embedding and
    no position table, so ``patch`` is 1 and ``grid`` is the release side (32: 256 px), which only sets the
    default input size of a load: the weights fit every resolution.
    """
    width, in_channels = shape_of(state_dict, "x_embedder.proj.weight")[:2]
    rows = shape_of(state_dict, "y_embedder.embedding_table_0.weight")[0]
    depths = [count_indexed(state_dict, f"{name}.", ".conv1.weight") for name in LEVELS]
    hidden = shape_of(state_dict, "encoder_level_1.0.conv4.weight")[0] if depths[0] else 2 * width
    out_channels = shape_of(state_dict, "final_layer.out_proj.weight")[0]
    depth = sum(depths)
    size = FAMILY.size_name(depth, width)
    return dict(
        width=width, depth=depth, patch=1, grid=RELEASE_SIDE, in_channels=in_channels, classes=rows - 1,
        class_rows=rows, depths=depths, mlp_ratio=hidden / width, learn_sigma=out_channels == 2 * in_channels,
        architecture=f"DiCo-{size}" if size else f"DiCo (width {width}, depths {depths})",
    )


def data_kwargs(description: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Everything the shapes tell: channels, classes, width, blocks per level, MLP ratio, learned sigma (so a
    file of any DiCo size loads under any DiCo name)."""
    return {k: description[k] for k in ("in_channels", "width", "depths", "mlp_ratio", "learn_sigma")} | {
        "num_classes": description["classes"]}


def adapt_state_dict(model: DiCo, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Nothing depends on the resolution: the state_dict as it is (a new dict)."""
    return dict(state_dict)


CHECKPOINTS = CheckpointSupport(
    formats=(CheckpointFormat("dico-official", keys=_OFFICIAL_KEYS,
                              description="DiCo's released .pt files (plain state_dicts)"),),
    describe=describe_state_dict,
    adapt=adapt_state_dict,
    data_kwargs=data_kwargs,
    labels={"depths": "blocks per level", "mlp_ratio": "MLP ratio", "learn_sigma": "learned sigma"},
)

# Official sizes (peers.md §1.4): width C and blocks per level; MLP ratio 2 except H (4).
_SIZES = {
    "s": (128, (5, 4, 4, 4, 4), 2.0),
    "b": (256, (5, 4, 4, 4, 4), 2.0),
    "l": (352, (9, 8, 9, 8, 9), 2.0),
    "xl": (416, (9, 9, 10, 9, 9), 2.0),
    "h": (416, (14, 12, 10, 12, 14), 4.0),
}

FAMILY = register_family(Family(
    name="dico",
    display="DiCo",
    description="DiCo (Ai et al., arXiv 2505.11196): a U-shaped convolutional backbone, no patchify, compact "
    "channel attention in place of self-attention",
    timestep=Timestep(0, 999, integer=True, meaning="DDPM step index in 0 ... 999 (integer), as DiT"),
    role="other",
    order=3,
    sizes={(sum(depths), width): letter.upper() for letter, (width, depths, _) in _SIZES.items()},
    module_types=(DiCo,),
    checkpoints=CHECKPOINTS,
    # peers.md §1.7: DiT's diffusion (linear betas, learned sigma), 250 DDPM steps, guidance 1.4 (s = 0.4 in the
    # U-ViT convention) on the first 3 latent channels (DiT's legacy).
    diffusion=DiffusionRecipe("linear", "ddpm", 250, 0.4, guided_channels=3),
))

for _size, (_width, _depths, _ratio) in _SIZES.items():
    register_model(
        f"dico_{_size}", family="dico", official=f"DiCo-{_size.upper()}",
        description=f"DiCo-{_size.upper()}: width {_width}, blocks per level {list(_depths)}, MLP ratio {_ratio:g}, "
        "no patchify (patch = 1), learned sigma; any side that is a multiple of 4",
        latent_factor=SD_VAE_FACTOR, input_size=32, in_channels=4, num_classes=1000, patch_size=1, width=_width,
        depths=_depths,
        mlp_ratio=_ratio,
    )(DiCo)

# dimbench's own size, matched to the tiny models of the CPU quality checks (5 blocks, width 64, 1-channel 16 px,
# 10 classes); DiCo's levels widen to 128 and 256 channels by construction.
register_model(
    "dico_tiny", family="dico", official="dimbench",
    description="dimbench's tiny DiCo for CPU quality checks: width 64, one block per level (5), MLP ratio 2, "
    "1-channel 16 px, 10 classes, learned sigma",
    input_size=16, in_channels=1, num_classes=10, patch_size=1, width=64, depths=(1, 1, 1, 1, 1), mlp_ratio=2.0,
)(DiCo)
