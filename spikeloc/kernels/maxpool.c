/* 2x2 max pooling with stride 2 (README "Speed and many GPUs"), as torch's max_pool2d(x, 2) on
 * contiguous [planes, H, W] float32: an odd last row or column is left out, the output of a window
 * is its first largest value in row-major order, and a NaN counts as larger than anything (the last
 * NaN of a window wins). Instead of torch's int64 index per output, the forward keeps the window
 * position (0..3) in one byte; the backward writes every input gradient (the maximum's gets the
 * output's gradient, the others zero) without a separate zeroing pass.
 * The pooled planes may lie inside a larger output, so that pooled tensors are joined along channels
 * without a copy: input plane p = n * group + c is output plane n * out_group + offset + c (the same
 * for the gradients); group = out_group and offset 0 is plain pooling.
 */
#include <stdint.h>

typedef int64_t i64;

#define PLANES _Pragma("omp parallel for num_threads(threads) if(threads > 1) schedule(static)") \
    for (i64 p = 0; p < planes; ++p)
#define OUT_PLANE(p) (((p) / group) * out_group + offset + (p) % group)
#define LANES 16
#define INLINE static inline __attribute__((always_inline))

/* LANES windows from two input rows (a fixed count: the loop is one vector, no remainder code). */
INLINE void pool_lanes(const float *top, const float *bottom, float *o, uint8_t *k) {
    #pragma omp simd
    for (i64 j = 0; j < LANES; ++j) {
        float m = top[2 * j], v;
        uint8_t at = 0;
        v = top[2 * j + 1];
        if (v > m || v != v) { m = v; at = 1; }
        v = bottom[2 * j];
        if (v > m || v != v) { m = v; at = 2; }
        v = bottom[2 * j + 1];
        if (v > m || v != v) { m = v; at = 3; }
        o[j] = m;
        k[j] = at;
    }
}

/* One input row's gradient (2 LANES values) from its LANES windows' gradients; row: 0 (top) or 2 (bottom). */
INLINE void unpool_lanes(const float *go, const uint8_t *k, int row, float *g) {
    #pragma omp simd
    for (i64 j = 0; j < LANES; ++j) {
        g[2 * j] = k[j] == row ? go[j] : 0.0f;
        g[2 * j + 1] = k[j] == row + 1 ? go[j] : 0.0f;
    }
}

/* A row runs LANES windows at a time, its last w % LANES through zero-padded copies: with a loop over
 * the whole row, a row of 16 or 48 windows ran several times slower per value than one of 32 (GCC's
 * remainder code). */
INLINE void copy(float *dst, const float *src, i64 count) {
    for (i64 j = 0; j < count; ++j) dst[j] = src[j];
}

void maxpool2_forward(const float *x, i64 planes, i64 H, i64 W, i64 group, i64 out_group, i64 offset, float *out,
                      uint8_t *where, int threads) {
    const i64 h = H / 2, w = W / 2, body = w - w % LANES, tail = w - body;
    PLANES {
        for (i64 i = 0; i < h; ++i) {
            const float *top = x + (p * H + 2 * i) * W, *bottom = top + W;
            float *o = out + (OUT_PLANE(p) * h + i) * w;
            uint8_t *k = where + (p * h + i) * w;
            for (i64 j = 0; j < body; j += LANES) pool_lanes(top + 2 * j, bottom + 2 * j, o + j, k + j);
            if (tail) {
                float bt[2 * LANES] = {0}, bb[2 * LANES] = {0}, bo[LANES];
                uint8_t bk[LANES];
                copy(bt, top + 2 * body, 2 * tail);
                copy(bb, bottom + 2 * body, 2 * tail);
                pool_lanes(bt, bb, bo, bk);
                copy(o + body, bo, tail);
                for (i64 j = 0; j < tail; ++j) k[body + j] = bk[j];
            }
        }
    }
}

void maxpool2_backward(const float *grad_out, const uint8_t *where, i64 planes, i64 H, i64 W, i64 group,
                       i64 out_group, i64 offset, float *grad_in, int threads) {
    const i64 h = H / 2, w = W / 2, body = w - w % LANES, tail = w - body;
    PLANES {
        for (i64 r = 0; r < H; ++r) {
            float *g = grad_in + (p * H + r) * W;
            if (r / 2 >= h) {  /* an odd last row: no window reads it */
                for (i64 c = 0; c < W; ++c) g[c] = 0.0f;
                continue;
            }
            const float *go = grad_out + (OUT_PLANE(p) * h + r / 2) * w;
            const uint8_t *k = where + (p * h + r / 2) * w;
            const int row = (int)(r & 1) * 2;
            for (i64 j = 0; j < body; j += LANES) unpool_lanes(go + j, k + j, row, g + 2 * j);
            if (tail) {
                float bgo[LANES] = {0}, bg[2 * LANES];
                uint8_t bk[LANES] = {0};
                copy(bgo, go + body, tail);
                for (i64 j = 0; j < tail; ++j) bk[j] = k[body + j];
                unpool_lanes(bgo, bk, row, bg);
                copy(g + 2 * body, bg, 2 * tail);
            }
            if (W & 1) g[W - 1] = 0.0f;
        }
    }
}
