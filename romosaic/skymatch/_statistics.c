/*
 * romosaic.skymatch._statistics: clipped sky statistics of labelled pixels.
 *
 * The definitions (IRAF imstatistics, as the reference pipeline uses them)
 * are documented in `romosaic.skymatch.statistics`, which wraps this module.
 * The design here is about memory and speed on full-size detectors:
 *
 *   - the pixels are gathered group by group with one counting pass over
 *     the labels (a stable scatter into one float32 buffer), so no 64-bit
 *     (label, value) keys and no whole-image prefix sums are ever made;
 *   - each group's run is sorted on its own with a least-significant-digit
 *     radix sort of order-preserving 32-bit keys (passes whose byte is the
 *     same for every key are skipped, which for sky pixels of similar
 *     magnitude is usually the top one), so a run of a thousand pixels
 *     is sorted in cache;
 *   - the clipping passes, the median and the histogram of a sorted run
 *     are found by binary search and short sweeps over the run;
 *   - one group (a whole image) is measured without sorting or copying,
 *     by sweeps over the values, unless its median is asked for.
 *
 * Pixels labelled below 0 are left out, so callers pass a whole data plane
 * and mark the unusable pixels instead of copying the usable ones. Extra
 * memory: one float32 per pixel measured, plus a scratch buffer as long as
 * the largest group. Arrays come in through the buffer protocol (no numpy
 * headers at build time); the work runs without the GIL, so threads may
 * measure different images at once.
 *
 * `cell_labels` (at the end) gives every good pixel of an image the coarse
 * sky cell it falls in: the labels the statistics group by.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum statistic { STAT_MEAN = 0, STAT_MEDIAN = 1, STAT_MODE = 2, STAT_MIDPT = 3 };

/* Runs shorter than this are sorted by insertion: the radix sort's four
 * 256-bucket histograms would cost more than the sort itself. */
#define SMALL_RUN 48

typedef struct {
    int statistic;
    double lower, upper;
    long nclip;
    double lsigma, usigma, binwidth;
    long max_bins;
} parameters;

typedef struct {
    double value, stddev;
    int64_t npix;
} group_result;

/* float32 bits -> unsigned key with the same order (finite values and +-inf):
 * positive floats order like their bits once the sign bit is set, negative
 * ones in reverse, so all their bits are flipped. */
static inline uint32_t to_key(uint32_t bits)
{
    uint32_t flip = (uint32_t)(-(int32_t)(bits >> 31)) | 0x80000000u;
    return bits ^ flip;
}

static inline uint32_t from_key(uint32_t key)
{
    uint32_t flip = ((key >> 31) - 1u) | 0x80000000u;
    return key ^ flip;
}

/* Sorts n floats (viewed as uint32 bits) in place; scratch holds n. */
static void sort_run(uint32_t *bits, Py_ssize_t n, uint32_t *scratch)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        bits[i] = to_key(bits[i]);
    }
    if (n < SMALL_RUN) {
        for (Py_ssize_t i = 1; i < n; i++) {
            uint32_t key = bits[i];
            Py_ssize_t j = i;
            while (j > 0 && bits[j - 1] > key) {
                bits[j] = bits[j - 1];
                j--;
            }
            bits[j] = key;
        }
    } else {
        Py_ssize_t count[4][256];
        memset(count, 0, sizeof(count));
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t key = bits[i];
            count[0][key & 0xff]++;
            count[1][(key >> 8) & 0xff]++;
            count[2][(key >> 16) & 0xff]++;
            count[3][key >> 24]++;
        }
        uint32_t *src = bits, *dst = scratch;
        for (int pass = 0; pass < 4; pass++) {
            const int shift = 8 * pass;
            Py_ssize_t *c = count[pass];
            if (c[(src[0] >> shift) & 0xff] == n) {
                continue; /* every key has this byte: the pass would not move anything */
            }
            Py_ssize_t offset = 0;
            for (int b = 0; b < 256; b++) {
                Py_ssize_t here = c[b];
                c[b] = offset;
                offset += here;
            }
            for (Py_ssize_t i = 0; i < n; i++) {
                uint32_t key = src[i];
                dst[c[(key >> shift) & 0xff]++] = key;
            }
            uint32_t *swap = src;
            src = dst;
            dst = swap;
        }
        if (src != bits) {
            memcpy(bits, src, (size_t)n * sizeof(uint32_t));
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        bits[i] = from_key(bits[i]);
    }
}

