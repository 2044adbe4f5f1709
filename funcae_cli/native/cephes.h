/* exp and log in float32 for funcae's native kernels (mlp.c, rqs.c, loglog.h, rotation.c): Cephes' expf and
 * logf (S. Moshier), branch-free so that a loop over them vectorizes (GCC turns rqs.c's 16-lane loops and the point
 * loops of tables.c and rotation.c into AVX-512 or AVX2 code). Within ~2 ulp of the true values over the ranges the
 * kernels use; not bitwise torch's.
 * kernels.py compiles the .c files with this folder on the include path and hashes the headers with them. */
#ifndef FUNCAE_CEPHES_H
#define FUNCAE_CEPHES_H
#include <stdint.h>
#include <string.h>

static inline float cephes_float(int32_t i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

static inline int32_t cephes_bits(float f) {
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}

/* exp(x) for |x| < 87 (2^n a normal float): x = n ln2 + r, a degree-6 polynomial in r, 2^n from its bits. */
static inline float exp_f(float x) {
    const float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    const int32_t n = (int32_t)fx;
    x = x - fx * 0.693359375f;
    x = x - fx * -2.12194440e-4f;
    const float z = x * x;
    const float y = (((((1.9875691500E-4f * x + 1.3981999507E-3f) * x + 8.3334519073E-3f) * x + 4.1665795894E-2f) * x
                      + 1.6666665459E-1f) * x + 5.0000001201E-1f) * z + x + 1.0f;
    return y * cephes_float((n + 127) << 23);
}

/* log(x) for finite x > 0: x = m 2^e with m in [sqrt(1/2), sqrt(2)), a degree-9 polynomial in m - 1. */
static inline float log_f(float x) {
    const int32_t bits = cephes_bits(x);
    const int32_t small = ((bits & 0x007fffff) | 0x3f000000) < cephes_bits(0.707106781186547524f);
    const int32_t e = ((bits >> 23) & 0xff) - 126 - small;
    float m = cephes_float((bits & (int32_t)0x807fffff) | 0x3f000000); /* [0.5, 1) */
    m = small ? m + m - 1.0f : m - 1.0f;
    const float z = m * m;
    float y = ((((((((7.0376836292E-2f * m - 1.1514610310E-1f) * m + 1.1676998740E-1f) * m - 1.2420140846E-1f) * m
                   + 1.4249322787E-1f) * m - 1.6668057665E-1f) * m + 2.0000714765E-1f) * m - 2.4999993993E-1f) * m
               + 3.3333331174E-1f) * m * z;
    const float fe = (float)e;
    y = y + fe * -2.12194440e-4f;
    y = y - 0.5f * z;
    return (m + y) + fe * 0.693359375f;
}

#endif
