"""Project-wide pytest hooks.

Tests marked ``@pytest.mark.cuda`` need a CUDA GPU. Without one they are skipped with that reason, never
silently passed; ``scripts/gpu_check.sh`` runs them (``pytest -m cuda``) on a GPU machine.
"""

import pytest


def pytest_collection_modifyitems(config, items):
    cuda_items = [item for item in items if "cuda" in item.keywords]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch); run scripts/gpu_check.sh on one")
    for item in cuda_items:
        item.add_marker(skip)
