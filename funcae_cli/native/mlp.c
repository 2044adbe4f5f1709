/* funcae's native CPU kernels: the narrow middle of an MLP autoencoder's training step.
 *
 * An AE on curves is wide at both ends (n_points) and narrow in the middle (hidden widths of 16-32,
 * a latent of 2). torch runs the wide products well (MKL, both cores); the narrow ones are ~40 tiny
 * operations per step whose cost is dispatch, not arithmetic. These functions do the whole narrow
 * chain, forward and backward, in one call each; the last layer in Gram form; and the first product
 * together with the batch's gather (fae_project), one pass over the rows where torch makes two.
 * funcae_cli/native/kernels.py compiles this file on first use (cc -O3 -march=native
 * -fno-trapping-math, -fopenmp where torch's libgomp is loaded) and native/step.py drives it.
 *
 * Layout: float32, row-major. Inside the chain, activations are feature-major: h[j] is (dims[j], ld)
 * and columns [0, batch) hold the batch, so every inner loop runs along the batch (long, contiguous,
 * vectorized). Weights are torch's: W[j-1] is (dims[j], dims[j-1]), b[j-1] is (dims[j]).
 * Sums over the batch use 16 interleaved partial sums added in a fixed order: results do not depend
 * on the compiler's vectorization choices.
 *
 * Threads: built with -fopenmp where torch's own libgomp is in the process (native/kernels.py), the
 * kernels that run along the batch's rows or the points (fae_project, fae_gram_prepare,
 * fae_gram_backward, fae_row_sumsq) split that work over torch's OpenMP threads (the same pool,
 * ~1 us a region). They split only outputs computed independently, never a sum, so the results are
 * the same bits on any number of threads (tests/test_native.py checks 1 against 2). A whole training
 * step also runs torch's wide products (MKL), which need not give the same bits on 1 and 2 threads. The chain's
 * kernels stay on one thread: at 256 x 16 a split measured no faster (the data then moves between
 * the cores' caches).
 */
#include <stdint.h>
#include <string.h>

#include "cephes.h" /* exp_f */
#ifdef _OPENMP
#include <omp.h>
static inline int64_t thread_id(void) { return omp_get_thread_num(); }
static inline int64_t thread_count(void) { return omp_get_num_threads(); }
#else
static inline int64_t thread_id(void) { return 0; }
static inline int64_t thread_count(void) { return 1; }
#endif

/* Fewer columns (or points) than this run on one thread. */
#define PAR_MIN 64

/* Inside a parallel region: this thread's share [lo, hi) of n items, contiguous and in whole tiles of
   `tile` (the last share takes the tail), so vector loops see the same tiles as on one thread. */
static inline void share(int64_t n, int64_t tile, int64_t *lo, int64_t *hi) {
    const int64_t t = thread_id(), T = thread_count();
    const int64_t per = ((n + T - 1) / T + tile - 1) / tile * tile;
    *lo = t * per < n ? t * per : n;
    *hi = *lo + per < n ? *lo + per : n;
}

/* 16 floats: one AVX-512 register (the compiler splits it where the CPU has narrower ones).
   Loads and stores go through memcpy: no alignment is assumed. */
typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store16(float *p, v16 v) { memcpy(p, &v, sizeof v); }

