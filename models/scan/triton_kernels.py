"""Triton kernels of the ``triton`` scan backend (see ``triton_backend`` for the design, the launch code and the
reasons). Never imported directly: ``triton_backend._kernels()`` loads this file on first use, with
TRITON_INTERPRET set to the mode triton itself was imported in, because ``@triton.jit`` decides at decoration time
whether to interpret.

Index conventions, shared by every kernel: one program handles the batch element ``b``, a block of ``BD``
channels ``d`` and (where it has one) the chunk ``k`` of ``T`` steps [t0, t1); its state tile is (BD, BN), BN
the next power of two ≥ N, padded channels and states masked (loaded as 0, so they stay 0 and feed nothing).
Pointers: u, delta, z, go, du, ddelta, dz, out (batch, D, L); B, C, dB, dC (batch, N, L); A, A2 (= A·log2 e),
dA transposed, (N, D); Dp, bias, dD, dbias (D,); chunk tensors E, S, Hh, H (batch, K, N, D) and dtsum
(batch, K, D); the backward's scratch (programs, T + 1, BN, BD); all contiguous. Every (BD, BN) tile in memory is
contiguous along d, not n, on purpose: Triton picks a tile's register layout from its memory accesses, and this
puts the channels across threads and a channel's N states inside one thread, so per-channel work (softplus,
gate, loads of u, Δ, z) is not repeated for every state and the sums over N need no shuffles (checked in the
TTGIR: threadsPerWarp [32, 1]). All arithmetic is float32; low-precision inputs are cast after loading.
"""

import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _softplus(x):
    """torch's softplus (threshold 20): x above 20, else log1p(exp(x)) written stably (log(w)·e/(w-1), exact
    where w = 1 + e rounds; e itself when w rounds to 1)."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _step_inputs(u_row, delta_row, B_row, bias, t, md, mn, SOFTPLUS: tl.constexpr):
    """Step t: (raw = delta + bias, Δ, u, B_t) as float32; Δ = softplus(raw) if SOFTPLUS."""
    raw = tl.load(delta_row + t, mask=md, other=0.0).to(tl.float32) + bias
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    uu = tl.load(u_row + t, mask=md, other=0.0).to(tl.float32)
    Bt = tl.load(B_row + t, mask=mn, other=0.0).to(tl.float32)
    return raw, dt, uu, Bt


@triton.jit
def _gate_grad(go_t, z_row, t, md, HAS_Z: tl.constexpr):
    """(dy_t = go_t·silu(z_t), z_t, sigmoid(z_t)); dy_t = go_t without a gate."""
    if HAS_Z:
        zz = tl.load(z_row + t, mask=md, other=0.0).to(tl.float32)
        sig = _sigmoid(zz)
        dy = go_t * zz * sig
    else:
        zz = go_t * 0.0
        sig = zz
        dy = go_t
    return dy, zz, sig


@triton.jit
def chunk_summary_kernel(u_ptr, delta_ptr, A2_ptr, B_ptr, C_ptr, z_ptr, go_ptr, bias_ptr,
                         E_ptr, Hh_ptr, dtsum_ptr, D, L, N, T, K,
                         ADJOINT: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SOFTPLUS: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    """Per chunk, from a zero start: the end state E_k = x_{t1-1}, Σ_t Δ_t (dtsum, for the chunk decay
    G_k = exp(A·ΣΔ)) and, if ADJOINT, Hh_k = Σ_t P_t ⊙ C_t ⊗ dy_t with P_t = Π_{s=t0..t} Ā_s: what chunk k's
    adjoint contributes to Ā_{t0} ⊙ g_{t0}, the adjoint entering chunk k-1 from the right. Grid (batch, ⌈D/BD⌉,
    chunks)."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    k = tl.program_id(2)
    n = tl.arange(0, BN)
    md, mn = d < D, n < N
    m2 = md[:, None] & mn[None, :]
    A2 = tl.load(A2_ptr + n[None, :] * D + d[:, None], mask=m2, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=md, other=0.0)
    else:
        bias = tl.zeros([BD], tl.float32)
    u_row = u_ptr + b * D * L + d * L
    delta_row = delta_ptr + b * D * L + d * L
    z_row = z_ptr + b * D * L + d * L
    go_row = go_ptr + b * D * L + d * L
    B_row = B_ptr + b * N * L + n * L
    C_row = C_ptr + b * N * L + n * L
    t0 = k * T
    t1 = tl.minimum(t0 + T, L)
    h = tl.zeros([BD, BN], tl.float32)
    P = tl.full([BD, BN], 1.0, tl.float32)
    hh = tl.zeros([BD, BN], tl.float32)
    s = tl.zeros([BD], tl.float32)
    for t in range(t0, t1):
        raw, dt, uu, Bt = _step_inputs(u_row, delta_row, B_row, bias, t, md, mn, SOFTPLUS)
        a = tl.exp2(dt[:, None] * A2)
        h = a * h + (dt * uu)[:, None] * Bt[None, :]
        s += dt
        if ADJOINT:
            go_t = tl.load(go_row + t, mask=md, other=0.0).to(tl.float32)
            dy, zz, sig = _gate_grad(go_t, z_row, t, md, HAS_Z)
            Ct = tl.load(C_row + t, mask=mn, other=0.0).to(tl.float32)
            P = P * a
            hh += P * (dy[:, None] * Ct[None, :])
    off = ((b * K + k) * N + n[None, :]) * D + d[:, None]
    tl.store(E_ptr + off, h, mask=m2)
    if ADJOINT:
        tl.store(Hh_ptr + off, hh, mask=m2)
    tl.store(dtsum_ptr + (b * K + k) * D + d, s, mask=md)


