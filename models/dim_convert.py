"""Official DiM parameter names <-> dimbench names (the full table: docs/models.md §5.2).

The official release's ``nnet_ema.pth`` files are flat state_dicts with diffusers-style names. Every tensor maps
one-to-one onto :class:`models.dim.DiM`; only two change layout:

    a4m_adapter.pad_token            (1, d, 3)  <->  pad_tokens (3, d)   (p0, p1, p2 as rows)
    a4m_adapter.pad_token_dec_split  (1, 3, d)  <->  q_tokens   (3, d)

The pad layout (lateral / cyclic) is not stored in a checkpoint; it follows the configuration the weights are
used in (the 512-px fine-tune runs "cyclic").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

__all__ = ["official_to_dimbench", "dimbench_to_official", "is_official_dim", "infer_dim_config"]

# Top-level names: official -> dimbench.
_TOP = {
    "pos_embed.proj.weight": "patch_embed.weight",  # diffusers calls the patch embedding "pos_embed"
    "pos_embed.proj.bias": "patch_embed.bias",
    "additional_embed": "pos_embed",  # the actual position embedding over [time, class, grid]
    "label_emb.weight": "y_token.weight",
    "adaln_single.emb.timestep_embedder.linear_1.weight": "t_mlp.0.weight",
    "adaln_single.emb.timestep_embedder.linear_1.bias": "t_mlp.0.bias",
    "adaln_single.emb.timestep_embedder.linear_2.weight": "t_mlp.2.weight",
    "adaln_single.emb.timestep_embedder.linear_2.bias": "t_mlp.2.bias",
    "adaln_single.emb.class_embedder.embedding_table.weight": "y_mod.weight",
    "adaln_single.linear.weight": "adaln.weight",
    "adaln_single.linear.bias": "adaln.bias",
    "a4m_adapter.pad_token_dec_split": "q_tokens",
    "a4m_adapter.pad_token": "pad_tokens",
    "a4m_adapter.first_smoother.weight": "smooth_in.weight",
    "a4m_adapter.first_smoother.bias": "smooth_in.bias",
    "a4m_adapter.last_smoother.weight": "smooth_out.weight",
    "a4m_adapter.last_smoother.bias": "smooth_out.bias",
    "norm_out.norm.weight": "final_norm.weight",
    "proj_out_1.weight": "final_mod.weight",
    "proj_out_1.bias": "final_mod.bias",
    "proj_out_2.weight": "final_proj.weight",
    "proj_out_2.bias": "final_proj.bias",
}

_MAMBA = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
          "out_proj.weight", "A_log", "D")

# Per-block names (after "transformer_blocks.N." / "blocks.N."): official -> dimbench.
_BLOCK = {
    "scale_shift_table": "mod_table",
    "norm1.norm.weight": "norm.weight",
    **{f"attn1.{n}": f"mixer.{n}" for n in _MAMBA},
    "skip_linear.weight": "skip.proj.weight",  # d <= 512: Linear on concat[hidden, skip]
    "skip_linear.bias": "skip.proj.bias",
    "skip_linear.0.weight": "skip.from_hidden.weight",  # d > 512: .0 on the hidden state, .1 on the skip
    "skip_linear.0.bias": "skip.from_hidden.bias",
    "skip_linear.1.weight": "skip.from_skip.weight",
    "skip_linear.1.bias": "skip.from_skip.bias",
}

_TOP_BACK = {v: k for k, v in _TOP.items()}
_BLOCK_BACK = {v: k for k, v in _BLOCK.items()}
_OFFICIAL_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.(.+)")
_DIMBENCH_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def _check_flat(state_dict: Mapping) -> None:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state_dict (mapping of names to tensors), got {type(state_dict).__name__}")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(
            f"expected a flat state_dict of tensors; these entries are not tensors: {', '.join(map(str, bad[:5]))}"
            + (" ..." if len(bad) > 5 else "")
            + " (a training checkpoint? pass the model weights, e.g. ckpt['state_dict'])"
        )


def _listing(names: list[str], limit: int = 8) -> str:
    """'a, b, c ... (12 in all)' for error messages."""
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _rename(state_dict: Mapping, top: dict[str, str], block: dict[str, str], block_re: re.Pattern, prefix: str,
            naming: str) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for name, value in state_dict.items():
        if name in top:
            out[top[name]] = value
            continue
        m = block_re.fullmatch(name)
        if m and m.group(2) in block:
            out[f"{prefix}.{m.group(1)}.{block[m.group(2)]}"] = value
        else:
            unknown.append(name)
    if unknown:
        raise KeyError(f"unexpected parameter names for {naming} DiM naming: {_listing(sorted(unknown))}")
    return out


def _official_block_names(depth: int, width: int, block: int) -> list[str]:
    """Official per-block names (after 'transformer_blocks.N.') of block ``block``."""
    names = ["scale_shift_table", "norm1.norm.weight", *(f"attn1.{n}" for n in _MAMBA)]
    if block >= (depth + 1) // 2:  # skip consumers
        if width > 512:
            names += ["skip_linear.0.weight", "skip_linear.0.bias", "skip_linear.1.weight", "skip_linear.1.bias"]
        else:
            names += ["skip_linear.weight", "skip_linear.bias"]
    return names


def _check_complete(names: set[str], config: dict, naming: str) -> None:
    """Raise KeyError naming what is missing or unexpected for the configuration's architecture."""
    depth, width = config["depth"], config["width"]
    if naming == "official":
        expected = set(_TOP) | {
            f"transformer_blocks.{l}.{n}" for l in range(depth) for n in _official_block_names(depth, width, l)
        }
    else:
        expected = set(_TOP.values()) | {
            f"blocks.{l}.{_BLOCK[n]}" for l in range(depth) for n in _official_block_names(depth, width, l)
        }
    missing, extra = sorted(expected - names), sorted(names - expected)
    if missing or extra:
        msg = f"{naming} DiM state_dict (width {width}, depth {depth}) does not match the architecture:"
        if missing:
            msg += f" missing {_listing(missing)}"
        if extra:
            msg += f"; unexpected {_listing(extra)}"
        raise KeyError(msg)


