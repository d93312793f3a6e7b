/* FPTT's update of all parameters in one pass (README "Training: FPTT and BPTT"), called by the operator
 * spikeloc::fptt_stage of ops.cpp.
 *
 * Per element, with a = update_alpha:
 *   lam' = lam - a (W - W_bar),   W_bar' = (1 - beta) W_bar + beta W - (beta / a) lam',
 * and on the way the next penalty's gradient alpha (W - W_bar') - lam' and its value, the sum of
 * alpha / 2 (W - W_bar')^2 - W lam' (double accumulators; a float overflow shows as inf once it is
 * stored as float). The state is flat: tensor k's elements follow tensor k - 1's, each in its W's
 * memory order; the gradient goes to one tensor per W, laid out like it. Large tensors are split over the
 * threads.
 *
 * The three outputs are read again only at the next update, long after they leave the cache, so with
 * AVX-512 they are stored non-temporally: straight to memory, without first reading the lines they
 * overwrite (a third less memory traffic).
 */
#include <stdint.h>

#include "kernels.h"
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef struct {
    float alpha, beta, update_alpha, keep, pull;
} fptt_t;

/* Elements [start, end) of one tensor with plain stores; returns their share of the value. Without UPDATE the
 * state stays (lam' = lam, W_bar' = W_bar): the penalty of the current state, as the update computes it. */
template <bool UPDATE>
static double stage_plain(const float *w, const float *b, const float *l, float *nb, float *nl, float *g,
                          i64 start, i64 end, fptt_t f, int threads) {
    double acc = 0;
    #pragma omp parallel for simd num_threads(threads) if(threads > 1 && end - start >= 65536) schedule(static) \
        reduction(+:acc)
    for (i64 j = start; j < end; ++j) {
        float trace = UPDATE ? l[j] - f.update_alpha * (w[j] - b[j]) : l[j];
        float average = UPDATE ? f.keep * b[j] + f.beta * w[j] - f.pull * trace : b[j];
        float d = w[j] - average;
        if (UPDATE) {
            nl[j] = trace;
            nb[j] = average;
        }
        g[j] = f.alpha * d - trace;
        acc += 0.5 * f.alpha * ((double)d * d) - (double)w[j] * trace;
    }
    return acc;
}

#ifdef __AVX512F__
/* Elements [start, start + 16 * vectors) with nl + start 64-byte aligned (and so nb + start: the two state
 * buffers have the same offsets); g is stored non-temporally where it is aligned too. */
template <bool UPDATE>
static double stage_vectors(const float *w, const float *b, const float *l, float *nb, float *nl, float *g,
                            i64 start, i64 vectors, fptt_t f, int threads) {
    const int g_aligned = ((uintptr_t)(g + start) & 63) == 0;
    double total = 0;
    #pragma omp parallel num_threads(threads) if(threads > 1 && vectors >= 4096) reduction(+:total)
    {
        const __m512 ua = _mm512_set1_ps(f.update_alpha), keep = _mm512_set1_ps(f.keep);
        const __m512 beta = _mm512_set1_ps(f.beta), pull = _mm512_set1_ps(f.pull);
        const __m512 alpha = _mm512_set1_ps(f.alpha), half = _mm512_set1_ps(0.5f * f.alpha);
        __m512d acc = _mm512_setzero_pd();
        #pragma omp for schedule(static)
        for (i64 i = 0; i < vectors; ++i) {
            i64 j = start + 16 * i;
            __m512 vw = _mm512_loadu_ps(w + j), vb = _mm512_loadu_ps(b + j), vl = _mm512_loadu_ps(l + j);
            __m512 trace = UPDATE ? _mm512_fnmadd_ps(ua, _mm512_sub_ps(vw, vb), vl) : vl;
            __m512 average = UPDATE ? _mm512_fnmadd_ps(pull, trace, _mm512_fmadd_ps(beta, vw, _mm512_mul_ps(keep, vb)))
                                    : vb;
            __m512 d = _mm512_sub_ps(vw, average);
            __m512 grad = _mm512_fmsub_ps(alpha, d, trace);
            if (UPDATE) {
                _mm512_stream_ps(nl + j, trace);
                _mm512_stream_ps(nb + j, average);
            }
            if (g_aligned) _mm512_stream_ps(g + j, grad);
            else _mm512_storeu_ps(g + j, grad);
            __m512 term = _mm512_fmsub_ps(_mm512_mul_ps(half, d), d, _mm512_mul_ps(vw, trace));
            acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(term)));
            acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_extractf32x8_ps(term, 1)));
        }
        total += _mm512_reduce_add_pd(acc);
    }
    _mm_sfence();  /* the streamed stores are visible before the caller reads the outputs */
    return total;
}
#endif

template <bool UPDATE>
static void run(const float *const *weights, const i64 *numels, i64 count, const float *bar, const float *lam,
                float alpha, float beta, float update_alpha, float *new_bar, float *new_lam, float *const *grads,
                double *value, int threads) {
    fptt_t f = {alpha, beta, update_alpha, 1.0f - beta, beta / update_alpha};
    double total = 0;
    for (i64 k = 0, offset = 0; k < count; offset += numels[k], ++k) {
        const float *w = weights[k], *b = bar + offset, *l = lam + offset;
        float *nb = new_bar + offset, *nl = new_lam + offset, *g = grads[k];
        i64 n = numels[k], done = 0;
#ifdef __AVX512F__
        i64 head = (i64)((64 - ((uintptr_t)nl & 63)) & 63) / (i64)sizeof(float);
        if (head < n && ((uintptr_t)nl & 3) == 0) {
            i64 vectors = (n - head) / 16;
            total += stage_plain<UPDATE>(w, b, l, nb, nl, g, 0, head, f, 1);
            total += stage_vectors<UPDATE>(w, b, l, nb, nl, g, head, vectors, f, threads);
            done = head + 16 * vectors;
        }
#endif
        total += stage_plain<UPDATE>(w, b, l, nb, nl, g, done, n, f, threads);
    }
    *value = total;
}

void fptt_stage(const float *const *weights, const i64 *numels, i64 count, const float *bar, const float *lam,
                float alpha, float beta, float update_alpha, float *new_bar, float *new_lam, float *const *grads,
                double *value, int threads) {
    run<true>(weights, numels, count, bar, lam, alpha, beta, update_alpha, new_bar, new_lam, grads, value, threads);
}

/* The penalty's value and gradient of the current state, element by element as fptt_stage computes them for
 * its new state (the same code on the same elements: the same roundings). */
void fptt_penalty(const float *const *weights, const i64 *numels, i64 count, const float *bar, const float *lam,
                  float alpha, float *const *grads, double *value, int threads) {
    /* lam as the layout's reference: its offsets equal new_lam's in fptt_stage (both buffers 64-byte aligned) */
    run<false>(weights, numels, count, bar, lam, alpha, 0.0f, 1.0f, const_cast<float *>(bar), const_cast<float *>(lam),
               grads, value, threads);
}
