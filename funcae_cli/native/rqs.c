/* funcae's native CPU kernel for rational-quadratic splines: the amortized posterior flow's element-wise work.
 *
 * zuko's monotonic RQS transform (Durkan et al. 2019) with K bins on [-B, B], the identity outside, evaluated
 * (forward) or inverted for many values at once, each with the log-derivative of the forward map at its x.
 * inversion/flow_sampling.py (Splines) computes the same in ~60 eager torch operations per transform, each a pass
 * over all the draws; here each value's spline is built and solved in registers, 16 values at a time (GCC's
 * vector extensions: one AVX-512 register, or two AVX2 ones), ~10x faster. Float32, as the torch code in float32:
 * the same formulas in the same order (cumulative sums left to right), with exp and log from cephes.h
 * (within ~2 ulp) and fused multiply-adds where the compiler finds them, so the two agree to float32 rounding,
 * not bitwise (tests/test_native_splines.py, against float64). Each value's result depends on its own inputs
 * alone: the same bits in any batch, on any number of threads (this kernel runs on its caller's thread).
 *
 * Layout (the caller's, flow_sampling.py): values y and outputs x, ladj are rows x cols, row-major (a row is one
 * feature of one target, its columns the draws). The spline parameters are 3K - 1 planes, plane j at
 * phi + j * pstride: widths (K), heights (K), inner knot derivatives (K - 1), all raw (zuko's unconstrained
 * parameters). per_row: one spline per row (plane j holds rows values: a target's spline from its context alone),
 * else one per value (plane j is laid out like y).
 */
#include <stdint.h>
#include <string.h>

#include "cephes.h" /* exp_f, log_f */

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));

#define MAX_BINS 64 /* flow_sampling.py takes the torch code above this */