def is_official_dim(state_dict: Mapping) -> bool:
    """True if ``state_dict`` uses the official DiM naming (adapter pad tokens plus Mamba blocks)."""
    if not isinstance(state_dict, Mapping):
        return False
    return "a4m_adapter.pad_token" in state_dict and any(
        isinstance(k, str) and k.startswith("transformer_blocks.") and k.endswith(".attn1.A_log") for k in state_dict
    )


def _shape(state_dict: Mapping, name: str) -> tuple[int, ...]:
    if name not in state_dict:
        raise KeyError(f"DiM state_dict has no {name!r}, needed to infer the configuration")
    return tuple(state_dict[name].shape)


def infer_dim_config(state_dict: Mapping) -> dict[str, int]:
    """Configuration of a DiM state_dict in either naming.

    Returns dict(width, depth, patch_size, in_channels, num_classes, grid): num_classes counts real classes (table
    rows - 1, the last row is the null class); grid is the side of the square token grid the position embedding
    was trained on (input_size = grid · patch_size). Raises KeyError/ValueError naming what does not fit.
    """
    _check_flat(state_dict)
    if is_official_dim(state_dict):
        names = dict(patch="pos_embed.proj.weight", pos="additional_embed", table="label_emb.weight",
                     block=_OFFICIAL_BLOCK, a_log="attn1.A_log", conv="attn1.conv1d.weight")
    elif "patch_embed.weight" in state_dict and "pos_embed" in state_dict:
        names = dict(patch="patch_embed.weight", pos="pos_embed", table="y_token.weight",
                     block=_DIMBENCH_BLOCK, a_log="mixer.A_log", conv="mixer.conv1d.weight")
    else:
        raise KeyError(
            "not a DiM state_dict: expected official names ('a4m_adapter.pad_token', 'transformer_blocks.N.attn1.*')"
            " or dimbench names ('patch_embed.weight', 'pos_embed', 'blocks.N.mixer.*')"
        )
    width, in_channels, patch, patch_w = _shape(state_dict, names["patch"])
    if patch != patch_w:
        raise ValueError(f"{names['patch']!r} has a non-square patch {patch}x{patch_w}")
    pos = _shape(state_dict, names["pos"])
    grid = math.isqrt(pos[1] - 2) if len(pos) == 3 and pos[1] > 2 else -1
    if len(pos) != 3 or pos[0] != 1 or pos[2] != width or grid * grid != pos[1] - 2:
        raise ValueError(f"{names['pos']!r} has shape {pos}; expected (1, 2 + g*g, {width})")
    indices = sorted({int(m.group(1)) for k in state_dict if (m := names["block"].fullmatch(k))})
    if not indices or indices != list(range(len(indices))):
        raise KeyError(f"DiM blocks must be numbered 0..N-1 without gaps; found {indices[:10]}")
    depth = len(indices)
    if depth % 2 == 0:
        raise ValueError(f"DiM has an odd number of blocks; this state_dict has {depth}")
    prefix = "transformer_blocks.0." if names["block"] is _OFFICIAL_BLOCK else "blocks.0."
    d_state = _shape(state_dict, prefix + names["a_log"])[-1]
    d_conv = _shape(state_dict, prefix + names["conv"])[-1]
    if (d_state, d_conv) != (16, 3):
        raise ValueError(f"DiM uses d_state 16 and d_conv 3; this state_dict has d_state {d_state}, d_conv {d_conv}")
    return dict(
        width=width,
        depth=depth,
        patch_size=patch,
        in_channels=in_channels,
        num_classes=_shape(state_dict, names["table"])[0] - 1,
        grid=grid,
    )


