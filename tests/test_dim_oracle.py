"""DiM against the official code: a tiny official model's weights, inputs and outputs.

The oracle (tests/data/dim_tiny_official.pt; how it was made: tests/data/README.md) came from the official DiM
code (CPU, float32): width 64, 7 blocks, 4×16×16 latents, patch 2, 10 classes, lateral pads, random weights in
official naming. It covers skip fusion for d <= 512 and the lateral layout; integer and fractional t.
Converted into dimbench's DiM, the same inputs must give the same outputs to float32 rounding.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models
from models.dim import DiM
from models.dim_convert import infer_dim_config, is_official_dim, official_to_dimbench
from models.scan import available_backends

ORACLE = Path(__file__).parent / "data" / "dim_tiny_official.pt"  # committed: missing is a failure
TOLERANCE = 1e-5  # relative L2 error ‖out − ref‖ / ‖ref‖ (docs/models.md §5.2: float32 rounding)
CPU_BACKENDS = [b for b in ("reference", "chunked", "cpu_fused") if available_backends("cpu")[b][0]]

# One OpenMP thread (tests/conftest.py: a tiny model, busy machines).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def oracle():
    return torch.load(ORACLE, weights_only=True)


@pytest.fixture(scope="module")
def model(oracle):
    sd = oracle["state_dict"]
    assert is_official_dim(sd)
    cfg = infer_dim_config(sd)
    assert cfg == dict(width=64, depth=7, patch_size=2, in_channels=4, num_classes=10, grid=8)
    net = DiM(
        input_size=cfg["grid"] * cfg["patch_size"],
        in_channels=cfg["in_channels"],
        num_classes=cfg["num_classes"],
        patch_size=cfg["patch_size"],
        depth=cfg["depth"],
        width=cfg["width"],
        pad_layout="lateral",
    )
    net.load_state_dict(official_to_dimbench(sd), strict=True)
    return net.eval()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["", "_float_t"])
def test_matches_official_outputs(oracle, model, backend, case, monkeypatch):
    monkeypatch.setenv("DIMBENCH_SCAN_BACKEND", backend)
    inputs, ref = oracle[f"inputs{case}"], oracle[f"output{case}"]
    with torch.no_grad():
        out = model(inputs["x"], inputs["t"], inputs["y"])
    assert models.scan_backend() == backend
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < TOLERANCE, f"relative error {rel:.3g} with the {backend} scan (t = {inputs['t'].tolist()})"


def test_cyclic_layout_differs_from_the_oracle(oracle, model):
    """The oracle was made with lateral pads; the cyclic layout (same parameters) must not reproduce it."""
    inputs, ref = oracle["inputs"], oracle["output"]
    model.pad_layout = "cyclic"
    try:
        with torch.no_grad():
            out = model(inputs["x"], inputs["t"], inputs["y"])
    finally:
        model.pad_layout = "lateral"
    assert ((out - ref).norm() / ref.norm()).item() > 1e-3
