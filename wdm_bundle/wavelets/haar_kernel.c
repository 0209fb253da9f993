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
 *
 * float32 rows run 4 columns per SSE2 instruction (every x86-64 CPU has SSE2); the rest of a row,
 * float64 and other CPUs use the scalar loop. Both do the same additions in the same order, so
 * the results are bit-identical. Measured at 256³ (2 threads): DWT 10.2 -> 7.8 ms, IDWT
 * 10.1 -> 8.1 ms into existing memory. Stores stay ordinary: streaming stores made the IDWT 1.5x
 * faster into memory not in cache but slower into fresh pages, which the kernel has just zeroed
 * through the cache (docs/acceleration.md).
 */

#define HAAR_SCALE 0.35355339059327373 /* (1/sqrt2)^3 */

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* scalar DWT of output columns [q0, w) of one row: a, b, c, e are the input rows (z0, y0),
 * (z0, y1), (z1, y0), (z1, y1); o is band 0 of the output row, bands are `band` apart */
#define DWT_COLUMNS(T, q0)                                                                         \
    for (long q = (q0); q < w; ++q) {                                                              \
        const T a0 = a[2 * q], a1 = a[2 * q + 1], b0 = b[2 * q], b1 = b[2 * q + 1];                \
        const T c0 = c[2 * q], c1 = c[2 * q + 1], e0 = e[2 * q], e1 = e[2 * q + 1];                \
        /* along W */                                                                              \
        const T aL = a0 + a1, aH = a0 - a1, bL = b0 + b1, bH = b0 - b1;                            \
        const T cL = c0 + c1, cH = c0 - c1, eL = e0 + e1, eH = e0 - e1;                            \
        /* along H */                                                                              \
        const T zLL0 = aL + bL, zLH0 = aH + bH, zHL0 = aL - bL, zHH0 = aH - bH;                    \
        const T zLL1 = cL + eL, zLH1 = cH + eH, zHL1 = cL - eL, zHH1 = cH - eH;                    \
        /* along D; names are (h, w) bits of the band */                                           \
        o[0 * band + q] = s * (zLL0 + zLL1);                                                       \
        o[1 * band + q] = s * (zLH0 + zLH1);                                                       \
        o[2 * band + q] = s * (zHL0 + zHL1);                                                       \
        o[3 * band + q] = s * (zHH0 + zHH1);                                                       \
        o[4 * band + q] = s * (zLL0 - zLL1);                                                       \
        o[5 * band + q] = s * (zLH0 - zLH1);                                                       \
        o[6 * band + q] = s * (zHL0 - zHL1);                                                       \
        o[7 * band + q] = s * (zHH0 - zHH1);                                                       \
    }

/* scalar IDWT of columns [q0, w): the inverse of DWT_COLUMNS, same names */
#define IDWT_COLUMNS(T, q0)                                                                        \
    for (long q = (q0); q < w; ++q) {                                                              \
        const T k0 = o[q], k1 = o[band + q], k2 = o[2 * band + q], k3 = o[3 * band + q];           \
        const T k4 = o[4 * band + q], k5 = o[5 * band + q];                                        \
        const T k6 = o[6 * band + q], k7 = o[7 * band + q];                                        \
        /* undo D */                                                                               \
        const T zLL0 = k0 + k4, zLH0 = k1 + k5, zHL0 = k2 + k6, zHH0 = k3 + k7;                    \
        const T zLL1 = k0 - k4, zLH1 = k1 - k5, zHL1 = k2 - k6, zHH1 = k3 - k7;                    \
        /* undo H */                                                                               \
        const T aL = zLL0 + zHL0, aH = zLH0 + zHH0, bL = zLL0 - zHL0, bH = zLH0 - zHH0;            \
        const T cL = zLL1 + zHL1, cH = zLH1 + zHH1, eL = zLL1 - zHL1, eH = zLH1 - zHH1;            \
        /* undo W */                                                                               \
        a[2 * q] = s * (aL + aH); a[2 * q + 1] = s * (aL - aH);                                    \
        b[2 * q] = s * (bL + bH); b[2 * q + 1] = s * (bL - bH);                                    \
        c[2 * q] = s * (cL + cH); c[2 * q + 1] = s * (cL - cH);                                    \
        e[2 * q] = s * (eL + eH); e[2 * q + 1] = s * (eL - eH);                                    \
    }

