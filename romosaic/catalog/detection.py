"""Finding sources: smoothing with a Gaussian kernel and segmenting above a threshold.

The background-subtracted image is convolved with a normalised 2-D Gaussian
of FWHM ``kernel_fwhm`` pixels, and pixels above ``snr_threshold`` times the
noise *of the smoothed image* that form groups of at least ``npixels``
(8-connected) become sources (photutils `~photutils.segmentation.detect_sources`).
Optionally, groups are split at saddle points by photutils' deblender.

Detection is meant to be a property of the sky, not of the output grid. By
default the kernel is matched to a point source as the mosaic shows it
(`matched_kernel_fwhm`: the optical PSF of the filter, `PSF_FWHM_ARCSEC`,
blurred by the input and output pixels) and the minimum area is given in
arcsec² (`pixels_for_area`). The threshold is in units of the noise of the
smoothed image (`smoothed_noise_ratio`): smoothing averages neighbouring
pixels, whose noise drizzling has correlated, so the per-pixel noise says
little about the noise of the image that is thresholded, and how much less
depends on the pixel scale. With these, a source of a given brightness is
detected at the same significance on any grid.

A pixel-integrated 2-D Gaussian is the product of two 1-D pixel-integrated
Gaussians, so the convolution is done as two 1-D passes. On a 5000 × 5000
mosaic that is several times faster than a 2-D kernel and gives the same
result as photutils' ``make_2dgaussian_kernel`` to within its 10×
oversampling error.

Where a single input image covers the mosaic, outlier detection has nothing
to compare with, and a cosmic ray that survived ramp fitting stays in the
coadd as a bright, compact blob that passes any threshold.
`reject_cosmic_rays` drops such detections when they are significantly
*sharper than a point source*: nothing on the sky is narrower than the PSF,
while a cosmic ray is as narrow as an input pixel. The width used is the
minor-axis second moment of the unsmoothed light in a Gaussian window
(``minor_moment``): a track of pixels is thin across, however long it is.
The point-source width is measured on the mosaic itself, from bright sources
covered by two or more inputs (where outlier detection removed the cosmic
rays), as the densest clump of their widths. A detection is rejected only
where at most one input contributes at its peak, when its width is below
`SHARP_FRACTION` of the point sources' (and below `TAIL_FRACTION` of the
narrowest twentieth of the bright sources, for PSFs so undersampled that
stars themselves can look as narrow as a pixel), at more than
`SHARP_SIGNIFICANCE` standard deviations.

The width alone fails where the output pixels are as large as the input
pixels. The drizzle spreads each input pixel over the output pixels it
overlaps: one that lands at a sub-pixel offset ``u`` from the output grid
becomes a pair of pixels in the proportion ``1 − u : u``, which adds
``u(1 − u)`` (up to 0.25 pixel²) to its second moment along that axis. A
cosmic ray drizzled half-way between output pixels is then a flat 2 × 2
block nearly as wide as a point source. A star is broadened the same way,
so the grid's offset alone does not tell the two apart; what does is that
a cosmic ray's light is *only* that drizzled input pixel, and where it lies
is known from its centroid. So each detection is also compared with a
drizzled input pixel at its own centroid: a box of the input pixel's size
on the sky (times ``pixfrac``) integrated over the output pixels, measured
through the same window (``pixel_size`` of `minor_moment`). The *excess*
is the minor-axis moment of the difference of the two moment tensors: about
0 for a cosmic ray at any offset (a short track along rows or columns has
the same profile across it), and for a point source what its light spreads
beyond one input pixel. That is smallest for a star centred on the edge
between two input pixels of a grid aligned with the output's: its light
then falls almost all on two pixels, as a cosmic ray's half-way between
output pixels does. `point_source_excess_floor` computes this smallest
excess for a Gaussian PSF of the filter's FWHM, over all offsets; a
detection whose excess is below `EXCESS_FRACTION` of it (and of
`TAIL_FRACTION` × the bright sources' 5th percentile), by more than
`EXCESS_SIGNIFICANCE` standard deviations, is rejected too. For PSFs much
narrower than an input pixel (at 0.11″, F129 and bluer) the floor is
close to 0, and the test rejects only the brightest, most pixel-like
detections: there a star can look exactly like one input pixel, and only
other exposures can tell.
"""

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from photutils.segmentation import deblend_sources, detect_sources
from photutils.utils.exceptions import NoDetectionsWarning
from scipy.ndimage import correlate1d
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree
from scipy.special import erf

from ..errors import RomosaicInputError
from ..mosaic_planes import contributing_inputs
from .classify import LOCUS_MIN_SNR, MIN_LOCUS_SOURCES, half_sample_mode

__all__ = [
    "INPUT_PIXEL_SCALE",
    "PSF_FWHM_ARCSEC",
    "SHARP_FRACTION",
    "SHARP_SIGNIFICANCE",
    "TAIL_FRACTION",
    "CosmicRayRejection",
    "convolve_gaussian",
    "coverage_from_context",
    "above_threshold",
    "find_sources",
    "segment_above",
    "gaussian_kernel_1d",
    "kernel_size",
    "matched_kernel_fwhm",
    "measured_noise_ratio",
    "pixels_for_area",
    "psf_fwhm_for_filter",
    "smoothed_noise_ratio",
    "minor_moment",
    "drizzled_pixel_profile",
    "EXCESS_FRACTION",
    "EXCESS_SIGNIFICANCE",
    "point_source_excess_floor",
    "WindowMoments",
    "reject_cosmic_rays",
    "reject_wing_detections",
    "wing_envelope",
    "require_deblender",
    "segment_peaks",
]

log = logging.getLogger(__name__)

#: photutils' deblender settings: 32 exponentially spaced levels (its
#: default), and a component must hold 0.5% of the blend's flux to be split
#: off (SExtractor's DEBLEND_MINCONT; photutils' 0.1% split simulated
#: galaxies into fragments: 9 spurious entries against 6 on
#: benchmarks/accuracy_catalog.py's scenes at 0.055″, the same completeness).
DEBLEND_LEVELS = 32
DEBLEND_CONTRAST = 0.005

