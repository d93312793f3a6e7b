/* The LTC-SN conv cell's element-wise work as four CPU kernels (README "Speed and many GPUs"), called by
 * the operators of ops.cpp.
 *
 * Around two library convolutions, c = conv(x) and t = tau_conv(a):
 *   i = BN(c), a = i + u, tau = sigmoid(BN'(t)), u1 = u + tau (i - u), s = H(u1 - theta),
 *   u_next = (1 - s) u1 (hard reset) or u1 - s theta (soft).
 * Tensors are contiguous float32 [N, C, HW]. Every kernel walks one channel at a time (channels in
 * parallel), so a channel's per-channel sums and the pass that uses them read the same N * HW values,
 * the second time from cache. BN in training mode takes the batch's mean and biased variance (two
 * passes, sums in double: see CHUNK); otherwise the given running mean and variance.
 * The spike's derivative is the multi-Gaussian surrogate
 *   k0 exp(c0 v^2) - k1 (exp(c1 (v - sigma)^2) + exp(c1 (v + sigma)^2)).
 */
#include <math.h>
#include <stdint.h>

#include "kernels.h"
#ifdef __AVX512F__
#include <immintrin.h>
#endif


#define PLANE(ptr, n, c) ((ptr) + ((n) * C + (c)) * HW)
#define INLINE static inline __attribute__((always_inline))
#define LANES 16
/* Sums run in float vectors over chunks of CHUNK elements, each chunk's total added to a double: as
 * exact over a plane as double sums (a lane adds CHUNK / LANES values in float), without halving the
 * vector width (a double per lane made the backward's tau kernel 15 % slower). */
#define CHUNK 256
#define CHANNELS _Pragma("omp parallel for num_threads(threads) if(threads > 1) schedule(static)") \
    for (i64 c = 0; c < C; ++c)

#define LOG2E 1.44269504088896341f

/* 2^t for |t| <= 126, inline so that loops vectorise without calls: 2^n 2^f, n = round(t), 2^f by a
 * degree-5 polynomial on |f| <= 1/2 fitted to its relative error (7.5e-8; evaluated in float32 below
 * 2.4e-7, as the degree-6 Taylor polynomial, one multiply-add more, was). */
static const float EXP2_POLY[] = {1.32764715e-3f, 9.67554133e-3f, 5.55071327e-2f, 2.40221197e-1f,
                                  6.93146967e-1f, 1.00000007f};  /* highest degree first */

