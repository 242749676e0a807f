/* Native CPU forward splatting: kernels/splat.py's rules in one fused loop per pass.
 *
 * The torch reference runs ~30 eager passes over memory per view; here each source point is loaded
 * once, projected into a target camera and written into that camera's z-buffer in the same loop
 * iteration, then one gather pass reads the winners. Planes (batch x view) run in parallel (OpenMP)
 * with private z-buffers and no atomics; with fewer planes than threads the source rows are split
 * instead by bands of target pixels.
 *
 * Exactness: every float32 operation of the reference, in the reference's order, with FMA contraction
 * off (-ffp-contract=off) and no fast-math, so the nearest mode is bit-identical to splat_reference;
 * soft mode's expf comes from libm (equal within float tolerance).
 *
 * Built at first use by kernels/native.py; the host wrapper is kernels/splat_native.py.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define EMPTY_HIGH 0x7FFFFFFFu /* high word of an empty key: above every positive float's bits */

static inline uint32_t float_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b;
}

static inline float bits_float(uint32_t b) {
    float x;
    memcpy(&x, &b, sizeof x);
    return x;
}

static inline int plane_parallel(int64_t planes, int threads) { return planes >= threads; }

/* z with NaN where a pixel is not splatted: finite z > 0 and no valid 4-neighbour q with
 * |z - z_q| > tau * min(z, z_q) (tau = +inf disables the flying-pixel rule). depth, z, scratch: (B, H, W).
 * Invalid pixels become NaN first (scratch), so the neighbour test needs no validity branches: any
 * comparison with NaN is false. Border pixels compare with themselves (never an edge). */
void parallax_masked_depth(const float *depth, float *z, float *scratch, int64_t B, int64_t H, int64_t W, float tau,
                           int threads) {
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < B * H; r++) {
            const float *d = depth + r * W;
            float *zn = scratch + r * W;
            for (int64_t j = 0; j < W; j++) zn[j] = (d[j] > 0.0f && d[j] < INFINITY) ? d[j] : NAN;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < B * H; r++) {
            const float *c = scratch + r * W;
            const float *up = (r % H) ? c - W : c; /* a border pixel is its own neighbour: |z - z| = 0 */
            const float *dn = (r % H) < H - 1 ? c + W : c;
            float *out = z + r * W;
            for (int64_t j = 0; j < W; j++) {
                float zp = c[j], zl = c[j ? j - 1 : j], zr = c[j < W - 1 ? j + 1 : j], zu = up[j], zd = dn[j];
                int fly = (fabsf(zp - zl) > (zp < zl ? zp : zl) * tau) | (fabsf(zp - zr) > (zp < zr ? zp : zr) * tau) |
                          (fabsf(zp - zu) > (zp < zu ? zp : zu) * tau) | (fabsf(zp - zd) > (zp < zd ? zp : zd) * tau);
                out[j] = fly ? NAN : zp;
            }
        }
    }
}

/* 1 when built with OpenMP (threads run in parallel), 0 when every call runs on one thread. */
int parallax_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Target pixel (u_t, v_t, z_t) of source pixel centre (u, v) with depth z under the 3x4 matrix m:
 * p_r = ((m[r,0]*u) + (m[r,1]*v + m[r,2]))*z + m[r,3], u_t = p_0/p_2, v_t = p_1/p_2, z_t = p_2. */
static inline void project(const float *restrict m, const float *restrict row, float u, float z, float *restrict ut,
                           float *restrict vt, float *restrict zt) {
    float p0 = (m[0] * u + row[0]) * z + m[3];
    float p1 = (m[4] * u + row[1]) * z + m[7];
    float p2 = (m[8] * u + row[2]) * z + m[11];
    *ut = p0 / p2;
    *vt = p1 / p2;
    *zt = p2;
}

static inline void row_terms(const float *m, float v, float row[3]) {
    for (int r = 0; r < 3; r++) row[r] = m[4 * r + 1] * v + m[4 * r + 2];
}

