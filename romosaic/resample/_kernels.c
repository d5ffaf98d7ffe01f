/*
 * romosaic.resample._kernels: drizzle kernels that deposit one input image
 * onto output arrays in a single pass.
 *
 * One call adds one input image: its data, its weight, any number of
 * variance planes (combined with squared weights) and one context bit, for
 * every output pixel the input's drops reach. The arithmetic follows the
 * `drizzle` package's kernels (square, point, turbo, gaussian, lanczos2,
 * lanczos3), which are the reference the tests compare against; the code is
 * romosaic's own.
 *
 * Arrays come in through the buffer protocol (no numpy headers at build
 * time); the Python wrapper (`romosaic.resample.kernels`) checks dtypes and
 * contiguity. The work runs without the GIL, so threads may drizzle into
 * different output arrays at the same time.
 *
 * Output arrays hold the running weighted mean (data, variances) and the
 * running weight, as drizzle's do: for a deposit of weight dow,
 *     data   <- (data * W + dow * d) / (W + dow)
 *     var_k  <- (var_k * W^2 + dow^2 * v_k) / (W + dow)^2
 *     W      <- W + dow
 * which is  Σ dow·d / Σ dow  and  Σ dow²·v / (Σ dow)²  at any time.
 *
 * Coordinates: the pixel map gives, for each input pixel centre, (x, y) on
 * the output *grid*. The output arrays cover grid pixels
 * [x0, x0 + nx) x [y0, y0 + ny) (a tile of the grid, or the whole grid
 * with x0 = y0 = 0); all geometry is computed in grid coordinates, so a tile
 * receives bit for bit what the same pixels of the whole grid receive.
 *
 * smoothed_rows: the last pass of an input's smoothed ivm weights
 * (romosaic.resample.weights): the block-smoothed read-noise variance
 * interpolated down the columns, the sky added and inverted, a band of rows
 * at a time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define MAX_PLANES 16

/* Where the compiler can make them, a copy of the functions so marked (the
 * square kernel's loops along a row) for CPUs with AVX2 (four doubles at a
 * time), chosen when the module loads; VECTOR_COPIES: such copies can be
 * made (the square kernel makes its own, square_row_avx2). The arithmetic
 * is the same, without fused multiply-adds (ISO C mode does not contract),
 * so that the results are the same to the bit on any CPU. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#define VECTOR_COPIES 1
#else
#define VECTOR_CLONES
#define VECTOR_COPIES 0
#endif

/* Before a loop over the columns of a row whose arrays do not overlap: with
 * more arrays than the compiler checks for overlap at run time (ten), it
 * would otherwise not run the loop several columns at a time. */
#if defined(__GNUC__) && !defined(__clang__)
#define COLUMNS_INDEPENDENT _Pragma("GCC ivdep")
#else
#define COLUMNS_INDEPENDENT
#endif

/* For the functions the square kernel calls at every pixel, which the
 * compiler inlines into one copy of the kernel's rows but, with two copies
 * (square_row_plain and square_row_avx2), would otherwise call. */
#if defined(__GNUC__)
#define ALWAYS_INLINE __attribute__((always_inline))
#else
#define ALWAYS_INLINE
#endif

enum kernel_kind {
    K_SQUARE = 0,
    K_POINT = 1,
    K_TURBO = 2,
    K_GAUSSIAN = 3,
    K_LANCZOS2 = 4,
    K_LANCZOS3 = 5,
};

/* Areas smaller than this (in output pixels) are rounding residues of the
 * exact clipping (a drop's edges cancel to ~1e-16 outside the drop), not
 * overlaps. */
#define AREA_RESIDUE 1e-10

/* A drop wider or taller than this many output pixels comes from a broken
 * pixel map (e.g. next to a pixel placed far away for want of a sky
 * position); the square kernel leaves such input pixels out. */
#define MAX_DROP_SIDE 256

/* Spacing of the Lanczos look-up table, in input pixels (as drizzle). */
#define LANCZOS_STEP 0.003

/* The pixel map as two bicubic B-splines of the input position (output x
 * and y), FITPACK's representation (scipy's RectBivariateSpline): the
 * coefficient of basis functions (a, b) along (rows, columns) is
 * c[a * (ntx - 4) + b]. Rows of the map are evaluated as the kernel reaches
 * them, into a few cached rows. */
typedef struct {
    const double *ty, *tx; /* knots along input rows and columns */
    const double *c[2]; /* coefficients of output x and output y */
    Py_ssize_t nty, ntx;
    double row0, col0; /* input position of data[0, 0] */
    long *span; /* per column: the knot interval */
    double *basis; /* per column: the four non-zero basis functions */
    double *coef; /* 2 x (ntx - 4): coefficients collapsed along the rows */
    double *rows; /* nslots cached rows of the map, 2 * in_nx each */
    Py_ssize_t *tag; /* the row each slot holds, -1: none */
    int nslots;
} spline_t;

typedef struct {
    /* input image, in_ny x in_nx, row-major */
    const float *data;
    const float *weight; /* NULL: weight 1 */
    const double *pixmap; /* in_ny x in_nx x 2, or NULL: from the spline */
    spline_t *spline;
    const float *var[MAX_PLANES]; /* NULL entries count as zero */
    int nvar;
    Py_ssize_t in_nx, in_ny;

    /* output arrays, out_ny x out_nx */
    float *out;
    float *wht;
    float *ovar[MAX_PLANES];
    uint32_t *ctx; /* NULL: no context */
    uint32_t bit;
    const uint32_t *dq; /* input DQ flags, or NULL: none propagated */
    uint32_t *odq;      /* output DQ, ORed with the flags of each contributing pixel */
    uint32_t cur_dq;    /* flags of the input pixel being deposited */
    Py_ssize_t out_nx, out_ny;
    double gx0, gy0; /* grid coordinates of out[0, 0] */
    double gx1, gy1; /* grid coordinates of the last column and row */

    /* parameters */
    int kernel;
    double pixfrac;
    float iscale;
    float pscale; /* output over input pixel size */

    /* scratch */
    double *area;
    size_t area_cap;

    /* result */
    Py_ssize_t n_used;
    int failed; /* 1: out of memory */
} job_t;

/* Minimum and maximum of doubles (compiled to branch-free min/max
 * instructions where the target has them). */
static inline double
dmin(double a, double b)
{
    return a < b ? a : b;
}

static inline double
dmax(double a, double b)
{
    return a > b ? a : b;
}

/* floor for finite doubles of moderate size, without a libm call */
static inline long
ifloor(double x)
{
    long i = (long) x;
    return i - (x < (double) i);
}

/* floor of a local coordinate known to be above -1 (a value just below 0,
 * from rounding, gives 0): a truncation, much cheaper than ifloor */
static inline long
local_floor(double x)
{
    return (long) x;
}

/* round half away from zero, as drizzle's nintd (C round) */
static inline long
iround(double x)
{
    return (long) round(x);
}

/* Add one weighted contribution to output pixel k of the arrays (index
 * into the flattened arrays), which the caller has checked exists. */
ALWAYS_INLINE static inline void
deposit_at(job_t *J, Py_ssize_t k, float d, float dow, const float *v)
{
    float vc;
    double tot, inv;
    int m, nvar = J->nvar;

    if (dow == 0.0f) {
        return;
    }
    vc = J->wht[k];
    tot = (double) vc + (double) dow;
    if (vc == 0.0f) {
        J->out[k] = d;
        for (m = 0; m < nvar; ++m) {
            J->ovar[m][k] = v[m];
        }
    } else {
        inv = 1.0 / tot;
        J->out[k] = (float) (((double) J->out[k] * vc + (double) dow * d) * inv);
        if (nvar) {
            double vc2 = (double) vc * vc, dow2 = (double) dow * dow, inv2 = inv * inv;
            float *o;
            /* the usual one to three planes unrolled, then any others */
            o = J->ovar[0];
            o[k] = (float) (((double) o[k] * vc2 + dow2 * v[0]) * inv2);
            if (nvar > 1) {
                o = J->ovar[1];
                o[k] = (float) (((double) o[k] * vc2 + dow2 * v[1]) * inv2);
            }
            if (nvar > 2) {
                o = J->ovar[2];
                o[k] = (float) (((double) o[k] * vc2 + dow2 * v[2]) * inv2);
            }
            for (m = 3; m < nvar; ++m) {
                o = J->ovar[m];
                o[k] = (float) (((double) o[k] * vc2 + dow2 * v[m]) * inv2);
            }
        }
    }
    if (J->odq) {
        /* as drizzle: the first contribution sets the flags, later ones OR */
        J->odq[k] = vc == 0.0f ? J->cur_dq : (J->odq[k] | J->cur_dq);
    }
    J->wht[k] = (float) tot;
    if (J->ctx && dow > 0.0f) {
        J->ctx[k] |= J->bit;
    }
}

ALWAYS_INLINE static inline void
deposit(job_t *J, long gi, long gj, float d, float dow, const float *v)
{
    deposit_at(
        J, (Py_ssize_t) (gj - (long) J->gy0) * J->out_nx + (Py_ssize_t) (gi - (long) J->gx0), d,
        dow, v);
}

/* Data, weight and variances of input pixel (i, j). Returns 0 when the pixel
 * must be left out (weight not positive, or data not finite). */
static inline int
input_pixel(job_t *J, Py_ssize_t idx, float *d, double *w, float *v)
{
    int m;
    float wt = J->weight ? J->weight[idx] : 1.0f;
    float dv = J->data[idx];

    if (!(wt > 0.0f) || !isfinite(dv) || isinf(wt)) {
        return 0;
    }
    *w = (double) wt;
    *d = dv * J->iscale;
    if (J->dq) {
        J->cur_dq = J->dq[idx];
    }
    if (J->nvar) {
        float is2 = J->iscale * J->iscale;
        for (m = 0; m < J->nvar; ++m) {
            float x = J->var[m] ? J->var[m][idx] * is2 : 0.0f;
            v[m] = isfinite(x) ? x : 0.0f;
        }
    }
    return 1;
}

/* ------------------------------------------------------------------------
 * Square kernel: exact overlap of the shrunken input pixel (a quadrilateral
 * on the output grid) with each output pixel.
 */

/* Integral from 0 to u of clamp(t, 0, 1) dt. */
static inline double
clamp_integral(double u)
{
    double c = dmin(dmax(u, 0.0), 1.0);
    return 0.5 * c * c + dmax(u - 1.0, 0.0);
}

/* Below this change of height across an edge piece, the piece is treated as
 * flat: the exact mean of clamp() over it then differs from clamp() at its
 * middle by less than 1e-8 of its width, about the rounding error of the
 * difference quotient at that threshold. */
#define FLAT_PIECE 1e-7

/* One piece of a drop's edge: the part over local column c. Adds to acc
 * the signed area under the piece in the rows it crosses, and to step the
 * full width for the rows wholly below it (integrated down the column
 * later). */
