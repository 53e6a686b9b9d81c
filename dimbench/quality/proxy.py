"""A proxy quality metric for small runs: a Fréchet distance on the features of a small digits classifier that
dimbench trains itself, and that classifier's accuracy on class-conditional samples.

This is not FID (no Inception network, no standard reference statistics): its rows carry their own name
(``fd_proxy*``, "proxy Fréchet distance"; ``proxy_acc*`` for the accuracy), and its numbers are comparable
only with each other, for the same
classifier (same seed and steps). The classifier sees 1x32x32 images in [-1, 1] (any input resolution is resized to
``FEATURE_RES``); its features are the activations of its penultimate layer (64 values, >= 0), as FID reads
Inception's last layer before the classifier (pool3).

Thread counts are the caller's (torch.set_num_threads); nothing here changes them.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dimbench.data import Dataset, resize
from dimbench.files import atomic_write
from dimbench.quality.frechet import frechet_distance, gaussian_stats

FEATURE_RES = 32
NUM_CLASSES = 10
FEATURES = 64
_CACHE_FORMAT = 1  # bump when the architecture or training changes: older cache files are retrained
_LR = 3e-3  # Adam's peak learning rate
_SHIFT = 2  # training augmentation: random translations of up to this many pixels (at FEATURE_RES)


class DigitsClassifier(nn.Module):
    """1x32x32 images in [-1, 1] -> logits (n, 10); ``features(x)`` -> (n, 64) penultimate activations (>= 0).

    A pixel unshuffle (32x32x1 -> 16x16x4, lossless), two stride-2 3x3 convolutions (16 channels at 8x8, 32 at
    4x4), then a 64-unit hidden layer whose ReLU activations are the features, and the linear classifier. About
    38k parameters; every layer is strided and narrow because convolutions at full resolution are what makes
    training slow on a CPU (their weight gradients), and the digits carry no more than 8x8 of detail anyway.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.PixelUnshuffle(2),
            nn.Conv2d(4, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 4 * 4, FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """(n, 1, 32, 32) -> (n, 64)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def prepare(images: Tensor) -> Tensor:
    """Any (n, 1, H, W) images -> float32 (n, 1, FEATURE_RES, FEATURE_RES) in [-1, 1].

    Generated samples are clipped to [-1, 1] first, as they are when saved as images (FID pipelines read uint8
    files); resizing is bilinear, antialiased when shrinking (dimbench.data.resize).
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected grey images (n, 1, H, W), got shape {tuple(images.shape)}")
    x = images.detach().float()
    if not torch.isfinite(x).all():
        raise ValueError("images hold NaN or infinite values")
    return resize(x.clamp(-1.0, 1.0), FEATURE_RES)


def train_classifier(data: Dataset, *, steps: int = 400, batch: int = 128,
                     seed: int = 0) -> tuple[DigitsClassifier, dict]:
    """Train a DigitsClassifier on ``data`` (grey labelled images, classes 0..9, any resolution).

    Adam with a cosine learning-rate decay, minibatches of ``batch`` drawn epoch by epoch from a seeded
    permutation, each shifted by up to 2 px at random (so the classifier does not hinge on exact digit position).
    The initialisation, batches and shifts all come from ``seed``: the same seed, data and thread count give the
    same model. Returns (model in eval mode on the CPU, info {"steps", "train_accuracy", "seed", "source"}).
    """
    if data.moments or data.channels != 1 or data.labels is None or not 0 < data.num_classes <= NUM_CLASSES:
        raise ValueError(f"the digits classifier trains on labelled grey images with at most {NUM_CLASSES} classes, "
                         f"got {data.source}")
    x = prepare(data.x).cpu()
    y = data.labels.long().cpu()
    generator = torch.Generator().manual_seed(seed)
    # The layers initialise from torch's global generator: seed it inside fork_rng, which gives the caller's
    # state back afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    optimizer = _Adam(list(model.parameters()))
    model.train()
    order = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        while len(order) < batch:
            order = torch.cat([order, torch.randperm(len(x), generator=generator)])
        index, order = order[:batch], order[batch:]
        loss = F.cross_entropy(model(_shift(x[index], generator)), y[index])
        model.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step(_LR * 0.5 * (1.0 + math.cos(math.pi * step / steps)))  # cosine decay to 0
    model.eval()
    info = {"steps": steps, "train_accuracy": accuracy(model, data.x, y), "seed": seed, "source": data.source}
    return model, info


class _Adam:
    """Adam (Kingma & Ba, torch.optim.Adam's defaults), for the few seconds of classifier training.

    Not torch.optim.Adam: building any torch.optim optimizer imports torch._dynamo, about 3 s of CPU on a 2-core
    machine, as long as the training itself.
    """

    def __init__(self, params: list[nn.Parameter], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps, self.t = params, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**self.t))


