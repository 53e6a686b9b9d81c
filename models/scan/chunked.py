"""The ``chunked`` backend: an exact selective scan in about 2·T + K Python steps instead of L (K = ⌈L/T⌉).

Split the sequence into K chunks of T steps (the last one zero-padded: Δ = 0 there, so the padding neither
decays the state nor feeds it). The recurrence x_t = Ā_t ⊙ x_{t-1} + (Δ_t·u_t) ⊗ B_t is linear in the state, so
a chunk's end state is its end state from zero plus the start state carried through the whole chunk's decay:

1. chunk end states from zero, all chunks at once: T sequential steps of the recurrence, E_k = x^0_{T-1}(chunk k);
2. states entering each chunk: K-1 sequential steps, S_0 = 0, S_{k+1} = G_k ⊙ S_k + E_k, with the whole chunk's
   decay G_k = exp(A · Σ_{t in chunk k} Δ_t);
3. outputs: T sequential steps of the same recurrence, all chunks at once, each chunk started from S_k, reading
   out y_t = C_t · x_t on the way.

Phases 1 and 3 are the step-by-step recurrence itself (same decays, same order of operations), so the result
equals the sequential scan up to float32 rounding in G_k (exp of a sum instead of a product of exps). Only G_k
multiplies many decays; where exp would return a subnormal float32 (< 2**-126), it is set to exactly 0 (see
``_chunk_decay``), because subnormal arithmetic is ~100x slower on x86 CPUs.

Cost: about 9 passes over batch·L·N·d_inner floats (Δ⊗A, exp, ⊙, +(Δu)⊗B in phases 1 and 3, the C read-out),
against ~5 for the sequential scan, but in 2·T + K Python steps instead of L.

Layout: the work tensors are (batch, K, N, d_inner), d_inner innermost, so each step's broadcasts run along
contiguous memory and a step's working set (batch·K·N·d_inner floats) can stay in cache on a CPU. The per-step
inputs are read from tokens-major copies (batch, K, T, channels) of Δ, Δ·u, B and C. Memory: O(batch·K·N·d_inner)
for the work tensors plus O(batch·L·d_inner) for those copies; no (batch, d_inner, L, N) tensor is built in the
forward (under autograd each step's tensors are saved, about 3 of that size in total).

Chunk size T (``default_chunk_size``): on CUDA ⌈√L⌉, which minimises the T + K rounds of kernel launches. On a
CPU the cost is the memory traffic of the per-step tensors, so K is chosen to keep one (batch, K, N, d_inner)
tensor near 2**17 floats (512 KiB, so the few live ones stay in a core's L2), but at least 4 (else the scan is
nearly sequential) and at most 2·⌈√L⌉ (so T ≥ √L/2 bounds the Python steps). Measured on the 2-core Xeon
(benchmarks/test_bench_scan.py, T sweep): with both cores free, T from 23 to 160 changes the time by under 10 %
at L = 366 and 1230; single-threaded (or with the other core busy) smaller per-step tensors are up to 1.3x
faster, hence 2**17 rather than 2**18 floats. Any T ≥ 1 gives the same result.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import finish, prepare, tracking

#: target size (floats) of one per-step work tensor on a CPU; see the module docstring.
CPU_STEP_ELEMS = 1 << 17


def default_chunk_size(batch: int, d_inner: int, length: int, d_state: int, device: torch.device) -> int:
    """The chunk length T used when none is given (see the module docstring for the reasoning)."""
    root = math.isqrt(max(length - 1, 0)) + 1  # ⌈√L⌉ for L ≥ 1
    if torch.device(device).type != "cpu":
        return max(1, min(length, root))
    chunks = CPU_STEP_ELEMS // max(1, batch * d_inner * d_state)
    chunks = min(max(chunks, 4), 2 * root)
    return max(1, min(length, -(-length // chunks)))


def _to_chunks(x: Tensor, chunks: int, chunk: int) -> Tensor:
    """(batch, c, L) -> zero-padded tokens-major (batch, K, T, c) copy."""
    batch, channels, length = x.shape
    out = x.new_empty(batch, chunks * chunk, channels)
    out[:, length:].zero_()  # the padding: Δ = 0 there, so it neither decays nor feeds the state
    _copy_transposed(out[:, :length], x)
    return out.view(batch, chunks, chunk, channels)


def _copy_transposed(dst: Tensor, src: Tensor) -> None:
    """dst (batch, m, n) ← src (batch, n, m) transposed, one 2-D copy per batch element: PyTorch's CPU copy has
    a cache-blocked path for a transposed 2-D matrix (4-10x faster here than the same copy done in 3-D)."""
    for i in range(dst.shape[0]):
        dst[i].copy_(src[i].t())


def chunked_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                 chunk_size: int | None = None) -> Tensor:
    """Chunked selective scan; shapes as in ``models.scan.common``; returns (batch, d_inner, L) in u's dtype.

    ``chunk_size`` is T (None: ``default_chunk_size``); lengths that are not multiples of T are padded internally.
    """
    u32, dt, A32, B32, C32 = prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    track = tracking(u32, dt, A32, B32, C32, D, z)
    y = _chunked_core(u32, dt, A32, B32, C32, chunk_size, track)
    return finish(y, u32, D, z, u.dtype, inplace=not track)


def _chunked_core(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size, track: bool) -> Tensor:
    """y (batch, d_inner, L) float32 = Σ_n x_t C_t for the recurrence with Δ = dt (no D, no gate)."""
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    T = chunk_size or default_chunk_size(batch, d_inner, length, d_state, u.device)
    if T < 1:
        raise ValueError(f"chunked_scan: chunk_size must be >= 1; got {T}")
    T = min(T, length)
    K = -(-length // T)

    At = A.t().contiguous()                                   # (N, d_inner)
    dtc = _to_chunks(dt, K, T)                                # (batch, K, T, d_inner)
    dtuc = _to_chunks(dt * u, K, T)
    Bc = _to_chunks(B, K, T)                                  # (batch, K, T, N)
    Cc = _to_chunks(C, K, T)
    decay = None if track else u.new_empty(batch, K, d_state, d_inner)

    def per_step(chunks: slice):
        """Per-step views for the chunks selected: Δ_t, Δ_t·u_t (batch, k, 1, d_inner), B_t (batch, k, N, 1)."""
        return zip(dtc[:, chunks].unsqueeze(3).unbind(2), dtuc[:, chunks].unsqueeze(3).unbind(2),
                   Bc[:, chunks].unsqueeze(4).unbind(2), strict=True)

    def step(h: Tensor, dt_t: Tensor, dtu_t: Tensor, B_t: Tensor) -> Tensor:
        """x ← exp(Δ_t ⊗ A) ⊙ x + (Δ_t·u_t) ⊗ B_t, h (batch, k, N, d_inner); in place unless autograd records."""
        if track:
            return torch.exp(dt_t * At) * h + dtu_t * B_t
        a = decay[:, : h.shape[1]]
        torch.mul(dt_t, At, out=a).exp_()
        return h.mul_(a).addcmul_(dtu_t, B_t)

    # Phase 1: end states E_k of chunks 0..K-2 started from zero (the last chunk's is not needed).
    # Phase 2: S_k, the state entering chunk k: S_0 = 0, S_{k+1} = G_k ⊙ S_k + E_k.
    if K > 1:
        steps = per_step(slice(0, K - 1))
        _, dtu_0, B_0 = next(steps)
        e = dtu_0 * B_0                                       # (batch, K-1, N, d_inner)
        for dt_t, dtu_t, B_t in steps:
            e = step(e, dt_t, dtu_t, B_t)
        G = _chunk_decay(dtc[:, 1:K - 1].sum(2), At, track)   # chunks 1..K-2, (batch, K-2, N, d_inner)
        if track:
            states = [torch.zeros_like(e[:, 0]), e[:, 0]]
            for k in range(1, K - 1):
                states.append(G[:, k - 1] * states[-1] + e[:, k])
            h = torch.stack(states, dim=1)                    # (batch, K, N, d_inner)
        else:
            h = torch.cat([torch.zeros_like(e[:, :1]), e], dim=1)
            for k in range(2, K):
                h[:, k].addcmul_(G[:, k - 2], h[:, k - 1])
    else:
        h = u.new_zeros(batch, 1, d_state, d_inner)

    # Phase 3: rerun every chunk from its true start state, reading out y_t = C_t · x_t.
    ys = []
    for (dt_t, dtu_t, B_t), C_t in zip(per_step(slice(0, K)), Cc.unsqueeze(3).unbind(2), strict=True):
        h = step(h, dt_t, dtu_t, B_t)
        ys.append(torch.matmul(C_t, h))                       # (batch, K, 1, N) @ (batch, K, N, d_inner)
    Y = torch.cat(ys, dim=2).view(batch, K * T, d_inner)     # tokens-major, padded
    y = u.new_empty(batch, d_inner, length)
    _copy_transposed(y, Y[:, :length])
    return y


#: exp(x) is subnormal in float32 below this (log of the smallest normal float32, 2**-126).
_LOG_FLOAT32_TINY = -87.3365


def _chunk_decay(dt_sum: Tensor, At: Tensor, track: bool) -> Tensor:
    """exp(Δ-sum ⊗ A) for whole chunks: (batch, k, d_inner) x (N, d_inner) -> (batch, k, N, d_inner).

    A product of T decays can be far below float32's normal range; subnormal numbers cost ~100x on x86 CPUs,
    so values that exp would return as subnormal (< 2**-126) are returned as exactly 0, as a GPU in
    flush-to-zero mode does. The dropped part of the state is below 1e-38 times its previous size.
    """
    arg = dt_sum.unsqueeze(2) * At
    if track:
        return torch.exp(arg).masked_fill(arg < _LOG_FLOAT32_TINY, 0.0)
    return torch.nn.functional.threshold_(arg, _LOG_FLOAT32_TINY, float("-inf")).exp_()
