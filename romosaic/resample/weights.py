"""Per-pixel drizzle weights of an input image.

``weight_type`` (the reference pipeline's parameter):

* ``ivm``: inverse read-noise variance, ``1 / var_rnoise``. It leaves out the
  Poisson term on purpose: weighting by the total variance would give an
  exposure in which a star happens to be brighter (by noise) less weight,
  biasing photometry low. The variance is first smoothed over blocks of
  `VARIANCE_SMOOTHING_BLOCK` pixels: read noise scatters by tens of percent
  from pixel to pixel, and with weights that change within a star's image
  the weighted mean of differently-pixelated, undersampled stars no longer
  conserves flux (measured: errors up to 4% with three dithers). Smoothed,
  the weight is constant across a star while still following the
  detector's large-scale noise pattern.
* ``ivm-sky``: inverse of read noise plus the *sky's* Poisson variance, the
  median ``var_poisson`` of the image's good pixels (dominated by sky
  pixels). Like ``ivm`` it does not depend on the source; unlike ``ivm`` it
  down-weights exposures with a brighter sky.
* ``exptime``: the exposure time, uniform over the image.

Pixels that are flagged bad, or whose data or weighting variance is not a
finite positive number, get zero weight whatever the type. An image without
``var_rnoise`` has one derived from ``err`` when it can be (see
`romosaic.resample.input_from_model`); one with no read-noise estimate at
all gets equal weights on its usable pixels under ``ivm`` and ``ivm-sky``.
"""

import logging

import numpy as np

from ..errors import RomosaicInputError
from ..half import as_float32
from . import _kernels

__all__ = ["VARIANCE_SMOOTHING_BLOCK", "WEIGHT_TYPES", "pixel_weights", "smooth_variance",
           "weight_variances"]

WEIGHT_TYPES = ("ivm", "ivm-sky", "exptime")

log = logging.getLogger(__name__)

#: Side, in input pixels, of the blocks over which read-noise variance is averaged.
VARIANCE_SMOOTHING_BLOCK = 32

# Pixels of a band of whole blocks summed at once, and rows interpolated at
# once: small enough for the band's temporaries to stay in the cache.
_BAND_PIXELS = 1 << 18
_INTERPOLATION_ROWS = 64


def weight_variances(weight_type):
    """The variance planes `pixel_weights` reads for ``weight_type``.

    Examples
    --------
    >>> weight_variances("ivm-sky")
    ('var_rnoise', 'var_poisson')
    """
    return {"ivm": ("var_rnoise",), "ivm-sky": ("var_rnoise", "var_poisson")}.get(weight_type, ())


def pixel_weights(weight_type, *, data, good, var_rnoise=None, var_poisson=None, exptime=None,
                  name=None):
    """Drizzle weights for one input image.

    Parameters
    ----------
    weight_type : {"ivm", "ivm-sky", "exptime"}
    data : numpy.ndarray
        The image; non-finite pixels get zero weight.
    good : numpy.ndarray of bool
        Pixels whose DQ flags are acceptable.
    var_rnoise, var_poisson : numpy.ndarray, optional
        Read-noise and Poisson variances (needed by ``ivm`` and ``ivm-sky``).
    exptime : float, optional
        Exposure time in seconds (needed by ``exptime``).
    name : str, optional
        The image's file name, for messages.

    Returns
    -------
    numpy.ndarray of float32

    Examples
    --------
    >>> import numpy as np
    >>> w = pixel_weights("ivm", data=np.ones(3), good=np.array([True, True, False]),
    ...                   var_rnoise=np.array([4.0, 0.0, 1.0]))
    >>> w.tolist()
    [0.25, 0.0, 0.0]
    """
    prefix = f"{name}: " if name else ""
    if weight_type == "exptime":
        if exptime is None or not (np.isfinite(exptime) and exptime > 0):
            raise RomosaicInputError(
                f"{prefix}weight_type 'exptime' needs a positive exposure time "
                "(meta.exposure.exposure_time)"
            )
        usable = good & np.isfinite(data)
        return np.where(usable, np.float32(exptime), np.float32(0.0)).astype(np.float32)

    if weight_type not in ("ivm", "ivm-sky"):
        raise RomosaicInputError(
            f"unknown weight_type {weight_type!r}; choose one of {', '.join(WEIGHT_TYPES)}"
        )
    if var_rnoise is None:
        # Without any read-noise estimate (see `romosaic.resample.input_from_model`
        # for the one derived from err), every usable pixel weighs the same,
        # as in the reference pipeline.
        log.warning("%shas no var_rnoise (nor err and var_poisson to derive it from); "
                    "weight_type %r gives its pixels equal weights", prefix, weight_type)
        usable = good & np.isfinite(data)
        return usable.astype(np.float32)

    def usable_rows(start, stop):
        return good[start:stop] & np.isfinite(data[start:stop])

    sky_poisson = None
    if weight_type == "ivm-sky":
        sky_poisson = np.float32(_sky_poisson_variance(var_poisson, usable_rows))
    smoothing = _smoothing(var_rnoise, usable_rows)
    if smoothing is None:  # too small to smooth
        variance = as_float32(var_rnoise)  # read only, never changed in place
        if sky_poisson is not None:
            variance = variance + sky_poisson
        usable = usable_rows(0, variance.shape[0])
        usable &= np.isfinite(variance) & (variance > 0)
        weights = np.zeros(variance.shape, dtype=np.float32)
        np.divide(np.float32(1.0), variance, out=weights, where=usable)
        return weights
    # The compiled pass interpolates, adds the sky and inverts, a band of
    # rows at a time: the only image-sized array made is the result.
    weights = np.empty(np.shape(var_rnoise), dtype=np.float32)
    for start in range(0, weights.shape[0], _INTERPOLATION_ROWS):
        stop = min(weights.shape[0], start + _INTERPOLATION_ROWS)
        _kernels.smoothed_rows(*smoothing, start, weights[start:stop], sky=sky_poisson,
                               data=np.ascontiguousarray(data[start:stop], dtype=np.float32),
                               good=np.ascontiguousarray(good[start:stop], dtype=bool))
    return weights


