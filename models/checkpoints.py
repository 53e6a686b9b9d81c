"""Checkpoints, the generic part: dimbench's own file format, reading, fit checks, loading, saving, inspecting.

What a family reads is declared in its own file (``models/<family>.py``) as a :class:`CheckpointSupport`, set
as ``checkpoints=`` of its :class:`models.registry.Family`: the file formats it reads (each a name, a
``detect`` test and a ``convert`` filter into dimbench's parameter names, in the spirit of timm's per-model
``checkpoint_filter_fn``), how a state_dict describes its architecture, how the position embedding follows
another grid, which constructor keywords come from the data, and which family options are chosen at load time.
This module only iterates over :func:`models.registry.list_families`; see docs/models.md §5 for the formats
and §6 for position-embedding resizing.

Formats read (always ``torch.load(..., weights_only=True)``; nothing is downloaded): ``"dimbench"``, dimbench's
own file, a dict ``{"format": "dimbench-checkpoint", "version": 1, "model": name, "family": family, "config":
{constructor keyword arguments}, "state_dict": {...}}`` (see :func:`save_checkpoint`), and every format a
family declares (:data:`FORMATS` lists them all). A training checkpoint holding ``"ema"`` and/or ``"model"``
state_dicts is read through its EMA weights (the ones papers sample with), and ``note`` says so.

Architecture (width, depth, patch, heads, options) comes from the model name plus explicit overrides; data-shaped
settings (input channels, number of classes) come from the checkpoint. Anything that does not fit raises
:class:`CheckpointError` naming the file and the first mismatching parameter: there is no partial load.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import torch
import torch.nn as nn

from .registry import (
    Family,
    create_model,
    family,
    family_of_model,
    is_family_option,
    list_families,
    model_info,
    option_problem,
)

__all__ = [
    "CheckpointError",
    "CheckpointFormat",
    "CheckpointSupport",
    "Checkpoint",
    "formats",
    "load_checkpoint",
    "load_resized_state_dict",
    "save_checkpoint",
    "inspect_checkpoint",
    "inflation_problem",
    "read_checkpoint",
]  # and, computed when imported (module __getattr__ below): FORMATS

FORMAT_TAG = "dimbench-checkpoint"
FORMAT_VERSION = 1
DIMBENCH_FORMAT = "dimbench"
StateDict = dict[str, torch.Tensor]

# What torch.save's legacy (pre-zip) format starts with: its magic number, pickled with protocol 2. A file that
# starts with a pickle opcode but not with this is a plain pickle, not a PyTorch checkpoint.
_LEGACY_TORCH_HEADER = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the requested model (the message names file and parameter)."""


# ---------------------------------------------------------------------------------------------------------------
# What a family declares