static inline v16 splat(float x) { return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static inline i16 splati(int32_t x) { return (i16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
/* a where the mask is set (all ones), else b */
static inline v16 pick(i16 mask, v16 a, v16 b) { return (v16)(((i16)a & mask) | ((i16)b & ~mask)); }
static inline v16 vabs(v16 x) { return (v16)((i16)x & splati(0x7fffffff)); }

/* exp and log of 16 lanes: cephes.h's, one lane at a time (GCC vectorizes these loops) */
static inline v16 vexp(v16 x) {
    v16 r;
    for (int l = 0; l < 16; l++) r[l] = exp_f(x[l]);
    return r;
}

static inline v16 vlog(v16 x) {
    v16 r;
    for (int l = 0; l < 16; l++) r[l] = log_f(x[l]);
    return r;
}

static inline v16 vsqrt(v16 x) {
    v16 r;
    for (int l = 0; l < 16; l++) r[l] = __builtin_sqrtf(x[l]); /* one instruction (-fno-math-errno) */
    return r;
}

/* zuko's bounded parameters, exponentiated: exp(v / (1 + |v| scale)) */
static inline v16 squash(v16 v, float scale) { return vexp(v / (vabs(v) * scale + 1.0f)); }

/* 16 splines: the cumulative exp-widths and exp-heights (K + 1 knots each, 0 first, unnormalized: their totals
   last) and the knot derivatives (K + 1, 1 at both ends), squashed, or raw (then squashed for the bin's two). */
typedef struct {
    v16 cw[MAX_BINS + 1], ch[MAX_BINS + 1], d[MAX_BINS + 1];
} knots;

static inline __attribute__((always_inline)) void prepare(int K, const v16 *p, float wsc, float dsc, int squash_d,
                                                          knots *kn) {
    v16 cw = splat(0.0f), ch = splat(0.0f);
    kn->cw[0] = cw;
    kn->ch[0] = ch;
    for (int j = 0; j < K; j++) {
        cw = cw + squash(p[j], wsc);
        ch = ch + squash(p[K + j], wsc);
        kn->cw[j + 1] = cw;
        kn->ch[j + 1] = ch;
    }
    kn->d[0] = kn->d[K] = splat(squash_d ? 1.0f : 0.0f);
    for (int j = 1; j < K; j++) kn->d[j] = squash_d ? squash(p[2 * K + j - 1], dsc) : p[2 * K + j - 1];
}

/* The spline (inverse or forward) at 16 values v; out the image, ld the forward's log-derivative at x. */
static inline __attribute__((always_inline)) void spline16(int inverse, int K, const knots *kn, int squashed, v16 v,
                                                           float b, float dsc, v16 *out, v16 *ld) {
    const v16 *cum = inverse ? kn->ch : kn->cw;
    const v16 level = (v + b) * ((0.5f / b) * cum[K]); /* v's place on the unnormalized cumulative sums */
    i16 k = splati(0);
    for (int j = 1; j < K; j++) k = k - (cum[j] < level); /* its bin, 0 .. K - 1 (true is -1) */
    v16 w0 = kn->cw[0], w1 = kn->cw[1], h0 = kn->ch[0], h1 = kn->ch[1], r0 = kn->d[0], r1 = kn->d[1];
    for (int j = 1; j < K; j++) {
        const i16 at = k == splati(j);
        w0 = pick(at, kn->cw[j], w0);
        w1 = pick(at, kn->cw[j + 1], w1);
        h0 = pick(at, kn->ch[j], h0);
        h1 = pick(at, kn->ch[j + 1], h1);
        r0 = pick(at, kn->d[j], r0);
        r1 = pick(at, kn->d[j + 1], r1);
    }
    const v16 x0 = (2 * b) * (w0 / kn->cw[K]) - b, x1 = (2 * b) * (w1 / kn->cw[K]) - b;
    const v16 y0 = (2 * b) * (h0 / kn->ch[K]) - b, y1 = (2 * b) * (h1 / kn->ch[K]) - b;
    const v16 d0 = squashed ? r0 : squash(r0, dsc), d1 = squashed ? r1 : squash(r1, dsc);
    const v16 s = (y1 - y0) / (x1 - x0);
    const v16 t = d0 + d1 - 2 * s;
    v16 z, image;
    if (inverse) { /* the root in [0, 1] of the bin's quadratic (Durkan et al. 2019, eq. 29) */
        const v16 dy = y1 - y0, yy = v - y0;
        const v16 qa = dy * (s - d0) + yy * t, qb = dy * d0 - yy * t, qc = -s * yy;
        z = 2 * qc / (-qb - vsqrt(qb * qb - 4 * qa * qc));
        image = x0 + z * (x1 - x0);
    } else {
        z = (v - x0) / (x1 - x0);
        const v16 zz = z * (1 - z);
        image = y0 + (y1 - y0) * (s * z * z + d0 * zz) / (s + t * zz);
    }
    const v16 zz = z * (1 - z), den = s + t * zz;
    const v16 log_slope = vlog(s * s * (2 * s * zz + d0 * (1 - z) * (1 - z) + d1 * z * z) / (den * den));
    const i16 inside = vabs(v) < b; /* NaN: outside, passed through */
    *out = pick(inside, image, v);
    *ld = pick(inside, log_slope, splat(0.0f));
}

static inline __attribute__((always_inline)) void spline_rows(int32_t inverse, int64_t rows, int64_t cols,
                                                              const int32_t K, const float *phi, int64_t pstride,
                                                              int32_t per_row, const float *y, float *x, float *ladj,
                                                              float b, float wsc, float dsc) {
    const int total = 3 * K - 1;
    v16 p[3 * MAX_BINS];
    knots kn;
    for (int64_t m = 0; m < rows; m++) {
        if (per_row) {
            for (int j = 0; j < total; j++) p[j] = splat(phi[j * pstride + m]);
            prepare(K, p, wsc, dsc, 1, &kn);
        }
        for (int64_t c = 0; c < cols; c += 16) {
            const int64_t e = m * cols + c;
            v16 v, out, ld;
            if (cols - c >= 16) {
                memcpy(&v, y + e, sizeof v);
                if (!per_row) {
                    for (int j = 0; j < total; j++) memcpy(&p[j], phi + j * pstride + e, sizeof v);
                    prepare(K, p, wsc, dsc, 0, &kn);
                }
                spline16(inverse, K, &kn, per_row, v, b, dsc, &out, &ld);
                memcpy(x + e, &out, sizeof out);
                memcpy(ladj + e, &ld, sizeof ld);
            } else { /* the row's last columns, zero-padded to 16 (the padding's results are dropped) */
                const int64_t len = cols - c;
                float buf[16] = {0};
                for (int64_t l = 0; l < len; l++) buf[l] = y[e + l];
                memcpy(&v, buf, sizeof v);
                if (!per_row) {
                    for (int j = 0; j < total; j++) {
                        for (int64_t l = 0; l < len; l++) buf[l] = phi[j * pstride + e + l];
                        memcpy(&p[j], buf, sizeof v);
                    }
                    prepare(K, p, wsc, dsc, 0, &kn);
                }
                spline16(inverse, K, &kn, per_row, v, b, dsc, &out, &ld);
                for (int64_t l = 0; l < len; l++) {
                    x[e + l] = out[l];
                    ladj[e + l] = ld[l];
                }
            }
        }
    }
}

/* x = f(y) (forward) or f^-1(y) (inverse) and ladj = log f'(x), for rows x cols values y; bins K <= MAX_BINS;
   wscale, dscale: the squash's scales of the widths and heights, and of the derivatives (flow_sampling.Splines). */
void fae_rqs(int32_t inverse, int64_t rows, int64_t cols, int32_t bins, const float *phi, int64_t pstride,
             int32_t per_row, const float *y, float *x, float *ladj, float bound, float wscale, float dscale) {
    if (bins == 8) /* zuko's default: the bins' loops unrolled, the knots in registers */
        spline_rows(inverse, rows, cols, 8, phi, pstride, per_row, y, x, ladj, bound, wscale, dscale);
    else
        spline_rows(inverse, rows, cols, bins, phi, pstride, per_row, y, x, ladj, bound, wscale, dscale);
}