/* (u_t, v_t, z_t) of every pixel of one source row (a vectorisable loop); zrow: (W,) masked z. */
static void project_row(const float *restrict m, const float *restrict zrow, int64_t i, int64_t W, float *restrict ut,
                        float *restrict vt, float *restrict zt) {
    float row[3];
    row_terms(m, (float)i + 0.5f, row);
    for (int64_t j = 0; j < W; j++) project(m, row, (float)j + 0.5f, zrow[j], ut + j, vt + j, zt + j);
}

/* Every source point of one image into the z-buffer keys of one plane, keeping only the points that
 * land in target pixels [lo, hi). A whole row is projected and turned into (slot, key) pairs first
 * (SIMD, -1 marking a miss); the scalar scatter that follows only takes a running minimum. */
static void nearest_scatter(const float *z, const float *m, int64_t *keys, int64_t H, int64_t W,
                            int64_t Ht, int64_t Wt, int64_t lo, int64_t hi, int64_t *rows) {
    const float wt = (float)Wt, ht = (float)Ht;
    float *restrict ut = (float *)rows, *restrict vt = ut + W, *restrict zt = vt + W; /* rows: ROW_SCRATCH*W */
    int64_t *restrict slot = rows + 2 * W, *restrict key = rows + 3 * W;
    for (int64_t i = 0; i < H; i++) {
        project_row(m, z + i * W, i, W, ut, vt, zt);
        for (int64_t j = 0; j < W; j++) {
            int hit = (zt[j] > 0.0f) & (ut[j] >= 0.0f) & (ut[j] < wt) & (vt[j] >= 0.0f) & (vt[j] < ht); /* NaN: miss */
            /* u_t, v_t >= 0 where hit: truncation is the floor; other lanes are discarded */
            int64_t pix = (int64_t)(hit ? vt[j] : 0.0f) * Wt + (int64_t)(hit ? ut[j] : 0.0f);
            slot[j] = hit & (pix >= lo) & (pix < hi) ? pix : -1;
            key[j] = (int64_t)((uint64_t)float_bits(zt[j]) << 32 | (uint64_t)(i * W + j));
        }
        for (int64_t j = 0; j < W; j++) { /* the branch predicts well: hits come in runs */
            if (slot[j] < 0) continue;
            int64_t *k = keys + slot[j];
            if (key[j] < *k) *k = key[j];
        }
    }
}

/* Scalar code for loops of data-dependent loads: SIMD gathers are slower than scalar loads on several
 * x86 CPUs (measured 1.5x slower on Zen 4 here), and GCC would emit them under -march=native. */
#if defined(__GNUC__) && !defined(__clang__)
#define NO_SIMD_GATHER __attribute__((optimize("no-tree-vectorize")))
#else
#define NO_SIMD_GATHER
#endif

/* Colour, depth and mask of pixels [p0, p1) of one plane from their winning keys; keys (P,), color
 * (C, N) of the plane's source image, outputs (C, P) and (P,). */
NO_SIMD_GATHER static void nearest_gather(const int64_t *restrict keys, const float *restrict color, int64_t C, int64_t N, int64_t P,
                           int64_t p0, int64_t p1, float *restrict out_color, float *restrict out_depth,
                           uint8_t *restrict out_mask) {
    for (int64_t p = p0; p < p1; p++) {
        uint64_t key = (uint64_t)keys[p];
        uint32_t high = (uint32_t)(key >> 32);
        int hit = high != EMPTY_HIGH;
        uint32_t src = (uint32_t)key;
        out_mask[p] = (uint8_t)hit;
        out_depth[p] = hit ? bits_float(high) : 0.0f;
        for (int64_t c = 0; c < C; c++) out_color[c * P + p] = hit ? color[c * N + src] : 0.0f;
    }
}

/* int64 words of per-thread row scratch per source column (3 floats of projection, slot and key). */
#define ROW_SCRATCH 4

