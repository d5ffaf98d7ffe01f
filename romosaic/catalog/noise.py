"""Flux uncertainties that describe the mosaic's real noise.

The ``err`` array gives each pixel's own uncertainty, but drizzling spreads
each input pixel over several output pixels, so neighbouring mosaic pixels
share noise: summing ``err²`` over an aperture as if the pixels were
independent underestimates the noise of the sum (by a factor of about 1.3
in σ on native 0.11″ pixels and 2-2.7 on 0.055″ pixels, ``pixfrac=1``).

Two ways of getting it right, in order of preference:

* **The drizzle's own correlation.** The resample step records how it
  correlated the noise (`romosaic.resample.noise_correlation`): the kernel
  ``ρ(Δ)`` with ``Cov(o, o + Δ) ≈ ρ(Δ) err_o err_(o+Δ)``. The variance of any
  weighted sum of pixels ``Σ m_o d_o`` (an aperture with exact partial
  pixels, a segment, a centroid's first moment) is then
  ``Σ_o Σ_Δ m_o err_o ρ(Δ) m_(o+Δ) err_(o+Δ)`` (`aperture_errors`,
  `segment_errors`). It needs no empty sky, keeps each source's own Poisson
  noise (it is in ``err``), and is right for small apertures, where partial
  pixels make ``Σ m err²`` overstate even uncorrelated noise.
* **Empty apertures** (`calibrate_aperture_noise`), for a mosaic that
  records no correlation: circular apertures of each catalog radius are
  dropped at random where there is data and no source (at least
  `SOURCE_MARGIN` pixels from any segment), and the scatter of
  ``sum / sqrt(Σ err²)`` over them is the factor by which the formal error of
  that aperture must grow. Kron and segment fluxes use the factor of the
  circle with the same area. With a correlation, the same apertures check the
  errors instead (`empty_aperture_check`).

Both start from an ``err`` array that holds all of the pixel noise. A
mosaic's ``err`` holds the variance planes that were drizzled: by default
(``include_var_flat=False``, as in the reference pipeline) not the inputs'
``var_flat``, although the flat-field errors of dithered inputs are
independent from pixel to pixel and add to the mosaic's noise like any
other (4.5 % of the variance, 2.2 % of the noise, on simulated 40 DN/s
skies). `sky_noise_ratio` measures what ``err`` leaves out, as the robust
scatter of ``data / err`` over the sky pixels, and the catalog adds the
missing variance to every pixel as sky-like noise before any uncertainty
is computed (`add_sky_noise`).
"""

import logging
import math

import numpy as np
from photutils.aperture import CircularAperture, aperture_photometry

from ..resample.noise_correlation import correlated_variance

__all__ = [
    "MIN_EMPTY_APERTURES",
    "N_EMPTY_APERTURES",
    "NoiseCalibration",
    "add_sky_noise",
    "aperture_errors",
    "calibrate_aperture_noise",
    "empty_aperture_check",
    "segment_errors",
    "sky_noise_ratio",
]

log = logging.getLogger(__name__)

#: Empty apertures wanted per radius; the scatter is then known to about 4%.
N_EMPTY_APERTURES = 400
#: Fewer usable apertures than this and a radius is not calibrated.
MIN_EMPTY_APERTURES = 30
#: Empty apertures keep at least this many pixels from any segment, so that
#: source wings below the detection threshold do not count as noise.
SOURCE_MARGIN = 3
#: Measured factors below this mean the image has (almost) no noise.
MIN_FACTOR = 0.01
#: At most about this many sky pixels measure `sky_noise_ratio` (its
#: robust scatter is then known to 0.1 %).
SKY_SAMPLE_PIXELS = 1_000_000
#: Fewer sky pixels than this and `sky_noise_ratio` is not measured.
MIN_SKY_PIXELS = 1000
#: Random placements tried per wanted aperture before giving up.
_TRIES_PER_APERTURE = 20
#: Values of ``err`` completed at once by `add_sky_noise`.
_ROWS_VALUES = 2**20


