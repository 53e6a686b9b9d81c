"""Reference statistics for FID: the ADM evaluator's batches, U-ViT's ``fid_stats_*.npz``, dimbench's own.

- ADM (guided-diffusion's evaluations, e.g. ``VIRTUAL_imagenet256_labeled.npz``): ``arr_0`` the reference images
  (n, H, W, 3) uint8, plus ``mu``, ``sigma`` (pool3 statistics) and ``mu_s``, ``sigma_s`` (spatial features,
  sFID; not used here). ``mu``/``sigma`` are used when present; else they are computed from ``arr_0``.
- U-ViT (``fid_stats_imagenet256_guided_diffusion.npz``, ...): ``mu``, ``sigma``.
- ``dimbench fid-stats``: ``mu``, ``sigma``, ``count``, ``weights_sha256``, ``source`` and ``inception_resize``
  (tf1 or torch: the preprocessing the statistics were made with; files written before it was recorded lack it).

Files are read with ``numpy.load(allow_pickle=False)``; a missing or unreadable file or a missing key is a
UserError naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path

import numpy as np

from dimbench.errors import UserError
from dimbench.files import atomic_write
from dimbench.quality.frechet import frechet_distance


@dataclasses.dataclass
class Reference:
    path: str
    layout: str  # "adm", "uvit" or "dimbench": which keys it holds
    mu: np.ndarray | None
    sigma: np.ndarray | None
    images: np.ndarray | None  # (n, H, W, 3) uint8 (ADM's arr_0), or None
    count: int | None
    inception_resize: str | None = None  # recorded by `dimbench fid-stats`; None: the file does not say

    def describe(self) -> str:
        held = "mu/sigma" if self.mu is not None else "no statistics"
        if self.images is not None:
            held += f" and {len(self.images)} reference images {self.images.shape[1]}x{self.images.shape[2]}"
        return f"{self.path} ({self.layout} layout: {held})"


def read_reference(path: str | os.PathLike) -> Reference:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"reference statistics {p}: no such file (expected an ADM reference batch .npz, U-ViT's "
                        "fid_stats_*.npz or one written by `dimbench fid-stats`)")
    try:
        data = np.load(p, allow_pickle=False)
        keys = set(data.files)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is the user's input
        raise UserError(f"reference statistics {p}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    try:
        mu = sigma = images = None
        if "mu" in keys or "sigma" in keys:
            for k in ("mu", "sigma"):
                if k not in keys:
                    raise UserError(f"reference statistics {p}: has key '{'sigma' if k == 'mu' else 'mu'}' but no "
                                    f"key '{k}' (keys: {', '.join(sorted(keys))})")
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
            if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
                raise UserError(f"reference statistics {p}: key 'mu' must be (F,) and 'sigma' (F, F), got "
                                f"{mu.shape} and {sigma.shape}")
            for k, values in (("mu", mu), ("sigma", sigma)):
                if not np.isfinite(values).all():
                    raise UserError(f"reference statistics {p}: key '{k}' {_NOT_FINITE}")
        if "arr_0" in keys:
            images = data["arr_0"]
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise UserError(f"reference statistics {p}: key 'arr_0' must hold uint8 images (n, H, W, 3), got "
                                f"{images.dtype} {images.shape}")
        if mu is None and images is None:
            raise UserError(f"reference statistics {p}: no key 'mu'/'sigma' (U-ViT, dimbench) and no key 'arr_0' "
                            f"(ADM reference images); keys: {', '.join(sorted(keys)) or 'none'}")
        layout = "adm" if images is not None else ("dimbench" if "weights_sha256" in keys else "uvit")
        count = int(data["count"]) if "count" in keys else (len(images) if images is not None else None)
        resize = str(data["inception_resize"]) if "inception_resize" in keys else None
    except (ValueError, OSError) as exc:  # a truncated member, a pickled object array refused
        raise UserError(f"reference statistics {p}: unreadable ({type(exc).__name__}: {exc})") from None
    return Reference(str(p), layout, mu, sigma, images, count, resize)


#: The length of the Inception pool3 feature vector a reference's mu/sigma must describe.
FEATURES = 2048
_NOT_FINITE = "holds NaN or infinite values (Inception pool3 statistics are finite numbers): a damaged file"


def _member_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the array ``key`` of an .npz from its .npy header only: the data are not read."""
    fmt = np.lib.format
    with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)


