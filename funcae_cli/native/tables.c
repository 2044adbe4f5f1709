/* funcae's native CPU kernel for tabulated functions: a cubic Hermite table in log-log space, evaluated at float32
 * points in one pass.
 *
 * data/formulas.py's DiscTable tabulates ln g against ln y (the exponential disc's I0K0 - I1K1, whose four Bessel
 * functions per point were half of the samplers' time) and evaluates it in ~20 eager torch operations, each a pass
 * over every point of every walker; here each point is one pass: its node from ln y, the interval's cubic from four
 * gathers, exp. The same formulas in the same order as the torch code, with log and exp from Cephes' polynomials
 * (within ~2 ulp), so the two agree to float32 rounding, not bitwise (tests/test_physics.py checks the table against
 * scipy, tests/test_native_tables.py this kernel against the torch code). Each point's value depends on it alone.
 * Points outside [y_min, y_max] get NaN here: the caller evaluates those itself (float64, the functions themselves).
 */
#include <stdint.h>
#include <string.h>

static inline float as_float(int32_t i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

static inline int32_t as_int(float f) {
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}

/* exp(x) for |x| < 87: Cephes expf, as mlp.c's exp_f */
static inline float table_exp(float x) {
    const float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const int32_t n = (int32_t)fx;
    x = x - fx * 0.693359375f;
    x = x - fx * -2.12194440e-4f;
    const float z = x * x;
    const float y = (((((1.9875691500E-4f * x + 1.3981999507E-3f) * x + 8.3334519073E-3f) * x + 4.1665795894E-2f) * x
                      + 1.6666665459E-1f) * x + 5.0000001201E-1f) * z + x + 1.0f;
    return y * as_float((n + 127) << 23);
}

/* log(x) for finite x > 0: Cephes logf, as rqs.c's vlog */
static inline float table_log(float x) {
    const int32_t bits = as_int(x);
    const int32_t small_m = ((bits & 0x007fffff) | 0x3f000000) < as_int(0.707106781186547524f);
    const int32_t e = ((bits >> 23) & 0xff) - 126 - small_m;
    float m = as_float((bits & (int32_t)0x807fffff) | 0x3f000000); /* [0.5, 1) */
    m = small_m ? m + m - 1.0f : m - 1.0f;
    const float z = m * m;
    float y = ((((((((7.0376836292E-2f * m - 1.1514610310E-1f) * m + 1.1676998740E-1f) * m - 1.2420140846E-1f) * m
                   + 1.4249322787E-1f) * m - 1.6668057665E-1f) * m + 2.0000714765E-1f) * m - 2.4999993993E-1f) * m
               + 3.3333331174E-1f) * m * z;
    const float fe = (float)e;
    y = y + fe * -2.12194440e-4f;
    y = y - 0.5f * z;
    return (m + y) + fe * 0.693359375f;
}

/* out[i] = exp(cubic(ln y[i])) from a table of `nodes` nodes evenly spaced in ln y from log_lo (scale: nodes per
   unit of ln y, (nodes - 1) / (ln y_max - ln y_min)); c0..c3: each interval's cubic in its local coordinate.
   Returns how many points lie outside [y_min, y_max] (their out is NaN). */
int64_t fae_loglog_table(const float *restrict y, float *restrict out, int64_t n, const float *restrict c0,
                         const float *restrict c1, const float *restrict c2, const float *restrict c3, int32_t nodes,
                         float log_lo, float scale, float y_min, float y_max) {
    int64_t outside = 0;
    const float top = (float)(nodes - 1);
    for (int64_t k = 0; k < n; k++) {
        const float v = y[k];
        float t = (table_log(v) - log_lo) * scale;
        t = t < 0.0f ? 0.0f : (t > top ? top : t);
        int32_t i = (int32_t)t; /* t >= 0: truncation is the floor */
        i = i > nodes - 2 ? nodes - 2 : i;
        const float u = t - (float)i;
        const float g = table_exp(((c3[i] * u + c2[i]) * u + c1[i]) * u + c0[i]);
        const int32_t in = v >= y_min && v <= y_max; /* NaN: outside */
        outside += !in;
        out[k] = in ? g : __builtin_nanf("");
    }
    return outside;
}