static inline v16 splat16(float x) { return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/* The 16 lanes' sum as a tree (halves, quarters, ...): four dependent adds instead of sixteen, in a
   fixed order. */
static inline float hsum16(v16 v) {
    v8 lo, hi;
    memcpy(&lo, &v, sizeof lo);
    memcpy(&hi, (const char *)&v + sizeof lo, sizeof hi);
    const v8 s8 = lo + hi;
    v4 a, b;
    memcpy(&a, &s8, sizeof a);
    memcpy(&b, (const char *)&s8 + sizeof a, sizeof b);
    const v4 s4 = a + b;
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

#define FAE_ABI 8
#define FAE_MAX_WIDTH 32 /* the widest chain layer the Gram kernels take (native/step.py: MAX_WIDTH) */

enum { ACT_NONE = 0, ACT_TANH = 1, ACT_RELU = 2 };

int32_t fae_abi(void) { return FAE_ABI; }

/* The threads a kernel's parallel region gets (1 in a single-threaded build). */
int32_t fae_threads(void) {
    int32_t n = 1;
#pragma omp parallel
    {
        if (thread_id() == 0) n = (int32_t)thread_count();
    }
    return n;
}

/* tanh(x): Cephes tanhf, an odd polynomial below |x| = 0.625 and 1 - 2 / (exp(2|x|) + 1) above
   (|x| clamped at 10, where tanh is 1 in float32). Within 1.3 ulp; written branch-free to vectorize. */
static inline float tanh_f(float x) {
    const float ax = x < 0.0f ? -x : x;
    const float a = ax < 10.0f ? ax : 10.0f;
    const float t = 1.0f - 2.0f / (exp_f(a + a) + 1.0f);
    const float big = x < 0.0f ? -t : t;
    const float z = x * x;
    const float small = ((((-5.70498872745E-3f * z + 2.06390887954E-2f) * z - 5.37397155531E-2f) * z
                          + 1.33314422036E-1f) * z - 3.33332819422E-1f) * z * x + x;
    const float y = ax < 0.625f ? small : big;
    return x == x ? y : x; /* NaN stays NaN, as in torch (the clamp above would make it 1) */
}

void fae_tanh(float *restrict y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = tanh_f(y[i]);
}

static void activate(float *restrict y, int64_t n, int32_t act) {
    if (act == ACT_TANH) {
        for (int64_t i = 0; i < n; i++) y[i] = tanh_f(y[i]);
    } else if (act == ACT_RELU) {
        for (int64_t i = 0; i < n; i++) y[i] = y[i] < 0.0f ? 0.0f : y[i]; /* NaN stays NaN */
    }
}

/* g <- g * act'(.), written from the activation's output y. */
static void activate_backward(float *restrict g, const float *restrict y, int64_t n, int32_t act) {
    if (act == ACT_TANH) {
        for (int64_t i = 0; i < n; i++) g[i] *= 1.0f - y[i] * y[i];
    } else if (act == ACT_RELU) {
        for (int64_t i = 0; i < n; i++) g[i] = y[i] > 0.0f ? g[i] : 0.0f;
    }
}

/* y[r][c] = bias[r] + sum_q A[r][q] x[q][c] for r < rows, c < batch, where A[r][q] = a[r * sr + q * sq]
   (sr, sq let the same loop read W or its transpose) and bias may be NULL (zero). Columns go in
   tiles of 64, then 16, held in registers over the whole q loop; each element is summed in the
   order bias, q = 0, 1, ..., the same in every tile and in the tail. */
static void small_product(float *restrict y, const float *restrict a, int64_t sr, int64_t sq,
                          const float *restrict bias, const float *restrict x, int64_t rows, int64_t depth,
                          int64_t batch, int64_t ld) {
    int64_t c0 = 0;
    for (; c0 + 64 <= batch; c0 += 64) { /* four independent sums in flight hide the FMA latency */
        for (int64_t r = 0; r < rows; r++) {
            v16 acc[4];
            for (int t = 0; t < 4; t++) acc[t] = splat16(bias ? bias[r] : 0.0f);
            for (int64_t q = 0; q < depth; q++) {
                const v16 arq = splat16(a[r * sr + q * sq]);
                for (int t = 0; t < 4; t++) acc[t] += arq * load16(x + q * ld + c0 + 16 * t);
            }
            for (int t = 0; t < 4; t++) store16(y + r * ld + c0 + 16 * t, acc[t]);
        }
    }
    for (; c0 + 16 <= batch; c0 += 16) {
        for (int64_t r = 0; r < rows; r++) {
            v16 acc = splat16(bias ? bias[r] : 0.0f);
            for (int64_t q = 0; q < depth; q++) acc += splat16(a[r * sr + q * sq]) * load16(x + q * ld + c0);
            store16(y + r * ld + c0, acc);
        }
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = c0; c < batch; c++) {
            float acc = bias ? bias[r] : 0.0f;
            for (int64_t q = 0; q < depth; q++) acc += a[r * sr + q * sq] * x[q * ld + c];
            y[r * ld + c] = acc;
        }
}

/* A dot product over n: 16 partial sums (lane l takes c = l mod 16 over the full tiles), added as
   a tree (hsum16), then the tail c >= full in order. */
static inline float finish_dot(v16 acc, const float *restrict a, const float *restrict b, int64_t full, int64_t n) {
    float s = hsum16(acc);
    for (int64_t c = full; c < n; c++) s += a[c] * b[c];
    return s;
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    const int64_t full = n / 16 * 16;
    v16 acc = splat16(0.0f);
    for (int64_t c = 0; c < full; c += 16) acc += load16(a + c) * load16(b + c);
    return finish_dot(acc, a, b, full, n);
}

static inline float sum(const float *restrict a, int64_t n) {
    const int64_t full = n / 16 * 16;
    v16 acc = splat16(0.0f);
    for (int64_t c = 0; c < full; c += 16) acc += load16(a + c);
    float s = hsum16(acc);
    for (int64_t c = full; c < n; c++) s += a[c];
    return s;
}

/* gw[o][i] = dot(d[o], x[i]) over the batch. Blocks of 4 x 4 (o, i) pairs share their loads: 8 loads
   feed 16 FMAs. Every entry is summed exactly as dot() sums it. */
static void weight_grad(float *restrict gw, const float *restrict d, const float *restrict x, int64_t nout,
                        int64_t nin, int64_t batch, int64_t ld) {
    const int64_t full = batch / 16 * 16;
    int64_t o0 = 0;
    for (; o0 + 4 <= nout; o0 += 4) {
        int64_t i0 = 0;
        for (; i0 + 4 <= nin; i0 += 4) {
            v16 acc[4][4];
            for (int p = 0; p < 4; p++)
                for (int q = 0; q < 4; q++) acc[p][q] = splat16(0.0f);
            for (int64_t c = 0; c < full; c += 16) {
                v16 dp[4], xq[4];
                for (int p = 0; p < 4; p++) dp[p] = load16(d + (o0 + p) * ld + c);
                for (int q = 0; q < 4; q++) xq[q] = load16(x + (i0 + q) * ld + c);
                for (int p = 0; p < 4; p++)
                    for (int q = 0; q < 4; q++) acc[p][q] += dp[p] * xq[q];
            }
            for (int p = 0; p < 4; p++)
                for (int q = 0; q < 4; q++)
                    gw[(o0 + p) * nin + i0 + q] = finish_dot(acc[p][q], d + (o0 + p) * ld, x + (i0 + q) * ld, full, batch);
        }
        for (; i0 < nin; i0++)
            for (int p = 0; p < 4; p++) gw[(o0 + p) * nin + i0] = dot(d + (o0 + p) * ld, x + i0 * ld, batch);
    }
    for (; o0 < nout; o0++)
        for (int64_t i = 0; i < nin; i++) gw[o0 * nin + i] = dot(d + o0 * ld, x + i * ld, batch);
}

/* Forward through the chain. h0_in: (batch, dims[0]) batch-major with rows ld_in apart, the output
   of the product before the chain; it is transposed into h[0], b0 added (unless NULL) and act[0]
   applied. Then for j = 1..k: h[j] = act[j](W[j-1] h[j-1] + b[j-1]). The caller reads h[k]
   (feature-major). */
void fae_chain_forward(int32_t k, int64_t batch, int64_t ld, const int64_t *dims, float *const *W,
                       float *const *b, float *const *h, const int32_t *act, const float *restrict h0_in,
                       int64_t ld_in, const float *restrict b0) {
    const int64_t d0 = dims[0];
    for (int64_t c = 0; c < batch; c++)
        for (int64_t f = 0; f < d0; f++) h[0][f * ld + c] = h0_in[c * ld_in + f];
    if (b0)
        for (int64_t f = 0; f < d0; f++)
            for (int64_t c = 0; c < batch; c++) h[0][f * ld + c] += b0[f];
    for (int64_t f = 0; f < d0; f++) activate(h[0] + f * ld, batch, act[0]);
    for (int32_t j = 1; j <= k; j++) {
        const int64_t nin = dims[j - 1], nout = dims[j];
        small_product(h[j], W[j - 1], nin, 1, b[j - 1], h[j - 1], nout, nin, batch, ld);
        for (int64_t o = 0; o < nout; o++) activate(h[j] + o * ld, batch, act[j]);
    }
}

/* Backward through the chain. gk_in: d loss / d h[k], its (batch c, feature f) entry at
   gk_in[c * cs + f * fs] (batch-major: cs = dims[k], fs = 1; feature-major: cs = 1, fs = ld). Writes
   gW[j-1] for j = 1..k, gb[j] for j = 0..k (gb[0]: the bias gradient of the layer before the chain)
   and g0 (dims[0], ld): d loss / d the pre-activation of that layer. s0, s1: scratch, each
   (max(dims[1..k]), ld). Gradients are overwritten, not accumulated. */
void fae_chain_backward(int32_t k, int64_t batch, int64_t ld, const int64_t *dims, float *const *W,
                        float *const *h, float *const *gW, float *const *gb, const int32_t *act,
                        const float *restrict gk_in, int64_t cs, int64_t fs, float *g0, float *s0, float *s1) {
    const int64_t dk = dims[k];
    float *cur = k == 0 ? g0 : s0;
    for (int64_t c = 0; c < batch; c++)
        for (int64_t f = 0; f < dk; f++) cur[f * ld + c] = gk_in[c * cs + f * fs];
    for (int32_t j = k; j >= 0; j--) {
        const int64_t nout = dims[j];
        for (int64_t o = 0; o < nout; o++) {
            float *restrict d = cur + o * ld;
            activate_backward(d, h[j] + o * ld, batch, act[j]);
            gb[j][o] = sum(d, batch);
        }
        if (j == 0) break;
        const int64_t nin = dims[j - 1];
        const float *w = W[j - 1], *x = h[j - 1];
        float *gw = gW[j - 1];
        weight_grad(gw, cur, x, nout, nin, batch, ld);
        float *next = j == 1 ? g0 : (cur == s0 ? s1 : s0);
        small_product(next, w, 1, nin, NULL, cur, nin, nout, batch, ld); /* W^T d */
        cur = next;
    }
}

/* The loss pass of the last layer: r = y - x in place on y (batch, n); gb = alpha * column sums of r;
   returns sum r^2 (each row's sum in float32, rows added in float64). One pass instead of three. */
double fae_residual(float *restrict y, const float *restrict x, int64_t batch, int64_t n,
                    float *restrict gb, float alpha) {
    double total = 0.0;
    for (int64_t j = 0; j < n; j++) gb[j] = 0.0f;
    for (int64_t r = 0; r < batch; r++) {
        float *restrict yr = y + r * n;
        const float *restrict xr = x + r * n;
        float acc[16] = {0};
        int64_t j = 0;
        for (; j + 16 <= n; j += 16)
            for (int l = 0; l < 16; l++) {
                const float d = yr[j + l] - xr[j + l];
                yr[j + l] = d;
                gb[j + l] += d;
                acc[l] += d * d;
            }
        float s = 0.0f;
        for (; j < n; j++) {
            const float d = yr[j] - xr[j];
            yr[j] = d;
            gb[j] += d;
            s += d * d;
        }
        for (int l = 0; l < 16; l++) s += acc[l];
        total += s;
    }
    for (int64_t j = 0; j < n; j++) gb[j] *= alpha;
    return total;
}

/* ---- The batch's gather and first product in one pass --------------------------------------
 * y (batch, ldf) = X[idx] Ft for Ft (n, ldf), ldf a multiple of 32. Each row of the batch comes from
 * the training set (memory, not cache) once: it is copied to xb (the second product's operand) and
 * multiplied while it is in L1, and the next rows are prefetched as the loop walks the current ones.
 * Against torch.index_select then an MKL product, ~100 us against ~190 us for 256 x 1000 rows into 32
 * columns on 2 cores. Rows go in groups of 8; per point p, each row's x[p] is broadcast against Ft's
 * row p (two vectors of 16 columns): 16 sums in registers, each a y entry summed over p in order
 * within blocks of PROJECT_BLOCK points, the blocks then added in order.
 * idx NULL: X's rows in order; xb NULL: no copy. Returns the sum of norms[idx[c]] (X's squared row norms,
 * computed once by fae_row_sumsq), or 0 with norms NULL. Threads: rows dealt out (the same bits on any
 * number). */
#define GROUP 8
#define PROJECT_BLOCK 128 /* points summed in registers before they join the total: shorter float32 sums */

/* acc[q] += x_q[u] * Ft[u, col..col+32) for the group's rows q: one point of project_group. */
static inline void project_point(v16 acc[GROUP][2], const float *const *r, const float *restrict Ft, int64_t ldf,
                                 int64_t col, int64_t u) {
    const v16 f0 = load16(Ft + u * ldf + col), f1 = load16(Ft + u * ldf + col + 16);
    for (int q = 0; q < GROUP; q++) {
        const v16 xs = splat16(r[q][u]);
        acc[q][0] += xs * f0;
        acc[q][1] += xs * f1;
    }
}

static void project_group(const float *const *r, const float *const *next, int64_t nr, int64_t n,
                          const float *restrict Ft, int64_t ldf, int64_t col, float *restrict xb,
                          float *restrict y, int first) {
    v16 total[GROUP][2];
    for (int q = 0; q < GROUP; q++) total[q][0] = total[q][1] = splat16(0.0f);
    for (int64_t b0 = 0; b0 < n; b0 += PROJECT_BLOCK) {
        const int64_t b1 = b0 + PROJECT_BLOCK < n ? b0 + PROJECT_BLOCK : n, full = b0 + (b1 - b0) / 16 * 16;
        v16 acc[GROUP][2];
        for (int q = 0; q < GROUP; q++) acc[q][0] = acc[q][1] = splat16(0.0f);
        int64_t p = b0;
        for (; p < full; p += 16) {
            if (first)
                for (int q = 0; q < GROUP; q++) {
                    __builtin_prefetch(next[q] + p, 0, 3);
                    if (xb && q < nr) store16(xb + q * n + p, load16(r[q] + p));
                }
            for (int64_t u = p; u < p + 16; u++) project_point(acc, r, Ft, ldf, col, u);
        }
        for (; p < b1; p++) {
            if (first && xb)
                for (int64_t q = 0; q < nr; q++) xb[q * n + p] = r[q][p];
            project_point(acc, r, Ft, ldf, col, p);
        }
        for (int q = 0; q < GROUP; q++) {
            total[q][0] += acc[q][0];
            total[q][1] += acc[q][1];
        }
    }
    for (int64_t q = 0; q < nr; q++) {
        store16(y + q * ldf + col, total[q][0]);
        store16(y + q * ldf + col + 16, total[q][1]);
    }
}

double fae_project(const float *restrict X, const int64_t *restrict idx, int64_t batch, int64_t n,
                   const float *restrict Ft, int64_t ldf, float *restrict xb, float *restrict y,
                   const double *restrict norms) {
#pragma omp parallel if (batch >= PAR_MIN)
    {
        int64_t c0, c1;
        share(batch, GROUP, &c0, &c1);
        for (int64_t c = c0; c < c1; c += GROUP) {
            const int64_t nr = c1 - c < GROUP ? c1 - c : GROUP;
            const float *r[GROUP], *next[GROUP];
            for (int64_t q = 0; q < GROUP; q++) {
                const int64_t a = c + (q < nr ? q : nr - 1); /* a short group repeats its last row */
                const int64_t b = c + GROUP + q < c1 ? c + GROUP + q : c1 - 1;
                r[q] = X + (idx ? idx[a] : a) * n;
                next[q] = X + (idx ? idx[b] : b) * n;
            }
            if (c == c0) /* the first group's rows: nothing was prefetching them */
                for (int64_t q = 0; q < nr; q++)
                    for (int64_t p = 0; p < n; p += 16) __builtin_prefetch(r[q] + p, 0, 3);
            for (int64_t col = 0; col < ldf; col += 32)
                project_group(r, next, nr, n, Ft, ldf, col, xb ? xb + c * n : NULL, y + c * ldf, col == 0);
        }
    }
    double xx = 0.0; /* the batch's |x|^2 from X's row norms, in row order */
    if (norms)
        for (int64_t c = 0; c < batch; c++) xx += norms[idx ? idx[c] : c];
    return xx;
}

/* ---- The last layer in Gram form ------------------------------------------------------------
 * The last layer maps the chain's output h (batch, dk) to y = h WL^T + bL (batch, n) with n, the
 * number of points, ~1000 and dk ~16; its loss is |r|^2 with r = y - x. Every quantity the step
 * needs from r is a product of x with something narrow:
 *   d loss / d h     = alpha r WL     = alpha (h M + 1 wb^T - x WL)        M = WL^T WL, wb = WL^T bL
 *   d loss / d WL    = alpha r^T h    = alpha (WL G + bL s^T - (h^T x)^T)  G = h^T h, s = h^T 1
 *   d loss / d bL    = alpha r^T 1    = alpha (WL s + batch bL - x^T 1)
 *   |r|^2 = sum_c [h_c.(h_c M + 2 wb - 2 (x WL)_c)] + batch |bL|^2 - 2 (x^T 1).bL + |x|^2
 * so the step never forms y or r. x WL rides in the first layer's product (x [W0^T | WL], one
 * product 32 wide, fae_project) and h^T x, x^T 1 in the first layer's weight gradient
 * ([h^T; 1; g0] x, one GEMM): two products over x instead of five, and no pass over the
 * (batch, n) residual. The narrow sums here are float64. The identities are exact; in float32 the
 * big terms cancel, so the loss loses digits as |r|^2 / |x|^2 falls (native/step.py checks this
 * and then computes the loss directly). */

typedef double v8d __attribute__((vector_size(64)));
#define NVD (FAE_MAX_WIDTH / 8) /* float64 vectors in a row of the widest layer */

static inline v8d splat8d(double x) { return (v8d){x, x, x, x, x, x, x, x}; }

static inline v8d load8d(const double *p) {
    v8d v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The 8 lanes' sum as a tree, in a fixed order (hsum16's float64 twin). */
static inline double hsum8d(v8d v) { return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])); }