static inline float exp2_inline(float t) {
    float n = floorf(t + 0.5f), f = t - n, p = EXP2_POLY[0];
    for (int k = 1; k < 6; ++k) p = p * f + EXP2_POLY[k];
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

/* exp(x) for |x| <= 80. */
static inline float exp_inline(float x) { return exp2_inline(x * LOG2E); }

/* x clamped to [lo, hi]; NaN stays NaN (the non-finite guard must see it downstream). */
static inline float clamp(float x, float lo, float hi) { return x < lo ? lo : x > hi ? hi : x; }

/* 2^t for t <= 0, no smaller than 2^-126 (the smallest normal float; as good as zero in the surrogate). */
static inline float exp2_neg(float t) { return exp2_inline(t < -126.0f ? -126.0f : t); }

/* sigmoid(z); beyond |z| = 80 it is 1 or 1e-35, as good as exact in float32. */
static inline float sigmoidf(float z) { return 1.0f / (1.0f + exp_inline(clamp(-z, -80.0f, 80.0f))); }

/* The surrogate, with c0 and c1 in base 2 (times log2 e, as base2 gives them: a multiplication less). */
static inline float surrogate(float v, surrogate_t g) {
    float lo = v - g.sigma, hi = v + g.sigma;
    return g.k0 * exp2_neg(g.c0 * v * v) - g.k1 * (exp2_neg(g.c1 * lo * lo) + exp2_neg(g.c1 * hi * hi));
}

static surrogate_t base2(surrogate_t g) {
    g.c0 *= LOG2E;
    g.c1 *= LOG2E;
    return g;
}

/* Mean and rstd = 1 / sqrt(var + eps) of channel c; batch statistics also return the biased var. */
static void channel_norm(const float *x, i64 N, i64 C, i64 HW, i64 c, int batch_stats, float eps,
                         float *mean, float *var, float *rstd) {
    if (batch_stats) {
        double sum = 0, sq = 0;
        for (i64 n = 0; n < N; ++n) {
            const float *p = PLANE(x, n, c);
            for (i64 j0 = 0; j0 < HW; j0 += CHUNK) {
                i64 end = j0 + CHUNK < HW ? j0 + CHUNK : HW;
                float acc = 0;
                #pragma omp simd reduction(+:acc)
                for (i64 j = j0; j < end; ++j) acc += p[j];
                sum += acc;
            }
        }
        double m = sum / (double)(N * HW);
        for (i64 n = 0; n < N; ++n) {
            const float *p = PLANE(x, n, c);
            for (i64 j0 = 0; j0 < HW; j0 += CHUNK) {
                i64 end = j0 + CHUNK < HW ? j0 + CHUNK : HW;
                float acc = 0;
                #pragma omp simd reduction(+:acc)
                for (i64 j = j0; j < end; ++j) {
                    float d = p[j] - (float)m;
                    acc += d * d;
                }
                sq += acc;
            }
        }
        mean[c] = (float)m;
        var[c] = (float)(sq / (double)(N * HW));
    }
    rstd[c] = 1.0f / sqrtf(var[c] + eps);
}

/* Batch norm's backward for channel c, in place: g holds d(loss)/d(output) of x's normalisation,
 * with its sum and its sum against x_hat = (x - mean) rstd; it becomes d(loss)/dx. Also the weight
 * and bias gradients. Without batch statistics the normalisation is affine: dx = scale * g. */
static void bn_backward(const float *x, float *g, i64 N, i64 C, i64 HW, i64 c, float mean, float rstd, float scale,
                        double sum, double sum_x, int batch_stats, float *grad_w, float *grad_b) {
    grad_w[c] = (float)sum_x;
    grad_b[c] = (float)sum;
    float mean_g = batch_stats ? (float)(sum / (double)(N * HW)) : 0.0f;
    float mean_gx = batch_stats ? (float)(sum_x / (double)(N * HW)) : 0.0f;
    for (i64 n = 0; n < N; ++n) {
        const float *px = PLANE(x, n, c);
        float *pg = PLANE(g, n, c);
        #pragma omp simd
        for (i64 j = 0; j < HW; ++j) pg[j] = scale * (pg[j] - mean_g - (px[j] - mean) * rstd * mean_gx);
    }
}

/* Forward, first half: BN of c (stats into mean1/var1/rstd1 when batch_stats) and a = BN(c) + u. */
void ltc_input_forward(const float *cur, const float *u, const float *w1, const float *b1, i64 N, i64 C, i64 HW,
                       int batch_stats, float eps, float *mean1, float *var1, float *rstd1, float *a, int threads) {
    CHANNELS {
        channel_norm(cur, N, C, HW, c, batch_stats, eps, mean1, var1, rstd1);
        float scale = w1[c] * rstd1[c], shift = b1[c] - mean1[c] * scale;
        for (i64 n = 0; n < N; ++n) {
            const float *pc = PLANE(cur, n, c), *pu = PLANE(u, n, c);
            float *pa = PLANE(a, n, c);
            #pragma omp simd
            for (i64 j = 0; j < HW; ++j) pa[j] = pc[j] * scale + shift + pu[j];
        }
    }
}

/* A plane's last HW % LANES elements run through zero-padded copies of LANES elements, so that loops
 * with exponentials run as whole vectors only (the scalar tail of a 13x13 plane cost as much as the
 * rest of it). Zero gradients in the padding add zero to every sum. */
INLINE const float *pad(float *buffer, const float *src, i64 count) {
    if (!src) return 0;
    for (i64 j = 0; j < LANES; ++j) buffer[j] = j < count ? src[j] : 0.0f;
    return buffer;
}

INLINE void unpad(float *dst, const float *buffer, i64 count) {
    for (i64 j = 0; j < count; ++j) dst[j] = buffer[j];
}

INLINE void tau_forward_plane(const float *pc, const float *pu, const float *pt, float s1, float h1, float s2,
                              float h2, float theta, int hard, float *ps, float *pn, i64 len) {
    #pragma omp simd
    for (i64 j = 0; j < len; ++j) {
        float i = pc[j] * s1 + h1, tau = sigmoidf(pt[j] * s2 + h2);
        float u1 = pu[j] + tau * (i - pu[j]);
        float s = u1 - theta > 0.0f ? 1.0f : 0.0f;
        ps[j] = s;
        pn[j] = hard ? (1.0f - s) * u1 : u1 - s * theta;
    }
}

/* Forward, second half: BN' of t (stats into mean2/var2/rstd2), tau, the LTC update, spike and reset. */
void ltc_tau_forward(const float *cur, const float *u, const float *t, const float *w1, const float *b1,
                     const float *mean1, const float *rstd1, const float *w2, const float *b2, i64 N, i64 C, i64 HW,
                     int batch_stats, float eps, float theta, int hard, float *mean2, float *var2, float *rstd2,
                     float *spike, float *u_next, int threads) {
    i64 body = HW - HW % LANES, tail = HW - body;
    CHANNELS {
        channel_norm(t, N, C, HW, c, batch_stats, eps, mean2, var2, rstd2);
        float s1 = w1[c] * rstd1[c], h1 = b1[c] - mean1[c] * s1;
        float s2 = w2[c] * rstd2[c], h2 = b2[c] - mean2[c] * s2;
        for (i64 n = 0; n < N; ++n) {
            const float *pc = PLANE(cur, n, c), *pu = PLANE(u, n, c), *pt = PLANE(t, n, c);
            float *ps = PLANE(spike, n, c), *pn = PLANE(u_next, n, c);
            tau_forward_plane(pc, pu, pt, s1, h1, s2, h2, theta, hard, ps, pn, body);
            if (tail) {
                float bc[LANES], bu[LANES], bt[LANES], bs[LANES], bn[LANES];
                tau_forward_plane(pad(bc, pc + body, tail), pad(bu, pu + body, tail), pad(bt, pt + body, tail),
                                  s1, h1, s2, h2, theta, hard, bs, bn, LANES);
                unpad(ps + body, bs, tail);
                unpad(pn + body, bn, tail);
            }
        }
    }
}

/* d(loss)/d(u1) (times tau where scaled) and d(loss)/d(BN' output) of len elements; grad_spike /
 * grad_next may be absent (zero). */
INLINE void tau_grads(const float *pc, const float *pu, const float *pt, const float *gs, const float *gn,
                      float s1, float h1, float s2, float h2, float m2, float r2, float theta, int hard, int scaled,
                      surrogate_t g, i64 len, float *gu1, float *gz, double *sum, double *sum_x) {
    for (i64 j0 = 0; j0 < len; j0 += CHUNK) {
        i64 end = j0 + CHUNK < len ? j0 + CHUNK : len;
        float acc = 0, acc_x = 0;
        #pragma omp simd reduction(+:acc, acc_x)
        for (i64 j = j0; j < end; ++j) {
            float i = pc[j] * s1 + h1, tau = sigmoidf(pt[j] * s2 + h2), d = i - pu[j];
            float u1 = pu[j] + tau * d, v = u1 - theta;
            float grad_s = gs ? gs[j] : 0.0f, grad_n = gn ? gn[j] : 0.0f;
            float grad_v = (grad_s - grad_n * (hard ? u1 : theta)) * surrogate(v, g);
            float grad_u1 = (hard && v > 0.0f ? 0.0f : grad_n) + grad_v;
            float grad_z = grad_u1 * d * tau * (1.0f - tau);
            gu1[j] = scaled ? grad_u1 * tau : grad_u1;
            gz[j] = grad_z;
            acc += grad_z;
            acc_x += grad_z * (pt[j] - m2) * r2;
        }
        *sum += acc;
        *sum_x += acc_x;
    }
}

/* tau_grads with the absent gradient known at compile time (one vector loop per case). */
INLINE void tau_grads_any(const float *pc, const float *pu, const float *pt, const float *gs, const float *gn,
                          float s1, float h1, float s2, float h2, float m2, float r2, float theta, int hard,
                          int scaled, surrogate_t g, i64 len, float *gu1, float *gz, double *sum, double *sum_x) {
    if (gs && gn) tau_grads(pc, pu, pt, gs, gn, s1, h1, s2, h2, m2, r2, theta, hard, scaled, g, len, gu1, gz, sum,
                            sum_x);
    else if (gs) tau_grads(pc, pu, pt, gs, 0, s1, h1, s2, h2, m2, r2, theta, hard, scaled, g, len, gu1, gz, sum,
                           sum_x);
    else tau_grads(pc, pu, pt, 0, gn, s1, h1, s2, h2, m2, r2, theta, hard, scaled, g, len, gu1, gz, sum, sum_x);
}

#ifdef __AVX512F__
/* 2^t of 16 lanes for finite t: 2^f by the polynomial of exp2_inline, then times 2^n by vscalefps (no
 * integer arithmetic; NaN stays NaN). */
INLINE __m512 exp2_v(__m512 t) {
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(EXP2_POLY[0]);
    for (int k = 1; k < 6; ++k) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_POLY[k]));
    return _mm512_scalef_ps(p, n);
}