#: FWHM (arcsec) of the WFI's optical PSF per filter (plausible values for
#: Roman's diffraction-limited optics with jitter; F158's 0.128″ is between
#: the simulator's Gaussian, 0.15″, and its diffraction pattern, 0.136″).
PSF_FWHM_ARCSEC = {
    "F062": 0.058,
    "F087": 0.073,
    "F106": 0.087,
    "F129": 0.106,
    "F146": 0.105,
    "F158": 0.128,
    "F184": 0.146,
    "F213": 0.169,
}
#: Filter assumed when the mosaic names none (or one not in the table).
DEFAULT_PSF_FILTER = "F158"
#: Pixel size (arcsec) of the WFI detectors whose images make the mosaic.
INPUT_PIXEL_SCALE = 0.11
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: FWHM of the Gaussian with the variance of a unit box (2.3548 / sqrt(12)).
BOX_FWHM_FACTOR = FWHM_PER_SIGMA / math.sqrt(12.0)

#: Radius (arcsec) out to which a bright source's rings and spikes are modelled.
WING_RADIUS = 3.0
#: Sources whose wing envelope is measured: the brightest this many ...
WING_SOURCES = 15
#: ... with a smoothed peak at least this many times their threshold; with
#: fewer than `WING_MIN_SOURCES` of them (whose median a neighbour of one
#: cannot move), nothing is rejected.
WING_MIN_PEAK = 200.0
WING_MIN_SOURCES = 3
#: A detection must clear its threshold after this many times the wing
#: envelope of each brighter neighbour is subtracted (a margin for stars
#: whose rings or spikes are brighter than the median envelope's).
WING_MARGIN = 2.0

#: A detection is a cosmic ray candidate when its width (minor-axis second
#: moment in the window) is below this fraction of the point sources'. On
#: simulated data, most cosmic rays measure 0.06-0.34 of it and stars 0.8-1.1
#: (0.11″ and 0.055″ pixels, PSF FWHM 0.12-0.18″); on 0.11″ pixels those
#: drizzled half-way between output pixels up to 0.75 (the excess test).
SHARP_FRACTION = 0.5
#: ... and below this fraction of the 5th percentile of the bright sources' widths.
TAIL_FRACTION = 0.7
#: ... by at least this many standard deviations from the point-source width.
SHARP_SIGNIFICANCE = 5.0
#: A detection is a cosmic ray candidate too when its excess width over a
#: drizzled input pixel at its centroid is below this fraction of the
#: smallest excess a point source can show (`point_source_excess_floor`).
#: The floor is 0.062 pixel² for F158's 0.128″ PSF on 0.11″ pixels, 0.12 for
#: the simulator's 0.15″. On a simulated 0.11″ mosaic of one input rotated
#: against it, cosmic rays measure about 0 (95 % below 0.074, diagonal
#: tracks up to 0.11) and 95 % of the stars 0.13 or more.
EXCESS_FRACTION = 0.5
#: ... by at least this many standard deviations below the floor: a star
#: at the floor passes with probability 0.999.
EXCESS_SIGNIFICANCE = 3.0
#: Offsets per axis (of the input grid from the output grid, and of the star
#: within an input pixel) over which the floor is searched.
FLOOR_STEPS = 8
#: The measuring window's FWHM is this many times the detection kernel's:
#: wide enough to hold a point source's core, narrow enough to keep neighbours out.
WINDOW_FACTOR = 2.0
#: A detection can be rejected only if no pixel within this many window
#: sigmas of its peak is missing (no data, another source): a Gaussian cut
#: that far out loses under 2% of its windowed second moment.
INTACT_RADIUS = 2.0
#: Sources measured at a time (bounds the memory of the windows).
CHUNK = 2048


def psf_fwhm_for_filter(filter_name):
    """The optical PSF FWHM (arcsec) of a filter; F158's for an unknown one."""
    key = str(filter_name).upper() if filter_name is not None else DEFAULT_PSF_FILTER
    return PSF_FWHM_ARCSEC.get(key, PSF_FWHM_ARCSEC[DEFAULT_PSF_FILTER])


def matched_kernel_fwhm(psf_fwhm_arcsec, pixel_scale_arcsec, *,
                        input_pixel_scale=INPUT_PIXEL_SCALE):
    """FWHM in output pixels of the Gaussian matched to a point source in the mosaic.

    A star in a drizzled mosaic is the optical PSF blurred by the detector's
    pixels and again by the output pixels. The widths add in quadrature,
    each pixel counting as the Gaussian of a box's variance. Correlating
    with this Gaussian is the classic matched filter for point sources: it
    maximises their significance in the smoothed image (and a mismatch of
    20% costs only about 2% of it).

    Parameters
    ----------
    psf_fwhm_arcsec : float
        FWHM of the optical PSF, arcsec.
    pixel_scale_arcsec : float
        Output pixel size, arcsec.
    input_pixel_scale : float
        Detector pixel size, arcsec.

    Returns
    -------
    float
        Kernel FWHM in output pixels.

    Examples
    --------
    >>> round(matched_kernel_fwhm(0.128, 0.11), 2), round(matched_kernel_fwhm(0.128, 0.055), 2)
    (1.51, 2.78)
    """
    variance = psf_fwhm_arcsec**2 + (BOX_FWHM_FACTOR * input_pixel_scale) ** 2 + \
        (BOX_FWHM_FACTOR * pixel_scale_arcsec) ** 2
    return math.sqrt(variance) / pixel_scale_arcsec


def pixels_for_area(area_arcsec2, pixel_scale_arcsec):
    """Whole number of pixels (at least 1) covering an area of the sky.

    Examples
    --------
    >>> pixels_for_area(0.02, 0.11), pixels_for_area(0.02, 0.055)
    (2, 7)
    """
    return max(1, int(round(area_arcsec2 / pixel_scale_arcsec**2)))


def _kernel_2d(fwhm):
    kernel = gaussian_kernel_1d(fwhm)
    return np.outer(kernel, kernel).astype(np.float64)