/* x[0..8) widened to float64. */
static inline v8d widen8(const float *p) {
    v8 f;
    memcpy(&f, p, sizeof f);
    return __builtin_convertvector(f, v8d);
}

/* One 4 x 4 block of S = A A^T (rows i0.., columns j0..) for A (R, n) in float64: a pass over n with
   its 16 sums in registers (8 lanes each, added as a tree, then the tail in order); mirrored. */
static void gram_block(double *restrict S, const double *restrict A, int64_t R, int64_t n, int64_t i0, int64_t j0) {
    const int64_t full = n / 8 * 8;
    const double *a[4], *b[4];
    for (int q = 0; q < 4; q++) {
        a[q] = A + (i0 + q < R ? i0 + q : R - 1) * n;
        b[q] = A + (j0 + q < R ? j0 + q : R - 1) * n;
    }
    v8d acc[4][4];
    for (int q = 0; q < 4; q++)
        for (int r = 0; r < 4; r++) acc[q][r] = splat8d(0.0);
    for (int64_t p = 0; p < full; p += 8) {
        v8d av[4], bv[4];
        for (int q = 0; q < 4; q++) {
            av[q] = load8d(a[q] + p);
            bv[q] = load8d(b[q] + p);
        }
        for (int q = 0; q < 4; q++)
            for (int r = 0; r < 4; r++) acc[q][r] += av[q] * bv[r];
    }
    for (int q = 0; q < 4 && i0 + q < R; q++)
        for (int r = 0; r < 4 && j0 + r < R; r++) {
            double d = hsum8d(acc[q][r]);
            for (int64_t p = full; p < n; p++) d += a[q][p] * b[r][p];
            S[(i0 + q) * R + j0 + r] = S[(j0 + r) * R + i0 + q] = d;
        }
}