@dataclasses.dataclass(frozen=True)
class CheckpointFormat:
    """One kind of file a family reads: a flat state_dict in some naming.

    The naming is recognised from the keys (cheap: no tensor is read): a state_dict holding all of ``keys``, or
    for which ``detect(state_dict)`` is true when the test is more than that. ``convert`` maps it onto dimbench's
    parameter names and layouts (a new dict; None: the names are dimbench's already); it may raise
    KeyError/ValueError/TypeError, reported as a CheckpointError naming the file. Functions are module-level: a
    Family (and so its formats) travels to worker processes by pickle.
    """

    name: str
    keys: frozenset[str] = frozenset()
    detect: Callable[[Mapping[str, torch.Tensor]], bool] | None = None
    convert: Callable[[Mapping[str, torch.Tensor]], StateDict] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.keys and self.detect is None:
            raise ValueError(f"checkpoint format {self.name!r}: give the keys it holds or a detect function")

    def matches(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        return self.keys <= state_dict.keys() and (self.detect is None or bool(self.detect(state_dict)))


def data_kwargs(description: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The default data-shaped constructor keywords: input channels and real classes, as described."""
    return {"in_channels": description["in_channels"], "num_classes": description["classes"]}


@dataclasses.dataclass(frozen=True)
class CheckpointSupport:
    """How a family's weights are read from files (a :class:`models.registry.Family`'s ``checkpoints``).

    - ``formats``: the formats it reads (names unique over all families); with ``format="auto"`` exactly one
      format of all the registered families must accept a file.
    - ``describe(state_dict) -> dict``: architecture facts read off tensor shapes of a dimbench-named state_dict:
      ``width, depth, patch, grid`` (side of the square token grid of the position embedding), ``in_channels``,
      ``classes`` (real classes, or None when the file cannot tell), ``class_rows`` (rows of the class table;
      0 = unconditional), plus any family extras (shown by ``dimbench checkpoint inspect`` under ``labels``),
      and optionally ``architecture``, the family's own name for what the file holds (default
      "<display>-<size>/<patch>").
      Raises KeyError/ValueError for a state_dict that does not describe the family's model.
    - ``adapt(model, state_dict) -> state_dict``: the state_dict made to fit ``model``'s token grid (position
      embedding recomputed or resized; a new dict). Raises KeyError/ValueError when it cannot.
    - ``data_kwargs(description, settings) -> dict``: the constructor keywords that follow the data (input
      channels, classes); ``settings`` are the model's registered defaults with the caller's overrides.
    - ``choose_options(given, saved, description, settings) -> {option: (value, reason)}``: the family options
      (``Family.options``) chosen at load time: ``given`` explicitly, ``saved`` in a dimbench file, the
      checkpoint's description and the constructor settings about to be used. None: options are taken as given.
    - ``labels``: display labels of the description's family extras.
    - ``safe_globals``: classes (never functions) the family's training checkpoints pickle besides tensors,
      which the safe loader may then rebuild (DiT's ``argparse.Namespace``); anything else is refused.
    """

    formats: tuple[CheckpointFormat, ...]
    describe: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]
    adapt: Callable[[nn.Module, StateDict], StateDict]
    data_kwargs: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] = data_kwargs
    choose_options: Callable[..., dict[str, tuple[Any, str]]] | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    safe_globals: tuple[type, ...] = ()


# Helpers for the families' ``describe``.


def shape_of(state_dict: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    """The shape of ``state_dict[name]`` (KeyError "no 'name'" when absent)."""
    if name not in state_dict:
        raise KeyError(f"no {name!r}")
    return tuple(state_dict[name].shape)


def count_indexed(state_dict: Mapping[str, torch.Tensor], prefix: str, suffix: str) -> int:
    """Number of keys ``{prefix}N{suffix}`` (N an integer), i.e. of blocks that have that parameter."""
    pattern = re.compile(re.escape(prefix) + r"\d+" + re.escape(suffix))
    return sum(1 for k in state_dict if pattern.fullmatch(k))


def square_side(tokens: int, what: str) -> int:
    """The side of a square grid of ``tokens`` positions (ValueError naming ``what`` otherwise)."""
    side = math.isqrt(max(tokens, 0))
    if side * side != tokens or side == 0:
        raise ValueError(f"{what} has {tokens} grid positions, not a square grid")
    return side


# ---------------------------------------------------------------------------------------------------------------
# The registered formats


def _support(fam: Family, what: str = "") -> CheckpointSupport:
    if fam.checkpoints is None:
        raise CheckpointError(f"{what or fam.display + ' models'}: the {fam.display} family declares no checkpoint "
                              "support (its weights cannot be loaded from files)")
    return fam.checkpoints


def _format_table() -> dict[str, tuple[Family, CheckpointFormat]]:
    """Every declared format by name, in family order."""
    table: dict[str, tuple[Family, CheckpointFormat]] = {}
    for fam in list_families():
        for fmt in fam.checkpoints.formats if fam.checkpoints is not None else ():
            if fmt.name in table or fmt.name in ("auto", DIMBENCH_FORMAT):
                raise ValueError(f"checkpoint format {fmt.name!r} of family {fam.name!r} clashes with another format")
            table[fmt.name] = (fam, fmt)
    return table


def formats() -> tuple[str, ...]:
    """The values of ``format=``: "auto", "dimbench" and every format the registered families declare."""
    return ("auto", DIMBENCH_FORMAT, *_format_table())


def _readable_families() -> str:
    names = [f.display for f in list_families() if f.checkpoints is not None]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names) or "no"


def __getattr__(name: str) -> Any:
    # FORMATS is computed when asked, so it lists the formats of families registered after this module loaded
    # (the family files import this module before they register).
    if name == "FORMATS":
        return formats()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found in a file. ``state_dict`` is in dimbench's names for its family."""

    path: str
    format: str
    family: str
    state_dict: StateDict
    note: str = ""
    header: dict[str, Any] | None = None  # dimbench files: model, family, config

    @property
    def description(self) -> dict[str, Any]:
        return _describe(self)


def _safe_globals() -> list[type]:
    return [cls for fam in list_families() if fam.checkpoints for cls in fam.checkpoints.safe_globals]


def _starts_like_plain_pickle(path: str) -> bool:
    """A pickle (PROTO opcode first) that is neither torch's zip format nor its legacy format."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_HEADER))
    except OSError:
        return False
    return head[:1] == b"\x80" and head != _LEGACY_TORCH_HEADER and not zipfile.is_zipfile(path)


#: How many times its size on disk a checkpoint's zip archive may declare its contents to be (a file under 4 MiB
#: may declare 64 MiB). torch.save stores every entry uncompressed (1x) and a deflated archive of real weights
#: shrinks little (float weights: about 1.1x); an archive that declares more is a decompression bomb (a 2 MB file
#: inflating to GBs of zeros), refused before anything is inflated.
MAX_INFLATION = 16
_INFLATION_FLOOR = 4 << 20


def inflation_problem(path: str | os.PathLike) -> str | None:
    """Why the zip archive at ``path`` (torch.save's format) must not be read, from its central directory alone
    (the sizes torch's reader allocates): it declares more than :data:`MAX_INFLATION` times its own size. None
    for an archive within bounds, and for anything that is not a zip archive (its reader reports that)."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            declared = sum(max(int(info.file_size), 0) for info in archive.infolist())
        size = os.path.getsize(path)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None  # a damaged archive: torch's reader says how
    if declared > MAX_INFLATION * max(size, _INFLATION_FLOOR):
        return (f"{path}: its zip archive declares {declared / 2**30:,.2f} GiB of contents in a "
                f"{size / 2**20:,.2f} MiB file ({declared / max(size, 1):,.0f}x; torch.save stores tensors "
                f"uncompressed, about 1x): refused as a decompression bomb, nothing was inflated")
    return None


def _torch_load(path: str, map_location: Any) -> Any:
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder; expected a checkpoint file (e.g. .../nnet_ema.pth)")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    bomb = inflation_problem(path)
    if bomb:
        raise CheckpointError(bomb)
    try:
        # Exactly the classes the families declare (a training script's arguments object, say) are allowed.
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            # A plain pickle (not torch's zip format) makes torch warn about its protocol before refusing or
            # reading it; the outcome is reported below, the warning is noise to a user.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure to read is reported the same way, with its cause
        # torch's text may suggest retrying with weights_only=False, i.e. running code from an untrusted file:
        # never pass that on; keep only its diagnosis.
        if _starts_like_plain_pickle(path):
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint file but a plain Python pickle (not the format torch.save "
                "writes), which the safe loader refuses to read; save the weights with torch.save(state_dict, path)"
            ) from e
        if isinstance(e, pickle.UnpicklingError):
            lines = [line.strip() for line in str(e).splitlines() if line.strip().startswith("Unsupported")]
            raise CheckpointError(
                f"{path}: cannot be read as a PyTorch checkpoint (truncated, not a checkpoint, or holding objects "
                f"other than tensors, which the safe loader refuses): {(lines or ['unpickling refused'])[0][:200]}"
            ) from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint (truncated, or not a checkpoint?): "
            f"{type(e).__name__}: {first.split('. ')[0][:300]}"
        ) from e


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_header(path: str, obj: Mapping) -> tuple[dict[str, Any], Mapping]:
    """(header, state_dict) of a dimbench file, validated."""
    if obj.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: dimbench checkpoint version {obj.get('version')!r}; this dimbench reads version {FORMAT_VERSION}"
        )
    for key, kind in (("model", str), ("family", str), ("config", Mapping), ("state_dict", Mapping)):
        if not isinstance(obj.get(key), kind):
            raise CheckpointError(f"{path}: dimbench checkpoint has no valid {key!r} entry")
    try:
        _support(family(obj["family"]))
    except KeyError:
        raise CheckpointError(f"{path}: dimbench checkpoint of unknown family {obj['family']!r}") from None
    return {"model": obj["model"], "family": obj["family"], "config": dict(obj["config"])}, obj["state_dict"]


def _weights_of(path: str, obj: Mapping) -> tuple[Mapping, str]:
    """(state_dict, note): a plain state_dict, or the weights of a training checkpoint (EMA preferred)."""
    sd, note = obj, ""
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
    return sd, note


def _detect(path: str, sd: Mapping[str, torch.Tensor], requested: str) -> tuple[Family, CheckpointFormat]:
    """The one declared format whose ``detect`` accepts ``sd`` (the requested one if several do)."""
    matches = [(fam, fmt) for fam, fmt in _format_table().values() if fmt.matches(sd)]
    if not matches:
        raise CheckpointError(
            f"{path}: not a {_readable_families()} state_dict (first keys: {', '.join(list(sd)[:5]) or 'none'})"
        )
    chosen = [m for m in matches if m[1].name == requested] or matches
    if requested != "auto" and chosen[0][1].name != requested:
        raise CheckpointError(f"{path}: format {requested!r} was requested but the file is {chosen[0][1].name!r}")
    if len(chosen) > 1:
        names = ", ".join(fmt.name for _, fmt in chosen)
        raise CheckpointError(f"{path}: the state_dict matches several formats ({names}); pass format= to choose")
    return chosen[0]


def _convert(fmt: CheckpointFormat, sd: Mapping[str, torch.Tensor], fam: Family, source: str) -> StateDict:
    if fmt.convert is None:
        return dict(sd)
    try:
        return fmt.convert(dict(sd))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"{source}: {fmt.name} state_dict cannot be converted to dimbench's {fam.display} names: {_msg(e)}"
        ) from e


