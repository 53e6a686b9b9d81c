"""Patch-FID: random 299-px crops of an image at its native resolution, the Inception network's own input size,
so a 1024 or 1536 px image is judged on its detail rather than on a 299 px thumbnail of it.

Image i's crop offsets come from a generator seeded by (seed, i, 3) (:func:`dimbench.fid.seeds.image_seed`):
the same crops whichever run, rank or chunk scores the image. A crop is exactly 299 px, so neither Inception resize
changes it (both are the identity at 299 px); only their normalisations differ.
"""

from __future__ import annotations

import numpy as np
import torch

from dimbench.fid.seeds import image_seed

CROP = 299


def crop_offsets(seed: int, index: int, height: int, width: int, k: int) -> list[tuple[int, int]]:
    """k (top, left) offsets of 299-px crops of image ``index`` (height x width, both >= 299), uniform."""
    if min(height, width) < CROP:
        raise ValueError(f"a {height}x{width} image has no {CROP}-px crop")
    rng = np.random.default_rng(image_seed(seed, index, 3))
    tops = rng.integers(0, height - CROP + 1, size=k)
    lefts = rng.integers(0, width - CROP + 1, size=k)
    return [(int(t), int(left)) for t, left in zip(tops, lefts, strict=True)]


def random_crops(pixels: torch.Tensor, seed: int, indices, k: int) -> torch.Tensor:
    """(n·k, C, 299, 299): k random crops of each image of ``pixels`` (n, C, H, W), image j being ``indices[j]``."""
    h, w = pixels.shape[-2:]
    out = [pixels[j, :, top:top + CROP, left:left + CROP]
           for j, index in enumerate(indices) for top, left in crop_offsets(seed, int(index), h, w, k)]
    return torch.stack(out)
