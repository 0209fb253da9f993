/* One-level orthonormal 3D Haar DWT / IDWT in one pass over memory (CPU).
 *
 * Compiled on first use by wdm_bundle/wavelets/native.py (plain C, no torch headers) and called
 * through ctypes on tensor data pointers. Each call handles the slabs [start, stop) of the
 * n * d output depth slices, so Python threads can split the work (ctypes releases the GIL).
 *
 * Layout, all C-contiguous:
 *   image  x: (n, D, H, W), D = 2d, H = 2h, W = 2w
 *   coeffs y: (n, 8, d, h, w), band k = 4*bd + 2*bh + bw, bit 1 = high-pass (a - b)/sqrt2,
 *             bit 0 = low-pass (a + b)/sqrt2, first letter the depth axis (PyWavelets' haar).
 */

#define HAAR_SCALE 0.35355339059327373 /* (1/sqrt2)^3 */

#define DEFINE_HAAR(T, SUFFIX)                                                                     \
void haar_dwt3d_##SUFFIX(const T *x, T *y, long d, long h, long w, long start, long stop)          \
{                                                                                                  \
    const long H = 2 * h, W = 2 * w, band = d * h * w;                                             \
    const T s = (T)HAAR_SCALE;                                                                     \
    for (long slab = start; slab < stop; ++slab) {                                                 \
        const long i = slab / d, z = slab % d;                                                     \
        for (long r = 0; r < h; ++r) {                                                             \
            const T *a = x + ((i * 2 * d + 2 * z) * H + 2 * r) * W; /* (z0, y0) */                 \
            const T *b = a + W;                                     /* (z0, y1) */                 \
            const T *c = a + H * W;                                 /* (z1, y0) */                 \
            const T *e = c + W;                                     /* (z1, y1) */                 \
            T *o = y + ((i * 8) * d + z) * h * w + r * w;                                          \
            for (long q = 0; q < w; ++q) {                                                         \
                const T a0 = a[2 * q], a1 = a[2 * q + 1], b0 = b[2 * q], b1 = b[2 * q + 1];        \
                const T c0 = c[2 * q], c1 = c[2 * q + 1], e0 = e[2 * q], e1 = e[2 * q + 1];        \
                /* along W */                                                                      \
                const T aL = a0 + a1, aH = a0 - a1, bL = b0 + b1, bH = b0 - b1;                    \
                const T cL = c0 + c1, cH = c0 - c1, eL = e0 + e1, eH = e0 - e1;                    \
                /* along H */                                                                      \
                const T zLL0 = aL + bL, zLH0 = aH + bH, zHL0 = aL - bL, zHH0 = aH - bH;            \
                const T zLL1 = cL + eL, zLH1 = cH + eH, zHL1 = cL - eL, zHH1 = cH - eH;            \
                /* along D; names are (h, w) bits of the band */                                   \
                o[0 * band + q] = s * (zLL0 + zLL1);                                               \
                o[1 * band + q] = s * (zLH0 + zLH1);                                               \
                o[2 * band + q] = s * (zHL0 + zHL1);                                               \
                o[3 * band + q] = s * (zHH0 + zHH1);                                               \
                o[4 * band + q] = s * (zLL0 - zLL1);                                               \
                o[5 * band + q] = s * (zLH0 - zLH1);                                               \
                o[6 * band + q] = s * (zHL0 - zHL1);                                               \
                o[7 * band + q] = s * (zHH0 - zHH1);                                               \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
void haar_idwt3d_##SUFFIX(const T *y, T *x, long d, long h, long w, long start, long stop)         \
{                                                                                                  \
    const long H = 2 * h, W = 2 * w, band = d * h * w;                                             \
    const T s = (T)HAAR_SCALE;                                                                     \
    for (long slab = start; slab < stop; ++slab) {                                                 \
        const long i = slab / d, z = slab % d;                                                     \
        for (long r = 0; r < h; ++r) {                                                             \
            T *a = x + ((i * 2 * d + 2 * z) * H + 2 * r) * W;                                      \
            T *b = a + W;                                                                          \
            T *c = a + H * W;                                                                      \
            T *e = c + W;                                                                          \
            const T *o = y + ((i * 8) * d + z) * h * w + r * w;                                    \
            for (long q = 0; q < w; ++q) {                                                         \
                const T k0 = o[q], k1 = o[band + q], k2 = o[2 * band + q], k3 = o[3 * band + q];   \
                const T k4 = o[4 * band + q], k5 = o[5 * band + q];                                \
                const T k6 = o[6 * band + q], k7 = o[7 * band + q];                                \
                /* undo D */                                                                       \
                const T zLL0 = k0 + k4, zLH0 = k1 + k5, zHL0 = k2 + k6, zHH0 = k3 + k7;            \
                const T zLL1 = k0 - k4, zLH1 = k1 - k5, zHL1 = k2 - k6, zHH1 = k3 - k7;            \
                /* undo H */                                                                       \
                const T aL = zLL0 + zHL0, aH = zLH0 + zHH0, bL = zLL0 - zHL0, bH = zLH0 - zHH0;    \
                const T cL = zLL1 + zHL1, cH = zLH1 + zHH1, eL = zLL1 - zHL1, eH = zLH1 - zHH1;    \
                /* undo W */                                                                       \
                a[2 * q] = s * (aL + aH); a[2 * q + 1] = s * (aL - aH);                            \
                b[2 * q] = s * (bL + bH); b[2 * q + 1] = s * (bL - bH);                            \
                c[2 * q] = s * (cL + cH); c[2 * q + 1] = s * (cL - cH);                            \
                e[2 * q] = s * (eL + eH); e[2 * q + 1] = s * (eL - eH);                            \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_HAAR(float, f32)
DEFINE_HAAR(double, f64)
