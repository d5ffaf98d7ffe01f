"""How drizzling correlates the noise of neighbouring mosaic pixels.

Drizzle output pixel ``o`` is a weighted mean of input pixels ``i``:

.. math::

    o = \\sum_i a_{io} d_i, \\qquad a_{io} = w_i f_{io} / W_o, \\qquad
    W_o = \\sum_i w_i f_{io},

with ``f`` the kernel's overlap of input pixel ``i`` on output pixel ``o``
and ``w`` the pixel weight. For independent input pixels of variance
``v_i`` the coadd's variance plane, ``err² = Σ_i a_io² v_i``, is the exact
variance of each output pixel, but two output pixels fed by the same input
pixel share its noise: ``Cov(o, o') = Σ_i a_io a_io' v_i``. A sum over an
aperture much larger than the kernel therefore has the variance
``Σ_i c_i² v_i`` with ``c_i = Σ_o a_io``, more than ``Σ_o err_o²``; their
ratio is the *aperture variance factor*.

`drizzle_noise_correlation` computes the covariances exactly for a given
drizzle geometry by drizzling small synthetic patches with the same engine
as the mosaic (`DrizzleCoadd`): for each input, "comb" weight maps that are
non-zero on a sparse lattice of input pixels (far enough apart that their
footprints never touch) give each sampled input pixel's ``a_io`` on its own,
and the weight of all inputs together gives ``W_o``. The result is a
`NoiseCorrelation`: the correlation kernel ``ρ(Δ)`` such that
``Cov(o, o + Δ) ≈ ρ(Δ) err_o err_(o+Δ)``, and the large-aperture factor.
`noise_correlation_for_grid` finds the geometry (scales, rotation, sub-pixel
phases and number of overlapping inputs) from the inputs' WCS and the output
grid. `correlated_variance` gives the variance of any weighted sum of mosaic
pixels (an aperture, a segment, a centroid) from ``err`` and ``ρ``.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import correlate

from ..image_inverse import image_inverse
from ..wcs_utils import world_to_pixel
from .coadd import DrizzleCoadd
from .pixmap import map_pixels

__all__ = [
    "NoiseCorrelation",
    "circular_aperture_factor",
    "correlated_variance",
    "drizzle_noise_correlation",
    "local_drizzle_geometry",
    "noise_correlation_for_grid",
]

#: Radius, in input pixels, of the region whose pixels are sampled.
INTERIOR_RADIUS = 12.0
#: Most comb phases drizzled per input (spread over the lattice cell).
MAX_PHASES = 9
#: Places of the mosaic at which the local geometry is sampled.
MAX_SAMPLE_POINTS = 3


@dataclass(frozen=True)
class NoiseCorrelation:
    """The noise correlation of a drizzled mosaic.

    Attributes
    ----------
    correlation : numpy.ndarray
        ``ρ[m + dy, m + dx]`` (shape ``(2m + 1, 2m + 1)``, ``ρ[m, m] = 1``):
        the covariance of output pixels ``Δ = (dx, dy)`` apart over the
        product of their ``err``.
    aperture_variance_factor : float
        Variance of a sum over an aperture much larger than the kernel over
        the sum of ``err²`` in it.
    n_inputs : float
        Inputs overlapping where the geometry was sampled (mean over places).
    """

    correlation: np.ndarray
    aperture_variance_factor: float
    n_inputs: float = 1.0

    @classmethod
    def uncorrelated(cls):
        """Independent pixels: ``ρ = δ``, factor 1."""
        return cls(np.ones((1, 1)), 1.0, 1.0)

    @classmethod
    def from_meta(cls, resample_meta):
        """From a mosaic's ``meta.resample``; None when it holds no correlation.

        Parameters
        ----------
        resample_meta : mapping
            ``meta.resample`` of a MosaicModel.

        Returns
        -------
        NoiseCorrelation or None
        """
        if resample_meta is None:
            return None
        getter = resample_meta.get if hasattr(resample_meta, "get") else lambda k: None
        kernel = getter("noise_correlation")
        factor = getter("aperture_variance_factor")
        if kernel is None or factor is None:
            return None
        kernel = np.asarray(kernel, dtype=float)
        if (kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0
                or not np.all(np.isfinite(kernel)) or not math.isfinite(float(factor))):
            return None
        return cls(kernel, float(factor), float(getter("noise_correlation_inputs") or 1.0))

    def to_meta(self):
        """The entries recorded in a mosaic's ``meta.resample``."""
        return {
            "aperture_variance_factor": float(self.aperture_variance_factor),
            "noise_correlation": [[round(float(v), 6) for v in row] for row in self.correlation],
            "noise_correlation_inputs": float(self.n_inputs),
        }

    def variance(self, weights, err):
        """Variance of ``Σ weights · data`` over a cutout (see `correlated_variance`)."""
        return correlated_variance(weights, err, self.correlation)

    def circular_factor(self, radius_pix):
        """Variance factor of a circular aperture (see `circular_aperture_factor`)."""
        return circular_aperture_factor(self.correlation, radius_pix)


