"""Model registry in the spirit of timm's ``create_model``.

Each family module (``models.dim``, ``models.dit``, ``models.uvit``) registers one builder per published
configuration with :func:`register_model`. The builder's keyword defaults *are* the official configuration
(depth, width, patch, input size, channels, classes); :func:`create_model` only overrides what the caller names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch.nn as nn


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a name without building the model."""

    name: str
    family: str  # "dim" | "dit" | "uvit"
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any]  # the official config's keyword arguments
    official: str  # the official config it stands for, or "dimbench" for sizes of our own
    description: str = ""

    @property
    def patch_size(self) -> int:
        return int(self.defaults["patch_size"])

    @property
    def latent(self) -> bool:
        """True for models on 4-channel VAE latents (pixel side = 8 x input side)."""
        return int(self.defaults["in_channels"]) == 4


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, official: str, description: str = "", **defaults: Any):
    """Decorator: register ``builder(**kwargs) -> nn.Module`` under ``name`` with its official defaults."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, family, builder, dict(defaults), official, description)
        return builder

    return wrap


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, sorted; optionally only one family."""
    return sorted(n for n, info in _REGISTRY.items() if family is None or info.family == family)


def model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(
    name: str,
    *,
    input_size: int | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    ``input_size`` is the side of the model's input (latent side for latent models: 32 for 256 px, 64 for 512,
    128 for 1024, 192 for 1536; pixel side for pixel models). ``num_classes`` counts real classes; families with
    a null class add that row themselves. Any other keyword overrides the builder's default.
    """
    info = model_info(name)
    kwargs = dict(info.defaults)
    for key, value in (("input_size", input_size), ("in_channels", in_channels), ("num_classes", num_classes)):
        if value is not None:
            kwargs[key] = value
    kwargs.update(overrides)
    model = info.builder(**kwargs)
    model.model_name = name  # so results and checkpoints can say what was built
    return model