/* Ft (n, ldf) = [W0^T | WL | 0], the first product's right factor (fae_project; ldf a multiple of 32,
   zero past d0 + dk); WT (dk, n) = WL^T (feature-major, for fae_gram_backward); S (dk + 1, dk + 1) =
   [WL bL]^T [WL bL] in float64 (M = WL^T WL in its first dk rows and columns, wb = WL^T bL in row dk,
   bL . bL last). wide: scratch of (dk + 1) n doubles. Threads: the copies on each thread's points,
   then the 4 x 4 blocks of S on and above the diagonal dealt out. */
void fae_gram_prepare(float *restrict Ft, int64_t ldf, float *restrict WT, const float *restrict W0,
                      const float *restrict WL, const float *restrict bL, int64_t n, int64_t d0, int64_t dk,
                      double *restrict S, double *restrict wide) {
    const int64_t R = dk + 1, nb = (R + 3) / 4;
#pragma omp parallel if (n >= PAR_MIN)
    {
        int64_t p0, p1;
        share(n, 16, &p0, &p1);
        for (int64_t p = p0; p < p1; p++) {
            float *restrict row = Ft + p * ldf;
            for (int64_t j = 0; j < d0; j++) row[j] = W0[j * n + p];
            for (int64_t j = 0; j < dk; j++) {
                const float w = WL[p * dk + j];
                row[d0 + j] = w;
                WT[j * n + p] = w;
                wide[j * n + p] = w;
            }
            for (int64_t j = d0 + dk; j < ldf; j++) row[j] = 0.0f;
            wide[dk * n + p] = bL[p];
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nb * (nb + 1) / 2; blk++) {
            int64_t bi = 0, rest = blk; /* the blk-th block of the upper triangle, row by row */
            while (rest >= nb - bi) rest -= nb - bi++;
            gram_block(S, wide, R, n, 4 * bi, 4 * (bi + rest));
        }
    }
}