def official_to_dimbench(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """Official DiM names -> dimbench names (new dict; tensors shared except the two re-laid-out token tables)."""
    _check_flat(state_dict)
    config = infer_dim_config(state_dict)
    _check_complete(set(state_dict), config, "official")
    out = _rename(state_dict, _TOP, _BLOCK, _OFFICIAL_BLOCK, "blocks", "official")
    d = config["width"]
    pads, q = out["pad_tokens"], out["q_tokens"]
    if tuple(pads.shape) != (1, d, 3) or tuple(q.shape) != (1, 3, d):
        raise ValueError(
            f"'a4m_adapter.pad_token' must be (1, {d}, 3) and 'a4m_adapter.pad_token_dec_split' (1, 3, {d}); "
            f"got {tuple(pads.shape)} and {tuple(q.shape)}"
        )
    out["pad_tokens"] = pads[0].t().contiguous()  # (3, d): rows p0, p1, p2
    out["q_tokens"] = q[0]
    return out


def dimbench_to_official(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """dimbench DiM names -> official names (the inverse of :func:`official_to_dimbench`)."""
    _check_flat(state_dict)
    config = infer_dim_config(state_dict)
    _check_complete(set(state_dict), config, "dimbench")
    out = _rename(state_dict, _TOP_BACK, _BLOCK_BACK, _DIMBENCH_BLOCK, "transformer_blocks", "dimbench")
    d = config["width"]
    pads, q = out["a4m_adapter.pad_token"], out["a4m_adapter.pad_token_dec_split"]
    if tuple(pads.shape) != (3, d) or tuple(q.shape) != (3, d):
        raise ValueError(f"'pad_tokens' and 'q_tokens' must be (3, {d}); got {tuple(pads.shape)}, {tuple(q.shape)}")
    out["a4m_adapter.pad_token"] = pads.t().unsqueeze(0).contiguous()  # (1, d, 3)
    out["a4m_adapter.pad_token_dec_split"] = q.unsqueeze(0)
    return out