/* 2^t for t <= 0, as exp2_neg: no smaller than 2^-126 (max keeps a NaN t, its second operand). */
INLINE __m512 exp2_neg_v(__m512 t) { return exp2_v(_mm512_max_ps(_mm512_set1_ps(-126.0f), t)); }

/* tau_grads of a whole plane in AVX-512 intrinsics, its ragged end under a lane mask (zeros loaded there
 * give zero gradients). The backward's tau kernel is the one bound by arithmetic rather than memory (four
 * exponentials and a division per value); written out, it ran 15-20 % faster than GCC's vectorised loop. */
INLINE void tau_grads_v(const float *pc, const float *pu, const float *pt, const float *gs, const float *gn,
                        float s1, float h1, float s2, float h2, float m2, float r2, float theta, int hard, int scaled,
                        surrogate_t g, i64 len, float *gu1, float *gz, double *sum, double *sum_x) {
    const __m512 vs1 = _mm512_set1_ps(s1), vh1 = _mm512_set1_ps(h1), vs2 = _mm512_set1_ps(-s2 * LOG2E);
    const __m512 vh2 = _mm512_set1_ps(-h2 * LOG2E), lim = _mm512_set1_ps(80.0f * LOG2E);
    const __m512 vm2 = _mm512_set1_ps(m2), vr2 = _mm512_set1_ps(r2), vth = _mm512_set1_ps(theta);
    const __m512 c0 = _mm512_set1_ps(g.c0), c1 = _mm512_set1_ps(g.c1), k0 = _mm512_set1_ps(g.k0);
    const __m512 k1 = _mm512_set1_ps(g.k1), sigma = _mm512_set1_ps(g.sigma);
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    for (i64 j0 = 0; j0 < len; j0 += CHUNK) {
        i64 end = j0 + CHUNK < len ? j0 + CHUNK : len;
        __m512 acc = zero, acc_x = zero;
        for (i64 j = j0; j < end; j += LANES) {
            __mmask16 m = end - j >= LANES ? 0xFFFF : (__mmask16)((1u << (end - j)) - 1);
            __m512 c = _mm512_maskz_loadu_ps(m, pc + j), u = _mm512_maskz_loadu_ps(m, pu + j);
            __m512 t = _mm512_maskz_loadu_ps(m, pt + j);
            /* tau = 1 / (1 + exp(-(s2 t + h2))), the exponent within +-80 as sigmoidf's (NaN kept) */
            __m512 e = _mm512_min_ps(lim, _mm512_max_ps(_mm512_sub_ps(zero, lim), _mm512_fmadd_ps(t, vs2, vh2)));
            __m512 tau = _mm512_div_ps(one, _mm512_add_ps(one, exp2_v(e)));
            __m512 d = _mm512_sub_ps(_mm512_fmadd_ps(c, vs1, vh1), u);
            __m512 u1 = _mm512_fmadd_ps(tau, d, u), v = _mm512_sub_ps(u1, vth);
            __m512 lo = _mm512_sub_ps(v, sigma), hi = _mm512_add_ps(v, sigma);
            __m512 wide = _mm512_add_ps(exp2_neg_v(_mm512_mul_ps(c1, _mm512_mul_ps(lo, lo))),
                                        exp2_neg_v(_mm512_mul_ps(c1, _mm512_mul_ps(hi, hi))));
            __m512 surrogate = _mm512_fmsub_ps(k0, exp2_neg_v(_mm512_mul_ps(c0, _mm512_mul_ps(v, v))),
                                               _mm512_mul_ps(k1, wide));
            __m512 grad_s = gs ? _mm512_maskz_loadu_ps(m, gs + j) : zero;
            __m512 grad_n = gn ? _mm512_maskz_loadu_ps(m, gn + j) : zero;
            __m512 grad_v = _mm512_mul_ps(gn ? _mm512_fnmadd_ps(grad_n, hard ? u1 : vth, grad_s) : grad_s, surrogate);
            if (hard) grad_n = _mm512_mask_mov_ps(grad_n, _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), zero);
            __m512 grad_u1 = gn ? _mm512_add_ps(grad_n, grad_v) : grad_v;
            __m512 grad_z = _mm512_mul_ps(_mm512_mul_ps(grad_u1, d), _mm512_mul_ps(tau, _mm512_sub_ps(one, tau)));
            _mm512_mask_storeu_ps(gu1 + j, m, scaled ? _mm512_mul_ps(grad_u1, tau) : grad_u1);
            _mm512_mask_storeu_ps(gz + j, m, grad_z);
            acc = _mm512_add_ps(acc, grad_z);
            acc_x = _mm512_fmadd_ps(_mm512_mul_ps(grad_z, _mm512_sub_ps(t, vm2)), vr2, acc_x);
        }
        *sum += _mm512_reduce_add_ps(acc);
        *sum_x += _mm512_reduce_add_ps(acc_x);
    }
}
#endif

