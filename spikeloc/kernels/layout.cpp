/* Channels-last to channels-first (README "Speed and many GPUs"), the operator spikeloc::nhwc_to_nchw of
 * ops.cpp: dst[n, c, p] = src[n, p, c] for float32 [N, HW, C] -> [N, C, HW], in tiles of 64 positions x
 * 16 channels that stay in L1, so every line is read and written once (torch's copy_ in this direction
 * walks the source with stride C; benchmarks/RESULTS.md).
 */
#include <stdint.h>

#include "kernels.h"

void nhwc_to_nchw(const float *src, float *dst, i64 N, i64 C, i64 HW, int threads) {
    const i64 TILE_P = 64, TILE_C = 16, tiles = (HW + TILE_P - 1) / TILE_P;
    #pragma omp parallel for collapse(2) num_threads(threads) if(threads > 1) schedule(static)
    for (i64 n = 0; n < N; ++n)
        for (i64 tile = 0; tile < tiles; ++tile) {
            const float *s = src + n * HW * C;
            float *d = dst + n * C * HW;
            i64 p0 = tile * TILE_P, p1 = p0 + TILE_P < HW ? p0 + TILE_P : HW;
            for (i64 c0 = 0; c0 < C; c0 += TILE_C) {
                i64 c1 = c0 + TILE_C < C ? c0 + TILE_C : C;
                for (i64 c = c0; c < c1; ++c) {
                    #pragma omp simd
                    for (i64 p = p0; p < p1; ++p) d[c * HW + p] = s[p * C + c];
                }
            }
        }
}