def smoothed_noise_ratio(fwhm, correlation=None):
    """Noise of the smoothed image over the per-pixel noise, for flat noise.

    ``Var(Σ_a k_a n_a) = Σ_a Σ_b k_a k_b ρ(b − a) σ²`` for kernel ``k`` and
    the noise correlation ``ρ`` of neighbouring pixels (independent pixels:
    ``ρ = δ``, giving ``sqrt(Σ k²)``).

    Parameters
    ----------
    fwhm : float
        Kernel FWHM in pixels.
    correlation : numpy.ndarray, optional
        ``ρ`` of `romosaic.resample.noise_correlation.NoiseCorrelation`
        (odd square, centre 1); None for independent pixels.

    Returns
    -------
    float
    """
    kernel = _kernel_2d(fwhm)
    if correlation is None:
        return float(np.sqrt(np.sum(kernel**2)))
    # The kernel's autocorrelation, weighted by rho at each lag.
    auto = fftconvolve(kernel, kernel[::-1, ::-1], mode="full")
    rho = np.asarray(correlation, dtype=np.float64)
    ca, cr = auto.shape[0] // 2, rho.shape[0] // 2
    half = min(ca, cr)
    auto = auto[ca - half:ca + half + 1, ca - half:ca + half + 1]
    rho = rho[cr - half:cr + half + 1, cr - half:cr + half + 1]
    return float(np.sqrt(max(np.sum(auto * rho), 0.0)))


def measured_noise_ratio(image, smoothed, noise, no_data, *, step=3):
    """Noise of the smoothed image over the per-pixel noise, measured on the mosaic.

    For a mosaic that records no noise correlation: the robust scatter
    (1.4826 × MAD) of ``smoothed / noise`` over that of ``image / noise``,
    on every ``step``-th pixel with data. Faint sources widen the smoothed
    image's scatter a little more than the image's, so the ratio errs high
    (a more cautious threshold).

    Parameters
    ----------
    image, smoothed : numpy.ndarray
        Background-subtracted image and its smoothed version.
    noise : numpy.ndarray
        Per-pixel noise (> 0 where there is data).
    no_data : numpy.ndarray of bool
    step : int
        Sampling stride in each direction.

    Returns
    -------
    float or None
        None when too few pixels can be used.
    """
    good = ~no_data[::step, ::step]
    sigma = noise[::step, ::step][good]
    use = sigma > 0
    if np.count_nonzero(use) < 100:
        return None
    raw = image[::step, ::step][good][use] / sigma[use]
    smooth = smoothed[::step, ::step][good][use] / sigma[use]

    def scatter(values):
        return float(np.median(np.abs(values - np.median(values))))

    raw_scatter = scatter(raw)
    if not raw_scatter > 0:
        return None
    return scatter(smooth) / raw_scatter


def kernel_size(fwhm):
    """Odd kernel width covering ±1.5 FWHM (±3.5 sigma), at least 3 pixels."""
    half = max(1, int(math.ceil(1.5 * fwhm)))
    return 2 * half + 1


def gaussian_kernel_1d(fwhm, size=None):
    """A 1-D Gaussian integrated over each pixel, normalised to unit sum.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum in pixels (> 0).
    size : int, optional
        Odd number of pixels; default `kernel_size`.

    Returns
    -------
    numpy.ndarray
        float32 weights, centred.
    """
    size = kernel_size(fwhm) if size is None else int(size)
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    edges = np.arange(size + 1) - size / 2.0
    cumulative = 0.5 * (1.0 + erf(edges / (math.sqrt(2.0) * sigma)))
    weights = np.diff(cumulative)
    return (weights / weights.sum()).astype(np.float32)


def convolve_gaussian(image, fwhm):
    """Convolve an image with a normalised, pixel-integrated 2-D Gaussian.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image without NaNs (set pixels without data to 0 first: they
        then dilute, rather than poison, their neighbours).
    fwhm : float
        Kernel FWHM in pixels.

    Returns
    -------
    numpy.ndarray
        float32 image of the same shape. Pixels beyond the edges count as 0.
    """
    kernel = gaussian_kernel_1d(fwhm)
    out = correlate1d(np.asarray(image, dtype=np.float32), kernel, axis=0, mode="constant")
    return correlate1d(out, kernel, axis=1, mode="constant", output=out)


def require_deblender():
    """Raise `RomosaicInputError` unless photutils' deblender can run.

    photutils splits blends with scikit-image's watershed (a dependency of
    romosaic, imported only when a catalog is made); without it deblending
    would fail only when the first blend is found, after most of the work.
    """
    try:
        import skimage.segmentation  # noqa: F401
    except ImportError:
        raise RomosaicInputError(
            "deblend=True needs the scikit-image package (pip install scikit-image), "
            "or set deblend=False") from None


def find_sources(detection_image, threshold, npixels, mask, *, deblend=False):
    """Segment the detection image.

    `above_threshold` followed by `segment_above`.

    Parameters
    ----------
    detection_image : numpy.ndarray
        The convolved, background-subtracted image.
    threshold : numpy.ndarray
        Per-pixel threshold (``snr_threshold`` × noise).
    npixels : int
        Minimum number of connected pixels above the threshold.
    mask : numpy.ndarray of bool
        Pixels that may not belong to a source.
    deblend : bool
        Split blended sources.

    Returns
    -------
    photutils.segmentation.SegmentationImage or None
        None when nothing is detected.
    """
    return segment_above(above_threshold(detection_image, threshold, mask), npixels,
                         detection_image=detection_image, deblend=deblend)


