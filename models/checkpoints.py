"""Checkpoints: load (format detection, conversion, resizing, clear errors), save, inspect.

Formats read (always with ``torch.load(..., weights_only=True)``; nothing is downloaded):

- ``dimbench``: dimbench's own file, a dict ``{"format": "dimbench-checkpoint", "version": 1, "model": name,
  "family": family, "config": {constructor keyword arguments}, "state_dict": {...}}`` (see :func:`save_checkpoint`).
- ``dit-official``: DiT's released ``.pt`` files (a plain state_dict), or a DiT training checkpoint holding
  ``"model"`` and ``"ema"`` state_dicts: then the EMA weights are used (the ones the paper samples with) and
  :func:`inspect_checkpoint` / ``model.checkpoint_info`` say so.
- ``uvit-official``: U-ViT's ``nnet.pth`` / ``nnet_ema.pth`` (plain state_dicts, names = dimbench's).
- ``dim-official``: DiM's ``nnet.pth`` / ``nnet_ema.pth`` (plain state_dicts in the official diffusers-style names),
  converted with :func:`models.dim_convert.official_to_dimbench`.
- ``dim-dimbench``: a plain state_dict of dimbench's DiM (dimbench names).

The position embedding follows the requested ``input_size`` when the checkpoint's token grid differs: DiT's fixed
sin-cos table is recomputed; U-ViT's and DiM's learnable tables are resized bilinearly (condition/extra tokens
copied). Architecture (width, depth, patch, heads, options) comes from the model name (plus explicit overrides);
data-shaped settings (input channels, number of classes) come from the checkpoint. Anything that still does not
fit raises :class:`CheckpointError` naming the file and the first mismatching parameter: there is no partial load.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from . import dit, uvit
from .registry import create_model, model_info

__all__ = [
    "CheckpointError",
    "FORMATS",
    "load_checkpoint",
    "load_resized_state_dict",
    "save_checkpoint",
    "inspect_checkpoint",
    "read_checkpoint",
    "choose_pad_layout",
]

FORMAT_TAG = "dimbench-checkpoint"
FORMAT_VERSION = 1
FORMATS = ("auto", "dimbench", "dit-official", "uvit-official", "dim-official", "dim-dimbench")
PAD_LAYOUTS = ("lateral", "cyclic")
DIM_RELEASE_GRID = 16  # token grid of DiM's 256-px releases (4x32x32 latents, patch 2), trained "lateral"
FAMILY_NAMES = {"dit": "DiT", "uvit": "U-ViT", "dim": "DiM"}

# Published sizes, for naming what a checkpoint holds: (depth, width) -> size letter.
_SIZES = {
    "dit": {(12, 384): "S", (12, 768): "B", (24, 1024): "L", (28, 1152): "XL"},
    "uvit": {(12, 512): "S", (16, 768): "M", (20, 1024): "L", (28, 1152): "H"},
    "dim": {(25, 512): "S", (49, 1024): "L", (49, 1536): "H"},
}


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the requested model (the message names file and parameter)."""


@dataclasses.dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found in a file. ``state_dict`` is in dimbench's names for its family."""

    path: str
    format: str
    family: str
    state_dict: dict[str, torch.Tensor]
    note: str = ""
    header: dict[str, Any] | None = None  # dimbench files: model, family, config

    @property
    def description(self) -> dict[str, Any]:
        return _describe(self)


# ---------------------------------------------------------------------------------------------------------------
# Reading


def _dim():
    """models.dim, imported on first use (DiT/U-ViT loading does not need it)."""
    from . import dim

    return dim


def _dim_convert():
    """models.dim_convert (official DiM names), imported on first use."""
    from . import dim_convert

    return dim_convert


