/* One point of a cubic Hermite table in log-log space (data/formulas.DiscTable's layout): ln g tabulated against
 * ln y at `nodes` nodes evenly spaced from log_lo (scale: nodes per unit of ln y), c0..c3 each interval's cubic in
 * its local coordinate. For tables.c's value kernel and rotation.c's disc term: one lookup, the same bits in both.
 * The caller says what a point outside [y_min, y_max] gets; here it is clamped to the table's ends. */
#ifndef FUNCAE_LOGLOG_H
#define FUNCAE_LOGLOG_H
#include <stdint.h>

#include "cephes.h" /* exp_f, log_f */

static inline float loglog_at(float v, const float *restrict c0, const float *restrict c1, const float *restrict c2,
                              const float *restrict c3, int32_t nodes, float log_lo, float scale) {
  const float top = (float)(nodes - 1);
  float t = (log_f(v) - log_lo) * scale;
  t = t < 0.0f ? 0.0f : (t > top ? top : t);
  int32_t i = (int32_t)t; /* t >= 0: truncation is the floor */
  i = i > nodes - 2 ? nodes - 2 : i;
  const float u = t - (float)i;
  return exp_f(((c3[i] * u + c2[i]) * u + c1[i]) * u + c0[i]);
}
#endif
