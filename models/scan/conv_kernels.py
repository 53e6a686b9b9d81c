"""Triton kernel of the causal depthwise conv1d + SiLU (``models.scan.conv``). Never imported directly:
``conv._kernels()`` loads it through ``triton_runtime.load_kernels`` in the mode triton was imported in."""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def conv_silu_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, sx_b, sx_d, sx_t, D, S,
                     KW: tl.constexpr, HAS_BIAS: tl.constexpr, BC: tl.constexpr, BT: tl.constexpr):
    """out[b, c, t] = silu(bias[c] + Σ_j w[c, j]·x[b, c, t - (KW-1) + j]) with x = 0 before the sequence; x read
    through its strides (time contiguous in DiM: three overlapping loads of a tile, two of them from the cache), out
    written contiguous (batch, D, S) in its dtype, computed in float32. w: (D, KW) float32. Grid (batch, ⌈D / BC⌉,
    ⌈S / BT⌉)."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    t = tl.program_id(2) * BT + tl.arange(0, BT)
    mc = c < D
    if HAS_BIAS:
        acc = tl.load(bias_ptr + c, mask=mc, other=0.0)[:, None] + tl.zeros([BC, BT], tl.float32)
    else:
        acc = tl.zeros([BC, BT], tl.float32)
    row = x_ptr + b * sx_b + c[:, None] * sx_d
    for j in tl.static_range(KW):
        tt = t - (KW - 1) + j
        xv = tl.load(row + tt[None, :] * sx_t, mask=mc[:, None] & ((tt >= 0) & (tt < S))[None, :], other=0.0)
        acc += tl.load(w_ptr + c * KW + j, mask=mc, other=0.0)[:, None] * xv.to(tl.float32)
    y = acc / (1.0 + tl.exp2(-acc * LOG2E))
    tl.store(out_ptr + (b * D + c[:, None]) * S + t[None, :], y.to(out_ptr.dtype.element_ty),
             mask=mc[:, None] & (t < S)[None, :])
