"""FLOP count of the selective scan, in FlopCounterMode's unit (FLOPs: a multiply-add counts 2).

Derived from the arithmetic of the recurrence as specified (``reference.py``), counting each multiply, add,
divide and exp as 1 FLOP:

    per (batch, d_inner, step, state) element, N of them per channel and step:
        Δ·A (1) + exp (1) + (Δu)·B (1) + x ← Ā·x + ΔBu (2) + y += x·C (2)          = 7
    per (batch, d_inner, step):
        Δ·u (1)
        D skip, if D:   y + D·u (2)
        z gate, if z:   silu(z) = z / (1 + exp(-z)): exp, add, divide (3); out·silu(z) (1) = 4

    scan_flops = batch·d_inner·L·(7·N + 1 + 2·[D] + 4·[z])

Not counted: forming Δ (bias add and softplus), which belongs to Δ's projection, as in the literature.
The chunked backend does about 12 instead of 7 FLOPs per element (it runs the recurrence twice, once for the
chunk end states and once for the outputs); the count describes the operation, not one implementation, so every
backend reports the same number.

The Mamba literature (and the fvcore handler of VMamba/Vim that DiM-era papers used) counts the scan as
9·B·L·D·N plus B·D·L for D and B·D·L for z, and adds that to multiply-accumulate counts of the matrix products,
i.e. in MAC units. ``convention="mamba"`` returns twice that, in FLOPs, so that FLOPs/2 reproduces the literature.
"""

from __future__ import annotations

CONVENTIONS = ("derived", "mamba")


def scan_flops(batch: int, d_inner: int, L: int, N: int, has_D: bool, has_z: bool,
               convention: str = "derived") -> int:
    """FLOPs (FlopCounterMode unit, 2 per multiply-add) of one selective-scan forward; see the module docstring.

    Divide by 2 for multiply-accumulates (fvcore's and the papers' unit).
    """
    if convention == "derived":
        return int(batch * d_inner * L * (7 * N + 1 + 2 * bool(has_D) + 4 * bool(has_z)))
    if convention == "mamba":
        return int(2 * (9 * batch * L * d_inner * N + batch * d_inner * L * (bool(has_D) + bool(has_z))))
    raise ValueError(f"scan_flops: convention must be one of {CONVENTIONS}; got {convention!r}")


def scan_backward_flops(batch: int, d_inner: int, L: int, N: int, has_D: bool, has_z: bool) -> int:
    """FLOPs of the backward: an estimate, 3 × the forward (the backward recomputes the forward once and the
    gradient of an elementwise recurrence costs about twice its forward, the usual training-step rule)."""
    return 3 * scan_flops(batch, d_inner, L, N, has_D, has_z)