static void fill_keys(int64_t *restrict keys, int64_t n) {
    const int64_t empty = (int64_t)((uint64_t)EMPTY_HIGH << 32);
    for (int64_t p = 0; p < n; p++) keys[p] = empty;
}

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* Nearest-point z-buffer splat. z (B, H, W) NaN-masked, M (B, V, 3, 4), color (B, C, H*W) -> out_color
 * (B, V, C, Ht, Wt), out_depth and out_mask (B, V, Ht, Wt). Scratch: keys, threads * Ht*Wt int64 (one
 * Ht*Wt when planes < threads); rows, threads * ROW_SCRATCH * W int64.
 * With at least as many planes as threads, each thread splats whole planes into its own z-buffer;
 * otherwise the threads share a plane's z-buffer, each owning a band of
 * target pixels (every thread projects every point and keeps those in its band: no atomics). Either
 * way a thread fills, scatters and gathers its pixels back to back, while they are still in cache. */
void parallax_splat_nearest(const float *z, const float *M, const float *color, int64_t B, int64_t C, int64_t H,
                            int64_t W, int64_t V, int64_t Ht, int64_t Wt, int64_t *keys, int64_t *rows,
                            float *out_color, float *out_depth, uint8_t *out_mask, int threads) {
    const int64_t P = Ht * Wt, N = H * W, planes = B * V;
    if (plane_parallel(planes, threads)) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
        for (int64_t bv = 0; bv < planes; bv++) {
            int64_t *k = keys + thread_id() * P;
            fill_keys(k, P);
            nearest_scatter(z + (bv / V) * N, M + bv * 12, k, H, W, Ht, Wt, 0, P, rows + thread_id() * ROW_SCRATCH * W);
            nearest_gather(k, color + (bv / V) * C * N, C, N, P, 0, P, out_color + bv * C * P, out_depth + bv * P,
                           out_mask + bv * P);
        }
        return;
    }
    for (int64_t bv = 0; bv < planes; bv++) {
#pragma omp parallel num_threads(threads)
        {
            int t = thread_id();
            int64_t bands = team_size(), lo = P * t / bands, hi = P * (t + 1) / bands;
            fill_keys(keys + lo, hi - lo);
            nearest_scatter(z + (bv / V) * N, M + bv * 12, keys, H, W, Ht, Wt, lo, hi, rows + t * ROW_SCRATCH * W);
            nearest_gather(keys, color + (bv / V) * C * N, C, N, P, lo, hi, out_color + bv * C * P,
                           out_depth + bv * P, out_mask + bv * P);
        }
    }
}

/* The up-to-4 target pixels around (u_t - 1/2, v_t - 1/2) with a positive bilinear weight: returns how
 * many, writing their flat pixel index and weight (kernels/splat.py's _soft_corners, same op order). */
static inline int soft_corners(float ut, float vt, float zt, int64_t Ht, int64_t Wt, int64_t pix[4], float w[4]) {
    float us = ut - 0.5f, vs = vt - 0.5f;
    if (!(zt > 0.0f && us >= -1.0f && us < (float)Wt && vs >= -1.0f && vs < (float)Ht)) return 0;
    float x0 = floorf(us), y0 = floorf(vs);
    float fx = us - x0, fy = vs - y0;
    int64_t x0i = (int64_t)x0, y0i = (int64_t)y0;
    int n = 0;
    for (int dy = 0; dy < 2; dy++) {
        for (int dx = 0; dx < 2; dx++) {
            int64_t x = x0i + dx, y = y0i + dy;
            float wb = (dx ? fx : 1.0f - fx) * (dy ? fy : 1.0f - fy);
            if (x < 0 || x >= Wt || y < 0 || y >= Ht || !(wb > 0.0f)) continue;
            pix[n] = y * Wt + x;
            w[n++] = wb;
        }
    }
    return n;
}

/* Target pixels [lo, hi) of one plane of the soft splat: z_front (min z_t over contributing points),
 * then the weighted sums acc (P, C + 2) = (weight, weight*z, weight*colour), then the normalised
 * outputs. front, acc and the outputs are the plane's; only the band [lo, hi) is touched. */