/* With y = x WL (batch rows ldy apart) and S from fae_gram_prepare: gk (dk, ld) feature-major =
   alpha (h M + wb - y), the gradient entering the chain. Returns the h-side of the loss,
   sum_c h_c.(h_c M + 2 wb - 2 y_c) + batch bL.bL, in float64 like h M. h: (dk, ld). */
double fae_gram_forward(int64_t batch, int64_t ld, int64_t dk, const float *restrict h, const float *restrict y,
                        int64_t ldy, const double *restrict S, float alpha, float *restrict gk) {
    const int nv = (int)((dk + 7) / 8);
    const int64_t R = dk + 1;
    double Mp[FAE_MAX_WIDTH][FAE_MAX_WIDTH] = {{0}}, wbp[FAE_MAX_WIDTH] = {0};
    for (int64_t i = 0; i < dk; i++) {
        for (int64_t j = 0; j < dk; j++) Mp[i][j] = S[i * R + j];
        wbp[i] = S[dk * R + i];
    }
    double total = 0.0;
    for (int64_t c = 0; c < batch; c++) {
        double hc[FAE_MAX_WIDTH] = {0}, yc[FAE_MAX_WIDTH] = {0}, u[FAE_MAX_WIDTH];
        for (int64_t i = 0; i < dk; i++) {
            hc[i] = h[i * ld + c];
            yc[i] = y[c * ldy + i];
        }
        v8d acc[NVD], acc2[NVD]; /* two partial sums over i: half the dependent chain */
        for (int v = 0; v < nv; v++) {
            acc[v] = load8d(wbp + 8 * v);
            acc2[v] = splat8d(0.0);
        }
        int64_t i = 0;
        for (; i + 2 <= dk; i += 2)
            for (int v = 0; v < nv; v++) {
                acc[v] += splat8d(hc[i]) * load8d(Mp[i] + 8 * v);
                acc2[v] += splat8d(hc[i + 1]) * load8d(Mp[i + 1] + 8 * v);
            }
        for (; i < dk; i++)
            for (int v = 0; v < nv; v++) acc[v] += splat8d(hc[i]) * load8d(Mp[i] + 8 * v);
        v8d t = splat8d(0.0);
        for (int v = 0; v < nv; v++) {
            const v8d uv = acc[v] + acc2[v], yv = load8d(yc + 8 * v);
            t += load8d(hc + 8 * v) * (uv + load8d(wbp + 8 * v) - 2.0 * yv);
            memcpy(u + 8 * v, &uv, sizeof uv);
        }
        for (int64_t j = 0; j < dk; j++) gk[j * ld + c] = (float)(alpha * (u[j] - yc[j]));
        total += hsum8d(t);
    }
    return total + (double)batch * S[dk * R + dk];
}