static inline void
edge_piece(
    long c, double xl, double yl, double xr, double slope, double f, double sgn, long nyl,
    long stride, double *acc, double *step)
{
    double xa = dmax(xl, (double) c - 0.5);
    double xb = dmin(xr, (double) c + 0.5);
    double W, ya, yb, ylo, yhi, full;
    long rlo, rhi, r;

    W = xb - xa;
    if (W <= 0.0) {
        return;
    }
    ya = yl + slope * (xa - xl);
    yb = yl + slope * (xb - xl);
    ylo = dmin(ya, yb);
    yhi = dmax(ya, yb);
    full = sgn * W;
    rlo = local_floor(ylo + 0.5);
    rlo = rlo < 0 ? 0 : (rlo > nyl - 1 ? nyl - 1 : rlo);
    rhi = local_floor(yhi + 0.5);
    rhi = rhi > nyl - 1 ? nyl - 1 : rhi;
    /* rows 0 .. rlo - 1 lie wholly below the piece */
    if (rlo > 0) {
        step[c] += full;
        step[rlo * stride + c] -= full;
    }
    /* the rows it crosses */
    if (rlo == rhi) {
        /* within one row (the common case): the mean height above its
         * bottom, with no clamping needed */
        acc[rlo * stride + c] += full * (0.5 * (ya + yb) - ((double) rlo - 0.5));
    } else if (yhi - ylo > FLAT_PIECE) {
        for (r = rlo; r <= rhi; ++r) {
            double bottom = (double) r - 0.5;
            acc[r * stride + c] +=
                f * (clamp_integral(yb - bottom) - clamp_integral(ya - bottom));
        }
    } else {
        double ym = 0.5 * (ya + yb);
        for (r = rlo; r <= rhi; ++r) {
            double u = ym - ((double) r - 0.5);
            acc[r * stride + c] += full * dmin(dmax(u, 0.0), 1.0);
        }
    }
}

/* Signed overlap of a quadrilateral with the unit cells of its bounding box.
 * (px, py): vertices in local coordinates, where cell (c, r) is
 * [c - 0.5, c + 0.5] x [r - 0.5, r + 0.5] for 0 <= c < nxl, 0 <= r < nyl.
 * acc and step: zeroed buffers of (nyl + 1) x (nxl + 1); on return acc holds
 * the overlaps (positive for a clockwise quadrilateral). The overlap is
 * Σ_edges sign(dx) ∫ clamp(y(x) - bottom, 0, 1) dx over each cell's column.
 */
ALWAYS_INLINE static inline void
quad_overlaps(const double *px, const double *py, long nxl, long nyl, double *acc, double *step)
{
    long stride = nxl + 1, c, r;
    int k;

    for (k = 0; k < 4; ++k) {
        int k1 = (k + 1) & 3;
        double dx = px[k1] - px[k], xl, yl, xr, yr, sgn, dy, slope, f;
        long cl, cr;

        if (dx == 0.0) {
            continue; /* a vertical edge has no area under it */
        }
        if (dx > 0.0) {
            sgn = 1.0;
            xl = px[k];
            yl = py[k];
            xr = px[k1];
            yr = py[k1];
        } else {
            sgn = -1.0;
            xl = px[k1];
            yl = py[k1];
            xr = px[k];
            yr = py[k];
        }
        dy = yr - yl;
        slope = dy / (xr - xl);
        /* W times the mean of clamp() over a piece is (H(yb) - H(ya)) / slope */
        f = dy != 0.0 ? sgn * (xr - xl) / dy : 0.0;
        cl = local_floor(xl + 0.5);
        cl = cl < 0 ? 0 : (cl > nxl - 1 ? nxl - 1 : cl);
        cr = local_floor(xr + 0.5);
        cr = cr > nxl - 1 ? nxl - 1 : cr;
        for (c = cl; c <= cr; ++c) {
            edge_piece(c, xl, yl, xr, slope, f, sgn, nyl, stride, acc, step);
        }
    }
    for (c = 0; c < nxl; ++c) {
        double run = 0.0;
        for (r = 0; r < nyl; ++r) {
            run += step[r * stride + c];
            acc[r * stride + c] += run;
        }
    }
}

/* Where along an edge, t in [0, 1] from value p to value q, the value is
 * negative: [*t0, *t1] (empty: t0 == t1 == 0). The crossing's division is
 * made only for an edge that crosses. */
static inline void
below_zero(double p, double q, double *t0, double *t1)
{
    if (p < 0.0) {
        *t0 = 0.0;
        *t1 = q < 0.0 ? 1.0 : p / (p - q);
    } else if (q < 0.0) {
        *t0 = p / (p - q);
        *t1 = 1.0;
    } else {
        *t0 = *t1 = 0.0;
    }
}

/* The same as quad_overlaps for a quadrilateral whose bounding box is at
 * most 2 x 2 cells (the common case at native pixel size), without loops or
 * buffers. With X = Y = 0.5 the boundaries between the columns and the rows,
 * clamping the boundary onto x <= X, y <= Y or both (which for a convex
 * region keeps the area inside) turns Green's ∮ (x - X) dy into the area left
 * of X, below Y, or both:
 *     left  = ∮ min(x - X, 0) dy,   below = -∮ min(y - Y, 0) dx,
 *     both  = ∮ min(x - X, 0) d(min(y, Y)),
 * each an integral of a linear function over the part of each edge below
 * the boundary, which needs a division only where an edge crosses it. An
 * edge of an axis-near-aligned drop crosses one of the two boundaries at
 * most. cell[r * 2 + c], positive for a clockwise quadrilateral. */
static void
quad_overlaps_2x2(const double *px, const double *py, double *cell)
{
    double A = 0.0, L = 0.0, B = 0.0, LB = 0.0;
    int k;

    for (k = 0; k < 4; ++k) {
        int k1 = (k + 1) & 3;
        double a = px[k] - 0.5, b = px[k1] - 0.5, c = py[k] - 0.5, d = py[k1] - 0.5;
        double dx = px[k1] - px[k], dy = py[k1] - py[k];
        double sx0, sx1, sy0, sy1, lo, hi;

        A += dy * 0.5 * (a + b);
        below_zero(a, b, &sx0, &sx1);
        below_zero(c, d, &sy0, &sy1);
        if (sx1 > sx0) {
            L += dy * (sx1 - sx0) * (a + dx * 0.5 * (sx0 + sx1));
        }
        if (sy1 > sy0) {
            B -= dx * (sy1 - sy0) * (c + dy * 0.5 * (sy0 + sy1));
        }
        lo = dmax(sx0, sy0);
        hi = dmin(sx1, sy1);
        if (hi > lo) {
            LB += dy * (hi - lo) * (a + dx * 0.5 * (lo + hi));
        }
    }
    /* Green's integrals count counter-clockwise areas positive */
    cell[0] = -LB;
    cell[1] = LB - B;
    cell[2] = LB - L;
    cell[3] = L + B - LB - A;
}

/* quad_overlaps_2x2 for the usual drop: one vertex in each of the four
 * cells, in clockwise order from the top left, (cx, cy) the vertices less
 * the cell boundaries X = Y = 0.5 (cx[0], cy[0] the top left). Each edge
 * then crosses one boundary, where it is known, and the integrals reduce
 * to triangles and trapezoids: four divisions, no branches. */
static inline void
quad_overlaps_regular(const double *cx, const double *cy, double *cell)
{
    double dx1 = cx[2] - cx[1], dx2 = cx[3] - cx[2], dx3 = cx[0] - cx[3];
    double dy0 = cy[1] - cy[0], dy1 = cy[2] - cy[1], dy2 = cy[3] - cy[2], dy3 = cy[0] - cy[3];
    /* the parts of the edges left of X (top, bottom) and below Y (right,
     * left), as fractions of the edge */
    double top = cx[0] / (cx[0] - cx[1]), bottom = cx[3] / (cx[3] - cx[2]);
    double right = cy[2] / (cy[2] - cy[1]), left = cy[3] / (cy[3] - cy[0]);
    double A, L, B, LB, lb;

    A = 0.5 * (dy0 * (cx[0] + cx[1]) + dy1 * (cx[1] + cx[2]) + dy2 * (cx[2] + cx[3]) +
               dy3 * (cx[3] + cx[0]));
    lb = 0.5 * dy2 * bottom * cx[3];
    L = 0.5 * dy0 * top * cx[0] + lb + 0.5 * dy3 * (cx[3] + cx[0]);
    B = -0.5 * (dx1 * right * cy[2] + dx2 * (cy[2] + cy[3]) + dx3 * left * cy[3]);
    LB = lb + dy3 * left * (cx[3] + 0.5 * dx3 * left);
    cell[0] = -LB;
    cell[1] = LB - B;
    cell[2] = LB - L;
    cell[3] = L + B - LB - A;
}

/* The 2 x 2 overlaps, by quad_overlaps_regular when the vertices fall one in
 * each cell in clockwise order (at any multiple of a quarter turn), or else
 * by quad_overlaps_2x2. */
ALWAYS_INLINE static inline void
quad_cells(const double *px, const double *py, double *cell)
{
    /* cell code of each vertex: 1 left, 2 bottom; clockwise from the top
     * left the codes run 1, 0, 2, 3 */
    int code[4], k, s = -1;
    double cx[4], cy[4];

    for (k = 0; k < 4; ++k) {
        code[k] = (px[k] < 0.5) | ((py[k] < 0.5) << 1);
        if (code[k] == 1) {
            s = k;
        }
    }
    if (s >= 0 && code[(s + 1) & 3] == 0 && code[(s + 2) & 3] == 2 && code[(s + 3) & 3] == 3) {
        for (k = 0; k < 4; ++k) {
            cx[k] = px[(s + k) & 3] - 0.5;
            cy[k] = py[(s + k) & 3] - 0.5;
        }
        quad_overlaps_regular(cx, cy, cell);
        return;
    }
    quad_overlaps_2x2(px, py, cell);
}

/* Largest box side (in output pixels) of quad_overlaps_box: drops on output
 * grids down to about a quarter of the input pixel size. */
#define BOX_MAX 4

/* The contribution of one piece of a drop's edge to the one row it lies in,
 * as edge_piece adds it; 0 when the piece leaves that row (after rounding)
 * or is empty. */
ALWAYS_INLINE static inline int
box_piece(
    long c, long row, double xl, double yl, double xr, double slope, double sgn, double *add,
    double *full)
{
    double xa = dmax(xl, (double) c - 0.5);
    double xb = dmin(xr, (double) c + 0.5);
    double W = xb - xa, ya, yb;

    if (W <= 0.0) {
        *add = *full = 0.0;
        return 1;
    }
    ya = yl + slope * (xa - xl);
    yb = yl + slope * (xb - xl);
    *full = sgn * W;
    *add = *full * (0.5 * (ya + yb) - ((double) row - 0.5));
    return local_floor(dmin(ya, yb) + 0.5) == row && local_floor(dmax(ya, yb) + 0.5) == row;
}

/* The contributions of a drop's side edge, from (x0, y0) to (x1, y1), lying
 * in local column c and crossing every one of the nyl rows, as edge_piece
 * adds them (add[r] for row r). Returns 0 when the edge, after rounding, does
 * not reach from the bottom row to the top one or is nearly flat. */
static inline int
box_side(double x0, double y0, double x1, double y1, long c, long nyl, double *add)
{
    double dx = x1 - x0, xl, yl, xr, yr, sgn, dy, slope, f, xa, xb, ya, yb, ylo, yhi;
    long r;

    if (dx == 0.0) {
        for (r = 0; r < nyl; ++r) {
            add[r] = 0.0;
        }
        return 1;
    }
    if (dx > 0.0) {
        sgn = 1.0;
        xl = x0;
        yl = y0;
        xr = x1;
        yr = y1;
    } else {
        sgn = -1.0;
        xl = x1;
        yl = y1;
        xr = x0;
        yr = y0;
    }
    dy = yr - yl;
    slope = dy / (xr - xl);
    f = dy != 0.0 ? sgn * (xr - xl) / dy : 0.0;
    xa = dmax(xl, (double) c - 0.5);
    xb = dmin(xr, (double) c + 0.5);
    ya = yl + slope * (xa - xl);
    yb = yl + slope * (xb - xl);
    ylo = dmin(ya, yb);
    yhi = dmax(ya, yb);
    if (!(xb - xa > 0.0) || !(ylo + 0.5 < 1.0) || local_floor(yhi + 0.5) != nyl - 1 ||
        !(yhi - ylo > FLAT_PIECE)) {
        return 0;
    }
    for (r = 0; r < nyl; ++r) {
        double bottom = (double) r - 0.5;
        add[r] = f * (clamp_integral(yb - bottom) - clamp_integral(ya - bottom));
    }
    return 1;
}

