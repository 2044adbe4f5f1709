/* The rotation-curve family's chi^2 in one pass (data/formulas.py: rotation_chi2): per row (a walker, or a flow
 * draw) its parameters md, rd, mh, c and its own points, sum over them of ((v(r) - v_obs) w)^2, v^2 the exponential
 * disc's (Freeman 1970, the ln g table of tables.c) plus the NFW halo's. The torch code makes ~40 passes over every
 * point of every row (each operation one); here the per-row constants (the halo's virial radius and velocity,
 * the disc's scale) are computed once in double, and each point is one pass in float32.
 *
 * NFW's f(x) = ln(1 + x) - x / (1 + x) cancels at small x (x = c r / r_vir ~ 1e-3 at 0.1 kpc): below 0.1 it is
 * summed as its series x^2 / 2 - 2 x^3 / 3 + ... (to 1e-8 relative), above as the formula with ln(1 + x) by
 * Goldberg's correction (within ~20 ulp after the cancellation at x = 0.1). So this is at least as close to the
 * float64 curve as torch's float32 code (tests/test_native_rotation.py checks both against float64), not bitwise
 * the same. Points of weight 0 (a padded batch's padding) are skipped. A row with a point whose disc argument
 * r / (2 rd) is outside the table (or NaN) gets NaN: the caller computes those rows with the torch code. */
#include <math.h>
#include <stdint.h>

#include "cephes.h"  /* log_f */
#include "loglog.h" /* loglog_at: the disc table, as tables.c */

#define BLOCK 16 /* points per vectorized block: one AVX-512 vector (two AVX2) */

static inline float nfw_f(float x) {
  const float s =
      x * x *
      (0.5f - x * (2.0f / 3 - x * (0.75f - x * (0.8f - x * (5.0f / 6 - x * (6.0f / 7 - x * (0.875f - x * (8.0f / 9))))))));
  const float u = 1.0f + x;
  const float l = u == 1.0f ? x : log_f(u) * (x / (u - 1.0f)); /* ln(1 + x), Goldberg's correction */
  return x < 0.1f ? s : l - x / u;
}

/* consts: G in Mpc (km/s)^2 / Msun (the halo's), G in kpc (km/s)^2 / Msun (the disc's), H0 in km/s/Mpc, the
 * virial overdensity. active: per row, 0 = not needed (the caller's prior is 0 there): NaN, no work; NULL: every row.
 * Returns the number of needed rows set to NaN (a disc argument outside the table). */
int64_t fae_rotation_chi2(const float *restrict params, int64_t k, const uint8_t *restrict active,
                          const int64_t *restrict start,
                          const int64_t *restrict count, const float *restrict x, const float *restrict y,
                          const float *restrict w, const float *restrict c0, const float *restrict c1,
                          const float *restrict c2, const float *restrict c3, int32_t nodes, float log_lo, float scale,
                          float y_min, float y_max, const double *restrict consts, double *restrict out) {
  const double g_halo = consts[0], g_disc = consts[1], hubble = consts[2], delta = consts[3];
  const double vir_scale = cbrt(delta * hubble * hubble / 2);   /* v_vir^2 = this (G mh)^(2/3) */
  const double rho_scale = 0.5 * delta * hubble * hubble / g_halo; /* r_vir = 1e3 (mh / this)^(1/3) kpc */
  int64_t bad = 0;
  for (int64_t i = 0; i < k; i++) {
    if (active && !active[i]) {
      out[i] = NAN;
      continue;
    }
    const double md = params[4 * i], rd = params[4 * i + 1], mh = params[4 * i + 2], c = params[4 * i + 3];
    const double r_vir = 1e3 * cbrt(mh / rho_scale);
    const double cube = cbrt(g_halo * mh), v_vir2 = vir_scale * cube * cube;
    const double fc = log1p(c) - c / (1 + c);
    const float halo = (float)(v_vir2 * r_vir / fc), b = (float)(c / r_vir);
    const float disc = (float)(2 * g_disc * md / rd), e = (float)(1 / (2 * rd));
    const float *xr = x + start[i], *yr = y + start[i], *wr = w + start[i];
    const int64_t m = count[i];
    float sum = 0.0f;
    int32_t outside = 0;
    for (int64_t j0 = 0; j0 < m; j0 += BLOCK) { /* a block's squares in one vectorized loop, then summed in order */
      const int64_t n = m - j0 < BLOCK ? m - j0 : BLOCK;
      float sq[BLOCK], xb[BLOCK], yb[BLOCK], wb[BLOCK];
      int32_t off[BLOCK];
      for (int64_t j = 0; j < BLOCK; j++) { /* the block's points, past the row's end weight 0 at r = 1 */
        xb[j] = j < n ? xr[j0 + j] : 1.0f;
        yb[j] = j < n ? yr[j0 + j] : 0.0f;
        wb[j] = j < n ? wr[j0 + j] : 0.0f;
      }
      for (int32_t j = 0; j < BLOCK; j++) {
        const float r = xb[j], wj = wb[j];
        const float v = r * e;
        const float g = loglog_at(v, c0, c1, c2, c3, nodes, log_lo, scale);
        const float d2 = disc * v * v * g, vd2 = d2 < 0.0f ? 0.0f : d2; /* torch's clamp: NaN stays NaN */
        const float vh2 = halo * nfw_f(b * r) / r;
        const float res = (sqrtf(vd2 + vh2) - yb[j]) * wj;
        const int32_t skip = wj == 0.0f;
        off[j] = !skip & !(v >= y_min && v <= y_max);
        sq[j] = skip ? 0.0f : res * res;
      }
      for (int64_t j = 0; j < n; j++) {
        sum += sq[j];
        outside |= off[j];
      }
    }
    out[i] = outside ? NAN : (double)sum;
    bad += outside;
  }
  return bad;
}