def _torch_load(path: str, map_location: Any) -> Any:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        # DiT's training script stores its argparse.Namespace under "args"; allow exactly that class.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # A plain pickle (not torch's zip format) makes torch warn about its protocol before refusing or
            # reading it; the outcome is reported below, the warning is noise to a user.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure to read is reported the same way, with its cause
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if isinstance(e, pickle.UnpicklingError):
            # torch's text suggests retrying with weights_only=False, i.e. running code from an untrusted file:
            # never pass that on. Keep only its diagnosis (e.g. "Unsupported global: ...").
            lines = [line.strip() for line in str(e).splitlines() if line.strip().startswith("Unsupported")]
            raise CheckpointError(
                f"{path}: cannot be read as a PyTorch checkpoint (truncated, not a checkpoint, or holding objects "
                f"other than tensors, which the safe loader refuses): {(lines or ['unpickling refused'])[0][:200]}"
            ) from e
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint (truncated, or not a checkpoint?): "
            f"{type(e).__name__}: {first.split('. ')[0][:300]}"
        ) from e


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _detect(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Which naming a flat state_dict uses, or None."""
    if {"x_embedder.proj.weight", "t_embedder.mlp.0.weight", "final_layer.linear.weight"} <= sd.keys():
        return "dit-official"
    if {"patch_embed.proj.weight", "decoder_pred.weight", "pos_embed"} <= sd.keys():
        return "uvit-official"
    if "a4m_adapter.pad_token" in sd and _dim_convert().is_official_dim(sd):
        return "dim-official"
    if {"patch_embed.weight", "pos_embed", "pad_tokens"} <= sd.keys():
        return "dim-dimbench"
    return None


def read_checkpoint(path: str | os.PathLike, format: str = "auto", map_location: Any = "cpu") -> Checkpoint:
    """Read a checkpoint file and bring its state_dict into dimbench's names; no model is built.

    ``format`` is "auto" (detect) or one of :data:`FORMATS`, in which case the file must be of that format.
    """
    path = os.fspath(path)
    if format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {format!r}; expected one of {', '.join(FORMATS)}")
    obj = _torch_load(path, map_location)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a state_dict or a checkpoint dict")

    note, header = "", None
    if obj.get("format") == FORMAT_TAG:
        if obj.get("version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: dimbench checkpoint version {obj.get('version')!r}; this dimbench reads version "
                f"{FORMAT_VERSION}"
            )
        for key, kind in (("model", str), ("family", str), ("config", Mapping), ("state_dict", Mapping)):
            if not isinstance(obj.get(key), kind):
                raise CheckpointError(f"{path}: dimbench checkpoint has no valid {key!r} entry")
        header = {"model": obj["model"], "family": obj["family"], "config": dict(obj["config"])}
        sd, detected = obj["state_dict"], "dimbench"
    else:
        sd = obj
        if "ema" in obj and _is_tensor_dict(obj["ema"]):
            sd, note = obj["ema"], "EMA weights (the checkpoint's 'ema' entry, preferred over 'model')"
        elif "model" in obj and _is_tensor_dict(obj["model"]):
            sd, note = obj["model"], "the checkpoint's 'model' entry (no 'ema' entry)"
        bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(
                f"{path}: not a state_dict: entry {bad[0]!r} is a {type(sd[bad[0]]).__name__}, not a tensor "
                f"(top-level keys: {', '.join(map(str, list(obj)[:8]))})"
            )
        detected = _detect(sd)
        if detected is None:
            raise CheckpointError(
                f"{path}: not a DiT, U-ViT or DiM state_dict (first keys: {', '.join(list(sd)[:5]) or 'none'})"
            )
    if format != "auto" and format != detected:
        raise CheckpointError(f"{path}: format {format!r} was requested but the file is {detected!r}")

    if detected == "dimbench":
        family = header["family"]
        if family not in FAMILY_NAMES:
            raise CheckpointError(f"{path}: dimbench checkpoint of unknown family {family!r}")
    else:
        family = detected.split("-")[0]
    sd = dict(sd)
    if detected == "dim-official":
        try:
            sd = _dim_convert().official_to_dimbench(sd)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: official DiM state_dict cannot be converted: {_msg(e)}") from e
    return Checkpoint(path, detected, family, sd, note, header)


def _msg(e: BaseException) -> str:
    """An exception's message on one line (KeyError's str() adds quotes)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------------------------
