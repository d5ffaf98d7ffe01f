"""Deciding which input pixels disagree with the median sky model.

For each input pixel the reference test (REFERENCE §3) compares the data
with the *blot* — the median image interpolated back to that pixel:

* ``deriv`` = largest absolute difference between the blot at a pixel and
  at its four neighbours, a measure of how steep the model is there, since
  an interpolated model is least trustworthy where it changes fastest;
* ``diff = |data − blot − backg|``;
* a pixel is an outlier where ``diff > scale1·deriv + snr1·noise`` on the
  pixel or any of its 3 × 3 neighbours, **and** ``diff > scale2·deriv +
  snr2·noise`` on the pixel itself.

romosaic adds one term inside both thresholds: ``model_error`` times the
brightest source signal of the model within 3 × 3 pixels (`source_signal`).
The median of drizzled, undersampled images is smoother than any single
exposure: at the core of a bright star the blot falls short of an
exposure's peak pixel by a fixed *fraction* of the star's brightness
(10-30% for Roman's PSF at 0.11″), far more than the Poisson noise there.
Neither the derivative term (small at the very peak, where the profile is
flat at the top) nor the noise term (growing only as the square root) covers
a shortfall that grows in proportion to the signal, which is why the
reference flags star cores. A tolerance proportional to the model itself
does, while cosmic rays — tens of σ above the sky, mostly where the model is
faint — are still caught (measured in ``tests/test_outlier_detection.py``).
"""

import numpy as np
from scipy import ndimage

__all__ = [
    "blot_derivative",
    "neighbourhood_3x3",
    "outlier_mask",
    "parse_pair",
    "sky_level",
    "source_signal",
]


def parse_pair(value, name):
    """Two floats from the reference's ``"5.0 4.0"`` string form (or a sequence).

    Raises
    ------
    ValueError
        When ``value`` does not hold exactly two numbers.
    """
    if isinstance(value, str):
        parts = value.replace(",", " ").split()
    else:
        parts = list(value)
    try:
        numbers = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 2:
        raise ValueError(f"{name} must be two numbers like '5.0 4.0', got {value!r}")
    return numbers


# `sky_level` brackets the median with a sample of this many pixels, and
# counts the pixels a piece of this many at a time.
_LEVEL_SAMPLE = 2**18
_LEVEL_CHUNK = 2**18


def sky_level(blot):
    """The median of the model's finite pixels (its sky), or None if it has none.

    Parameters
    ----------
    blot : numpy.ndarray

    Returns
    -------
    numpy.float32 or None
        ``numpy.median`` of the finite pixels, as float32.

    Notes
    -----
    A large model's median is found without copying its finite pixels or
    sorting them: a regular sample of the pixels gives two values that
    almost surely enclose the median, one pass over the model, a piece at a
    time, counts the finite pixels and those below the lower value and keeps
    the few between the two, and the middle ones among those are the
    median's. The counts prove the bracket holds (if it did not, the whole
    selection is sorted as for a small model), and the middle values are
    averaged by ``numpy.median`` itself, so the result is the same float32
    (but for the sign of a median of exactly zero).
    """
    flat = np.ravel(blot)
    if flat.size >= 4 * _LEVEL_SAMPLE:
        level = _bracketed_median(flat)
        if level is not None:
            return level
    finite = np.isfinite(blot)
    if not finite.any():
        return None
    # The selection is a copy of its own, free to be reordered.
    return np.float32(np.median(blot[finite], overwrite_input=True))


# `outlier_mask`'s parameter of the same name hides the function there.
_level_of = sky_level