/* quad_overlaps for the usual drop on an output grid finer than the input:
 * a box of nxl x nyl cells (2 to BOX_MAX each), one vertex in each corner
 * cell, clockwise from the top left. Each edge then lies in one row (top,
 * bottom) or one column (sides) of the box, so the pieces and rows that
 * quad_overlaps finds by search are known, and its sums are formed here in
 * the same order: the result is the same to the bit, without its loops,
 * branches and buffers. Returns 0, with cell undefined, when the drop is
 * not of this kind (quad_overlaps must then be used). cell[r * BOX_MAX + c]. */
ALWAYS_INLINE static inline int
quad_overlaps_box(const double *px, const double *py, long nxl, long nyl, double *cell)
{
    long top = nyl - 1, right = nxl - 1, c, r;
    double slope, sgn, top_full[BOX_MAX], add, side[BOX_MAX];

    /* vertex k's column and row, as quad_overlaps's clamped floors find them */
    if (!(px[0] + 0.5 < 1.0) || !(px[3] + 0.5 < 1.0) || local_floor(px[1] + 0.5) != right ||
        local_floor(px[2] + 0.5) != right || !(py[2] + 0.5 < 1.0) || !(py[3] + 0.5 < 1.0) ||
        local_floor(py[0] + 0.5) != top || local_floor(py[1] + 0.5) != top) {
        return 0;
    }
    for (r = 0; r < nyl; ++r) {
        for (c = 0; c < nxl; ++c) {
            cell[r * BOX_MAX + c] = 0.0;
        }
    }
    /* edge 0, the top (v0 to v1, rightwards): one piece per column, in the
     * top row; the rows below it are added as a step, at the end */
    slope = (py[1] - py[0]) / (px[1] - px[0]);
    for (c = 0; c < nxl; ++c) {
        if (!box_piece(c, top, px[0], py[0], px[1], slope, 1.0, &add, &top_full[c])) {
            return 0;
        }
        cell[top * BOX_MAX + c] += add;
    }
    /* edge 1, the right side */
    if (!box_side(px[1], py[1], px[2], py[2], right, nyl, side)) {
        return 0;
    }
    for (r = 0; r < nyl; ++r) {
        cell[r * BOX_MAX + right] += side[r];
    }
    /* edge 2, the bottom (v2 to v3, leftwards: negative area) */
    slope = (py[2] - py[3]) / (px[2] - px[3]);
    sgn = -1.0;
    for (c = 0; c < nxl; ++c) {
        double full;
        if (!box_piece(c, 0, px[3], py[3], px[2], slope, sgn, &add, &full)) {
            return 0;
        }
        cell[c] += add;
    }
    /* edge 3, the left side */
    if (!box_side(px[3], py[3], px[0], py[0], 0, nyl, side)) {
        return 0;
    }
    for (r = 0; r < nyl; ++r) {
        cell[r * BOX_MAX] += side[r];
    }
    /* the step: the top edge's full width in every row below it, which
     * quad_overlaps accumulates as full, then full - full = 0 */
    for (c = 0; c < nxl; ++c) {
        double run = 0.0 + top_full[c], none = run + (0.0 - top_full[c]);
        for (r = 0; r < top; ++r) {
            cell[r * BOX_MAX + c] += run;
        }
        cell[top * BOX_MAX + c] += none;
    }
    return 1;
}

/* ------------------------------------------------------------------------
 * The pixel map from its spline representation.
 */

/* The knot interval l (3 <= l <= n - 5) of a cubic spline with n knots that
 * holds x, x clamped to the spline's range as FITPACK's evaluation does. */
static long
spline_span(const double *t, Py_ssize_t n, double *x)
{
    long a = 3, b = (long) n - 5;

    *x = dmin(dmax(*x, t[3]), t[n - 4]);
    while (a < b) {
        long m = (a + b + 1) / 2;
        if (t[m] <= *x) {
            a = m;
        } else {
            b = m - 1;
        }
    }
    return a;
}

/* The four cubic B-splines that do not vanish at x in knot interval l (those
 * of coefficients l - 3 .. l), by the Cox-de Boor recursion. */
static void
spline_basis(const double *t, long l, double x, double *h)
{
    double hh[3];
    int i, j;

    h[0] = 1.0;
    for (j = 1; j <= 3; ++j) {
        for (i = 0; i < j; ++i) {
            hh[i] = h[i];
        }
        h[0] = 0.0;
        for (i = 1; i <= j; ++i) {
            long li = l + i, lj = li - j;
            double f;
            if (t[li] == t[lj]) {
                h[i] = 0.0;
                continue;
            }
            f = hh[i - 1] / (t[li] - t[lj]);
            h[i - 1] += f * (t[li] - x);
            h[i] = f * (x - t[lj]);
        }
    }
}

/* Scratch for evaluating the spline along rows of nx pixels; nslots rows are
 * cached. Returns 1 when out of memory. */
static int
spline_setup(spline_t *S, Py_ssize_t nx, int nslots)
{
    Py_ssize_t i, nbx = S->ntx - 4;
    int k;

    S->nslots = nslots;
    S->span = (long *) malloc(sizeof(long) * (size_t) nx);
    S->basis = (double *) malloc(sizeof(double) * 4 * (size_t) nx);
    S->coef = (double *) malloc(sizeof(double) * 2 * (size_t) nbx);
    S->rows = (double *) malloc(sizeof(double) * 2 * (size_t) nx * (size_t) nslots);
    S->tag = (Py_ssize_t *) malloc(sizeof(Py_ssize_t) * (size_t) nslots);
    if (!S->span || !S->basis || !S->coef || !S->rows || !S->tag) {
        return 1;
    }
    for (k = 0; k < nslots; ++k) {
        S->tag[k] = -1;
    }
    /* the basis along a row is the same for every row */
    for (i = 0; i < nx; ++i) {
        double x = (double) i + S->col0;
        S->span[i] = spline_span(S->tx, S->ntx, &x);
        spline_basis(S->tx, S->span[i], x, S->basis + 4 * i);
    }
    return 0;
}

static void
spline_free(spline_t *S)
{
    free(S->span);
    free(S->basis);
    free(S->coef);
    free(S->rows);
    free(S->tag);
}

/* Row r of the pixel map, (x, y) interleaved, evaluated into a cache slot:
 * the coefficients are first combined along the rows (four per column of
 * coefficients), leaving four products per pixel and axis. */
VECTOR_CLONES static const double *
spline_row(const job_t *J, Py_ssize_t r)
{
    spline_t *S = J->spline;
    Py_ssize_t nx = J->in_nx, nbx = S->ntx - 4, i, b;
    int slot = (int) (r % S->nslots), a, k;
    double *row = S->rows + (size_t) slot * 2 * (size_t) nx;
    double y = (double) r + S->row0, wy[4];
    long ly;

    if (S->tag[slot] == r) {
        return row;
    }
    ly = spline_span(S->ty, S->nty, &y);
    spline_basis(S->ty, ly, y, wy);
    for (a = 0; a < 2; ++a) {
        const double *c = S->c[a] + (ly - 3) * nbx;
        double *out = S->coef + a * nbx;
        for (b = 0; b < nbx; ++b) {
            out[b] = wy[0] * c[b] + wy[1] * c[nbx + b] + wy[2] * c[2 * nbx + b] +
                     wy[3] * c[3 * nbx + b];
        }
    }
    for (i = 0; i < nx; ++i) {
        const double *w = S->basis + 4 * i;
        const double *cx = S->coef + S->span[i] - 3, *cy = cx + nbx;
        double vx = 0.0, vy = 0.0;
        for (k = 0; k < 4; ++k) {
            vx += w[k] * cx[k];
            vy += w[k] * cy[k];
        }
        row[2 * i] = vx;
        row[2 * i + 1] = vy;
    }
    S->tag[slot] = r;
    return row;
}

/* Row r of the pixel map, (x, y) interleaved. */
static inline const double *
centre_row(const job_t *J, Py_ssize_t r)
{
    if (J->pixmap) {
        return J->pixmap + r * J->in_nx * 2;
    }
    return spline_row(J, r);
}

/* Bilinear interpolation (extrapolation at the borders) of the pixel map
 * along a row at vertical position y, for every column: row[2 i], row[2 i + 1]
 * = (x, y) on the grid of the point (i, y) of the input. */
VECTOR_CLONES static void
pixmap_row(const job_t *J, double y, double *row)
{
    Py_ssize_t nx = J->in_nx, i;
    long j0 = ifloor(y);
    double f, g;
    const double *a, *b;

    if (j0 < 0) {
        j0 = 0;
    } else if (j0 > J->in_ny - 2) {
        j0 = (long) J->in_ny - 2;
    }
    f = y - (double) j0;
    g = 1.0 - f;
    a = centre_row(J, j0);
    b = centre_row(J, j0 + 1);
    for (i = 0; i < 2 * nx; ++i) {
        row[i] = a[i] * g + b[i] * f;
    }
}

/* (x, y) at horizontal position i + off + frac of an interpolated row
 * (off an integer, 0 <= frac < 1), extrapolated beyond the ends */
static inline void
row_point(const double *row, Py_ssize_t nx, Py_ssize_t i, long off, double frac, double *ox,
          double *oy)
{
    Py_ssize_t i0 = i + off;
    double f, g;

    if (i0 < 0 || i0 > nx - 2) {
        Py_ssize_t c = i0 < 0 ? 0 : nx - 2;
        f = (double) (i0 - c) + frac;
        i0 = c;
    } else {
        f = frac;
    }
    g = 1.0 - f;
    *ox = row[2 * i0] * g + row[2 * i0 + 2] * f;
    *oy = row[2 * i0 + 1] * g + row[2 * i0 + 3] * f;
}

/* Corner positions along a row: (x, y) at horizontal position i + off +
 * frac of an interpolated row, for every column i, as row_point gives them,
 * into separate x and y arrays; the loop over the columns that need no
 * extrapolation is a plain one the compiler can vectorise. */
VECTOR_CLONES static void
corner_row(const double *row, Py_ssize_t nx, long off, double frac, double *ox, double *oy)
{
    Py_ssize_t i, first = -off, last = nx - 2 - off; /* i + off in [0, nx - 2] */
    double g = 1.0 - frac;

    if (first < 0) {
        first = 0;
    }
    if (last > nx - 1) {
        last = nx - 1;
    }
    for (i = 0; i < nx && i < first; ++i) {
        row_point(row, nx, i, off, frac, ox + i, oy + i);
    }
    for (i = first; i <= last; ++i) {
        const double *p = row + 2 * (i + off);
        ox[i] = p[0] * g + p[2] * frac;
        oy[i] = p[1] * g + p[3] * frac;
    }
    for (i = last + 1 > first ? last + 1 : first; i < nx; ++i) {
        row_point(row, nx, i, off, frac, ox + i, oy + i);
    }
}

/* 1.5 * 2^52: adding and subtracting it rounds a double of magnitude below
 * 2^51 to an integer (in the default rounding mode, to the nearest) */
#define ROUND_SHIFT 6755399441055744.0

/* floor of a value clamped to +-1e9 (as a double), without an integer
 * conversion, which the compiler would not run on several columns at a time
 * (a conversion of a value out of range traps; here the clamp, which the
 * compiler may make a branch, would guard it) */
static inline double
vfloor(double v)
{
    double t;

    v = dmin(dmax(v, -1e9), 1e9);
    t = (v + ROUND_SHIFT) - ROUND_SHIFT;
    return t - (v < t ? 1.0 : 0.0);
}

