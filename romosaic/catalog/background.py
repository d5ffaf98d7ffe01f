"""The mosaic's background level and background noise.

The background is the sigma-clipped median in boxes of about ``bkg_boxsize``
pixels (photutils `~photutils.background.Background2D`), smoothed with a 3 × 3
median filter of the box values and interpolated between box centres.

The noise used for detection combines two sources of information:

* the *measured* scatter of the background pixels (sigma-clipped standard
  deviation per box), which is what really fluctuates in the image: it
  includes the drizzle's pixel-to-pixel correlation and anything the error
  model misses;
* the mosaic's ``weight`` map, which follows the depth pixel by pixel: a
  dither gap covered by one exposure instead of four is twice as noisy, on
  scales far smaller than a background box.

The residual image is scaled by ``sqrt(weight)`` (making its noise
uniform wherever the weight map describes the depth), its sigma-clipped
scatter is measured per box, and the result is divided by ``sqrt(weight)``
again. This is SourceExtractor's ``WEIGHT_TYPE MAP_WEIGHT`` scheme. The
mosaic's ``err`` array is not used for detection. It includes each source's
own Poisson noise, which would raise the threshold on the sources. It also
ignores the correlation between drizzled pixels.
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from astropy.stats import SigmaClip, sigma_clipped_stats
from photutils.background import Background2D, MedianBackground, StdBackgroundRMS
from scipy.interpolate import CubicSpline

__all__ = ["BackgroundEstimate", "box_tiling", "estimate_background", "typical_value"]

log = logging.getLogger(__name__)

#: Sigma clipping of the background statistics (photutils' defaults).
CLIP_SIGMA = 3.0
CLIP_ITERS = 10

#: A box enters the background map when at least this percentage of its
#: pixels has data. Mosaics have large empty margins (a rotated or partially
#: covered skycell), so boxes on the edge of the coverage must still count;
#: even 10% of a 1000-pixel box is 10^5 pixels.
_MAX_MASKED_PERCENT = 90.0

#: Boxes with more pixels than this are sampled (see `_box_maps`).
SAMPLE_PIXELS = 250_000

#: Fewer usable pixels than this and no statistic is attempted.
MIN_BACKGROUND_PIXELS = 16


@dataclass
class BackgroundEstimate:
    """Background level and noise maps of an image.

    Attributes
    ----------
    background : numpy.ndarray
        Background level (float32, the image's units); 0 where there is no data.
    rms : numpy.ndarray
        One-sigma noise of a single pixel (float32); 0 where there is no data.
    method : str
        ``"Background2D"`` (boxes) or ``"global"`` (one box for the whole image).
    box_size : tuple of int
        ``(ny, nx)`` of the boxes actually used.
    weighted_noise : bool
        Whether the noise follows the weight map (see the module notes).
    median_background, median_rms : float
        Medians over the pixels with data, for the record.
    notes : list of str
        Anything a user should know (fall-backs taken).
    """

    background: np.ndarray
    rms: np.ndarray
    method: str
    box_size: tuple
    weighted_noise: bool
    median_background: float
    median_rms: float
    notes: list = field(default_factory=list)


def box_tiling(length, boxsize):
    """Box length that tiles ``length`` pixels into a whole number of boxes.

    photutils pads or leaves a partial box where the boxes do not divide the
    image. Choosing the number of boxes nearest to ``length / boxsize``
    instead keeps every box full: 4088 pixels with ``boxsize=1000`` gives
    four boxes of 1022, and an image smaller than one box gives one box.

    Parameters
    ----------
    length : int
        Image size along one axis.
    boxsize : int
        Requested box size.

    Returns
    -------
    int
    """
    n_boxes = max(1, int(round(length / boxsize)))
    return int(math.ceil(length / n_boxes))


def estimate_background(data, mask, boxsize, *, weight=None):
    """Background level and per-pixel noise of an image.

    Parameters
    ----------
    data : numpy.ndarray
        2-D image.
    mask : numpy.ndarray of bool
        True where the image has no usable data (no coverage, NaN).
    boxsize : int
        Requested background box size in pixels; see `box_tiling`.
    weight : numpy.ndarray or None
        Inverse-variance-like weight map (the mosaic's ``weight``). When
        given and not constant, the noise follows it pixel by pixel.

    Returns
    -------
    BackgroundEstimate or None
        None when fewer than `MIN_BACKGROUND_PIXELS` pixels have data.
    """
    good = ~mask
    n_good = int(np.count_nonzero(good))
    if n_good < MIN_BACKGROUND_PIXELS:
        return None
    ny, nx = data.shape
    box = (box_tiling(ny, boxsize), box_tiling(nx, boxsize))
    notes = []

    scaling = _noise_scaling(weight, good)
    weighted_noise = scaling is not None
    # With a weight map the noise comes from the scaled residuals below, so
    # the plain scatter's map is not made (each map is 300 MB on a 75-Mpix
    # mosaic).
    level, level_rms = _box_maps(lambda step: data[::step, ::step], data.shape, mask, box,
                                 notes, rms_wanted=not weighted_noise)
    method = "global" if level is None else "Background2D"
    if level is None:
        box = (ny, nx)
        median, std = _global_stats(data[good])
        level = np.full(data.shape, median, np.float32)
        level_rms = np.full(data.shape, std, np.float32)

    if not weighted_noise:
        rms = level_rms
    else:
        def scaled_residual(step):
            # Residuals scaled to uniform noise, made only at the pixels the
            # box statistics sample.
            every = (slice(None, None, step),) * 2
            residual = np.subtract(data[every], level[every], dtype=np.float32)
            residual *= scaling[every]
            residual[mask[every]] = np.nan
            return residual

        # Their scatter, scaled back.
        _, flat_rms = _box_maps(scaled_residual, data.shape, mask, box, notes,
                                level_wanted=False)
        if flat_rms is None:
            _, std = _global_stats(scaled_residual(1)[good])
            flat_rms = np.full(data.shape, std, np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            rms = np.divide(flat_rms, scaling, out=flat_rms)
        del scaling
    level[mask] = 0.0
    rms[mask] = 0.0
    median_background = typical_value(level, good)
    median_rms = typical_value(rms, good)
    log.info("background: %s, boxes of %d x %d px, median level %.4g, median noise %.4g%s",
             method, box[1], box[0], median_background, median_rms,
             " (following the weight map)" if weighted_noise else "")
    return BackgroundEstimate(
        background=level,
        rms=rms,
        method=method,
        box_size=(int(box[0]), int(box[1])),
        weighted_noise=weighted_noise,
        median_background=median_background,
        median_rms=median_rms,
        notes=notes,
    )


def _global_stats(values):
    """Sigma-clipped median and standard deviation of a set of pixels."""
    _, median, std = sigma_clipped_stats(values, sigma=CLIP_SIGMA, maxiters=CLIP_ITERS)
    return float(median), float(std)


def _noise_scaling(weight, good):
    """``sqrt(weight / median weight)`` where there is data, or None if not informative."""
    if weight is None:
        return None
    weight = np.asarray(weight)
    if weight.shape != good.shape or not good.any():
        return None
    # Whole-image reductions with ``where`` rather than ``weight[good]``:
    # no copy of the weights is made.
    with np.errstate(invalid="ignore"):
        if np.any(good & ~((weight > 0) & (weight < np.inf))):
            return None
    low = float(np.min(weight, where=good, initial=np.inf))
    high = float(np.max(weight, where=good, initial=-np.inf))
    reference = typical_value(weight, good)
    # A constant weight carries no information about depth: skip the second pass.
    if high - low <= 1e-6 * reference:
        return None
    scaling = np.divide(weight, np.float32(reference), dtype=np.float32)
    np.sqrt(scaling, out=scaling)
    scaling[~good] = 0.0
    return scaling


def typical_value(image, good):
    """Median of ``image`` where ``good``, from a regular sample on large images.

    Up to 4 x `SAMPLE_PIXELS` good pixels are all used; beyond, every
    ``f``-th pixel along each axis, keeping about that many. Records,
    normalisations and sanity checks need no more precision, and the full
    median of a 75-Mpix mosaic copies 300 MB and sorts it.

    Parameters
    ----------
    image : numpy.ndarray
    good : numpy.ndarray of bool

    Returns
    -------
    float

    Examples
    --------
    >>> image = np.arange(12.0).reshape(3, 4)
    >>> typical_value(image, image != 0)
    6.0
    """
    n_good = int(np.count_nonzero(good))
    step = max(1, int(math.sqrt(n_good / (4 * SAMPLE_PIXELS))))
    values = image[::step, ::step][good[::step, ::step]]
    return float(np.median(values)) if values.size else float(np.median(image[good]))


def _box_maps(sample, shape, mask, box, notes, *, level_wanted=True, rms_wanted=True):
    """Interpolated box statistics, or (None, None) when boxes cannot be used.

    photutils measures the sigma-clipped median and standard deviation in
    each box, fills boxes without enough data from their neighbours and
    median-filters the box values; the full-size maps are then interpolated
    here (see `_expand`), which is about ten times faster than photutils'
    spline zoom for the few boxes of a mosaic.

    ``sample(f)`` gives the image of shape ``shape`` at every ``f``-th pixel
    along each axis (a view, or made for the purpose). Boxes larger than
    `SAMPLE_PIXELS` pixels are sampled every ``f``-th pixel
    along each axis, so that each box still holds about that many. The
    median of 250 000 pixels is known to 0.25% of the noise, far better than
    needed, and the sigma clipping, which dominates the cost, is ``f²``
    times faster.
    """
    ny, nx = shape
    n_boxes = (math.ceil(ny / box[0]), math.ceil(nx / box[1]))
    if n_boxes == (1, 1):
        return None, None
    # Rounded, not truncated: boxes of 976 x 949 pixels (a 75-Mpix mosaic)
    # were otherwise not sampled at all, four times the cost for nothing.
    step = max(1, round(math.sqrt(box[0] * box[1] / SAMPLE_PIXELS)))
    sampled_box = (math.ceil(box[0] / step), math.ceil(box[1] / step))
    sampled = sample(step)
    sampled_mask = mask[::step, ::step]
    filter_size = 3 if min(n_boxes) >= 3 else 1
    try:
        estimator = Background2D(
            sampled,
            sampled_box,
            coverage_mask=sampled_mask,
            exclude_percentile=_MAX_MASKED_PERCENT,
            filter_size=filter_size,
            sigma_clip=SigmaClip(sigma=CLIP_SIGMA, maxiters=CLIP_ITERS),
            bkg_estimator=MedianBackground(),
            bkg_rms_estimator=StdBackgroundRMS(),
        )
    except ValueError as error:
        # Every box has too little data (a thin sliver of coverage).
        note = f"background boxes unusable ({error}); one global estimate used instead"
        log.warning("%s", note.split(" (")[0] + "; using one global estimate")
        notes.append(note)
        return None, None
    # Box edges in full-resolution pixels, as sampled.
    full_box = (sampled_box[0] * step, sampled_box[1] * step)
    level = rms = None
    if level_wanted:
        level = _expand(np.asarray(estimator.background_mesh), shape, full_box)
    if rms_wanted:
        rms = _expand(np.asarray(estimator.background_rms_mesh), shape, full_box)
    return level, rms


def _expand(mesh, shape, box):
    """Interpolate box values (one per box) to every pixel.

    Natural cubic splines through the box centres along each axis, constant
    beyond the outermost centres, clipped to the range of the box values so
    that the interpolation never invents a level no box measured. Being
    separable, the whole map is two small matrix products.
    """
    rows = _axis_weights(shape[0], box[0], mesh.shape[0])
    cols = _axis_weights(shape[1], box[1], mesh.shape[1])
    mesh = mesh.astype(np.float64)
    along_rows = rows @ mesh
    full = np.empty(shape, np.float32)
    # A band of rows at a time: the float64 product of a whole mosaic would
    # be twice the size of the map itself.
    band = max(1, _EXPAND_BAND_PIXELS // max(1, shape[1]))
    for start in range(0, shape[0], band):
        full[start:start + band] = along_rows[start:start + band] @ cols.T
    np.clip(full, mesh.min(), mesh.max(), out=full)
    return full


# Pixels of the band of rows `_expand` computes at once.
_EXPAND_BAND_PIXELS = 1 << 20


def _axis_weights(length, box, n_boxes):
    """``(length, n_boxes)`` interpolation weights from box centres to pixels."""
    if n_boxes == 1:
        return np.ones((length, 1))
    starts = np.arange(n_boxes) * box
    ends = np.minimum(starts + box, length)
    centres = (starts + ends - 1) / 2.0
    pixels = np.clip(np.arange(length, dtype=float), centres[0], centres[-1])
    spline = CubicSpline(centres, np.eye(n_boxes), bc_type="natural")
    return spline(pixels)
