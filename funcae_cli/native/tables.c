/* funcae's native CPU kernel for tabulated functions: a cubic Hermite table in log-log space, evaluated at float32
 * points in one pass.
 *
 * data/formulas.py's DiscTable tabulates ln g against ln y (the exponential disc's I0K0 - I1K1, whose four Bessel
 * functions per point were half of the samplers' time) and evaluates it in ~20 eager torch operations, each a pass
 * over every point of every walker; here each point is one pass: its node from ln y, the interval's cubic from four
 * gathers, exp. The same formulas in the same order as the torch code, with log and exp from cephes.h
 * (within ~2 ulp), so the two agree to float32 rounding, not bitwise (tests/test_physics.py checks the table against
 * scipy, tests/test_native_tables.py this kernel against the torch code). Each point's value depends on it alone.
 * Points outside [y_min, y_max] get NaN here: the caller evaluates those itself (float64, the functions themselves).
 */
#include <stdint.h>

#include "loglog.h" /* loglog_at */

/* out[i] = exp(cubic(ln y[i])) from a table of `nodes` nodes evenly spaced in ln y from log_lo (scale: nodes per
   unit of ln y, (nodes - 1) / (ln y_max - ln y_min)); c0..c3: each interval's cubic in its local coordinate.
   Returns how many points lie outside [y_min, y_max] (their out is NaN). */
int64_t fae_loglog_table(const float *restrict y, float *restrict out, int64_t n, const float *restrict c0,
                         const float *restrict c1, const float *restrict c2, const float *restrict c3, int32_t nodes,
                         float log_lo, float scale, float y_min, float y_max) {
    int64_t outside = 0;
    for (int64_t k = 0; k < n; k++) {
        const float v = y[k];
        const float g = loglog_at(v, c0, c1, c2, c3, nodes, log_lo, scale);
        const int32_t in = v >= y_min && v <= y_max; /* NaN: outside */
        outside += !in;
        out[k] = in ? g : __builtin_nanf("");
    }
    return outside;
}