/* First index of the sorted run whose value is >= threshold. */
static Py_ssize_t first_at_least(const float *v, Py_ssize_t n, double threshold)
{
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if ((double)v[mid] < threshold) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* Index after the last value of the sorted run that is <= threshold. */
static Py_ssize_t after_at_most(const float *v, Py_ssize_t n, double threshold)
{
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if ((double)v[mid] <= threshold) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* Mean and standard deviation (n - 1 in the denominator; 0 for one value)
 * of `count` values from their sums s1 and s2 about `reference`. */
static inline void moments(double s1, double s2, Py_ssize_t count, double reference,
                           double *mean, double *std)
{
    const double mean_offset = s1 / (double)count;
    const double var = count > 1 ? (s2 - s1 * mean_offset) / (double)(count - 1) : 0.0;
    *std = sqrt(fmax(var, 0.0));
    *mean = mean_offset + reference;
}

/* The next clipping pass's range, never outside [lower, upper]. */
static inline void clip_limits(double mean, double std, const parameters *p, double *lo,
                               double *hi)
{
    *lo = fmax(p->lower, mean - p->lsigma * std);
    *hi = fmin(p->upper, mean + p->usigma * std);
}

/* The histogram of values from vmin to vmax: bins `binwidth` standard
 * deviations wide starting at vmin, at most max_bins of them. Returns 0 when
 * no histogram can be made (one distinct value, or bins wider than the
 * data): every estimator of the centre is then the middle of the range. */
static int histogram_bins(double vmin, double vmax, double std, const parameters *p,
                          double *width, long *nbins)
{
    const double span = vmax - vmin;
    const double tiny = 10.0 * FLT_EPSILON * fmax(1.0, fabs(vmax));
    *width = p->binwidth * std;
    if (*width <= tiny || span <= tiny || *width > span) {
        return 0;
    }
    double bins = floor(span / *width) + 1.0;
    if (!(bins <= (double)p->max_bins)) {
        bins = (double)p->max_bins;
        *width = span * (1.0 + 1e-9) / (double)p->max_bins;
    }
    *nbins = (long)bins;
    return 1;
}

/* Lower edge of bin j: bin j holds edge(j) <= value < edge(j + 1), and the
 * last bin also the values beyond its upper edge. */
static inline double bin_edge(double vmin, double width, long j)
{
    return vmin + (double)j * width;
}

/* Mode or midpoint of n values from their histogram. */
static double statistic_of_histogram(const double *counts, long nbins, Py_ssize_t n,
                                     double vmin, double width, int statistic)
{
    if (statistic == STAT_MODE) {
        long k = 0;
        for (long j = 1; j < nbins; j++) {
            if (counts[j] > counts[k]) {
                k = j; /* the first of equally high bins */
            }
        }
        const double c0 = counts[k];
        const int interior = k > 0 && k < nbins - 1;
        const double cm = interior ? counts[k - 1] : c0;
        const double cp = interior ? counts[k + 1] : c0;
        const double curvature = 2.0 * c0 - cm - cp;
        const double vertex = curvature > 0.0 ? 0.5 * (cp - cm) / curvature : 0.0;
        return vmin + ((double)k + 0.5 + vertex) * width;
    }
    const double half = 0.5 * (double)n;
    double cumulative = 0.0;
    long k = 0;
    for (; k < nbins - 1; k++) {
        if (cumulative + counts[k] >= half) {
            break;
        }
        cumulative += counts[k];
    }
    const double fraction = counts[k] > 0.0 ? (half - cumulative) / counts[k] : 0.5;
    return vmin + ((double)k + fraction) * width;
}

/* Mode or midpoint of the sorted values v[0..n), n > 0. */
static double histogram_statistic(const float *v, Py_ssize_t n, double std, const parameters *p,
                                  double *counts)
{
    const double vmin = v[0], vmax = v[n - 1];
    double width;
    long nbins;
    if (!histogram_bins(vmin, vmax, std, p, &width, &nbins)) {
        return 0.5 * (vmin + vmax);
    }
    Py_ssize_t at = 0;
    for (long j = 0; j < nbins; j++) {
        Py_ssize_t end = n;
        if (j < nbins - 1) {
            const double edge = bin_edge(vmin, width, j + 1);
            end = at;
            while (end < n && (double)v[end] < edge) {
                end++;
            }
        }
        counts[j] = (double)(end - at);
        at = end;
    }
    return statistic_of_histogram(counts, nbins, n, vmin, width, p->statistic);
}

/* Clipped statistic of the sorted values v[0..n). */
static group_result run_statistics(const float *v, Py_ssize_t n, const parameters *p,
                                   double *counts)
{
    group_result r = {NAN, NAN, 0};
    double lo = p->lower, hi = p->upper;
    Py_ssize_t start = 0, count = 0;
    double mean = NAN, std = NAN;
    for (long iteration = 0; iteration <= p->nclip; iteration++) {
        start = first_at_least(v, n, lo);
        Py_ssize_t end = after_at_most(v, n, hi);
        count = end > start ? end - start : 0;
        if (count == 0) {
            return r; /* every pixel clipped away (or none within the limits) */
        }
        /* Sums about a value of the run keep the sum of squares accurate
         * however far the data sit from zero. */
        const double reference = v[start + count / 2];
        double s1 = 0.0, s2 = 0.0;
        for (Py_ssize_t i = start; i < start + count; i++) {
            const double d = (double)v[i] - reference;
            s1 += d;
            s2 += d * d;
        }
        moments(s1, s2, count, reference, &mean, &std);
        if (iteration < p->nclip) {
            clip_limits(mean, std, p, &lo, &hi);
        }
    }
    const float *run = v + start;
    double value = mean;
    if (p->statistic == STAT_MEDIAN) {
        value = 0.5 * ((double)run[(count - 1) / 2] + (double)run[count / 2]);
    } else if (p->statistic == STAT_MODE || p->statistic == STAT_MIDPT) {
        value = histogram_statistic(run, count, std, p, counts);
        if (!isfinite(value)) {
            value = mean;
        }
    }
    r.value = value;
    r.stddev = std;
    r.npix = count;
    return r;
}

/* Clipped statistic of the values v[i] with labels[i] >= 0 (all values
 * when labels is NULL), without sorting or copying them: each clipping
 * pass, and the histogram, is one sweep over the values. Gives the same
 * pixels as run_statistics and the same statistics to rounding; not for
 * the median, which needs the values in order. */
static group_result stream_statistics(const float *v, const int32_t *labels, Py_ssize_t n,
                                      const parameters *p, double *counts)
{
    group_result r = {NAN, NAN, 0};
    double lo = p->lower, hi = p->upper;
    double mean = NAN, std = NAN, vmin = INFINITY, vmax = -INFINITY;
    Py_ssize_t count = 0;
    /* Sums about a value near the mean keep the sum of squares accurate
     * however far the data sit from zero: a first sweep finds one. */
    double reference = 0.0;
    {
        double s1 = 0.0;
        for (Py_ssize_t i = 0; i < n; i++) {
            const double x = (double)v[i];
            if ((labels == NULL || labels[i] >= 0) && x >= lo && x <= hi) {
                s1 += x;
                count++;
            }
        }
        if (count == 0) {
            return r;
        }
        reference = s1 / (double)count;
    }
    for (long iteration = 0; iteration <= p->nclip; iteration++) {
        double s1 = 0.0, s2 = 0.0;
        count = 0;
        vmin = INFINITY;
        vmax = -INFINITY;
        for (Py_ssize_t i = 0; i < n; i++) {
            const double x = (double)v[i];
            if ((labels == NULL || labels[i] >= 0) && x >= lo && x <= hi) {
                const double d = x - reference;
                s1 += d;
                s2 += d * d;
                count++;
                vmin = x < vmin ? x : vmin;
                vmax = x > vmax ? x : vmax;
            }
        }
        if (count == 0) {
            return r; /* every pixel clipped away */
        }
        moments(s1, s2, count, reference, &mean, &std);
        reference = mean;
        if (iteration < p->nclip) {
            clip_limits(mean, std, p, &lo, &hi);
        }
    }
    double value = mean;
    if (p->statistic == STAT_MODE || p->statistic == STAT_MIDPT) {
        double width;
        long nbins;
        if (!histogram_bins(vmin, vmax, std, p, &width, &nbins)) {
            value = 0.5 * (vmin + vmax);
        } else {
            memset(counts, 0, (size_t)nbins * sizeof(double));
            for (Py_ssize_t i = 0; i < n; i++) {
                const double x = (double)v[i];
                if ((labels == NULL || labels[i] >= 0) && x >= lo && x <= hi) {
                    /* The division finds the bin to within one; the
                     * comparisons with the edges settle it exactly as the
                     * sorted path's sweep does. */
                    long j = (long)floor((x - vmin) / width);
                    j = j < 0 ? 0 : (j > nbins - 1 ? nbins - 1 : j);
                    while (j > 0 && x < bin_edge(vmin, width, j)) {
                        j--;
                    }
                    while (j < nbins - 1 && x >= bin_edge(vmin, width, j + 1)) {
                        j++;
                    }
                    counts[j] += 1.0;
                }
            }
            value = statistic_of_histogram(counts, nbins, count, vmin, width, p->statistic);
        }
        if (!isfinite(value)) {
            value = mean;
        }
    }
    r.value = value;
    r.stddev = std;
    r.npix = count;
    return r;
}

/* Gathers, sorts and measures every group (pixels labelled below 0 belong
 * to none). Returns 0, -1 when out of memory, or -2 - i for a label beyond
 * the last group at index i. */
static Py_ssize_t measure_groups(const float *values, const int32_t *labels, Py_ssize_t n,
                                 Py_ssize_t n_groups, const parameters *p, double *out_value,
                                 int64_t *out_npix, double *out_stddev, int64_t *out_members)
{
    Py_ssize_t status = 0;
    Py_ssize_t *offset = calloc((size_t)n_groups + 1, sizeof(Py_ssize_t));
    uint32_t *gathered = NULL;
    double *counts = malloc((size_t)(p->max_bins > 0 ? p->max_bins : 1) * sizeof(double));
    uint32_t *scratch = NULL;
    if (offset == NULL || counts == NULL) {
        status = -1;
        goto done;
    }
    if (n_groups == 1 && p->statistic != STAT_MEDIAN) {
        /* One group (a whole image): no gathering or sorting needed. */
        if (labels != NULL) {
            for (Py_ssize_t i = 0; i < n; i++) {
                if (labels[i] >= 1) {
                    status = -2 - i;
                    goto done;
                }
                offset[1] += labels[i] >= 0;
            }
        } else {
            offset[1] = n;
        }
        const group_result r = stream_statistics(values, labels, n, p, counts);
        out_value[0] = r.value;
        out_stddev[0] = r.stddev;
        out_npix[0] = r.npix;
        out_members[0] = offset[1];
        goto done;
    }
    if (labels == NULL) {
        offset[1] = n;
        gathered = malloc((size_t)(n > 0 ? n : 1) * sizeof(uint32_t));
        if (gathered == NULL) {
            status = -1;
            goto done;
        }
        memcpy(gathered, values, (size_t)n * sizeof(uint32_t));
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            const int32_t label = labels[i];
            if (label >= n_groups) {
                status = -2 - i;
                goto done;
            }
            offset[label + 1] += label >= 0;
        }
        for (Py_ssize_t g = 0; g < n_groups; g++) {
            offset[g + 1] += offset[g];
        }
        gathered = malloc((size_t)(offset[n_groups] > 0 ? offset[n_groups] : 1) * sizeof(uint32_t));
        if (gathered == NULL) {
            status = -1;
            goto done;
        }
        /* Stable scatter: each group's pixels in their original order. */
        Py_ssize_t *next = malloc((size_t)n_groups * sizeof(Py_ssize_t));
        if (next == NULL) {
            status = -1;
            goto done;
        }
        memcpy(next, offset, (size_t)n_groups * sizeof(Py_ssize_t));
        const uint32_t *bits = (const uint32_t *)values;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (labels[i] >= 0) {
                gathered[next[labels[i]]++] = bits[i];
            }
        }
        free(next);
    }
    Py_ssize_t longest = 0;
    for (Py_ssize_t g = 0; g < n_groups; g++) {
        const Py_ssize_t size = offset[g + 1] - offset[g];
        longest = size > longest ? size : longest;
    }
    scratch = malloc((size_t)(longest > 0 ? longest : 1) * sizeof(uint32_t));
    if (scratch == NULL) {
        status = -1;
        goto done;
    }
    for (Py_ssize_t g = 0; g < n_groups; g++) {
        uint32_t *run = gathered + offset[g];
        const Py_ssize_t size = offset[g + 1] - offset[g];
        sort_run(run, size, scratch);
        const group_result r = run_statistics((const float *)run, size, p, counts);
        out_value[g] = r.value;
        out_stddev[g] = r.stddev;
        out_npix[g] = r.npix;
        out_members[g] = size;
    }
done:
    free(scratch);
    free(counts);
    free(gathered);
    free(offset);
    return status;
}

