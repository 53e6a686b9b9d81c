"""Triton kernels of the ``triton`` scan backend (design, launch code and reasons in ``triton_fused``).

Never imported directly: ``triton_fused`` loads this file through ``triton_runtime.load_kernels`` in the mode
triton itself was imported in (``@triton.jit`` decides at decoration time whether to interpret).

The tile. One program owns the batch element ``b`` and ``BD`` channels, one warp per channel (``num_warps = BD``),
and walks the sequence in chunks of ``BT = LANES·TE`` steps. In a chunk, lane ``l`` of a channel's warp holds the
``TE`` consecutive steps ``l·TE .. l·TE + TE - 1`` in registers: a (BD, BT) tensor whose Triton layout is the
blocked layout sizePerThread [1, TE], threadsPerWarp [1, LANES], warpsPerCTA [BD, 1]. So ``tl.associative_scan``
along time is a sequential scan inside each thread, then log2(LANES) shuffle rounds, then one fix-up per element;
and channel work (softplus, gate) is never repeated per state. Triton's coalescer would give a load at most 16
bytes per thread, lanes interleaved along time, and its scan needs a blocked layout: so a tile is assembled from
``TE`` loads of (BD, LANES) pieces (``_tile``: one element per thread each, piece ``e`` holding step ``l·TE + e``)
joined in a tree whose last ``tl.join`` splits the lowest bit of ``e``: reshaped, that is the layout above, at no
cost in registers (checked in the TTGIR by benchmarks/scan_static.py and tests: sizePerThread = [1, TE]). B and C
come from the launcher's float32 copy padded to whole chunks (aligned, no masks): four 16-byte loads per thread
(``_tile_vec``), joined the same way. ``_split``/``_unsplit`` are the inverse: the pieces of a tile, used to take
one step of each thread out (the chunk's last state) and to shift the decays by one step in the backward.

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
def _tile(row, stride_t, t, L, md, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """(BD, LANES·TE) float32 tile of the rows ``row`` (BD,) from the lane starts ``t`` (LANES,) = chunk start
    + l·TE: TE loads of (BD, LANES) pieces, one step per thread each (piece e holds steps t + e), joined in the
    tree described in the module docstring; 0 outside [0, L) and the channels. Written out flat: nested
    helper calls are what makes Triton's interpreter slow."""
    p = row[:, None] + (t * stride_t)[None, :]
    m = md[:, None]
    rem = (L - t)[None, :]
    if TE == 16:
        x0 = tl.load(p + 0 * stride_t, mask=m & (rem > 0), other=0.0).to(tl.float32)
        x1 = tl.load(p + 1 * stride_t, mask=m & (rem > 1), other=0.0).to(tl.float32)
        x2 = tl.load(p + 2 * stride_t, mask=m & (rem > 2), other=0.0).to(tl.float32)
        x3 = tl.load(p + 3 * stride_t, mask=m & (rem > 3), other=0.0).to(tl.float32)
        x4 = tl.load(p + 4 * stride_t, mask=m & (rem > 4), other=0.0).to(tl.float32)
        x5 = tl.load(p + 5 * stride_t, mask=m & (rem > 5), other=0.0).to(tl.float32)
        x6 = tl.load(p + 6 * stride_t, mask=m & (rem > 6), other=0.0).to(tl.float32)
        x7 = tl.load(p + 7 * stride_t, mask=m & (rem > 7), other=0.0).to(tl.float32)
        x8 = tl.load(p + 8 * stride_t, mask=m & (rem > 8), other=0.0).to(tl.float32)
        x9 = tl.load(p + 9 * stride_t, mask=m & (rem > 9), other=0.0).to(tl.float32)
        x10 = tl.load(p + 10 * stride_t, mask=m & (rem > 10), other=0.0).to(tl.float32)
        x11 = tl.load(p + 11 * stride_t, mask=m & (rem > 11), other=0.0).to(tl.float32)
        x12 = tl.load(p + 12 * stride_t, mask=m & (rem > 12), other=0.0).to(tl.float32)
        x13 = tl.load(p + 13 * stride_t, mask=m & (rem > 13), other=0.0).to(tl.float32)
        x14 = tl.load(p + 14 * stride_t, mask=m & (rem > 14), other=0.0).to(tl.float32)
        x15 = tl.load(p + 15 * stride_t, mask=m & (rem > 15), other=0.0).to(tl.float32)
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
        x0 = tl.load(p + 0 * stride_t, mask=m & (rem > 0), other=0.0).to(tl.float32)
        x1 = tl.load(p + 1 * stride_t, mask=m & (rem > 1), other=0.0).to(tl.float32)
        x2 = tl.load(p + 2 * stride_t, mask=m & (rem > 2), other=0.0).to(tl.float32)
        x3 = tl.load(p + 3 * stride_t, mask=m & (rem > 3), other=0.0).to(tl.float32)
        x4 = tl.load(p + 4 * stride_t, mask=m & (rem > 4), other=0.0).to(tl.float32)
        x5 = tl.load(p + 5 * stride_t, mask=m & (rem > 5), other=0.0).to(tl.float32)
        x6 = tl.load(p + 6 * stride_t, mask=m & (rem > 6), other=0.0).to(tl.float32)
        x7 = tl.load(p + 7 * stride_t, mask=m & (rem > 7), other=0.0).to(tl.float32)
        j1 = tl.join(x0, x4)
        j2 = tl.join(x2, x6)
        j3 = tl.join(j1, j2)
        j4 = tl.join(x1, x5)
        j5 = tl.join(x3, x7)
        j6 = tl.join(j4, j5)
        x = tl.join(j3, j6)
    else:
        tl.static_assert(TE == 4, "TE must be 4, 8 or 16")
        x0 = tl.load(p + 0 * stride_t, mask=m & (rem > 0), other=0.0).to(tl.float32)
        x1 = tl.load(p + 1 * stride_t, mask=m & (rem > 1), other=0.0).to(tl.float32)
        x2 = tl.load(p + 2 * stride_t, mask=m & (rem > 2), other=0.0).to(tl.float32)
        x3 = tl.load(p + 3 * stride_t, mask=m & (rem > 3), other=0.0).to(tl.float32)
        j1 = tl.join(x0, x2)
        j2 = tl.join(x1, x3)
        x = tl.join(j1, j2)
    return tl.reshape(x, (BD, LANES * TE))