# Describing (inspect) — every number read off the tensors' shapes


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str, suffix: str) -> int:
    """Number of keys ``{prefix}N{suffix}`` (N an integer), i.e. of blocks that have that parameter."""
    pattern = re.compile(re.escape(prefix) + r"\d+" + re.escape(suffix))
    return sum(1 for k in sd if pattern.fullmatch(k))


def _shape(ckpt: Checkpoint, name: str) -> tuple[int, ...]:
    if name not in ckpt.state_dict:
        raise CheckpointError(f"{ckpt.path}: {FAMILY_NAMES[ckpt.family]} state_dict has no {name!r}")
    return tuple(ckpt.state_dict[name].shape)


def _describe(ckpt: Checkpoint) -> dict[str, Any]:
    """Architecture facts read from the state_dict's shapes (the dimbench header adds model and config)."""
    sd, fam = ckpt.state_dict, ckpt.family
    out: dict[str, Any] = {}
    if fam == "dit":
        width, in_ch, patch, _ = _shape(ckpt, "x_embedder.proj.weight")
        depth = _count_blocks(sd, "blocks.", ".attn.qkv.weight")
        tokens = _shape(ckpt, "pos_embed")[1]
        rows = _shape(ckpt, "y_embedder.embedding_table.weight")[0]
        out_ch = _shape(ckpt, "final_layer.linear.weight")[0] // (patch * patch)
        grid, classes = math.isqrt(tokens), rows - 1
        out.update(learn_sigma=out_ch == 2 * in_ch)
    elif fam == "uvit":
        width, in_ch, patch, _ = _shape(ckpt, "patch_embed.proj.weight")
        depth = 2 * _count_blocks(sd, "in_blocks.", ".attn.qkv.weight")
        rows = _shape(ckpt, "label_emb.weight")[0] if "label_emb.weight" in sd else 0
        extras = 2 if rows else 1
        grid = math.isqrt(_shape(ckpt, "pos_embed")[1] - extras)
        classes = None  # U-ViT's table may or may not end with a null row (1001 in the ImageNet-256/512 releases)
        out.update(conv="final_layer.weight" in sd, mlp_time_embed="time_embed.0.weight" in sd)
    else:
        try:
            cfg = _dim_convert().infer_dim_config(sd)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{ckpt.path}: DiM state_dict does not describe a DiM: {_msg(e)}") from e
        width, depth, patch, in_ch = cfg["width"], cfg["depth"], cfg["patch_size"], cfg["in_channels"]
        grid, classes, rows = cfg["grid"], cfg["num_classes"], cfg["num_classes"] + 1
    size = _SIZES[fam].get((depth, width))
    family_name = FAMILY_NAMES[fam]
    arch = f"{family_name}-{size}/{patch}" if size else f"{family_name} (depth {depth}, width {width}, patch {patch})"
    info = dict(
        path=ckpt.path, format=ckpt.format, family=fam, architecture=arch, width=width, depth=depth, patch=patch,
        grid=grid, input_size=grid * patch, in_channels=in_ch, classes=classes, class_rows=rows,
        params=sum(t.numel() for t in sd.values()),
    )  # fmt: skip
    info.update(out)
    if ckpt.header:
        info.update(model=ckpt.header["model"], config=ckpt.header["config"])
        if fam == "dim":
            info["pad_layout"] = ckpt.header["config"].get("pad_layout")
    if ckpt.note:
        info["note"] = ckpt.note
    return info


def inspect_checkpoint(path: str | os.PathLike, format: str = "auto") -> dict[str, Any]:
    """What a checkpoint holds, without building a model.

    Keys: path, format, family, architecture (e.g. "DiT-XL/2"), width, depth (DiT/DiM: blocks; U-ViT: the
    official config's depth, blocks = depth + 1), patch, grid (token-grid side of the position embedding),
    input_size (= grid * patch), in_channels, classes (real classes; None for U-ViT, whose table may or may not
    hold a null row), class_rows (rows of the class table; 0 = unconditional), params (tensors' element count,
    DiT's frozen pos_embed included); plus learn_sigma (DiT), conv / mlp_time_embed (U-ViT), model / config /
    pad_layout (dimbench files) and note (which weights of a training checkpoint) where they apply.
    """
    return _describe(read_checkpoint(path, format))