#if defined(__SSE2__)
/* columns [0, 4 * (w / 4)) of one float32 DWT row; returns the first column left undone */
static long dwt_row_sse(const float *a, const float *b, const float *c, const float *e, float *o,
                        long w, long band)
{
    const __m128 s = _mm_set1_ps((float)HAAR_SCALE);
    long q = 0;
    for (; q + 4 <= w; q += 4) {
        __m128 L[4], Hi[4];
        const float *rows[4] = {a, b, c, e};
        for (int k = 0; k < 4; ++k) { /* along W: even and odd input columns of 4 outputs */
            const __m128 u = _mm_loadu_ps(rows[k] + 2 * q), v = _mm_loadu_ps(rows[k] + 2 * q + 4);
            const __m128 ev = _mm_shuffle_ps(u, v, _MM_SHUFFLE(2, 0, 2, 0));
            const __m128 od = _mm_shuffle_ps(u, v, _MM_SHUFFLE(3, 1, 3, 1));
            L[k] = _mm_add_ps(ev, od);
            Hi[k] = _mm_sub_ps(ev, od);
        }
        /* along H */
        const __m128 zLL0 = _mm_add_ps(L[0], L[1]), zLH0 = _mm_add_ps(Hi[0], Hi[1]);
        const __m128 zHL0 = _mm_sub_ps(L[0], L[1]), zHH0 = _mm_sub_ps(Hi[0], Hi[1]);
        const __m128 zLL1 = _mm_add_ps(L[2], L[3]), zLH1 = _mm_add_ps(Hi[2], Hi[3]);
        const __m128 zHL1 = _mm_sub_ps(L[2], L[3]), zHH1 = _mm_sub_ps(Hi[2], Hi[3]);
        /* along D */
        _mm_storeu_ps(o + 0 * band + q, _mm_mul_ps(s, _mm_add_ps(zLL0, zLL1)));
        _mm_storeu_ps(o + 1 * band + q, _mm_mul_ps(s, _mm_add_ps(zLH0, zLH1)));
        _mm_storeu_ps(o + 2 * band + q, _mm_mul_ps(s, _mm_add_ps(zHL0, zHL1)));
        _mm_storeu_ps(o + 3 * band + q, _mm_mul_ps(s, _mm_add_ps(zHH0, zHH1)));
        _mm_storeu_ps(o + 4 * band + q, _mm_mul_ps(s, _mm_sub_ps(zLL0, zLL1)));
        _mm_storeu_ps(o + 5 * band + q, _mm_mul_ps(s, _mm_sub_ps(zLH0, zLH1)));
        _mm_storeu_ps(o + 6 * band + q, _mm_mul_ps(s, _mm_sub_ps(zHL0, zHL1)));
        _mm_storeu_ps(o + 7 * band + q, _mm_mul_ps(s, _mm_sub_ps(zHH0, zHH1)));
    }
    return q;
}

/* columns [0, 4 * (w / 4)) of one float32 IDWT row; returns the first column left undone */
static long idwt_row_sse(const float *o, float *a, float *b, float *c, float *e, long w, long band)
{
    const __m128 s = _mm_set1_ps((float)HAAR_SCALE);
    long q = 0;
    for (; q + 4 <= w; q += 4) {
        __m128 k[8];
        for (int j = 0; j < 8; ++j) k[j] = _mm_loadu_ps(o + j * band + q);
        /* undo D */
        const __m128 zLL0 = _mm_add_ps(k[0], k[4]), zLH0 = _mm_add_ps(k[1], k[5]);
        const __m128 zHL0 = _mm_add_ps(k[2], k[6]), zHH0 = _mm_add_ps(k[3], k[7]);
        const __m128 zLL1 = _mm_sub_ps(k[0], k[4]), zLH1 = _mm_sub_ps(k[1], k[5]);
        const __m128 zHL1 = _mm_sub_ps(k[2], k[6]), zHH1 = _mm_sub_ps(k[3], k[7]);
        /* undo H: low/high along W for rows a, b, c, e */
        const __m128 L[4] = {_mm_add_ps(zLL0, zHL0), _mm_sub_ps(zLL0, zHL0), _mm_add_ps(zLL1, zHL1), _mm_sub_ps(zLL1, zHL1)};
        const __m128 Hi[4] = {_mm_add_ps(zLH0, zHH0), _mm_sub_ps(zLH0, zHH0), _mm_add_ps(zLH1, zHH1), _mm_sub_ps(zLH1, zHH1)};
        float *rows[4] = {a, b, c, e};
        for (int r = 0; r < 4; ++r) { /* undo W, interleaving even and odd columns */
            const __m128 ev = _mm_mul_ps(s, _mm_add_ps(L[r], Hi[r])), od = _mm_mul_ps(s, _mm_sub_ps(L[r], Hi[r]));
            _mm_storeu_ps(rows[r] + 2 * q, _mm_unpacklo_ps(ev, od));
            _mm_storeu_ps(rows[r] + 2 * q + 4, _mm_unpackhi_ps(ev, od));
        }
    }
    return q;
}
#define DWT_ROW_f32 dwt_row_sse(a, b, c, e, o, w, band)
#define IDWT_ROW_f32 idwt_row_sse(o, a, b, c, e, w, band)
#else
#define DWT_ROW_f32 0
#define IDWT_ROW_f32 0
#endif
#define DWT_ROW_f64 0
#define IDWT_ROW_f64 0

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
            DWT_COLUMNS(T, DWT_ROW_##SUFFIX)                                                       \
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
            IDWT_COLUMNS(T, IDWT_ROW_##SUFFIX)                                                     \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_HAAR(float, f32)
DEFINE_HAAR(double, f64)
