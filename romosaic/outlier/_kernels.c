/*
 * romosaic.outlier._kernels: the compiled parts of outlier detection.
 *
 * blot: the median interpolated at an input image's pixels, row by row,
 * without a pixel map or coordinate arrays in memory. For each input pixel
 * the kernel finds its position on the median's window (the image's pixel
 * map, from its bicubic splines or given), and interpolates the median
 * there bilinearly. The result equals, bit for bit, what scipy gives for
 *
 *   pixmap = RectBivariateSpline(...)(rows, cols)       (FITPACK's bispev)
 *   coordinates = (pixmap[..., 1] - y0, pixmap[..., 0] - x0)
 *   values = ndimage.map_coordinates(median, coordinates, order=1,
 *                                    mode="constant", cval=nan, prefilter=False)
 *
 * and, where that gives NaN, the same interpolation of the median with its
 * NaN pixels set to zero, itself NaN where a NaN pixel has a non-zero
 * weight. So every operation below is done in the order and precision of
 * those routines (FITPACK's fpbisp and fpbspl, ndimage's
 * NI_GeometricTransform for order 1): a product of three numbers is formed
 * left to right, sums start from zero, nothing is fused or reassociated
 * (the module is compiled with -ffp-contract=off). The tests compare the
 * pixel map, and the values before their rounding to float32, with scipy's
 * to the bit, on maps with distortion, medians with holes, and points on
 * the edges and exactly on pixel rows and columns.
 *
 * flag: the outlier test of an image against its blot, in one pass.
 *
 * weight_moments: count, sum and sum of squares of the float32 values in
 * an interval, in one pass, in an order that depends only on the number of
 * values.
 *
 * mask_poor: NaN into a group's data where its weight is below a threshold,
 * in one pass.
 *
 * nanmedian: the per-pixel median of a few frames, NaN ignored, by a
 * sorting network over blocks of pixels that reads each frame where it is
 * (no stack of copies).
 *
 * Arrays come in through the buffer protocol; the Python side
 * (`romosaic.outlier.detect`) checks dtypes and contiguity. The work runs
 * without the GIL, so threads can work on different images or sections at
 * once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    /* the median over the window, wy x wx, row-major */
    const float *median;
    Py_ssize_t wy, wx;
    double y0, x0; /* grid position of median[0, 0] */

    /* rows row0 .. row0 + ny - 1 of the image, ny x nx: float32, or (for
     * the tests) float64 before the rounding */
    float *out;
    double *out64;
    Py_ssize_t ny, nx, row0;

    /* the pixel map: given (ny x nx x 2, (x, y) on the grid), or splines */
    const double *pixmap;
    const double *ty, *tx, *c[2]; /* knots and coefficients of grid x and y */
    Py_ssize_t nty, ntx;

    /* scratch for the splines */
    Py_ssize_t *col_start; /* per column: the first coefficient along the row */
    double *col_basis;     /* per column: its four basis functions */
    double *row_map;       /* one row of the map: its x, then its y */
} blot_t;

/* ------------------------------------------------------------------------
 * The pixel map from its bicubic splines, as FITPACK's fpbisp evaluates it.
 */

/* The knot interval of x (clamped to the spline's range) for fpbspl:
 * 1-based l with t(l) <= x < t(l + 1), at most n - 4 (k = 3). The walk is
 * fpbisp's, from interval l (4, the first, or that of a smaller x). */
static Py_ssize_t
knot_interval(const double *t, Py_ssize_t n, double *x, Py_ssize_t l)
{
    Py_ssize_t last = n - 4;
    double arg = *x;

    if (arg < t[3]) {
        arg = t[3];
    }
    if (arg > t[n - 4]) {
        arg = t[n - 4];
    }
    while (!(arg < t[l] || l == last)) {
        ++l;
    }
    *x = arg;
    return l;
}

/* FITPACK's fpbspl for k = 3: the four non-zero B-splines at x, with x in
 * knot interval l (1-based). */
static void
basis(const double *t, Py_ssize_t l, double x, double *h)
{
    double hh[3], f;
    int i, j;

    h[0] = 1.0;
    for (j = 1; j <= 3; ++j) {
        for (i = 1; i <= j; ++i) {
            hh[i - 1] = h[i - 1];
        }
        h[0] = 0.0;
        for (i = 1; i <= j; ++i) {
            Py_ssize_t li = l + i, lj = li - j;
            if (t[li - 1] != t[lj - 1]) {
                f = hh[i - 1] / (t[li - 1] - t[lj - 1]);
                h[i - 1] = h[i - 1] + f * (t[li - 1] - x);
                h[i] = f * (x - t[lj - 1]);
            } else {
                h[i] = 0.0;
            }
        }
    }
}

/* The basis along image rows: the same for every row. Stored as four
 * arrays, one per basis function, so the loop over a run of columns reads
 * each contiguously. */
static int
spline_setup(blot_t *B)
{
    Py_ssize_t j, nx = B->nx;
    int b;

    B->col_start = (Py_ssize_t *) malloc(sizeof(Py_ssize_t) * (size_t) nx);
    B->col_basis = (double *) malloc(sizeof(double) * 4 * (size_t) nx);
    B->row_map = (double *) malloc(sizeof(double) * 2 * (size_t) nx);
    if (!B->col_start || !B->col_basis || !B->row_map) {
        return 1;
    }
    for (j = 0; j < nx; ++j) {
        double x = (double) j, h[4];
        Py_ssize_t l = knot_interval(B->tx, B->ntx, &x, j > 0 ? B->col_start[j - 1] + 4 : 4);
        basis(B->tx, l, x, h);
        for (b = 0; b < 4; ++b) {
            B->col_basis[b * nx + j] = h[b];
        }
        B->col_start[j] = l - 4;
    }
    return 0;
}

/* Row r of the map, x in row[0 .. nx - 1] and y in row[nx .. 2 nx - 1]:
 * for each pixel, fpbisp's sum over the 4 x 4 coefficients (row basis
 * outer, column basis inner) of coefficient x row basis x column basis.
 * Along a run of columns in one knot interval, the first product of each
 * term is the same, so it is formed once for the run. */
