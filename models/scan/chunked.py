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
faster, hence 2**17 rather than 2**18 floats. Exception: when one step of the plain recurrence is already at
least half that size (batch·N·d_inner ≥ 2**16, e.g. training batches: batch 64, d_inner 128, N 16), T = L
(K = 1, the plain recurrence): chunking then only adds phase 1's work, and the per-step Python cost is small
against a step's arithmetic. Measured single-threaded on the 2-core EPYC (forward, and the backward below):
batch·N·d_inner = 2**16 and 2**17 at L = 54 and 256, T = L is 1.2-1.9x faster than K = 4..8; at 2**15 T = L is
no slower, at 2**14 (batch 1, d_inner 1024) chunking wins. Any T ≥ 1 gives the same result.

Backward (``chunked_scan_backward``, the op's backward for this backend): analytic, without autograd. With
g_t = ∂L/∂x_t, the adjoint recurrence is g_t = C_t ⊗ dy_t + Ā_{t+1} ⊙ g_{t+1} (g past the end = 0): the same
outer-product recurrence run backward in time, with inputs dy, C and the decays shifted by one step (Δ'_t =
Δ_{t+1}, 0 past the end), so phases 1 and 2 give its chunk carries too. From x and g, per step:

    ∂(Δu)_t = Σ_n g_t B_t;   ∂B_t = Σ_d g_t (Δu)_t;   ∂C_t = Σ_d x_t dy_t;
    Q_t = g_t ⊙ Ā_t ⊙ x_{t-1}:   ∂Δ_t += Σ_n Q_t A,   ∂A = Σ_{batch, t} Q_t Δ_t,

and by hand the chain rules of the prologue and epilogue (Δ·u, D, the SiLU(z) gate, delta_bias, softplus).
The states are recomputed in blocks of S steps: pass 1 runs the forward recurrence and keeps the state entering
every block (checkpoints, ⌈T/S⌉ step tensors; no pass 1 with one block); pass 2 takes the blocks last to
first, recomputes a block's x_t and Ā_t from its checkpoint (reading out y_t for the gate and ∂C_t), then runs
the block's adjoint steps. Memory: the checkpoints, 2·S + 1 step tensors for the block and
O(batch·L·(d_inner + N)) for the per-token inputs and gradients, all float32. S on a CPU: T (one block: all
states and decays stored) while a block buffer stays under 2**23 floats (32 MiB, glibc's largest mmap
threshold: larger buffers are mapped afresh on every call, and their page faults cost more than pass 1;
smaller ones can be reused), else as many steps as keep each block buffer near 2**20 floats (4 MiB, in L3);
elsewhere ⌈√T⌉. Measured single-threaded at batch 64, d_inner 128, N 16: at L = 54 one block is 7-15 %
faster than S = 8 (the same with 2 threads); at L = 366 one block is 1.6x slower than S = 8 (0.24 s of its
0.56 s in page faults). Time: about 2.5x the forward (batch 64, d_inner 128, N 16, L = 54, 2 threads: 33 ms
against 13 ms). Decays are computed as exp2(Δ ⊗ A·log2 e), about 1.8x faster than exp on an AVX2 CPU and equal up to
float32 rounding. The result equals the gradient of the sequential scan up to float32 rounding
(tests/test_scan.py checks it against autograd of a float64 recurrence).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import finish, prepare, tracking

_LOG2E = 1.4426950408889634
#: largest matrix (elements) that ``_copy_transposed`` copies with the batch in one 3-D copy.
SMALL_TRANSPOSE = 1 << 13
#: target size (floats) of one per-step work tensor on a CPU; see the module docstring.
CPU_STEP_ELEMS = 1 << 17
#: on a CPU the backward recomputes in one block (no checkpoint pass) when a block buffer stays below this many
#: floats (32 MiB), else in blocks whose buffers hold about CPU_BLOCK_ELEMS floats; see the module docstring.
CPU_ONE_BLOCK_ELEMS = 1 << 23
CPU_BLOCK_ELEMS = 1 << 20


def default_chunk_size(batch: int, d_inner: int, length: int, d_state: int, device: torch.device) -> int:
    """The chunk length T used when none is given (see the module docstring for the reasoning)."""
    root = math.isqrt(max(length - 1, 0)) + 1  # ⌈√L⌉ for L ≥ 1
    if torch.device(device).type != "cpu":
        return max(1, min(length, root))
    chunks = CPU_STEP_ELEMS // max(1, batch * d_inner * d_state)
    if chunks <= 2:  # one step of the plain recurrence is already ≥ half the target size: no chunking
        return max(1, length)
    chunks = min(max(chunks, 4), 2 * root)
    return max(1, min(length, -(-length // chunks)))


def _to_chunks(x: Tensor, chunks: int, chunk: int) -> Tensor:
    """(batch, c, L) -> zero-padded tokens-major (batch, K, T, c) copy."""
    batch, channels, length = x.shape
    out = x.new_empty(batch, chunks * chunk, channels)
    out[:, length:].zero_()  # the padding: Δ = 0 there, so it neither decays nor feeds the state
    _copy_transposed(out[:, :length], x)
    return out.view(batch, chunks, chunk, channels)


def _to_tokens(x: Tensor, chunks: int, chunk: int) -> Tensor:
    """(batch, c, L) -> zero-padded tokens-major (batch, K·T, c) copy."""
    return _to_chunks(x, chunks, chunk).view(x.shape[0], chunks * chunk, x.shape[1])


def _from_tokens(x: Tensor, length: int) -> Tensor:
    """Tokens-major (batch, K, T, c) or (batch, K·T, c) -> a new (batch, c, length) tensor of the first
    ``length`` tokens."""
    x = x.reshape(x.shape[0], -1, x.shape[-1])[:, :length]
    out = x.new_empty(x.shape[0], x.shape[2], length)
    _copy_transposed(out, x)
    return out


def _rows(x: Tensor) -> tuple[Tensor, ...]:
    """Chunked (batch, K, T, c) -> T per-step views (batch, K, 1, c)."""
    return x.unsqueeze(3).unbind(2)


def _cols(x: Tensor) -> tuple[Tensor, ...]:
    """Chunked (batch, K, T, c) -> T per-step views (batch, K, c, 1)."""
    return x.unsqueeze(4).unbind(2)


def _copy_transposed(dst: Tensor, src: Tensor) -> None:
    """dst (batch, m, n) ← src (batch, n, m) transposed.

    Large matrices: one 2-D copy per batch element, because PyTorch's CPU copy has a cache-blocked path for a
    transposed 2-D matrix (4-10x faster than the same copy done in 3-D at m·n ≈ 4·10**5). Small ones (m·n up to
    ``SMALL_TRANSPOSE``): one 3-D copy, since there the per-call cost of the loop dominates (many-batch short
    sequences: batch 64, 128 channels, L = 54 is 3x faster in one copy; measured single-threaded, both
    directions, on the 2-core EPYC; from m·n ≈ 1.6·10**4 up the loop is as fast or faster one way or the other).
    """
    if dst.shape[1] * dst.shape[2] <= SMALL_TRANSPOSE:
        dst.copy_(src.transpose(1, 2))
        return
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


def _chunking(batch: int, d_inner: int, length: int, d_state: int, device, chunk_size) -> tuple[int, int]:
    """(T, K): the chunk length (``chunk_size`` or the default, at most L) and the number of chunks ⌈L/T⌉."""
    T = chunk_size or default_chunk_size(batch, d_inner, length, d_state, device)
    if T < 1:
        raise ValueError(f"chunked_scan: chunk_size must be >= 1; got {T}")
    T = min(T, length)
    return T, -(-length // T)


def _chunked_core(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size, track: bool) -> Tensor:
    """y (batch, d_inner, L) float32 = Σ_n x_t C_t for the recurrence with Δ = dt (no D, no gate)."""
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    T, K = _chunking(batch, d_inner, length, d_state, u.device, chunk_size)

    At = A.t().contiguous()                                   # (N, d_inner)
    dtc = _to_chunks(dt, K, T)                                # (batch, K, T, d_inner)
    dtuc = _to_chunks(dt * u, K, T)
    Bc = _to_chunks(B, K, T)                                  # (batch, K, T, N)
    Cc = _to_chunks(C, K, T)
    decay = None if track else u.new_empty(batch, K, d_state, d_inner)

    # Phases 1 and 2: S_k, the state entering chunk k.
    h = _chunk_carries(dtc, dtuc, Bc, At, reverse=False, track=track)  # (batch, K, N, d_inner)

    # Phase 3: rerun every chunk from its true start state, reading out y_t = C_t · x_t.
    ys = []
    for dt_t, dtu_t, B_t, C_t in _steps(dtc, dtuc, Bc, Cc):
        if track:
            h = torch.exp(dt_t * At) * h + dtu_t * B_t
        else:
            torch.mul(dt_t, At, out=decay).exp_()
            h.mul_(decay).addcmul_(dtu_t, B_t)
        ys.append(torch.matmul(C_t.transpose(2, 3), h))      # (batch, K, 1, N) @ (batch, K, N, d_inner)
    Y = torch.cat(ys, dim=2).view(batch, K * T, d_inner)     # tokens-major, padded
    y = u.new_empty(batch, d_inner, length)
    _copy_transposed(y, Y[:, :length])
    return y


def _steps(dtc: Tensor, coefc: Tensor, vecc: Tensor, *more: Tensor) -> list[tuple[Tensor, ...]]:
    """Per-step views of chunked inputs, step t of every chunk at once: Δ_t and coef_t (batch, k, 1, d_inner),
    vec_t and each of ``more`` (batch, k, N, 1). Taken with ``unbind`` so that autograd stores one small node
    per step instead of a full-tensor index backward (which would make the backward quadratic in L)."""
    return list(zip(dtc.unsqueeze(3).unbind(2), coefc.unsqueeze(3).unbind(2),
                    *[v.unsqueeze(4).unbind(2) for v in (vecc, *more)], strict=True))


def _chunk_carries(dtc: Tensor, coefc: Tensor, vecc: Tensor, At: Tensor, reverse: bool, track: bool,
                   base2: bool = False) -> Tensor:
    """Phases 1 and 2 for h ← exp(Δ_t ⊗ A) ⊙ h + coef_t ⊗ vec_t over the chunked inputs dtc, coefc
    (batch, K, T, d_inner) and vecc (batch, K, T, N): the state entering each chunk, (batch, K, N, d_inner).

    Forward (``reverse=False``, the scan): steps t = 0..T-1 within a chunk, chunks 0..K-1, S_0 = 0,
    S_{k+1} = G_k ⊙ S_k + E_k. Reverse (the backward's adjoint scan): steps T-1..0, chunks K-1..0, S_{K-1} = 0,
    S_k = G_{k+1} ⊙ S_{k+1} + E_{k+1}; there the state "entering" chunk k is the one after its last step.
    ``base2``: At holds A·log2(e) and the decays are computed as exp2(Δ_t ⊗ At) (the backward's choice: the
    same numbers up to float32 rounding, and exp2 is about 1.8x faster than exp on an AVX2 CPU).
    """
    batch, K, T, d_inner = dtc.shape
    d_state = At.shape[0]
    if K == 1:
        return dtc.new_zeros(batch, 1, d_state, d_inner)
    # Phase 1: end states E of the chunks that feed a carry (0..K-2 forward, 1..K-1 reverse), started from zero.
    src = slice(1, K) if reverse else slice(0, K - 1)
    steps = _steps(dtc[:, src], coefc[:, src], vecc[:, src])
    if reverse:
        steps.reverse()
    decay = None if track else dtc.new_empty(batch, K - 1, d_state, d_inner)
    (_, coef_0, vec_0), *steps = steps
    e = coef_0 * vec_0                                        # (batch, K-1, N, d_inner); e[:, j] is chunk src[j]
    for dt_t, coef_t, vec_t in steps:
        if track:
            e = (torch.exp2 if base2 else torch.exp)(dt_t * At) * e + coef_t * vec_t
        else:
            torch.mul(dt_t, At, out=decay)
            e.mul_(decay.exp2_() if base2 else decay.exp_()).addcmul_(coef_t, vec_t)
    # Phase 2: G[:, j] is the whole decay of chunk j+1 (chunks 1..K-2 are the only ones a carry crosses).
    G = _chunk_decay(dtc[:, 1:K - 1].sum(2), At, track, base2)  # (batch, K-2, N, d_inner)
    zero = torch.zeros_like(e[:, :1])
    if track:
        states = [zero[:, 0], e[:, -1 if reverse else 0]]
        for j in (range(K - 3, -1, -1) if reverse else range(K - 2)):
            states.append(G[:, j] * states[-1] + e[:, j if reverse else j + 1])
        return torch.stack(states[::-1] if reverse else states, dim=1)
    if reverse:
        h = torch.cat([e, zero], dim=1)                       # S_{K-1} = 0, S_{K-2} = E_{K-1}
        for k in range(K - 3, -1, -1):
            h[:, k].addcmul_(G[:, k], h[:, k + 1])
    else:
        h = torch.cat([zero, e], dim=1)                       # S_0 = 0, S_1 = E_0
        for k in range(2, K):
            h[:, k].addcmul_(G[:, k - 2], h[:, k - 1])
    return h


def _block_size(T: int, step_elems: int, device) -> int:
    """Steps per block of the backward's recompute (see "Backward" in the module docstring)."""
    if torch.device(device).type != "cpu":
        return max(1, min(T, math.isqrt(max(T - 1, 0)) + 1))  # ⌈√T⌉
    if T * step_elems < CPU_ONE_BLOCK_ELEMS:
        return T
    return max(1, min(T, CPU_BLOCK_ELEMS // max(1, step_elems)))


#: exp(x) is subnormal in float32 below this (log of the smallest normal float32, 2**-126).
_LOG_FLOAT32_TINY = -87.3365
#: the same in base 2 (2**-126), for the backward's exp2.
_LOG2_FLOAT32_TINY = -126.0


def _chunk_decay(dt_sum: Tensor, At: Tensor, track: bool, base2: bool = False) -> Tensor:
    """exp(Δ-sum ⊗ A) for whole chunks: (batch, k, d_inner) x (N, d_inner) -> (batch, k, N, d_inner).

    A product of T decays can be far below float32's normal range; subnormal numbers cost ~100x on x86 CPUs,
    so values that exp would return as subnormal (< 2**-126) are returned as exactly 0, as a GPU in
    flush-to-zero mode does. The dropped part of the state is below 1e-38 times its previous size.
    """
    arg = dt_sum.unsqueeze(2) * At
    tiny = _LOG2_FLOAT32_TINY if base2 else _LOG_FLOAT32_TINY
    if track:
        return (torch.exp2 if base2 else torch.exp)(arg).masked_fill(arg < tiny, 0.0)
    arg = torch.nn.functional.threshold_(arg, tiny, float("-inf"))
    return arg.exp2_() if base2 else arg.exp_()


def chunked_scan_backward(grad_out: Tensor, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus: bool = True, needs=(True,) * 8, chunk_size: int | None = None,
                          block_size: int | None = None) -> list[Tensor]:
    """Analytic gradients of ``chunked_scan`` for the output gradient ``grad_out`` (batch, d_inner, L): those of
    (u, delta, A, B, C, D, z, delta_bias) whose ``needs`` flag is set and that are not None, in that order, each
    contiguous and in its input's dtype.

    See "Backward" in the module docstring. Works in place on its own buffers: call it where autograd does not
    record (the op calls it under ``torch.no_grad``). ``chunk_size`` is T as in ``chunked_scan``;
    ``block_size`` is S, the steps recomputed per block (None: the default; any S ≥ 1 gives the same result).
    Float32 inside. Memory, in step tensors of batch·K·N·d_inner floats: ⌈T/S⌉ checkpoints plus 2·S + 7 (on a
    CPU at batch 64, d_inner 128, N 16: L = 54 is one block, 2·54 + 8 of 0.5 MiB, 58 MiB; L = 366 has S = 8,
    69 of them, 35 MiB, where all states would be 192 MB), plus about 15 per-token tensors of batch·L·d_inner
    floats.
    """
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    need = {k: bool(n) and t is not None
            for k, n, t in zip(names, needs, (u, delta, A, B, C, D, z, delta_bias), strict=True)}
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    T, K = _chunking(batch, d_inner, length, d_state, u.device, chunk_size)
    need_ddt = need["delta"] or need["delta_bias"]
    need_p = need["u"] or need_ddt          # P_t = Σ_n g_t B_t, the gradient of Δ_t·u_t
    need_q = need["A"] or need_ddt          # Q_t = g_t ⊙ Ā_t ⊙ x_{t-1}, the gradient through the decay

    u32, A32, B32, C32 = u.float(), A.float(), B.float(), C.float()
    raw = delta.float()
    if delta_bias is not None:
        raw = raw + delta_bias.float().unsqueeze(-1)
    dt = F.softplus(raw) if delta_softplus else raw
    go = grad_out.float()
    z32 = None if z is None else z.float()
    dy = go if z is None else go * F.silu(z32)                # dL/dy = dL/d(out) · silu(z)

    At = A32.t().contiguous()                                 # (N, d_inner)
    At2 = At * _LOG2E                                         # decays as exp2(Δ ⊗ A·log2 e): faster than exp
    dt_flat = _to_tokens(dt, K, T)                            # (batch, K·T, d_inner), zero-padded
    dtc = dt_flat.view(batch, K, T, d_inner)
    dtuc = _to_chunks(dt * u32, K, T)
    Bc = _to_chunks(B32, K, T)                                # (batch, K, T, N)
    Cc = _to_chunks(C32, K, T)
    dyc = _to_chunks(dy, K, T)

    step = (batch, K, d_state, d_inner)                      # one step of every chunk
    S = min(T, block_size or _block_size(T, batch * K * d_state * d_inner, u.device))
    blocks = [(t0, min(t0 + S, T)) for t0 in range(0, T, S)]

    # Pass 1: the states entering each block of S steps (of every chunk): ckpt[j] = x_{j·S - 1}.
    ckpt = u32.new_empty(len(blocks), *step)
    ckpt[0] = _chunk_carries(dtc, dtuc, Bc, At2, reverse=False, track=False, base2=True)
    if len(blocks) > 1:
        h, a = ckpt[0].clone(), u32.new_empty(step)
        for t, (dt_t, dtu_t, B_t) in enumerate(zip(_rows(dtc), _rows(dtuc), _cols(Bc), strict=True)):
            if t == blocks[-1][0]:
                break
            torch.mul(dt_t, At2, out=a).exp2_()
            h.mul_(a).addcmul_(dtu_t, B_t)
            if (t + 1) % S == 0:
                ckpt[(t + 1) // S].copy_(h)
        del h, a

    # Pass 2: the adjoint scan g_t = C_t ⊗ dy_t + Ā_{t+1} ⊙ g_{t+1}, backward in time. Its chunk carries come from
    # the same recurrence run in reverse with inputs dy, C and the decays shifted by one step (Δ'_t = Δ_{t+1},
    # 0 past the end). Then block by block, last first: recompute the block's states x_t and decays Ā_t from its
    # checkpoint (reading out y_t = C_t · x_t and dC_t = Σ_d dy_t x_t on the way), and run its steps backward.
    dts_flat = torch.zeros_like(dt_flat)
    dts_flat[:, :-1] = dt_flat[:, 1:]
    dtsc = dts_flat.view(batch, K, T, d_inner)
    g = _chunk_carries(dtsc, dyc, Cc, At2, reverse=True, track=False, base2=True)  # g after a chunk's last step
    xs = u32.new_empty(S, *step)                              # x_t of the block
    ads = u32.new_empty(S + 1, *step)                         # Ā_t of the block, then Ā_{t1} of the next step
    ads[blocks[-1][1] - blocks[-1][0]].zero_()                # past a chunk's end: step 0 of the next chunk,
    if K > 1:                                                 # none for the last one (its carry is 0)
        torch.mul(dtc[:, 1:, 0].unsqueeze(2), At2, out=ads[blocks[-1][1] - blocks[-1][0], :, : K - 1]).exp2_()
    dA_acc = u32.new_zeros(step) if need["A"] else None
    tmp = u32.new_empty(step) if need_ddt else None
    ys, dCs, ps, dBs, qas = ([None] * T for _ in range(5))
    rows = list(zip(_rows(dtc), _rows(dtuc), _cols(Bc), _rows(Cc), _rows(dyc), _rows(dtsc), _cols(Cc), _rows(Bc),
                    strict=True))
    for t0, t1 in reversed(blocks):
        if t1 < T:
            ads[t1 - t0].copy_(ads[0])                        # the next block's first decay
        prev = ckpt[t0 // S]
        for i, t in enumerate(range(t0, t1)):
            dt_t, dtu_t, B_t, C_t, dy_t = rows[t][:5]
            torch.mul(dt_t, At2, out=ads[i]).exp2_()
            x_t = torch.mul(prev, ads[i], out=xs[i]).addcmul_(dtu_t, B_t)
            if need["z"]:
                ys[t] = torch.matmul(C_t, x_t)                 # y_t = C_t · x_t, (batch, K, 1, d_inner)
            if need["C"]:
                dCs[t] = torch.matmul(dy_t, x_t.transpose(2, 3))  # Σ_d dy_t x_t, (batch, K, 1, N)
            prev = x_t
        for i, t in reversed(list(enumerate(range(t0, t1)))):
            _, dtu_t, _, _, dy_t, dts_t, C_col, B_row = rows[t]
            g.mul_(ads[i + 1])                                # Ā_{t+1} ⊙ g_{t+1}
            if need_q:
                q = xs[i].mul_(g)                             # Q_{t+1} = Ā_{t+1} ⊙ g_{t+1} ⊙ x_t, over x_t
                if need["A"]:
                    dA_acc.addcmul_(q, dts_t)                 # Σ Q_{t+1} Δ_{t+1}
                if need_ddt:
                    qas[t] = torch.mul(q, At, out=tmp).sum(2)  # Σ_n Q_{t+1} A, (batch, K, d_inner)
            g.addcmul_(dy_t, C_col)                           # g_t
            if need_p:
                ps[t] = torch.matmul(B_row, g)                # Σ_n g_t B_t, (batch, K, 1, d_inner)
            if need["B"]:
                dBs[t] = torch.matmul(dtu_t, g.transpose(2, 3))  # Σ_d g_t Δ_t u_t, (batch, K, 1, N)
    del ckpt, xs, ads

    grads = {}
    if need_p:
        p = _from_tokens(torch.cat(ps, dim=2), length)              # (batch, d_inner, L)
    if need["u"]:
        grads["u"] = p * dt if D is None else torch.addcmul(p * dt, dy, D.float().unsqueeze(-1))
    if need_ddt:
        ddt = p.mul_(u32)
        qa = torch.stack(qas, dim=2)                               # slot t holds step t+1
        if length > 1:
            ddt[:, :, 1:] += _from_tokens(qa, length - 1)
        if delta_softplus:
            ddt = torch.ops.aten.softplus_backward(ddt, raw, 1, 20)
        grads["delta"] = ddt
        grads["delta_bias"] = ddt.sum((0, 2))
    if need["A"]:
        grads["A"] = dA_acc.sum((0, 1)).t()
    if need["B"]:
        grads["B"] = _from_tokens(torch.cat(dBs, dim=2), length)
    if need["C"]:
        grads["C"] = _from_tokens(torch.cat(dCs, dim=2), length)
    if need["D"]:
        grads["D"] = (dy * u32).sum((0, 2))
    if need["z"]:
        y = _from_tokens(torch.cat(ys, dim=2), length)
        if D is not None:
            y.addcmul_(u32, D.float().unsqueeze(-1))
        grads["z"] = torch.ops.aten.silu_backward(y.mul_(go), z32)      # · d silu(z)/dz
    inputs = dict(zip(names, (u, delta, A, B, C, D, z, delta_bias), strict=True))
    return [grads[k].to(inputs[k].dtype).contiguous() for k in names if need[k]]