/* The geometry of a row of drops, before any input value is read: for each
 * column i, with corners (x[k][i], y[k][i]) clockwise from the top left,
 * fast[i] = 1 when the drop is the usual one at native pixel size (finite,
 * one vertex in each cell of a 2 x 2 box of output pixels, in clockwise
 * order from the top left), and then its box's lower-left output pixel
 * (bx, by) and its area (jaco); row_cells adds its overlaps with the four
 * cells. The loops have no branches, so that they run several columns at a
 * time; the other drops are left to the general path. */
typedef struct {
    double *x[4], *y[4];
    double *cell[4], *jaco, *bx, *by;
    unsigned char *fast;
} row_geometry_t;

/* Returns the number of fast drops; *n_wide: the number of drops whose box
 * is more than 2 output pixels wide or tall (on finer grids). */
VECTOR_CLONES static Py_ssize_t
row_geometry(const row_geometry_t *G, Py_ssize_t nx, Py_ssize_t *n_wide)
{
    const double *restrict x0 = G->x[0], *restrict x1 = G->x[1], *restrict x2 = G->x[2],
                           *restrict x3 = G->x[3];
    const double *restrict y0 = G->y[0], *restrict y1 = G->y[1], *restrict y2 = G->y[2],
                           *restrict y3 = G->y[3];
    double *restrict jaco = G->jaco, *restrict bx = G->bx, *restrict by = G->by;
    unsigned char *restrict fast = G->fast;
    Py_ssize_t i, n = 0, wide = 0;

    COLUMNS_INDEPENDENT
    for (i = 0; i < nx; ++i) {
        double minx = dmin(dmin(x0[i], x1[i]), dmin(x2[i], x3[i]));
        double maxx = dmax(dmax(x0[i], x1[i]), dmax(x2[i], x3[i]));
        double miny = dmin(dmin(y0[i], y1[i]), dmin(y2[i], y3[i]));
        double maxy = dmax(dmax(y0[i], y1[i]), dmax(y2[i], y3[i]));
        double fx = vfloor(minx + 0.5), fy = vfloor(miny + 0.5);
        double X = fx + 0.5, Y = fy + 0.5;
        int ok;

        /* NaN fails every comparison */
        ok = (x0[i] - X < 0.0) & (x3[i] - X < 0.0) & (x1[i] - X > 0.0) & (x2[i] - X > 0.0) &
             (y0[i] - Y > 0.0) & (y1[i] - Y > 0.0) & (y2[i] - Y < 0.0) & (y3[i] - Y < 0.0) &
             (maxx < X + 1.0) & (maxy < Y + 1.0) & (minx > -1e9) & (maxx < 1e9) &
             (miny > -1e9) & (maxy < 1e9);
        jaco[i] = 0.5 * ((x1[i] - x3[i]) * (y0[i] - y2[i]) - (x0[i] - x2[i]) * (y1[i] - y3[i]));
        bx[i] = fx;
        by[i] = fy;
        fast[i] = (unsigned char) ok;
        n += ok;
        /* the box's last column or row is fx + 2 or beyond */
        wide += (maxx + 0.5 >= fx + 2.0) | (maxy + 0.5 >= fy + 2.0);
    }
    *n_wide = wide;
    return n;
}

/* The four overlaps of drop i, whose box row_geometry found. */
static inline void
drop_cells(const row_geometry_t *G, Py_ssize_t i, double *cell)
{
    double X = G->bx[i] + 0.5, Y = G->by[i] + 0.5, cx[4], cy[4];
    int k;

    for (k = 0; k < 4; ++k) {
        cx[k] = G->x[k][i] - X;
        cy[k] = G->y[k][i] - Y;
    }
    quad_overlaps_regular(cx, cy, cell);
}

/* drop_cells for every column of the row, into G->cell (the same values,
 * several columns at a time): worth it when most drops are fast. */
VECTOR_CLONES static void
row_cells(const row_geometry_t *G, Py_ssize_t nx)
{
    const double *restrict x0 = G->x[0], *restrict x1 = G->x[1], *restrict x2 = G->x[2],
                           *restrict x3 = G->x[3];
    const double *restrict y0 = G->y[0], *restrict y1 = G->y[1], *restrict y2 = G->y[2],
                           *restrict y3 = G->y[3];
    const double *restrict bx = G->bx, *restrict by = G->by;
    double *restrict c0 = G->cell[0], *restrict c1 = G->cell[1], *restrict c2 = G->cell[2],
                     *restrict c3 = G->cell[3];
    Py_ssize_t i;

    COLUMNS_INDEPENDENT
    for (i = 0; i < nx; ++i) {
        double X = bx[i] + 0.5, Y = by[i] + 0.5, cx[4], cy[4], cell[4];

        cx[0] = x0[i] - X;
        cx[1] = x1[i] - X;
        cx[2] = x2[i] - X;
        cx[3] = x3[i] - X;
        cy[0] = y0[i] - Y;
        cy[1] = y1[i] - Y;
        cy[2] = y2[i] - Y;
        cy[3] = y3[i] - Y;
        quad_overlaps_regular(cx, cy, cell);
        c0[i] = cell[0];
        c1[i] = cell[1];
        c2[i] = cell[2];
        c3[i] = cell[3];
    }
}

/* Drops per block of row_boxes. */
#define BOX_BLOCK 64

/* local_floor(v) == k, for k >= 1, by comparisons (a conversion to an
 * integer would keep the loop below from running several columns at once) */
static inline long
floor_is(double v, double k)
{
    return (v >= k) & (v < k + 1.0);
}

/* The contributions of a side edge from (x0, y0) to (x1, y1) in column col,
 * to rows 0 .. side - 1, as box_side makes them (those of rows beyond the
 * box are not used); *ok is cleared when box_side would fail. */
ALWAYS_INLINE static inline void
box_side_lane(
    double x0, double y0, double x1, double y1, double col, double nyl, double *add, long *ok,
    const int side)
{
    double dx = x1 - x0;
    long nz = dx != 0.0, gt = dx > 0.0;
    double xl = gt ? x0 : x1, yl = gt ? y0 : y1, xr = gt ? x1 : x0, yr = gt ? y1 : y0;
    double sgn = gt ? 1.0 : -1.0, dy = yr - yl;
    /* every value computed, then selected: a loop without branches */
    double slope = dy / (xr - xl), fq = sgn * (xr - xl) / dy, f = dy != 0.0 ? fq : 0.0;
    double xa = dmax(xl, col - 0.5), xb = dmin(xr, col + 0.5);
    double ya = yl + slope * (xa - xl), yb = yl + slope * (xb - xl);
    double ylo = dmin(ya, yb), yhi = dmax(ya, yb);
    int r;

    *ok &= (!nz) | ((xb - xa > 0.0) & (ylo + 0.5 < 1.0) & floor_is(yhi + 0.5, nyl - 1.0) &
                    (yhi - ylo > FLAT_PIECE));
#pragma GCC unroll 4
    for (r = 0; r < side; ++r) {
        double bottom = (double) r - 0.5;
        double a = f * (clamp_integral(yb - bottom) - clamp_integral(ya - bottom));
        add[r] = nz ? a : 0.0;
    }
}

/* quad_overlaps_box for the drops of columns i0 .. i0 + n - 1 of a row (n at
 * most BOX_BLOCK), several at a time: cell[r * BOX_MAX + c][i - i0], and
 * ok[i - i0] = 1 where quad_overlaps_box succeeds (elsewhere the cells are
 * meaningless). Every cell of the box receives the same terms in the same
 * order as there, with zeros added for the terms it lacks, so the overlaps
 * are the same to the bit. The work is split into short loops, each simple
 * enough for the compiler to run on several columns at a time. */
typedef struct {
    double cell[BOX_MAX * BOX_MAX][BOX_BLOCK];
    unsigned char ok[BOX_BLOCK];
    /* scratch: vertices in box coordinates, box size, pieces, sides */
    double px[4][BOX_BLOCK], py[4][BOX_BLOCK], top[BOX_BLOCK], right[BOX_BLOCK];
    double tfull[BOX_MAX][BOX_BLOCK], tadd[BOX_MAX][BOX_BLOCK], badd[BOX_MAX][BOX_BLOCK];
    double rs[BOX_MAX][BOX_BLOCK], ls[BOX_MAX][BOX_BLOCK];
    long good[BOX_BLOCK];
} box_block_t;

/* The first part of row_boxes: each drop's box, its vertices in the box's
 * coordinates, and whether it may be a box drop (good). Returns 1 when a
 * drop that may be one is 4 cells wide or tall, 0 when none is (then the
 * cells of the fourth row and column are not needed). */
ALWAYS_INLINE static inline long
box_corners(const row_geometry_t *G, Py_ssize_t i0, Py_ssize_t n, box_block_t *restrict B)
{
    const double *restrict x0 = G->x[0] + i0, *restrict x1 = G->x[1] + i0,
                           *restrict x2 = G->x[2] + i0, *restrict x3 = G->x[3] + i0;
    const double *restrict y0 = G->y[0] + i0, *restrict y1 = G->y[1] + i0,
                           *restrict y2 = G->y[2] + i0, *restrict y3 = G->y[3] + i0;
    Py_ssize_t j;
    long wide = 0;

    /* the box, the vertices in its coordinates, and their cells */
    for (j = 0; j < n; ++j) {
        double minx = dmin(dmin(x0[j], x1[j]), dmin(x2[j], x3[j]));
        double maxx = dmax(dmax(x0[j], x1[j]), dmax(x2[j], x3[j]));
        double miny = dmin(dmin(y0[j], y1[j]), dmin(y2[j], y3[j]));
        double maxy = dmax(dmax(y0[j], y1[j]), dmax(y2[j], y3[j]));
        double lx = vfloor(minx + 0.5), ly = vfloor(miny + 0.5);
        double nxl = vfloor(maxx + 0.5) - lx + 1.0, nyl = vfloor(maxy + 0.5) - ly + 1.0;
        double top = nyl - 1.0, right = nxl - 1.0;
        double px0 = x0[j] - lx, px1 = x1[j] - lx, px2 = x2[j] - lx, px3 = x3[j] - lx;
        double py0 = y0[j] - ly, py1 = y1[j] - ly, py2 = y2[j] - ly, py3 = y3[j] - ly;

        B->good[j] = (minx > -1e9) & (maxx < 1e9) & (miny > -1e9) & (maxy < 1e9) &
                     (nxl >= 2.0) & (nyl >= 2.0) & (nxl <= BOX_MAX) & (nyl <= BOX_MAX) &
                     (px0 + 0.5 < 1.0) & (px3 + 0.5 < 1.0) & floor_is(px1 + 0.5, right) &
                     floor_is(px2 + 0.5, right) & (py2 + 0.5 < 1.0) & (py3 + 0.5 < 1.0) &
                     floor_is(py0 + 0.5, top) & floor_is(py1 + 0.5, top);
        B->px[0][j] = px0;
        B->px[1][j] = px1;
        B->px[2][j] = px2;
        B->px[3][j] = px3;
        B->py[0][j] = py0;
        B->py[1][j] = py1;
        B->py[2][j] = py2;
        B->py[3][j] = py3;
        B->top[j] = top;
        B->right[j] = right;
    }
    COLUMNS_INDEPENDENT
    for (j = 0; j < n; ++j) {
        wide |= B->good[j] & ((B->top[j] >= 3.0) | (B->right[j] >= 3.0));
    }
    return wide;
}

/* The rest of row_boxes, for boxes of at most side x side cells: the cells
 * of rows and columns beyond side are left as they were. */
