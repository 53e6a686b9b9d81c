"""dimbench's models: DiM, DiT and U-ViT, faithful to their official releases, built by name.

    >>> import models
    >>> models.list_models()                       # every registered configuration
    >>> m = models.create_model("dim_h_2", input_size=64)   # DiM-H/2 on 512 px (64x64 latents)
    >>> eps = m(x, t, y)                           # same call for every family
    >>> m = models.load_checkpoint("dim_h_2", "nnet_ema.pth", input_size=64)  # official weights, resized

Families, conventions, configurations and checkpoint formats: docs/models.md.

``models`` imports nothing from ``dimbench``.
"""

# Importing the family modules registers their configurations.
from . import dico, dig, dim, dit, sana, uvit  # noqa: F401,E402
from .checkpoints import (  # noqa: E402
    CheckpointError,
    CheckpointFormat,
    CheckpointSupport,
    inspect_checkpoint,
    load_checkpoint,
    load_resized_state_dict,
    save_checkpoint,
)
from .registry import (  # noqa: E402
    SD_VAE_FACTOR,
    Family,
    FamilyOption,
    ModelInfo,
    Timestep,
    create_model,
    family,
    family_of_model,
    list_families,
    list_models,
    model_info,
    option_problem,
    register_family,
    register_model,
)
from .scan import scan_backend, selective_scan  # noqa: F401  (the operator and which backend ran)

__all__ = [
    "SD_VAE_FACTOR",
    "Family",
    "FamilyOption",
    "ModelInfo",
    "Timestep",
    "family",
    "family_of_model",
    "list_families",
    "register_family",
    "create_model",
    "list_models",
    "model_info",
    "option_problem",
    "register_model",
    "scan_backend",
    "selective_scan",
    "CheckpointError",
    "CheckpointFormat",
    "CheckpointSupport",
    "inspect_checkpoint",
    "load_checkpoint",
    "load_resized_state_dict",
    "save_checkpoint",
]