static void
spline_row(const blot_t *B, Py_ssize_t r, double *row)
{
    Py_ssize_t nbx = B->ntx - 4, nx = B->nx, j0, j1, j;
    double y = (double) r, hr[4];
    Py_ssize_t lr = knot_interval(B->ty, B->nty, &y, 4) - 4;
    const double *w0 = B->col_basis, *w1 = w0 + nx, *w2 = w1 + nx, *w3 = w2 + nx;
    int axis, a, b;

    basis(B->ty, lr + 4, y, hr);
    for (j0 = 0; j0 < nx; j0 = j1) {
        Py_ssize_t start = B->col_start[j0];
        for (j1 = j0 + 1; j1 < nx && B->col_start[j1] == start; ++j1) {
        }
        for (axis = 0; axis < 2; ++axis) {
            const double *c = B->c[axis] + lr * nbx + start;
            double *out = row + axis * nx;
            double p[16];
            for (a = 0; a < 4; ++a) {
                for (b = 0; b < 4; ++b) {
                    p[4 * a + b] = c[a * nbx + b] * hr[a];
                }
            }
            for (j = j0; j < j1; ++j) {
                double sp = 0.0;
                for (a = 0; a < 4; ++a) {
                    sp = sp + p[4 * a] * w0[j];
                    sp = sp + p[4 * a + 1] * w1[j];
                    sp = sp + p[4 * a + 2] * w2[j];
                    sp = sp + p[4 * a + 3] * w3[j];
                }
                out[j] = sp;
            }
        }
    }
}

/* ------------------------------------------------------------------------
 * Bilinear interpolation as ndimage.map_coordinates(order=1, mode="constant")
 */

/* Where a coordinate falls along an axis of length n: 0 outside (or NaN);
 * otherwise the two pixels and their weights. At the last pixel exactly,
 * the second pixel is the mirrored one (weight 0), as ndimage takes it. */
static inline int
axis_footprint(double cc, Py_ssize_t n, Py_ssize_t *i0, Py_ssize_t *i1, double *w0, double *w1)
{
    double lower;

    if (!(cc >= 0.0) || cc > (double) (n - 1)) {
        return 0;
    }
    /* floor(cc), by truncation: cc is not negative (and a call to floor
     * costs as much as the rest of the interpolation) */
    *i0 = (Py_ssize_t) cc;
    lower = (double) *i0;
    if (*i0 + 1 >= n) {
        *i1 = n <= 1 ? 0 : n - 2;
    } else {
        *i1 = *i0 + 1;
    }
    *w0 = 1.0 - (cc - lower);
    *w1 = 1.0;
    *w1 -= *w0;
    return 1;
}

/* The median at window position (cr, cc), before its rounding to float32:
 * NaN outside; where the interpolation is NaN (a NaN pixel, even with zero
 * weight, or other non-finite values), the interpolation of the median
 * with its NaN pixels as 0, NaN if a NaN pixel has a non-zero weight. */
static inline double
interpolate(const blot_t *B, double cr, double cc)
{
    Py_ssize_t r0, r1, c0, c1;
    double wr0, wr1, wc0, wc1, t, holes;
    float d[4];
    int k;

    if (!axis_footprint(cr, B->wy, &r0, &r1, &wr0, &wr1) ||
        !axis_footprint(cc, B->wx, &c0, &c1, &wc0, &wc1)) {
        return NAN;
    }
    d[0] = B->median[r0 * B->wx + c0];
    d[1] = B->median[r0 * B->wx + c1];
    d[2] = B->median[r1 * B->wx + c0];
    d[3] = B->median[r1 * B->wx + c1];
    t = 0.0;
    t += (double) d[0] * wr0 * wc0;
    t += (double) d[1] * wr0 * wc1;
    t += (double) d[2] * wr1 * wc0;
    t += (double) d[3] * wr1 * wc1;
    if (!isnan(t)) {
        return t;
    }
    {
        double f[4], h[4];
        for (k = 0; k < 4; ++k) {
            int hole = isnan(d[k]);
            f[k] = hole ? 0.0 : (double) d[k];
            h[k] = hole ? 1.0 : 0.0;
        }
        t = 0.0;
        t += f[0] * wr0 * wc0;
        t += f[1] * wr0 * wc1;
        t += f[2] * wr1 * wc0;
        t += f[3] * wr1 * wc1;
        holes = 0.0;
        holes += h[0] * wr0 * wc0;
        holes += h[1] * wr0 * wc1;
        holes += h[2] * wr1 * wc0;
        holes += h[3] * wr1 * wc1;
    }
    /* scipy's weight of the holes is a float32 array */
    return (float) holes > 0 ? NAN : t;
}

/* One row: positions x[j * stride], y[j * stride] on the grid. */
static void
blot_row(const blot_t *B, const double *x, const double *y, Py_ssize_t stride, Py_ssize_t i)
{
    Py_ssize_t j, nx = B->nx;

    if (B->out64) {
        double *out = B->out64 + i * nx;
        for (j = 0; j < nx; ++j) {
            out[j] = interpolate(B, y[j * stride] - B->y0, x[j * stride] - B->x0);
        }
    } else {
        float *out = B->out + i * nx;
        for (j = 0; j < nx; ++j) {
            out[j] = (float) interpolate(B, y[j * stride] - B->y0, x[j * stride] - B->x0);
        }
    }
}

static int
blot_rows(blot_t *B)
{
    Py_ssize_t i;

    if (!B->pixmap && spline_setup(B)) {
        return 1;
    }
    for (i = 0; i < B->ny; ++i) {
        if (B->pixmap) {
            const double *row = B->pixmap + 2 * i * B->nx;
            blot_row(B, row, row + 1, 2, i);
        } else {
            spline_row(B, B->row0 + i, B->row_map);
            blot_row(B, B->row_map, B->row_map + B->nx, 1, i);
        }
    }
    return 0;
}

