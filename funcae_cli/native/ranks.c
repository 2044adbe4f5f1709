/* Rank normalization for R-hat (diagnostics._rank_scores): per row of float32 draws, the normal scores of their
 * average ranks (ties share the mean of their places), of the draws themselves (bulk) and of their distances
 * from the row's median (folded, Vehtari et al. 2021's tail R-hat; the median numpy's: the mean of the two middle
 * values).
 *
 * The draws are sorted by an LSD radix sort of their bits (3 passes of 11 bits: O(m) where numpy's argsort is
 * O(m log m)); the folded distances need no second sort: below the median they grow as the sorted draws go down,
 * above it as they go up, so one merge of the two runs orders them. A score is table[a + b] for a run of equal
 * values at places [a, b] (0-based), the table the caller's normal scores of ranks (a + b) / 2 + 1: the numpy
 * code looks up the same table, so both give the same bits. A distance is computed as |x - median| in double,
 * as numpy computes it. NaN draws are not expected (walkers stay in the support); they would sort last (or, with
 * the sign bit set, first) instead of numpy's last. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RADIX_BITS 11
#define BUCKETS (1 << RADIX_BITS)

static inline uint32_t key_of(float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* unsigned order = float order */
}

/* idx: the places of the m keys in ascending order (stable); tmp_k, tmp_i: scratch of m each. */
static void radix_sort(const float *x, int64_t m, uint32_t *keys, int32_t *idx, uint32_t *tmp_k,
                       int32_t *tmp_i) {
  static const int passes = 3;
  int64_t count[3][BUCKETS];
  memset(count, 0, sizeof count);
  for (int64_t i = 0; i < m; i++) {
    uint32_t k = key_of(x[i]);
    keys[i] = k;
    idx[i] = (int32_t)i;
    count[0][k & (BUCKETS - 1)]++;
    count[1][(k >> RADIX_BITS) & (BUCKETS - 1)]++;
    count[2][k >> (2 * RADIX_BITS)]++;
  }
  for (int p = 0; p < passes; p++) {
    int64_t sum = 0;
    for (int b = 0; b < BUCKETS; b++) {
      int64_t c = count[p][b];
      count[p][b] = sum;
      sum += c;
    }
    int shift = p * RADIX_BITS;
    for (int64_t i = 0; i < m; i++) {
      uint32_t k = keys[i];
      int64_t at = count[p][(k >> shift) & (BUCKETS - 1)]++;
      tmp_k[at] = k;
      tmp_i[at] = idx[i];
    }
    uint32_t *sk = keys;
    keys = tmp_k;
    tmp_k = sk;
    int32_t *si = idx;
    idx = tmp_i;
    tmp_i = si;
  }
  /* 3 passes: the result is in the scratch buffers; copy it back to the caller's */
  memcpy(tmp_k, keys, (size_t)m * 4);
  memcpy(tmp_i, idx, (size_t)m * 4);
}

/* Scores of runs of equal values v (m, ascending) at places order[i]: out[order[i]] = table[a + b]. */
static void score_runs(const double *v, const int32_t *order, int64_t m, const double *table, double *out) {
  int64_t a = 0;
  while (a < m) {
    int64_t b = a;
    while (b + 1 < m && v[b + 1] == v[a]) b++;
    double z = table[a + b];
    for (int64_t i = a; i <= b; i++) out[order[i]] = z;
    a = b + 1;
  }
}

/* rows x m draws x (row-major) -> bulk and fold (rows x m) scores. Returns 0, or -1 where memory could not be had
 * (nothing written then). */
int32_t fae_rank_scores(const float *x, int64_t rows, int64_t m, const double *table, double *bulk, double *fold) {
  if (m <= 0) return 0;
  uint32_t *keys = malloc((size_t)m * 4), *tmp_k = malloc((size_t)m * 4);
  int32_t *idx = malloc((size_t)m * 4), *tmp_i = malloc((size_t)m * 4), *order = malloc((size_t)m * 4);
  double *v = malloc((size_t)m * 8), *f = malloc((size_t)m * 8);
  int32_t status = 0;
  if (!keys || !tmp_k || !idx || !tmp_i || !order || !v || !f) {
    status = -1;
    goto done;
  }
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * m;
    radix_sort(xr, m, keys, idx, tmp_k, tmp_i);
    for (int64_t i = 0; i < m; i++) v[i] = (double)xr[idx[i]];
    score_runs(v, idx, m, table, bulk + r * m);
    const double med = 0.5 * (v[(m - 1) / 2] + v[m / 2]);
    int64_t p = 0; /* [0, p): at or below the median; [p, m): above */
    while (p < m && v[p] <= med) p++;
    int64_t i = p - 1, j = p;
    for (int64_t k = 0; k < m; k++) {
      double dl = i >= 0 ? med - v[i] : 0.0, dr = j < m ? v[j] - med : 0.0;
      if (j >= m || (i >= 0 && dl <= dr)) {
        f[k] = dl;
        order[k] = idx[i--];
      } else {
        f[k] = dr;
        order[k] = idx[j++];
      }
    }
    score_runs(f, order, m, table, fold + r * m);
  }
done:
  free(keys);
  free(tmp_k);
  free(idx);
  free(tmp_i);
  free(order);
  free(v);
  free(f);
  return status;
}
