"""The FID Inception network: torch-fidelity's port of the TF-2015-12-05 graph, from a local weights file only.

Why torch-fidelity and not pytorch-fid: both port the same TensorFlow graph (inception-2015-12-05) to PyTorch
with the same parameter names, and both name their weights file with the same SHA256 prefix ``6726825d``
(torch.hub's convention: the part after the last '-' is the start of the file's SHA256, which
``load_state_dict_from_url(check_hash=True)`` checks), so either project's file works here:

- torch-fidelity: ``weights-inception-2015-12-05-6726825d.pth``
  (https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth)
- pytorch-fid: ``pt_inception-2015-12-05-6726825d.pth``
  (https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth)

pytorch-fid fetches its weights through torch.hub with no local-path argument; torch-fidelity's
``FeatureExtractorInceptionV3`` takes ``feature_extractor_weights_path`` and also gives the Inception Score,
KID and precision/recall from the same features. Neither package ships the weights. dimbench never lets
torch-fidelity download: the path is always passed, and the file is checked here first (exists, SHA256 prefix,
a plain state_dict read with ``torch.load(weights_only=True)`` whose names and shapes fit the network).
torch-fidelity itself reads the path with ``weights_only=False``, so it is handed a copy written here from the
state_dict already read safely, never the user's file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dimbench.errors import UserError
from dimbench.fid.precision import strict_float32
from dimbench.fid.protocol import RESIZES
from models.checkpoints import inflation_problem

#: The start of the SHA256 of the published weights file (both projects' file names end in it).
EXPECTED_SHA256_PREFIX = "6726825d"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
#: The feature layers dimbench keeps per image: pool3 (FID, KID, precision/recall) and the unbiased logits (IS).
POOL = "2048"
LOGITS = "logits_unbiased"
EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's registered name of this network


SHA256_PREFIX_TEXT = "8 to 64 lowercase hex digits [0-9a-f] (the start, or all, of a SHA256)"


def is_sha256_prefix(value: str) -> bool:
    """At least 8 (at most 64) lowercase hex digits: a prefix too short to tell files apart is refused."""
    return re.fullmatch(r"[0-9a-f]{8,64}", value) is not None


def available() -> str | None:
    """None when torch-fidelity imports, else the reason (the GPU machine may lack it)."""
    try:  # torch-fidelity is imported where it is used: a machine without it still runs everything but FID
        import torch_fidelity  # noqa: F401
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: not available here
        return f"torch-fidelity does not import ({type(exc).__name__}: {exc})"
    return None


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA256 of a file (hex), read in 4 MiB blocks: the Inception weights, and the checkpoint FID scores."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def expected_text(expected: str) -> str:
    if expected == EXPECTED_SHA256_PREFIX:
        return (f"SHA256 starting {expected} (torch-fidelity's {TORCH_FIDELITY_FILE} or pytorch-fid's "
                f"{PYTORCH_FID_FILE}: the TF-2015-12-05 FID Inception weights)")
    return f"SHA256 starting {expected} (options.fid.inception_sha256)"


def check_weights_file(path: str | os.PathLike, expected: str = EXPECTED_SHA256_PREFIX) -> str:
    """The file's SHA256 when it exists and its hash starts with ``expected``; else UserError naming the file
    and the expected checksum."""
    p = Path(path)
    what = expected_text(expected)
    if not p.is_file():
        raise UserError(f"Inception weights {p}: no such file (expected the FID Inception weights, {what})")
    try:
        digest = sha256_of(p)
    except OSError as exc:
        raise UserError(f"Inception weights {p}: cannot read ({exc.strerror or exc}); expected {what}") from None
    if not digest.startswith(expected.lower()):
        raise UserError(f"Inception weights {p}: wrong file: SHA256 {digest}, expected {what}")
    return digest


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights as a state_dict, read with ``weights_only=True``; UserError for anything else."""
    bomb = inflation_problem(path)
    if bomb:
        raise UserError(f"Inception weights {bomb}")
    try:
        with open(path, "rb") as f:
            obj = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is the user's input
        raise UserError(f"Inception weights {path}: not a readable PyTorch state_dict "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"Inception weights {path}: expected a state_dict of tensors (torch.save(model.state_dict()))")
    return obj


def load_extractor(path: str | os.PathLike, expected: str = EXPECTED_SHA256_PREFIX,
                   device: torch.device | str = "cpu"):
    """torch-fidelity's FeatureExtractorInceptionV3 with the weights at ``path`` (checked first), giving the
    pool3 features and the unbiased logits, in eval mode on ``device``. Returns (extractor, sha256)."""
    reason = available()
    if reason:
        raise UserError(f"FID is not available: {reason}")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # optional: see available()

    digest = check_weights_file(path, expected)
    state = read_state_dict(path)
    with tempfile.TemporaryDirectory(prefix="dimbench-inception-") as tmp:
        copy = Path(tmp) / "weights.pth"
        torch.save(state, copy)  # plain tensors only: what torch-fidelity's weights_only=False load then reads
        del state
        try:
            net = FeatureExtractorInceptionV3(EXTRACTOR_NAME, [POOL, LOGITS], feature_extractor_weights_path=str(copy))
        except RuntimeError as exc:  # load_state_dict: missing/unexpected names or other shapes
            raise UserError(f"Inception weights {path}: do not fit torch-fidelity's FID Inception network "
                            f"({str(exc).splitlines()[0]})") from None
    return net.to(device).eval(), digest


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W), C = 1 or 3, as uint8 RGB (B, 3, H, W): round((x + 1) / 2 · 255)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


#: The FID Inception network's layers from its first convolution to pool3, in order (torch-fidelity's names,
#: which are also pytorch-fid's): what both resize modes share once the image is at 299 px and normalised.
TRUNK = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
         "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
         "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")
SIDE = 299


def torch_resize(images_uint8: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's preprocessing (what U-ViT's and DiM's tools/fid_score.py feed the network): uint8 images
    as read from PNG (torchvision's ToTensor: x / 255), PyTorch's bilinear resize to 299 px with
    align_corners=False and no antialiasing, then 2x - 1. float32 (n, 3, 299, 299)."""
    x = images_uint8.float() / 255.0
    x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


def trunk(net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool3, unbiased logits) of normalised 299 px input ``x``, through the network's layers (:data:`TRUNK`)."""
    for name in TRUNK:
        x = getattr(net, name)(x)
    pool = torch.flatten(x, 1)
    return pool, pool.mm(net.fc.weight.T)


@torch.no_grad()
def extract(net, images_uint8: torch.Tensor, batch: int = 100, resize: str = "tf1") -> tuple[np.ndarray, np.ndarray]:
    """(pool3 (n, 2048), unbiased logits (n, 1008)) float32 for uint8 images (n, 3, H, W), in float32 with TF32
    off. ``resize``: "tf1" = torch-fidelity's own forward (TF1-compatible bilinear resize to 299 px, (x - 128) /
    128, as ADM's evaluator); "torch" = pytorch-fid's preprocessing (:func:`torch_resize`) then the same layers."""
    if resize not in RESIZES:
        raise ValueError(f"inception resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    device = next(net.parameters()).device
    dtype = next(net.parameters()).dtype
    pools, logits = [], []
    with strict_float32():
        for start in range(0, images_uint8.shape[0], batch):
            part = images_uint8[start:start + batch].to(device)
            p, lg = net(part) if resize == "tf1" else trunk(net, torch_resize(part).to(dtype))
            pools.append(p.float().cpu())
            logits.append(lg.float().cpu())
    return torch.cat(pools).numpy(), torch.cat(logits).numpy()