# ---------------------------------------------------------------------------------------------------------------
# Fitting a state_dict to a model


def _family_of(model: nn.Module) -> str:
    if isinstance(model, dit.DiT):
        return "dit"
    if isinstance(model, uvit.UViT):
        return "uvit"
    if isinstance(model, _dim().DiM):
        return "dim"
    name = getattr(model, "model_name", None)
    if name is not None:
        return model_info(name).family
    raise CheckpointError(f"cannot tell the family of a {type(model).__name__} (not a DiT, U-ViT or DiM)")


def _adapt(family: str, model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Resize the position embedding to the model's grid (see the module docstring)."""
    try:
        if family == "dit":
            return dit.adapt_state_dict(model, sd)
        if family == "uvit":
            return uvit.adapt_state_dict(model, sd)
        return _dim().adapt_state_dict(model, sd)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{source}: {_msg(e)}") from e


def _same_shape(name: str, want: torch.Size, found: torch.Size, resizable: bool) -> bool:
    """Equal shapes; for a resizable position table (1, tokens, width) only the token count may differ."""
    if resizable and name == "pos_embed" and len(want) == len(found) == 3:
        return (want[0], want[2]) == (found[0], found[2])
    return tuple(want) == tuple(found)


def _check_fit(
    model: nn.Module, sd: Mapping[str, torch.Tensor], source: str, what: str, resizable: bool = False
) -> None:
    """Raise CheckpointError unless ``sd`` has exactly the model's keys with the model's shapes.

    Walks the model's state_dict in order and names the first parameter that is missing or has another shape.
    With ``resizable``, ``pos_embed`` may differ in its token count (checked before resizing it).
    """
    own = model.state_dict()
    problems = []
    for name, tensor in own.items():
        if name not in sd:
            problems.append(f"parameter {name!r} (shape {tuple(tensor.shape)}) is missing from the checkpoint")
        elif not _same_shape(name, tensor.shape, sd[name].shape, resizable):
            problems.append(
                f"parameter {name!r}: expected shape {tuple(tensor.shape)}, found {tuple(sd[name].shape)}"
            )
    unexpected = [k for k in sd if k not in own]
    if not problems and not unexpected:
        return
    parts = []
    if problems:
        parts.append(problems[0] + (f" ({len(problems) - 1} more mismatching)" if len(problems) > 1 else ""))
    if unexpected:
        parts.append(
            f"{len(unexpected)} unexpected parameter(s) in the checkpoint, first {unexpected[0]!r} "
            f"(shape {tuple(sd[unexpected[0]].shape)})"
        )
    raise CheckpointError(f"{source}: does not fit {what}: " + "; ".join(parts))


def _model_summary(name: str, model: nn.Module) -> str:
    bits = [f"{k} {getattr(model, k)}" for k in ("width", "depth", "patch_size") if hasattr(model, k)]
    return f"model {name!r} ({', '.join(bits)})"


def load_resized_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a state_dict trained at another resolution (e.g. a 256-px model's into a 512-px model), strictly.

    Dispatches on the model's family: DiT's fixed sin-cos ``pos_embed`` is recomputed for the model's grid, U-ViT's
    and DiM's learnable position tables are resized bilinearly (extra/condition tokens copied); every other tensor
    must match exactly. Official DiM names are converted first. Returns ``model`` (modified in place).
    Raises CheckpointError naming the first mismatching parameter.
    """
    family = _family_of(model)
    sd = dict(state_dict)
    if family == "dim":
        if _dim_convert().is_official_dim(sd):
            try:
                sd = _dim_convert().official_to_dimbench(sd)
            except (KeyError, ValueError, TypeError) as e:
                raise CheckpointError(f"state_dict: official DiM names cannot be converted: {_msg(e)}") from e
    what = _model_summary(getattr(model, "model_name", type(model).__name__), model)
    _check_fit(model, sd, "state_dict", what, resizable=True)
    sd = _adapt(family, model, sd, "state_dict")
    _check_fit(model, sd, "state_dict", what)
    model.load_state_dict(sd, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Loading


def choose_pad_layout(explicit: str | None, checkpoint_grid: int, target_grid: int, saved: str | None = None):
    """DiM's pad layout for loaded weights, and why: ``(layout, reason)``.

    The layout is not stored in official checkpoints; it follows how the weights are used (dim.md §6, §8):
    an explicit choice wins; a target grid larger than the checkpoint's training grid means training-free
    upsampling, run "cyclic"; a dimbench file keeps the layout it was saved with; a checkpoint trained on a grid
    larger than the 256-px releases' 16x16 (the 512 fine-tune, grid 32) is "cyclic"; otherwise (256-px releases
    and smaller) "lateral".
    """
    if explicit is not None:
        if explicit not in PAD_LAYOUTS:
            raise CheckpointError(f"pad_layout must be one of {', '.join(PAD_LAYOUTS)}, got {explicit!r}")
        return explicit, "given explicitly"
    if target_grid > checkpoint_grid:
        return "cyclic", f"input grid {target_grid} > the checkpoint's training grid {checkpoint_grid} (upsampling)"
    if saved is not None:
        return saved, "as saved in the dimbench checkpoint"
    if checkpoint_grid > DIM_RELEASE_GRID:
        return "cyclic", f"checkpoint trained on a {checkpoint_grid}x{checkpoint_grid} grid (the 512 fine-tune)"
    return "lateral", (
        f"checkpoint trained on a {checkpoint_grid}x{checkpoint_grid} grid, not larger than the 256-px releases' "
        f"{DIM_RELEASE_GRID}x{DIM_RELEASE_GRID} (trained lateral)"
    )


def _build_kwargs(name: str, ckpt: Checkpoint, desc: dict[str, Any], input_size: int | None, overrides: dict):
    """Constructor keywords for ``name`` loaded from ``ckpt`` (before the pad layout)."""
    if ckpt.header is not None:
        if ckpt.header["model"] != name:
            raise CheckpointError(
                f"{ckpt.path}: holds dimbench model {ckpt.header['model']!r}, not {name!r} "
                f"(load it as {ckpt.header['model']!r}, or convert it again)"
            )
        kwargs = dict(ckpt.header["config"])
    else:
        kwargs = {"in_channels": desc["in_channels"]}
        if ckpt.family == "uvit":
            null = overrides.get("null_class", model_info(name).defaults.get("null_class", True))
            kwargs["num_classes"] = max(desc["class_rows"] - int(bool(null)), 0) if desc["class_rows"] else 0
        else:
            kwargs["num_classes"] = desc["classes"]
        kwargs["input_size"] = desc["input_size"]
    if input_size is not None:
        kwargs["input_size"] = int(input_size)
    kwargs.update(overrides)
    return kwargs


def load_checkpoint(
    name: str,
    path: str | os.PathLike,
    *,
    input_size: int | None = None,
    format: str = "auto",
    pad_layout: str | None = None,
    map_location: Any = "cpu",
    **overrides: Any,
) -> nn.Module:
    """Build registered model ``name`` and load the checkpoint at ``path`` into it, strictly; eval mode.

    ``input_size``: the model's input side (latent side for latent models); default = the checkpoint's own
    (token grid x patch, or the saved config's). When it differs from the checkpoint's, the position embedding
    is recomputed (DiT) or resized bilinearly (U-ViT, DiM). ``format``: "auto" or one of :data:`FORMATS`.
    ``pad_layout`` (DiM only): "lateral" or "cyclic"; default chosen by :func:`choose_pad_layout`.
    ``map_location``: device of the returned model. ``overrides``: further constructor keywords (e.g. ``depth``,
    ``width`` for a non-registered size; input channels and classes are read from the checkpoint).

    The returned model carries ``checkpoint_info`` (path, format, note, pad layout and why). Raises
    :class:`CheckpointError` for an unreadable file, another family or architecture, missing/unexpected
    parameters or shape mismatches (naming the file and the first mismatching parameter).
    """
    path = os.fspath(path)
    try:
        info = model_info(name)
    except KeyError:
        if name.startswith("dim"):
            _dim()  # registers the DiM configurations
        try:
            info = model_info(name)
        except KeyError as e:
            raise CheckpointError(_msg(e)) from None
    ckpt = read_checkpoint(path, format)
    if ckpt.family != info.family:
        raise CheckpointError(
            f"{path}: holds a {FAMILY_NAMES[ckpt.family]} checkpoint ({ckpt.format}), but {name!r} is a "
            f"{FAMILY_NAMES[info.family]} model"
        )
    desc = _describe(ckpt)
    kwargs = _build_kwargs(name, ckpt, desc, input_size, overrides)
    pad_reason = None
    if info.family == "dim":
        saved = ckpt.header["config"].get("pad_layout") if ckpt.header else None
        target_grid = kwargs["input_size"] // kwargs.get("patch_size", info.patch_size)
        kwargs["pad_layout"], pad_reason = choose_pad_layout(pad_layout, desc["grid"], target_grid, saved)
    elif pad_layout is not None:
        raise CheckpointError(f"pad_layout applies to DiM models only; {name!r} is {FAMILY_NAMES[info.family]}")

    try:
        with torch.device("meta"):  # shapes only: cheap even for DiM-H, so mismatches are found before any work
            skeleton = create_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build {name!r} with {kwargs}: {_msg(e)}") from e
    # Check before resizing (so a width mismatch is reported on its first parameter), resize, check again.
    what = f"{_model_summary(name, skeleton)}; the checkpoint holds {desc['architecture']} ({ckpt.format})"
    if ckpt.format == "dim-official":
        what += "; names below are dimbench's, after conversion"
    _check_fit(skeleton, ckpt.state_dict, path, what, resizable=True)
    sd = _adapt(info.family, skeleton, ckpt.state_dict, path)
    _check_fit(skeleton, sd, path, what)

    persistent = set(skeleton.state_dict())
    if all(n in persistent for n, _ in skeleton.named_buffers()):
        # Every tensor of the model is in the state_dict: allocate without running the initialisers.
        model = skeleton.to_empty(device=map_location)
    else:
        with torch.device(map_location):
            model = create_model(name, **kwargs)
    model.load_state_dict(sd, strict=True)
    model.model_name = name
    model.checkpoint_info = dict(path=path, format=ckpt.format, architecture=desc["architecture"], note=ckpt.note)
    if pad_reason is not None:
        model.checkpoint_info.update(pad_layout=kwargs["pad_layout"], pad_layout_reason=pad_reason)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Saving


def _model_config(model: nn.Module) -> dict[str, Any]:
    """The constructor keywords that rebuild ``model``: its ``config`` if it keeps one (DiT, U-ViT), else the
    attributes every family exposes (DiM)."""
    if isinstance(getattr(model, "config", None), Mapping):
        return dict(model.config)
    keys = ("input_size", "in_channels", "num_classes", "patch_size", "depth", "width", "pad_layout")
    return {k: getattr(model, k) for k in keys if hasattr(model, k)}


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model`` in dimbench's format (see the module docstring), atomically (temporary file, rename).

    The model must come from :func:`models.create_model` (or :func:`load_checkpoint`), which sets ``model_name``.
    """
    path = os.fspath(path)
    name = getattr(model, "model_name", None)
    if name is None:
        raise CheckpointError("cannot save: the model has no model_name (build it with models.create_model)")
    family = _family_of(model)
    state = model.state_dict()
    on_meta = [k for k, v in state.items() if v.device.type == "meta"]
    if on_meta:
        raise CheckpointError(f"cannot save {name!r}: parameter {on_meta[0]!r} is on the meta device (no values)")
    payload = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "model": name,
        "family": family,
        "config": _model_config(model),
        "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in state.items()},
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
