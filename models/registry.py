"""Model registry in the spirit of timm's ``create_model``, and the model families.

A *family* (DiM, DiT, U-ViT, or one a plugin adds) states its facts once, in its own file, as a :class:`Family`:
display name, the timestep convention of its ``model(x, t, y)``, its published size table, the options a suite
may set on its models, and its checkpoint support (detection, description, conversion, position-embedding
resizing; see :mod:`models.checkpoints`). Nothing outside ``models/<family>.py`` branches on a family's name.

Each family file registers one builder per published configuration with :func:`register_model`. The builder's
keyword defaults *are* the official configuration (depth, width, patch, input size, channels, classes);
:func:`create_model` only overrides what the caller names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn


@dataclasses.dataclass(frozen=True)
class Timestep:
    """The ``t`` a family's models take: the diffusion step in ``first ... last`` (both included), integer or not.

    DiM and U-ViT take the DDPM step n in [1, 1000] as a float (fractions allowed); DiT an integer index in
    0 ... 999. ``meaning`` says so in words, for documentation and method strings.
    """

    first: int
    last: int
    integer: bool
    meaning: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.long if self.integer else torch.float32

    def sample(self, batch: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch,) uniformly drawn whole steps in the family's range, in its dtype."""
        steps = torch.randint(self.first, self.last + 1, (batch,), device=device, generator=generator)
        return steps.to(self.dtype)

    def empty(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """(batch,) uninitialised steps of the right dtype (meta device, FakeTensorMode: shapes only)."""
        return torch.empty(batch, device=device, dtype=self.dtype)


@dataclasses.dataclass(frozen=True)
class DiffusionRecipe:
    """How a family's official code trains and samples; :mod:`models.diffusion` implements each piece.

    ``schedule`` names a :data:`models.diffusion.SCHEDULES` entry; ``sampler`` a registered sampler
    (:data:`models.diffusion.SAMPLERS`: "dpm_solver++", "ddpm", ...) with ``sample_steps`` function evaluations;
    ``guidance`` is the classifier-free guidance scale in the U-ViT/DiM convention (ε = ε_c + s·(ε_c − ε_u);
    DiT's w = s + 1). ``finetune`` holds the constructor options a model takes when
    it runs above the resolution it was trained at: fine-tuned from a lower resolution (weak-to-strong) or
    sampled there without training (Upsample Guidance); DiM switches its pad layout to "cyclic" for both.
    ``guided_channels``: guidance acts on only the first this many channels when the model has more (DiT
    guides 3 of its 4 latent channels); None: all.
    """

    schedule: str
    sampler: str
    sample_steps: int
    guidance: float
    finetune: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    guided_channels: int | None = None


@dataclasses.dataclass(frozen=True)
class FamilyOption:
    """A constructor option a suite (or a command's ``--model-option NAME=VALUE``) may set on a family's models.

    ``values``: the values it may take. ``key``: how a sweep point that sets it shows it in its key,
    ``...|<key>=<value>`` (DiM's pad layout: ``pad``); a point key is a result's identity, so an option's key never
    changes once results exist. A point that leaves the option unset has no such part: its key is the one it had
    before the option existed. ``description``: what it does, in words (``dimbench list``).
    """

    values: tuple[str, ...]
    key: str
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values or not all(isinstance(v, str) and v for v in self.values):
            raise ValueError(f"FamilyOption.values must be non-empty strings, got {self.values!r}")
        if not self.key or any(c in self.key for c in "|= ") or self.key in RESERVED_KEY_PARTS:
            raise ValueError(f"FamilyOption.key {self.key!r}: a non-empty word without '|', '=' or spaces, not one of "
                             f"{', '.join(RESERVED_KEY_PARTS)} (the point key's own parts)")


#: The named parts of a sweep point's key that are not family options (``dimbench.points.SweepPoint.key``).
RESERVED_KEY_PARTS = ("ckpt", "compile")


@dataclasses.dataclass(frozen=True)
class Family:
    """What dimbench knows about a model family, declared once in the family's own file.

    ``role`` places the family in comparisons: the ``"subject"`` (DiM) is compared against each ``"baseline"``
    (DiT, U-ViT) in reports; ``"other"`` families are measured and shown but not compared. ``order`` sorts
    families in tables and plots. ``sizes`` maps (depth, width) to the published size letter ("XL"), to name
    what a checkpoint holds. ``options`` declares the constructor options a suite may set on this family's models,
    each a :class:`FamilyOption` (its values and how a point key shows it; a plain tuple of values is taken as
    the values, shown in point keys under the option's own name). ``checkpoints`` is the family's
    :class:`models.checkpoints.CheckpointSupport` (None: the family's weights cannot be loaded from files).
    ``module_types`` are the classes of the family's models, to tell the family of a built model. ``diffusion``
    is its :class:`DiffusionRecipe` (None: dimbench does not train or sample it). ``adaptation``: empty for a
    family of official configurations; otherwise the family is dimbench's adaptation of a published design (no
    official configuration exists) and this says so and what was changed: ``dimbench list`` and every result
    row's method repeat it.
    """

    name: str
    display: str
    description: str
    timestep: Timestep
    role: str = "other"
    order: int = 100
    sizes: Mapping[tuple[int, int], str] = dataclasses.field(default_factory=dict)
    options: Mapping[str, FamilyOption] = dataclasses.field(default_factory=dict)
    module_types: tuple[type, ...] = ()
    checkpoints: Any = None
    diffusion: DiffusionRecipe | None = None
    adaptation: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"family {self.name!r}: role must be one of {', '.join(ROLES)}, got {self.role!r}")
        options = {name: opt if isinstance(opt, FamilyOption) else FamilyOption(tuple(opt), key=name)
                   for name, opt in self.options.items()}
        keys = [opt.key for opt in options.values()]
        if len(set(keys)) < len(keys):
            raise ValueError(f"family {self.name!r}: two options share a point-key name ({', '.join(keys)})")
        object.__setattr__(self, "options", options)

    def size_name(self, depth: int, width: int) -> str | None:
        """The published size letter for (depth, width), or None for a size of one's own."""
        return self.sizes.get((depth, width))

    def key_parts(self, options: Mapping[str, Any]) -> list[str]:
        """The parts a sweep point's key gets for these option values (``["pad=cyclic"]``), in declaration order;
        an option left unset (None) has none."""
        unknown = [k for k in options if k not in self.options]
        if unknown:
            raise ValueError(f"{unknown[0]} is not an option of {self.display} models")
        return [f"{opt.key}={options[name]}" for name, opt in self.options.items() if options.get(name) is not None]