def correlated_variance(weights, err, correlation):
    """Variance of a weighted sum of correlated mosaic pixels.

    ``Var(Σ_o m_o d_o) = Σ_o Σ_Δ m_o err_o ρ(Δ) m_(o+Δ) err_(o+Δ)``.

    Parameters
    ----------
    weights : numpy.ndarray
        Weights ``m`` of the pixels of a cutout (e.g. an aperture's exact
        overlap fractions); zero outside the aperture.
    err : numpy.ndarray
        Per-pixel uncertainty, same shape (0 or anything where weight is 0).
    correlation : numpy.ndarray
        Kernel ``ρ`` of `NoiseCorrelation`.

    Returns
    -------
    float

    Examples
    --------
    Two pixels of error 1 with correlation 0.5 between neighbours:

    >>> import numpy as np
    >>> rho = np.array([[0, 0, 0], [0.5, 1.0, 0.5], [0, 0, 0]])
    >>> float(correlated_variance(np.array([[1.0, 1.0]]), np.ones((1, 2)), rho))
    3.0
    """
    values = np.where(weights != 0, np.asarray(weights, float) * np.asarray(err, float), 0.0)
    if correlation.shape == (1, 1):
        return float(np.sum(values**2) * correlation[0, 0])
    m = correlation.shape[0] // 2
    padded = np.pad(values, m)
    return float(np.sum(padded * correlate(padded, correlation, mode="constant")))


def circular_aperture_factor(correlation, radius_pix, *, n_phases=4):
    """Variance factor of a circular aperture on uniform noise.

    The variance of an exact-overlap aperture sum, ``Σ m_o d_o``, over
    ``Σ m_o err²`` (the error photutils and most users compute), averaged
    over ``n_phases²`` sub-pixel positions of the centre. It tends to the
    large-aperture factor for large radii, and is below 1 for apertures
    smaller than a pixel even without correlation, where partial pixels
    count with ``m²`` in the variance but ``m`` in ``Σ m err²``.

    Parameters
    ----------
    correlation : numpy.ndarray
        Kernel ``ρ`` of `NoiseCorrelation`.
    radius_pix : float
    n_phases : int, optional

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> round(circular_aperture_factor(np.ones((1, 1)), 20.0), 3)  # partial pixels on the rim
    0.983
    >>> round(circular_aperture_factor(np.ones((1, 1)), 100.0), 2)
    1.0
    """
    from photutils.aperture import CircularAperture

    numerator = denominator = 0.0
    steps = (np.arange(n_phases) + 0.5) / n_phases
    for fy in steps:
        for fx in steps:
            mask = CircularAperture((fx, fy), radius_pix).to_mask(method="exact").data
            numerator += correlated_variance(mask, np.ones_like(mask), correlation)
            denominator += float(mask.sum())
    return numerator / denominator if denominator > 0 else 1.0