@triton.jit
def carry_kernel(E_ptr, Hh_ptr, dtsum_ptr, A2_ptr, S_ptr, H_ptr, D, N, K,
                 ADJOINT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    """The chunk carries, K sequential steps per (batch, channel block); grid (batch, ⌈D/BD⌉).

    S_0 = 0, S_{k+1} = G_k ⊙ S_k + E_k (the state entering chunk k); if ADJOINT also H_{K-1} = 0,
    H_{k-1} = Hh_k + G_k ⊙ H_k (Ā_{t1} ⊙ g_{t1}: the adjoint entering chunk k from the right), G_k = exp(A·ΣΔ_k).
    Reads E_0..E_{K-2} and Hh_1..Hh_{K-1} only."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    md, mn = d < D, n < N
    m2 = md[:, None] & mn[None, :]
    A2 = tl.load(A2_ptr + n[None, :] * D + d[:, None], mask=m2, other=0.0)
    run = tl.zeros([BD, BN], tl.float32)
    for k in range(0, K - 1):
        off = ((b * K + k) * N + n[None, :]) * D + d[:, None]
        tl.store(S_ptr + off, run, mask=m2)
        G = tl.exp2(A2 * tl.load(dtsum_ptr + (b * K + k) * D + d, mask=md, other=0.0)[:, None])
        run = G * run + tl.load(E_ptr + off, mask=m2, other=0.0)
    tl.store(S_ptr + ((b * K + K - 1) * N + n[None, :]) * D + d[:, None], run, mask=m2)
    if ADJOINT:
        run = tl.zeros([BD, BN], tl.float32)
        for i in range(0, K - 1):
            k = K - 1 - i
            off = ((b * K + k) * N + n[None, :]) * D + d[:, None]
            tl.store(H_ptr + off, run, mask=m2)
            G = tl.exp2(A2 * tl.load(dtsum_ptr + (b * K + k) * D + d, mask=md, other=0.0)[:, None])
            run = tl.load(Hh_ptr + off, mask=m2, other=0.0) + G * run
        tl.store(H_ptr + (b * K * N + n[None, :]) * D + d[:, None], run, mask=m2)


@triton.jit
def forward_kernel(u_ptr, delta_ptr, A2_ptr, B_ptr, C_ptr, Dp_ptr, z_ptr, bias_ptr, S_ptr, out_ptr,
                   D, L, N, T, K,
                   HAS_INIT: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                   SOFTPLUS: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    """The outputs of chunk k from its entering state S_k (0 without HAS_INIT): x_t = Ā_t ⊙ x_{t-1} + Δ_t u_t B_t,
    out_t = (C_t · x_t + D·u_t)·silu(z_t), stored in out's dtype. Grid (batch, ⌈D/BD⌉, chunks)."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    k = tl.program_id(2)
    n = tl.arange(0, BN)
    md, mn = d < D, n < N
    m2 = md[:, None] & mn[None, :]
    A2 = tl.load(A2_ptr + n[None, :] * D + d[:, None], mask=m2, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=md, other=0.0)
    else:
        bias = tl.zeros([BD], tl.float32)
    if HAS_D:
        Dv = tl.load(Dp_ptr + d, mask=md, other=0.0)
    else:
        Dv = tl.zeros([BD], tl.float32)
    u_row = u_ptr + b * D * L + d * L
    delta_row = delta_ptr + b * D * L + d * L
    z_row = z_ptr + b * D * L + d * L
    out_row = out_ptr + b * D * L + d * L
    B_row = B_ptr + b * N * L + n * L
    C_row = C_ptr + b * N * L + n * L
    if HAS_INIT:
        h = tl.load(S_ptr + ((b * K + k) * N + n[None, :]) * D + d[:, None], mask=m2, other=0.0)
    else:
        h = tl.zeros([BD, BN], tl.float32)
    t0 = k * T
    t1 = tl.minimum(t0 + T, L)
    for t in range(t0, t1):
        raw, dt, uu, Bt = _step_inputs(u_row, delta_row, B_row, bias, t, md, mn, SOFTPLUS)
        Ct = tl.load(C_row + t, mask=mn, other=0.0).to(tl.float32)
        h = tl.exp2(dt[:, None] * A2) * h + (dt * uu)[:, None] * Bt[None, :]
        o = tl.sum(h * Ct[None, :], axis=1) + Dv * uu
        if HAS_Z:
            zz = tl.load(z_row + t, mask=md, other=0.0).to(tl.float32)
            o = o * zz * _sigmoid(zz)
        tl.store(out_row + t, o.to(out_ptr.dtype.element_ty), mask=md)


@triton.jit
def backward_kernel(u_ptr, delta_ptr, A2_ptr, B_ptr, C_ptr, Dp_ptr, z_ptr, go_ptr, bias_ptr,
                    S_ptr, H_ptr, scratch_ptr,
                    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                    D, L, N, T, K, n_dblocks, n_tiles,
                    HAS_INIT: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    """Gradients of chunk k, persistent: program p takes tiles p, p + P, ... (P programs), tile = (b, block, k).

    Forward phase: x_t from S_k, each written to this program's scratch slot (T + 1 tiles of (BD, BN): x_{t0-1}
    = S_k, then x_t0 .. x_{t1-1}), reading out y_t for dz and Σ_d x_t dy_t for dC (atomic adds across channel
    blocks). Backward phase, t from t1-1 to t0, with g_t = C_t ⊗ dy_t + Ā_{t+1} ⊙ g_{t+1} (g_{t1} term = H_k):
    P_t = Σ_n g_t B_t, Q_t = g_t ⊙ Ā_t ⊙ x_{t-1}; du = P Δ + D dy; dΔ = (u P + Σ_n Q A)·softplus'(raw);
    dB_t += Σ_d g_t Δ_t u_t (atomic); dA += Σ_t Q_t Δ_t, dD += Σ_t dy u, dbias += Σ_t dΔ (atomic per tile).
    """
    pid = tl.program_id(0)
    n = tl.arange(0, BN)
    mn = n < N
    loc = n[None, :] * BD + tl.arange(0, BD)[:, None]
    slot = scratch_ptr + pid.to(tl.int64) * (T + 1) * BD * BN
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        k = tile % K
        pd = (tile // K) % n_dblocks
        b = (tile // (K * n_dblocks)).to(tl.int64)
        d = pd * BD + tl.arange(0, BD)
        md = d < D
        m2 = md[:, None] & mn[None, :]
        A2 = tl.load(A2_ptr + n[None, :] * D + d[:, None], mask=m2, other=0.0)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=md, other=0.0)
        else:
            bias = tl.zeros([BD], tl.float32)
        if HAS_D:
            Dv = tl.load(Dp_ptr + d, mask=md, other=0.0)
        else:
            Dv = tl.zeros([BD], tl.float32)
        row = b * D * L + d * L
        u_row, delta_row, z_row, go_row = u_ptr + row, delta_ptr + row, z_ptr + row, go_ptr + row
        nrow = b * N * L + n * L
        B_row, C_row = B_ptr + nrow, C_ptr + nrow
        coff = ((b * K + k) * N + n[None, :]) * D + d[:, None]
        t0 = k * T
        t1 = tl.minimum(t0 + T, L)

        # Forward phase.
        if HAS_INIT:
            h = tl.load(S_ptr + coff, mask=m2, other=0.0)
        else:
            h = tl.zeros([BD, BN], tl.float32)
        tl.store(slot + loc, h)
        dD_acc = tl.zeros([BD], tl.float32)
        for t in range(t0, t1):
            raw, dt, uu, Bt = _step_inputs(u_row, delta_row, B_row, bias, t, md, mn, SOFTPLUS)
            Ct = tl.load(C_row + t, mask=mn, other=0.0).to(tl.float32)
            go_t = tl.load(go_row + t, mask=md, other=0.0).to(tl.float32)
            dy, zz, sig = _gate_grad(go_t, z_row, t, md, HAS_Z)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * uu)[:, None] * Bt[None, :]
            tl.store(slot + (t - t0 + 1) * BD * BN + loc, h)
            if HAS_Z:
                o = tl.sum(h * Ct[None, :], axis=1) + Dv * uu
                dz = go_t * o * sig * (1.0 + zz * (1.0 - sig))
                tl.store(dz_ptr + row + t, dz.to(dz_ptr.dtype.element_ty), mask=md)
            tl.atomic_add(dC_ptr + nrow + t, tl.sum(h * dy[:, None], axis=0), mask=mn, sem="relaxed")
            dD_acc += dy * uu
        # The backward phase reads the scratch with its own layout: make every thread's stores visible first.
        tl.debug_barrier()

        # Backward phase.
        if HAS_INIT:
            g_next = tl.load(H_ptr + coff, mask=m2, other=0.0)   # Ā_{t+1} ⊙ g_{t+1} for t = t1 - 1
        else:
            g_next = tl.zeros([BD, BN], tl.float32)
        dA_acc = tl.zeros([BD, BN], tl.float32)
        dbias_acc = tl.zeros([BD], tl.float32)
        for i in range(0, t1 - t0):
            t = t1 - 1 - i
            raw, dt, uu, Bt = _step_inputs(u_row, delta_row, B_row, bias, t, md, mn, SOFTPLUS)
            Ct = tl.load(C_row + t, mask=mn, other=0.0).to(tl.float32)
            go_t = tl.load(go_row + t, mask=md, other=0.0).to(tl.float32)
            dy, zz, sig = _gate_grad(go_t, z_row, t, md, HAS_Z)
            g = g_next + dy[:, None] * Ct[None, :]
            a = tl.exp2(dt[:, None] * A2)
            q = g * a * tl.load(slot + (t - t0) * BD * BN + loc)     # x_{t-1}
            dA_acc += q * dt[:, None]
            p = tl.sum(g * Bt[None, :], axis=1)
            tl.atomic_add(dB_ptr + nrow + t, tl.sum(g * (dt * uu)[:, None], axis=0), mask=mn, sem="relaxed")
            ddt = tl.sum(q * A2, axis=1) * LN2 + p * uu   # Σ_n Q A, with A = A2·ln 2 (one tile fewer)
            if SOFTPLUS:
                ddt = tl.where(raw > 20.0, ddt, ddt * _sigmoid(raw))
            du = p * dt + Dv * dy
            tl.store(du_ptr + row + t, du.to(du_ptr.dtype.element_ty), mask=md)
            tl.store(ddelta_ptr + row + t, ddt.to(ddelta_ptr.dtype.element_ty), mask=md)
            dbias_acc += ddt
            g_next = a * g
        tl.atomic_add(dA_ptr + n[None, :] * D + d[:, None], dA_acc, mask=m2, sem="relaxed")
        if HAS_D:
            tl.atomic_add(dD_ptr + d, dD_acc, mask=md, sem="relaxed")
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + d, dbias_acc, mask=md, sem="relaxed")
        # The next tile overwrites the scratch slot: every thread must be done reading it.
        tl.debug_barrier()
