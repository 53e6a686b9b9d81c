"""Inception features of an image folder (reference images): listed and read the way dimbench.data reads
images (flat or class subfolders; center square crop, bicubic resize to the resolution asked), ``batch`` images
at a time, keeping only their features, never the images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dimbench.data import IMAGE_SUFFIXES, DataError, read_image_uint8
from dimbench.errors import UserError
from dimbench.fid.inception import extract
from dimbench.fid.patches import random_crops


def image_files(folder: str | Path) -> list[Path]:
    """The image files of a folder, flat or in class subfolders at any depth (hidden names skipped), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{folder}: " + ("not a folder" if root.exists() else "no such folder") +
                        " (expected a folder of images, flat or in class subfolders)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if len(files) < 2:
        raise UserError(f"{folder}: statistics need at least 2 images ({'/'.join(IMAGE_SUFFIXES)}), found "
                        f"{len(files)}")
    return files


def folder_features(files: list[Path], resolution: int, extractor, *, resize: str, batch: int = 100,
                    crops: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(pool3 of every image at ``resolution`` px, pool3 of ``crops`` random 299-px crops of each (file k's
    crops seeded by (seed, k)), or None when crops is 0). A file that cannot be read is a UserError naming it."""
    pools, patch_pools = [], []
    for start in range(0, len(files), batch):
        try:
            pixels = np.stack([read_image_uint8(f, resolution, 3) for f in files[start:start + batch]])
        except DataError as exc:
            raise UserError(str(exc)) from None
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        pools.append(extract(extractor, images, batch=batch, resize=resize)[0])
        if crops:
            picked = random_crops(images, seed, range(start, start + len(images)), crops)
            patch_pools.append(extract(extractor, picked, batch=batch, resize=resize)[0])
    return np.concatenate(pools), (np.concatenate(patch_pools) if crops else None)