/* The last layer's gradients for points [p0, p1) (p0 a multiple of 16): see fae_gram_backward. */
static void gram_backward_points(int64_t p0, int64_t p1, int64_t dk, int64_t n, const float *restrict G,
                                 const float *restrict s, float nb, const float *restrict Z,
                                 const float *restrict WT, const float *restrict bL, float alpha,
                                 float *restrict gW, float *restrict gb, int64_t d0, float *restrict gW0) {
    const float *restrict t = Z + dk * n;
    for (int64_t j = 0; j < d0; j++) memcpy(gW0 + j * n + p0, t + (1 + j) * n + p0, sizeof(float) * (p1 - p0));
    int64_t p = p0;
    for (; p + 16 <= p1; p += 16) {
        const v16 b = load16(bL + p);
        float tile[FAE_MAX_WIDTH][16];
        for (int64_t j = 0; j < dk; j++) {
            v16 acc = splat16(s[j]) * b - load16(Z + j * n + p);
            for (int64_t i = 0; i < dk; i++) acc += splat16(G[i * dk + j]) * load16(WT + i * n + p);
            store16(tile[j], acc * splat16(alpha));
        }
        for (int l = 0; l < 16; l++) /* gW is (n, dk), torch's layout: the tile goes in transposed */
            for (int64_t j = 0; j < dk; j++) gW[(p + l) * dk + j] = tile[j][l];
        v16 g = splat16(nb) * b - load16(t + p);
        for (int64_t i = 0; i < dk; i++) g += splat16(s[i]) * load16(WT + i * n + p);
        store16(gb + p, g * splat16(alpha));
    }
    for (; p < p1; p++) {
        for (int64_t j = 0; j < dk; j++) {
            float acc = s[j] * bL[p] - Z[j * n + p];
            for (int64_t i = 0; i < dk; i++) acc += G[i * dk + j] * WT[i * n + p];
            gW[p * dk + j] = acc * alpha;
        }
        float g = nb * bL[p] - t[p];
        for (int64_t i = 0; i < dk; i++) g += s[i] * WT[i * n + p];
        gb[p] = g * alpha;
    }
}