def read_checkpoint(path: str | os.PathLike, format: str = "auto", map_location: Any = "cpu") -> Checkpoint:
    """Read a checkpoint file and bring its state_dict into dimbench's names; no model is built.

    ``format`` is "auto" (detect) or one of :data:`FORMATS`, in which case the file must be of that format.
    """
    path = os.fspath(path)
    known = formats()
    if format not in known:
        raise CheckpointError(f"unknown checkpoint format {format!r}; expected one of {', '.join(known)}")
    obj = _torch_load(path, map_location)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a state_dict or a checkpoint dict")

    if obj.get("format") == FORMAT_TAG:
        header, sd = _read_header(path, obj)
        if format not in ("auto", DIMBENCH_FORMAT):
            raise CheckpointError(f"{path}: format {format!r} was requested but the file is {DIMBENCH_FORMAT!r}")
        return Checkpoint(path, DIMBENCH_FORMAT, header["family"], dict(sd), "", header)
    if format == DIMBENCH_FORMAT:
        raise CheckpointError(f"{path}: format 'dimbench' was requested but the file has no dimbench header")
    sd, note = _weights_of(path, obj)
    fam, fmt = _detect(path, sd, format)
    return Checkpoint(path, fmt.name, fam.name, _convert(fmt, sd, fam, path), note)


