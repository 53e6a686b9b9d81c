/* dimbench's fused selective scan for the CPU: the whole op (Δ prologue, the scan, the D and SiLU(z) epilogue),
 * forward and analytic backward, one pass over the sequence per block of W channels with the block's state in
 * registers and L1 cache. Built and loaded by models/scan/cpu_fused.py, which documents the contract; the
 * arithmetic is the recurrence of models/scan/reference.py:
 *
 *     x_t = exp(Δ_t A) ⊙ x_{t-1} + (Δ_t u_t) B_t,   y_t = Σ_n C_t[n] x_t[n],   out = (y + D u) SiLU(z)
 *
 * Layout (all float32, contiguous, the op's own): u, delta, z, out and their gradients (batch, D, L); B, C and
 * theirs (batch, N, L); A, A2 = A·log2(e) and dA (N, Dpad), Dpad = D rounded up to whole blocks (zero-padded).
 * Work items are (batch element, block of W channels) pairs, numbered batch-major; a call runs items [i0, i1), so
 * threads split the items, each with its own scratch and accumulators. Vectorised over the W channels of a block
 * (gcc/clang auto-vectorisation at -O3).
 */
#include <stdint.h>
#include <string.h>

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

/* Gather W channels [d0, d0 + w) of a (batch, D, L) tensor's element b into step-major dst[L][W] (zeros past w). */
static void gather(const float *src, int64_t b, int64_t d0, int w, int64_t D, int64_t L, float *dst) {
    for (int64_t t = 0; t < L; t++)
        for (int j = 0; j < W; j++) dst[t * W + j] = 0.0f;
    for (int j = 0; j < w; j++) {
        const float *row = src + (b * D + d0 + j) * L;
        for (int64_t t = 0; t < L; t++) dst[t * W + j] = row[t];
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
static void load_block(const float *delta, const float *bias, int softplus, const float *u, int64_t b, int64_t d0,
                       int w, int64_t D, int64_t L, float *dt, float *sig, float *ul) {
    gather(delta, b, d0, w, D, L, dt);
    prologue(dt, sig, bias, d0, w, softplus, L);
    gather(u, b, d0, w, D, L, ul);
}

/* The scan of one block over step-major inputs: y[t][j] = Σ_n C_t[n] x_t[n][j]; decay/xs: when not NULL, every
 * step's decays and states are kept (L·N·W each). h: N·W scratch (the running state when xs is NULL). */
static void scan_block(const float *dt, const float *u, const float *A2, const float *B, const float *C, int64_t b,
                       int64_t d0, int64_t L, int64_t N, int64_t Dpad, float *y, float *decay, float *xs, float *h,
                       const float *dy, float *dC) {
    const int64_t step = N * W;
    memset(h, 0, (size_t)step * sizeof(float));
    for (int64_t t = 0; t < L; t++) {
        float du[W], acc[W];
        for (int j = 0; j < W; j++) {
            du[j] = dt[t * W + j] * u[t * W + j];
            acc[j] = 0.0f;
        }
        for (int64_t n = 0; n < N; n++) {
            const float *a = A2 + n * Dpad + d0;
            const float bn = B[(b * N + n) * L + t], cn = C[(b * N + n) * L + t];
            const float *xp = xs ? (t > 0 ? xs + (t - 1) * step + n * W : h + n * W) : h + n * W;
            float *xn = xs ? xs + t * step + n * W : h + n * W;
            float *an = decay ? decay + t * step + n * W : NULL;
#pragma omp simd
            for (int j = 0; j < W; j++) {
                float e = exp2_f32(dt[t * W + j] * a[j]);
                if (an) an[j] = e;
                xn[j] = e * xp[j] + du[j] * bn;
                acc[j] += xn[j] * cn;
            }
            if (dC) { /* dC_t += Σ_j x_t dy_t */
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int j = 0; j < W; j++) s += xn[j] * dy[t * W + j];
                dC[(b * N + n) * L + t] += s;
            }
        }
        for (int j = 0; j < W; j++) y[t * W + j] = acc[j];
    }
}

/* out (batch, D, L) = (y + Dskip·u)·SiLU(z) for items [i0, i1). A2: (N, Dpad) = A·log2(e), zero-padded to whole
 * blocks. work: (4·L + 1)·W + N·W floats. */
void dimbench_scan_op_forward(const float *u, const float *delta, const float *bias, int softplus, const float *A2,
                              const float *B, const float *C, const float *Dskip, const float *z, float *out,
                              int64_t L, int64_t D, int64_t N, int64_t i0, int64_t i1, float *work) {
    const int64_t blocks = (D + W - 1) / W, Dpad = blocks * W;
    float *dt = work, *ul = dt + L * W, *y = ul + L * W, *zl = y + L * W, *h = zl + L * W;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t b = item / blocks, d0 = (item % blocks) * W;
        const int w = (int)(D - d0 < W ? D - d0 : W);
        load_block(delta, bias, softplus, u, b, d0, w, D, L, dt, NULL, ul);
        scan_block(dt, ul, A2, B, C, b, d0, L, N, Dpad, y, NULL, NULL, h, NULL, NULL);
        if (z) gather(z, b, d0, w, D, L, zl);
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
 * thread its own accumulators. work: (2·L·N + 2·N)·W + 10·L·W floats. */
void dimbench_scan_op_backward(const float *go, const float *u, const float *delta, const float *bias, int softplus,
                               const float *A, const float *A2, const float *B, const float *C, const float *Dskip,
                               const float *z, float *du_out, float *ddelta_out, float *dz_out, float *dA, float *dB,
                               float *dC, float *dD, float *dbias, int64_t L, int64_t D, int64_t N, int64_t i0,
                               int64_t i1, float *work) {
    const int64_t blocks = (D + W - 1) / W, Dpad = blocks * W, step = N * W;
    float *decay = work, *xs = decay + L * step, *g = xs + L * step, *dA_acc = g + step;
    float *dt = dA_acc + step, *sig = dt + L * W, *ul = sig + L * W, *dy = ul + L * W, *gol = dy + L * W;
    float *zl = gol + L * W, *zs = zl + L * W, *y = zs + L * W, *p = y + L * W, *qa = p + L * W;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t b = item / blocks, d0 = (item % blocks) * W;
        const int w = (int)(D - d0 < W ? D - d0 : W);
        load_block(delta, bias, softplus, u, b, d0, w, D, L, dt, sig, ul);
        gather(go, b, d0, w, D, L, gol);
        if (z) gather(z, b, d0, w, D, L, zl);
        for (int64_t t = 0; t < L; t++) {
#pragma omp simd
            for (int j = 0; j < W; j++) { /* dL/dy = dL/d(out) · SiLU(z); zs keeps sigmoid(z) */
                zs[t * W + j] = z ? sigmoid_f32(zl[t * W + j]) : 1.0f;
                dy[t * W + j] = z ? gol[t * W + j] * zl[t * W + j] * zs[t * W + j] : gol[t * W + j];
            }
        }
        scan_block(dt, ul, A2, B, C, b, d0, L, N, Dpad, y, decay, xs, g, dy, dC);
        /* The adjoint recurrence g_t = C_t dy_t + Ā_{t+1} ⊙ g_{t+1}, backward in time; from it p, qa, dA, dB. */
        memset(g, 0, (size_t)step * sizeof(float));
        memset(dA_acc, 0, (size_t)step * sizeof(float));
        for (int64_t t = L - 1; t >= 0; t--) {
            float du[W], pacc[W], qacc[W];
            for (int j = 0; j < W; j++) {
                du[j] = dt[t * W + j] * ul[t * W + j];
                pacc[j] = 0.0f;
                qacc[j] = 0.0f;
            }
            for (int64_t n = 0; n < N; n++) {
                const float bn = B[(b * N + n) * L + t], cn = C[(b * N + n) * L + t];
                float *gn = g + n * W;
                const float *next = decay + (t + 1 < L ? t + 1 : t) * step + n * W; /* g is 0 after the last step */
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int j = 0; j < W; j++) {
                    gn[j] = next[j] * gn[j] + cn * dy[t * W + j];
                    pacc[j] += gn[j] * bn;
                    s += gn[j] * du[j];
                }
                dB[(b * N + n) * L + t] += s;
                if (t > 0) {
                    const float *an = decay + t * step + n * W, *xp = xs + (t - 1) * step + n * W;
                    const float *a = A + n * Dpad + d0;
                    float *accn = dA_acc + n * W;
#pragma omp simd
                    for (int j = 0; j < W; j++) {
                        const float q = gn[j] * an[j] * xp[j];
                        accn[j] += q * dt[t * W + j];
                        qacc[j] += q * a[j];
                    }
                }
            }
            for (int j = 0; j < W; j++) {
                p[t * W + j] = pacc[j];
                qa[t * W + j] = qacc[j];
            }
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