def drizzle_noise_correlation(jacobians, offsets, *, kernel="square", pixfrac=1.0,
                              weights=None, variances=None,
                              interior_radius=INTERIOR_RADIUS):
    """Noise correlation of a drizzle of overlapping inputs with locally affine maps.

    Parameters
    ----------
    jacobians : array_like, shape (K, 2, 2)
        ``∂(x_out, y_out) / ∂(x_in, y_in)`` of each input: output pixels
        per input pixel (scale, rotation, parity).
    offsets : array_like, shape (K, 2)
        Output ``(x, y)`` of one input pixel centre of each input, relative
        to an output pixel centre. The inputs' reference pixels should be
        near one another (within an input pixel) as they are at one place
        of a mosaic: relative positions set the joint pattern of the drops.
    kernel : str, optional
        Drizzle kernel.
    pixfrac : float, optional
    weights, variances : array_like of shape (K,), optional
        Pixel weight and pixel variance of each input (default all 1).
    interior_radius : float, optional
        Radius in input pixels of the region sampled.

    Returns
    -------
    NoiseCorrelation

    Examples
    --------
    Four inputs at the output's scale, dithered by half pixels:

    >>> import numpy as np
    >>> jac = np.repeat(np.eye(2)[None], 4, axis=0)
    >>> offsets = [(0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5)]
    >>> noise = drizzle_noise_correlation(jac, offsets, pixfrac=1.0)
    >>> round(noise.aperture_variance_factor, 2)
    1.78
    """
    sums = _covariance_sums(jacobians, offsets, kernel=kernel, pixfrac=pixfrac,
                            weights=weights, variances=variances,
                            interior_radius=interior_radius)
    return _from_sums([sums])