ALWAYS_INLINE static inline void
box_cells(Py_ssize_t n, box_block_t *restrict B, const int side)
{
    Py_ssize_t j;
    int c, r;

    /* the pieces of the top (sgn 1) and bottom (sgn -1) edges, box_piece */
    for (c = 0; c < side; ++c) {
        double cm = (double) c - 0.5, cp = (double) c + 0.5;
        for (j = 0; j < n; ++j) {
            double px0 = B->px[0][j], px1 = B->px[1][j], px2 = B->px[2][j], px3 = B->px[3][j];
            double py0 = B->py[0][j], py1 = B->py[1][j], py2 = B->py[2][j], py3 = B->py[3][j];
            double top = B->top[j];
            double st = (py1 - py0) / (px1 - px0), sb = (py2 - py3) / (px2 - px3);
            double xa = dmax(px0, cm), xb = dmin(px1, cp), W = xb - xa;
            double ya = py0 + st * (xa - px0), yb = py0 + st * (xb - px0);
            double add = W * (0.5 * (ya + yb) - (top - 0.5));
            long pos = W > 0.0, ok;

            B->tfull[c][j] = pos ? W : 0.0;
            B->tadd[c][j] = pos ? add : 0.0;
            ok = (!pos) | ((dmin(ya, yb) + 0.5 >= top) & (dmax(ya, yb) + 0.5 < top + 1.0));
            xa = dmax(px3, cm);
            xb = dmin(px2, cp);
            W = xb - xa;
            ya = py3 + sb * (xa - px3);
            yb = py3 + sb * (xb - px3);
            add = (-1.0 * W) * (0.5 * (ya + yb) - (0.0 - 0.5));
            pos = W > 0.0;
            B->badd[c][j] = pos ? add : 0.0;
            /* local_floor(v) == 0: -1 < v < 1 */
            ok &= (!pos) | ((dmin(ya, yb) + 0.5 > -1.0) & (dmax(ya, yb) + 0.5 < 1.0));
            B->good[j] &= ok;
        }
    }
    /* the sides */
    for (j = 0; j < n; ++j) {
        long ok = B->good[j];
        double nyl = B->top[j] + 1.0, rs[BOX_MAX], ls[BOX_MAX];

        box_side_lane(B->px[1][j], B->py[1][j], B->px[2][j], B->py[2][j], B->right[j], nyl, rs,
                      &ok, side);
        box_side_lane(B->px[3][j], B->py[3][j], B->px[0][j], B->py[0][j], 0.0, nyl, ls, &ok,
                      side);
        for (r = 0; r < side; ++r) {
            B->rs[r][j] = rs[r];
            B->ls[r][j] = ls[r];
        }
        B->good[j] = ok;
        B->ok[j] = (unsigned char) ok;
    }
    /* the cells, in the order of quad_overlaps_box's sums */
    for (r = 0; r < side; ++r) {
        for (c = 0; c < side; ++c) {
            double *restrict out = B->cell[r * BOX_MAX + c];
            for (j = 0; j < n; ++j) {
                double top = B->top[j], tf = B->tfull[c][j];
                double run = 0.0 + tf, none = run + (0.0 - tf), acc = 0.0;
                acc += (double) r == top ? B->tadd[c][j] : 0.0;
                acc += (double) c == B->right[j] ? B->rs[r][j] : 0.0;
                acc += r == 0 ? B->badd[c][j] : 0.0;
                acc += c == 0 ? B->ls[r][j] : 0.0;
                acc += (double) r < top ? run : ((double) r == top ? none : 0.0);
                out[j] = acc;
            }
        }
    }
}

VECTOR_CLONES static void
row_boxes(const row_geometry_t *G, Py_ssize_t i0, Py_ssize_t n, box_block_t *restrict B)
{
    /* on grids about twice as fine as the input, boxes are 3 x 3: their
     * cells found alone, without the empty fourth row and column */
    if (box_corners(G, i0, n, B)) {
        box_cells(n, B, BOX_MAX);
    } else {
        box_cells(n, B, 3);
    }
}

/* Deposit a drop's overlaps with the cells of its box (cell[r * stride + c]
 * for box cell (c, r)): the box's lower left at grid pixel (bi0, bj0), nxl x
 * nyl cells, clipped to grid columns c0..c1 and rows r0..r1 of the arrays.
 * w: the pixel's weight over the drop's area. Counts the pixel as used when
 * it deposits anything. */
ALWAYS_INLINE static inline void
deposit_box(
    job_t *J, const double *cell, long stride, long bi0, long bj0, long nxl, long nyl, long c0,
    long c1, long r0, long r1, float d, double w, const float *v)
{
    long c, r;
    int hit = 0;

    if (c0 == bi0 && c1 == bi0 + nxl - 1 && r0 == bj0 && r1 == bj0 + nyl - 1) {
        /* the whole box within the arrays: indices step from one corner */
        Py_ssize_t k0 = (Py_ssize_t) (bj0 - (long) J->gy0) * J->out_nx +
                        (Py_ssize_t) (bi0 - (long) J->gx0);
        for (r = 0; r < nyl; ++r) {
            for (c = 0; c < nxl; ++c) {
                double a = cell[r * stride + c];
                if (a > AREA_RESIDUE || a < -AREA_RESIDUE) {
                    deposit_at(J, k0 + r * J->out_nx + c, d, (float) (a * w), v);
                    hit = 1;
                }
            }
        }
    } else {
        for (r = r0; r <= r1; ++r) {
            for (c = c0; c <= c1; ++c) {
                double a = cell[(r - bj0) * stride + (c - bi0)];
                if (a > AREA_RESIDUE || a < -AREA_RESIDUE) {
                    deposit(J, c, r, d, (float) (a * w), v);
                    hit = 1;
                }
            }
        }
    }
    J->n_used += hit;
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__aarch64__))
#define DEPOSIT_VECTORS 1
typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef int64_t v4l __attribute__((vector_size(32)));

/* The four cells of a square box, two adjacent ones in each of two rows, as
 * one vector: (k, k + 1, k + nx, k + nx + 1). */
static inline v4f
load_cells(const float *p, Py_ssize_t nx)
{
    return (v4f){p[0], p[1], p[nx], p[nx + 1]};
}

/* where mask (lanes of all ones or zeros): a, elsewhere b */
static inline v4f
select_f(v4i mask, v4f a, v4f b)
{
    return (v4f) ((mask & (v4i) a) | (~mask & (v4i) b));
}

static inline void
store_cells(float *p, Py_ssize_t nx, v4f x)
{
    p[0] = x[0];
    p[1] = x[1];
    p[nx] = x[2];
    p[nx + 1] = x[3];
}

/* deposit_box for a 2 x 2 box wholly within the arrays (the usual drop at
 * native pixel size), its four cells at once: each lane does what
 * deposit_at does for its cell, in the same operations, so the values are
 * the same to the bit; a lane left out (its overlap a rounding residue, or
 * its weight zero in single precision) keeps its old values. */
static inline void
deposit_2x2(job_t *J, Py_ssize_t k0, const double *cell, float d, double w, const float *v)
{
    Py_ssize_t nx = J->out_nx;
    v4d a = {cell[0], cell[1], cell[2], cell[3]};
    v4l overlaps = (a > AREA_RESIDUE) | (a < -AREA_RESIDUE);
    v4f dowf = __builtin_convertvector(a * w, v4f);
    v4d dow = __builtin_convertvector(dowf, v4d);
    v4l use = overlaps & (dow != 0.0);
    v4f vcf = load_cells(J->wht + k0, nx);
    v4d vc = __builtin_convertvector(vcf, v4d);
    v4l first = vc == 0.0;
    v4d tot = vc + dow, inv = 1.0 / tot;
    v4i use4 = __builtin_convertvector(use, v4i), first4 = __builtin_convertvector(first, v4i);
    v4f old, mixed;
    int m;

    if (!(overlaps[0] | overlaps[1] | overlaps[2] | overlaps[3])) {
        return;
    }
    J->n_used += 1;
    if (!(use[0] | use[1] | use[2] | use[3])) {
        return;
    }
    old = load_cells(J->out + k0, nx);
    mixed = __builtin_convertvector(
        (__builtin_convertvector(old, v4d) * vc + dow * (double) d) * inv, v4f);
    mixed = select_f(first4, (v4f){d, d, d, d}, mixed);
    store_cells(J->out + k0, nx, select_f(use4, mixed, old));
    if (J->nvar) {
        v4d vc2 = vc * vc, dow2 = dow * dow, inv2 = inv * inv;
        for (m = 0; m < J->nvar; ++m) {
            float *o = J->ovar[m] + k0;
            float vm = v[m];
            old = load_cells(o, nx);
            mixed = __builtin_convertvector(
                (__builtin_convertvector(old, v4d) * vc2 + dow2 * (double) vm) * inv2, v4f);
            mixed = select_f(first4, (v4f){vm, vm, vm, vm}, mixed);
            store_cells(o, nx, select_f(use4, mixed, old));
        }
    }
    if (J->odq) {
        uint32_t *q = J->odq + k0, cur = J->cur_dq;
        v4i oldq = {(int32_t) q[0], (int32_t) q[1], (int32_t) q[nx], (int32_t) q[nx + 1]};
        /* as drizzle: the first contribution sets the flags, later ones OR */
        v4i newq = (~first4 & oldq) | (int32_t) cur;
        newq = (use4 & newq) | (~use4 & oldq);
        q[0] = (uint32_t) newq[0];
        q[1] = (uint32_t) newq[1];
        q[nx] = (uint32_t) newq[2];
        q[nx + 1] = (uint32_t) newq[3];
    }
    store_cells(J->wht + k0, nx, select_f(use4, __builtin_convertvector(tot, v4f), vcf));
    if (J->ctx) {
        uint32_t *c = J->ctx + k0, bit = J->bit;
        v4i set = use4 & (dowf > 0.0f) & (int32_t) bit;
        c[0] |= (uint32_t) set[0];
        c[1] |= (uint32_t) set[1];
        c[nx] |= (uint32_t) set[2];
        c[nx + 1] |= (uint32_t) set[3];
    }
}
#else
#define DEPOSIT_VECTORS 0
#endif

/* What the square kernel keeps from row to row: the drops' corners along
 * the row (lo, hi: the pixel map at the drops' lower and upper edges), the
 * row's geometry and blocks of box overlaps. */
typedef struct {
    double h; /* half the drop's side, in input pixels */
    long off_m, off_p; /* corner columns i - h and i + h as i + off + frac */
    double frac_m, frac_p;
    double *lo, *hi;
    row_geometry_t G;
    box_block_t *boxes;
} square_rows_t;

/* Row j of the square kernel: each input pixel's drop deposited in turn.
 * Returns 1 when a third or more of the row's drops were the usual drop at
 * native pixel size (their overlaps are then found for the whole row at
 * once), 0 when fewer, -1 when the row had no pixel to deposit, -2 when out
 * of memory. */
