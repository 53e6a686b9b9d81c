"""The optional ``mamba_ssm`` backend: the fused CUDA kernel of the mamba-ssm package, used when it imports.

mamba-ssm ships as source only (a long CUDA build), so it is never required. ``mamba_ssm_status(device)`` says
why it cannot run here (not installed, import error, not a CUDA device) so callers can report the reason.
Its ``selective_scan_fn`` is differentiable, so the operator's backward can recompute through it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=1)
def _import_selective_scan_fn():
    """(fn, None) when mamba_ssm's selective_scan_fn imports, else (None, reason). Tried once per process."""
    try:  # optional dependency (a CUDA build): imported only when this backend is asked for
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, or a broken CUDA extension raising something else on import
        return None, f"mamba_ssm does not import ({type(exc).__name__}: {exc})"
    return selective_scan_fn, None


def mamba_ssm_status(device) -> tuple[bool, str]:
    """(can run on ``device``, reason)."""
    fn, reason = _import_selective_scan_fn()
    if fn is None:
        return False, reason
    if torch.device(device).type != "cuda":
        return False, f"mamba_ssm's kernel runs only on CUDA tensors (device is {torch.device(device)})"
    return True, "mamba_ssm fused CUDA kernel"


def mamba_ssm_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True) -> Tensor:
    """mamba-ssm's fused selective scan (same semantics and shapes); output in u's dtype."""
    fn, reason = _import_selective_scan_fn()
    if fn is None:
        raise RuntimeError(reason)
    # mamba-ssm wants A, D and delta_bias in float32 and the big inputs contiguous along L.
    out = fn(u.contiguous(), delta.contiguous(), A.float(), B.contiguous(), C.contiguous(),
             None if D is None else D.float(), None if z is None else z.contiguous(),
             None if delta_bias is None else delta_bias.float(), delta_softplus=delta_softplus)
    return out.to(u.dtype)