/* The pixel map of rows row0 .. row0 + ny - 1 into out (ny x nx x 2). */
static int
map_rows(blot_t *B, double *out)
{
    Py_ssize_t i, j, nx = B->nx;

    if (spline_setup(B)) {
        return 1;
    }
    for (i = 0; i < B->ny; ++i) {
        double *row = out + 2 * i * nx;
        spline_row(B, B->row0 + i, B->row_map);
        for (j = 0; j < nx; ++j) {
            row[2 * j] = B->row_map[j];
            row[2 * j + 1] = B->row_map[nx + j];
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Moments of the weights in an interval
 */

/* Count, sum and sum of squares of the values v with lo <= v <= hi (bounds
 * and comparisons in float32, as numpy compares a float32 array with a
 * Python float; squares and sums in double, so each square is exact). The
 * sums are formed in eight interleaved parts, added at the end: a fixed
 * order for a given n, so the result depends only on the values. Where SSE2
 * is there (every x86-64 processor) the parts are two-double vectors: a
 * section of weights is summed more than twice as fast as by the scalar
 * loop, which the compiler does not turn into vectors by itself. */
#if defined(__SSE2__) || defined(_M_X64)
#define MOMENT_SSE 1
#include <emmintrin.h>
/* Iterations whose counts fit in the 32-bit lanes: 2 per lane each. */
#define MOMENT_COUNT_FLUSH ((Py_ssize_t) 1 << 28)
#else
#define MOMENT_SSE 0
#define MOMENT_LANES 8
#endif

static void
weight_moments(const float *v, Py_ssize_t n, float lo, float hi, Py_ssize_t *count,
               double *total, double *squares)
{
    Py_ssize_t i = 0, k = 0;
    int l;
#if MOMENT_SSE
    const __m128 vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi);
    __m128d t[4], q[4];
    double parts[2];
    int32_t lanes[4];

    for (l = 0; l < 4; ++l) {
        t[l] = q[l] = _mm_setzero_pd();
    }
    while (i + 8 <= n) {
        Py_ssize_t stop = n - 8;
        __m128i c = _mm_setzero_si128();

        if (stop - i > MOMENT_COUNT_FLUSH) {
            stop = i + MOMENT_COUNT_FLUSH;
        }
        for (; i <= stop; i += 8) {
            __m128 a = _mm_loadu_ps(v + i), b = _mm_loadu_ps(v + i + 4);
            /* all ones where kept; NaN is never kept */
            __m128 ka = _mm_and_ps(_mm_cmpge_ps(a, vlo), _mm_cmple_ps(a, vhi));
            __m128 kb = _mm_and_ps(_mm_cmpge_ps(b, vlo), _mm_cmple_ps(b, vhi));
            __m128d d[4];

            a = _mm_and_ps(a, ka);
            b = _mm_and_ps(b, kb);
            c = _mm_sub_epi32(c, _mm_castps_si128(ka));
            c = _mm_sub_epi32(c, _mm_castps_si128(kb));
            d[0] = _mm_cvtps_pd(a);
            d[1] = _mm_cvtps_pd(_mm_movehl_ps(a, a));
            d[2] = _mm_cvtps_pd(b);
            d[3] = _mm_cvtps_pd(_mm_movehl_ps(b, b));
            for (l = 0; l < 4; ++l) {
                t[l] = _mm_add_pd(t[l], d[l]);
                q[l] = _mm_add_pd(q[l], _mm_mul_pd(d[l], d[l]));
            }
        }
        _mm_storeu_si128((__m128i *) lanes, c);
        k += (Py_ssize_t) lanes[0] + lanes[1] + lanes[2] + lanes[3];
    }
    _mm_storeu_pd(parts, _mm_add_pd(_mm_add_pd(t[0], t[1]), _mm_add_pd(t[2], t[3])));
    *total = parts[0] + parts[1];
    _mm_storeu_pd(parts, _mm_add_pd(_mm_add_pd(q[0], q[1]), _mm_add_pd(q[2], q[3])));
    *squares = parts[0] + parts[1];
#else
    Py_ssize_t c[MOMENT_LANES] = {0};
    double t[MOMENT_LANES] = {0}, q[MOMENT_LANES] = {0};

    for (; i + MOMENT_LANES <= n; i += MOMENT_LANES) {
        for (l = 0; l < MOMENT_LANES; ++l) {
            float x = v[i + l];
            int in = (x >= lo) & (x <= hi);
            double y = in ? (double) x : 0.0;
            c[l] += in;
            t[l] += y;
            q[l] += y * y;
        }
    }
    *total = 0.0;
    *squares = 0.0;
    for (l = 0; l < MOMENT_LANES; ++l) {
        k += c[l];
        *total += t[l];
        *squares += q[l];
    }
#endif
    for (; i < n; ++i) {
        if (v[i] >= lo && v[i] <= hi) {
            double x = (double) v[i];
            ++k;
            *total += x;
            *squares += x * x;
        }
    }
    *count = k;
}

/* ------------------------------------------------------------------------
 * The per-pixel median of a few frames
 */

/* out[p] = the median of the non-NaN values frames[0][p] .. frames[n-1][p]:
 * NaN where there is none; for an even number m of values, the mean of the
 * two middle ones ((a + b) * 0.5 in float32), or with low the lower one.
 *
 * Up to NETWORK_LIMIT frames the values are sorted by a sorting network
 * (Batcher's odd-even merge sort: a fixed list of compare-exchanges, NaN
 * made +inf so that it sorts last), applied to MEDIAN_BLOCK pixels at once
 * so that each compare-exchange is a branch-free loop the compiler runs on
 * vectors; the median is then read at the position the pixel's count of
 * values gives. With more frames each pixel's values are sorted by qsort. */
#define NETWORK_LIMIT 32
#define NETWORK_MAX_PAIRS 1024
#define MEDIAN_BLOCK 256
#if defined(__SSE2__) || defined(_M_X64)
#define MEDIAN_SSE 1
#include <emmintrin.h>
#else
#define MEDIAN_SSE 0
#endif

/* The compare-exchange pairs (a < b) that sort n <= NETWORK_LIMIT values:
 * the network for the next power of two, without the pairs that touch a
 * position beyond n (those would hold +inf and never move a value). */
static int
network_pairs(int n, int *pa, int *pb)
{
    int size = 1, p, k, i, j, count = 0;

    while (size < n) {
        size *= 2;
    }
    for (p = 1; p < size; p *= 2) {
        for (k = p; k >= 1; k /= 2) {
            for (j = k % p; j < size - k; j += 2 * k) {
                int span = k < size - j - k ? k : size - j - k;
                for (i = 0; i < span; ++i) {
                    int a = i + j, b = i + j + k;
                    if (a / (2 * p) == b / (2 * p) && b < n) {
                        pa[count] = a;
                        pb[count] = b;
                        ++count;
                    }
                }
            }
        }
    }
    return count;
}

static int
compare_floats(const void *a, const void *b)
{
    float x = *(const float *) a, y = *(const float *) b;
    return (x > y) - (x < y);
}

static inline float
middle_value(float lower, float upper)
{
    float sum = lower + upper;
    return sum * 0.5f;
}

/* work: n * MEDIAN_BLOCK floats (or n with more than NETWORK_LIMIT frames) */
static void
nanmedian_pixels(const float *const *frames, int n, Py_ssize_t npix, float *out, int low,
                 float *work)
{
    static const float inf = INFINITY;
    int pa[NETWORK_MAX_PAIRS], pb[NETWORK_MAX_PAIRS], npairs, k, e;
    int counts[MEDIAN_BLOCK];
    Py_ssize_t p0, q;

    if (n > NETWORK_LIMIT) {
        for (q = 0; q < npix; ++q) {
            int m = 0;
            for (k = 0; k < n; ++k) {
                float x = frames[k][q];
                if (x == x) {
                    work[m++] = x;
                }
            }
            if (m == 0) {
                out[q] = NAN;
                continue;
            }
            qsort(work, (size_t) m, sizeof(float), compare_floats);
            out[q] = middle_value(work[(m - 1) / 2], low ? work[(m - 1) / 2] : work[m / 2]);
        }
        return;
    }
    npairs = network_pairs(n, pa, pb);
    for (p0 = 0; p0 < npix; p0 += MEDIAN_BLOCK) {
        Py_ssize_t nb = npix - p0 < MEDIAN_BLOCK ? npix - p0 : MEDIAN_BLOCK;

        for (q = 0; q < nb; ++q) {
            counts[q] = 0;
        }
        for (k = 0; k < n; ++k) {
            const float *restrict f = frames[k] + p0;
            float *restrict w = work + (size_t) k * MEDIAN_BLOCK;
            for (q = 0; q < nb; ++q) {
                float x = f[q];
                int valid = x == x;
                w[q] = valid ? x : inf;
                counts[q] += valid;
            }
        }
        for (e = 0; e < npairs; ++e) {
            float *restrict wa = work + (size_t) pa[e] * MEDIAN_BLOCK;
            float *restrict wb = work + (size_t) pb[e] * MEDIAN_BLOCK;
            q = 0;
#if MEDIAN_SSE
            /* minps(y, x) is y < x ? y : x, as below */
            for (; q + 4 <= nb; q += 4) {
                __m128 x = _mm_loadu_ps(wa + q), y = _mm_loadu_ps(wb + q);
                __m128 swap = _mm_cmplt_ps(y, x);
                _mm_storeu_ps(wa + q, _mm_min_ps(y, x));
                _mm_storeu_ps(wb + q, _mm_or_ps(_mm_and_ps(swap, x), _mm_andnot_ps(swap, y)));
            }
#endif
            for (; q < nb; ++q) {
                float x = wa[q], y = wb[q];
                wa[q] = y < x ? y : x;
                wb[q] = y < x ? x : y;
            }
        }
        for (q = 0; q < nb; ++q) {
            int m = counts[q];
            float lower, upper;
            if (m == 0) {
                out[p0 + q] = NAN;
                continue;
            }
            lower = work[(size_t) ((m - 1) / 2) * MEDIAN_BLOCK + q];
            upper = low ? lower : work[(size_t) (m / 2) * MEDIAN_BLOCK + q];
            out[p0 + q] = middle_value(lower, upper);
        }
    }
}

/* data[i] = NaN where !(weight[i] >= threshold), and also where weight[i]
 * <= 0 when zero_is_poor (a threshold of 0 would keep empty pixels). The
 * comparisons are numpy's with a float32 threshold. Only those pixels are
 * written: where data is a mapped file, a page none of whose pixels is
 * poor is left as it is (not faulted in, not made dirty). */
static void
mask_poor(float *data, const float *weight, Py_ssize_t n, float threshold, int zero_is_poor)
{
    Py_ssize_t i;
    const float nan = NAN;

    for (i = 0; i < n; ++i) {
        float w = weight[i];
        if (!(w >= threshold) | (zero_is_poor & (w <= 0.0f))) {
            data[i] = nan;
        }
    }
}

/* ------------------------------------------------------------------------
 * The outlier test of an image against its blot
 *
 * What romosaic.outlier.flagging.outlier_mask computes with numpy on whole
 * arrays (with the noise of detect.image_noise), row by row in one pass:
 * each pixel's float32 values are formed by the same operations in the
 * same order (a product rounded to float32 before it is added, sums left
 * to right), so every comparison, and so the mask, is the same. Only
 * signed zeros can differ, and they compare equal. Each step is a simple
 * loop over a row, which the compiler runs several pixels at a time. The
 * tests compare the two, with pixels exactly at either threshold.
 */

#define FLAG_PLANES 3

typedef struct {
    const float *data, *blot;
    const uint32_t *dq;
    uint32_t bad;
    const void *var[FLAG_PLANES];
    char var_kind[FLAG_PLANES]; /* 'e' float16, 'f' float32, 'd' float64 */
    int nvar;
    const float *half; /* the float32 value of each float16, non-finite ones replaced */
    unsigned char *mask;
    Py_ssize_t ny, nx;
    float scale[2], snr[2], backg, model_error, level;
    int has_level;

    /* scratch rows */
    float *signal[3]; /* source signal of rows r - 1, r, r + 1 (by r mod 3) */
    float *model, *deriv, *noise;
    unsigned char *first[3], *second[3], *vertical;
} flag_t;

/* numpy.maximum(a, b) for b not NaN (a where a >= b or a is NaN, else b),
 * in the form that compiles to a maxss instruction rather than a branch. */
static inline float
np_max(float a, float b)
{
    return b > a ? b : a;
}

/* The larger of a step and the steps so far, a NaN step left out (maxss). */
static inline float
larger_step(float step, float deriv)
{
    return step > deriv ? step : deriv;
}

/* numpy.nan_to_num of a float32: NaN to 0, infinities to the largest
 * finite float32 of their sign. */
static inline float
finite_value(float v)
{
    v = v == v ? v : 0.0f;
    v = v > FLT_MAX ? FLT_MAX : v;
    return v < -FLT_MAX ? -FLT_MAX : v;
}

/* The variance of row r: the planes' values (as float32, non-finite ones
 * replaced) added to zero in turn; then its root, the noise. */
static void
noise_row(const flag_t *F, Py_ssize_t r, float *noise)
{
    const Py_ssize_t nx = F->nx, i0 = r * nx;
    Py_ssize_t c;
    int k;

    for (c = 0; c < nx; ++c) {
        noise[c] = 0.0f;
    }
    for (k = 0; k < F->nvar; ++k) {
        if (F->var_kind[k] == 'e') {
            const uint16_t *v = (const uint16_t *) F->var[k] + i0;
            const float *half = F->half;
            for (c = 0; c < nx; ++c) {
                noise[c] = noise[c] + half[v[c]];
            }
        } else if (F->var_kind[k] == 'f') {
            const float *v = (const float *) F->var[k] + i0;
            for (c = 0; c < nx; ++c) {
                noise[c] = noise[c] + finite_value(v[c]);
            }
        } else {
            const double *v = (const double *) F->var[k] + i0;
            for (c = 0; c < nx; ++c) {
                noise[c] = noise[c] + finite_value((float) v[c]);
            }
        }
    }
    for (c = 0; c < nx; ++c) {
        noise[c] = sqrtf(noise[c]);
    }
}

/* The source signal of row r: the model above the sky level, not below
 * zero, zero where the model is not finite (or no level is known). */
static void
signal_row(const flag_t *F, Py_ssize_t r, float *out)
{
    const Py_ssize_t nx = F->nx;
    const float *b = F->blot + r * nx, level = F->level;
    Py_ssize_t c;

    if (!F->has_level) {
        for (c = 0; c < nx; ++c) {
            out[c] = 0.0f;
        }
        return;
    }
    for (c = 0; c < nx; ++c) {
        float s = np_max(b[c] - level, 0.0f);
        out[c] = fabsf(b[c]) <= FLT_MAX ? s : 0.0f;
    }
}

/* The first and second tests of row r, with the model term from the
 * signal of rows r - 1, r, r + 1 (NULL beyond the image). */
static void
test_row(const flag_t *F, Py_ssize_t r, const float *above, const float *here,
         const float *below, unsigned char *first, unsigned char *second)
{
    /* Locals, not F's fields: the stores to the byte rows could otherwise
     * alias them and force their reloading at every pixel. */
    const Py_ssize_t nx = F->nx, i0 = r * nx;
    const float *b = F->blot + i0, *data = F->data + i0;
    const float *up = r > 0 ? b - nx : NULL, *down = r + 1 < F->ny ? b + nx : NULL;
    const float scale0 = F->scale[0], scale1 = F->scale[1], snr0 = F->snr[0];
    const float snr1 = F->snr[1], backg = F->backg, model_error = F->model_error;
    float *model = F->model, *deriv = F->deriv, *noise = F->noise;
    Py_ssize_t c;

    noise_row(F, r, noise);

    /* the 3 x 3 maximum of the signal, rows first, as the numpy form */
    for (c = 0; c < nx; ++c) {
        model[c] = here[c];
    }
    if (above) {
        for (c = 0; c < nx; ++c) {
            model[c] = np_max(model[c], above[c]);
        }
    }
    if (below) {
        for (c = 0; c < nx; ++c) {
            model[c] = np_max(model[c], below[c]);
        }
    }
    /* columns: each from its own and its left neighbour's row maximum
     * (deriv holds them for the moment), then the right one's */
    for (c = 0; c < nx; ++c) {
        deriv[c] = model[c];
    }
    for (c = 1; c < nx; ++c) {
        model[c] = np_max(model[c], deriv[c - 1]);
    }
    for (c = 0; c + 1 < nx; ++c) {
        model[c] = np_max(model[c], deriv[c + 1]);
    }
    for (c = 0; c < nx; ++c) {
        model[c] = model_error * model[c];
    }

    /* the largest step to a neighbour, NaN steps left out */
    for (c = 0; c < nx; ++c) {
        deriv[c] = 0.0f;
    }
    if (up) {
        for (c = 0; c < nx; ++c) {
            deriv[c] = larger_step(fabsf(b[c] - up[c]), deriv[c]);
        }
    }
    if (down) {
        for (c = 0; c < nx; ++c) {
            deriv[c] = larger_step(fabsf(down[c] - b[c]), deriv[c]);
        }
    }
    for (c = 1; c < nx; ++c) {
        deriv[c] = larger_step(fabsf(b[c] - b[c - 1]), deriv[c]);
    }
    for (c = 0; c + 1 < nx; ++c) {
        deriv[c] = larger_step(fabsf(b[c + 1] - b[c]), deriv[c]);
    }

    for (c = 0; c < nx; ++c) {
        float diff = data[c] - b[c], t0, t1;
        int valid;
        diff = diff - backg;
        diff = fabsf(diff);
        /* isfinite of both, as comparisons (neither is negative, or else NaN) */
        valid = (diff <= FLT_MAX) & (noise[c] <= FLT_MAX);
        t0 = scale0 * deriv[c];
        t0 = t0 + snr0 * noise[c];
        t0 = t0 + model[c];
        t1 = scale1 * deriv[c];
        t1 = t1 + snr1 * noise[c];
        t1 = t1 + model[c];
        first[c] = (unsigned char) (valid & (diff > t0));
        second[c] = (unsigned char) (valid & (diff > t1));
    }
}

/* Row r of the mask: the first test grown by one pixel, and the second,
 * where the flags are acceptable. */
static void
mask_row(const flag_t *F, Py_ssize_t r, const unsigned char *above, const unsigned char *here,
         const unsigned char *below, const unsigned char *second)
{
    const Py_ssize_t nx = F->nx;
    const uint32_t *dq = F->dq + r * nx, bad = F->bad;
    unsigned char *out = F->mask + r * nx, *vertical = F->vertical;
    Py_ssize_t c;

    for (c = 0; c < nx; ++c) {
        vertical[c] = here[c];
    }
    if (above) {
        for (c = 0; c < nx; ++c) {
            vertical[c] |= above[c];
        }
    }
    if (below) {
        for (c = 0; c < nx; ++c) {
            vertical[c] |= below[c];
        }
    }
    for (c = 0; c < nx; ++c) {
        out[c] = vertical[c];
    }
    for (c = 1; c < nx; ++c) {
        out[c] |= vertical[c - 1];
    }
    for (c = 0; c + 1 < nx; ++c) {
        out[c] |= vertical[c + 1];
    }
    for (c = 0; c < nx; ++c) {
        out[c] = (unsigned char) (out[c] & second[c] & ((dq[c] & bad) == 0));
    }
}

static int
flag_image(flag_t *F)
{
    Py_ssize_t nx = F->nx, ny = F->ny, r;
    size_t row = sizeof(float) * (size_t) nx;
    int k;

    for (k = 0; k < 3; ++k) {
        F->signal[k] = (float *) malloc(row);
        F->first[k] = (unsigned char *) malloc((size_t) nx);
        F->second[k] = (unsigned char *) malloc((size_t) nx);
        if (!F->signal[k] || !F->first[k] || !F->second[k]) {
            return 1;
        }
    }
    F->model = (float *) malloc(row);
    F->deriv = (float *) malloc(row);
    F->noise = (float *) malloc(row);
    F->vertical = (unsigned char *) malloc((size_t) nx);
    if (!F->model || !F->deriv || !F->noise || !F->vertical) {
        return 1;
    }
    /* rows are kept in slots r mod 3 */
    signal_row(F, 0, F->signal[0]);
    for (r = 0; r < ny; ++r) {
        if (r + 1 < ny) {
            signal_row(F, r + 1, F->signal[(r + 1) % 3]);
        }
        test_row(F, r, r > 0 ? F->signal[(r + 2) % 3] : NULL, F->signal[r % 3],
                 r + 1 < ny ? F->signal[(r + 1) % 3] : NULL, F->first[r % 3],
                 F->second[r % 3]);
        if (r > 0) {
            mask_row(F, r - 1, r > 1 ? F->first[(r + 1) % 3] : NULL, F->first[(r + 2) % 3],
                     F->first[r % 3], F->second[(r + 2) % 3]);
        }
    }
    mask_row(F, ny - 1, ny > 1 ? F->first[(ny + 1) % 3] : NULL, F->first[(ny - 1) % 3], NULL,
             F->second[(ny - 1) % 3]);
    return 0;
}

static void
flag_free(flag_t *F)
{
    int k;

    for (k = 0; k < 3; ++k) {
        free(F->signal[k]);
        free(F->first[k]);
        free(F->second[k]);
    }
    free(F->model);
    free(F->deriv);
    free(F->noise);
    free(F->vertical);
}

/* ------------------------------------------------------------------------
 * Python interface
 */

/* A C-contiguous buffer of ndim dimensions and itemsize-byte floats
 * (itemsize 0: 4 or 8). */
static int
get_floats(PyObject *obj, Py_buffer *b, int writable, Py_ssize_t itemsize, int ndim,
           const char *name)
{
    const char *f;

    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                                       (writable ? PyBUF_WRITABLE : 0)) != 0) {
        return 1;
    }
    f = b->format ? b->format : "B";
    while (*f == '<' || *f == '=' || *f == '@') {
        ++f;
    }
    if (!((itemsize == 0 || b->itemsize == itemsize) &&
          ((b->itemsize == 4 && f[0] == 'f') || (b->itemsize == 8 && f[0] == 'd')) &&
          f[1] == '\0' && b->ndim == ndim)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a %d-d array of float%s", name, ndim,
                     itemsize == 4 ? "32" : itemsize == 8 ? "64" : "32 or float64");
        PyBuffer_Release(b);
        return 1;
    }
    return 0;
}