ROLES = ("subject", "baseline", "other")

#: Pixels per latent cell of Stable Diffusion's KL-f8 VAE, whose latents the ImageNet models of DiT, U-ViT and
#: DiM see: a 256 px image is a 32x32 latent.
SD_VAE_FACTOR = 8


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a name without building the model.

    ``latent_factor`` is how many pixels one cell of the model's input stands for, along a side: 8 for a model
    on Stable Diffusion VAE latents (:data:`SD_VAE_FACTOR`), 1 for a model on pixels. Every conversion between a
    resolution in pixels and the model's input side goes through it (:meth:`input_size`, :meth:`resolution`).
    """

    name: str
    family: str  # a registered Family's name: "dim" | "dit" | "uvit" | a plugin's
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any]  # the official config's keyword arguments
    official: str  # the official config it stands for, or "dimbench" for sizes of our own
    description: str = ""
    latent_factor: int = 1  # pixels per input cell along a side: 8 on SD-VAE latents, 1 on pixels

    @property
    def patch_size(self) -> int:
        return int(self.defaults["patch_size"])

    @property
    def latent(self) -> bool:
        """True for a model on latents (one input cell stands for several pixels), False on pixels."""
        return self.latent_factor > 1

    def input_size(self, resolution: int) -> int:
        """The side of the model's input for an image side of ``resolution`` pixels."""
        return resolution // self.latent_factor

    def resolution(self, input_size: int) -> int:
        """The image side in pixels an input side of ``input_size`` stands for."""
        return input_size * self.latent_factor

    @property
    def resolution_step(self) -> int:
        """The resolutions the model can take are the multiples of this: its patch, in pixels."""
        return self.latent_factor * self.patch_size

    def resolution_rule(self) -> str:
        """Why a resolution must be a multiple of :attr:`resolution_step`, in words (for error messages)."""
        if self.latent:
            return f"a latent model: resolution/{self.latent_factor} must be divisible by its patch {self.patch_size}"
        return f"a pixel model: resolution must be divisible by its patch {self.patch_size}"

    @property
    def family_info(self) -> Family:
        return family(self.family)


