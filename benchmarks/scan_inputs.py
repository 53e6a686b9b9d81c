"""The selective scan's inputs (and its causal conv1d's) as DiM really passes them, and the backends to try, for the
GPU check's correctness and speed scripts.

``models.dim.MambaMixer.forward`` computes x and z with one GEMM laid out (2·d_inner, batch·S) and views them as
(batch, d_inner, S): z keeps that layout, strides (S, batch·S, 1), so it is not contiguous at batch > 1; B and C
are slices of x_proj's (batch, rank + 2N, S) output, strides ((rank + 2N)·S, S, 1); u (the conv's SiLU) and Δ (a
batched GEMM) are contiguous; A = -exp(A_log) (d_inner, N), D and the Δ-bias are float32 (d_inner,).
tests/test_gpu_check.py checks these strides against what a DiM block hands the scan.

Values as DiM's initialisation makes them: A = -[1..N] per channel, D = 1, the Δ-bias the inverse softplus of a
step drawn log-uniformly in [1e-3, 0.1], Δ's GEMM output 0.5·N(0, 1) (so Δ = softplus(Δ + bias) is mostly
0.1-0.7), u, z, B, C standard normal. Never zeros (METHOD.md: zeros hide wrong indexing).
"""

from __future__ import annotations

import math

import torch

#: DiM-H/2's scan: d_inner 3072 (2 x width 1536), N 16, dt_rank ⌈1536 / 16⌉ = 96.
DIM_H = {"d_inner": 3072, "N": 16, "rank": 96}


def dim_scan_inputs(batch: int, L: int, dtype: torch.dtype, device, *, d_inner: int = DIM_H["d_inner"],
                    N: int = DIM_H["N"], rank: int = DIM_H["rank"], seed: int = 0, requires_grad: bool = False):
    """(inputs, leaves): the keyword arguments of ``selective_scan`` (u, delta, A, B, C, D, z, delta_bias) in DiM's
    layout, the big ones in ``dtype``; and the tensors that own the memory (gradients of z, B and C reach them
    through the views), which require grad when ``requires_grad``."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=g) * scale).to(dtype)

    u = randn(batch, d_inner, L)
    delta = randn(batch, d_inner, L, scale=0.5)
    xz = randn(2 * d_inner, batch, L)                        # in_proj's GEMM output, as MambaMixer lays it out
    x_dbl = randn(batch, rank + 2 * N, L)                    # x_proj's output: (dt, B, C) along dim 1
    lo, hi = math.log(1e-3), math.log(0.1)
    step = torch.exp(torch.rand(d_inner, device=device, generator=g) * (hi - lo) + lo).clamp(min=1e-4)
    leaves = {
        "u": u, "delta": delta, "xz": xz, "x_dbl": x_dbl,
        "A": -torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(d_inner, 1),
        "D": torch.ones(d_inner, device=device),
        "delta_bias": step + torch.log(-torch.expm1(-step)),  # inverse softplus
    }
    if requires_grad:
        for t in leaves.values():
            t.requires_grad_()
    z = xz.transpose(0, 1)[:, d_inner:]
    inputs = {"u": u, "delta": delta, "A": leaves["A"], "B": x_dbl[:, rank:rank + N], "C": x_dbl[:, rank + N:],
              "D": leaves["D"], "z": z, "delta_bias": leaves["delta_bias"]}
    return inputs, leaves


def dim_conv_inputs(batch: int, L: int, dtype: torch.dtype, device, *, d_inner: int = DIM_H["d_inner"],
                    kernel: int = 3, seed: int = 0):
    """(x, weight, bias) of DiM's causal depthwise conv1d: x (batch, d_inner, L) in ``dtype``, a view of in_proj's
    (2·d_inner, batch, L) product as ``MambaMixer`` lays it out (time contiguous, channels strided by batch·L);
    weight (d_inner, 1, kernel) and bias (d_inner,) float32, as an ``nn.Conv1d`` initialises them (uniform in
    ±1/√kernel)."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    xz = torch.randn(2 * d_inner, batch, L, device=device, generator=g).to(dtype).transpose(0, 1)
    bound = 1 / math.sqrt(kernel)
    weight = (torch.rand(d_inner, 1, kernel, device=device, generator=g) * 2 - 1) * bound
    bias = (torch.rand(d_inner, device=device, generator=g) * 2 - 1) * bound
    return xz[:, :d_inner], weight, bias


#: backends the GPU check's scripts leave out unless named: a CPU dry run of the check stands in for a GPU run,
#: and a CPU-only kernel is not what that run is about (its own tests and benchmarks check and time it)
CPU_ONLY = {"cpu_fused": "the CPU's C kernel, not a GPU backend (tests/test_scan_cpu_fused.py checks it, "
                         "benchmarks/test_bench_train_step.py times it)"}


def runnable_backends(device, named: list[str] | None = None, exclude: dict[str, str] | None = None):
    """(backends that can run on ``device``, {backend: why not}): those ``models.scan.available_backends`` lists
    (or ``named``), less ``exclude`` ({name: reason}; only when none are named) and Triton's interpreter on CUDA
    (a correctness tool, thousands of times slower: never what a GPU run means)."""
    from models.scan import available_backends

    device = torch.device(device)
    status = available_backends(device)
    chosen, skipped = [], {}
    for name in named or list(status):
        ok, reason = status.get(name, (False, "unknown backend"))
        if not named and name in (exclude or {}):
            skipped[name] = exclude[name]
        elif not ok:
            skipped[name] = reason
        elif device.type == "cuda" and "interpreter" in reason.lower():
            skipped[name] = f"not on CUDA: {reason}"
        else:
            chosen.append(name)
    return chosen, skipped