/* The spline (ty, tx, cx, cy) into B; its four buffers are added to bufs. */
static int
get_spline(PyObject *o_spline, blot_t *B, Py_buffer *bufs, int *nbuf)
{
    int k;

    if (!PyTuple_Check(o_spline) || PyTuple_GET_SIZE(o_spline) != 4) {
        PyErr_SetString(PyExc_ValueError, "spline: a tuple (ty, tx, cx, cy)");
        return 1;
    }
    for (k = 0; k < 4; ++k) {
        if (get_floats(PyTuple_GET_ITEM(o_spline, k), &bufs[*nbuf], 0, 8, k < 2 ? 1 : 2,
                       k < 2 ? "spline knots" : "spline coefficients")) {
            return 1;
        }
        ++*nbuf;
    }
    B->ty = (const double *) bufs[*nbuf - 4].buf;
    B->nty = bufs[*nbuf - 4].shape[0];
    B->tx = (const double *) bufs[*nbuf - 3].buf;
    B->ntx = bufs[*nbuf - 3].shape[0];
    if (B->nty < 8 || B->ntx < 8) {
        PyErr_SetString(PyExc_ValueError, "spline: a cubic spline needs 8 knots or more");
        return 1;
    }
    for (k = 0; k < 2; ++k) {
        Py_buffer *c = &bufs[*nbuf - 2 + k];
        if (c->shape[0] != B->nty - 4 || c->shape[1] != B->ntx - 4) {
            PyErr_SetString(PyExc_ValueError, "spline coefficients: shape (nty - 4, ntx - 4)");
            return 1;
        }
        B->c[k] = (const double *) c->buf;
    }
    return 0;
}