def above_threshold(detection_image, threshold, mask=None):
    """Pixels of the detection image above the threshold and outside the mask.

    Made a band of rows at a time: the comparison and the inverted mask of
    a whole mosaic are image-sized temporaries.

    Parameters
    ----------
    detection_image : numpy.ndarray
        The convolved, background-subtracted image.
    threshold : float or numpy.ndarray
        Per-pixel threshold, or one for all pixels.
    mask : numpy.ndarray of bool, optional
        Pixels that may not belong to a source.

    Returns
    -------
    numpy.ndarray of bool

    Examples
    --------
    >>> image = np.array([[0.0, 2.0], [3.0, 1.0]])
    >>> above_threshold(image, 1.5, image == 3.0).tolist()
    [[False, True], [False, False]]
    """
    detection_image = np.asarray(detection_image)
    threshold = np.broadcast_to(threshold, detection_image.shape)
    above = np.empty(detection_image.shape, bool)
    rows = max(1, _BAND_PIXELS // max(1, math.prod(detection_image.shape[1:])))
    with np.errstate(invalid="ignore"):
        for start in range(0, len(above), rows):
            band = slice(start, start + rows)
            np.greater(detection_image[band], threshold[band], out=above[band])
            if mask is not None:
                above[band] &= ~mask[band]
    return above


def segment_above(above, npixels, *, detection_image=None, deblend=False):
    """Segment the pixels above the threshold into sources.

    Groups of at least ``npixels`` 8-connected pixels of ``above`` are
    labelled 1 ... n (photutils `~photutils.segmentation.detect_sources`);
    with ``deblend``, each is split at the saddle points of
    ``detection_image`` by photutils' deblender, and the labels are made
    consecutive again.

    Parameters
    ----------
    above : numpy.ndarray of bool
        Pixels above the threshold that may belong to a source
        (`above_threshold`).
    npixels : int
        Minimum number of connected pixels of a source.
    detection_image : numpy.ndarray, optional
        The image that was thresholded; needed to deblend.
    deblend : bool
        Split blended sources.

    Returns
    -------
    photutils.segmentation.SegmentationImage or None
        None when nothing is detected.
    """
    with warnings.catch_warnings():
        # "No sources were found" is an ordinary outcome here, reported by the caller.
        warnings.simplefilter("ignore", NoDetectionsWarning)
        # The mask thresholded at 0 is itself: the sources are those of the
        # detection image above its threshold, without a second float image.
        segmentation = detect_sources(np.asarray(above).view(np.uint8), 0, npixels)
    if segmentation is None:
        return None
    log.info("detected %d sources above the threshold", segmentation.n_labels)
    if deblend:
        n_before = segmentation.n_labels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoDetectionsWarning)
            deblended = deblend_sources(
                detection_image, segmentation, npixels, n_levels=DEBLEND_LEVELS,
                contrast=DEBLEND_CONTRAST, relabel=False, progress_bar=False)
        # The same consecutive labels as the deblender's own relabelling,
        # made once the map before deblending is released: it, the deblended
        # map and the relabelled one are 300 MB each on a 75-Mpix mosaic.
        del segmentation
        deblended.relabel_consecutive()
        segmentation = deblended
        log.info("deblending: %d sources became %d", n_before, segmentation.n_labels)
    return segmentation


#: Pixels per band of rows in `above_threshold`.
_BAND_PIXELS = 1 << 22


@dataclass
class CosmicRayRejection:
    """What `reject_cosmic_rays` did, for the catalog's metadata.

    Attributes
    ----------
    rejected : int
        Detections removed.
    point_source_width : float or None
        Minor-axis second moment of point sources in the window (pixels²);
        None when it could not be measured.
    threshold : float or None
        Widths below this (pixels²) were candidates.
    excess_floor : float or None
        Smallest excess width over a drizzled input pixel that a point
        source can show (pixels²); None when not computed.
    excess_threshold : float or None
        Excesses below this (pixels²) were candidates.
    notes : list of str
        Why nothing could be rejected, if so.
    """

    rejected: int = 0
    point_source_width: float = None
    threshold: float = None
    excess_floor: float = None
    excess_threshold: float = None
    notes: list = field(default_factory=list)

    def meta(self):
        """Catalog metadata entries."""
        return {
            "cosmic_rays_rejected": int(self.rejected),
            "point_source_width_pix2": self.point_source_width,
            "cosmic_ray_width_threshold_pix2": self.threshold,
            "point_source_excess_floor_pix2": self.excess_floor,
            "cosmic_ray_excess_threshold_pix2": self.excess_threshold,
        }


def coverage_from_context(context, weight=None):
    """Number of input images contributing to each pixel of a mosaic.

    Parameters
    ----------
    context : numpy.ndarray
        The mosaic's uint32 context image, shape ``(n_planes, ny, nx)``: bit
        *i* of plane *i* // 32 is set where input *i* contributed.
    weight : numpy.ndarray, optional
        The mosaic's weight map. When given, a context that cannot describe
        the mosaic (another shape, or no input anywhere the weight says there
        is data, as in a placeholder array) gives None.

    Returns
    -------
    numpy.ndarray or None
        uint8 counts (saturating at 255), shape ``(ny, nx)``.
    """
    context = np.asarray(context)
    if context.ndim == 2:
        context = context[np.newaxis]
    if weight is not None and (context.ndim != 3 or context.shape[1:] != np.shape(weight)):
        return None
    counts = np.minimum(contributing_inputs(context), 255).astype(np.uint8)
    if weight is not None and not np.any(counts[np.asarray(weight) > 0]):
        return None
    return counts


class WindowMoments(NamedTuple):
    """What `minor_moment` measures of each source (arrays, one value per source).

    Attributes
    ----------
    width, width_err : numpy.ndarray
        Minor-axis second moment (pixels²) and its one-sigma uncertainty from
        the error array (NaN where the windowed flux is not positive).
    snr : numpy.ndarray
        Signal-to-noise ratio of the windowed flux.
    clean : numpy.ndarray of bool
        Whether no pixel of the window was left out.
    trusted : numpy.ndarray of bool
        Whether ``width`` (and ``excess``) is not narrowed by the cuts: none
        within `INTACT_RADIUS` window sigmas of the peak, or a straight cut.
    excess, excess_err : numpy.ndarray
        Minor-axis moment of the source's moment tensor less that of a
        drizzled input pixel at its centroid, and its uncertainty (pixels²);
        NaN when no ``pixel_size`` was given.
    """

    width: np.ndarray
    width_err: np.ndarray
    snr: np.ndarray
    clean: np.ndarray
    trusted: np.ndarray
    excess: np.ndarray
    excess_err: np.ndarray