/* Backward, first half: grad_u1 (for ltc_input_backward; grad_u1 * tau where scaled, all that the
 * gradient of c needs when u needs none) and grad_t (into tau_conv's backward), with BN' weight and bias
 * gradients. grad_spike or grad_next may be NULL (no gradient reached them). */
void ltc_tau_backward(const float *cur, const float *u, const float *t, const float *grad_spike,
                      const float *grad_next, const float *w1, const float *b1, const float *mean1,
                      const float *rstd1, const float *w2, const float *b2, const float *mean2, const float *rstd2,
                      i64 N, i64 C, i64 HW, int batch_stats, float theta, int hard, int scaled, surrogate_t g,
                      float *grad_u1, float *grad_t, float *grad_w2, float *grad_b2, int threads) {
    g = base2(g);
    CHANNELS {
        float s1 = w1[c] * rstd1[c], h1 = b1[c] - mean1[c] * s1;
        float m2 = mean2[c], r2 = rstd2[c], s2 = w2[c] * r2, h2 = b2[c] - m2 * s2;
        double sum = 0, sum_x = 0;
        for (i64 n = 0; n < N; ++n) {
            const float *pc = PLANE(cur, n, c), *pu = PLANE(u, n, c), *pt = PLANE(t, n, c);
            const float *gs = grad_spike ? PLANE(grad_spike, n, c) : 0, *gn = grad_next ? PLANE(grad_next, n, c) : 0;
            float *gu1 = PLANE(grad_u1, n, c), *gz = PLANE(grad_t, n, c);
#ifdef __AVX512F__  /* one loop per case of the absent gradient, as in tau_grads_any */
            if (gs && gn) tau_grads_v(pc, pu, pt, gs, gn, s1, h1, s2, h2, m2, r2, theta, hard, scaled, g, HW, gu1, gz,
                                      &sum, &sum_x);
            else if (gs) tau_grads_v(pc, pu, pt, gs, 0, s1, h1, s2, h2, m2, r2, theta, hard, scaled, g, HW, gu1, gz,
                                     &sum, &sum_x);
            else tau_grads_v(pc, pu, pt, 0, gn, s1, h1, s2, h2, m2, r2, theta, hard, scaled, g, HW, gu1, gz, &sum,
                             &sum_x);
#else
            i64 body = HW - HW % LANES, tail = HW - body;
            tau_grads_any(pc, pu, pt, gs, gn, s1, h1, s2, h2, m2, r2, theta, hard, scaled, g, body, gu1, gz, &sum,
                          &sum_x);
            if (tail) {
                float bc[LANES], bu[LANES], bt[LANES], bs[LANES], bn[LANES], bg[LANES], bz[LANES];
                tau_grads_any(pad(bc, pc + body, tail), pad(bu, pu + body, tail), pad(bt, pt + body, tail),
                              pad(bs, gs ? gs + body : 0, tail), pad(bn, gn ? gn + body : 0, tail), s1, h1, s2, h2,
                              m2, r2, theta, hard, scaled, g, LANES, bg, bz, &sum, &sum_x);
                unpad(gu1 + body, bg, tail);
                unpad(gz + body, bz, tail);
            }
#endif
        }
        bn_backward(t, grad_t, N, C, HW, c, m2, r2, s2, sum, sum_x, batch_stats, grad_w2, grad_b2);
    }
}

