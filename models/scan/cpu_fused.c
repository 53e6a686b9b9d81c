/* dimbench's fused selective scan for the CPU: the whole op (Δ prologue, the scan, the D and SiLU(z) epilogue),
 * forward and analytic backward, one pass over the sequence per block of W channels with the block's state in
 * registers and L1 cache; and, at the end of the file, the causal depthwise conv1d + SiLU that feeds it. Built
 * and loaded by models/scan/cpu_fused.py, which documents the contract; the arithmetic is the recurrence of
 * models/scan/reference.py:
 *
 *     x_t = exp(Δ_t A) ⊙ x_{t-1} + (Δ_t u_t) B_t,   y_t = Σ_n C_t[n] x_t[n],   out = (y + D u) SiLU(z)
 *
 * Layout (all float32): the inputs u, delta, z, go (batch, D, L) and B, C (batch, N, L) at any element strides
 * (a strides_t; B's and C's step stride must be 1), since DiM hands z and ∂L/∂out as transposed views whose
 * copies cost a fifth of the scan; out and the gradients contiguous (batch, D, L) and (batch, N, L); A, A2 =
 * A·log2(e) and dA (N, Dpad), Dpad = D rounded up to whole blocks (zero-padded).
 * Work items are (batch element, block of W channels) pairs, numbered batch-major; a call runs items [i0, i1), so
 * threads split the items, each with its own scratch and accumulators. Vectorised over the W channels of a block:
 * the scan's loops on explicit W-lane vectors (below), the rest by gcc/clang auto-vectorisation at -O3.
 */
#include <stdint.h>
#include <string.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

#define W 8 /* channels per block: one AVX2 vector of float32 */

/* 2**x for float32 x, vectorisable: Cephes' exp2f polynomial on [-0.5, 0.5] (relative error < 2e-7) times 2**n
 * built from its exponent bits. Results below 2**-126 are returned as 0 (flush to zero, as the chunked backend's
 * chunk decays are): subnormal arithmetic costs ~100x on x86 CPUs. */