def drizzled_pixel_profile(offset, size):
    """One axis of an input pixel drizzled onto unit output pixels.

    The overlap of a box ``size`` output pixels wide, centred ``offset``
    pixels from an output pixel's centre, with that pixel. The 2-D image of
    a drizzled input pixel (a cosmic ray) is the product of the profiles of
    the two axes.

    Parameters
    ----------
    offset : numpy.ndarray
        Distance of each output pixel's centre from the box's centre, pixels.
    size : float
        Width of the box in output pixels: the input pixel's size over the
        output pixel's, times ``pixfrac``.

    Returns
    -------
    numpy.ndarray
        Overlap lengths (they sum to ``size`` over a row of pixels).

    Examples
    --------
    >>> import numpy as np
    >>> drizzled_pixel_profile(np.array([-1.25, -0.25, 0.75]), 1.0).tolist()
    [0.0, 0.75, 0.25]
    """
    offset = np.asarray(offset, dtype=np.float64)
    half = 0.5 * float(size)
    return np.clip(np.minimum(offset + half, 0.5) - np.maximum(offset - half, -0.5), 0.0, None)


def _minor_axis(m_xx, m_yy, m_xy):
    """Minor eigenvalue of 2 × 2 moment tensors and the angle of its axis."""
    mean = 0.5 * (m_xx + m_yy)
    spread = np.hypot(0.5 * (m_xx - m_yy), m_xy)
    angle = 0.5 * np.arctan2(2.0 * m_xy, m_xx - m_yy) + 0.5 * np.pi
    return mean - spread, angle


