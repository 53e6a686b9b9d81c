"""Selective scan (Mamba-1) for dimbench: one custom op, several backends.

    from models.scan import selective_scan, scan_backend, available_backends
    out = selective_scan(u, delta, A, B, C, D, z, delta_bias)      # (batch, d_inner, L)
    scan_backend()                 # -> "chunked" (the backend that ran last)
    available_backends("cpu")      # -> {"reference": (True, "..."), "mamba_ssm": (False, "reason"), ...}

Modules: ``op`` (custom op, autograd, FLOP formula, public wrapper), ``registry`` (backends, availability,
resolution, environment override), ``reference`` / ``chunked`` (pure PyTorch), ``cpu_fused`` (a C kernel for the
CPU, built on first use with the system compiler into a per-user cache; its source ``cpu_fused.c``),
``mamba_ssm_backend`` (optional CUDA kernel), ``triton_fused`` (the built-in ``triton`` backend: a fused Triton
kernel, forward and analytic backward, on CUDA; on the CPU under TRITON_INTERPRET=1 only; its kernels are in
``triton_fused_kernels``, loaded only when they run), ``triton_backend`` (``triton_v1``, its predecessor, kernels in
``triton_kernels``), ``triton_runtime`` (what both share: triton's mode, availability, kernel loading), ``flops``
(the count), ``common`` (checks, prologue, epilogue).
"""

from .chunked import chunked_scan, default_chunk_size
from .cpu_fused import cpu_fused_scan, cpu_fused_scan_backward, cpu_fused_status
from .flops import scan_backward_flops, scan_flops
from .op import scan_backend, scan_backend_reason, selective_scan
from .reference import reference_scan
from .registry import (
    ENV_VAR,
    auto_backend,
    available_backends,
    choice_reason,
    known_backends,
    register_backend,
    resolve_backend,
    unregister_backend,
)
from .triton_backend import triton_scan as triton_v1_scan
from .triton_backend import triton_scan_backward as triton_v1_scan_backward
from .triton_fused import triton_scan, triton_scan_backward, triton_status

__all__ = [
    "ENV_VAR",
    "auto_backend",
    "available_backends",
    "choice_reason",
    "chunked_scan",
    "cpu_fused_scan",
    "cpu_fused_scan_backward",
    "cpu_fused_status",
    "default_chunk_size",
    "known_backends",
    "reference_scan",
    "register_backend",
    "resolve_backend",
    "scan_backend",
    "scan_backend_reason",
    "scan_backward_flops",
    "scan_flops",
    "selective_scan",
    "triton_scan",
    "triton_scan_backward",
    "triton_status",
    "triton_v1_scan",
    "triton_v1_scan_backward",
    "unregister_backend",
]
