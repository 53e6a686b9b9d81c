"""A model family of a test's own, declared in this one file and loaded as a plugin (``--plugin toy_family`` or
``DIMBENCH_PLUGINS=toy_family``, with tests/plugins on the path): its model, its constructor option ``mixer``
(shown as ``mix=...`` in a point's key) and its latent factor are all stated here and nowhere else.
"""

from __future__ import annotations

import torch
import torch.nn as nn

import models
from models import FamilyOption

MIXERS = ("mlp", "conv")


class ToyMixer(nn.Module):
    """Patch embedding, one token mixer (a per-token MLP, or a 3x3 convolution over the token grid: the option
    changes the architecture and so its parameter count), unpatchify; time and class are ignored."""

    def __init__(self, *, input_size: int = 16, in_channels: int = 3, num_classes: int = 0, patch_size: int = 4,
                 width: int = 16, mixer: str = "mlp"):
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
        self.input_size, self.in_channels, self.num_classes, self.patch_size = input_size, in_channels, 0, patch_size
        self.mixer = mixer
        self.embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.mix = (nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)) if mixer == "mlp"
                    else nn.Conv2d(width, width, 3, padding=1))
        self.out = nn.Conv2d(width, in_channels * patch_size * patch_size, 1)
        self.unpatch = nn.PixelShuffle(patch_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        grid = self.embed(x)  # (N, width, h, w)
        if self.mixer == "mlp":
            grid = grid + self.mix(grid.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            grid = grid + self.mix(grid)
        return self.unpatch(self.out(grid))


FAMILY = models.Family(
    name="toymix", display="ToyMix", description="a family a test declares in one file, with an option of its own",
    timestep=models.Timestep(0, 9, integer=True, meaning="step 0 ... 9 (ignored)"), role="other", order=60,
    options={"mixer": FamilyOption(MIXERS, key="mix", description="the token mixer: per-token MLP or 3x3 conv")},
    module_types=(ToyMixer,),
)


def register() -> None:
    """The plugin entry point: the family, then its one model (2 pixels per input cell: 32 px -> 16x16 input)."""
    models.register_family(FAMILY)
    models.register_model("toymix_s_4", family="toymix", official="dimbench", description="the toy mixer",
                          latent_factor=2, input_size=16, in_channels=3, num_classes=0, patch_size=4)(ToyMixer)