def minor_moment(image, labels, error, no_data, peaks_y, peaks_x, own_labels, window_sigma,
                 iterations=4, *, pixel_size=None):
    """Width of each source: its minor-axis second moment in a Gaussian window.

    The window (standard deviation ``window_sigma`` pixels) is re-centred on
    the windowed centroid a few times, starting at the peak. Pixels without
    data or belonging to another source are left out, and so are their
    mirror images about the peak, so that a cut-off window stays symmetric.
    A window cut close to the peak still makes a source look narrow across
    the cut. When the cut is straight along rows or columns (the edge of
    the array or of the coverage), the moment *along* the cut is used
    instead: over a strip of full length it is never below the source's
    minor-axis width.

    With ``pixel_size``, the same moments are taken of a drizzled input
    pixel (`drizzled_pixel_profile` along each axis) centred on the
    source's windowed centroid, on the same pixels and through the same
    window, and the *excess* is the minor-axis moment of the source's moment
    tensor less the pixel's: what the source's width holds beyond the
    spreading of one input pixel over the output grid at that position.

    Parameters
    ----------
    image : numpy.ndarray
        Background-subtracted, unsmoothed image (0 where ``no_data``).
    labels : numpy.ndarray
        Segmentation labels.
    error : numpy.ndarray
        Per-pixel one-sigma uncertainty.
    no_data : numpy.ndarray of bool
        Pixels without data.
    peaks_y, peaks_x : numpy.ndarray of int
        Starting pixel of each source.
    own_labels : numpy.ndarray of int
        Each source's label.
    window_sigma : float
        Window standard deviation, pixels.
    iterations : int
        Re-centring passes.
    pixel_size : float, optional
        Width of a drizzled input pixel in output pixels (input pixel size
        over output pixel size, times ``pixfrac``); None: no excess.

    Returns
    -------
    WindowMoments
    """
    half = int(math.ceil(3.0 * window_sigma))
    offsets = np.arange(-half, half + 1)
    ny, nx = image.shape
    rows = np.asarray(peaks_y)[:, None, None] + offsets[None, :, None]
    cols = np.asarray(peaks_x)[:, None, None] + offsets[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    rows_c, cols_c = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    values = image[rows_c, cols_c].astype(np.float64)
    sigma = error[rows_c, cols_c].astype(np.float64)
    others = labels[rows_c, cols_c]
    usable = inside & ~no_data[rows_c, cols_c] & (
        (others == 0) | (others == np.asarray(own_labels)[:, None, None]))
    usable &= usable[:, ::-1, ::-1]
    radius = np.hypot(offsets[:, None], offsets[None, :])
    cut_radius = np.where(usable, np.inf, radius[None]).min(axis=(1, 2))
    clean = np.isinf(cut_radius)
    # A straight cut leaves a rectangle of usable pixels, full along one axis.
    rows_used = usable.any(axis=2)
    cols_used = usable.any(axis=1)
    rectangle = np.all(usable == (rows_used[:, :, None] & cols_used[:, None, :]), axis=(1, 2))
    close = cut_radius <= INTACT_RADIUS * window_sigma
    along_y = rectangle & close & rows_used.all(axis=1)
    along_x = rectangle & close & cols_used.all(axis=1) & ~along_y

    x_c = np.asarray(peaks_x, dtype=np.float64)
    y_c = np.asarray(peaks_y, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(iterations):
            dx, dy, window = _window(usable, rows, cols, x_c, y_c, window_sigma)
            weighted = window * values
            flux = weighted.sum(axis=(1, 2))
            new_x = x_c + (weighted * dx).sum(axis=(1, 2)) / flux
            new_y = y_c + (weighted * dy).sum(axis=(1, 2)) / flux
            # A faint source's window can wander off; keep it near the peak.
            ok = (np.isfinite(new_x) & np.isfinite(new_y) & (np.abs(new_x - peaks_x) <= 1.5)
                  & (np.abs(new_y - peaks_y) <= 1.5))
            x_c = np.where(ok, new_x, x_c)
            y_c = np.where(ok, new_y, y_c)
        dx, dy, window = _window(usable, rows, cols, x_c, y_c, window_sigma)
        weighted = window * values
        flux = weighted.sum(axis=(1, 2))
        m_xx = (weighted * dx * dx).sum(axis=(1, 2)) / flux
        m_yy = (weighted * dy * dy).sum(axis=(1, 2)) / flux
        m_xy = (weighted * dx * dy).sum(axis=(1, 2)) / flux
        width, angle = _minor_axis(m_xx, m_yy, m_xy)
        width = np.where(along_y, m_yy, np.where(along_x, m_xx, width))
        angle = np.where(along_y, 0.5 * np.pi, np.where(along_x, 0.0, angle))
        width_err = _moment_error(window, dx, dy, angle, width, sigma, flux)
        snr = flux / np.sqrt((window**2 * sigma**2).sum(axis=(1, 2)))
        excess = np.full(width.shape, np.nan)
        excess_err = np.full(width.shape, np.nan)
        if pixel_size is not None:
            model = window * drizzled_pixel_profile(dx, pixel_size) * \
                drizzled_pixel_profile(dy, pixel_size)
            model_flux = model.sum(axis=(1, 2))
            d_xx = m_xx - (model * dx * dx).sum(axis=(1, 2)) / model_flux
            d_yy = m_yy - (model * dy * dy).sum(axis=(1, 2)) / model_flux
            d_xy = m_xy - (model * dx * dy).sum(axis=(1, 2)) / model_flux
            excess, excess_angle = _minor_axis(d_xx, d_yy, d_xy)
            excess = np.where(along_y, d_yy, np.where(along_x, d_xx, excess))
            excess_angle = np.where(along_y, 0.5 * np.pi,
                                    np.where(along_x, 0.0, excess_angle))
            # The pixel's moments depend on the data only through the
            # centroid; the error is that of the source's moment along the axis.
            cos, sin = np.cos(excess_angle), np.sin(excess_angle)
            along = m_xx * cos**2 + 2.0 * m_xy * sin * cos + m_yy * sin**2
            excess_err = _moment_error(window, dx, dy, excess_angle, along, sigma, flux)
    bad = ~(flux > 0)
    for column in (width, width_err, snr, excess, excess_err):
        column[bad] = np.nan
    trusted = ~close | along_x | along_y
    return WindowMoments(width, width_err, snr, clean, trusted, excess, excess_err)


def _moment_error(window, dx, dy, angle, moment, sigma, flux):
    """Uncertainty of a windowed second moment along ``angle``, from the pixel errors.

    Along a fixed axis the moment is linear in the pixel values (for a
    given flux), so its variance is the error-weighted sum of its gradient.
    """
    across = dx * np.cos(angle)[:, None, None] + dy * np.sin(angle)[:, None, None]
    gradient = window * (across**2 - moment[:, None, None])
    return np.sqrt((gradient**2 * sigma**2).sum(axis=(1, 2))) / flux


def _drizzled_star_axis(size, position, psf_sigma, input_pixel, pixel_size, offset):
    """One axis of a pixel-integrated Gaussian star drizzled from an input grid.

    Input pixels (``input_pixel`` output pixels wide) have their centres at
    ``k * input_pixel + offset``; each is drizzled as a box ``pixel_size``
    wide, and an output pixel is the overlap-weighted mean of the boxes
    that reach it (0 where none does).
    """
    n_inputs = int(math.ceil(size / input_pixel)) + 2
    centres = (np.arange(-1, n_inputs) * input_pixel + offset)[None, :]
    edges = (centres + np.array([[-0.5], [0.5]]) * input_pixel - position) / \
        (math.sqrt(2.0) * psf_sigma)
    values = 0.5 * (erf(edges[1]) - erf(edges[0]))
    overlap = drizzled_pixel_profile(np.arange(size)[:, None] - centres, pixel_size)
    total = overlap.sum(axis=1)
    return np.where(total > 0, overlap @ values / np.where(total > 0, total, 1.0), 0.0)


def point_source_excess_floor(psf_fwhm, input_pixel, pixel_size, window_sigma,
                              steps=FLOOR_STEPS):
    """Smallest excess width over a drizzled input pixel that a point source can show.

    A Gaussian star of the PSF's FWHM is integrated over input pixels and
    drizzled onto the output grid, for ``steps`` offsets of the input grid
    from the output grid and ``steps`` positions of the star within an input
    pixel (the same along both axes, the least favourable case); each image
    is measured as `minor_moment` measures a detection, and the smallest
    excess is returned. It is smallest for a star centred on the edge
    between two input pixels, on a grid aligned with the output's.

    Parameters
    ----------
    psf_fwhm : float
        FWHM of the optical PSF, output pixels.
    input_pixel : float
        Size of an input pixel, output pixels.
    pixel_size : float
        Width of a drizzled input pixel, output pixels (``input_pixel``
        times ``pixfrac``).
    window_sigma : float
        Standard deviation of the measuring window, pixels.
    steps : int
        Offsets tried per axis for each of the two offsets.

    Returns
    -------
    float
        Excess (pixels²); at or below 0 when a star can look like one pixel.

    Examples
    --------
    >>> round(point_source_excess_floor(0.128 / 0.11, 1.0, 1.0, 1.7), 3)
    0.062
    """
    psf_sigma = psf_fwhm / FWHM_PER_SIGMA
    half = int(math.ceil(3.0 * window_sigma + psf_sigma)) + 2
    tile = 2 * half + 1
    grid_offsets = np.arange(steps) / steps
    positions = np.arange(steps) / steps * input_pixel
    image = np.zeros((tile, tile * steps * steps))
    peaks = []
    for i, (offset, position) in enumerate(
            (o, p) for o in grid_offsets for p in positions):
        profile = _drizzled_star_axis(tile, half + offset + position, psf_sigma, input_pixel,
                                      pixel_size, half + offset)
        image[:, i * tile:(i + 1) * tile] = np.outer(profile, profile)
        peaks.append(i * tile + half + int(round(offset + position)))
    peaks_x = np.asarray(peaks)
    peaks_y = np.full(peaks_x.size, half)
    # Each tile's star is its own source: the window of one never reaches the next.
    labels = np.repeat(np.arange(1, peaks_x.size + 1), tile)[None, :].repeat(tile, axis=0)
    moments = minor_moment(image, labels, np.ones(image.shape), np.zeros(image.shape, bool),
                           peaks_y, peaks_x, np.arange(1, peaks_x.size + 1), window_sigma,
                           pixel_size=pixel_size)
    return float(np.nanmin(moments.excess))


def segment_peaks(image, label_image, labels):
    """Row and column of the brightest pixel of each segment.

    One sort of the segment pixels by (label, value), rather than scipy's
    ``maximum_position``, which takes tens of seconds on a skycell.

    Parameters
    ----------
    image : numpy.ndarray
        Values to maximise (no NaNs).
    label_image : numpy.ndarray
        Segmentation labels (0 = no source).
    labels : numpy.ndarray
        Labels wanted, each present in ``label_image``.

    Returns
    -------
    rows, cols : numpy.ndarray of int64
    """
    pixels = np.flatnonzero(label_image)
    owner = label_image.ravel()[pixels]
    order = np.lexsort((image.ravel()[pixels], owner))
    owner = owner[order]
    last = np.append(np.flatnonzero(np.diff(owner)), owner.size - 1)
    brightest = pixels[order[last]][np.searchsorted(owner[last], labels)]
    return np.divmod(brightest.astype(np.int64), label_image.shape[1])


def _window(usable, rows, cols, x_c, y_c, window_sigma):
    """Offsets from the centres and the Gaussian window, zero on unusable pixels."""
    dx = cols - x_c[:, None, None]
    dy = rows - y_c[:, None, None]
    return dx, dy, np.where(usable, np.exp(-(dx**2 + dy**2) / (2.0 * window_sigma**2)), 0.0)


def reject_cosmic_rays(segmentation, image, detection_image, error, no_data, coverage,
                       kernel_fwhm, *, point_source_fwhm=None, pixel_size=None,
                       input_pixel=None, psf_fwhm=None, peaks=None):
    """Remove detections sharper than a point source where one input covers the mosaic.

    See the module notes for the reasoning and the criteria.

    Parameters
    ----------
    segmentation : photutils.segmentation.SegmentationImage
        The detected sources; modified in place (rejected labels removed,
        the rest renumbered 1 ... n in their order).
    image : numpy.ndarray
        Background-subtracted, unsmoothed mosaic (0 where ``no_data``).
    detection_image : numpy.ndarray or None
        The smoothed image that was segmented (its peak starts each
        window); not used when ``peaks`` are given.
    error : numpy.ndarray
        Per-pixel one-sigma uncertainty (0 where ``no_data``).
    no_data : numpy.ndarray of bool
        Pixels without data.
    coverage : numpy.ndarray or None
        Number of input images contributing to each pixel; None: nothing is
        rejected (without it, a cosmic ray cannot be told from a source that
        several exposures saw).
    kernel_fwhm : float
        FWHM of the detection kernel, pixels; sets the measuring window.
    point_source_fwhm : float, optional
        FWHM (pixels) of a point source in the mosaic, from the PSF. When
        too few bright sources show the point-source width (an empty field),
        the width of a Gaussian of this FWHM in the window stands in for it.
    pixel_size : float, optional
        Width, in output pixels, of an input pixel drizzled onto the mosaic
        (input over output pixel size, times ``pixfrac``).
    input_pixel : float, optional
        Size of an input pixel in output pixels; default ``pixel_size``.
    psf_fwhm : float, optional
        FWHM (pixels) of the optical PSF. With it and ``pixel_size``,
        detections whose width is hardly more than a drizzled input pixel's
        at their centroid are rejected too (the excess test of the module
        notes).
    peaks : tuple of numpy.ndarray, optional
        Rows and columns of the pixel starting each segment's window, in
        label order; default: `segment_peaks` of ``detection_image``.

    Returns
    -------
    segmentation : photutils.segmentation.SegmentationImage or None
        None when every detection was rejected.
    rejection : CosmicRayRejection
    """
    rejection = CosmicRayRejection()
    if coverage is None:
        return segmentation, rejection
    labels = np.asarray(segmentation.labels)
    if peaks is None:
        peaks = segment_peaks(detection_image, segmentation.data, labels)
    peaks_y, peaks_x = peaks
    window_sigma = WINDOW_FACTOR * kernel_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    # In chunks: each source takes a few hundred window pixels per array.
    parts = [minor_moment(image, segmentation.data, error, no_data, peaks_y[i:i + CHUNK],
                          peaks_x[i:i + CHUNK], labels[i:i + CHUNK], window_sigma,
                          pixel_size=pixel_size)
             for i in range(0, labels.size, CHUNK)]
    moments = WindowMoments(*(np.concatenate(column) for column in zip(*parts, strict=True)))
    width, width_err = moments.width, moments.width_err
    covered = np.asarray(coverage)[peaks_y, peaks_x]
    # Where two or more inputs overlap, outlier detection took the cosmic
    # rays out: bright sources there define what a point source looks like.
    locus_sample = moments.clean & (covered >= 2) & np.isfinite(width) & \
        (moments.snr >= LOCUS_MIN_SNR)
    if not np.any(covered <= 1):
        return segmentation, rejection
    excess_reference = None
    if pixel_size is not None and psf_fwhm is not None:
        excess_reference = rejection.excess_floor = point_source_excess_floor(
            psf_fwhm, pixel_size if input_pixel is None else input_pixel, pixel_size,
            window_sigma)
    if np.count_nonzero(locus_sample) >= MIN_LOCUS_SOURCES:
        locus = half_sample_mode(width[locus_sample])
        tail = float(np.percentile(width[locus_sample], 5.0))
        if excess_reference is not None:
            # Stars narrower than the PSF says (a wrong filter) lower it.
            excess_reference = min(excess_reference, TAIL_FRACTION * float(
                np.percentile(moments.excess[locus_sample], 5.0)))
    elif point_source_fwhm is not None:
        # A Gaussian of variance s² in a Gaussian window of variance w² has
        # the windowed second moment 1 / (1/s² + 1/w²).
        star = (point_source_fwhm / FWHM_PER_SIGMA) ** 2
        locus = tail = 1.0 / (1.0 / star + 1.0 / window_sigma**2)
        rejection.notes.append(
            f"only {np.count_nonzero(locus_sample)} bright, clean sources where two or more "
            "inputs overlap: the point-source width is taken from the PSF")
        log.info("%s", rejection.notes[-1])
    else:
        rejection.notes.append(
            f"only {np.count_nonzero(locus_sample)} bright, clean sources where two or more "
            "inputs overlap: the point-source width is unknown and no detection was "
            "rejected as a cosmic ray")
        log.warning("%s", rejection.notes[-1])
        return segmentation, rejection
    threshold = min(SHARP_FRACTION * locus, TAIL_FRACTION * tail)
    rejection.point_source_width = float(locus)
    rejection.threshold = float(threshold)
    # A window cut close to the peak in an irregular way (a corner, a
    # neighbour) can make any source look narrow: such detections are kept.
    candidates = moments.trusted & (covered <= 1)
    with np.errstate(invalid="ignore"):
        sharp = candidates & (width < threshold) & \
            (locus - width > SHARP_SIGNIFICANCE * width_err)
        if excess_reference is not None:
            rejection.excess_threshold = EXCESS_FRACTION * excess_reference
            sharp |= candidates & (moments.excess < rejection.excess_threshold) & \
                (excess_reference - moments.excess > EXCESS_SIGNIFICANCE * moments.excess_err)
    rejection.rejected = int(np.count_nonzero(sharp))
    log.info("point-source width %.3g px2, excess floor %s px2; %d detections sharper than "
             "%.3g px2 or than a drizzled input pixel where one input covers the mosaic "
             "rejected as cosmic rays", locus, rejection.excess_floor, rejection.rejected,
             threshold)
    if rejection.rejected == labels.size:
        return None, rejection
    if rejection.rejected:
        segmentation.remove_labels(labels[sharp], relabel=True)
    return segmentation, rejection


def wing_envelope(detection_image, no_data, peaks_y, peaks_x, peak_values, radius_pix):
    """Brightest fraction of a source's peak at each distance: its rings and spikes.

    For each of the brightest sources (up to `WING_SOURCES`) the smoothed
    image is divided by the source's peak, and its maximum over each ring of
    one pixel's width is taken: the maximum follows the rings and the
    diffraction spikes, whatever their direction. The envelope is the median
    over the sources (a neighbour of one of them does not move it), made
    non-increasing outwards.

    Parameters
    ----------
    detection_image : numpy.ndarray
        The smoothed, background-subtracted image.
    no_data : numpy.ndarray of bool
    peaks_y, peaks_x : numpy.ndarray of int
        Peak pixels of the sources to use, brightest first.
    peak_values : numpy.ndarray
        Their smoothed peak values.
    radius_pix : int
        Outer radius, pixels.

    Returns
    -------
    numpy.ndarray or None
        Envelope at integer radii 0 ... ``radius_pix``; None with fewer than
        `WING_MIN_SOURCES` sources whose surroundings are fully covered.
    """
    ny, nx = detection_image.shape
    offsets = np.arange(-radius_pix, radius_pix + 1)
    ring = np.rint(np.hypot(offsets[:, None], offsets[None, :])).astype(np.int64)
    inside = ring <= radius_pix
    profiles = []
    for y, x, peak in zip(peaks_y, peaks_x, peak_values, strict=True):
        if len(profiles) == WING_SOURCES:
            break
        if y < radius_pix or x < radius_pix or y >= ny - radius_pix or x >= nx - radius_pix:
            continue
        cut = (slice(y - radius_pix, y + radius_pix + 1), slice(x - radius_pix, x + radius_pix + 1))
        if no_data[cut].any():
            continue
        values = detection_image[cut] / peak
        profile = np.full(radius_pix + 1, -np.inf)
        np.maximum.at(profile, ring[inside], values[inside])
        profiles.append(profile)
    if len(profiles) < WING_MIN_SOURCES:
        return None
    envelope = np.median(np.asarray(profiles), axis=0)
    return np.maximum.accumulate(np.clip(envelope, 0.0, None)[::-1])[::-1]


def reject_wing_detections(segmentation, detection_image, threshold_at_peak, peaks_y, peaks_x,
                           no_data, pixel_scale_arcsec):
    """Remove detections that are only a brighter source's rings or spikes.

    A real PSF has rings and diffraction spikes; around a bright star they
    clear any threshold and become detections of their own, which no true
    source explains. Much as SExtractor's CLEAN does, each detection is
    checked against every brighter source within `WING_RADIUS`: the
    neighbour's light there is at most `WING_MARGIN` × its peak × the wing
    envelope (measured on the mosaic's brightest sources, `wing_envelope`),
    and a detection whose smoothed peak does not clear its threshold once
    that light is subtracted is removed. Only sources bright enough that
    their wings can reach a threshold matter, so the check costs little.

    Parameters
    ----------
    segmentation : photutils.segmentation.SegmentationImage
        Modified in place (labels removed and renumbered).
    detection_image : numpy.ndarray
        The smoothed image that was segmented.
    threshold_at_peak : numpy.ndarray
        The threshold at each segment's peak, in label order.
    peaks_y, peaks_x : numpy.ndarray of int
        Each segment's peak pixel, in label order.
    no_data : numpy.ndarray of bool
    pixel_scale_arcsec : float

    Returns
    -------
    removed : int
        Detections removed.
    envelope : numpy.ndarray or None
        The wing envelope used (None: too few sources bright enough to
        measure it, and nothing removed).
    """
    labels = np.asarray(segmentation.labels)
    peaks = detection_image[peaks_y, peaks_x].astype(np.float64)
    order = np.argsort(-peaks)
    strong = order[peaks[order] >= WING_MIN_PEAK * threshold_at_peak[order]]
    radius_pix = int(math.ceil(WING_RADIUS / pixel_scale_arcsec))
    envelope = wing_envelope(detection_image, no_data, peaks_y[strong], peaks_x[strong],
                             peaks[strong], radius_pix)
    if envelope is None:
        return 0, None
    # Only sources whose wings can reach the lowest threshold can matter (the
    # envelope falls outwards, so its value one pixel out bounds them).
    floor = float(np.min(threshold_at_peak))
    sources = np.flatnonzero(peaks * WING_MARGIN * envelope[1] >= floor)
    points = np.column_stack([peaks_x, peaks_y]).astype(np.float64)
    tree = cKDTree(points)
    wing_light = np.zeros(labels.size)
    for index in sources:
        near = np.asarray(tree.query_ball_point(points[index], radius_pix), dtype=np.int64)
        near = near[peaks[near] < peaks[index]]
        if near.size == 0:
            continue
        distance = np.hypot(*(points[near] - points[index]).T)
        light = WING_MARGIN * peaks[index] * envelope[np.minimum(np.rint(distance).astype(int),
                                                                 radius_pix)]
        np.add.at(wing_light, near, light)
    wings = peaks - wing_light < threshold_at_peak
    removed = int(np.count_nonzero(wings))
    if removed:
        log.info("%d detections are only the rings or spikes of brighter sources", removed)
        segmentation.remove_labels(labels[wings], relabel=True)
    return removed, envelope