static void
release(blot_t *B, Py_buffer *bufs, int nbuf)
{
    int k;

    free(B->col_start);
    free(B->col_basis);
    free(B->row_map);
    for (k = 0; k < nbuf; ++k) {
        PyBuffer_Release(&bufs[k]);
    }
}

static PyObject *
py_blot(PyObject *self, PyObject *args)
{
    PyObject *o_median, *o_out, *o_pixmap, *o_spline;
    Py_ssize_t row0;
    double y0, x0;
    Py_buffer bufs[7];
    int nbuf = 0, status = 0;
    blot_t B;
    PyObject *result = NULL;

    (void) self;
    memset(&B, 0, sizeof(B));
    if (!PyArg_ParseTuple(args, "OddOnOO:blot", &o_median, &y0, &x0, &o_out, &row0, &o_pixmap,
                          &o_spline)) {
        return NULL;
    }
    if ((o_pixmap == Py_None) == (o_spline == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "give either a pixel map or a spline");
        return NULL;
    }
    if (get_floats(o_median, &bufs[nbuf], 0, 4, 2, "median")) {
        goto done;
    }
    B.median = (const float *) bufs[nbuf].buf;
    B.wy = bufs[nbuf].shape[0];
    B.wx = bufs[nbuf].shape[1];
    ++nbuf;
    if (get_floats(o_out, &bufs[nbuf], 1, 0, 2, "out")) {
        goto done;
    }
    if (bufs[nbuf].itemsize == 8) {
        B.out64 = (double *) bufs[nbuf].buf;
    } else {
        B.out = (float *) bufs[nbuf].buf;
    }
    B.ny = bufs[nbuf].shape[0];
    B.nx = bufs[nbuf].shape[1];
    ++nbuf;
    B.y0 = y0;
    B.x0 = x0;
    B.row0 = row0;
    if (o_pixmap != Py_None) {
        if (get_floats(o_pixmap, &bufs[nbuf], 0, 8, 3, "pixmap")) {
            goto done;
        }
        ++nbuf;
        if (bufs[nbuf - 1].shape[0] != B.ny || bufs[nbuf - 1].shape[1] != B.nx ||
            bufs[nbuf - 1].shape[2] != 2) {
            PyErr_SetString(PyExc_ValueError, "pixmap: shape (rows, columns, 2) of out");
            goto done;
        }
        B.pixmap = (const double *) bufs[nbuf - 1].buf;
    } else if (get_spline(o_spline, &B, bufs, &nbuf)) {
        goto done;
    }
    if (B.ny > 0 && B.nx > 0) {
        Py_BEGIN_ALLOW_THREADS
        status = blot_rows(&B);
        Py_END_ALLOW_THREADS
    }
    if (status) {
        PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;

done:
    release(&B, bufs, nbuf);
    return result;
}

static PyObject *
py_pixel_map(PyObject *self, PyObject *args)
{
    PyObject *o_spline, *o_out;
    Py_ssize_t row0;
    Py_buffer bufs[5];
    int nbuf = 0, status = 0;
    blot_t B;
    PyObject *result = NULL;

    (void) self;
    memset(&B, 0, sizeof(B));
    if (!PyArg_ParseTuple(args, "OnO:pixel_map", &o_spline, &row0, &o_out)) {
        return NULL;
    }
    if (get_spline(o_spline, &B, bufs, &nbuf)) {
        goto done;
    }
    if (get_floats(o_out, &bufs[nbuf], 1, 8, 3, "out")) {
        goto done;
    }
    ++nbuf;
    if (bufs[nbuf - 1].shape[2] != 2) {
        PyErr_SetString(PyExc_ValueError, "out: shape (rows, columns, 2)");
        goto done;
    }
    B.ny = bufs[nbuf - 1].shape[0];
    B.nx = bufs[nbuf - 1].shape[1];
    B.row0 = row0;
    if (B.ny > 0 && B.nx > 0) {
        Py_BEGIN_ALLOW_THREADS
        status = map_rows(&B, (double *) bufs[nbuf - 1].buf);
        Py_END_ALLOW_THREADS
    }
    if (status) {
        PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;

done:
    release(&B, bufs, nbuf);
    return result;
}

static int
float32_buffer(PyObject *obj, Py_buffer *b, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);

    if (PyObject_GetBuffer(obj, b, flags) != 0) {
        return -1;
    }
    if (b->itemsize != 4 || !b->format ||
        (strcmp(b->format, "f") && strcmp(b->format, "<f") && strcmp(b->format, "=f") &&
         strcmp(b->format, "@f"))) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous array of float32", name);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static PyObject *
py_weight_moments(PyObject *self, PyObject *args)
{
    PyObject *o_values;
    double lo, hi, total = 0.0, squares = 0.0;
    Py_ssize_t count = 0, n = 1;
    Py_buffer b;
    int k;

    (void) self;
    if (!PyArg_ParseTuple(args, "Odd:weight_moments", &o_values, &lo, &hi)) {
        return NULL;
    }
    if (float32_buffer(o_values, &b, 0, "values") != 0) {
        return NULL;
    }
    for (k = 0; k < b.ndim; ++k) {
        n *= b.shape[k];
    }
    Py_BEGIN_ALLOW_THREADS
    weight_moments((const float *) b.buf, n, (float) lo, (float) hi, &count, &total, &squares);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return Py_BuildValue("ndd", count, total, squares);
}

static PyObject *
py_nanmedian(PyObject *self, PyObject *args)
{
    PyObject *o_frames, *o_out, *seq = NULL;
    Py_buffer out, *bufs = NULL;
    const float **frames = NULL;
    float *scratch = NULL;
    Py_ssize_t n, k, got = 0, npix = 1;
    int low, d;

    (void) self;
    if (!PyArg_ParseTuple(args, "OOp:nanmedian", &o_frames, &o_out, &low)) {
        return NULL;
    }
    seq = PySequence_Fast(o_frames, "frames: expected a sequence of arrays");
    if (!seq) {
        return NULL;
    }
    if (float32_buffer(o_out, &out, 1, "out") != 0) {
        Py_DECREF(seq);
        return NULL;
    }
    for (d = 0; d < out.ndim; ++d) {
        npix *= out.shape[d];
    }
    n = PySequence_Fast_GET_SIZE(seq);
    bufs = (Py_buffer *) PyMem_Malloc(sizeof(Py_buffer) * (size_t) (n ? n : 1));
    frames = (const float **) PyMem_Malloc(sizeof(float *) * (size_t) (n ? n : 1));
    if (n > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "frames: too many");
        goto done;
    }
    scratch = (float *) PyMem_Malloc(sizeof(float) * (size_t) (n ? n : 1) * MEDIAN_BLOCK);
    if (!bufs || !frames || !scratch) {
        PyErr_NoMemory();
        goto done;
    }
    for (k = 0; k < n; ++k) {
        if (float32_buffer(PySequence_Fast_GET_ITEM(seq, k), &bufs[k], 0, "frames") != 0) {
            goto done;
        }
        ++got;
        if (bufs[k].len != out.len) {
            PyErr_Format(PyExc_ValueError, "frames: frame %zd has %zd bytes, out has %zd", k,
                         bufs[k].len, out.len);
            goto done;
        }
        frames[k] = (const float *) bufs[k].buf;
    }
    Py_BEGIN_ALLOW_THREADS
    nanmedian_pixels(frames, (int) n, npix, (float *) out.buf, low, scratch);
    Py_END_ALLOW_THREADS
done:
    for (k = 0; k < got; ++k) {
        PyBuffer_Release(&bufs[k]);
    }
    PyBuffer_Release(&out);
    PyMem_Free(bufs);
    PyMem_Free(frames);
    PyMem_Free(scratch);
    Py_DECREF(seq);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
py_mask_poor(PyObject *self, PyObject *args)
{
    PyObject *o_data, *o_weight;
    double threshold;
    int zero_is_poor;
    Py_buffer bd, bw;

    (void) self;
    if (!PyArg_ParseTuple(args, "OOdp:mask_poor", &o_data, &o_weight, &threshold,
                          &zero_is_poor)) {
        return NULL;
    }
    if (float32_buffer(o_data, &bd, 1, "data") != 0) {
        return NULL;
    }
    if (float32_buffer(o_weight, &bw, 0, "weight") != 0) {
        PyBuffer_Release(&bd);
        return NULL;
    }
    if (bd.len != bw.len) {
        PyErr_SetString(PyExc_ValueError, "data and weight differ in size");
        PyBuffer_Release(&bd);
        PyBuffer_Release(&bw);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    mask_poor((float *) bd.buf, (const float *) bw.buf, bd.len / 4, (float) threshold,
              zero_is_poor);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&bd);
    PyBuffer_Release(&bw);
    Py_RETURN_NONE;
}

/* A C-contiguous 2-D buffer of shape (ny, nx) and one of the formats in
 * kinds (e.g. "efd"); its format letter in *kind. */
static int
get_plane(PyObject *obj, Py_buffer *b, int writable, const char *kinds, Py_ssize_t ny,
          Py_ssize_t nx, const char *name, char *kind)
{
    const char *f;

    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                                       (writable ? PyBUF_WRITABLE : 0)) != 0) {
        return 1;
    }
    f = b->format ? b->format : "B";
    while (*f == '<' || *f == '=' || *f == '@') {
        ++f;
    }
    if (f[0] == '\0' || f[1] != '\0' || !strchr(kinds, f[0]) || b->ndim != 2 ||
        (ny >= 0 && (b->shape[0] != ny || b->shape[1] != nx))) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous 2-d array of the image's "
                     "shape and one of the types '%s', got '%s'", name, kinds, f);
        PyBuffer_Release(b);
        return 1;
    }
    if (kind) {
        *kind = f[0];
    }
    return 0;
}