class NoiseCalibration:
    """Error-correction factors as a function of aperture radius.

    Parameters
    ----------
    radii_pix : sequence of float
        Aperture radii in pixels, increasing.
    factors : sequence of float
        Measured factor per radius (NaN where not measured).
    counts : sequence of int
        Empty apertures used per radius.
    """

    def __init__(self, radii_pix, factors, counts):
        self.radii_pix = np.asarray(radii_pix, dtype=float)
        self.measured = np.asarray(factors, dtype=float)
        self.counts = np.asarray(counts, dtype=int)
        good = np.isfinite(self.measured)
        self.calibrated = bool(good.any())
        if self.calibrated:
            # Radii without enough empty sky take the nearest measured radius's factor.
            self.factors = np.interp(np.log(self.radii_pix), np.log(self.radii_pix[good]),
                                     self.measured[good])
        else:
            self.factors = np.ones_like(self.radii_pix)

    def at_radius(self, radius_pix):
        """Factor for apertures of these radii (pixels), interpolated in log radius."""
        radius = np.clip(np.asarray(radius_pix, dtype=float), self.radii_pix[0],
                         self.radii_pix[-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            result = np.interp(np.log(radius), np.log(self.radii_pix), self.factors)
        return np.where(np.isfinite(radius_pix), result, self.factors[-1])

    def at_area(self, area_pix):
        """Factor for an aperture of this area (pixels²): that of the circle of equal area."""
        return self.at_radius(np.sqrt(np.asarray(area_pix, dtype=float) / np.pi))


def calibrate_aperture_noise(data, error, no_data, segmentation, radii_pix, *, seed=0):
    """Measure the error-correction factor for circular apertures of each radius.

    Parameters
    ----------
    data : numpy.ndarray
        Background-subtracted image.
    error : numpy.ndarray
        Per-pixel formal uncertainty.
    no_data : numpy.ndarray of bool
        Pixels without data.
    segmentation : numpy.ndarray
        Source labels (0 = sky).
    radii_pix : sequence of float
        Aperture radii in pixels, increasing.
    seed : int
        Seed of the aperture placement; the result is reproducible.

    Returns
    -------
    NoiseCalibration
    """
    rng = np.random.default_rng(seed)
    unusable = no_data | (segmentation > 0)
    variance = error.astype(np.float64) ** 2
    ny, nx = data.shape
    factors, counts = [], []
    for radius in radii_pix:
        reach = int(np.ceil(radius)) + SOURCE_MARGIN
        positions = _empty_positions(unusable, reach, rng)
        if len(positions) < MIN_EMPTY_APERTURES:
            factors.append(np.nan)
            counts.append(len(positions))
            continue
        apertures = CircularAperture(positions, radius)
        sums = np.asarray(aperture_photometry(data, apertures, method="exact")
                          ["aperture_sum"], dtype=float)
        formal = np.sqrt(np.asarray(aperture_photometry(variance, apertures, method="exact")
                                    ["aperture_sum"], dtype=float))
        z = sums[formal > 0] / formal[formal > 0]
        # A robust scatter: a few apertures on faint undetected sources must not inflate it.
        factor = 1.4826 * float(np.median(np.abs(z - np.median(z)))) if z.size else np.nan
        # An image far quieter than its err array says (a noise-free simulation)
        # cannot calibrate anything: keep the formal errors.
        factors.append(factor if factor >= MIN_FACTOR else np.nan)
        counts.append(int(z.size))
    calibration = NoiseCalibration(radii_pix, factors, counts)
    if calibration.calibrated:
        log.info("empty-aperture noise factors: %s", ", ".join(
            f"r={r:.1f}px: {f:.2f} ({n})" for r, f, n in
            zip(calibration.radii_pix, calibration.measured, counts, strict=True)))
    else:
        log.warning("too little empty sky to calibrate the flux uncertainties; they are the "
                    "formal errors from the err array and may be underestimated")
    return calibration


def _empty_positions(unusable, reach, rng):
    """Up to `N_EMPTY_APERTURES` random centres whose surrounding box is clean."""
    ny, nx = unusable.shape
    if ny <= 2 * reach + 1 or nx <= 2 * reach + 1:
        return np.empty((0, 2))
    n_tries = N_EMPTY_APERTURES * _TRIES_PER_APERTURE
    xs = rng.integers(reach, nx - reach, n_tries)
    ys = rng.integers(reach, ny - reach, n_tries)
    chosen = []
    for x, y in zip(xs, ys, strict=True):
        if not unusable[y - reach:y + reach + 1, x - reach:x + reach + 1].any():
            chosen.append((x, y))
            if len(chosen) == N_EMPTY_APERTURES:
                break
    return np.asarray(chosen, dtype=float).reshape(-1, 2)


def aperture_errors(apertures, error, correlation):
    """One-sigma uncertainty of each aperture sum, with the drizzle's noise correlation.

    Parameters
    ----------
    apertures : sequence of photutils PixelAperture or None
        One aperture per source (None gives NaN); exact partial-pixel masks.
    error : numpy.ndarray
        Per-pixel uncertainty, 0 where there is no data.
    correlation : numpy.ndarray
        ``ρ`` of `romosaic.resample.noise_correlation.NoiseCorrelation`.

    Returns
    -------
    numpy.ndarray of float
        In the units of ``error`` (per pixel, summed).
    """
    result = np.full(len(apertures), np.nan)
    for index, aperture in enumerate(apertures):
        if aperture is None:
            continue
        mask = aperture.to_mask(method="exact")
        if mask.bbox.shape[0] * mask.bbox.shape[1] > error.size:
            continue  # a pathological Kron aperture, larger than the image
        err = mask.cutout(error, fill_value=0.0)
        if err is None:
            continue
        result[index] = np.sqrt(max(correlated_variance(mask.data, err, correlation), 0.0))
    return result


def segment_errors(segmentation, labels, error, correlation):
    """One-sigma uncertainty of each segment's sum, with the drizzle's noise correlation.

    Parameters
    ----------
    segmentation : photutils.segmentation.SegmentationImage
    labels : sequence of int
    error : numpy.ndarray
        Per-pixel uncertainty, 0 where there is no data.
    correlation : numpy.ndarray

    Returns
    -------
    numpy.ndarray of float
    """
    slices = dict(zip(segmentation.labels, segmentation.slices, strict=True))
    result = np.full(len(labels), np.nan)
    for index, label in enumerate(labels):
        cut = slices[label]
        inside = (segmentation.data[cut] == label).astype(float)
        result[index] = np.sqrt(max(correlated_variance(inside, error[cut], correlation), 0.0))
    return result


def empty_aperture_check(data, error, no_data, segmentation, radii_pix, correlation, *,
                         seed=0):
    """Scatter of empty-aperture sums over their predicted uncertainty, per radius.

    The same random empty apertures as `calibrate_aperture_noise`, each
    divided by its `aperture_errors` uncertainty; 1 means the errors describe
    the noise. A robust scatter (so that faint undetected sources do not
    inflate it), NaN where too little empty sky was found.

    Parameters
    ----------
    data, error, no_data, segmentation, radii_pix, seed
        As for `calibrate_aperture_noise`.
    correlation : numpy.ndarray

    Returns
    -------
    ratios : list of float
    counts : list of int
    """
    rng = np.random.default_rng(seed)
    unusable = no_data | (segmentation > 0)
    ratios, counts = [], []
    for radius in radii_pix:
        positions = _empty_positions(unusable, int(np.ceil(radius)) + SOURCE_MARGIN, rng)
        if len(positions) < MIN_EMPTY_APERTURES:
            ratios.append(float("nan"))
            counts.append(len(positions))
            continue
        apertures = [CircularAperture(p, radius) for p in positions]
        sums = np.asarray(aperture_photometry(data, CircularAperture(positions, radius),
                                              method="exact")["aperture_sum"], dtype=float)
        predicted = aperture_errors(apertures, error, correlation)
        good = predicted > 0
        z = sums[good] / predicted[good]
        ratios.append(1.4826 * float(np.median(np.abs(z - np.median(z)))) if z.size
                      else float("nan"))
        counts.append(int(z.size))
    return ratios, counts


def sky_noise_ratio(image, error, no_data, segmentation):
    """Pixel noise of the sky over what the ``err`` array says it is.

    The robust standard deviation (1.4826 × MAD) of ``image / error`` over
    the pixels with data outside every segment, from a regular sample of
    at most about `SKY_SAMPLE_PIXELS` of them. The median absolute
    deviation ignores the few pixels on faint undetected sources.

    Parameters
    ----------
    image : numpy.ndarray
        Background-subtracted image.
    error : numpy.ndarray
        Per-pixel uncertainty.
    no_data : numpy.ndarray of bool
    segmentation : numpy.ndarray
        Source labels (0 = sky).

    Returns
    -------
    float
        NaN with fewer than `MIN_SKY_PIXELS` sky pixels.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> image = rng.normal(0.0, 1.1, (200, 200))
    >>> no_data = np.zeros(image.shape, bool)
    >>> labels = np.zeros(image.shape, int)
    >>> round(sky_noise_ratio(image, np.ones(image.shape), no_data, labels), 2)
    1.1
    """
    sky = ~no_data & (segmentation == 0) & (error > 0)
    n_sky = int(np.count_nonzero(sky))
    if n_sky < MIN_SKY_PIXELS:
        return float("nan")
    step = max(1, int(np.sqrt(n_sky / SKY_SAMPLE_PIXELS)))
    sample = sky[::step, ::step]
    z = (np.asarray(image[::step, ::step][sample], dtype=np.float64)
         / np.asarray(error[::step, ::step][sample], dtype=np.float64))
    return 1.4826 * float(np.median(np.abs(z - np.median(z))))


def add_sky_noise(error, sky_error, ratio):
    """Add the sky noise that ``err`` leaves out, in place.

    Each pixel's variance grows by ``(ratio² − 1) · sky_error²``: on the sky
    the uncertainty becomes ``ratio`` times ``err``; on a source, whose own
    Poisson noise ``err`` holds correctly, the same variance is added. The
    missing noise (the inputs' flat-field errors, drizzled like their other
    noise) has the drizzle's correlation, so the mosaic's ``noise_correlation``
    describes it too.

    Parameters
    ----------
    error : numpy.ndarray
        Per-pixel uncertainty (float32), modified in place.
    sky_error : numpy.ndarray
        The sky's per-pixel ``err``, a smooth map (e.g.
        `romosaic.catalog.psf.sky_error_map`).
    ratio : float
        `sky_noise_ratio`; nothing is done unless it is above 1.

    Returns
    -------
    numpy.ndarray
        ``error``.

    Examples
    --------
    >>> import numpy as np
    >>> error = np.array([1.0, 2.0], np.float32)
    >>> [round(float(v), 3) for v in add_sky_noise(error, np.ones(2, np.float32), 1.5)]
    [1.5, 2.291]
    """
    if not ratio > 1.0:
        return error
    extra = np.float32(ratio * ratio - 1.0)
    # A band of rows at a time: whole-image temporaries are 300 MB each on
    # a 75-Mpix mosaic.
    rows = max(1, _ROWS_VALUES // max(1, math.prod(error.shape[1:])))
    for start in range(0, len(error), rows):
        band = error[start:start + rows]
        np.square(band, out=band)
        band += extra * np.square(sky_error[start:start + rows], dtype=np.float32)
        np.sqrt(band, out=band)
    return error
