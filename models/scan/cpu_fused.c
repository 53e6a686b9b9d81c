/* dimbench's fused selective scan for the CPU: the forward and the analytic backward, one pass over the sequence
 * each, the state kept in L1 cache. Built and loaded by models/scan/cpu_fused.py, which documents the layout and
 * the contract; the arithmetic is the recurrence of models/scan/reference.py:
 *
 *     x_t = exp(Δ_t A) ⊙ x_{t-1} + (Δ_t u_t) B_t,   y_t = Σ_n C_t[n] x_t[n]
 *
 * Layout (all float32, contiguous): dt, u, dy, y, p, qa: (batch, L, D), tokens-major, D a multiple of W (the caller
 * pads channels with zeros); A, A2 = A·log2(e): (N, D); B, C, dB, dC: (batch, L, N). Work items are (batch element,
 * block of W channels) pairs, numbered batch-major; a call runs items [i0, i1), so threads split the items.
 * Vectorised over the W channels of a block (gcc/clang auto-vectorisation, -O3).
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

/* y = Σ_n C_t x_t for items [i0, i1). h: N·W floats of scratch. */
void dimbench_scan_forward(const float *dt, const float *u, const float *A2, const float *B, const float *C, float *y,
                           int64_t L, int64_t D, int64_t N, int64_t i0, int64_t i1, float *h) {
    const int64_t blocks = D / W;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t b = item / blocks, d0 = (item % blocks) * W;
        memset(h, 0, (size_t)(N * W) * sizeof(float));
        for (int64_t t = 0; t < L; t++) {
            const int64_t row = (b * L + t) * D + d0;
            const float *Bt = B + (b * L + t) * N, *Ct = C + (b * L + t) * N;
            float dl[W], du[W], acc[W];
            for (int j = 0; j < W; j++) {
                dl[j] = dt[row + j];
                du[j] = dl[j] * u[row + j];
                acc[j] = 0.0f;
            }
            for (int64_t n = 0; n < N; n++) {
                const float *a = A2 + n * D + d0;
                const float bn = Bt[n], cn = Ct[n];
                float *hn = h + n * W;
#pragma omp simd
                for (int j = 0; j < W; j++) {
                    hn[j] = exp2_f32(dl[j] * a[j]) * hn[j] + du[j] * bn;
                    acc[j] += hn[j] * cn;
                }
            }
            for (int j = 0; j < W; j++) y[row + j] = acc[j];
        }
    }
}

/* The backward for items [i0, i1), with dy = ∂L/∂y:
 *   y  = Σ_n C_t x_t                          (batch, L, D)  written
 *   p  = Σ_n g_t B_t (∂ of Δ_t u_t)           (batch, L, D)  written
 *   qa = Σ_n Q_t A, Q_t = g_t ⊙ Ā_t ⊙ x_{t-1}   (batch, L, D)  written (0 at t = 0)
 *   dA += Σ_{b, t} Q_t Δ_t                     (N, D)         accumulated
 *   dB += Σ_d g_t Δ_t u_t,  dC += Σ_d x_t dy_t   (batch, L, N)  accumulated
 * where g_t = C_t dy_t + Ā_{t+1} ⊙ g_{t+1} is the adjoint state. work: (2·L + 2)·N·W floats of scratch: the block's
 * decays and states for every step (recomputed here), then g and the dA accumulator. */
void dimbench_scan_backward(const float *dt, const float *u, const float *A2, const float *A, const float *B,
                            const float *C, const float *dy, float *y, float *p, float *qa, float *dA, float *dB,
                            float *dC, int64_t L, int64_t D, int64_t N, int64_t i0, int64_t i1, float *work) {
    const int64_t blocks = D / W, step = N * W;
    float *decay = work, *xs = work + L * step, *g = xs + L * step, *dA_acc = g + step;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t b = item / blocks, d0 = (item % blocks) * W;
        /* Forward: every state and decay of the block; y and dC on the way. g (zeros) stands for x_{-1}. */
        memset(g, 0, (size_t)step * sizeof(float));
        for (int64_t t = 0; t < L; t++) {
            const int64_t row = (b * L + t) * D + d0;
            const float *Bt = B + (b * L + t) * N, *Ct = C + (b * L + t) * N;
            float *dCt = dC + (b * L + t) * N;
            float dl[W], du[W], dyl[W], acc[W];
            for (int j = 0; j < W; j++) {
                dl[j] = dt[row + j];
                du[j] = dl[j] * u[row + j];
                dyl[j] = dy[row + j];
                acc[j] = 0.0f;
            }
            for (int64_t n = 0; n < N; n++) {
                const float *a = A2 + n * D + d0;
                const float bn = Bt[n], cn = Ct[n];
                float *an = decay + t * step + n * W, *xn = xs + t * step + n * W;
                const float *xp = t > 0 ? xs + (t - 1) * step + n * W : g + n * W;
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int j = 0; j < W; j++) {
                    an[j] = exp2_f32(dl[j] * a[j]);
                    xn[j] = an[j] * xp[j] + du[j] * bn;
                    acc[j] += xn[j] * cn;
                    s += xn[j] * dyl[j];
                }
                dCt[n] += s;
            }
            for (int j = 0; j < W; j++) y[row + j] = acc[j];
        }
        /* Backward in time: the adjoint state g (still zeros: nothing after the last step), and from it p, qa,
         * dA, dB. */
        memset(dA_acc, 0, (size_t)step * sizeof(float));
        for (int64_t t = L - 1; t >= 0; t--) {
            const int64_t row = (b * L + t) * D + d0;
            const float *Bt = B + (b * L + t) * N, *Ct = C + (b * L + t) * N;
            float *dBt = dB + (b * L + t) * N;
            float dl[W], du[W], dyl[W], pacc[W], qacc[W];
            for (int j = 0; j < W; j++) {
                dl[j] = dt[row + j];
                du[j] = dl[j] * u[row + j];
                dyl[j] = dy[row + j];
                pacc[j] = 0.0f;
                qacc[j] = 0.0f;
            }
            for (int64_t n = 0; n < N; n++) {
                const float bn = Bt[n], cn = Ct[n];
                float *gn = g + n * W;
                /* Ā_{t+1}; at the last step g is 0 and any finite decay leaves it so */
                const float *next = decay + (t + 1 < L ? t + 1 : t) * step + n * W;
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int j = 0; j < W; j++) {
                    gn[j] = next[j] * gn[j] + cn * dyl[j];
                    pacc[j] += gn[j] * bn;
                    s += gn[j] * du[j];
                }
                dBt[n] += s;
                if (t > 0) {
                    const float *an = decay + t * step + n * W, *xp = xs + (t - 1) * step + n * W;
                    const float *a = A + n * D + d0;
                    float *accn = dA_acc + n * W;
#pragma omp simd
                    for (int j = 0; j < W; j++) {
                        const float q = gn[j] * an[j] * xp[j];
                        accn[j] += q * dl[j];
                        qacc[j] += q * a[j];
                    }
                }
            }
            for (int j = 0; j < W; j++) {
                p[row + j] = pacc[j];
                qa[row + j] = qacc[j];
            }
        }
        for (int64_t n = 0; n < N; n++)
            for (int j = 0; j < W; j++) dA[n * D + d0 + j] += dA_acc[n * W + j];
    }
}