def smooth_variance(variance, usable, *, block=VARIANCE_SMOOTHING_BLOCK):
    """A variance map averaged over blocks and interpolated back, bilinearly.

    Parameters
    ----------
    variance : numpy.ndarray
    usable : numpy.ndarray of bool
        Pixels whose variance enters the averages (others are ignored).
    block : int, optional
        Block side in pixels.

    Returns
    -------
    numpy.ndarray of float32
        Same shape; NaN where a block had no usable pixel with finite,
        positive variance and no neighbour to interpolate from.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.full((64, 64), 2.0); v[::2, ::2] = 6.0
    >>> smoothed = smooth_variance(v, np.ones(v.shape, bool), block=8)
    >>> bool(np.allclose(smoothed, 3.0))
    True
    """
    smoothing = _smoothing(variance, lambda r0, r1: usable[r0:r1], block=block)
    if smoothing is None:
        return np.array(as_float32(variance))
    smoothed = np.empty(np.shape(variance), np.float32)
    for start in range(0, smoothed.shape[0], _INTERPOLATION_ROWS):
        _kernels.smoothed_rows(*smoothing, start, smoothed[start:start + _INTERPOLATION_ROWS])
    return smoothed


def _smoothing(variance, usable_rows, *, block=VARIANCE_SMOOTHING_BLOCK):
    """The block means of a variance map, interpolated along the rows, and
    where each image row lies between block rows; None for an image smaller
    than two blocks (not smoothed).

    ``usable_rows(start, stop)`` gives the usable pixels of rows
    ``[start, stop)``. Returns ``(along, first, frac)`` for
    ``_kernels.smoothed_rows``: ``along`` (float64, one row of the image's
    width per block row), and per image row the block row before it and its
    fraction of the way to the next.
    """
    shape = np.shape(variance)
    if len(shape) != 2 or min(shape) < 2 * block:
        return None
    ny, nx = shape
    # Block sums a band of whole blocks at a time, so that the float32 copy
    # and the masks stay small.
    band = block * max(1, _BAND_PIXELS // (block * nx))
    sums, numbers = [], []
    for start in range(0, ny, band):
        stop = min(ny, start + band)
        values = as_float32(variance[start:stop])
        valid = usable_rows(start, stop)
        valid &= np.isfinite(values) & (values > 0)
        sums.append(_block_sums(np.where(valid, values, np.float32(0.0)), block, np.float64))
        numbers.append(_block_sums(valid, block, np.int64))
    sums, numbers = np.vstack(sums), np.vstack(numbers)
    by, bx = sums.shape
    means = np.divide(sums, numbers, out=np.full_like(sums, np.nan), where=numbers > 0)
    if np.isnan(means).any():
        fill = np.nanmedian(means) if np.isfinite(means).any() else np.nan
        means = np.where(np.isnan(means), fill, means)
    # Bilinear between block centres, flat beyond; separable, so interpolate
    # along x once per block row here, and down the columns in the kernel.
    centres_y = np.minimum(np.arange(by) * block + (block - 1) / 2, ny - 1)
    centres_x = np.minimum(np.arange(bx) * block + (block - 1) / 2, nx - 1)
    rows = np.interp(np.arange(ny), centres_y, np.arange(by))
    cols = np.interp(np.arange(nx), centres_x, np.arange(bx))
    first = np.minimum(rows.astype(np.int64), by - 2)
    c0 = np.minimum(cols.astype(int), bx - 2)
    fc = (cols - c0)[None, :]
    along = np.ascontiguousarray(means[:, c0] * (1 - fc) + means[:, c0 + 1] * fc)
    return along, first, np.ascontiguousarray(rows - first)


def _block_sums(image, block, dtype):
    """Sums over ``block`` x ``block`` tiles (the last row and column of tiles may be short).

    Rows are summed first, through a reshape of the whole blocks (far faster
    than ``np.add.reduceat`` down the slow axis), so only a small
    ``(n_blocks_y, nx)`` array is ever made in ``dtype``.
    """
    ny = image.shape[0]
    whole = ny - ny % block
    row_sums = image[:whole].reshape(-1, block, image.shape[1]).sum(axis=1, dtype=dtype)
    if whole < ny:
        row_sums = np.vstack([row_sums, image[whole:].sum(axis=0, dtype=dtype)[None]])
    return np.add.reduceat(row_sums, np.arange(0, image.shape[1], block), axis=1)


def _sky_poisson_variance(var_poisson, usable_rows):
    if var_poisson is None:
        return 0.0
    values = []
    rows = max(1, _BAND_PIXELS // max(1, np.shape(var_poisson)[-1]))
    for start in range(0, len(var_poisson), rows):
        stop = min(len(var_poisson), start + rows)
        band = as_float32(var_poisson[start:stop])[usable_rows(start, stop)]
        values.append(band[np.isfinite(band)])
    values = np.concatenate(values) if values else np.empty(0, np.float32)
    return float(np.median(values)) if values.size else 0.0
