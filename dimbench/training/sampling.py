"""Generating images from a trained model: which sampler, how many steps, what guidance; optionally at m times
the trained resolution with Upsample Guidance (dim.md §8); and sample grids as PNG files.

The samplers themselves live in :mod:`models.diffusion`, each declared once in its sampler registry
(:func:`models.diffusion.get_sampler`: name, description, function, the schedules it steps); this module picks
one by name and drives it in batches with a seeded generator, so a sample set is reproducible.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import models
from models import diffusion
from models.diffusion import Guidance, Sampler, get_sampler, sampler_names
from models.registry import Family


def sampler_or_family() -> tuple[str, ...]:
    """A metric option's choices: a registered sampler, or "" for the family's own (the registry, read when a
    suite is checked, so a plugin's samplers are among them)."""
    return ("", *sampler_names())


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A sampler by name, its number of network evaluations per sample (per guidance pass) and its
    classifier-free guidance scale ``s`` in the U-ViT/DiM convention (0: no guidance, one pass)."""

    name: str
    steps: int
    guidance: float

    def __post_init__(self) -> None:
        get_sampler(self.name)  # ValueError naming the registered ones
        if self.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")

    @property
    def sampler(self) -> Sampler:
        """Its declaration in the sampler registry."""
        return get_sampler(self.name)

    def describe(self, channels: int | None = None) -> str:
        """In words; ``channels``: guidance acts on the first this many channels only (DiT: 3 of 4)."""
        guided = Guidance(self.guidance, channels).describe() if self.guidance else "no guidance"
        return f"{self.sampler.description}, {self.steps} steps, {guided}"

    def run(self, eps, schedule, x_T: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The sampler from x_T with this spec's steps (its schedule checked first)."""
        self.sampler.check_schedule(schedule)
        return self.sampler.run(eps, schedule, x_T, steps=self.steps, generator=generator)


def guidance_for(model: nn.Module, spec: SamplerSpec, channels: int, conditional: bool) -> Guidance | None:
    """The classifier-free guidance a sample of ``channels`` channels gets from ``spec``: none without a scale
    or a class; on the first ``guided_channels`` only where the model's family recipe says so and the model has
    more (DiT: 3 of its 4 latent channels)."""
    if not spec.guidance or not conditional:
        return None
    try:
        recipe = models.family_of_model(model).diffusion
    except KeyError:  # a module no registered family builds: no family recipe to follow
        recipe = None
    subset = recipe.guided_channels if recipe else None
    return Guidance(spec.guidance, subset if subset is not None and channels > subset else None)


def sampler_for(family: Family, name: str | None = None, steps: int | None = None,
                guidance: float | None = None) -> SamplerSpec:
    """The family's own sampler, steps and guidance (its :class:`models.registry.DiffusionRecipe`), with any of
    them replaced by what is given."""
    recipe = family.diffusion
    if recipe is None and (name is None or steps is None or guidance is None):
        raise ValueError(f"{family.display} declares no diffusion recipe: give the sampler, steps and guidance")
    return SamplerSpec(name or recipe.sampler, int(steps or recipe.sample_steps),
                       float(recipe.guidance if guidance is None else guidance))


@torch.no_grad()
def generate(model: nn.Module, *, schedule, timestep, spec: SamplerSpec, labels: torch.Tensor | None, count: int,
             shape: tuple[int, int, int], seed: int, device: torch.device | str = "cpu", batch: int = 250,
             lowres_model: nn.Module | None = None, upsample: int | None = None,
             until: float = 0.7) -> torch.Tensor:
    """``count`` samples (count, C, H, W) in float32 on the CPU, clamped to [-1, 1].

    ``shape`` is (C, H, W) of the generated images; ``labels`` (count,) class indices or None (unconditional).
    With ``upsample`` = m and ``lowres_model`` (the model at the trained resolution, H/m), the model's ε is
    corrected by Upsample Guidance while t >= ``until`` (dim.md §8). The initial noise and every sampler's noise
    come from a generator seeded with ``seed``, batch by batch: the same call gives the same images.
    """
    device = torch.device(device)
    null = int(getattr(model, "num_classes", 0) or 0)
    guidance = guidance_for(model, spec, shape[0], labels is not None)
    spec.sampler.check_schedule(schedule)
    out = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        g = torch.Generator(device="cpu").manual_seed(int(seed) * 7919 + start)
        x_T = torch.randn((n, *shape), generator=g).to(device)
        y = labels[start:start + n].to(device) if labels is not None else None
        learned = spec.sampler.learned_variance and upsample is None
        eps = diffusion.model_eps(model, schedule, timestep, y=y, guidance=guidance,
                                  null_class=null if guidance else None, with_variance=learned)
        if upsample:
            if lowres_model is None:
                raise ValueError("upsample needs the model at the trained resolution (lowres_model)")
            low = diffusion.model_eps(lowres_model, schedule, timestep, y=y, guidance=guidance,
                                      null_class=null if guidance else None)
            eps = diffusion.upsample_guidance(eps, low, schedule, int(upsample), until=until)
        x = spec.run(eps, schedule, x_T, g)
        out.append(x.float().clamp_(-1, 1).cpu())
    return torch.cat(out)


def class_labels(count: int, num_classes: int) -> torch.Tensor | None:
    """0, 1, ..., num_classes-1, 0, 1, ... (count,): every class equally often; None when unconditional."""
    return torch.arange(count) % num_classes if num_classes > 0 else None


def save_grid(images: torch.Tensor, path: Path, columns: int = 10, rows: int | None = None) -> int:
    """Write the first columns x rows images (C, H, W in [-1, 1]; 1 or 3 channels) as one PNG grid with a
    1-pixel gap; returns how many images it shows."""
    n = images.shape[0] if rows is None else min(images.shape[0], columns * rows)
    rows = -(-n // columns)
    c, h, w = images.shape[1:]
    grid = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, c), dtype=np.float32)
    pics = ((images[:n].float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, columns)
        grid[r * (h + 1):r * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = pics[i]
    arr = (grid * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if c == 1 else arr).save(path)
    return n


def save_class_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, per_class: int) -> tuple[int, list[int]]:
    """Write a PNG grid with one row per class (ascending), its first ``per_class`` samples in generation order,
    1-pixel gaps; returns (cells, the classes in row order). A reader then finds class c in row c."""
    classes = sorted(int(c) for c in torch.unique(labels))
    rows = []
    for c in classes:
        mine = images[labels == c][:per_class]
        if len(mine) < per_class:  # a class with fewer samples: its row is padded with white
            mine = torch.cat([mine, torch.ones(per_class - len(mine), *images.shape[1:])])
        rows.append(mine)
    return save_grid(torch.cat(rows), path, columns=per_class), classes
