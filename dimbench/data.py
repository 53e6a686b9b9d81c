"""Training and evaluation data in a model's input space: scikit-learn's bundled digits, a folder of images, or
pre-extracted VAE latents.

Every loader returns a :class:`Dataset`: ``x`` float32 (n, C, H, W) with H == W, images in [-1, 1] (the range
the diffusion models are trained on) or latents / VAE posterior moments; ``labels`` long (n,) in
0..num_classes-1, or None for unlabelled data. Nothing here downloads anything, and files a user hands in are
read without unpickling (``np.load(..., allow_pickle=False)``): a file that needs pickle is refused with a
message saying how to convert it. Every problem with the user's data is a :class:`DataError` (a UserError: one
line, exit status 2) naming the file and what was expected.

``load_data(spec, resolution)`` picks the loader from the spec: "digits", a folder of images, or latents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dimbench.errors import DataError
from models.registry import SD_VAE_FACTOR

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LATENT_SUFFIXES = (".npy", ".npz")
#: Stable Diffusion's VAE latent scale factor (DiT, U-ViT and DiM multiply sampled latents by it).
SD_LATENT_SCALE = 0.18215
DIGITS_SPEC = "digits"
ACCEPTED = ("'digits' (scikit-learn's bundled 8x8 digits), a folder of images (PNG/JPEG/BMP/WEBP, flat or in class "
            "subfolders), or latents (.npy, .npz, or a folder of .npy files)")

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # .npz files are zip archives


@dataclass
class Dataset:
    """Training/evaluation data in the model's input space.

    ``x``: float32 (n, C, H, W), H == W: images in [-1, 1], latents, or (``moments``) VAE posterior moments
    [mean | logvar] with 2C channels. ``labels``: long (n,) in 0..num_classes-1, or None (``num_classes`` 0).
    ``scale`` multiplies the latent a batch returns (Stable Diffusion's 0.18215 for its VAE latents; 1 for images).
    ``source`` says what the data is, for method strings.
    """

    source: str
    x: Tensor
    labels: Tensor | None
    num_classes: int
    moments: bool = False
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.shape[2] != self.x.shape[3]:
            raise ValueError(f"Dataset x must be (n, C, H, W) with H == W, got {tuple(self.x.shape)}")
        if self.moments and self.x.shape[1] % 2:
            raise ValueError(f"moments need an even number of channels [mean | logvar], got {self.x.shape[1]}")
        if self.labels is not None and self.labels.shape != (self.x.shape[0],):
            raise ValueError(f"labels must be ({self.x.shape[0]},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def channels(self) -> int:
        """The model's input channels: C (half of x's channels when x holds moments)."""
        return int(self.x.shape[1]) // 2 if self.moments else int(self.x.shape[1])

    @property
    def resolution(self) -> int:
        """H (== W) of x: pixels for images, the latent grid for latents."""
        return int(self.x.shape[2])

    @property
    def latent(self) -> bool:
        """Whether x holds VAE latents (or their posterior moments) rather than images."""
        return self.moments or self.scale != 1.0

    @property
    def pixels(self) -> int:
        """The image side the data stands for: a latent cell stands for SD_VAE_FACTOR pixels (8, KL-f8)."""
        return self.resolution * (SD_VAE_FACTOR if self.latent else 1)

    def batch(self, index: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        """(x, labels) for the given indices.

        Images and latents as stored (latents times ``scale``); for moments a fresh posterior sample
        ``(mean + exp(logvar / 2) * eps) * scale`` with eps ~ N(0, 1) drawn from ``generator``, as DiM's and
        U-ViT's training draw one each step. Shapes (b, channels, H, W) float32 and (b,) long or None.
        """
        x = self.x[index]
        labels = self.labels[index] if self.labels is not None else None
        if self.moments:
            mean, logvar = x.chunk(2, dim=1)
            # The VAE (diffusers' DiagonalGaussianDistribution) clamps logvar to [-30, 20] before exp.
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            x = mean + std * eps
        if self.scale != 1.0:
            x = x * self.scale
        return x, labels


# ------------------------------------------------------------------------------------------------- digits
def load_digits(resolution: int, split: str = "train", *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled digits (1797 grey 8x8 images, values 0..16, 10 classes), no download.

    ``split``: "train" | "test" | "all", from one fixed stratified split by ``seed`` (scikit-learn's
    train_test_split: 1437 train / 360 test at the default 0.2). The split is made on the 8x8 originals, so it is
    the same at every resolution and the test images are never trained on. Images are resized to
    ``resolution`` x ``resolution`` (bilinear; antialiased when shrinking) and mapped to [-1, 1]:
    x float32 (n, 1, resolution, resolution), labels long (n,) in 0..9, in the dataset's original order.
    """
    # scikit-learn takes a second to import and only the digits need it
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise DataError(f"digits: split must be 'train', 'test' or 'all', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"digits: test_fraction must be between 0 and 1, got {test_fraction}")
    _check_resolution(resolution, DIGITS_SPEC)
    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), 0..16
    target = np.asarray(bunch.target, dtype=np.int64)
    if split == "all":
        index = np.arange(len(target))
    else:
        train, test = train_test_split(np.arange(len(target)), test_size=test_fraction, stratify=target,
                                       random_state=seed)
        index = np.sort(train if split == "train" else test)
    _check_fits(len(index), 1, resolution, DIGITS_SPEC)
    x = torch.from_numpy(images[index]).unsqueeze(1) / 8.0 - 1.0
    x = resize(x, resolution)
    split_text = "all" if split == "all" else f"{split} split"
    if split != "all" and (seed != 0 or test_fraction != 0.2):
        split_text += f" (test fraction {test_fraction:g}, seed {seed})"
    source = (f"scikit-learn load_digits ({split_text}, {len(index)} images), {resolution}x{resolution} px, "
              f"1 channel, [-1, 1]")
    return Dataset(source, x.contiguous(), torch.from_numpy(target[index]), 10)


