"""Where the official-code oracles live: ``shared/oracles`` beside the checkout (how the project is laid out
for developers and CI), inside it, or wherever ``DIMBENCH_ORACLES`` points."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def oracle_path(name: str) -> Path:
    """Path of oracle ``name`` (the first candidate that exists, else the first candidate)."""
    candidates = [ROOT.parent / "shared" / "oracles" / name, ROOT / "shared" / "oracles" / name]
    if os.environ.get("DIMBENCH_ORACLES"):
        candidates.insert(0, Path(os.environ["DIMBENCH_ORACLES"]) / name)
    return next((c for c in candidates if c.exists()), candidates[0])


def require_oracle(path: Path) -> pytest.MarkDecorator:
    """Skip marker for tests that need ``path``; in CI (CI=true) a missing oracle is a failure, not a skip."""
    missing = not path.exists()
    if missing and os.environ.get("CI"):
        raise FileNotFoundError(f"oracle {path} is missing in CI (set DIMBENCH_ORACLES to its folder)")
    return pytest.mark.skipif(missing, reason=f"oracle file {path} not present (set DIMBENCH_ORACLES)")
