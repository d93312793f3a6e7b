/* The CPU kernels behind the operators of ops.cpp: contiguous float32 buffers in, buffers out. */
#pragma once
#include <stdint.h>

typedef int64_t i64;

/* The multi-Gaussian surrogate's folded constants (neurons/surrogate.py, MultiGaussian.constants). */
typedef struct {
    float c0, c1, k0, k1, sigma;
} surrogate_t;

/* ltc_cell.cpp: the LTC conv cell around its tau convolution; tensors [N, C, HW]. */
void ltc_input_forward(const float *cur, const float *u, const float *w1, const float *b1, i64 N, i64 C, i64 HW,
                       int batch_stats, float eps, float *mean1, float *var1, float *rstd1, float *a, int threads);
void ltc_tau_forward(const float *cur, const float *u, const float *t, const float *w1, const float *b1,
                     const float *mean1, const float *rstd1, const float *w2, const float *b2, i64 N, i64 C, i64 HW,
                     int batch_stats, float eps, float theta, int hard, float *mean2, float *var2, float *rstd2,
                     float *spike, float *u_next, int threads);
void ltc_tau_backward(const float *cur, const float *u, const float *t, const float *grad_spike,
                      const float *grad_next, const float *w1, const float *b1, const float *mean1,
                      const float *rstd1, const float *w2, const float *b2, const float *mean2, const float *rstd2,
                      i64 N, i64 C, i64 HW, int batch_stats, float theta, int hard, int scaled, surrogate_t g,
                      float *grad_u1, float *grad_t, float *grad_w2, float *grad_b2, int threads);
void ltc_input_backward(const float *cur, const float *t, const float *grad_u1, const float *grad_a,
                        const float *w1, const float *mean1, const float *rstd1, const float *w2, const float *b2,
                        const float *mean2, const float *rstd2, i64 N, i64 C, i64 HW, int batch_stats,
                        float *grad_u, float *grad_c, float *grad_w1, float *grad_b1, int threads);

/* fptt.cpp: FPTT's staged update over flat state; the weights and their gradients one pointer per tensor. */
void fptt_stage(const float *const *weights, const i64 *numels, i64 count, const float *bar, const float *lam,
                float alpha, float beta, float update_alpha, float *new_bar, float *new_lam, float *const *grads,
                double *value, int threads);
void fptt_penalty(const float *const *weights, const i64 *numels, i64 count, const float *bar, const float *lam,
                  float alpha, float *const *grads, double *value, int threads);

/* layout.cpp: float32 [N, HW, C] -> [N, C, HW]. */
void nhwc_to_nchw(const float *src, float *dst, i64 N, i64 C, i64 HW, int threads);