static void soft_band(const float *z, const float *m, const float *color, int64_t C, int64_t H, int64_t W, int64_t Ht,
                      int64_t Wt, float k, float eps, int64_t lo, int64_t hi, float *front, float *acc,
                      float *out_color, float *out_depth, uint8_t *out_mask, int64_t *rows) {
    const int64_t P = Ht * Wt, N = H * W, S = C + 2;
    float *ut = (float *)rows, *vt = ut + W, *zt = vt + W;
    for (int64_t p = lo; p < hi; p++) front[p] = INFINITY;
    memset(acc + lo * S, 0, (size_t)((hi - lo) * S) * sizeof(float));
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = 0; i < H; i++) {
            project_row(m, z + i * W, i, W, ut, vt, zt);
            for (int64_t j = 0; j < W; j++) {
                float w[4];
                int64_t pix[4];
                int n = soft_corners(ut[j], vt[j], zt[j], Ht, Wt, pix, w);
                for (int c4 = 0; c4 < n; c4++) {
                    if (pix[c4] < lo || pix[c4] >= hi) continue;
                    if (pass == 0) {
                        if (zt[j] < front[pix[c4]]) front[pix[c4]] = zt[j];
                        continue;
                    }
                    float zf = front[pix[c4]];
                    float wt = w[c4] * expf(-k * ((zt[j] - zf) / zf));
                    float *a = acc + pix[c4] * S;
                    a[0] += wt;
                    a[1] += wt * zt[j];
                    for (int64_t c = 0; c < C; c++) a[2 + c] += wt * color[c * N + i * W + j];
                }
            }
        }
    }
    for (int64_t p = lo; p < hi; p++) {
        const float *a = acc + p * S;
        int hit = a[0] > eps;
        out_mask[p] = (uint8_t)hit;
        out_depth[p] = hit ? a[1] / a[0] : 0.0f;
        for (int64_t c = 0; c < C; c++) out_color[c * P + p] = hit ? a[2 + c] / a[0] : 0.0f;
    }
}

/* Depth-aware bilinear splat. Arguments as parallax_splat_nearest, plus the sharpness k and mask
 * threshold eps; scratch: front (threads * Ht*Wt) and acc (threads * Ht*Wt*(C+2)) floats (one plane's
 * worth when planes < threads), rows as parallax_splat_nearest's. Threads
 * take whole planes, or bands of one plane's pixels when there are fewer planes than threads. */
void parallax_splat_soft(const float *z, const float *M, const float *color, int64_t B, int64_t C, int64_t H,
                         int64_t W, int64_t V, int64_t Ht, int64_t Wt, float k, float eps, float *front, float *acc,
                         int64_t *rows, float *out_color, float *out_depth, uint8_t *out_mask, int threads) {
    const int64_t P = Ht * Wt, N = H * W, planes = B * V, S = C + 2;
    if (plane_parallel(planes, threads)) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
        for (int64_t bv = 0; bv < planes; bv++) {
            int t = thread_id();
            soft_band(z + (bv / V) * N, M + bv * 12, color + (bv / V) * C * N, C, H, W, Ht, Wt, k, eps, 0, P,
                      front + t * P, acc + t * P * S, out_color + bv * C * P, out_depth + bv * P, out_mask + bv * P,
                      rows + t * ROW_SCRATCH * W);
        }
        return;
    }
    for (int64_t bv = 0; bv < planes; bv++) {
#pragma omp parallel num_threads(threads)
        {
            int64_t t = thread_id(), bands = team_size();
            soft_band(z + (bv / V) * N, M + bv * 12, color + (bv / V) * C * N, C, H, W, Ht, Wt, k, eps, P * t / bands,
                      P * (t + 1) / bands, front, acc, out_color + bv * C * P, out_depth + bv * P, out_mask + bv * P,
                      rows + t * ROW_SCRATCH * W);
        }
    }
}