ALWAYS_INLINE static inline int
square_row(job_t *J, const square_rows_t *S, Py_ssize_t j)
{
    Py_ssize_t nx = J->in_nx, i;
    row_geometry_t G = S->G;
    box_block_t *boxes = S->boxes;
    float v[MAX_PLANES];
    int k;
    /* boxes_ready: -1 drops one by one, 0 or 1 by blocks (1: the block
     * of box_begin .. box_end - 1 is ready) */
    int rows_ready = 0, cells_ready = 0, boxes_ready = -1;
    Py_ssize_t n_fast, n_wide, box_begin = 0, box_end = 0;

    for (i = 0; i < nx; ++i) {
        double w, x[4], y[4], jaco, minx, maxx, miny, maxy, lx0, ly0;
        double px[4], py[4];
        float d;
        long bi0, bi1, bj0, bj1, c0, c1, r0, r1, nxl, nyl, c, r;
        size_t ncell;
        int hit = 0;

        if (!input_pixel(J, j * nx + i, &d, &w, v)) {
            continue;
        }
        if (!rows_ready) {
            pixmap_row(J, (double) j - S->h, S->lo);
            pixmap_row(J, (double) j + S->h, S->hi);
            /* corners, clockwise in the input as in drizzle:
             * (i-h, j+h), (i+h, j+h), (i+h, j-h), (i-h, j-h) */
            corner_row(S->hi, nx, S->off_m, S->frac_m, G.x[0], G.y[0]);
            corner_row(S->hi, nx, S->off_p, S->frac_p, G.x[1], G.y[1]);
            corner_row(S->lo, nx, S->off_p, S->frac_p, G.x[2], G.y[2]);
            corner_row(S->lo, nx, S->off_m, S->frac_m, G.x[3], G.y[3]);
            /* on grids finer than the input, few drops are fast: their
             * overlaps are then found one by one, as they come */
            n_fast = row_geometry(&G, nx, &n_wide);
            /* blocks compute every drop's boxes: worth it only when
             * nearly all are wider than 2 x 2 */
            boxes_ready = 8 * n_wide >= 7 * nx ? 0 : -1;
            cells_ready = 3 * n_fast >= nx;
            if (cells_ready) {
                row_cells(&G, nx);
            }
            rows_ready = 1;
        }
        if (G.fast[i]) {
            /* the usual drop at native pixel size: its 2 x 2 box is known */
            double cell[4];

            jaco = G.jaco[i];
            bi0 = (long) G.bx[i];
            bj0 = (long) G.by[i];
            c0 = bi0 > (long) J->gx0 ? bi0 : (long) J->gx0;
            c1 = bi0 + 1 < (long) J->gx1 ? bi0 + 1 : (long) J->gx1;
            r0 = bj0 > (long) J->gy0 ? bj0 : (long) J->gy0;
            r1 = bj0 + 1 < (long) J->gy1 ? bj0 + 1 : (long) J->gy1;
            if (c0 > c1 || r0 > r1 || jaco == 0.0) {
                continue;
            }
            if (cells_ready) {
                for (k = 0; k < 4; ++k) {
                    cell[k] = G.cell[k][i];
                }
            } else {
                drop_cells(&G, i, cell);
            }
#if DEPOSIT_VECTORS
            if (c0 == bi0 && c1 == bi0 + 1 && r0 == bj0 && r1 == bj0 + 1) {
                deposit_2x2(J,
                            (Py_ssize_t) (bj0 - (long) J->gy0) * J->out_nx +
                                (Py_ssize_t) (bi0 - (long) J->gx0),
                            cell, d, w / jaco, v);
                continue;
            }
#endif
            deposit_box(J, cell, 2, bi0, bj0, 2, 2, c0, c1, r0, r1, d, w / jaco, v);
            continue;
        }
        for (k = 0; k < 4; ++k) {
            x[k] = G.x[k][i];
            y[k] = G.y[k][i];
        }
        if (!isfinite(x[0] + x[1] + x[2] + x[3] + y[0] + y[1] + y[2] + y[3])) {
            continue;
        }
        jaco = 0.5 * ((x[1] - x[3]) * (y[0] - y[2]) - (x[0] - x[2]) * (y[1] - y[3]));
        if (jaco == 0.0) {
            continue;
        }
        minx = maxx = x[0];
        miny = maxy = y[0];
        for (k = 1; k < 4; ++k) {
            minx = x[k] < minx ? x[k] : minx;
            maxx = x[k] > maxx ? x[k] : maxx;
            miny = y[k] < miny ? y[k] : miny;
            maxy = y[k] > maxy ? y[k] : maxy;
        }
        /* output pixels (grid indices) the drop's bounding box touches */
        bi0 = ifloor(minx + 0.5);
        bi1 = ifloor(maxx + 0.5);
        bj0 = ifloor(miny + 0.5);
        bj1 = ifloor(maxy + 0.5);
        /* ... clipped to the output arrays */
        c0 = bi0 > (long) J->gx0 ? bi0 : (long) J->gx0;
        c1 = bi1 < (long) J->gx1 ? bi1 : (long) J->gx1;
        r0 = bj0 > (long) J->gy0 ? bj0 : (long) J->gy0;
        r1 = bj1 < (long) J->gy1 ? bj1 : (long) J->gy1;
        if (c0 > c1 || r0 > r1) {
            continue;
        }
        nxl = bi1 - bi0 + 1;
        nyl = bj1 - bj0 + 1;
        if (nxl > MAX_DROP_SIDE || nyl > MAX_DROP_SIDE) {
            continue;
        }
        lx0 = (double) bi0;
        ly0 = (double) bj0;
        w = w / jaco;
        if (nxl <= 2 && nyl <= 2) {
            double cell[4];

            /* Local coordinates relative to the unclipped box origin, so
             * that the arithmetic does not depend on where the arrays
             * start. */
            for (k = 0; k < 4; ++k) {
                px[k] = x[k] - lx0;
                py[k] = y[k] - ly0;
            }
            quad_cells(px, py, cell);
            for (r = r0; r <= r1; ++r) {
                for (c = c0; c <= c1; ++c) {
                    double a = cell[(r - bj0) * 2 + (c - bi0)];
                    if (a > AREA_RESIDUE || a < -AREA_RESIDUE) {
                        deposit(J, c, r, d, (float) (a * w), v);
                        hit = 1;
                    }
                }
            }
            J->n_used += hit;
            continue;
        }
        if (nxl >= 2 && nyl >= 2 && nxl <= BOX_MAX && nyl <= BOX_MAX) {
            double cell[BOX_MAX * BOX_MAX];

            for (k = 0; k < 4; ++k) {
                px[k] = x[k] - lx0;
                py[k] = y[k] - ly0;
            }
            if (boxes_ready >= 0) {
                /* the row's wide drops by blocks */
                if (!boxes_ready || i >= box_end) {
                    box_begin = i;
                    box_end = i + BOX_BLOCK < nx ? i + BOX_BLOCK : nx;
                    row_boxes(&G, box_begin, box_end - box_begin, boxes);
                    boxes_ready = 1;
                }
                if (boxes->ok[i - box_begin]) {
                    for (k = 0; k < BOX_MAX * BOX_MAX; ++k) {
                        cell[k] = boxes->cell[k][i - box_begin];
                    }
                    deposit_box(J, cell, BOX_MAX, bi0, bj0, nxl, nyl, c0, c1, r0, r1, d,
                                w, v);
                    continue;
                }
            } else if (quad_overlaps_box(px, py, nxl, nyl, cell)) {
                deposit_box(J, cell, BOX_MAX, bi0, bj0, nxl, nyl, c0, c1, r0, r1, d,
                            w, v);
                continue;
            }
        }
        ncell = (size_t) ((nxl + 1) * (nyl + 1));
        if (2 * ncell > J->area_cap) {
            double *na = (double *) realloc(J->area, sizeof(double) * 2 * ncell);
            if (!na) {
                J->failed = 1;
                return -2;
            }
            J->area = na;
            J->area_cap = 2 * ncell;
        }
        memset(J->area, 0, sizeof(double) * 2 * ncell);

        for (k = 0; k < 4; ++k) {
            px[k] = x[k] - lx0;
            py[k] = y[k] - ly0;
        }
        quad_overlaps(px, py, nxl, nyl, J->area, J->area + ncell);

        for (r = r0; r <= r1; ++r) {
            const double *arow = J->area + (r - bj0) * (nxl + 1) - bi0;
            for (c = c0; c <= c1; ++c) {
                double a = arow[c];
                if (a > AREA_RESIDUE || a < -AREA_RESIDUE) {
                    deposit(J, c, r, d, (float) (a * w), v);
                    hit = 1;
                }
            }
        }
        J->n_used += hit;
    }
    return rows_ready ? cells_ready : -1;
}

static int
square_row_plain(job_t *J, const square_rows_t *S, Py_ssize_t j)
{
    return square_row(J, S, j);
}

#if VECTOR_COPIES
/* The same for CPUs with AVX2, where the usual drop's four deposits
 * (deposit_2x2) are single 256-bit operations; drops at an angle to the
 * grid run faster in the plain copy. */
__attribute__((target("avx2"))) static int
square_row_avx2(job_t *J, const square_rows_t *S, Py_ssize_t j)
{
    return square_row(J, S, j);
}
#endif

/* Whether the CPU runs the AVX2 copies (set when the module loads), and
 * whether the square kernel uses its copy (use_vector_copies). */
static int cpu_avx2 = 0, use_avx2 = 0;

static int
kernel_square(job_t *J)
{
    Py_ssize_t nx = J->in_nx, ny = J->in_ny, j;
    double *geo = NULL;
    square_rows_t S;
    int k, usual = 0;

    S.h = 0.5 * J->pixfrac;
    S.off_m = ifloor(-S.h);
    S.off_p = ifloor(S.h);
    S.frac_m = -S.h - (double) S.off_m;
    S.frac_p = S.h - (double) S.off_p;
    S.lo = (double *) malloc(sizeof(double) * 2 * (size_t) nx);
    S.hi = (double *) malloc(sizeof(double) * 2 * (size_t) nx);
    geo = (double *) malloc(sizeof(double) * 15 * (size_t) nx + (size_t) nx);
    S.boxes = (box_block_t *) malloc(sizeof(box_block_t));
    /* the rows from floor(j - h) to floor(j + h) + 1 at once, and the next
     * row's without evaluating again */
    if (!S.lo || !S.hi || !geo || !S.boxes ||
        (J->spline && spline_setup(J->spline, nx, (int) (S.off_p - S.off_m) + 3))) {
        J->failed = 1;
    } else {
        for (k = 0; k < 4; ++k) {
            S.G.x[k] = geo + (size_t) k * nx;
            S.G.y[k] = geo + (size_t) (4 + k) * nx;
            S.G.cell[k] = geo + (size_t) (8 + k) * nx;
        }
        S.G.jaco = geo + (size_t) 12 * nx;
        S.G.bx = geo + (size_t) 13 * nx;
        S.G.by = geo + (size_t) 14 * nx;
        S.G.fast = (unsigned char *) (geo + (size_t) 15 * nx);
        for (j = 0; j < ny && !J->failed; ++j) {
            /* each row in the copy that suits the drops of the row before:
             * both give the same values to the bit */
            int status;
#if VECTOR_COPIES
            status = usual && use_avx2 ? square_row_avx2(J, &S, j)
                                       : square_row_plain(J, &S, j);
#else
            status = square_row_plain(J, &S, j);
#endif
            if (status >= 0) {
                usual = status;
            }
        }
    }
    free(S.lo);
    free(S.hi);
    free(geo);
    free(S.boxes);
    return J->failed;
}

/* ------------------------------------------------------------------------
 * Kernels that place a function of the distance to the input pixel's
 * centre on the output grid.
 */

static inline int
pixel_centre(const job_t *J, Py_ssize_t idx, double *ox, double *oy)
{
    *ox = J->pixmap[2 * idx];
    *oy = J->pixmap[2 * idx + 1];
    return !(isnan(*ox) || isnan(*oy) || isinf(*ox) || isinf(*oy));
}

/* clip an inclusive range of grid indices to the output arrays */
static inline int
clip_range(long *a0, long *a1, double lo, double hi)
{
    if (*a0 < (long) lo) {
        *a0 = (long) lo;
    }
    if (*a1 > (long) hi) {
        *a1 = (long) hi;
    }
    return *a0 <= *a1;
}

static int
kernel_point(job_t *J)
{
    Py_ssize_t n = J->in_nx * J->in_ny, idx;
    float v[MAX_PLANES];

    for (idx = 0; idx < n; ++idx) {
        double w, ox, oy;
        float d;
        long gi, gj;

        if (!input_pixel(J, idx, &d, &w, v) || !pixel_centre(J, idx, &ox, &oy)) {
            continue;
        }
        gi = iround(ox);
        gj = iround(oy);
        if (gi < (long) J->gx0 || gi > (long) J->gx1 || gj < (long) J->gy0 ||
            gj > (long) J->gy1) {
            continue;
        }
        deposit(J, gi, gj, d, (float) w, v);
        J->n_used += 1;
    }
    return 0;
}

