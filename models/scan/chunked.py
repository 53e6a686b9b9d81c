"""The ``chunked`` backend: an exact selective scan in about 2·T + K Python steps instead of L (K = ⌈L/T⌉).

Split the sequence into K chunks of T steps (the last one zero-padded: Δ = 0 there, so the padding neither
decays the state nor feeds it). With x^0 the state of a chunk started from zero and S_k the true state entering
chunk k, linearity of the recurrence gives, for step t of chunk k,

    x_t = x^0_t + P_t ⊙ S_k,        P_t = exp(A · Σ_{s≤t in chunk} Δ_s)   (the decay since the chunk start)

so the scan runs in three phases:

1. intra-chunk: T sequential steps, all K chunks at once, from zero state:
   x^0_t = exp(Δ_t ⊗ A) ⊙ x^0_{t-1} + (Δ_t·u_t) ⊗ B_t;  y_t = C_t · x^0_t.
2. across chunks: K-1 sequential steps over the chunk end states E_k = x^0_{T-1}(chunk k):
   S_0 = 0,  S_{k+1} = G_k ⊙ S_k + E_k,  G_k = exp(A · Σ_{chunk k} Δ)  (the whole chunk's decay).
3. correction: T steps, all chunks at once: y_t += C_t · (P_t ⊙ S_k)   (chunk 0 has S_0 = 0 and is skipped).

Every factor is exp of a non-positive number when A ≤ 0 (as in Mamba), so nothing overflows; the result equals
the step-by-step recurrence up to float32 rounding (exp of a sum instead of a product of exps).

Layout: the work tensors are (batch, K, N, d_inner), d_inner innermost, so each step's broadcasts run along
contiguous memory and a step's working set (batch·K·N·d_inner floats) can stay in cache on a CPU. The per-step
inputs are read from tokens-major copies (batch, K, T, channels) of Δ, Δ·u, B and C. Memory: O(batch·K·N·d_inner)
for the work tensors plus O(batch·L·d_inner) for those copies; no (batch, d_inner, L, N) tensor is ever built
in the forward (under autograd each step's tensors are saved, about 3 of that size in total).

Chunk size T (``default_chunk_size``): on CUDA ⌈√L⌉, which minimises T + K kernel-launch rounds. On a CPU the
cost is dominated by memory traffic of the per-step tensors, so K is chosen to keep one (batch, K, N, d_inner)
tensor near 2**18 floats (1 MiB, so the few live ones fit in L2/L3) while T stays ≥ ⌈√L⌉/2 to bound the Python
steps; measured on a 2-core Xeon (benchmarks/test_bench_scan.py). Any T ≥ 1 gives the same result.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import finish, prepare, tracking

#: target size (floats) of one per-step work tensor on a CPU; see the module docstring.
CPU_STEP_ELEMS = 1 << 18


def default_chunk_size(batch: int, d_inner: int, length: int, d_state: int, device: torch.device) -> int:
    """The chunk length T used when none is given (see the module docstring for the reasoning)."""
    root = math.isqrt(max(length - 1, 0)) + 1  # ⌈√L⌉ for L ≥ 1
    if torch.device(device).type != "cpu":
        return max(1, min(length, root))
    per_chunk = max(1, batch * d_inner * d_state)  # floats of one chunk's state
    chunks = max(1, CPU_STEP_ELEMS // per_chunk)
    t = max(-(-length // chunks), -(-root // 2))
    return max(1, min(length, t))


def _to_chunks(x: Tensor, chunks: int, chunk: int) -> Tensor:
    """(batch, c, L) -> zero-padded tokens-major (batch, K, T, c) copy."""
    batch, channels, length = x.shape
    out = x.new_zeros(batch, chunks * chunk, channels)
    out[:, :length].copy_(x.transpose(1, 2))
    return out.view(batch, chunks, chunk, channels)


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

    def dt_at(t):   # (batch, K, 1, d_inner)
        return dtc[:, :, t].unsqueeze(2)

    def dtu_at(t):  # (batch, K, 1, d_inner)
        return dtuc[:, :, t].unsqueeze(2)

    def B_at(t):    # (batch, K, N, 1)
        return Bc[:, :, t].unsqueeze(3)

    def C_at(t):    # (batch, K, 1, N): a row vector per chunk, contracted with the (N, d_inner) state
        return Cc[:, :, t].unsqueeze(2)

    # Phase 1: intra-chunk recurrence from zero state, all chunks at once.
    h = dtu_at(0) * B_at(0)                                   # (batch, K, N, d_inner)
    ys = [torch.matmul(C_at(0), h)]                           # each (batch, K, 1, d_inner)
    decay = None if track else torch.empty_like(h)
    for t in range(1, T):
        if track:
            h = torch.exp(dt_at(t) * At) * h + dtu_at(t) * B_at(t)
        else:
            torch.mul(dt_at(t), At, out=decay).exp_()
            h.mul_(decay).addcmul_(dtu_at(t), B_at(t))
        ys.append(torch.matmul(C_at(t), h))
    Y = torch.cat(ys, dim=2)                                  # (batch, K, T, d_inner)
    if K == 1:
        return Y.view(batch, T, d_inner)[:, :length].transpose(1, 2)

    # Phase 2: states entering chunks 1..K-1. E_k = h[:, k] is chunk k's end state from zero start.
    cdt = dtc.cumsum(2)                                       # Σ_{s≤t in chunk} Δ_s, (batch, K, T, d_inner)
    G = torch.exp(cdt[:, 1:K - 1, T - 1].unsqueeze(2) * At)   # decay over chunks 1..K-2, (batch, K-2, N, d_inner)
    if track:
        states = [h[:, 0]]
        for k in range(1, K - 1):
            states.append(G[:, k - 1] * states[-1] + h[:, k])
        S = torch.stack(states, dim=1)                        # (batch, K-1, N, d_inner)
    else:
        S = h[:, :K - 1].clone()                              # S[:, k] holds E_k, becomes S_{k+1}
        for k in range(1, K - 1):
            S[:, k].addcmul_(G[:, k - 1], S[:, k - 1])

    # Phase 3: add C_t · (P_t ⊙ S_k) for chunks 1..K-1.
    if track:
        corr = [torch.matmul(C_at(t)[:, 1:], torch.exp(dt_cum * At) * S)
                for t, dt_cum in enumerate(cdt[:, 1:].unsqueeze(3).unbind(2))]
        Y = torch.cat([Y[:, :1], Y[:, 1:] + torch.cat(corr, dim=2)], dim=1)
    else:
        P = torch.empty_like(S)
        for t in range(T):
            torch.mul(cdt[:, 1:, t].unsqueeze(2), At, out=P).exp_().mul_(S)
            Y[:, 1:, t].add_(torch.matmul(C_at(t)[:, 1:], P).squeeze(2))
    return Y.view(batch, K * T, d_inner)[:, :length].transpose(1, 2)