static int get_buffer(PyObject *obj, Py_buffer *view, const char *name, Py_ssize_t itemsize,
                      char kind, int writable)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        return -1;
    }
    const char *format = view->format ? view->format : "B";
    if (*format == '<' || *format == '=' || *format == '@') {
        format++;
    }
    const int kind_ok = (kind == 'f' && (*format == 'f' || *format == 'd'))
        || (kind == 'i' && strchr("bhilq", *format) != NULL)
        || (kind == 'i' && itemsize == 1 && (*format == 'B' || *format == '?'));
    if (view->ndim != 1 || view->itemsize != itemsize || !kind_ok) {
        PyErr_Format(PyExc_TypeError, "%s must be a 1-D contiguous array of %zd-byte %s", name,
                     itemsize, kind == 'f' ? "floats" : "integers");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *grouped_statistics(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"values", "labels", "value", "npix", "stddev", "members", "statistic",
                               "lower", "upper", "nclip", "lsigma", "usigma", "binwidth",
                               "max_bins", NULL};
    PyObject *o_values, *o_labels, *o_value, *o_npix, *o_stddev, *o_members;
    parameters p;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOiddldddl", keywords, &o_values,
                                     &o_labels, &o_value, &o_npix, &o_stddev, &o_members,
                                     &p.statistic,
                                     &p.lower, &p.upper, &p.nclip, &p.lsigma, &p.usigma,
                                     &p.binwidth, &p.max_bins)) {
        return NULL;
    }
    if (p.statistic < STAT_MEAN || p.statistic > STAT_MIDPT || p.nclip < 0 || p.max_bins < 1) {
        PyErr_SetString(PyExc_ValueError, "invalid statistic, nclip or max_bins");
        return NULL;
    }
    Py_buffer values, labels, value, npix, stddev, members;
    int have_labels = o_labels != Py_None;
    if (get_buffer(o_values, &values, "values", 4, 'f', 0) < 0) {
        return NULL;
    }
    if (have_labels && get_buffer(o_labels, &labels, "labels", 4, 'i', 0) < 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    if (get_buffer(o_value, &value, "value", 8, 'f', 1) < 0) {
        goto fail_value;
    }
    if (get_buffer(o_npix, &npix, "npix", 8, 'i', 1) < 0) {
        goto fail_npix;
    }
    if (get_buffer(o_stddev, &stddev, "stddev", 8, 'f', 1) < 0) {
        goto fail_stddev;
    }
    if (get_buffer(o_members, &members, "members", 8, 'i', 1) < 0) {
        goto fail_members;
    }
    PyObject *result = NULL;
    const Py_ssize_t n = values.shape[0];
    const Py_ssize_t n_groups = value.shape[0];
    if ((have_labels && labels.shape[0] != n) || npix.shape[0] != n_groups
        || stddev.shape[0] != n_groups || members.shape[0] != n_groups
        || (!have_labels && n_groups != 1)) {
        PyErr_SetString(PyExc_ValueError, "inconsistent lengths of values, labels and results");
        goto release;
    }
    Py_ssize_t status;
    Py_BEGIN_ALLOW_THREADS
    status = measure_groups((const float *)values.buf,
                            have_labels ? (const int32_t *)labels.buf : NULL, n, n_groups, &p,
                            (double *)value.buf, (int64_t *)npix.buf, (double *)stddev.buf,
                            (int64_t *)members.buf);
    Py_END_ALLOW_THREADS
    if (status == -1) {
        PyErr_NoMemory();
    } else if (status < -1) {
        PyErr_Format(PyExc_ValueError, "label at index %zd is not below the number of groups, %zd",
                     -2 - status, n_groups);
    } else {
        result = Py_NewRef(Py_None);
    }
release:
    PyBuffer_Release(&members);
fail_members:
    PyBuffer_Release(&stddev);
fail_stddev:
    PyBuffer_Release(&npix);
fail_npix:
    PyBuffer_Release(&value);
fail_value:
    if (have_labels) {
        PyBuffer_Release(&labels);
    }
    PyBuffer_Release(&values);
    return result;
}