@triton.jit
def _tile_vec(row, t, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """``_tile`` of an aligned float32 row padded to whole chunks (no masks): 16-byte loads of 4 steps,
    joined as (.., TE/4, 4) with the vector axis last (the join axis is moved above it)."""
    p = row[:, None, None] + t[None, :, None] + tl.arange(0, 4)[None, None, :]
    if TE == 16:
        q0 = tl.load(p + 0)
        q1 = tl.load(p + 4)
        q2 = tl.load(p + 8)
        q3 = tl.load(p + 12)
        h0 = tl.reshape(tl.permute(tl.join(q0, q1), (0, 1, 3, 2)), (BD, LANES, 8))
        h1 = tl.reshape(tl.permute(tl.join(q2, q3), (0, 1, 3, 2)), (BD, LANES, 8))
        x = tl.reshape(tl.permute(tl.join(h0, h1), (0, 1, 3, 2)), (BD, LANES, 16))
    elif TE == 8:
        q0 = tl.load(p + 0)
        q1 = tl.load(p + 4)
        x = tl.reshape(tl.permute(tl.join(q0, q1), (0, 1, 3, 2)), (BD, LANES, 8))
    else:
        tl.static_assert(TE == 4, "TE must be 4, 8 or 16")
        q0 = tl.load(p + 0)
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
def _rev_lane(a, nxt, c, TE: tl.constexpr):
    """The adjoint inside each lane from a zero start, steps TE-1 .. 0: G_e = c_e + a_(e+1)·G_(e+1) and
    A_e = a_(e+1)·A_(e+1) = Π_(s>e) a_s, with a_TE = ``nxt`` (the step after the lane's last). Pieces."""
    if TE == 16:
        G15 = c[15]
        A15 = nxt
        G14 = c[14] + a[15] * G15
        A14 = a[15] * A15
        G13 = c[13] + a[14] * G14
        A13 = a[14] * A14
        G12 = c[12] + a[13] * G13
        A12 = a[13] * A13
        G11 = c[11] + a[12] * G12
        A11 = a[12] * A12
        G10 = c[10] + a[11] * G11
        A10 = a[11] * A11
        G9 = c[9] + a[10] * G10
        A9 = a[10] * A10
        G8 = c[8] + a[9] * G9
        A8 = a[9] * A9
        G7 = c[7] + a[8] * G8
        A7 = a[8] * A8
        G6 = c[6] + a[7] * G7
        A6 = a[7] * A7
        G5 = c[5] + a[6] * G6
        A5 = a[6] * A6
        G4 = c[4] + a[5] * G5
        A4 = a[5] * A5
        G3 = c[3] + a[4] * G4
        A3 = a[4] * A4
        G2 = c[2] + a[3] * G3
        A2 = a[3] * A3
        G1 = c[1] + a[2] * G2
        A1 = a[2] * A2
        G0 = c[0] + a[1] * G1
        A0 = a[1] * A1
        A = (A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15)
        G = (G0, G1, G2, G3, G4, G5, G6, G7, G8, G9, G10, G11, G12, G13, G14, G15)
    elif TE == 8:
        G7 = c[7]
        A7 = nxt
        G6 = c[6] + a[7] * G7
        A6 = a[7] * A7
        G5 = c[5] + a[6] * G6
        A5 = a[6] * A6
        G4 = c[4] + a[5] * G5
        A4 = a[5] * A5
        G3 = c[3] + a[4] * G4
        A3 = a[4] * A4
        G2 = c[2] + a[3] * G3
        A2 = a[3] * A3
        G1 = c[1] + a[2] * G2
        A1 = a[2] * A2
        G0 = c[0] + a[1] * G1
        A0 = a[1] * A1
        A = (A0, A1, A2, A3, A4, A5, A6, A7)
        G = (G0, G1, G2, G3, G4, G5, G6, G7)
    else:
        tl.static_assert(TE == 4, "TE must be 4, 8 or 16")
        G3 = c[3]
        A3 = nxt
        G2 = c[2] + a[3] * G3
        A2 = a[3] * A3
        G1 = c[1] + a[2] * G2
        A1 = a[2] * A2
        G0 = c[0] + a[1] * G1
        A0 = a[1] * A1
        A = (A0, A1, A2, A3)
        G = (G0, G1, G2, G3)
    return A, G


@triton.jit
def _fix(A, G, e, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """The tile G_e + A_e·e: the in-lane adjoint completed by ``e`` (BD, LANES), the adjoint entering each
    lane from the right."""
    if TE == 16:
        f0 = G[0] + A[0] * e
        f1 = G[1] + A[1] * e
        f2 = G[2] + A[2] * e
        f3 = G[3] + A[3] * e
        f4 = G[4] + A[4] * e
        f5 = G[5] + A[5] * e
        f6 = G[6] + A[6] * e
        f7 = G[7] + A[7] * e
        f8 = G[8] + A[8] * e
        f9 = G[9] + A[9] * e
        f10 = G[10] + A[10] * e
        f11 = G[11] + A[11] * e
        f12 = G[12] + A[12] * e
        f13 = G[13] + A[13] * e
        f14 = G[14] + A[14] * e
        f15 = G[15] + A[15] * e
        j1 = tl.join(f0, f8)
        j2 = tl.join(f4, f12)
        j3 = tl.join(j1, j2)
        j4 = tl.join(f2, f10)
        j5 = tl.join(f6, f14)
        j6 = tl.join(j4, j5)
        j7 = tl.join(j3, j6)
        j8 = tl.join(f1, f9)
        j9 = tl.join(f5, f13)
        j10 = tl.join(j8, j9)
        j11 = tl.join(f3, f11)
        j12 = tl.join(f7, f15)
        j13 = tl.join(j11, j12)
        j14 = tl.join(j10, j13)
        x = tl.join(j7, j14)
    elif TE == 8:
        f0 = G[0] + A[0] * e
        f1 = G[1] + A[1] * e
        f2 = G[2] + A[2] * e
        f3 = G[3] + A[3] * e
        f4 = G[4] + A[4] * e
        f5 = G[5] + A[5] * e
        f6 = G[6] + A[6] * e
        f7 = G[7] + A[7] * e
        j1 = tl.join(f0, f4)
        j2 = tl.join(f2, f6)
        j3 = tl.join(j1, j2)
        j4 = tl.join(f1, f5)
        j5 = tl.join(f3, f7)
        j6 = tl.join(j4, j5)
        x = tl.join(j3, j6)
    else:
        tl.static_assert(TE == 4, "TE must be 4, 8 or 16")
        f0 = G[0] + A[0] * e
        f1 = G[1] + A[1] * e
        f2 = G[2] + A[2] * e
        f3 = G[3] + A[3] * e
        j1 = tl.join(f0, f2)
        j2 = tl.join(f1, f3)
        x = tl.join(j1, j2)
    return tl.reshape(x, (BD, LANES * TE))


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
def scan_fwd_kernel(u_ptr, delta_ptr, z_ptr, out_ptr, A2_ptr, BC_ptr, Dp_ptr, bias_ptr, S_ptr,
                    su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t,
                    D, L, K, LP,
                    N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, BD: tl.constexpr, LANES: tl.constexpr, TE: tl.constexpr):
    """out = selective scan of (u, Δ, A, B, C) (+ D·u) (· silu(z)), written contiguous (batch, D, L) in out's
    dtype; S (batch, K, D, N) float32 gets the state entering every chunk (chunk 0: zeros). Grid
    (batch, ⌈D / BD⌉). BC: (batch, 2, N, LP) float32, B then C, zero beyond L; A2 (D, N) = A·log2(e)."""
    BT: tl.constexpr = LANES * TE
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    md = d < D
    lane = tl.arange(0, LANES)
    step = tl.arange(0, BT)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=md, other=0.0)[:, None]
    else:
        bias = 0.0
    if HAS_D:
        Dv = tl.load(Dp_ptr + d, mask=md, other=0.0)[:, None]
    else:
        Dv = 0.0
    u_row = u_ptr + b * su_b + d * su_d
    dl_row = delta_ptr + b * sd_b + d * sd_d
    z_row = z_ptr + b * sz_b + d * sz_d
    o_row = out_ptr + (b * D + d) * L
    zero_d = tl.zeros([BD], tl.int32)
    B_row = BC_ptr + b * 2 * N * LP + zero_d
    C_row = B_row + N * LP
    # chunk states: row (b, k, d, n); the (BD, LANES) piece stores read lane LANES - 1, loads broadcast to lanes
    S_row = S_ptr + (b * K * D + d) * N
    S_piece = S_row[:, None] + lane[None, :] * 0
    last_lane = (lane == LANES - 1)[None, :] & md[:, None]
    for n in range(0, N):
        tl.store(S_piece + n, tl.zeros([BD, LANES], tl.float32), mask=last_lane)
    for k in range(0, K):
        t = k * BT + lane * TE
        dt = _delta(_tile(dl_row, sd_t, t, L, md, BD, LANES, TE) + bias, SOFTPLUS)
        uu = _tile(u_row, su_t, t, L, md, BD, LANES, TE)
        du = dt * uu
        y = tl.zeros([BD, BT], tl.float32)
        tl.debug_barrier()   # the states chunk k - 1 wrote (other lanes) are visible
        for n in range(0, N):
            A2n = tl.load(A2_ptr + d * N + n, mask=md, other=0.0)[:, None]
            Bn = _tile_vec(B_row + n * LP, t, BD, LANES, TE)
            Cn = _tile_vec(C_row + n * LP, t, BD, LANES, TE)
            a = tl.exp2(dt * A2n)
            s_in = _bcast(tl.load(S_piece + (k * D * N + n)), BD, LANES, TE)
            bx = du * Bn
            bx = tl.where(step == 0, a * s_in + bx, bx)
            _, x = tl.associative_scan((a, bx), axis=1, combine_fn=_fwd_op)
            y += x * Cn
            tl.store(S_piece + ((k + 1) * D * N + n), _pieces(x, BD, LANES, TE)[TE - 1],
                     mask=last_lane & (k + 1 < K))
        if HAS_D:
            y += Dv * uu
        if HAS_Z:
            zz = _tile(z_row, sz_t, t, L, md, BD, LANES, TE)
            y = y * zz * _sigmoid(zz)
        ts = k * BT + step
        tl.store(o_row[:, None] + ts, y.to(out_ptr.dtype.element_ty), mask=md[:, None] & (ts < L))


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
    a fixed order. dA, dD, dbias are per-(batch, channel) partials (batch, D, N) / (batch, D) accumulated in a fixed
    order (chunks in turn) without atomics. H (batch, 2, D, N) float32 holds the adjoint at the first step of the
    chunk just done, in two slots by chunk parity."""
    BT: tl.constexpr = LANES * TE
    b = tl.program_id(0).to(tl.int64)
    pd = tl.program_id(1)
    d = pd * BD + tl.arange(0, BD)
    md = d < D
    lane = tl.arange(0, LANES)
    step = tl.arange(0, BT)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=md, other=0.0)[:, None]
    else:
        bias = 0.0
    if HAS_D:
        Dv = tl.load(Dp_ptr + d, mask=md, other=0.0)[:, None]
    else:
        Dv = 0.0
    u_row = u_ptr + b * su_b + d * su_d
    dl_row = delta_ptr + b * sd_b + d * sd_d
    z_row = z_ptr + b * sz_b + d * sz_d
    g_row = go_ptr + b * sg_b + d * sg_d
    o_off = (b * D + d) * L
    zero_d = tl.zeros([BD], tl.int32)
    B_row = BC_ptr + b * 2 * N * LP + zero_d
    C_row = B_row + N * LP
    if DETERMINISTIC:
        dB_base = dBC_ptr + (pd * tl.num_programs(0) + b) * 2 * N * LP
    else:
        dB_base = dBC_ptr + b * 2 * N * LP
    S_piece = (S_ptr + (b * K * D + d) * N)[:, None] + lane[None, :] * 0
    H_piece = (H_ptr + (b * 2 * D + d) * N)[:, None] + lane[None, :] * 0
    dA_row = dA_ptr + (b * D + d) * N
    first_lane = (lane == 0)[None, :] & md[:, None]
    lane2 = lane[None, :] + tl.zeros([BD, LANES], tl.int32)
    not_last = lane2 < LANES - 1
    right = tl.minimum(lane2 + 1, LANES - 1)
    bc_off = tl.join(tl.arange(0, BT), tl.arange(0, BT) + N * LP)        # (BT, 2): B's row, C's row
    dD_acc = tl.zeros([BD], tl.float32)
    dbias_acc = tl.zeros([BD], tl.float32)
    for n in range(0, N):
        tl.store(dA_row + n, tl.zeros([BD], tl.float32), mask=md)
    for i in range(0, K):
        k = K - 1 - i
        t = k * BT + lane * TE
        raw = _tile(dl_row, sd_t, t, L, md, BD, LANES, TE) + bias
        # Δ at the step after each lane's last (the next lane's first; the next chunk's for the last lane)
        raw_next = tl.load(dl_row[:, None] + ((t + TE) * sd_t)[None, :], mask=md[:, None] & (t + TE < L)[None, :],
                           other=0.0).to(tl.float32) + bias
        if SOFTPLUS:
            dt, e = _softplus(raw)
            dsp = tl.where(raw >= 0.0, 1.0, e) / (1.0 + e)          # softplus'(raw) = sigmoid(raw)
            dt_next, e_n = _softplus(raw_next)
        else:
            dt = raw
            dsp = 1.0
            dt_next = raw_next
        uu = _tile(u_row, su_t, t, L, md, BD, LANES, TE)
        go = _tile(g_row, sg_t, t, L, md, BD, LANES, TE)
        if HAS_Z:
            zz = _tile(z_row, sz_t, t, L, md, BD, LANES, TE)
            sig = _sigmoid(zz)
            dy = go * zz * sig
        else:
            dy = go
        du = dt * uu
        y = tl.zeros([BD, BT], tl.float32)        # Σ_n C x, for dz
        gB = tl.zeros([BD, BT], tl.float32)       # Σ_n g B
        qA = tl.zeros([BD, BT], tl.float32)       # Σ_n Q A2
        tl.debug_barrier()   # H of chunk k + 1 and the dA partials are visible to every lane
        for n in range(0, N):
            A2n = tl.load(A2_ptr + d * N + n, mask=md, other=0.0)[:, None]
            Bn = _tile_vec(B_row + n * LP, t, BD, LANES, TE)
            Cn = _tile_vec(C_row + n * LP, t, BD, LANES, TE)
            a = tl.exp2(dt * A2n)
            bx = du * Bn
            s_in = _bcast(tl.load(S_piece + (k * D * N + n)), BD, LANES, TE)
            _, x = tl.associative_scan((a, tl.where(step == 0, a * s_in + bx, bx)), axis=1, combine_fn=_fwd_op)
            # The adjoint, backward in time: in each lane from a zero start (pieces, registers), then the lanes'
            # (product, sum) pairs combined from the last lane down (gathers: one shuffle each), the chunk's
            # entering adjoint g_in standing for a lane after the last; then g = G + A·(adjoint entering the lane).
            ap = _pieces(a, BD, LANES, TE)
            A, G = _rev_lane(ap, tl.exp2(dt_next * A2n), _pieces(dy * Cn, BD, LANES, TE), TE)
            g_in = tl.load(H_piece + (((k + 1) & 1) * D * N + n), mask=md[:, None] & (k + 1 < K), other=0.0)
            eA = tl.where(not_last, tl.gather(A[0], right, axis=1), 1.0)
            eG = tl.where(not_last, tl.gather(G[0], right, axis=1), g_in)
            for r in tl.static_range(5):
                if (1 << r) < LANES:
                    ok = lane2 + (1 << r) < LANES
                    j = tl.minimum(lane2 + (1 << r), LANES - 1)
                    gA = tl.gather(eA, j, axis=1)
                    gG = tl.gather(eG, j, axis=1)
                    eG = tl.where(ok, eG + eA * gG, eG)
                    eA = tl.where(ok, eA * gA, eA)
            g = _fix(A, G, eG, BD, LANES, TE)
            tl.store(H_piece + ((k & 1) * D * N + n), G[0] + A[0] * eG, mask=first_lane)
            y += x * Cn
            gB += g * Bn
            q = g * (x - bx)
            qA += q * A2n
            dA_n = tl.sum(q * dt, axis=1)
            tl.store(dA_row + n, tl.load(dA_row + n, mask=md, other=0.0) + dA_n, mask=md)
            # dB and dC together: one reduction over the program's channels, then one add (or store) of both.
            dBC_t = tl.sum(tl.join(g * du, x * dy), axis=0)                        # (BT, 2)
            dBC_p = dB_base + (n * LP + k * BT) + bc_off
            if DETERMINISTIC:
                tl.store(dBC_p, dBC_t)
            else:
                tl.atomic_add(dBC_p, dBC_t, sem="relaxed")
        ddt = (gB * uu + qA * LN2) * dsp
        ts = k * BT + step
        m2 = md[:, None] & (ts < L)
        tl.store(du_ptr + o_off[:, None] + ts, (gB * dt + Dv * dy).to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddelta_ptr + o_off[:, None] + ts, ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
        if HAS_Z:
            yt = y + Dv * uu
            dz = go * yt * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + o_off[:, None] + ts, dz.to(dz_ptr.dtype.element_ty), mask=m2)
        dD_acc += tl.sum(dy * uu, axis=1)
        dbias_acc += tl.sum(tl.where(m2, ddt, 0.0), axis=1)
    tl.store(dD_ptr + b * D + d, dD_acc, mask=md)
    tl.store(dbias_ptr + b * D + d, dbias_acc, mask=md)