_FAMILIES: dict[str, Family] = {}
_REGISTRY: dict[str, ModelInfo] = {}
REQUIRED_DEFAULTS = ("input_size", "in_channels", "num_classes", "patch_size")


def register_family(fam: Family) -> Family:
    """Register a model family (its file does this before registering its models). Returns it."""
    if fam.name in _FAMILIES and _FAMILIES[fam.name] is not fam:
        raise ValueError(f"model family {fam.name!r} registered twice")
    _FAMILIES[fam.name] = fam
    return fam


def family(name: str) -> Family:
    """The registered family ``name`` (KeyError naming the known ones otherwise)."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known families: {', '.join(_FAMILIES)}") from None


def list_families() -> list[Family]:
    """Registered families in their display order (then by name)."""
    return sorted(_FAMILIES.values(), key=lambda f: (f.order, f.name))


def family_of_model(model: str | nn.Module) -> Family:
    """The family of a registered model name, or of a built model (its ``model_name``, else its class)."""
    if isinstance(model, str):
        return family(model_info(model).family)
    name = getattr(model, "model_name", None)
    if name in _REGISTRY:
        return family(_REGISTRY[name].family)
    for fam in _FAMILIES.values():
        if fam.module_types and isinstance(model, fam.module_types):
            return fam
    raise KeyError(f"cannot tell the family of a {type(model).__name__} (no registered family builds it)")


def option_problem(model: str, option: str, value: Any) -> str | None:
    """Why ``option=value`` cannot be set on the registered model ``model`` (None: it can): an option its
    family does not declare, or a value the option does not take."""
    fam = family_of_model(model)
    if option not in fam.options:
        owners = [f.display for f in list_families() if option in f.options]
        where = f"{' / '.join(owners)} models only" if owners else "no registered model family"
        return f"{option} applies to {where}; {model!r} is a {fam.display} model"
    allowed = fam.options[option].values
    if value not in allowed:
        return f"{option} must be one of {', '.join(allowed)}, got {value!r}"
    return None


def is_family_option(name: str) -> bool:
    """Whether some registered family declares an option called ``name``."""
    return any(name in f.options for f in _FAMILIES.values())


def register_model(name: str, *, family: str, official: str, description: str = "", latent_factor: int = 1,
                   **defaults: Any):
    """Decorator: register ``builder(**kwargs) -> nn.Module`` under ``name`` with its official defaults.

    ``family`` must be registered already; ``defaults`` must include input_size, in_channels, num_classes and
    patch_size. ``latent_factor``: pixels per input cell along a side (:data:`SD_VAE_FACTOR` for a model on
    Stable Diffusion VAE latents; 1, the default, for a model on pixels). The builder should be a module-level
    function or class, so that a worker process can be handed the :class:`ModelInfo` (plugins' models reach
    workers that way).
    """
    if family not in _FAMILIES:
        raise ValueError(f"model {name!r}: family {family!r} is not registered (register_family first)")
    missing = [k for k in REQUIRED_DEFAULTS if k not in defaults]
    if missing:
        raise ValueError(f"model {name!r}: defaults lack {', '.join(missing)}")
    if isinstance(latent_factor, bool) or not isinstance(latent_factor, int) or latent_factor < 1:
        raise ValueError(f"model {name!r}: latent_factor must be a whole number >= 1, got {latent_factor!r}")

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, family, builder, dict(defaults), official, description, latent_factor)
        return builder

    return wrap


def adopt(info: ModelInfo, fam: Family) -> None:
    """Register a model (and its family) handed over from another process, unless already known here.

    A worker process receives the declarations of the model it measures; models registered by a plugin in the
    runner's process become known in the worker this way, whatever the worker's start method.
    """
    _FAMILIES.setdefault(fam.name, fam)
    _REGISTRY.setdefault(info.name, info)


def unregister_model(name: str) -> None:
    """Remove a registration (tests and plugins that register temporarily)."""
    _REGISTRY.pop(name, None)


def unregister_family(name: str) -> None:
    """Remove a family and every model of it (tests and plugins that register temporarily)."""
    for model in [n for n, info in _REGISTRY.items() if info.family == name]:
        del _REGISTRY[model]
    _FAMILIES.pop(name, None)


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