/* ------------------------------------------------------------------------
 * Cell labels: the coarse sky cell of every good pixel of an image.
 *
 * The grid coordinates of a pixel are interpolated down the columns between
 * two rows of nodes that were already interpolated along x (every column of
 * every node row), with numpy's operations in numpy's order, so that the
 * labels equal those of the numpy form in romosaic.skymatch.cells to the
 * bit; the extension is built without fused multiply-adds.
 */

/* Cell of grid coordinate g on an axis of n cells: cell i holds [i - 1/2, i + 1/2),
 * the edge cells also what lies beyond them. */
static inline int32_t cell_of(double g, long n)
{
    double c = floor(g + 0.5);
    if (c < 0.0) {
        c = 0.0;
    }
    if (c > (double)(n - 1)) {
        c = (double)(n - 1);
    }
    return (int32_t)c;
}

/* Labels of nrows x nx pixels: -1 for a pixel not good, else its cell's
 * index in the box of the cells of good pixels, (iy - y0) * width + ix - x0.
 * Returns 0 and the box, or 1 when no pixel is good. */
static int label_cells(const double *x_rows, const double *y_rows, const int64_t *node,
                       const double *t, const uint8_t *good, Py_ssize_t nrows, Py_ssize_t nx,
                       long gnx, long gny, int32_t *labels, long box[4])
{
    long x0 = gnx, x1 = -1, y0 = gny, y1 = -1;
    for (Py_ssize_t r = 0; r < nrows; r++) {
        const double *xa = x_rows + node[r] * nx, *xb = xa + nx;
        const double *ya = y_rows + node[r] * nx, *yb = ya + nx;
        const double tr = t[r];
        const uint8_t *g = good + r * nx;
        int32_t *out = labels + r * nx;
        for (Py_ssize_t i = 0; i < nx; i++) {
            double gx = xb[i] - xa[i];
            gx *= tr;
            gx += xa[i];
            double gy = yb[i] - ya[i];
            gy *= tr;
            gy += ya[i];
            const int32_t ix = cell_of(gx, gnx), iy = cell_of(gy, gny);
            if (g[i]) {
                out[i] = iy * (int32_t)gnx + ix;
                x0 = ix < x0 ? ix : x0;
                x1 = ix > x1 ? ix : x1;
                y0 = iy < y0 ? iy : y0;
                y1 = iy > y1 ? iy : y1;
            } else {
                out[i] = -1;
            }
        }
    }
    if (x1 < 0) {
        return 1;
    }
    const int32_t width = (int32_t)(x1 - x0 + 1), ncols = (int32_t)gnx;
    const int32_t offset = (int32_t)(y0 * width + x0);
    for (Py_ssize_t k = 0; k < nrows * nx; k++) {
        const int32_t label = labels[k];
        if (label >= 0) {
            labels[k] = (label / ncols) * width + label % ncols - offset;
        }
    }
    box[0] = x0;
    box[1] = x1;
    box[2] = y0;
    box[3] = y1;
    return 0;
}