def _msg(e: BaseException) -> str:
    """An exception's message on one line (KeyError's str() adds quotes)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------------------------
# Describing (inspect): every number read off the tensors' shapes

# What every describe() returns, in display order (input_size = grid * patch goes after grid).
_DESCRIBED = ("width", "depth", "patch", "grid", "in_channels", "classes", "class_rows")


def _describe(ckpt: Checkpoint) -> dict[str, Any]:
    """Architecture facts read from the state_dict's shapes (the dimbench header adds model and config)."""
    fam = family(ckpt.family)
    try:
        facts = dict(_support(fam).describe(ckpt.state_dict))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}: does not describe a {fam.display} model: {_msg(e)}") from e
    width, depth, patch = facts["width"], facts["depth"], facts["patch"]
    size = fam.size_name(depth, width)
    arch = f"{fam.display}-{size}/{patch}" if size else f"{fam.display} (depth {depth}, width {width}, patch {patch})"
    arch = facts.pop("architecture", None) or arch  # a family without patches names its own (DiCo-XL)
    info = dict(path=ckpt.path, format=ckpt.format, family=fam.name, architecture=arch)
    info.update({k: facts.pop(k) for k in _DESCRIBED[:4]})
    info["input_size"] = info["grid"] * patch
    info.update({k: facts.pop(k) for k in _DESCRIBED[4:]})
    info["params"] = sum(t.numel() for t in ckpt.state_dict.values())
    info.update(facts)  # the family's extras
    if ckpt.header:
        config = ckpt.header["config"]
        info.update(model=ckpt.header["model"], config=config)
        info.update({option: config[option] for option in fam.options if option in config})
    if ckpt.note:
        info["note"] = ckpt.note
    return info