static inline float exp2_f32(float x) {
    x = x < -127.0f ? -127.0f : (x > 127.0f ? 127.0f : x);
    float n = __builtin_rintf(x);
    float f = x - n;
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23; /* n = -127 gives the bits of +0 */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* The scan's loops are written on explicit W-lane vectors (GCC/clang vector extensions): the running sums and
 * states stay in registers, where arrays indexed inside a vectorised loop went through memory at every state
 * (a store-to-load chain per step that made the loops latency-bound). */
typedef float v8 __attribute__((vector_size(W * sizeof(float))));
typedef int32_t v8i __attribute__((vector_size(W * sizeof(float))));

static inline v8 ld(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void st(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline v8 splat(float x) { return (v8){0} + x; }
static inline float hsum(v8 v) {
    float s = 0.0f;
    for (int j = 0; j < W; j++) s += v[j];
    return s;
}

/* exp2_f32 on W lanes: the same polynomial; round-to-nearest by the 1.5·2**23 trick, whose bits then hold n. */
static inline v8 exp2_v8(v8 x) {
#ifdef __AVX__
    x = (v8)_mm256_min_ps(_mm256_max_ps((__m256)x, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
#else
    const v8i low = x < -127.0f, high = x > 127.0f;
    x = (v8)((low & (v8i)splat(-127.0f)) | (high & (v8i)splat(127.0f)) | (~(low | high) & (v8i)x));
#endif
    const v8 r = x + 12582912.0f; /* 1.5·2**23: r's low mantissa bits are round(x) */
    const v8 f = x - (r - 12582912.0f);
    v8 p = splat(1.535336188319500e-4f);
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    const v8i bits = ((v8i)r - 0x4B400000 + 127) << 23; /* n = -127 gives the bits of +0 */
    return p * (v8)bits;
}

/* Each block's W rows are gathered into step-major scratch and scattered back, so no transposed copy, softplus,
 * gate or chain rule runs as a separate tensor operation. Optional inputs are NULL: bias, Dskip (D), z;
 * softplus: 0|1. A last block may be partial (w < W real channels; its other lanes compute zeros). */

/* log(1 + e) for e in [0, 1]: 2·atanh(s), s = e / (2 + e) <= 1/3, by its series to s^13 (error < 5e-9). */
static inline float log1p_unit(float e) {
    float s = e / (2.0f + e), s2 = s * s;
    float p = 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}

static const float LOG2E = 1.4426950408889634f;

/* softplus(x) = max(x, 0) + log(1 + exp(-|x|)), and its derivative sigmoid(x), from one exponential. */
static inline float softplus_f32(float x, float *derivative) {
    float a = x < 0.0f ? -x : x;
    float e = exp2_f32(-a * LOG2E);
    *derivative = (x >= 0.0f ? 1.0f : e) / (1.0f + e);
    return (x > 0.0f ? x : 0.0f) + log1p_unit(e);
}

static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp2_f32(-x * LOG2E)); }

/* Element strides of the inputs: [batch, channel (or state for B, C), step] each. */
typedef struct {
    int64_t u[3], delta[3], z[3], go[3], B[3], C[3];
} strides_t;

/* Gather W channels [d0, d0 + w) of a (batch, D, L) tensor's element b, at strides s, into step-major dst[L][W]
 * (zeros past w). */
static void gather(const float *src, const int64_t *s, int64_t b, int64_t d0, int w, int64_t L, float *dst) {
    for (int64_t t = 0; t < L; t++)
        for (int j = 0; j < W; j++) dst[t * W + j] = 0.0f;
    for (int j = 0; j < w; j++) {
        const float *row = src + b * s[0] + (d0 + j) * s[1];
        if (s[2] == 1)
            for (int64_t t = 0; t < L; t++) dst[t * W + j] = row[t];
        else
            for (int64_t t = 0; t < L; t++) dst[t * W + j] = row[t * s[2]];
    }
}

static void scatter(const float *src, int64_t b, int64_t d0, int w, int64_t D, int64_t L, float *dst) {
    for (int j = 0; j < w; j++) {
        float *row = dst + (b * D + d0 + j) * L;
        for (int64_t t = 0; t < L; t++) row[t] = src[t * W + j];
    }
}

/* Δ (step-major, softplus applied when asked) from raw delta already gathered in dt, and the bias. */
static void prologue(float *dt, float *sig, const float *bias, int64_t d0, int w, int softplus, int64_t L) {
    float bj[W];
    for (int j = 0; j < W; j++) bj[j] = (bias && j < w) ? bias[d0 + j] : 0.0f;
    for (int64_t t = 0; t < L; t++) {
#pragma omp simd
        for (int j = 0; j < W; j++) {
            float x = dt[t * W + j] + bj[j], derivative = 1.0f; /* dΔ/d(raw) */
            dt[t * W + j] = softplus ? softplus_f32(x, &derivative) : x;
            if (sig) sig[t * W + j] = derivative;
        }
    }
}

/* Δ (softplus'd, with its derivative in sig when not NULL) and u of one block, gathered step-major. */
static void load_block(const float *delta, const float *bias, int softplus, const float *u, const strides_t *s,
                       int64_t b, int64_t d0, int w, int64_t L, float *dt, float *sig, float *ul) {
    gather(delta, s->delta, b, d0, w, L, dt);
    prologue(dt, sig, bias, d0, w, softplus, L);
    gather(u, s->u, b, d0, w, L, ul);
}

/* One state of the forward recurrence on W lanes: x = 2**(Δ·A2[n]) ⊙ h + Δu·B_t[n], stored back into h. */
static inline v8 state_step(v8 dtt, v8 du, const float *A2n, float *hn, float bn) {
    const v8 x = exp2_v8(dtt * ld(A2n)) * ld(hn) + du * bn;
    st(hn, x);
    return x;
}

/* The forward scan of one block over step-major inputs, nothing kept: y[t] = Σ_n C_t[n] x_t[n] (W lanes), the
 * running state in h (N·W scratch). The states go two at a time into two named partial sums: that halves the
 * chain of dependent additions, and named locals stay in registers where an indexed acc[n & 1] went through the
 * stack at every state (a store-to-load chain that measured a quarter of the forward). */
static void scan_block(const float *dt, const float *u, const float *A2, const float *Bb, int64_t Bn,
                       const float *Cb, int64_t Cn, int64_t d0, int64_t L, int64_t N, int64_t Dpad, float *y,
                       float *h) {
    memset(h, 0, (size_t)(N * W) * sizeof(float));
    for (int64_t t = 0; t < L; t++) {
        const v8 dtt = ld(dt + t * W), du = dtt * ld(u + t * W);
        v8 acc0 = {0}, acc1 = {0};
        int64_t n = 0;
        for (; n + 1 < N; n += 2) {
            acc0 += state_step(dtt, du, A2 + n * Dpad + d0, h + n * W, Bb[n * Bn + t]) * Cb[n * Cn + t];
            acc1 += state_step(dtt, du, A2 + (n + 1) * Dpad + d0, h + (n + 1) * W, Bb[(n + 1) * Bn + t]) *
                    Cb[(n + 1) * Cn + t];
        }
        if (n < N) acc0 += state_step(dtt, du, A2 + n * Dpad + d0, h + n * W, Bb[n * Bn + t]) * Cb[n * Cn + t];
        st(y + t * W, acc0 + acc1);
    }
}

/* The same scan keeping every step's decays and states (L·N·W each) for the adjoint; dCv[t][n] += x_t ⊙ dy_t on
 * W lanes (summed over the lanes once per batch element, by flush_lanes: a horizontal sum per state and step
 * was half the backward's time). */
static void scan_block_keep(const float *dt, const float *u, const float *A2, const float *Bb, int64_t Bn,
                            const float *Cb, int64_t Cn, int64_t d0, int64_t L, int64_t N, int64_t Dpad, float *y,
                            float *decay, float *xs, const float *dy, float *dCv) {
    const int64_t step = N * W;
    for (int64_t t = 0; t < L; t++) {
        const v8 dtt = ld(dt + t * W), du = dtt * ld(u + t * W), dyt = ld(dy + t * W);
        v8 acc0 = {0}, acc1 = {0};
        for (int64_t n = 0; n < N; n++) {
            const v8 e = exp2_v8(dtt * ld(A2 + n * Dpad + d0));
            const v8 prev = t > 0 ? ld(xs + (t - 1) * step + n * W) : splat(0.0f);
            const v8 x = e * prev + du * Bb[n * Bn + t];
            st(decay + t * step + n * W, e);
            st(xs + t * step + n * W, x);
            if (n & 1)
                acc1 += x * Cb[n * Cn + t];
            else
                acc0 += x * Cb[n * Cn + t];
            st(dCv + t * step + n * W, ld(dCv + t * step + n * W) + x * dyt);
        }
        st(y + t * W, acc0 + acc1);
    }
}

/* The adjoint recurrence g_t = C_t dy_t + Ā_{t+1} ⊙ g_{t+1}, backward in time, over scan_block_keep's decays and
 * states: p_t = Σ_n g_t B_t (→ du, dΔ), qa_t = Σ_n q_t A (→ dΔ) and dA += Σ_t q_t Δ_t with q_t = g_t Ā_t x_{t-1};
 * dBv[t][n] += g_t Δ_t u_t on W lanes (see scan_block_keep). g and dA_acc: N·W scratch each. */
static void adjoint_block(const float *dt, const float *u, const float *A, const float *Bb, int64_t Bn,
                          const float *Cb, int64_t Cn, int64_t d0, int64_t L, int64_t N, int64_t Dpad,
                          const float *decay, const float *xs, const float *dy, float *g, float *dA_acc, float *p,
                          float *qa, float *dBv) {
    const int64_t step = N * W;
    memset(g, 0, (size_t)step * sizeof(float));
    memset(dA_acc, 0, (size_t)step * sizeof(float));
    for (int64_t t = L - 1; t >= 0; t--) {
        const v8 dtt = ld(dt + t * W), du = dtt * ld(u + t * W), dyt = ld(dy + t * W);
        v8 p0 = {0}, p1 = {0}, q0 = {0}, q1 = {0};
        const float *next = decay + (t + 1 < L ? t + 1 : t) * step; /* g is 0 after the last step */
        for (int64_t n = 0; n < N; n++) {
            const float bn = Bb[n * Bn + t];
            const v8 gn = ld(next + n * W) * ld(g + n * W) + dyt * Cb[n * Cn + t];
            st(g + n * W, gn);
            st(dBv + t * step + n * W, ld(dBv + t * step + n * W) + gn * du);
            v8 q = {0};
            if (t > 0) {
                q = gn * ld(decay + t * step + n * W) * ld(xs + (t - 1) * step + n * W);
                st(dA_acc + n * W, ld(dA_acc + n * W) + q * dtt);
            }
            if (n & 1) {
                p1 += gn * bn;
                q1 += q * ld(A + n * Dpad + d0);
            } else {
                p0 += gn * bn;
                q0 += q * ld(A + n * Dpad + d0);
            }
        }
        st(p + t * W, p0 + p1);
        st(qa + t * W, q0 + q1);
    }
}

/* dst[b][n][t] += Σ_j lanes[t][n][j], then lanes zeroed: one batch element's dB or dC, gathered on W lanes over
 * all its blocks of channels. */
static void flush_lanes(float *lanes, float *dst, int64_t b, int64_t L, int64_t N) {
    float *db = dst + b * N * L;
    for (int64_t t = 0; t < L; t++)
        for (int64_t n = 0; n < N; n++) db[n * L + t] += hsum(ld(lanes + (t * N + n) * W));
    memset(lanes, 0, (size_t)(L * N * W) * sizeof(float));
}

/* out (batch, D, L) = (y + Dskip·u)·SiLU(z) for items [i0, i1). A2: (N, Dpad) = A·log2(e), zero-padded to whole
 * blocks. work: (4·L + 1)·W + N·W floats. */
void dimbench_scan_op_forward(const float *u, const float *delta, const float *bias, int softplus, const float *A2,
                              const float *B, const float *C, const float *Dskip, const float *z, float *out,
                              const strides_t *s, int64_t L, int64_t D, int64_t N, int64_t i0, int64_t i1,
                              float *work) {
    const int64_t blocks = (D + W - 1) / W, Dpad = blocks * W;
    float *dt = work, *ul = dt + L * W, *y = ul + L * W, *zl = y + L * W, *h = zl + L * W;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t b = item / blocks, d0 = (item % blocks) * W;
        const int w = (int)(D - d0 < W ? D - d0 : W);
        load_block(delta, bias, softplus, u, s, b, d0, w, L, dt, NULL, ul);
        scan_block(dt, ul, A2, B + b * s->B[0], s->B[1], C + b * s->C[0], s->C[1], d0, L, N, Dpad, y, h);
        if (z) gather(z, s->z, b, d0, w, L, zl);
        float dj[W];
        for (int j = 0; j < W; j++) dj[j] = (Dskip && j < w) ? Dskip[d0 + j] : 0.0f;
        for (int64_t t = 0; t < L; t++) {
#pragma omp simd
            for (int j = 0; j < W; j++) {
                float o = y[t * W + j] + dj[j] * ul[t * W + j];
                if (z) o *= zl[t * W + j] * sigmoid_f32(zl[t * W + j]);
                y[t * W + j] = o;
            }
        }
        scatter(y, b, d0, w, D, L, out);
    }
}

/* The backward of dimbench_scan_op_forward for items [i0, i1), from go = ∂L/∂out: written du, ddelta, dz
 * (batch, D, L); accumulated (+=) dA (N, Dpad), dB, dC (batch, N, L), dD and dbias (D) — the caller gives each
 * thread its own accumulators. work: (4·L·N + 2·N)·W + 10·L·W floats. */
void dimbench_scan_op_backward(const float *go, const float *u, const float *delta, const float *bias, int softplus,
                               const float *A, const float *A2, const float *B, const float *C, const float *Dskip,
                               const float *z, float *du_out, float *ddelta_out, float *dz_out, float *dA, float *dB,
                               float *dC, float *dD, float *dbias, const strides_t *s, int64_t L, int64_t D, int64_t N,
                               int64_t i0, int64_t i1, float *work) {
    const int64_t blocks = (D + W - 1) / W, Dpad = blocks * W, step = N * W;
    float *decay = work, *xs = decay + L * step, *g = xs + L * step, *dA_acc = g + step;
    float *dt = dA_acc + step, *sig = dt + L * W, *ul = sig + L * W, *dy = ul + L * W, *gol = dy + L * W;
    float *zl = gol + L * W, *zs = zl + L * W, *y = zs + L * W, *p = y + L * W, *qa = p + L * W;
    float *dBv = qa + L * W, *dCv = dBv + L * step; /* this batch element's dB, dC on W lanes */
    memset(dBv, 0, (size_t)(2 * L * step) * sizeof(float));
    for (int64_t item = i0; item < i1; item++) {
        const int64_t b = item / blocks, d0 = (item % blocks) * W;
        const int w = (int)(D - d0 < W ? D - d0 : W);
        load_block(delta, bias, softplus, u, s, b, d0, w, L, dt, sig, ul);
        gather(go, s->go, b, d0, w, L, gol);
        if (z) gather(z, s->z, b, d0, w, L, zl);
        for (int64_t t = 0; t < L; t++) {
#pragma omp simd
            for (int j = 0; j < W; j++) { /* dL/dy = dL/d(out) · SiLU(z); zs keeps sigmoid(z) */
                zs[t * W + j] = z ? sigmoid_f32(zl[t * W + j]) : 1.0f;
                dy[t * W + j] = z ? gol[t * W + j] * zl[t * W + j] * zs[t * W + j] : gol[t * W + j];
            }
        }
        const float *Bb = B + b * s->B[0], *Cb = C + b * s->C[0];
        scan_block_keep(dt, ul, A2, Bb, s->B[1], Cb, s->C[1], d0, L, N, Dpad, y, decay, xs, dy, dCv);
        adjoint_block(dt, ul, A, Bb, s->B[1], Cb, s->C[1], d0, L, N, Dpad, decay, xs, dy, g, dA_acc, p, qa, dBv);
        if (item + 1 == i1 || (item + 1) % blocks == 0) { /* this batch element's last block in this range */
            flush_lanes(dBv, dB, b, L, N);
            flush_lanes(dCv, dC, b, L, N);
        }
        for (int64_t n = 0; n < N; n++)
            for (int j = 0; j < W; j++) dA[n * Dpad + d0 + j] += dA_acc[n * W + j];
        /* The epilogue's chain rules, per step and channel. */
        float dj[W], dD_acc[W], dbias_acc[W];
        for (int j = 0; j < W; j++) {
            dj[j] = (Dskip && j < w) ? Dskip[d0 + j] : 0.0f;
            dD_acc[j] = 0.0f;
            dbias_acc[j] = 0.0f;
        }
        for (int64_t t = 0; t < L; t++) {
#pragma omp simd
            for (int j = 0; j < W; j++) {
                const int64_t k = t * W + j;
                const float ddt = p[k] * ul[k] + qa[k];
                const float ddl = ddt * sig[k];
                dbias_acc[j] += ddl;
                dD_acc[j] += dy[k] * ul[k];
                if (z) /* out = v·SiLU(z), v = y + D·u: dz = go·v·SiLU'(z) */
                    zl[k] = gol[k] * (y[k] + dj[j] * ul[k]) * zs[k] * (1.0f + zl[k] * (1.0f - zs[k]));
                gol[k] = p[k] * dt[k] + dy[k] * dj[j]; /* du */
                p[k] = ddl;                             /* ddelta */
            }
        }
        scatter(gol, b, d0, w, D, L, du_out);
        scatter(p, b, d0, w, D, L, ddelta_out);
        if (z) scatter(zl, b, d0, w, D, L, dz_out);
        for (int j = 0; j < w; j++) {
            if (dD) dD[d0 + j] += dD_acc[j];
            if (dbias) dbias[d0 + j] += dbias_acc[j];
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * DiM's causal depthwise conv1d + SiLU, the op that feeds the scan (models/scan/conv.py routes CPU training here):
 *
 *     pre[b, d, t] = bias[d] + Σ_k w[d, k] x[b, d, t + k - (KW - 1)]   (x zero before t = 0),   out = SiLU(pre)
 *
 * Rows are (batch element, channel) pairs, numbered b·D + d; a call runs rows [r0, r1). x and go are read at their
 * element strides xs, gs (batch, channel, step): DiM's x is a view of in_proj's product. out, dx contiguous
 * (batch, D, S); dw (D, KW) and dbias (D) accumulated (+=), per thread. work: 3·conv_row_floats(S, KW). Torch's
 * depthwise conv backward (oneDNN) and the separate SiLU passes were a fifth of a tiny DiM's training step. */

/* Rows are worked on in padded buffers of conv_row_floats(S, KW) floats, zeros past the data, so that the loops
 * run on whole W-lane vectors of steps (rows are short: 54 steps in the tiny DiM) with no tail case. */
static int64_t conv_row_floats(int64_t S, int64_t KW) { return (S + KW + 2 * W + W - 1) / W * W; }

/* One row of a (batch, D, S) tensor at strides s into buf[front + t], zeros elsewhere in the buffer. */
static void load_row(const float *src, const int64_t *s, int64_t row, int64_t D, int64_t S, int64_t front,
                     int64_t floats, float *buf) {
    const float *r = src + (row / D) * s[0] + (row % D) * s[1];
    memset(buf, 0, (size_t)floats * sizeof(float));
    if (s[2] == 1)
        memcpy(buf + front, r, (size_t)S * sizeof(float));
    else
        for (int64_t t = 0; t < S; t++) buf[front + t] = r[t * s[2]];
}

/* pre[t..t+W) = b0 + Σ_k w[k] xp[t + k] (xp zero-padded in front by KW - 1). */
static inline v8 conv_v8(const float *xp, const float *w, float b0, int64_t t, int64_t KW) {
    v8 acc = splat(b0);
    for (int64_t k = 0; k < KW; k++) acc += ld(xp + t + k) * w[k];
    return acc;
}

static inline v8 sigmoid_v8(v8 x) { return 1.0f / (1.0f + exp2_v8(-x * LOG2E)); }

void dimbench_conv_silu_forward(const float *x, const int64_t *xs, const float *w, const float *bias, float *out,
                                int64_t D, int64_t S, int64_t KW, int64_t r0, int64_t r1, float *work) {
    const int64_t floats = conv_row_floats(S, KW);
    float *xp = work, *y = work + floats;
    for (int64_t row = r0; row < r1; row++) {
        const int64_t d = row % D;
        const float *wd = w + d * KW, b0 = bias ? bias[d] : 0.0f;
        load_row(x, xs, row, D, S, KW - 1, floats, xp);
        for (int64_t t = 0; t < S; t += W) {
            const v8 pre = conv_v8(xp, wd, b0, t, KW);
            st(y + t, pre * sigmoid_v8(pre));
        }
        memcpy(out + row * S, y, (size_t)S * sizeof(float));
    }
}

void dimbench_conv_silu_backward(const float *x, const int64_t *xs, const float *w, const float *bias,
                                 const float *go, const int64_t *gs, float *dx, float *dw, float *dbias, int64_t D,
                                 int64_t S, int64_t KW, int64_t r0, int64_t r1, float *work) {
    const int64_t floats = conv_row_floats(S, KW);
    float *xp = work, *gp = work + floats, *o = work + 2 * floats;
    for (int64_t row = r0; row < r1; row++) {
        const int64_t d = row % D;
        const float *wd = w + d * KW, b0 = bias ? bias[d] : 0.0f;
        load_row(x, xs, row, D, S, KW - 1, floats, xp);
        load_row(go, gs, row, D, S, 0, floats, gp); /* ∂L/∂out, then ∂L/∂pre in place; zero past S */
        v8 db = {0};
        for (int64_t t = 0; t < S; t += W) { /* SiLU'(p) = σ(p)·(1 + p·(1 - σ(p))) */
            const v8 pre = conv_v8(xp, wd, b0, t, KW), s = sigmoid_v8(pre);
            const v8 g = ld(gp + t) * s * (1.0f + pre * (1.0f - s));
            st(gp + t, g); /* past S: ∂L/∂out is 0 there, so g is too */
            db += g;
        }
        if (dbias) dbias[d] += hsum(db);
        for (int64_t k = 0; k < KW; k++) {
            v8 acc = {0};
            for (int64_t t = 0; t < S; t += W) acc += ld(gp + t) * ld(xp + t + k);
            dw[d * KW + k] += hsum(acc);
        }
        /* x[t] feeds pre[t + (KW - 1) - k] through w[k]; gp is zero from S on */
        for (int64_t t = 0; t < S; t += W) {
            v8 acc = {0};
            for (int64_t k = 0; k < KW; k++) acc += ld(gp + t + KW - 1 - k) * wd[k];
            st(o + t, acc);
        }
        memcpy(dx + row * S, o, (size_t)S * sizeof(float));
    }
}