static PyObject *cell_labels(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"x_rows", "y_rows", "node", "t", "good", "labels", "nx", "gnx",
                               "gny", NULL};
    PyObject *o_x, *o_y, *o_node, *o_t, *o_good, *o_labels;
    Py_ssize_t nx;
    long gnx, gny;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOnll", keywords, &o_x, &o_y, &o_node,
                                     &o_t, &o_good, &o_labels, &nx, &gnx, &gny)) {
        return NULL;
    }
    if (nx < 1 || gnx < 1 || gny < 1 || (double)gnx * (double)gny > 2147483647.0) {
        PyErr_SetString(PyExc_ValueError, "invalid nx or cell grid shape");
        return NULL;
    }
    enum { N_ARRAYS = 6 };
    Py_buffer views[N_ARRAYS];
    PyObject *const objects[N_ARRAYS] = {o_x, o_y, o_node, o_t, o_good, o_labels};
    static const char *const names[N_ARRAYS] = {"x_rows", "y_rows", "node", "t", "good",
                                                "labels"};
    static const Py_ssize_t itemsizes[N_ARRAYS] = {8, 8, 8, 8, 1, 4};
    static const char kinds[N_ARRAYS] = {'f', 'f', 'i', 'f', 'i', 'i'};
    Py_buffer *const x = &views[0], *const y = &views[1], *const node = &views[2],
                     *const t = &views[3], *const good = &views[4], *const labels = &views[5];
    PyObject *result = NULL;
    int got = 0;
    for (; got < N_ARRAYS; got++) {
        if (get_buffer(objects[got], &views[got], names[got], itemsizes[got], kinds[got],
                       got == N_ARRAYS - 1) < 0) {
            goto release;
        }
    }
    const Py_ssize_t nrows = node->shape[0], node_values = x->shape[0];
    if (t->shape[0] != nrows || y->shape[0] != node_values || node_values % nx != 0
        || good->shape[0] != nrows * nx || labels->shape[0] != nrows * nx) {
        PyErr_SetString(PyExc_ValueError, "inconsistent lengths of rows, nodes, good and labels");
        goto release;
    }
    const Py_ssize_t n_node_rows = node_values / nx;
    for (Py_ssize_t r = 0; r < nrows; r++) {
        const int64_t k = ((const int64_t *)node->buf)[r];
        if (k < 0 || k + 1 >= n_node_rows) {
            PyErr_Format(PyExc_ValueError, "node interval %lld of row %zd is outside the nodes",
                         (long long)k, r);
            goto release;
        }
    }
    long box[4];
    int empty;
    Py_BEGIN_ALLOW_THREADS
    empty = label_cells((const double *)x->buf, (const double *)y->buf,
                        (const int64_t *)node->buf, (const double *)t->buf,
                        (const uint8_t *)good->buf, nrows, nx, gnx, gny, (int32_t *)labels->buf,
                        box);
    Py_END_ALLOW_THREADS
    result = empty ? Py_NewRef(Py_None) : Py_BuildValue("(llll)", box[0], box[1], box[2], box[3]);
release:
    while (got > 0) {
        PyBuffer_Release(&views[--got]);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"cell_labels", (PyCFunction)(void (*)(void))cell_labels, METH_VARARGS | METH_KEYWORDS,
     "Coarse sky cell of every good pixel, numbered in the box of their cells; the box "
     "(x0, x1, y0, y1) or None (see romosaic.skymatch.cells)."},
    {"grouped_statistics", (PyCFunction)(void (*)(void))grouped_statistics,
     METH_VARARGS | METH_KEYWORDS,
     "Clipped statistics of each group of float32 values (see romosaic.skymatch.statistics)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_statistics", "romosaic's compiled sky statistics.", -1, methods,
};

PyMODINIT_FUNC PyInit__statistics(void)
{
    return PyModule_Create(&module);
}
