"""Per-image random streams: image i of a run seeded by (seed, i, stream), so a chunked, resumed or multi-rank
run draws exactly what one uninterrupted process would."""

from __future__ import annotations

import numpy as np


def image_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for image ``index`` of run ``seed`` (independent streams via numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(1, np.uint64)[0] >> 1)
