/* Counter-based uniforms (inversion/seeding.py's `uniform`): draw c of a stream of seed s is SplitMix64's
 * finalizer of s + golden * (base + c), its 53 high bits times 2^-53. Integer arithmetic wrapping mod 2^64, as the
 * torch code's int64 operations wrap: the same bits (tests/test_determinism.py checks both against Python's exact
 * integers), in one pass instead of the torch code's ~12 (each shift, xor and multiply one pass over every draw). */
#include <stdint.h>

static inline uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* out (n, k) row-major: row i the uniforms of counters base .. base + k - 1 of seeds[i]. */
void fae_uniform(const int64_t *restrict seeds, int64_t n, int64_t k, int64_t base, double *restrict out) {
  const uint64_t golden = 0x9E3779B97F4A7C15ull;
  for (int64_t i = 0; i < n; i++) {
    const uint64_t s = (uint64_t)seeds[i];
    double *row = out + i * k;
    for (int64_t c = 0; c < k; c++) {
      const uint64_t h = mix64(s + ((uint64_t)base + (uint64_t)c) * golden);
      row[c] = (double)(int64_t)(h >> 11) * 0x1p-53;
    }
  }
}