def _covariance_sums(jacobians, offsets, *, kernel, pixfrac, weights, variances,
                     interior_radius):
    """Mean covariance and mean err product per lag, per output pixel, at one place."""
    jacobians = np.asarray(jacobians, dtype=float).reshape(-1, 2, 2)
    offsets = np.asarray(offsets, dtype=float).reshape(-1, 2)
    k = len(jacobians)
    weights = np.ones(k) if weights is None else np.asarray(weights, float)
    variances = np.ones(k) if variances is None else np.asarray(variances, float)
    dets = np.abs(np.linalg.det(jacobians))
    # The singular values bound how far apart input pixels land.
    singular = np.linalg.svd(jacobians, compute_uv=False)
    out_per_in_min, out_per_in_max = float(singular.min()), float(singular.max())
    ratios = 1.0 / np.sqrt(dets)  # output over input pixel size

    probe = 4 + int(math.ceil(8 / out_per_in_min))
    width = 1
    for index in range(k):
        # Footprint of one input pixel: sets the lags to keep and the comb spacing.
        single = np.zeros((2 * probe + 1, 2 * probe + 1), np.float32)
        single[probe, probe] = 1.0
        out = _drizzle_weight([single], [jacobians[index]], [offsets[index]], probe,
                              int(2 * probe * out_per_in_max) + 16, kernel, pixfrac,
                              [ratios[index]])
        rows, cols = np.nonzero(out)
        width = max(width, rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    m = width - 1
    # Footprints of comb pixels at least m + 1 output pixels apart in x or y:
    # no lag up to m joins two of them.
    spacing = int(math.ceil(math.sqrt(2.0) * (2 * width + 1) / out_per_in_min))
    radius_in = max(float(interior_radius), 1.5 * spacing)
    half_in = int(math.ceil(1.5 * radius_in + spacing + width / out_per_in_min + 4))
    n_in = 2 * half_in + 1
    # A rotated square of input pixels reaches sqrt(2) times its half-side.
    half_out = int(math.ceil(math.sqrt(2.0) * half_in * out_per_in_max)) + width + 4
    n_out = 2 * half_out + 1
    radius_out = radius_in * float(np.sqrt(dets.mean()))

    full = np.ones((n_in, n_in), np.float32)
    total_weight = _drizzle_weight([full * np.float32(w) for w in weights], jacobians, offsets,
                                   half_in, half_out, kernel, pixfrac, ratios)
    variance_map = _drizzle_variance(weights, variances, jacobians, offsets, half_in, half_out,
                                     kernel, pixfrac, ratios, n_in)
    err = np.sqrt(np.where(total_weight != 0, np.clip(variance_map, 0, None), 0.0))

    yy, xx = np.indices((n_out, n_out))
    region = (xx - half_out) ** 2 + (yy - half_out) ** 2 <= radius_out**2
    err_products = _lag_products(err, region, m)

    phases = _phases(spacing)
    covariance = np.zeros((2 * m + 1, 2 * m + 1))
    yi, xi = np.indices((n_in, n_in))
    for index in range(k):
        mapped = np.einsum("ab,bij->aij", jacobians[index],
                           np.stack([xi - half_in, yi - half_in]).astype(float))
        inside = mapped[0] ** 2 + mapped[1] ** 2 <= radius_out**2
        lags = np.zeros_like(covariance)
        n_sampled = 0
        for px, py in phases:
            comb = inside & (xi % spacing == px) & (yi % spacing == py)
            n = int(comb.sum())
            if n == 0:
                continue
            n_sampled += n
            own = _drizzle_weight([np.where(comb, np.float32(weights[index]), 0).astype(
                np.float32)], [jacobians[index]], [offsets[index]], half_in, half_out, kernel,
                pixfrac, [ratios[index]])
            share = np.divide(own, total_weight, out=np.zeros_like(own, dtype=float),
                              where=total_weight != 0)
            lags += _autocorrelation(share, m)
        if n_sampled:
            # Per sampled input pixel, times input pixels per output pixel.
            covariance += variances[index] * lags / n_sampled / dets[index]
    return covariance, err_products, k


def _from_sums(sums):
    # Places may differ in the footprint's width: pad every lag array to the widest.
    m = max(s[0].shape[0] for s in sums) // 2
    covariance = np.mean([_pad_lags(s[0], m) for s in sums], axis=0)
    err_products = np.mean([_pad_lags(s[1], m) for s in sums], axis=0)
    n_inputs = float(np.mean([s[2] for s in sums]))
    centre = covariance[m, m]
    if not centre > 0:
        return NoiseCorrelation.uncorrelated()
    # Ratios of sampled covariances to the sampled variance, so that sampling
    # error largely cancels; err products from the whole region.
    relative = covariance / centre
    correlation = np.divide(relative * err_products[m, m], err_products,
                            out=np.zeros_like(relative), where=err_products > 0)
    correlation[m, m] = 1.0
    return NoiseCorrelation(correlation=correlation,
                            aperture_variance_factor=float(relative.sum()),
                            n_inputs=n_inputs)


def _pad_lags(lags, m):
    extra = m - lags.shape[0] // 2
    return np.pad(lags, extra) if extra else lags


def _phases(spacing):
    """Up to `MAX_PHASES` comb phases spread evenly over the lattice cell."""
    per_axis = min(spacing, int(math.isqrt(MAX_PHASES)))
    steps = sorted({int(v) for v in np.floor(np.arange(per_axis) * spacing / per_axis)})
    return [(px, py) for py in steps for px in steps]


def _pixmap(jacobian, offset, half_in, half_out):
    n_in = 2 * half_in + 1
    yi, xi = np.indices((n_in, n_in), dtype=float)
    dx, dy = xi - half_in, yi - half_in
    x = half_out + offset[0] + jacobian[0, 0] * dx + jacobian[0, 1] * dy
    y = half_out + offset[1] + jacobian[1, 0] * dx + jacobian[1, 1] * dy
    return np.dstack([x, y])


def _drizzle_weight(weight_maps, jacobians, offsets, half_in, half_out, kernel, pixfrac,
                    ratios):
    n_out = 2 * half_out + 1
    coadd = DrizzleCoadd((n_out, n_out), len(weight_maps), kernel=kernel, pixfrac=pixfrac,
                         fillval="0", with_context=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not a flux-conserving kernel"
        for weight, jacobian, offset, ratio in zip(weight_maps, jacobians, offsets, ratios,
                                                   strict=True):
            coadd.add(np.zeros(weight.shape, np.float32),
                      _pixmap(jacobian, offset, half_in, half_out), weight=weight,
                      exptime=1.0, pixel_scale_ratio=float(ratio))
    return coadd.finish().weight.astype(float)


def _drizzle_variance(weights, variances, jacobians, offsets, half_in, half_out, kernel,
                      pixfrac, ratios, n_in):
    n_out = 2 * half_out + 1
    coadd = DrizzleCoadd((n_out, n_out), len(weights), variance_names=["v"], kernel=kernel,
                         pixfrac=pixfrac, fillval="0", with_context=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for w, v, jacobian, offset, ratio in zip(weights, variances, jacobians, offsets,
                                                 ratios, strict=True):
            coadd.add(np.zeros((n_in, n_in), np.float32),
                      _pixmap(jacobian, offset, half_in, half_out),
                      weight=np.full((n_in, n_in), w, np.float32),
                      variances={"v": np.full((n_in, n_in), v, np.float32)},
                      exptime=1.0, pixel_scale_ratio=float(ratio))
    return coadd.finish().variances["v"].astype(float)


def _autocorrelation(image, m):
    """``Σ_o image[o] · image[o + Δ]`` for ``|Δx|, |Δy| ≤ m``, as a (2m+1)² array."""
    # The comb's footprints cover few pixels: multiply over those only.
    padded = np.pad(image, m)
    rows, cols = np.nonzero(padded)
    values = padded[rows, cols]
    lags = np.empty((2 * m + 1, 2 * m + 1))
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            lags[dy + m, dx + m] = float(np.dot(values, padded[rows + dy, cols + dx]))
    return lags


def _lag_products(err, region, m):
    """Mean of ``err[o] · err[o + Δ]`` over ``o`` in ``region``."""
    products = np.zeros((2 * m + 1, 2 * m + 1))
    rows, cols = np.nonzero(region)
    values = err[rows, cols]
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            products[dy + m, dx + m] = float(np.mean(values * err[rows + dy, cols + dx]))
    return products


# -- the geometry of a real mosaic ----------------------------------------------------------


def local_drizzle_geometry(geometry, grid_wcs, x, y, *, inverses=None):
    """The inputs covering output pixel ``(x, y)`` and their local affine maps.

    Parameters
    ----------
    geometry : sequence of (gwcs.wcs.WCS, (ny, nx))
        Each input's WCS and array shape.
    grid_wcs : gwcs.wcs.WCS
        The output grid's WCS.
    x, y : float
        Output pixel.

    Returns
    -------
    jacobians : numpy.ndarray, shape (K, 2, 2)
    offsets : numpy.ndarray, shape (K, 2)
        Output position of each covering input's pixel nearest ``(x, y)``,
        relative to output pixel ``(round(x), round(y))``.
    """
    ra, dec = grid_wcs(float(x), float(y), with_bounding_box=False)
    origin = np.array([round(float(x)), round(float(y))], dtype=float)
    if inverses is None:
        inverses = _inverses(geometry, None)
    jacobians, offsets = [], []
    for (wcs, (ny, nx)), inverse in zip(geometry, inverses, strict=True):
        xi, yi = inverse(ra, dec)
        xi, yi = float(xi), float(yi)
        if not (np.isfinite(xi) and np.isfinite(yi)):
            continue
        i, j = round(xi), round(yi)
        if not (0 <= i < nx and 0 <= j < ny):
            continue
        # The pixel and its neighbours (towards the image's inside) on the output grid.
        si = 1 if i + 1 < nx else -1
        sj = 1 if j + 1 < ny else -1
        xo, yo = map_pixels(wcs, grid_wcs, np.array([i, i + si, i], float),
                            np.array([j, j, j + sj], float))
        if not (np.all(np.isfinite(xo)) and np.all(np.isfinite(yo))):
            continue
        jacobian = np.array([[(xo[1] - xo[0]) * si, (xo[2] - xo[0]) * sj],
                             [(yo[1] - yo[0]) * si, (yo[2] - yo[0]) * sj]])
        jacobians.append(jacobian)
        offsets.append([xo[0] - origin[0], yo[0] - origin[1]])
    return np.asarray(jacobians).reshape(-1, 2, 2), np.asarray(offsets).reshape(-1, 2)


def noise_correlation_for_grid(geometry, grid_wcs, grid_shape, *, kernel="square",
                               pixfrac=1.0, max_points=MAX_SAMPLE_POINTS, nodes=9, names=None):
    """The noise correlation of drizzling ``geometry`` onto a grid.

    The output grid is probed on a ``nodes × nodes`` lattice; of the nodes
    with data, up to ``max_points`` where the number of overlapping inputs
    is the most common one (the typical depth of the mosaic) are used, and
    the covariances found there are averaged. Inputs are given equal weight
    and variance (alike exposures; ``ivm`` weights of alike detectors).

    Parameters
    ----------
    geometry : sequence of (gwcs.wcs.WCS, (ny, nx))
    grid_wcs : gwcs.wcs.WCS
    grid_shape : (int, int)
    kernel : str, optional
    pixfrac : float, optional
    max_points, nodes : int, optional
    names : sequence of str, optional
        The inputs' file names, for messages.

    Returns
    -------
    NoiseCorrelation
        `NoiseCorrelation.uncorrelated` when no node has data.

    Raises
    ------
    romosaic.errors.RomosaicInputError
        When an input's WCS cannot be inverted (see `romosaic.image_inverse`).
    """
    inverses = _inverses(geometry, names)
    window = _data_window(geometry, grid_wcs, grid_shape)
    x0, x1, y0, y1 = window
    x, y = np.meshgrid(np.linspace(x0, x1, nodes + 2)[1:-1], np.linspace(y0, y1, nodes + 2)[1:-1])
    x, y = x.ravel(), y.ravel()
    ra, dec = grid_wcs(x, y, with_bounding_box=False)
    counts = np.zeros(x.size, int)
    for (_, (ny, nx)), inverse in zip(geometry, inverses, strict=True):
        # One inverse evaluation per input for all the nodes.
        xi, yi = inverse(ra, dec)
        with np.errstate(invalid="ignore"):
            counts += ((np.round(xi) >= 0) & (np.round(xi) < nx) & (np.round(yi) >= 0)
                       & (np.round(yi) < ny))
    covered = counts > 0
    if not covered.any():
        return NoiseCorrelation.uncorrelated()
    values, occurrences = np.unique(counts[covered], return_counts=True)
    # The most common depth; the deeper one on a tie.
    typical = values[np.flatnonzero(occurrences == occurrences.max())[-1]]
    chosen = np.flatnonzero(counts == typical)
    # Spread the chosen places over the mosaic rather than taking the first few.
    picks = chosen[np.unique(np.linspace(0, chosen.size - 1, min(max_points, chosen.size))
                             .round().astype(int))]
    sums = []
    for node in picks:
        jacobians, offsets = local_drizzle_geometry(geometry, grid_wcs, x[node], y[node],
                                                    inverses=inverses)
        if len(jacobians):
            sums.append(_covariance_sums(jacobians, offsets, kernel=kernel, pixfrac=pixfrac,
                                         weights=None, variances=None,
                                         interior_radius=INTERIOR_RADIUS))
    return _from_sums(sums) if sums else NoiseCorrelation.uncorrelated()


def _inverses(geometry, names):
    """Each input's sky → pixel mapping (its WCS need not have an inverse)."""
    names = names or [f"input {index}" for index in range(len(geometry))]
    return [image_inverse(wcs, shape, name)
            for (wcs, shape), name in zip(geometry, names, strict=True)]


def _data_window(geometry, grid_wcs, grid_shape):
    """Output pixel box ``(x0, x1, y0, y1)`` of the inputs' centres and corners, on the grid."""
    ny, nx = grid_shape
    xs, ys = [], []
    for wcs, (h, w) in geometry:
        px = np.array([0, w - 1, 0, w - 1, (w - 1) / 2], float)
        py = np.array([0, 0, h - 1, h - 1, (h - 1) / 2], float)
        ra, dec = wcs(px, py, with_bounding_box=False)
        x, y = world_to_pixel(grid_wcs, ra, dec)
        xs.extend(x[np.isfinite(x)])
        ys.extend(y[np.isfinite(y)])
    if not xs:
        return 0.0, nx - 1.0, 0.0, ny - 1.0
    return (max(0.0, min(xs)), min(nx - 1.0, max(xs)), max(0.0, min(ys)),
            min(ny - 1.0, max(ys)))