/* Turbo: the drop is a square of side pixfrac (input pixels) aligned with the
 * output axes, centred on the mapped pixel centre. */
static int
kernel_turbo(job_t *J)
{
    Py_ssize_t n = J->in_nx * J->in_ny, idx;
    double pfo = J->pixfrac / (double) J->pscale / 2.0;
    double scale = (1.0 / (J->pixfrac * J->pixfrac)) * (double) J->pscale * (double) J->pscale;
    float v[MAX_PLANES];

    for (idx = 0; idx < n; ++idx) {
        double w, ox, oy, xxi, xxa, yyi, yya;
        float d;
        long i0, i1, j0, j1, ii, jj;
        int hit = 0;

        if (!input_pixel(J, idx, &d, &w, v) || !pixel_centre(J, idx, &ox, &oy)) {
            continue;
        }
        xxi = ox - pfo;
        xxa = ox + pfo;
        yyi = oy - pfo;
        yya = oy + pfo;
        i0 = iround(xxi);
        i1 = iround(xxa);
        j0 = iround(yyi);
        j1 = iround(yya);
        if (!clip_range(&i0, &i1, J->gx0, J->gx1) || !clip_range(&j0, &j1, J->gy0, J->gy1)) {
            continue;
        }
        for (jj = j0; jj <= j1; ++jj) {
            double dy = fmin(yya, (double) jj + 0.5) - fmax(yyi, (double) jj - 0.5);
            if (!(dy > 0.0)) {
                continue;
            }
            for (ii = i0; ii <= i1; ++ii) {
                double dx = fmin(xxa, (double) ii + 0.5) - fmax(xxi, (double) ii - 0.5);
                if (dx > 0.0) {
                    deposit(J, ii, jj, d, (float) (dx * dy * scale * w), v);
                    hit = 1;
                }
            }
        }
        J->n_used += hit;
    }
    return 0;
}

/* Gaussian of FWHM pixfrac input pixels, normalised on the output grid. */
static int
kernel_gaussian(job_t *J)
{
    Py_ssize_t n = J->in_nx * J->in_ny, idx;
    double ps = (double) J->pscale;
    double pfo = 2.5 * J->pixfrac / 2.3548 / ps;
    double efac = (2.3548 * 2.3548) * ps * ps / (J->pixfrac * J->pixfrac) / 2.0;
    double es = efac / M_PI;
    float v[MAX_PLANES];

    if (pfo < 1.2 / ps) {
        pfo = 1.2 / ps;
    }
    for (idx = 0; idx < n; ++idx) {
        double w, ox, oy;
        float d;
        long i0, i1, j0, j1, ii, jj;
        int hit = 0;

        if (!input_pixel(J, idx, &d, &w, v) || !pixel_centre(J, idx, &ox, &oy)) {
            continue;
        }
        i0 = iround(ox - pfo);
        i1 = iround(ox + pfo);
        j0 = iround(oy - pfo);
        j1 = iround(oy + pfo);
        if (!clip_range(&i0, &i1, J->gx0, J->gx1) || !clip_range(&j0, &j1, J->gy0, J->gy1)) {
            continue;
        }
        for (jj = j0; jj <= j1; ++jj) {
            double dy = oy - (double) jj;
            for (ii = i0; ii <= i1; ++ii) {
                double dx = ox - (double) ii;
                float g = (float) (es * exp(-(dx * dx + dy * dy) * efac));
                deposit(J, ii, jj, d, (float) ((double) g * w), v);
                hit = 1;
            }
        }
        J->n_used += hit;
    }
    return 0;
}

/* Lanczos of order 2 or 3 (in input pixels), separable, from a table. */
static int
kernel_lanczos(job_t *J)
{
    Py_ssize_t n = J->in_nx * J->in_ny, idx;
    int order = J->kernel == K_LANCZOS2 ? 2 : 3;
    size_t nlut = (size_t) ceil(order / LANCZOS_STEP) + 1, t;
    double *lut = (double *) malloc(sizeof(double) * nlut);
    double pfo = (double) order / (double) J->pscale;
    double sdp = (double) J->pscale / LANCZOS_STEP;
    float v[MAX_PLANES];

    if (!lut) {
        J->failed = 1;
        return 1;
    }
    lut[0] = 1.0;
    for (t = 1; t < nlut; ++t) {
        double x = (double) t * LANCZOS_STEP;
        if (x <= order) {
            double a = M_PI * x, b = a / order;
            lut[t] = sin(a) * sin(b) / (a * b);
        } else {
            lut[t] = 0.0;
        }
    }
    for (idx = 0; idx < n; ++idx) {
        double w, ox, oy;
        float d;
        long i0, i1, j0, j1, ii, jj;
        int hit = 0;

        if (!input_pixel(J, idx, &d, &w, v) || !pixel_centre(J, idx, &ox, &oy)) {
            continue;
        }
        i0 = (long) floor(ox - pfo) + 1;
        i1 = (long) floor(ox + pfo);
        j0 = (long) floor(oy - pfo) + 1;
        j1 = (long) floor(oy + pfo);
        if (!clip_range(&i0, &i1, J->gx0, J->gx1) || !clip_range(&j0, &j1, J->gy0, J->gy1)) {
            continue;
        }
        for (jj = j0; jj <= j1; ++jj) {
            size_t iy = (size_t) iround(fabs((oy - (double) jj) * sdp));
            if (iy >= nlut) {
                continue;
            }
            for (ii = i0; ii <= i1; ++ii) {
                size_t ix = (size_t) iround(fabs((ox - (double) ii) * sdp));
                if (ix >= nlut) {
                    continue;
                }
                deposit(J, ii, jj, d, (float) (lut[ix] * lut[iy] * w), v);
                hit = 1;
            }
        }
        J->n_used += hit;
    }
    free(lut);
    return 0;
}

/* ------------------------------------------------------------------------
 * Python interface
 */

/* Check a buffer: C-contiguous, itemsize, kind letter ('f' float, 'u'
 * unsigned or signed int of that itemsize, 'b' bool), ndim and shape (-1:
 * any length). */
static int
check_buffer(
    Py_buffer *b, const char *name, Py_ssize_t itemsize, char kind, int ndim,
    const Py_ssize_t *shape)
{
    const char *f = b->format ? b->format : "B";
    char c;
    int k;

    while (*f == '<' || *f == '>' || *f == '=' || *f == '@' || *f == '!') {
        ++f;
    }
    c = f[0];
    if (b->itemsize != itemsize || f[1] != '\0' ||
        (kind == 'f' && !(c == (itemsize == 4 ? 'f' : 'd'))) ||
        (kind == 'u' && !(c == 'I' || c == 'i' || c == 'L' || c == 'l' || c == 'q' ||
                          c == 'Q')) ||
        (kind == 'b' && c != '?')) {
        PyErr_Format(
            PyExc_TypeError, "%s: wrong element type (format '%s', itemsize %zd)", name,
            b->format ? b->format : "B", b->itemsize);
        return 1;
    }
    if (b->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, got %d", name, ndim, b->ndim);
        return 1;
    }
    for (k = 0; k < ndim; ++k) {
        if (shape[k] >= 0 && b->shape[k] != shape[k]) {
            PyErr_Format(PyExc_ValueError, "%s: shape mismatch in dimension %d", name, k);
            return 1;
        }
    }
    return 0;
}

/* Get a buffer of obj into bufs[nbuf] and check it (check_buffer); on
 * failure jump to the caller's done label, which releases bufs[0 .. nbuf). */
#define GET(obj, fl, name, isz, kind, nd, shp)                                                    \
    do {                                                                                       \
        if (PyObject_GetBuffer((obj), &bufs[nbuf], (fl)) != 0) {                               \
            goto done;                                                                         \
        }                                                                                      \
        ++nbuf;                                                                                \
        if (check_buffer(&bufs[nbuf - 1], (name), (isz), (kind), (nd), (shp))) {               \
            goto done;                                                                         \
        }                                                                                      \
    } while (0)

#define N_BUFFERS (11 + 2 * MAX_PLANES) /* a spline is four buffers */