def inspect_checkpoint(path: str | os.PathLike, format: str = "auto") -> dict[str, Any]:
    """What a checkpoint holds, without building a model.

    Keys: path, format, family, architecture (e.g. "DiT-XL/2"), width, depth (as the family's configurations
    count it; U-ViT: blocks = depth + 1), patch, grid (token-grid side of the position embedding), in_channels,
    classes (real classes; None when the file cannot tell, as for U-ViT's table that may or may not end with a
    null row), class_rows (rows of the class table; 0 = unconditional), input_size (= grid * patch), params
    (tensors' element count, DiT's frozen pos_embed included); then the family's extras (its
    ``CheckpointSupport.labels``), model / config / family options (dimbench files) and note (which weights of a
    training checkpoint) where they apply.
    """
    return _describe(read_checkpoint(path, format))


# ---------------------------------------------------------------------------------------------------------------
# Fitting a state_dict to a model


def _family_of(model: nn.Module) -> Family:
    try:
        return family_of_model(model)
    except KeyError as e:
        raise CheckpointError(_msg(e)) from None


def _adapt(fam: Family, model: nn.Module, sd: StateDict, source: str) -> StateDict:
    """The state_dict fitted to the model's token grid by the family's ``adapt`` (docs/models.md §6)."""
    try:
        return _support(fam).adapt(model, sd)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{source}: {_msg(e)}") from e


def _same_shape(name: str, want: torch.Size, found: torch.Size, resizable: bool) -> bool:
    """Equal shapes; for a resizable position table (1, tokens, width) only the token count may differ."""
    if resizable and name == "pos_embed" and len(want) == len(found) == 3:
        return (want[0], want[2]) == (found[0], found[2])
    return tuple(want) == tuple(found)


def _mismatch(name: str, want: torch.Tensor, found: torch.Tensor, resizable: bool) -> str | None:
    """What is wrong with ``found`` for the model's ``want`` (shape, then kind of values), or None."""
    if not _same_shape(name, want.shape, found.shape, resizable):
        return f"parameter {name!r}: expected shape {tuple(want.shape)}, found {tuple(found.shape)}"
    if want.is_floating_point() and not found.is_floating_point():
        # load_state_dict would silently cast integers to floats: integer weights are a broken export.
        return f"parameter {name!r}: expected floating-point values, found {found.dtype}"
    return None


def _check_fit(
    model: nn.Module, sd: Mapping[str, torch.Tensor], source: str, what: str, resizable: bool = False
) -> None:
    """Raise CheckpointError unless ``sd`` has exactly the model's keys, shapes and kinds of values.

    Walks the model's state_dict in order and names the first parameter that is missing, has another shape,
    or holds integers where the model has floats. With ``resizable``, ``pos_embed`` may differ in its token
    count (checked before resizing it).
    """
    own = model.state_dict()
    problems = []
    for name, tensor in own.items():
        if name not in sd:
            problems.append(f"parameter {name!r} (shape {tuple(tensor.shape)}) is missing from the checkpoint")
        elif (problem := _mismatch(name, tensor, sd[name], resizable)) is not None:
            problems.append(problem)
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


def _non_finite(tensor: torch.Tensor) -> str | None:
    """"3 of 384 values are NaN" (and/or infinite) for a floating tensor with such values, else None."""
    if not tensor.is_floating_point() or tensor.device.type == "meta" or bool(torch.isfinite(tensor).all()):
        return None
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    counts = [f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n]
    return f"{' and '.join(counts)} of {tensor.numel()} values"