/* With Z (dk + 1 + d0, n) = [h^T x; 1^T x; g0^T x] (rows 0..dk-1, the column sums of x, then the first
   layer's weight gradient, copied to gW0 (d0, n)) and WT = WL^T (dk, n):
   gW (n, dk) = alpha (WT^T G + bL s^T - Z[0:dk]^T) = d loss / d WL and
   gb (n) = alpha (s^T WT + batch bL - Z[dk]), where G = h h^T and s = h 1 over the batch (as dot() and
   sum() sum them). float32 like the direct step's products; every loop runs along p, each thread on
   its share of the points. Returns Z[dk] . bL in float64. h: (dk, ld). */
double fae_gram_backward(int64_t batch, int64_t ld, int64_t dk, int64_t n, const float *restrict h,
                         const float *restrict Z, const float *restrict WT, const float *restrict bL, float alpha,
                         float *restrict gW, float *restrict gb, int64_t d0, float *restrict gW0) {
    float G[FAE_MAX_WIDTH * FAE_MAX_WIDTH], s[FAE_MAX_WIDTH];
    weight_grad(G, h, h, dk, dk, batch, ld);
    for (int64_t i = 0; i < dk; i++) s[i] = sum(h + i * ld, batch);
#pragma omp parallel if (n >= PAR_MIN)
    {
        int64_t p0, p1;
        share(n, 16, &p0, &p1);
        gram_backward_points(p0, p1, dk, n, G, s, (float)batch, Z, WT, bL, alpha, gW, gb, d0, gW0);
    }
    const float *restrict t = Z + dk * n;
    double tb = 0.0;
    for (int64_t p = 0; p < n; p++) tb += (double)t[p] * bL[p];
    return tb;
}