def _shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """(n, 1, h, w) -> each image translated by a random whole number of pixels in [-2, 2] per axis, the border
    filled with the background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x[:, 0], (_SHIFT,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * _SHIFT + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols].unsqueeze(1)


def load_or_train_classifier(cache: Path, *, train_data_fn: Callable[[], Dataset], steps: int = 400,
                             seed: int = 0) -> tuple[DigitsClassifier, dict]:
    """The classifier cached at ``cache`` if it was trained with these steps and seed, else a newly trained one
    (on ``train_data_fn()``), saved there.

    The file holds the state_dict and the info as JSON (torch.save; read back with weights_only=True, so a file
    there cannot run code). It is written atomically (:func:`dimbench.files.atomic_write`), so a
    reader never sees half a file and two processes racing both end with a valid one. A cache file that cannot be
    read is retrained over, with a warning.
    """
    cache = Path(cache)
    if cache.exists():
        try:
            loaded = _load_cache(cache)
        except Exception as e:  # noqa: BLE001 - any unreadable cache is replaced, never fatal
            warnings.warn(f"{cache}: cannot read the cached digits classifier ({type(e).__name__}: {e}); "
                          f"training it again", stacklevel=2)
            loaded = None
        if loaded is not None and loaded[1].get("steps") == steps and loaded[1].get("seed") == seed:
            return loaded
    model, info = train_classifier(train_data_fn(), steps=steps, seed=seed)
    _save_cache(cache, model, info)
    return model, info


def _load_cache(cache: Path) -> tuple[DigitsClassifier, dict] | None:
    """(model, info) from a cache file, or None when it is of another format version."""
    blob = torch.load(cache, map_location="cpu", weights_only=True)
    if blob.get("format") != _CACHE_FORMAT:
        return None
    info = json.loads(blob["info"])
    if not isinstance(info, dict):
        raise ValueError(f"info is not a JSON object: {blob['info']!r:.80}")
    model = DigitsClassifier()
    model.load_state_dict(blob["state_dict"])
    return model.eval(), info


def _save_cache(cache: Path, model: DigitsClassifier, info: dict) -> None:

    cache.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": _CACHE_FORMAT, "state_dict": model.state_dict(), "info": json.dumps(info)}
    atomic_write(cache, lambda f: torch.save(blob, f))


def _run(clf: DigitsClassifier, images: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """(features (n, 64), logits (n, 10)) of any grey images, in batches, without gradients."""
    param = next(clf.parameters())
    feats, logits = [], []
    with torch.inference_mode():
        for chunk in images.split(batch):
            f = clf.features(prepare(chunk).to(param.device, param.dtype))
            feats.append(f.cpu())
            logits.append(clf.head(f).cpu())
    if not feats:
        return torch.empty(0, FEATURES), torch.empty(0, NUM_CLASSES)
    return torch.cat(feats), torch.cat(logits)


def features(clf: DigitsClassifier, images: Tensor, batch: int = 512) -> np.ndarray:
    """(n, 64) float64 penultimate features of grey images (n, 1, H, W) in [-1, 1] (clipped), any resolution."""
    return _run(clf, images, batch)[0].double().numpy()


def accuracy(clf: DigitsClassifier, images: Tensor, labels: Tensor) -> float:
    """Fraction of images whose most likely class is their label (labels (n,) in 0..9)."""
    return _accuracy(_run(clf, images, 512)[1], labels)


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (len(logits),):
        raise ValueError(f"expected {len(logits)} labels (one per image), got shape {tuple(labels.shape)}")
    if len(labels) == 0:
        raise ValueError("accuracy of no images")
    return float((logits.argmax(dim=1) == labels).double().mean())


def proxy_scores(clf: DigitsClassifier, real_images: Tensor, fake_images: Tensor,
                 fake_labels: Tensor | None = None) -> dict:
    """{"fd": Fréchet distance between the classifier features of real (held-out) and generated images,
    "accuracy": the classifier's accuracy on the generated images against ``fake_labels`` (the classes they were
    asked for; None without labels), "n_real", "n_fake"}. Each set needs at least 2 images; with fewer images than
    64 features the covariances are singular, which the distance handles, but its value is then dominated by
    sampling noise and biased upwards (as FID is at small n): compare runs at the same n."""
    real_feats, _ = _run(clf, real_images, 512)
    fake_feats, fake_logits = _run(clf, fake_images, 512)
    fd = frechet_distance(*gaussian_stats(real_feats.double().numpy()), *gaussian_stats(fake_feats.double().numpy()))
    acc = None if fake_labels is None else _accuracy(fake_logits, fake_labels)
    return {"fd": fd, "accuracy": acc, "n_real": len(real_images), "n_fake": len(fake_images)}