static PyObject *
py_flag(PyObject *self, PyObject *args)
{
    PyObject *o_data, *o_blot, *o_dq, *o_vars, *o_mask, *o_level, *o_half;
    double scale0, scale1, snr0, snr1, backg, model_error;
    unsigned long bad;
    Py_buffer bufs[5 + FLAG_PLANES];
    int nbuf = 0, status = 0, k;
    flag_t F;
    PyObject *result = NULL;

    (void) self;
    memset(&F, 0, sizeof(F));
    if (!PyArg_ParseTuple(args, "OOOOOddddddOkO:flag", &o_data, &o_blot, &o_dq, &o_vars,
                          &o_mask, &scale0, &scale1, &snr0, &snr1, &backg, &model_error,
                          &o_level, &bad, &o_half)) {
        return NULL;
    }
    if (!PyTuple_Check(o_vars) || PyTuple_GET_SIZE(o_vars) > FLAG_PLANES) {
        PyErr_SetString(PyExc_ValueError, "variances: a tuple of at most 3 arrays");
        return NULL;
    }
    if (get_plane(o_data, &bufs[nbuf], 0, "f", -1, -1, "data", NULL)) {
        goto done;
    }
    F.data = (const float *) bufs[nbuf].buf;
    F.ny = bufs[nbuf].shape[0];
    F.nx = bufs[nbuf].shape[1];
    ++nbuf;
    if (get_plane(o_blot, &bufs[nbuf], 0, "f", F.ny, F.nx, "blot", NULL)) {
        goto done;
    }
    F.blot = (const float *) bufs[nbuf++].buf;
    if (get_plane(o_dq, &bufs[nbuf], 0, "IL", F.ny, F.nx, "dq", NULL)) {
        goto done;
    }
    if (bufs[nbuf].itemsize != 4) {
        PyErr_SetString(PyExc_TypeError, "dq: expected uint32");
        ++nbuf;
        goto done;
    }
    F.dq = (const uint32_t *) bufs[nbuf++].buf;
    if (get_plane(o_mask, &bufs[nbuf], 1, "?", F.ny, F.nx, "mask", NULL)) {
        goto done;
    }
    F.mask = (unsigned char *) bufs[nbuf++].buf;
    for (k = 0; k < PyTuple_GET_SIZE(o_vars); ++k) {
        if (get_plane(PyTuple_GET_ITEM(o_vars, k), &bufs[nbuf], 0, "efd", F.ny, F.nx,
                      "variance", &F.var_kind[k])) {
            goto done;
        }
        F.var[k] = bufs[nbuf++].buf;
    }
    F.nvar = (int) PyTuple_GET_SIZE(o_vars);
    if (get_floats(o_half, &bufs[nbuf], 0, 4, 1, "half table")) {
        goto done;
    }
    if (bufs[nbuf].shape[0] != 65536) {
        PyErr_SetString(PyExc_ValueError, "half table: 65536 values");
        ++nbuf;
        goto done;
    }
    F.half = (const float *) bufs[nbuf++].buf;
    F.bad = (uint32_t) bad;
    /* numpy.float32 of each parameter: the same rounding as these casts */
    F.scale[0] = (float) scale0;
    F.scale[1] = (float) scale1;
    F.snr[0] = (float) snr0;
    F.snr[1] = (float) snr1;
    F.backg = (float) backg;
    F.model_error = (float) model_error;
    F.has_level = o_level != Py_None;
    if (F.has_level) {
        double level = PyFloat_AsDouble(o_level);
        if (level == -1.0 && PyErr_Occurred()) {
            goto done;
        }
        F.level = (float) level;
    }
    if (F.ny > 0 && F.nx > 0) {
        Py_BEGIN_ALLOW_THREADS
        status = flag_image(&F);
        Py_END_ALLOW_THREADS
    }
    if (status) {
        PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;

done:
    flag_free(&F);
    for (k = 0; k < nbuf; ++k) {
        PyBuffer_Release(&bufs[k]);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"blot", py_blot, METH_VARARGS,
     "blot(median, y0, x0, out, row0, pixmap, spline) -> None\n\n"
     "Interpolate median (float32, on grid pixels from (x0, y0)) at the positions of\n"
     "image rows row0.. (given as a float64 pixmap of out's rows, or as the splines\n"
     "(ty, tx, cx, cy) of the whole image's map) into out (float32, or float64 for\n"
     "the values before their rounding to float32)."},
    {"weight_moments", py_weight_moments, METH_VARARGS,
     "weight_moments(values, lo, hi) -> (count, sum, sum of squares)\n\n"
     "Of the float32 values with lo <= v <= hi, the bounds rounded to float32; the\n"
     "squares and sums in double, in an order that depends only on len(values)."},
    {"nanmedian", py_nanmedian, METH_VARARGS,
     "nanmedian(frames, out, low) -> None\n\n"
     "Per-pixel median of the float32 frames (a sequence of arrays of out's size),\n"
     "NaN ignored, into out (float32): NaN where every frame is NaN; for an even\n"
     "count the mean of the middle two values, or the lower one with low."},
    {"mask_poor", py_mask_poor, METH_VARARGS,
     "mask_poor(data, weight, threshold, zero_is_poor) -> None\n\n"
     "Set data (float32, in place) to NaN where weight (float32, same size) is not at\n"
     "least threshold (compared in float32), and where it is at most 0 when\n"
     "zero_is_poor."},
    {"flag", py_flag, METH_VARARGS,
     "flag(data, blot, dq, variances, mask, scale0, scale1, snr0, snr1, backg, model_error,\n"
     "     level, bad, half) -> None\n\n"
     "The outlier mask of an image (float32 data and blot, uint32 dq, a tuple of up to\n"
     "three float16, float32 or float64 variance planes) into mask (bool), as\n"
     "romosaic.outlier.flagging.outlier_mask gives it with the noise of the summed\n"
     "variances, the sky level (None: no model term) and the pixels whose dq has no\n"
     "bit of bad usable; half holds the float32 value of each float16 bit pattern\n"
     "with non-finite ones replaced as numpy.nan_to_num does."},
    {"pixel_map", py_pixel_map, METH_VARARGS,
     "pixel_map(spline, row0, out) -> None\n\n"
     "The pixel map of image rows row0.. from its splines, as the blot evaluates it,\n"
     "into out (float64, shape (rows, columns, 2))."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels", "romosaic's compiled outlier detection kernels.", -1,
    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC
PyInit__kernels(void)
{
    return PyModule_Create(&module);
}