def _bracketed_median(flat):
    """`sky_level` of a large 1-D array, or None when the sample's bracket
    misses the median (or the sample holds too few finite values)."""
    sample = flat[::flat.size // _LEVEL_SAMPLE | 1]
    sample = sample[np.isfinite(sample)]
    if sample.size < _LEVEL_SAMPLE // 8:
        return None
    # The sample's middle, give or take 8 standard deviations of where the
    # model's median falls in it.
    margin = int(4 * np.sqrt(sample.size)) + 32
    ranks = [max(0, sample.size // 2 - margin), min(sample.size - 1, sample.size // 2 + margin)]
    sample.partition(ranks)
    low, high = sample[ranks[0]], sample[ranks[1]]
    count = below = 0
    between = []
    for start in range(0, flat.size, _LEVEL_CHUNK):
        chunk = flat[start:start + _LEVEL_CHUNK]
        finite = np.isfinite(chunk)
        count += int(np.count_nonzero(finite))
        lower = chunk < low
        lower &= finite
        below += int(np.count_nonzero(lower))
        inside = np.greater_equal(chunk, low, out=lower)
        inside &= chunk <= high
        between.append(chunk[inside])
    # Ranks of the middle value(s) among the finite pixels, then among those kept.
    middle = [(count - 1) // 2 - below, count // 2 - below]
    between = np.concatenate(between)
    if count == 0 or middle[0] < 0 or middle[1] >= between.size:
        return None
    between.partition(middle)
    return np.float32(np.median(between[middle[0]:middle[1] + 1]))


def source_signal(blot, *, size=3, level=None):
    """Brightest source signal of the model within ``size`` × ``size`` pixels.

    The model minus its median level (the sky), floored at zero, then the
    maximum over the neighbourhood: a pixel on the flank of a star gets the
    star's peak, so the tolerance covers the whole star image.

    Parameters
    ----------
    blot : numpy.ndarray
    size : int, optional
    level : float, optional
        The sky level (`sky_level` of the whole model); by default that of
        ``blot`` itself. Give it when ``blot`` is a piece of a larger model.
    """
    blot = np.asarray(blot)
    finite = np.isfinite(blot)
    if level is None:
        level = sky_level(blot)
    if level is None or not finite.any():
        return np.zeros_like(blot)
    if size == 3 and blot.dtype == np.float32:
        signal = np.empty(blot.shape, np.float32)
        return _source_signal_into(blot, level, signal, np.empty_like(signal), finite,
                                   np.empty_like(finite))
    level = np.float32(level)
    signal = np.where(finite, np.maximum(blot - level, 0.0), 0.0).astype(np.float32)
    if size == 3:
        return neighbourhood_3x3(signal, np.maximum)
    return ndimage.maximum_filter(signal, size=size)


def neighbourhood_3x3(values, combine):
    """``combine`` (a ufunc like ``numpy.maximum``) of each pixel's 3 × 3 neighbourhood.

    Pixels beyond the edges are left out, which for a maximum or a logical
    or is what `scipy.ndimage.maximum_filter` (mode ``"reflect"``) and
    `scipy.ndimage.binary_dilation` (border 0) give; done as four
    whole-array operations it costs a fraction of theirs.

    Examples
    --------
    >>> a = np.zeros((3, 4), bool); a[0, 0] = True
    >>> neighbourhood_3x3(a, np.logical_or).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    """
    values = np.asarray(values)
    return _neighbourhood_3x3_into(values, combine, np.empty_like(values),
                                   np.empty_like(values))


def _neighbourhood_3x3_into(values, combine, scratch, out):
    """`neighbourhood_3x3` into ``out`` (which may be ``values``), through ``scratch``."""
    np.copyto(scratch, values)
    # Each row with the rows above and below, then each column of that with
    # its neighbours: reading from the previous stage keeps every pixel's
    # reach at one step.
    combine(scratch[1:], values[:-1], out=scratch[1:])
    combine(scratch[:-1], values[1:], out=scratch[:-1])
    np.copyto(out, scratch)
    combine(out[:, 1:], scratch[:, :-1], out=out[:, 1:])
    combine(out[:, :-1], scratch[:, 1:], out=out[:, :-1])
    return out


def blot_derivative(blot):
    """Largest absolute difference between each pixel and its 4 neighbours.

    Edges compare with the neighbours that exist; NaN neighbours are ignored.
    """
    blot = np.asarray(blot, dtype=np.float32)
    return _derivative_into(blot, np.empty_like(blot), np.empty_like(blot))


def _derivative_into(blot, out, scratch):
    """`blot_derivative` of float32 ``blot`` into ``out``, through ``scratch`` (its size)."""
    ny, nx = blot.shape
    with np.errstate(invalid="ignore"):
        # The steps are not negative, so a NaN step (next to a hole) is
        # dropped by the maximum with zero, and a step itself is its maximum
        # with zero.
        step = _leading(scratch, (max(ny - 1, 0), nx))
        np.subtract(blot[1:], blot[:-1], out=step)
        np.abs(step, out=step)
        np.fmax(step, np.float32(0), out=step)
        out[:1] = 0
        np.copyto(out[1:], step)
        np.maximum(out[:-1], step, out=out[:-1])
        step = _leading(scratch, (ny, max(nx - 1, 0)))
        np.subtract(blot[:, 1:], blot[:, :-1], out=step)
        np.abs(step, out=step)
        np.fmax(step, np.float32(0), out=step)
        np.maximum(out[:, 1:], step, out=out[:, 1:])
        np.maximum(out[:, :-1], step, out=out[:, :-1])
    return out


def _leading(buffer, shape):
    """A C-contiguous array of ``shape`` on the start of ``buffer``'s memory."""
    return buffer.reshape(-1)[:shape[0] * shape[1]].reshape(shape)


def _source_signal_into(blot, level, out, scratch, finite, not_finite):
    """`source_signal` (3 × 3) of float32 ``blot`` into ``out``, through scratch arrays
    (``finite`` may be `numpy.isfinite` of ``blot`` already)."""
    if level is None:
        # Without a level (no finite pixel) there is no signal.
        out.fill(0)
        return out
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(blot, np.float32(level), out=out)
        np.maximum(out, np.float32(0), out=out)
    # No signal where the model has no value (NaN, or infinite).
    np.isfinite(blot, out=finite)
    np.copyto(out, np.float32(0), where=np.logical_not(finite, out=not_finite))
    return _neighbourhood_3x3_into(out, np.maximum, scratch, out)


def outlier_mask(data, blot, noise, *, snr=(5.0, 4.0), scale=(1.2, 0.7), backg=0.0,
                 model_error=0.0, usable=None, sky_level=None):
    """Pixels of an image that disagree with the blotted median.

    Parameters
    ----------
    data : numpy.ndarray
        The image (sky-subtracted consistently with ``blot``).
    blot : numpy.ndarray
        The median model at the image's pixels; NaN where there is none.
    noise : numpy.ndarray
        1-σ noise of ``data`` (the error array).
    snr, scale : (float, float)
        Thresholds of the first (dilated) and second tests.
    backg : float, optional
        Background level to remove from the difference.
    model_error : float, optional
        Fractional uncertainty of the blotted model (see module notes).
    usable : numpy.ndarray of bool, optional
        Pixels eligible to be flagged (e.g. not already bad).
    sky_level : float, optional
        Sky level of the whole model, when ``blot`` is a piece of it (see
        `source_signal`).

    Returns
    -------
    numpy.ndarray of bool

    Examples
    --------
    >>> import numpy as np
    >>> data = np.zeros((5, 5)); data[2, 2] = 50.0
    >>> mask = outlier_mask(data, np.zeros((5, 5)), np.ones((5, 5)))
    >>> int(mask.sum()), bool(mask[2, 2])
    (1, True)
    """
    data = np.asarray(data, dtype=np.float32)
    blot = np.asarray(blot, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    if sky_level is None:
        sky_level = _level_of(blot)
    # Each intermediate goes into one of these, operation after operation.
    deriv, diff, model, threshold, scratch = (np.empty(blot.shape, np.float32) for _ in range(5))
    valid, first, second, extra = (np.empty(blot.shape, bool) for _ in range(4))
    _derivative_into(blot, deriv, scratch)
    _source_signal_into(blot, sky_level, model, scratch, valid, extra)
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(data, blot, out=diff)
        np.subtract(diff, np.float32(backg), out=diff)
        np.abs(diff, out=diff)
        np.multiply(model, np.float32(model_error), out=model)
        # The two thresholds, each (scale · deriv + snr · noise) + model term.
        for factors, passed in ((0, first), (1, second)):
            np.multiply(deriv, np.float32(scale[factors]), out=threshold)
            np.multiply(noise, np.float32(snr[factors]), out=scratch)
            np.add(threshold, scratch, out=threshold)
            np.add(threshold, model, out=threshold)
            np.greater(diff, threshold, out=passed)
    np.isfinite(diff, out=valid)
    valid &= np.isfinite(noise, out=extra)
    first &= valid
    second &= valid
    mask = _neighbourhood_3x3_into(first, np.logical_or, extra, valid)
    mask &= second
    if usable is not None:
        mask &= usable
    return mask