def resize(x: Tensor, resolution: int) -> Tensor:
    """(n, C, h, w) -> (n, C, resolution, resolution), bilinear, antialiased when shrinking (so a downscaled image
    averages its pixels instead of aliasing); clamped to the input's range, since resampling must not widen it."""
    if x.shape[-2:] == (resolution, resolution):
        return x
    shrinking = resolution < max(x.shape[-2:])
    out = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrinking)
    return out.clamp(x.min(), x.max())


# ------------------------------------------------------------------------------------------- image folders
def load_image_folder(path, resolution: int, *, channels: int = 3) -> Dataset:
    """A folder of images: class subfolders (labels = index in the sorted folder names; images found at any depth
    inside each) or a flat folder (labels None). PNG/JPEG/BMP/WEBP read with PIL, converted to RGB (channels 3)
    or grey (channels 1), center-cropped to a square and resized to ``resolution`` (bicubic, antialiased by PIL
    when shrinking). x float32 (n, channels, resolution, resolution) in [-1, 1], held in memory.

    DataError for a missing path, an empty folder, a folder without images, an empty class folder, images and
    class folders mixed at the top, or an unreadable image (naming the file).
    """
    path = Path(path)
    if channels not in (1, 3):
        raise DataError(f"{path}: channels must be 1 (grey) or 3 (RGB), got {channels}")
    _check_resolution(resolution, str(path))
    if not path.exists():
        raise DataError(f"{path}: no such folder (expected a folder of images)")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder (expected a folder of images, flat or in class subfolders)")
    entries = _visible(path.iterdir())
    if not entries:
        raise DataError(f"{path}: empty folder (expected images, flat or in class subfolders)")
    class_dirs = sorted((p for p in entries if p.is_dir()), key=lambda p: p.name)
    loose = sorted(p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if class_dirs and loose:
        raise DataError(f"{path}: holds both images (e.g. {loose[0].name}) and subfolders (e.g. "
                        f"{class_dirs[0].name}); put every image in a class subfolder, or use a flat folder")
    files: list[Path] = []
    labels: list[int] = []
    if class_dirs:
        for label, folder in enumerate(class_dirs):
            found = sorted(p for p in _visible(folder.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{folder}: class folder without images (expected {_suffix_text()} files)")
            files += found
            labels += [label] * len(found)
    else:
        files = loose
    if not files:
        raise DataError(f"{path}: no images (expected {_suffix_text()} files, flat or in class subfolders)")
    _check_fits(len(files), channels, resolution, str(path), copies=1)
    # Each image in [-1, 1] at its own bit depth (v / (full / 2) - 1: exactly u / 127.5 - 1 for 8 bits), written
    # into one preallocated array: the images are never held twice.
    pixels = np.empty((len(files), resolution, resolution, channels), dtype=np.float32)
    for i, f in enumerate(files):
        image, full = read_image(f, resolution, channels)
        pixels[i] = (image / np.float32(full / 2) - np.float32(1)).reshape(resolution, resolution, channels)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    kind = f"{len(class_dirs)} classes" if class_dirs else "unlabelled"
    source = (f"image folder {path} ({len(files)} images, {kind}), center crop + bicubic resize to "
              f"{resolution}x{resolution} px, {channels} channel{'s' if channels > 1 else ''}, [-1, 1]")
    y = torch.tensor(labels, dtype=torch.long) if class_dirs else None
    return Dataset(source, x.contiguous(), y, len(class_dirs))


#: PIL modes of one 16-bit channel (PNG grey at bit depth 16); PIL reads 16-bit RGB PNGs as 8-bit RGB (the high
#: byte of each sample: the same picture at 8 bits), and 8-bit modes as they are.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def read_image(file: Path, resolution: int, channels: int) -> tuple[np.ndarray, int]:
    """One image file -> (pixels (resolution, resolution[, 3]), full scale): center square crop, then bicubic
    resize, at the file's own bit depth. 8-bit images: uint8, full scale 255. 16-bit grey PNGs: float32 in
    [0, 65535], full scale 65535, so that ``pixels / full`` is the same picture whatever the depth (scaled by the
    format's maximum, not the image's own: a dark image stays dark). What cannot be read faithfully (32-bit
    integer or float images) is refused: DataError naming the file."""

    try:
        with Image.open(file) as img:
            full = 255
            if img.mode in SIXTEEN_BIT_MODES or (img.mode == "I" and img.format == "PNG"):
                img, full = img.convert("F"), 65535  # exact for 16-bit values; resized in float
            elif img.mode in ("I", "F"):
                raise DataError(f"{file}: a {img.mode} ({'32-bit integer' if img.mode == 'I' else 'float'}) image "
                                "cannot be read faithfully; save it as an 8- or 16-bit PNG")
            else:
                img = img.convert("RGB" if channels == 3 else "L")
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            if side != resolution:
                img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
            if full == 255:
                return np.asarray(img, dtype=np.uint8), full
            grey = np.clip(np.asarray(img, dtype=np.float32), 0, full)  # bicubic overshoots at edges
            return (np.repeat(grey[..., None], 3, axis=-1) if channels == 3 else grey), full
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file makes PIL raise OSError, SyntaxError, ValueError, ...
        raise DataError(f"{file}: cannot be read as an image ({type(e).__name__}: {e})") from None


def read_image_uint8(file: Path, resolution: int, channels: int) -> np.ndarray:
    """:func:`read_image` as uint8 (what FID's Inception network takes): a 16-bit image rounded to 8 bits."""
    pixels, full = read_image(file, resolution, channels)
    if full == 255:
        return pixels
    return np.round(pixels * np.float32(255 / full)).astype(np.uint8)


def available_memory() -> int | None:
    """Bytes of memory a new allocation may take (Linux: MemAvailable of /proc/meminfo); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_fits(count: int, channels: int, resolution: int, where: str, copies: int = 2) -> None:
    """Refuse, before allocating, data that cannot fit in memory: ``copies`` float32 tensors of ``count`` images
    (channels x resolution x resolution; digits are resized, then clamped: two), against the memory available
    now."""
    need = copies * count * channels * resolution * resolution * 4
    available = available_memory()
    if available is not None and need > available:
        raise DataError(f"{where}: {count} images at {resolution}x{resolution} px need about {_gib(need)} of memory "
                        f"(float32{', with a working copy' if copies > 1 else ''}), more than the {_gib(available)} "
                        "available now: lower the resolution")


def _gib(n: int) -> str:
    return f"{n / 2**40:,.1f} TiB" if n >= 2**40 else f"{n / 2**30:,.1f} GiB"


def _visible(paths) -> list[Path]:
    """Paths whose own name is not hidden (.DS_Store, .ipynb_checkpoints)."""
    return [p for p in paths if not p.name.startswith(".")]


def _suffix_text() -> str:
    return "/".join(s[1:].upper() for s in IMAGE_SUFFIXES)


# ------------------------------------------------------------------------------------------------- latents
def load_latents(path, *, moments: bool | None = None, scale: float = SD_LATENT_SCALE) -> Dataset:
    """Pre-extracted VAE latents or posterior moments.

    Accepted: a .npz with the array under "latents", "moments" or "arr_0" and optional labels under "labels" or
    "y"; a single .npy array (n, C, h, w); or a folder of per-image .npy files, each (C, h, w), in numeric order
    of their names when all are integers (U-ViT's 0.npy, 1.npy, ...) and name order otherwise, with optional
    labels (n,) in labels.npy in that order. Moments [mean | logvar] are recognised by the "moments" key, or
    declared with ``moments=True`` (``moments=False`` reads any array as latents). ``scale`` multiplies each
    latent a batch returns: 0.18215 (Stable Diffusion's VAE) by default; latents saved already scaled (fast-DiT's
    extraction multiplies by 0.18215 before saving) need ``scale=1``.

    Files that need pickle (U-ViT's extraction saves each image as a pickled (moments, label) tuple) are refused
    with a DataError saying how to convert them.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (expected latents: .npy, .npz, or a folder of .npy files)")
    labels = None
    if path.is_dir():
        arrays, labels = _latent_folder(path)
        array = np.stack(arrays)
        found_moments = False
    elif path.suffix.lower() == ".npz":
        array, labels, found_moments = _latent_npz(path)
    elif path.suffix.lower() == ".npy":
        array = _load_npy(path)
        found_moments = False
    else:
        raise DataError(f"{path}: not a latent file (expected .npy, .npz, or a folder of .npy files)")
    is_moments = found_moments if moments is None else bool(moments)
    x = _check_latents(array, path, is_moments)
    y, num_classes = _check_labels(labels, len(x), path)
    kind = "VAE posterior moments [mean | logvar]" if is_moments else "latents"
    channels = x.shape[1] // 2 if is_moments else x.shape[1]
    source = (f"{kind} from {path} ({len(x)} {'labelled' if y is not None else 'unlabelled'}), "
              f"{channels}x{x.shape[2]}x{x.shape[3]}, scale {scale:g}")
    return Dataset(source, torch.from_numpy(x), y, num_classes, moments=is_moments, scale=float(scale))


def _latent_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(array, labels or None, whether the array is under "moments") from a .npz."""
    _check_magic(path, _ZIP_MAGIC, ".npz (a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            found = [k for k in ("latents", "moments", "arr_0") if k in keys]
            if len(found) != 1:
                what = "none of" if not found else "more than one of"
                raise DataError(f"{path}: holds {what} the keys 'latents', 'moments', 'arr_0' (found: "
                                f"{', '.join(keys) or 'no arrays'}); expected exactly one array of latents or moments")
            label_keys = [k for k in ("labels", "y") if k in keys]
            if len(label_keys) > 1:
                raise DataError(f"{path}: holds both 'labels' and 'y'; expected at most one array of labels")
            array = z[found[0]]
            labels = z[label_keys[0]] if label_keys else None
    except DataError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(_pickle_message(path)) from None
        raise DataError(f"{path}: cannot be read as a NumPy .npz file ({e})") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip raises BadZipFile, OSError, EOFError, ...
        raise DataError(f"{path}: cannot be read as a NumPy .npz file ({type(e).__name__}: {e})") from None
    return array, labels, found[0] == "moments"


def _latent_folder(path: Path) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Per-image arrays of a folder of .npy files, in index order, and labels.npy if present."""
    files = [p for p in _visible(path.iterdir()) if p.is_file() and p.suffix.lower() == ".npy"]
    label_file = path / "labels.npy"
    files = [p for p in files if p.name != "labels.npy"]
    if not files:
        raise DataError(f"{path}: no .npy files (expected a folder of per-image latent arrays (C, h, w))")
    if all(p.stem.isdigit() for p in files):
        files.sort(key=lambda p: int(p.stem))  # 10.npy after 9.npy, as the extraction numbered them
    else:
        files.sort(key=lambda p: p.name)
    arrays = []
    shape = None
    for f in files:
        a = _load_npy(f)
        if a.ndim != 3:
            raise DataError(f"{f}: expected one latent array (C, h, w), got shape {a.shape}")
        if shape is not None and a.shape != shape:
            raise DataError(f"{f}: shape {a.shape} differs from {files[0].name}'s {shape}")
        shape = a.shape
        arrays.append(a)
    labels = _load_npy(label_file) if label_file.exists() else None
    return arrays, labels


def _load_npy(path: Path) -> np.ndarray:
    """One .npy array, never unpickled: DataError for anything else."""
    _check_magic(path, _NPY_MAGIC, ".npy array")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(_pickle_message(path)) from None
        raise DataError(f"{path}: cannot be read as a NumPy .npy array ({e})") from None
    except Exception as e:  # noqa: BLE001 - a truncated file raises EOFError, OSError, ...
        raise DataError(f"{path}: cannot be read as a NumPy .npy array ({type(e).__name__}: {e})") from None


def _check_magic(path: Path, magic: bytes, expected: str) -> None:
    """Refuse files that are not NumPy's format before np.load sees them: np.load takes anything else for a
    pickle and would report every stray file as 'pickled data'."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(magic))
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if head == magic:
        return
    if head[:1] == b"\x80":  # pickle protocol 2+ opcode: a file written by pickle.dump or torch.save
        raise DataError(_pickle_message(path))
    raise DataError(f"{path}: not a NumPy file (expected a {expected})")


def _pickle_message(path: Path) -> str:
    return (f"{path}: holds pickled Python objects (U-ViT's feature extraction saves each image as a pickled "
            f"(moments, label) tuple), and dimbench does not unpickle files it is handed (unpickling can run any "
            f"code); if you trust the file, convert the images once into plain arrays: read each with np.load(f, "
            f"allow_pickle=True) and save them together with np.savez('latents.npz', moments=np.stack(moments), "
            f"labels=np.array(labels))")


def _check_latents(array: np.ndarray, path: Path, moments: bool) -> np.ndarray:
    """float32 (n, C, h, w), h == w, finite; an even C for moments."""
    if array.dtype.kind not in "fiu":
        raise DataError(f"{path}: expected numeric latents, got an array of dtype {array.dtype}")
    if array.ndim != 4:
        raise DataError(f"{path}: expected latents of shape (n, C, h, w), got shape {array.shape}")
    if array.shape[0] == 0:
        raise DataError(f"{path}: holds no latents (shape {array.shape})")
    if array.shape[2] != array.shape[3]:
        raise DataError(f"{path}: expected square latents (h == w), got shape {array.shape}")
    if moments and array.shape[1] % 2:
        raise DataError(f"{path}: moments [mean | logvar] need an even channel count, got shape {array.shape}")
    x = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: latents hold NaN or infinite values")
    return x


def _check_labels(labels: np.ndarray | None, n: int, path: Path) -> tuple[Tensor | None, int]:
    """long (n,) labels >= 0 and their class count (max + 1), or (None, 0)."""
    if labels is None:
        return None, 0
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)  # labels saved as floats of whole numbers are still class indices
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise DataError(f"{path}: expected labels as {n} integers (one per latent), got an array of dtype "
                        f"{labels.dtype} and shape {labels.shape}")
    if labels.min() < 0:
        raise DataError(f"{path}: labels must be class indices >= 0, found {labels.min()}")
    y = torch.from_numpy(labels.astype(np.int64))
    return y, int(y.max()) + 1


# ---------------------------------------------------------------------------------------------- dispatcher
def load_data(spec: str, resolution: int, split: str = "train", **kwargs) -> Dataset:
    """The data a spec names, at ``resolution`` pixels.

    "digits" -> :func:`load_digits` (split "train" | "test" | "all"); a folder of images ->
    :func:`load_image_folder`; a .npy/.npz file or a folder of .npy files -> :func:`load_latents`, whose latent
    size must be resolution / 8 (``models.SD_VAE_FACTOR``: the pixel resolution of a latent model, as sweep points
    give it) or resolution itself (a model's input size). Folders and files have no held-out split of their own:
    "train" and "all" take all of them, "test" is refused (name the evaluation data as its own path). ``kwargs`` go
    to the loader.
    """
    if spec == DIGITS_SPEC:
        return load_digits(resolution, split, **kwargs)
    path = Path(os.path.expanduser(str(spec)))
    if not path.exists():
        raise DataError(f"{spec}: no such file or folder; data is {ACCEPTED}")
    if split not in ("train", "all"):
        raise DataError(f"{spec}: a folder or file has no held-out {split!r} split (only 'digits' does); give the "
                        f"evaluation data as its own path")
    if path.is_file():
        if path.suffix.lower() not in LATENT_SUFFIXES:
            raise DataError(f"{spec}: not a data file; data is {ACCEPTED}")
        return _matching_latents(load_latents(path, **kwargs), resolution, spec)
    entries = [p for p in _visible(path.iterdir()) if p.is_file()]
    if any(p.suffix.lower() == ".npy" for p in entries) and not any(
            p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return _matching_latents(load_latents(path, **kwargs), resolution, spec)
    return load_image_folder(path, resolution, **kwargs)


def _matching_latents(data: Dataset, resolution: int, spec: str) -> Dataset:
    side = resolution // SD_VAE_FACTOR
    if data.resolution * SD_VAE_FACTOR != resolution and data.resolution != resolution:
        raise DataError(f"{spec}: latents are {data.resolution}x{data.resolution} ({data.resolution * SD_VAE_FACTOR} "
                        f"px); expected {side}x{side} for {resolution} px")
    return data


def _check_resolution(resolution, where: str) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise DataError(f"{where}: resolution must be a positive whole number of pixels, got {resolution!r}")