/* sum x^2 over n floats, each square exact in float64 and summed in float64 (32 lanes, then as a tree). */
double fae_sumsq(const float *restrict x, int64_t n) {
    v8d acc[4] = {splat8d(0.0), splat8d(0.0), splat8d(0.0), splat8d(0.0)};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int u = 0; u < 4; u++) {
            const v8d d = widen8(x + i + 8 * u);
            acc[u] += d * d;
        }
    double s = hsum8d((acc[0] + acc[2]) + (acc[1] + acc[3]));
    for (; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

/* out[r] = fae_sumsq of row r of x (rows, n): the squared norms of a training set, computed once. */
void fae_row_sumsq(const float *restrict x, int64_t rows, int64_t n, double *restrict out) {
#pragma omp parallel for schedule(static) if (rows >= PAR_MIN)
    for (int64_t r = 0; r < rows; r++) out[r] = fae_sumsq(x + r * n, n);
}

/* sum (y - x)^2 over n floats, each difference rounded to float32 (as r = y - x in torch), squared and
   summed in float64 (32 lanes, then as a tree). */
double fae_sse(const float *restrict y, const float *restrict x, int64_t n) {
    v8d acc[4] = {splat8d(0.0), splat8d(0.0), splat8d(0.0), splat8d(0.0)};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int u = 0; u < 4; u++) {
            v8 a, b;
            memcpy(&a, y + i + 8 * u, sizeof a);
            memcpy(&b, x + i + 8 * u, sizeof b);
            const v8d d = __builtin_convertvector(a - b, v8d);
            acc[u] += d * d;
        }
    double s = hsum8d((acc[0] + acc[2]) + (acc[1] + acc[3]));
    for (; i < n; i++) {
        const double d = y[i] - x[i];
        s += d * d;
    }
    return s;
}
