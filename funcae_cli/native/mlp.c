/* funcae's native CPU kernels: the narrow middle of an MLP autoencoder's training step.
 *
 * An AE on curves is wide at both ends (n_points) and narrow in the middle (hidden widths of 16-32,
 * a latent of 2). torch runs the wide products well (MKL, both cores); the narrow ones are ~40 tiny
 * operations per step whose cost is dispatch, not arithmetic. These functions do the whole narrow
 * chain, forward and backward, in one call each. funcae_cli/native/__init__.py compiles this file on
 * first use (cc -O3 -march=native -fno-trapping-math) and funcae_cli/native_step.py drives it.
 *
 * Layout: float32, row-major. Inside the chain, activations are feature-major: h[j] is (dims[j], ld)
 * and columns [0, batch) hold the batch, so every inner loop runs along the batch (long, contiguous,
 * vectorized). Weights are torch's: W[j-1] is (dims[j], dims[j-1]), b[j-1] is (dims[j]).
 * Sums over the batch use 16 interleaved partial sums added in a fixed order: results do not depend
 * on the compiler's vectorization choices.
 */
#include <stdint.h>
#include <string.h>

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

#define FAE_ABI 1

enum { ACT_NONE = 0, ACT_TANH = 1, ACT_RELU = 2 };

int32_t fae_abi(void) { return FAE_ABI; }

/* exp(x) for |x| <= 20: Cephes expf (x = n ln2 + r, degree-6 polynomial in r, 2^n from its bits). */
static inline float exp_f(float x) {
    const float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    const int32_t n = (int32_t)fx;
    x = x - fx * 0.693359375f;
    x = x - fx * -2.12194440e-4f;
    const float z = x * x;
    const float y = (((((1.9875691500E-4f * x + 1.3981999507E-3f) * x + 8.3334519073E-3f) * x
                       + 4.1665795894E-2f) * x + 1.6666665459E-1f) * x + 5.0000001201E-1f) * z + x + 1.0f;
    union { int32_t i; float f; } s = {.i = (n + 127) << 23};
    return y * s.f;
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

/* Forward through the chain. h0_in: (batch, dims[0]) batch-major, the pre-activation output of the
   layer before the chain; it is transposed into h[0] and act[0] applied. Then for j = 1..k:
   h[j] = act[j](W[j-1] h[j-1] + b[j-1]). The caller reads h[k] (feature-major). */
void fae_chain_forward(int32_t k, int64_t batch, int64_t ld, const int64_t *dims, float *const *W,
                       float *const *b, float *const *h, const int32_t *act, const float *restrict h0_in) {
    const int64_t d0 = dims[0];
    for (int64_t c = 0; c < batch; c++)
        for (int64_t f = 0; f < d0; f++) h[0][f * ld + c] = h0_in[c * d0 + f];
    for (int64_t f = 0; f < d0; f++) activate(h[0] + f * ld, batch, act[0]);
    for (int32_t j = 1; j <= k; j++) {
        const int64_t nin = dims[j - 1], nout = dims[j];
        small_product(h[j], W[j - 1], nin, 1, b[j - 1], h[j - 1], nout, nin, batch, ld);
        for (int64_t o = 0; o < nout; o++) activate(h[j] + o * ld, batch, act[j]);
    }
}

/* Backward through the chain. gk_in: (batch, dims[k]) batch-major, d loss / d h[k]. Writes
   gW[j-1] for j = 1..k, gb[j] for j = 0..k (gb[0]: the bias gradient of the layer before the chain)
   and g0 (dims[0], ld): d loss / d the pre-activation of that layer. s0, s1: scratch, each
   (max(dims[1..k]), ld). Gradients are overwritten, not accumulated. */
void fae_chain_backward(int32_t k, int64_t batch, int64_t ld, const int64_t *dims, float *const *W,
                        float *const *h, float *const *gW, float *const *gb, const int32_t *act,
                        const float *restrict gk_in, float *g0, float *s0, float *s1) {
    const int64_t dk = dims[k];
    float *cur = k == 0 ? g0 : s0;
    for (int64_t c = 0; c < batch; c++)
        for (int64_t f = 0; f < dk; f++) cur[f * ld + c] = gk_in[c * dk + f];
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