def check_reference_file(path: str | os.PathLike) -> str | None:
    """What makes ``path`` unusable as FID reference statistics, or None: an .npz (read with
    ``allow_pickle=False``) holding ``mu`` (2048,) and ``sigma`` (2048, 2048), or, without them, ADM's ``arr_0``
    images (n, H, W, 3) uint8. ``arr_0`` is checked from its header only (ADM's batches hold 10,000 images)."""
    p = Path(path)
    where = f"reference statistics {p}"
    if not p.is_file():
        return f"{where}: no such file"
    if not zipfile.is_zipfile(p):
        return (f"{where}: not an .npz archive (expected an ADM reference batch, U-ViT's fid_stats_*.npz or one "
                "written by `dimbench fid-stats`)")
    try:
        with np.load(p, allow_pickle=False) as data:
            keys = set(data.files)
            listing = ", ".join(sorted(keys)) or "none"
            if "mu" in keys or "sigma" in keys:
                for k in ("mu", "sigma"):
                    if k not in keys:
                        return f"{where}: has key '{'sigma' if k == 'mu' else 'mu'}' but no key '{k}' (keys: {listing})"
                for k, want in (("mu", (FEATURES,)), ("sigma", (FEATURES, FEATURES))):
                    shape, dtype = _member_header(p, k)
                    if shape != want or dtype.kind not in "fiu":
                        return (f"{where}: key '{k}' must be a {want} array of numbers (Inception pool3 "
                                f"statistics), got {dtype} {shape}")
                    # read it: a truncated or damaged member, or values that are not finite numbers, are found
                    # here (when the suite is validated, before any image is sampled), not after sampling
                    if not np.isfinite(data[k]).all():
                        return f"{where}: key '{k}' {_NOT_FINITE}"
                return None
            if "arr_0" in keys:
                shape, dtype = _member_header(p, "arr_0")
                if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or shape[0] < 2:
                    return (f"{where}: key 'arr_0' (ADM reference images, used since the file has no 'mu'/'sigma') "
                            f"must hold at least 2 uint8 images (n, H, W, 3), got {dtype} {shape}")
                return None
            return (f"{where}: no keys 'mu'/'sigma' (U-ViT, dimbench) and no key 'arr_0' (ADM reference images); "
                    f"keys: {listing}")
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return f"{where}: unreadable ({type(exc).__name__}: {exc})"


def write_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, count: int, weights_sha256: str,
                source: str, inception_resize: str) -> None:
    """mu, sigma, count, weights_sha256, source and inception_resize as an .npz (atomically:
    :func:`dimbench.files.atomic_write`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, lambda f: np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
                                       count=np.int64(count), weights_sha256=np.str_(weights_sha256),
                                       source=np.str_(source), inception_resize=np.str_(inception_resize)))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How far two reference statistics files are apart."""

    frechet_distance: float
    mu_identical: bool
    sigma_identical: bool
    mu_max_abs_diff: float
    sigma_max_abs_diff: float


def compare(a: Reference, b: Reference) -> Comparison:
    """The Fréchet distance between two files' Gaussians (dimbench's one Fréchet distance) and whether their mu
    and sigma are bit-identical. Both need mu/sigma of the same length (UserError naming the file otherwise)."""
    for ref in (a, b):
        if ref.mu is None:
            raise UserError(f"reference statistics {ref.path}: holds images only (key 'arr_0', no 'mu'/'sigma'); "
                            "--compare reads statistics: make them with `dimbench fid-stats`")
    if a.mu.shape != b.mu.shape:
        raise UserError(f"reference statistics {b.path}: key 'mu' has {b.mu.shape[0]} features, {a.path} has "
                        f"{a.mu.shape[0]}: they cannot be compared")
    same_mu, same_sigma = bool(np.array_equal(a.mu, b.mu)), bool(np.array_equal(a.sigma, b.sigma))
    # Identical Gaussians are at distance 0 exactly (the matrix square root would leave ~1e-13 of rounding).
    distance = 0.0 if same_mu and same_sigma else frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    return Comparison(distance, same_mu, same_sigma, float(np.abs(a.mu - b.mu).max()),
                      float(np.abs(a.sigma - b.sigma).max()))