/* grad_u (unless gu is NULL, when gu1 holds grad_u1 * tau and tau is not needed), and grad_i (into gc)
 * with its sums, of len elements. */
INLINE void input_grads(const float *pc, const float *pt, const float *gu1, const float *ga, float m1, float r1,
                        float s2, float h2, i64 len, float *gu, float *gc, double *sum, double *sum_x) {
    for (i64 j0 = 0; j0 < len; j0 += CHUNK) {
        i64 end = j0 + CHUNK < len ? j0 + CHUNK : len;
        float acc = 0, acc_x = 0;
        #pragma omp simd reduction(+:acc, acc_x)
        for (i64 j = j0; j < end; ++j) {
            float g = gu1[j], tau = gu ? sigmoidf(pt[j] * s2 + h2) : 1.0f;
            float grad_i = g * tau + ga[j];
            if (gu) gu[j] = g - g * tau + ga[j];
            gc[j] = grad_i;
            acc += grad_i;
            acc_x += grad_i * (pc[j] - m1) * r1;
        }
        *sum += acc;
        *sum_x += acc_x;
    }
}

/* input_grads with gu's absence known at compile time. */
INLINE void input_grads_any(const float *pc, const float *pt, const float *gu1, const float *ga, float m1, float r1,
                            float s2, float h2, i64 len, float *gu, float *gc, double *sum, double *sum_x) {
    if (gu) input_grads(pc, pt, gu1, ga, m1, r1, s2, h2, len, gu, gc, sum, sum_x);
    else input_grads(pc, pt, gu1, ga, m1, r1, s2, h2, len, 0, gc, sum, sum_x);
}

