"""The latent decoder: Stable Diffusion's KL-f8 VAE through diffusers' AutoencoderKL, from a local folder only.

A diffusers-format folder (``config.json`` plus ``diffusion_pytorch_model.safetensors`` or ``.bin``), e.g. a
local copy of stabilityai/sd-vae-ft-ema or sd-vae-ft-mse (what DiT and U-ViT decode with; DiM uses the same
KL-f8 autoencoder). Latents are divided by the scale 0.18215 before decoding (dim.md §5). diffusers is the
optional extra ``vae`` (``pip install 'dimbench[vae]'``); pixel models need no decoder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from dimbench.errors import UserError

SCALE = 0.18215


def available() -> str | None:
    try:  # diffusers is an optional extra, imported only where the VAE is used
        from diffusers import AutoencoderKL  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return (f"diffusers does not import ({type(exc).__name__}: {exc}); install the optional extra: "
                "pip install 'dimbench[vae]'")
    return None


def check_folder(path: str | os.PathLike) -> None:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"VAE folder {p}: no such folder (expected a diffusers AutoencoderKL folder: config.json "
                        "and diffusion_pytorch_model.safetensors, e.g. a local copy of stabilityai/sd-vae-ft-ema)")
    if not (p / "config.json").is_file():
        raise UserError(f"VAE folder {p}: no config.json (expected a diffusers AutoencoderKL folder)")


def load_vae(path: str | os.PathLike, device: torch.device | str = "cpu"):
    reason = available()
    if reason:
        raise UserError(f"the VAE decoder is not available: {reason}")
    check_folder(path)
    from diffusers import AutoencoderKL  # optional: see available()

    try:
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - an unusable folder is the user's input
        raise UserError(f"VAE folder {path}: cannot load it with AutoencoderKL.from_pretrained(local_files_only="
                        f"True) ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return vae.to(device).eval()


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch: int = 8, autocast: torch.dtype | None = None) -> torch.Tensor:
    """Images in [-1, 1] (float32, on the CPU) from scaled latents: vae.decode(z / 0.18215), under autocast of
    ``autocast`` when given (U-ViT's and DiM's decode runs under torch.cuda.amp.autocast(): float16)."""
    device = next(vae.parameters()).device
    out = []
    for start in range(0, latents.shape[0], batch):
        z = latents[start:start + batch].to(device, next(vae.parameters()).dtype) / SCALE
        with torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext():
            images = vae.decode(z).sample
        out.append(images.float().clamp(-1, 1).cpu())
    return torch.cat(out)