static PyObject *
py_drizzle_add(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "kernel", "data", "weight", "pixmap", "variances", "out_data", "out_weight",
        "out_variances", "context", "bit", "x0", "y0", "pixfrac", "pscale_ratio", "iscale",
        "spline", "col0", "row0", "dq", "out_dq", NULL};
    int kernel, bit;
    Py_ssize_t x0, y0;
    double pixfrac, pscale, iscale;
    PyObject *o_data, *o_weight, *o_pixmap, *o_vars, *o_out, *o_wht, *o_ovars, *o_ctx;
    PyObject *o_spline = Py_None, *o_dq = Py_None, *o_odq = Py_None;
    Py_ssize_t col0 = 0, row0 = 0;
    spline_t S;
    Py_buffer bufs[N_BUFFERS];
    int nbuf = 0, m, nvar, status = 0;
    job_t J;
    Py_ssize_t in_shape[3], out_shape[2];
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
    PyObject *result = NULL;

    (void) self;
    memset(&J, 0, sizeof(J));
    memset(&S, 0, sizeof(S));
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "iOOOOOOOOinnddd|OnnOO:drizzle_add", kwlist, &kernel, &o_data,
            &o_weight, &o_pixmap, &o_vars, &o_out, &o_wht, &o_ovars, &o_ctx, &bit, &x0, &y0,
            &pixfrac, &pscale, &iscale, &o_spline, &col0, &row0, &o_dq, &o_odq)) {
        return NULL;
    }
    if ((o_dq == Py_None) != (o_odq == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "give dq and out_dq together");
        return NULL;
    }
    if ((o_spline == Py_None) == (o_pixmap == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "give either a pixel map or a spline");
        return NULL;
    }
    if (o_spline != Py_None && (kernel != K_SQUARE || !PyTuple_Check(o_spline) ||
                                PyTuple_GET_SIZE(o_spline) != 4)) {
        PyErr_SetString(
            PyExc_ValueError, "spline: a tuple (ty, tx, cx, cy), for the square kernel only");
        return NULL;
    }
    if (kernel < K_SQUARE || kernel > K_LANCZOS3) {
        PyErr_SetString(PyExc_ValueError, "unknown kernel");
        return NULL;
    }
    if (bit < 0 || bit > 31) {
        PyErr_SetString(PyExc_ValueError, "context bit must be in 0..31");
        return NULL;
    }
    if (!(pixfrac > 0.0) || !isfinite(pixfrac) || !(pscale > 0.0) || !isfinite(pscale) ||
        !(iscale > 0.0) || !isfinite(iscale)) {
        PyErr_SetString(
            PyExc_ValueError, "pixfrac, pscale_ratio and iscale must be positive and finite");
        return NULL;
    }
    if (!PyTuple_Check(o_vars) || !PyTuple_Check(o_ovars) ||
        PyTuple_GET_SIZE(o_vars) != PyTuple_GET_SIZE(o_ovars)) {
        PyErr_SetString(PyExc_ValueError, "variances and out_variances: tuples of equal length");
        return NULL;
    }
    nvar = (int) PyTuple_GET_SIZE(o_ovars);
    if (nvar > MAX_PLANES) {
        PyErr_Format(PyExc_ValueError, "at most %d variance planes", MAX_PLANES);
        return NULL;
    }


    in_shape[0] = in_shape[1] = -1;
    in_shape[2] = 2;
    GET(o_data, flags, "data", 4, 'f', 2, in_shape);
    in_shape[0] = bufs[nbuf - 1].shape[0];
    in_shape[1] = bufs[nbuf - 1].shape[1];
    J.data = (const float *) bufs[nbuf - 1].buf;
    J.in_ny = in_shape[0];
    J.in_nx = in_shape[1];
    if (o_weight != Py_None) {
        GET(o_weight, flags, "weight", 4, 'f', 2, in_shape);
        J.weight = (const float *) bufs[nbuf - 1].buf;
    }
    if (o_dq != Py_None) {
        GET(o_dq, flags, "dq", 4, 'u', 2, in_shape);
        J.dq = (const uint32_t *) bufs[nbuf - 1].buf;
    }
    if (o_pixmap != Py_None) {
        GET(o_pixmap, flags, "pixmap", 8, 'f', 3, in_shape);
        J.pixmap = (const double *) bufs[nbuf - 1].buf;
    } else {
        Py_ssize_t knots[1] = {-1}, coefs[2];
        GET(PyTuple_GET_ITEM(o_spline, 0), flags, "spline knots", 8, 'f', 1, knots);
        S.ty = (const double *) bufs[nbuf - 1].buf;
        S.nty = bufs[nbuf - 1].shape[0];
        GET(PyTuple_GET_ITEM(o_spline, 1), flags, "spline knots", 8, 'f', 1, knots);
        S.tx = (const double *) bufs[nbuf - 1].buf;
        S.ntx = bufs[nbuf - 1].shape[0];
        if (S.nty < 8 || S.ntx < 8) {
            PyErr_SetString(PyExc_ValueError, "spline: a cubic spline needs 8 knots or more");
            goto done;
        }
        coefs[0] = S.nty - 4;
        coefs[1] = S.ntx - 4;
        for (m = 0; m < 2; ++m) {
            GET(PyTuple_GET_ITEM(o_spline, 2 + m), flags, "spline coefficients", 8, 'f', 2,
                coefs);
            S.c[m] = (const double *) bufs[nbuf - 1].buf;
        }
        S.col0 = (double) col0;
        S.row0 = (double) row0;
        J.spline = &S;
    }
    for (m = 0; m < nvar; ++m) {
        PyObject *item = PyTuple_GET_ITEM(o_vars, m);
        if (item == Py_None) {
            J.var[m] = NULL;
        } else {
            GET(item, flags, "variance", 4, 'f', 2, in_shape);
            J.var[m] = (const float *) bufs[nbuf - 1].buf;
        }
    }
    out_shape[0] = out_shape[1] = -1;
    GET(o_out, flags | PyBUF_WRITABLE, "out_data", 4, 'f', 2, out_shape);
    out_shape[0] = bufs[nbuf - 1].shape[0];
    out_shape[1] = bufs[nbuf - 1].shape[1];
    J.out = (float *) bufs[nbuf - 1].buf;
    J.out_ny = out_shape[0];
    J.out_nx = out_shape[1];
    GET(o_wht, flags | PyBUF_WRITABLE, "out_weight", 4, 'f', 2, out_shape);
    J.wht = (float *) bufs[nbuf - 1].buf;
    for (m = 0; m < nvar; ++m) {
        GET(PyTuple_GET_ITEM(o_ovars, m), flags | PyBUF_WRITABLE, "out_variance", 4, 'f', 2,
            out_shape);
        J.ovar[m] = (float *) bufs[nbuf - 1].buf;
    }
    if (o_ctx != Py_None) {
        GET(o_ctx, flags | PyBUF_WRITABLE, "context", 4, 'u', 2, out_shape);
        J.ctx = (uint32_t *) bufs[nbuf - 1].buf;
    }
    if (o_odq != Py_None) {
        GET(o_odq, flags | PyBUF_WRITABLE, "out_dq", 4, 'u', 2, out_shape);
        J.odq = (uint32_t *) bufs[nbuf - 1].buf;
    }

    if (kernel == K_SQUARE && (J.in_nx < 2 || J.in_ny < 2)) {
        PyErr_SetString(PyExc_ValueError, "the square kernel needs an input of at least 2 x 2");
        goto done;
    }
    J.nvar = nvar;
    J.bit = (uint32_t) 1u << bit;
    J.gx0 = (double) x0;
    J.gy0 = (double) y0;
    J.gx1 = (double) (x0 + J.out_nx - 1);
    J.gy1 = (double) (y0 + J.out_ny - 1);
    J.kernel = kernel;
    J.pixfrac = pixfrac;
    J.iscale = (float) iscale;
    J.pscale = (float) pscale;

    if (J.out_nx > 0 && J.out_ny > 0 && J.in_nx > 0 && J.in_ny > 0) {
        Py_BEGIN_ALLOW_THREADS
        switch (kernel) {
        case K_SQUARE:
            status = kernel_square(&J);
            break;
        case K_POINT:
            status = kernel_point(&J);
            break;
        case K_TURBO:
            status = kernel_turbo(&J);
            break;
        case K_GAUSSIAN:
            status = kernel_gaussian(&J);
            break;
        default:
            status = kernel_lanczos(&J);
            break;
        }
        Py_END_ALLOW_THREADS
    }
    if (status || J.failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyLong_FromSsize_t(J.n_used);

done:
    free(J.area);
    spline_free(&S);
    for (m = 0; m < nbuf; ++m) {
        PyBuffer_Release(&bufs[m]);
    }
    return result;
}

/* ------------------------------------------------------------------------
 * Smoothed read-noise weights (romosaic.resample.weights)
 *
 * Rows row0 .. row0 + nrows - 1 of an image's block-smoothed variance,
 * interpolated bilinearly between block centres: along the rows already
 * (along, one row of nx values per block row), here down the columns, as
 * (double) along[first[y]] * (1 - frac[y]) + along[first[y] + 1] * frac[y],
 * rounded to float32, plus sky (float32) when add_sky. With data and good,
 * out is the weight instead: 1 / variance in float32 where the pixel is good,
 * its data finite and the variance finite and positive, else 0. These are
 * the operations, in the order and precision, of the numpy form that
 * weights.py used before, so the weights are the same to the bit.
 */
static void
smoothed_rows(const double *along, Py_ssize_t nx, const long long *first, const double *frac,
              Py_ssize_t row0, Py_ssize_t nrows, float sky, int add_sky, const float *data,
              const unsigned char *good, float *out)
{
    Py_ssize_t r, x;

    for (r = 0; r < nrows; ++r) {
        const double *a = along + (Py_ssize_t) first[row0 + r] * nx, *b = a + nx;
        const double f = frac[row0 + r], g = 1.0 - f;
        const float *d = data ? data + r * nx : NULL;
        const unsigned char *ok = good ? good + r * nx : NULL;
        float *o = out + r * nx;

        for (x = 0; x < nx; ++x) {
            float v = (float) (a[x] * g + b[x] * f);
            if (add_sky) {
                v = v + sky;
            }
            if (d) {
                int usable = ok[x] && isfinite(d[x]) && isfinite(v) && v > 0.0f;
                o[x] = usable ? 1.0f / v : 0.0f;
            } else {
                o[x] = v;
            }
        }
    }
}

static PyObject *
py_smoothed_rows(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"along", "first", "frac", "row0", "out", "sky", "data", "good",
                             NULL};
    PyObject *o_along, *o_first, *o_frac, *o_out, *o_data = Py_None, *o_good = Py_None;
    PyObject *o_sky = Py_None;
    Py_ssize_t row0, nrows, nx, shape[2], rows_shape[1] = {-1};
    Py_buffer bufs[6];
    int nbuf = 0, add_sky = 0;
    float sky = 0.0f;
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
    PyObject *result = NULL;

    (void) self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOnO|OOO:smoothed_rows", kwlist, &o_along,
                                     &o_first, &o_frac, &row0, &o_out, &o_sky, &o_data,
                                     &o_good)) {
        return NULL;
    }
    if (o_sky != Py_None) {
        double value = PyFloat_AsDouble(o_sky);
        if (value == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        sky = (float) value;
        add_sky = 1;
    }
    shape[0] = shape[1] = -1;
    GET(o_along, flags, "along", 8, 'f', 2, shape);
    nx = bufs[0].shape[1];
    GET(o_first, flags, "first", 8, 'u', 1, rows_shape);
    rows_shape[0] = bufs[1].shape[0];
    GET(o_frac, flags, "frac", 8, 'f', 1, rows_shape);
    shape[0] = -1;
    shape[1] = nx;
    GET(o_out, flags | PyBUF_WRITABLE, "out", 4, 'f', 2, shape);
    nrows = bufs[3].shape[0];
    shape[0] = nrows;
    if (row0 < 0 || row0 + nrows > rows_shape[0]) {
        PyErr_SetString(PyExc_ValueError, "out: rows beyond the image");
        goto done;
    }
    if ((o_data == Py_None) != (o_good == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "data and good: give both or neither");
        goto done;
    }
    if (o_data != Py_None) {
        GET(o_data, flags, "data", 4, 'f', 2, shape);
        GET(o_good, flags, "good", 1, 'b', 2, shape);
    }
    {
        const long long *first = (const long long *) bufs[1].buf;
        Py_ssize_t r, by = bufs[0].shape[0];
        for (r = row0; r < row0 + nrows; ++r) {
            if (first[r] < 0 || first[r] + 1 >= by) {
                PyErr_SetString(PyExc_ValueError, "first: a block row beyond along");
                goto done;
            }
        }
    }
    Py_BEGIN_ALLOW_THREADS
    smoothed_rows((const double *) bufs[0].buf, nx, (const long long *) bufs[1].buf,
                  (const double *) bufs[2].buf, row0, nrows, sky, add_sky,
                  nbuf > 4 ? (const float *) bufs[4].buf : NULL,
                  nbuf > 4 ? (const unsigned char *) bufs[5].buf : NULL, (float *) bufs[3].buf);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    while (nbuf > 0) {
        PyBuffer_Release(&bufs[--nbuf]);
    }
    return result;
}

/* use_vector_copies(flag) -> bool: whether the square kernel may run rows
 * in its AVX2 copy (where the CPU has AVX2); returns the previous setting.
 * For the tests, which compare the copies. */
static PyObject *
py_use_vector_copies(PyObject *self, PyObject *arg)
{
    int previous = use_avx2, flag = PyObject_IsTrue(arg);

    (void) self;
    if (flag < 0) {
        return NULL;
    }
    use_avx2 = flag && cpu_avx2;
    return PyBool_FromLong(previous);
}

static PyMethodDef methods[] = {
    {"drizzle_add", (PyCFunction) (void (*)(void)) py_drizzle_add, METH_VARARGS | METH_KEYWORDS,
     "drizzle_add(kernel, data, weight, pixmap, variances, out_data, out_weight, "
     "out_variances, context, bit, x0, y0, pixfrac, pscale_ratio, iscale, spline=None, "
     "col0=0, row0=0, dq=None, out_dq=None) -> int\n\n"
     "Deposit one input image onto the output arrays; see romosaic.resample.kernels."},
    {"smoothed_rows", (PyCFunction) (void (*)(void)) py_smoothed_rows,
     METH_VARARGS | METH_KEYWORDS,
     "smoothed_rows(along, first, frac, row0, out, sky=None, data=None, good=None) -> None\n\n"
     "Rows of a block-smoothed variance (or, with data and good, its weights); see\n"
     "romosaic.resample.weights."},
    {"use_vector_copies", py_use_vector_copies, METH_O,
     "use_vector_copies(flag) -> bool\n\n"
     "Whether the square kernel may use its AVX2 copy; returns the previous setting."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels", "romosaic's compiled drizzle kernels.", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC
PyInit__kernels(void)
{
#if VECTOR_COPIES
    __builtin_cpu_init();
    cpu_avx2 = use_avx2 = __builtin_cpu_supports("avx2") != 0;
#endif
    return PyModule_Create(&module);
}
