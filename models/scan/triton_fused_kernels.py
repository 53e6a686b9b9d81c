"""Triton kernels of the ``triton`` scan backend (design, launch code and reasons in ``triton_fused``).

Never imported directly: ``triton_fused`` loads this file through ``triton_runtime.load_kernels`` in the mode
triton itself was imported in (``@triton.jit`` decides at decoration time whether to interpret).

The tile. One program owns the batch element ``b`` and ``BD`` channels (``BD·LANES = 32·num_warps`` threads) and
walks the sequence in chunks of ``BT = LANES·TE`` steps. In a chunk, lane ``l`` of a channel holds the ``TE``
consecutive steps ``l·TE .. l·TE + TE - 1`` in registers: a (BD, BT) tensor whose Triton layout is the blocked
layout sizePerThread [1, TE], LANES threads along time. So ``tl.associative_scan`` along time is a sequential scan
inside each thread, then log2(LANES) shuffle rounds, then one fix-up per element; and channel work (softplus,
gate) is never repeated per state. Triton's coalescer would give a load at most 16 bytes per thread with lanes
interleaved along time, and its scan needs a blocked layout: so a tile is assembled from ``TE`` loads of pieces
(``_tile``: one step per thread each, piece ``e`` holding step ``l·TE + e``) joined in a tree whose last
``tl.join`` splits the lowest bit of ``e``: reshaped, that is the layout above, at no cost in registers (checked
in the TTGIR by the tests: sizePerThread = [1, TE]). A piece is loaded through (BD·LANES,) pointers, thread i
being channel i // LANES and lane i % LANES, then reshaped to (BD, LANES): a 1-D load gets the same layout from
Triton 3.6 and 3.8, a 2-D one's depends on how the coalescer orders two non-contiguous axes, and they differ. B
and C come from the launcher's float32 copy padded to whole chunks (aligned, no masks): TE/4 16-byte loads per
thread (``_tile_vec``), joined the same way. ``_pieces``/``_whole`` are the inverse: a tile's pieces, for taking
one step of each thread (the chunk's last state, the adjoint at its first) and for the backward's in-lane
recurrences (``_rev_total``, ``_rev_from``). ``_tile``, ``_pieces`` and the like are written out flat per TE
(4, 8, 16): Triton's interpreter pays for every nested jit call.

Decays are ``exp2(Δ·A2)`` with A2 = A·log2(e) (one MUFU.EX2 each). Per chunk and state n, a program does one scan;
the state entering the chunk is folded into the first step's input (``x_0 = a_0·s + b_0``), so the scan's decay
products are never needed outside it, and the state leaving the chunk is written to ``S`` (the launcher's
(batch, K, D, N) float32 chunk states, kept for the backward) and read back by the next chunk after a barrier.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


# --------------------------------------------------------------------------------------- tiles and pieces

@triton.jit
def _tile(p, stride_t, m, rem, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """(BD, LANES·TE) float32 tile: TE loads of pieces, one step per thread each (piece e at ``p + e·stride_t``,
    ``p`` the (BD·LANES,) pointers of the lanes' first steps, ``rem`` their steps left before L, ``m`` their
    channels' mask), joined in the tree described in the module docstring; 0 outside. Written out flat: nested
    helper calls are what makes Triton's interpreter slow."""
    if TE == 16:
        x0 = tl.reshape(tl.load(p + 0 * stride_t, mask=m & (rem > 0), other=0.0), (BD, LANES))
        x1 = tl.reshape(tl.load(p + 1 * stride_t, mask=m & (rem > 1), other=0.0), (BD, LANES))
        x2 = tl.reshape(tl.load(p + 2 * stride_t, mask=m & (rem > 2), other=0.0), (BD, LANES))
        x3 = tl.reshape(tl.load(p + 3 * stride_t, mask=m & (rem > 3), other=0.0), (BD, LANES))
        x4 = tl.reshape(tl.load(p + 4 * stride_t, mask=m & (rem > 4), other=0.0), (BD, LANES))
        x5 = tl.reshape(tl.load(p + 5 * stride_t, mask=m & (rem > 5), other=0.0), (BD, LANES))
        x6 = tl.reshape(tl.load(p + 6 * stride_t, mask=m & (rem > 6), other=0.0), (BD, LANES))
        x7 = tl.reshape(tl.load(p + 7 * stride_t, mask=m & (rem > 7), other=0.0), (BD, LANES))
        x8 = tl.reshape(tl.load(p + 8 * stride_t, mask=m & (rem > 8), other=0.0), (BD, LANES))
        x9 = tl.reshape(tl.load(p + 9 * stride_t, mask=m & (rem > 9), other=0.0), (BD, LANES))
        x10 = tl.reshape(tl.load(p + 10 * stride_t, mask=m & (rem > 10), other=0.0), (BD, LANES))
        x11 = tl.reshape(tl.load(p + 11 * stride_t, mask=m & (rem > 11), other=0.0), (BD, LANES))
        x12 = tl.reshape(tl.load(p + 12 * stride_t, mask=m & (rem > 12), other=0.0), (BD, LANES))
        x13 = tl.reshape(tl.load(p + 13 * stride_t, mask=m & (rem > 13), other=0.0), (BD, LANES))
        x14 = tl.reshape(tl.load(p + 14 * stride_t, mask=m & (rem > 14), other=0.0), (BD, LANES))
        x15 = tl.reshape(tl.load(p + 15 * stride_t, mask=m & (rem > 15), other=0.0), (BD, LANES))
        j1 = tl.join(x0, x8)
        j2 = tl.join(x4, x12)
        j3 = tl.join(j1, j2)
        j4 = tl.join(x2, x10)
        j5 = tl.join(x6, x14)
        j6 = tl.join(j4, j5)
        j7 = tl.join(j3, j6)
        j8 = tl.join(x1, x9)
        j9 = tl.join(x5, x13)
        j10 = tl.join(j8, j9)
        j11 = tl.join(x3, x11)
        j12 = tl.join(x7, x15)
        j13 = tl.join(j11, j12)
        j14 = tl.join(j10, j13)
        x = tl.join(j7, j14)
    elif TE == 8:
        x0 = tl.reshape(tl.load(p + 0 * stride_t, mask=m & (rem > 0), other=0.0), (BD, LANES))
        x1 = tl.reshape(tl.load(p + 1 * stride_t, mask=m & (rem > 1), other=0.0), (BD, LANES))
        x2 = tl.reshape(tl.load(p + 2 * stride_t, mask=m & (rem > 2), other=0.0), (BD, LANES))
        x3 = tl.reshape(tl.load(p + 3 * stride_t, mask=m & (rem > 3), other=0.0), (BD, LANES))
        x4 = tl.reshape(tl.load(p + 4 * stride_t, mask=m & (rem > 4), other=0.0), (BD, LANES))
        x5 = tl.reshape(tl.load(p + 5 * stride_t, mask=m & (rem > 5), other=0.0), (BD, LANES))
        x6 = tl.reshape(tl.load(p + 6 * stride_t, mask=m & (rem > 6), other=0.0), (BD, LANES))
        x7 = tl.reshape(tl.load(p + 7 * stride_t, mask=m & (rem > 7), other=0.0), (BD, LANES))
        j1 = tl.join(x0, x4)
        j2 = tl.join(x2, x6)
        j3 = tl.join(j1, j2)
        j4 = tl.join(x1, x5)
        j5 = tl.join(x3, x7)
        j6 = tl.join(j4, j5)
        x = tl.join(j3, j6)
    else:
        tl.static_assert(TE == 4, "TE must be 4, 8 or 16")
        x0 = tl.reshape(tl.load(p + 0 * stride_t, mask=m & (rem > 0), other=0.0), (BD, LANES))
        x1 = tl.reshape(tl.load(p + 1 * stride_t, mask=m & (rem > 1), other=0.0), (BD, LANES))
        x2 = tl.reshape(tl.load(p + 2 * stride_t, mask=m & (rem > 2), other=0.0), (BD, LANES))
        x3 = tl.reshape(tl.load(p + 3 * stride_t, mask=m & (rem > 3), other=0.0), (BD, LANES))
        j1 = tl.join(x0, x2)
        j2 = tl.join(x1, x3)
        x = tl.join(j1, j2)
    return tl.reshape(x, (BD, LANES * TE)).to(tl.float32)


@triton.jit
def _tile_vec(row, lt, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """``_tile`` of an aligned float32 row padded to whole chunks, the same for every channel (no masks):
    16-byte loads of 4 steps from the lanes' first steps ``lt`` (BD·LANES,), joined as (.., TE/4, 4) with
    the vector axis last (the join axis is moved above it)."""
    p = row + lt[:, None] + tl.arange(0, 4)[None, :]
    if TE == 16:
        q0 = tl.reshape(tl.load(p + 0), (BD, LANES, 4))
        q1 = tl.reshape(tl.load(p + 4), (BD, LANES, 4))
        q2 = tl.reshape(tl.load(p + 8), (BD, LANES, 4))
        q3 = tl.reshape(tl.load(p + 12), (BD, LANES, 4))
        h0 = tl.reshape(tl.permute(tl.join(q0, q1), (0, 1, 3, 2)), (BD, LANES, 8))
        h1 = tl.reshape(tl.permute(tl.join(q2, q3), (0, 1, 3, 2)), (BD, LANES, 8))
        x = tl.reshape(tl.permute(tl.join(h0, h1), (0, 1, 3, 2)), (BD, LANES, 16))
    elif TE == 8:
        q0 = tl.reshape(tl.load(p + 0), (BD, LANES, 4))
        q1 = tl.reshape(tl.load(p + 4), (BD, LANES, 4))
        x = tl.reshape(tl.permute(tl.join(q0, q1), (0, 1, 3, 2)), (BD, LANES, 8))
    else:
        tl.static_assert(TE == 4, "TE must be 4, 8 or 16")
        q0 = tl.reshape(tl.load(p + 0), (BD, LANES, 4))
        x = q0
    return tl.reshape(x, (BD, LANES * TE))


@triton.jit
def _pieces(x, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """The TE (BD, LANES) pieces of a tile, in step order (a tuple; registers only: the splits that invert
    ``_tile``'s joins)."""
    if TE == 16:
        s0 = tl.reshape(x, (BD, LANES, 2, 2, 2, 2))
        s1, s2 = tl.split(s0)
        s3, s4 = tl.split(s1)
        s5, s6 = tl.split(s3)
        s7, s8 = tl.split(s5)
        s9, s10 = tl.split(s6)
        s11, s12 = tl.split(s4)
        s13, s14 = tl.split(s11)
        s15, s16 = tl.split(s12)
        s17, s18 = tl.split(s2)
        s19, s20 = tl.split(s17)
        s21, s22 = tl.split(s19)
        s23, s24 = tl.split(s20)
        s25, s26 = tl.split(s18)
        s27, s28 = tl.split(s25)
        s29, s30 = tl.split(s26)
        p = (s7, s21, s13, s27, s9, s23, s15, s29, s8, s22, s14, s28, s10, s24, s16, s30)
    elif TE == 8:
        s0 = tl.reshape(x, (BD, LANES, 2, 2, 2))
        s1, s2 = tl.split(s0)
        s3, s4 = tl.split(s1)
        s5, s6 = tl.split(s3)
        s7, s8 = tl.split(s4)
        s9, s10 = tl.split(s2)
        s11, s12 = tl.split(s9)
        s13, s14 = tl.split(s10)
        p = (s5, s11, s7, s13, s6, s12, s8, s14)
    else:
        tl.static_assert(TE == 4, "TE must be 4, 8 or 16")
        s0 = tl.reshape(x, (BD, LANES, 2, 2))
        s1, s2 = tl.split(s0)
        s3, s4 = tl.split(s1)
        s5, s6 = tl.split(s2)
        p = (s3, s5, s4, s6)
    return p


@triton.jit
def _whole(p, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """The tile of TE pieces (the inverse of ``_pieces``)."""
    if TE == 16:
        j1 = tl.join(p[0], p[8])
        j2 = tl.join(p[4], p[12])
        j3 = tl.join(j1, j2)
        j4 = tl.join(p[2], p[10])
        j5 = tl.join(p[6], p[14])
        j6 = tl.join(j4, j5)
        j7 = tl.join(j3, j6)
        j8 = tl.join(p[1], p[9])
        j9 = tl.join(p[5], p[13])
        j10 = tl.join(j8, j9)
        j11 = tl.join(p[3], p[11])
        j12 = tl.join(p[7], p[15])
        j13 = tl.join(j11, j12)
        j14 = tl.join(j10, j13)
        x = tl.join(j7, j14)
    elif TE == 8:
        j1 = tl.join(p[0], p[4])
        j2 = tl.join(p[2], p[6])
        j3 = tl.join(j1, j2)
        j4 = tl.join(p[1], p[5])
        j5 = tl.join(p[3], p[7])
        j6 = tl.join(j4, j5)
        x = tl.join(j3, j6)
    else:
        tl.static_assert(TE == 4, "TE must be 4, 8 or 16")
        j1 = tl.join(p[0], p[2])
        j2 = tl.join(p[1], p[3])
        x = tl.join(j1, j2)
    return tl.reshape(x, (BD, LANES * TE))


@triton.jit
def _rev_total(a, nxt, c, TE: tl.constexpr):
    """A lane's share of the adjoint, from a zero start: (Π_e a_(e+1), G) with G = c_0 + a_1·(c_1 + a_2·(..
    c_(TE-1))), the adjoint at the lane's first step if none entered after its last; a_TE = ``nxt`` (the
    step after the lane's last). Pieces in, (BD, LANES) out."""
    if TE == 16:
        G = c[15]
        A = nxt
        G = c[14] + a[15] * G
        A = a[15] * A
        G = c[13] + a[14] * G
        A = a[14] * A
        G = c[12] + a[13] * G
        A = a[13] * A
        G = c[11] + a[12] * G
        A = a[12] * A
        G = c[10] + a[11] * G
        A = a[11] * A
        G = c[9] + a[10] * G
        A = a[10] * A
        G = c[8] + a[9] * G
        A = a[9] * A
        G = c[7] + a[8] * G
        A = a[8] * A
        G = c[6] + a[7] * G
        A = a[7] * A
        G = c[5] + a[6] * G
        A = a[6] * A
        G = c[4] + a[5] * G
        A = a[5] * A
        G = c[3] + a[4] * G
        A = a[4] * A
        G = c[2] + a[3] * G
        A = a[3] * A
        G = c[1] + a[2] * G
        A = a[2] * A
        G = c[0] + a[1] * G
        A = a[1] * A
    elif TE == 8:
        G = c[7]
        A = nxt
        G = c[6] + a[7] * G
        A = a[7] * A
        G = c[5] + a[6] * G
        A = a[6] * A
        G = c[4] + a[5] * G
        A = a[5] * A
        G = c[3] + a[4] * G
        A = a[4] * A
        G = c[2] + a[3] * G
        A = a[3] * A
        G = c[1] + a[2] * G
        A = a[2] * A
        G = c[0] + a[1] * G
        A = a[1] * A
    else:
        G = c[3]
        A = nxt
        G = c[2] + a[3] * G
        A = a[3] * A
        G = c[1] + a[2] * G
        A = a[2] * A
        G = c[0] + a[1] * G
        A = a[1] * A
    return A, G


@triton.jit
def _rev_from(a, nxt, c, g_end, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """The adjoint g_e = c_e + a_(e+1)·g_(e+1) over each lane, from g_TE = ``g_end`` (BD, LANES), the adjoint
    entering the lane from the right: (the tile, its first piece)."""
    if TE == 16:
        g15 = c[15] + nxt * g_end
        g14 = c[14] + a[15] * g15
        g13 = c[13] + a[14] * g14
        g12 = c[12] + a[13] * g13
        g11 = c[11] + a[12] * g12
        g10 = c[10] + a[11] * g11
        g9 = c[9] + a[10] * g10
        g8 = c[8] + a[9] * g9
        g7 = c[7] + a[8] * g8
        g6 = c[6] + a[7] * g7
        g5 = c[5] + a[6] * g6
        g4 = c[4] + a[5] * g5
        g3 = c[3] + a[4] * g4
        g2 = c[2] + a[3] * g3
        g1 = c[1] + a[2] * g2
        g0 = c[0] + a[1] * g1
        j1 = tl.join(g0, g8)
        j2 = tl.join(g4, g12)
        j3 = tl.join(j1, j2)
        j4 = tl.join(g2, g10)
        j5 = tl.join(g6, g14)
        j6 = tl.join(j4, j5)
        j7 = tl.join(j3, j6)
        j8 = tl.join(g1, g9)
        j9 = tl.join(g5, g13)
        j10 = tl.join(j8, j9)
        j11 = tl.join(g3, g11)
        j12 = tl.join(g7, g15)
        j13 = tl.join(j11, j12)
        j14 = tl.join(j10, j13)
        x = tl.join(j7, j14)
    elif TE == 8:
        g7 = c[7] + nxt * g_end
        g6 = c[6] + a[7] * g7
        g5 = c[5] + a[6] * g6
        g4 = c[4] + a[5] * g5
        g3 = c[3] + a[4] * g4
        g2 = c[2] + a[3] * g3
        g1 = c[1] + a[2] * g2
        g0 = c[0] + a[1] * g1
        j1 = tl.join(g0, g4)
        j2 = tl.join(g2, g6)
        j3 = tl.join(j1, j2)
        j4 = tl.join(g1, g5)
        j5 = tl.join(g3, g7)
        j6 = tl.join(j4, j5)
        x = tl.join(j3, j6)
    else:
        g3 = c[3] + nxt * g_end
        g2 = c[2] + a[3] * g3
        g1 = c[1] + a[2] * g2
        g0 = c[0] + a[1] * g1
        j1 = tl.join(g0, g2)
        j2 = tl.join(g1, g3)
        x = tl.join(j1, j2)
    return tl.reshape(x, (BD, LANES * TE)), g0


@triton.jit
def _bcast(p, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """(BD, LANES) -> (BD, LANES·TE): every step of a lane gets the lane's value."""
    x = tl.join(p, p)
    x = tl.join(x, x)
    if TE >= 8:
        x = tl.join(x, x)
    if TE == 16:
        x = tl.join(x, x)
    return tl.reshape(x, (BD, LANES * TE))


# ----------------------------------------------------------------------------------------------- math

@triton.jit
def _fwd_op(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2): x -> a2·(a1·x + b1) + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(raw):
    """(softplus(raw), e = exp(-|raw|)): max(raw, 0) + log1p(e) with log1p(e) = 2·atanh(s), s = e / (2 + e) ≤ 1/3,
    by its odd series to s^13 (relative error < 1e-8): one exp and one division, no log. Equal to raw above 20,
    as torch's threshold: log1p(e) < 4.2e-9 is below half an ulp of raw there."""
    e = tl.exp2(-tl.abs(raw) * LOG2E)
    s = e / (2.0 + e)
    s2 = s * s
    p = 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    p = p * s2 + 1.0
    return tl.maximum(raw, 0.0) + 2.0 * s * p, e


@triton.jit
def _delta(raw, SOFTPLUS: tl.constexpr):
    if SOFTPLUS:
        dt, e = _softplus(raw)
    else:
        dt = raw
    return dt


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp2(-x * LOG2E))


# ----------------------------------------------------------------------------------------------- forward

@triton.jit
def _chan(ptr, i_d, m, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """A per-channel float32 value at ``ptr + i_d`` as a tile (every step of a channel gets it); ``i_d`` the
    (BD·LANES,) channel offsets of the threads, ``m`` their mask."""
    return _bcast(tl.reshape(tl.load(ptr + i_d, mask=m, other=0.0), (BD, LANES)), BD, LANES, TE)


@triton.jit
def scan_fwd_kernel(u_ptr, delta_ptr, z_ptr, out_ptr, A2_ptr, BC_ptr, Dp_ptr, bias_ptr, S_ptr,
                    su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t,
                    D, L, K, LP,
                    N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """out = selective scan of (u, Δ, A, B, C) (+ D·u) (· silu(z)), written contiguous (batch, D, L) in out's
    dtype; S (batch, K, D, N) float32 gets the state entering every chunk (chunk 0: zeros). Grid
    (batch, ⌈D / BD⌉). BC: (batch, 2, N, LP) float32, B then C, zero beyond L; A2 (D, N) = A·log2(e).

    Per-thread quantities are computed on (BD·LANES,) vectors (thread i: channel i // LANES, lane i % LANES) and
    reshaped: a 1-D load gets the same layout from every Triton version, a 2-D one's depends on how its coalescer
    orders two non-contiguous axes (3.6 and 3.8 differ)."""
    BT: tl.constexpr = LANES * TE
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BD * LANES)
    i_d = tl.program_id(1) * BD + i // LANES               # each thread's channel
    i_l = i % LANES                                        # and lane
    m = i_d < D
    last = m & (i_l == LANES - 1)
    step = tl.arange(0, BT)[None, :]
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    if HAS_BIAS:
        bias = _chan(bias_ptr, i_d, m, BD, LANES, TE)
    else:
        bias = 0.0
    if HAS_D:
        Dv = _chan(Dp_ptr, i_d, m, BD, LANES, TE)
    else:
        Dv = 0.0
    u_p = u_ptr + b * su_b + i_d * su_d
    dl_p = delta_ptr + b * sd_b + i_d * sd_d
    z_p = z_ptr + b * sz_b + i_d * sz_d
    o_row = out_ptr + (b * D + d) * L
    B_row = BC_ptr + b * 2 * N * LP
    C_row = B_row + N * LP
    # chunk states, (b, k, d, n): the last lane stores a chunk's end; every lane of the channel loads it back
    S_p = S_ptr + (b * K * D + i_d) * N
    for n in range(0, N):
        tl.store(S_p + n, tl.zeros([BD * LANES], tl.float32), mask=last)
    for k in range(0, K):
        lt = k * BT + i_l * TE                             # each lane's first step
        rem = L - lt
        dt = _delta(_tile(dl_p + lt * sd_t, sd_t, m, rem, BD, LANES, TE) + bias, SOFTPLUS)
        uu = _tile(u_p + lt * su_t, su_t, m, rem, BD, LANES, TE)
        du = dt * uu
        y = tl.zeros([BD, BT], tl.float32)
        tl.debug_barrier()   # the states chunk k - 1 wrote (other lanes) are visible
        for n in range(0, N):
            a = tl.exp2(dt * _chan(A2_ptr + n, i_d * N, m, BD, LANES, TE))
            bx = du * _tile_vec(B_row + n * LP, lt, BD, LANES, TE)
            s_in = _chan(S_p + (k * D * N + n), 0, m, BD, LANES, TE)
            bx = tl.where(step == 0, a * s_in + bx, bx)
            _, x = tl.associative_scan((a, bx), axis=1, combine_fn=_fwd_op)
            y += x * _tile_vec(C_row + n * LP, lt, BD, LANES, TE)
            end = tl.reshape(_pieces(x, BD, LANES, TE)[TE - 1], (BD * LANES,))
            tl.store(S_p + ((k + 1) * D * N + n), end, mask=last & (k + 1 < K))
        if HAS_D:
            y += Dv * uu
        if HAS_Z:
            zz = _tile(z_p + lt * sz_t, sz_t, m, rem, BD, LANES, TE)
            y = y * zz * _sigmoid(zz)
        ts = k * BT + step
        tl.store(o_row[:, None] + ts, y.to(out_ptr.dtype.element_ty), mask=(d < D)[:, None] & (ts < L))


# ----------------------------------------------------------------------------------------------- backward

@triton.jit
def scan_bwd_kernel(u_ptr, delta_ptr, z_ptr, go_ptr, A2_ptr, BC_ptr, Dp_ptr, bias_ptr, S_ptr, H_ptr,
                    du_ptr, ddelta_ptr, dz_ptr, dBC_ptr, dA_ptr, dD_ptr, dbias_ptr,
                    su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t, sg_b, sg_d, sg_t,
                    D, L, K, LP,
                    N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, DETERMINISTIC: tl.constexpr,
                    BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """Gradients of ``scan_fwd_kernel``, chunks from last to first; grid (batch, ⌈D / BD⌉).

    Per chunk and state n: the forward scan again from the saved S (x_t), and the reverse scan of the adjoint
    g_t = C_t·dy_t + a_{t+1}·g_{t+1} (dy = go·silu(z)): ``_rev_lane`` in each lane (one extra exp per lane,
    for the step after its last), then the lanes combined from the last down with shuffles (``tl.gather``: Triton's
    reverse scan flips the tile through ~15 shuffles per element), the adjoint entering from the next chunk
    standing for a lane after the last. With Q_t = g_t·a_t·x_{t-1} = g_t·(x_t - b_t):
      du = Δ·Σ_n g B + D·dy;  dΔ = (u·Σ_n g B + Σ_n Q A)·softplus'(raw);  dA_n = Σ_t Q Δ;
      dB_t = Σ_d g Δ u;  dC_t = Σ_d x dy;  dD = Σ_t dy u;  dbias = Σ_t dΔ;  dz = go·(y + D u)·silu'(z).
    dB and dC are summed over the program's channels first, then added atomically to dBC (batch, 2, N, LP), or,
    if DETERMINISTIC, stored to this channel block's slice of dBC (⌈D / BD⌉, batch, 2, N, LP) for a reduction in
    a fixed order. dA, dD, dbias are partials accumulated in a fixed order (chunks in turn) without atomics: dA per
    (batch, channel, state, lane) (batch, D, N, LANES), dD and dbias per (batch, channel) (batch, D). H (batch, 2,
    D, N) float32 holds the adjoint at the first step of the chunk just done, in two slots by chunk parity."""
    BT: tl.constexpr = LANES * TE
    b = tl.program_id(0).to(tl.int64)
    pd = tl.program_id(1)
    i = tl.arange(0, BD * LANES)
    i_d = pd * BD + i // LANES                             # each thread's channel and lane (see the forward)
    i_l = i % LANES
    m = i_d < D
    first = m & (i_l == 0)
    step = tl.arange(0, BT)[None, :]
    d = pd * BD + tl.arange(0, BD)
    md = d < D
    if HAS_BIAS:
        bias_p = tl.reshape(tl.load(bias_ptr + i_d, mask=m, other=0.0), (BD, LANES))
        bias = _bcast(bias_p, BD, LANES, TE)
    else:
        bias_p = 0.0
        bias = 0.0
    if HAS_D:
        Dv = _chan(Dp_ptr, i_d, m, BD, LANES, TE)
    else:
        Dv = 0.0
    u_p = u_ptr + b * su_b + i_d * su_d
    dl_p = delta_ptr + b * sd_b + i_d * sd_d
    z_p = z_ptr + b * sz_b + i_d * sz_d
    g_p = go_ptr + b * sg_b + i_d * sg_d
    o_off = (b * D + d) * L
    B_row = BC_ptr + b * 2 * N * LP
    C_row = B_row + N * LP
    if DETERMINISTIC:
        dB_base = dBC_ptr + (pd * tl.num_programs(0) + b) * 2 * N * LP
    else:
        dB_base = dBC_ptr + b * 2 * N * LP
    S_p = S_ptr + (b * K * D + i_d) * N
    H_p = H_ptr + (b * 2 * D + i_d) * N
    dA_p = dA_ptr + ((b * D + i_d) * N) * LANES + i_l       # per-lane partials (batch, D, N, LANES)
    lane2 = tl.reshape(i_l, (BD, LANES))
    not_last = lane2 < LANES - 1
    right = tl.minimum(lane2 + 1, LANES - 1)
    dD_acc = tl.zeros([BD], tl.float32)
    dbias_acc = tl.zeros([BD], tl.float32)
    for n in range(0, N):
        tl.store(dA_p + n * LANES, tl.zeros([BD * LANES], tl.float32), mask=m)
    for i in range(0, K):
        k = K - 1 - i
        lt = k * BT + i_l * TE                             # each lane's first step
        rem = L - lt
        raw = _tile(dl_p + lt * sd_t, sd_t, m, rem, BD, LANES, TE) + bias
        # Δ at the step after each lane's last (the next lane's first; the next chunk's for the last lane)
        raw_next = tl.reshape(tl.load(dl_p + (lt + TE) * sd_t, mask=m & (rem > TE), other=0.0),
                              (BD, LANES)).to(tl.float32) + bias_p
        dt = _delta(raw, SOFTPLUS)
        dt_next = _delta(raw_next, SOFTPLUS)
        go = _tile(g_p + lt * sg_t, sg_t, m, rem, BD, LANES, TE)
        if HAS_Z:
            zz = _tile(z_p + lt * sz_t, sz_t, m, rem, BD, LANES, TE)
            dy = go * zz * _sigmoid(zz)
        else:
            dy = go
        du = dt * _tile(u_p + lt * su_t, su_t, m, rem, BD, LANES, TE)
        # Live through the state loop: Δ, Δu, dy and three sums; what only the chunk's end needs is loaded again
        # then (from the cache), not held in registers.
        y = tl.zeros([BD, BT], tl.float32)        # Σ_n C x, for dz
        gB = tl.zeros([BD, BT], tl.float32)       # Σ_n g B
        qA = tl.zeros([BD, BT], tl.float32)       # Σ_n Q A2
        tl.debug_barrier()   # H of chunk k + 1 is visible to every lane
        for n in range(0, N):
            A2p = tl.reshape(tl.load(A2_ptr + n + i_d * N, mask=m, other=0.0), (BD, LANES))
            A2n = _bcast(A2p, BD, LANES, TE)
            a = tl.exp2(dt * A2n)
            Bn = _tile_vec(B_row + n * LP, lt, BD, LANES, TE)
            bx = du * Bn
            s_in = _chan(S_p + (k * D * N + n), 0, m, BD, LANES, TE)
            _, x = tl.associative_scan((a, tl.where(step == 0, a * s_in + bx, bx)), axis=1, combine_fn=_fwd_op)
            Cn = _tile_vec(C_row + n * LP, lt, BD, LANES, TE)
            y += x * Cn
            # The adjoint, backward in time: each lane's share from a zero start (registers), the lanes' (product,
            # sum) pairs combined from the last lane down (gathers: one shuffle each; the adjoint entering the
            # chunk from the next stands for a lane after the last), then each lane again from what enters it.
            ap = _pieces(a, BD, LANES, TE)
            cp = _pieces(dy * Cn, BD, LANES, TE)
            a_nxt = tl.exp2(dt_next * A2p)
            eA, eG = _rev_total(ap, a_nxt, cp, TE)
            g_in = tl.reshape(tl.load(H_p + (((k + 1) & 1) * D * N + n), mask=m & (k + 1 < K), other=0.0),
                              (BD, LANES))
            eA = tl.where(not_last, tl.gather(eA, right, axis=1), 1.0)
            eG = tl.where(not_last, tl.gather(eG, right, axis=1), g_in)
            for r in tl.static_range(5):
                if (1 << r) < LANES:
                    ok = lane2 + (1 << r) < LANES
                    j = tl.minimum(lane2 + (1 << r), LANES - 1)
                    gA = tl.gather(eA, j, axis=1)
                    gG = tl.gather(eG, j, axis=1)
                    eG = tl.where(ok, eG + eA * gG, eG)
                    eA = tl.where(ok, eA * gA, eA)
            g, g0 = _rev_from(ap, a_nxt, cp, eG, BD, LANES, TE)
            tl.store(H_p + ((k & 1) * D * N + n), tl.reshape(g0, (BD * LANES,)), mask=first)
            gB += g * Bn
            q = g * (x - bx)                              # g_t·a_t·x_(t-1)
            qA += q * A2n
            # dA_n = Σ_t Q Δ: summed in each thread, the lanes' partials kept apart (summed by the launcher)
            dA_lane = tl.reshape(tl.sum(tl.reshape(q * dt, (BD, LANES, TE)), axis=2), (BD * LANES,))
            tl.store(dA_p + n * LANES, tl.load(dA_p + n * LANES, mask=m, other=0.0) + dA_lane, mask=m)
            # dB and dC together: one reduction over the program's channels, then one add (or store) of both.
            dBC_t = tl.sum(tl.join(g * du, x * dy), axis=0)                        # (BT, 2)
            dB_p = dB_base + (n * LP + k * BT) + tl.arange(0, BT)
            dBC_p = tl.join(dB_p, dB_p + N * LP)                                  # B's row, C's row
            if DETERMINISTIC:
                tl.store(dBC_p, dBC_t)
            else:
                tl.atomic_add(dBC_p, dBC_t, sem="relaxed")
        uu = _tile(u_p + lt * su_t, su_t, m, rem, BD, LANES, TE)
        if SOFTPLUS:
            raw = _tile(dl_p + lt * sd_t, sd_t, m, rem, BD, LANES, TE) + bias
            e = tl.exp2(-tl.abs(raw) * LOG2E)
            ddt = (gB * uu + qA * LN2) * (tl.where(raw >= 0.0, 1.0, e) / (1.0 + e))   # softplus' = sigmoid
        else:
            ddt = gB * uu + qA * LN2
        ts = k * BT + step
        m2 = md[:, None] & (ts < L)
        tl.store(du_ptr + o_off[:, None] + ts, (gB * dt + Dv * dy).to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddelta_ptr + o_off[:, None] + ts, ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
        if HAS_Z:
            zz = _tile(z_p + lt * sz_t, sz_t, m, rem, BD, LANES, TE)
            sig = _sigmoid(zz)
            go = _tile(g_p + lt * sg_t, sg_t, m, rem, BD, LANES, TE)
            dz = go * (y + Dv * uu) * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + o_off[:, None] + ts, dz.to(dz_ptr.dtype.element_ty), mask=m2)
        dD_acc += tl.sum(dy * uu, axis=1)
        dbias_acc += tl.sum(tl.where(m2, ddt, 0.0), axis=1)
    tl.store(dD_ptr + b * D + d, dD_acc, mask=md)
    tl.store(dbias_ptr + b * D + d, dbias_acc, mask=md)