def _check_finite(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming the first parameter with NaN or infinite values (a diverged run, a bad
    export): such weights would load silently and every output would be NaN."""
    bad = [(name, found) for name, tensor in sd.items() if (found := _non_finite(tensor)) is not None]
    if bad:
        more = f" ({len(bad) - 1} more parameter(s) too)" if len(bad) > 1 else ""
        raise CheckpointError(f"{source}: parameter {bad[0][0]!r} holds non-finite values: {bad[0][1]}{more}")


def _model_summary(name: str, model: nn.Module) -> str:
    bits = [f"{k} {getattr(model, k)}" for k in ("width", "depth", "patch_size") if hasattr(model, k)]
    return f"model {name!r} ({', '.join(bits)})"


def _in_family_format(fam: Family, sd: Mapping[str, torch.Tensor]) -> CheckpointFormat | None:
    return next((fmt for fmt in _support(fam).formats if fmt.matches(sd)), None)


def load_resized_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a state_dict trained at another resolution (e.g. a 256-px model's into a 512-px model), strictly.

    Uses the model's family declarations: a state_dict in one of the family's formats is converted to
    dimbench's names first (e.g. official DiM names), the position embedding follows the model's grid
    (docs/models.md §6), every other tensor must match exactly. Returns ``model`` (modified in place).
    Raises CheckpointError naming the first mismatching parameter (or one with NaN / infinite values).
    """
    fam = _family_of(model)
    sd = dict(state_dict)
    fmt = _in_family_format(fam, sd)
    if fmt is not None:
        sd = _convert(fmt, sd, fam, "state_dict")
    what = _model_summary(getattr(model, "model_name", type(model).__name__), model)
    _check_fit(model, sd, "state_dict", what, resizable=True)
    sd = _adapt(fam, model, sd, "state_dict")
    _check_fit(model, sd, "state_dict", what)
    _check_finite(sd, "state_dict")
    model.load_state_dict(sd, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _build_kwargs(name: str, ckpt: Checkpoint, desc: dict[str, Any], input_size: int | None, overrides: dict):
    """Constructor keywords for ``name`` loaded from ``ckpt`` (before the family options)."""
    if ckpt.header is not None:
        if ckpt.header["model"] != name:
            raise CheckpointError(
                f"{ckpt.path}: holds dimbench model {ckpt.header['model']!r}, not {name!r} "
                f"(load it as {ckpt.header['model']!r}, or convert it again)"
            )
        kwargs = dict(ckpt.header["config"])
    else:
        settings = {**model_info(name).defaults, **overrides}
        kwargs = dict(_support(family(ckpt.family)).data_kwargs(desc, settings))
        kwargs["input_size"] = desc["input_size"]
    if input_size is not None:
        kwargs["input_size"] = int(input_size)
    kwargs.update(overrides)
    return kwargs


def _choose_options(fam: Family, given: dict, ckpt: Checkpoint, desc: dict, settings: dict) -> dict:
    """{option: (value, reason)}: the family's choice, else what was given explicitly."""
    saved = {k: v for k, v in (ckpt.header or {}).get("config", {}).items() if k in fam.options}
    hook = _support(fam).choose_options
    chosen = dict(hook(given, saved, desc, settings)) if hook is not None else {}
    for option, value in given.items():
        chosen.setdefault(option, (value, "given explicitly"))
    return chosen


def load_checkpoint(
    name: str,
    path: str | os.PathLike,
    *,
    input_size: int | None = None,
    format: str = "auto",
    options: Mapping[str, Any] | None = None,
    map_location: Any = "cpu",
    **overrides: Any,
) -> nn.Module:
    """Build registered model ``name`` and load the checkpoint at ``path`` into it, strictly; eval mode.

    ``input_size``: the model's input side (latent side for latent models); default = the checkpoint's own
    (token grid x patch, or the saved config's). When it differs from the checkpoint's, the position embedding
    follows (docs/models.md §6). ``format``: "auto" or one of :data:`FORMATS`. ``options``: family options
    (``Family.options``; also accepted as keywords), each one not given chosen by the family (DiM's pad layout:
    docs/models.md §4.3); one the model's family does not declare, or a value it does not take, is refused.
    ``map_location``: device of the returned model. ``overrides``: further constructor keywords (e.g.
    ``depth``, ``width`` for a non-registered size; input channels and classes are read from the checkpoint).

    The returned model carries ``checkpoint_info`` (path, format, architecture, note, and each family option
    with ``<option>_reason``). Raises :class:`CheckpointError` for an unreadable file, another family or
    architecture, missing/unexpected parameters, shape mismatches, integer or non-finite weights (naming the
    file and the first such parameter).
    """
    path = os.fspath(path)
    try:
        info = model_info(name)
    except KeyError as e:
        raise CheckpointError(_msg(e)) from None
    fam = family(info.family)
    _support(fam, repr(name))
    given = {k: v for k, v in (options or {}).items() if v is not None}
    # A keyword some family declares as an option is one (refused below when it is not this family's).
    given.update({k: overrides.pop(k) for k in list(overrides) if is_family_option(k)})
    for option, value in given.items():
        problem = option_problem(name, option, value)
        if problem:
            raise CheckpointError(problem)

    ckpt = read_checkpoint(path, format)
    if ckpt.family != fam.name:
        raise CheckpointError(
            f"{path}: holds a {family(ckpt.family).display} checkpoint ({ckpt.format}), but {name!r} is a "
            f"{fam.display} model"
        )
    desc = _describe(ckpt)
    kwargs = _build_kwargs(name, ckpt, desc, input_size, overrides)
    options = _choose_options(fam, given, ckpt, desc, {**info.defaults, **kwargs})
    kwargs.update({option: value for option, (value, _) in options.items()})

    try:
        with torch.device("meta"):  # shapes only: cheap even for DiM-H, so mismatches are found before any work
            skeleton = create_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build {name!r} with {kwargs}: {_msg(e)}") from e
    # Check before resizing (so a width mismatch is reported on its first parameter), resize, check again.
    what = f"{_model_summary(name, skeleton)}; the checkpoint holds {desc['architecture']} ({ckpt.format})"
    declared = _format_table().get(ckpt.format)
    if declared is not None and declared[1].convert is not None:
        what += "; names below are dimbench's, after conversion"
    _check_fit(skeleton, ckpt.state_dict, path, what, resizable=True)
    sd = _adapt(fam, skeleton, ckpt.state_dict, path)
    _check_fit(skeleton, sd, path, what)
    _check_finite(sd, path)

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
    model.checkpoint_info["options"] = {option: value for option, (value, _) in options.items()}
    for option, (value, reason) in options.items():
        model.checkpoint_info.update({option: value, f"{option}_reason": reason})
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Saving


def _model_config(model: nn.Module, fam: Family) -> dict[str, Any]:
    """The constructor keywords that rebuild ``model``: its ``config`` (every built-in family keeps one), else
    the attributes a registered model exposes plus its family's options."""
    if isinstance(getattr(model, "config", None), Mapping):
        return dict(model.config)
    keys = ("input_size", "in_channels", "num_classes", "patch_size", "depth", "width", *fam.options)
    return {k: getattr(model, k) for k in keys if hasattr(model, k)}


def save_checkpoint(model: nn.Module, path: str | os.PathLike | BinaryIO) -> None:
    """Write ``model`` in dimbench's format (see the module docstring) to a path or an open binary file.

    The model must come from :func:`models.create_model` (or :func:`load_checkpoint`), which sets ``model_name``.
    This is the serialisation only: ``dimbench checkpoint convert`` writes through
    :func:`dimbench.files.atomic_write` (``atomic_write(path, lambda f: save_checkpoint(model, f))``) so that a full
    disk or a crash never leaves half a file.
    """
    name = getattr(model, "model_name", None)
    if name is None:
        raise CheckpointError("cannot save: the model has no model_name (build it with models.create_model)")
    fam = _family_of(model)
    state = model.state_dict()
    on_meta = [k for k, v in state.items() if v.device.type == "meta"]
    if on_meta:
        raise CheckpointError(f"cannot save {name!r}: parameter {on_meta[0]!r} is on the meta device (no values)")
    payload = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "model": name,
        "family": fam.name,
        "config": _model_config(model, fam),
        "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in state.items()},
    }
    torch.save(payload, path)