/* Backward, second half: with grad_a from tau_conv's backward, the gradients of u (unless grad_u is
 * NULL: u needs none, and grad_u1 comes scaled by tau) and of c (BN's input), and BN's weight and bias
 * gradients. grad_c may alias grad_u1 and grad_u grad_a: each value is read before it is overwritten. */
void ltc_input_backward(const float *cur, const float *t, const float *grad_u1, const float *grad_a,
                        const float *w1, const float *mean1, const float *rstd1, const float *w2, const float *b2,
                        const float *mean2, const float *rstd2, i64 N, i64 C, i64 HW, int batch_stats,
                        float *grad_u, float *grad_c, float *grad_w1, float *grad_b1, int threads) {
    i64 body = HW - HW % LANES, tail = HW - body;
    CHANNELS {
        float m1 = mean1[c], r1 = rstd1[c], s1 = w1[c] * r1;
        float s2 = w2[c] * rstd2[c], h2 = b2[c] - mean2[c] * s2;
        double sum = 0, sum_x = 0;
        for (i64 n = 0; n < N; ++n) {
            const float *pc = PLANE(cur, n, c), *pt = grad_u ? PLANE(t, n, c) : 0, *gu1 = PLANE(grad_u1, n, c);
            const float *ga = PLANE(grad_a, n, c);
            float *gu = grad_u ? PLANE(grad_u, n, c) : 0, *gc = PLANE(grad_c, n, c);
            input_grads_any(pc, pt, gu1, ga, m1, r1, s2, h2, body, gu, gc, &sum, &sum_x);
            if (tail) {
                float bc[LANES], bt[LANES], bg[LANES], ba[LANES], bu[LANES], bi[LANES];
                input_grads_any(pad(bc, pc + body, tail), pad(bt, pt ? pt + body : 0, tail),
                                pad(bg, gu1 + body, tail), pad(ba, ga + body, tail), m1, r1, s2, h2, LANES,
                                gu ? bu : 0, bi, &sum, &sum_x);
                if (gu) unpad(gu + body, bu, tail);
                unpad(gc + body, bi, tail);
            }
        }
        bn_backward(cur, grad_c, N, C, HW, c, m1, r1, s1, sum, sum_x, batch_stats, grad_w1, grad_b1);
    }
}
