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


def sky_level(blot):
    """The median of the model's finite pixels (its sky), or None if it has none."""
    finite = np.isfinite(blot)
    if not finite.any():
        return None
    # The selection is a copy of its own, free to be reordered.
    return np.float32(np.median(blot[finite], overwrite_input=True))


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
    finite = np.isfinite(blot)
    if level is None:
        level = sky_level(blot)
    if level is None or not finite.any():
        return np.zeros_like(blot)
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
    rows = values.copy()
    # Each row with the rows above and below, then each column of that with
    # its neighbours: reading from the previous stage keeps every pixel's
    # reach at one step.
    combine(rows[1:], values[:-1], out=rows[1:])
    combine(rows[:-1], values[1:], out=rows[:-1])
    result = rows.copy()
    combine(result[:, 1:], rows[:, :-1], out=result[:, 1:])
    combine(result[:, :-1], rows[:, 1:], out=result[:, :-1])
    return result


def blot_derivative(blot):
    """Largest absolute difference between each pixel and its 4 neighbours.

    Edges compare with the neighbours that exist; NaN neighbours are ignored.
    """
    blot = np.asarray(blot, dtype=np.float32)
    deriv = np.zeros_like(blot)
    with np.errstate(invalid="ignore"):
        for axis in (0, 1):
            step = np.abs(np.diff(blot, axis=axis))
            step = np.where(np.isnan(step), 0.0, step)
            lead = [slice(None)] * 2
            trail = [slice(None)] * 2
            lead[axis] = slice(1, None)
            trail[axis] = slice(None, -1)
            np.maximum(deriv[tuple(lead)], step, out=deriv[tuple(lead)])
            np.maximum(deriv[tuple(trail)], step, out=deriv[tuple(trail)])
    return deriv


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
    deriv = blot_derivative(blot)
    with np.errstate(invalid="ignore"):
        diff = np.abs(data - blot - np.float32(backg))
        model_term = np.float32(model_error) * source_signal(blot, level=sky_level)
        first = diff > np.float32(scale[0]) * deriv + np.float32(snr[0]) * noise + model_term
        second = diff > np.float32(scale[1]) * deriv + np.float32(snr[1]) * noise + model_term
    valid = np.isfinite(diff) & np.isfinite(noise)
    first &= valid
    second &= valid
    grown = neighbourhood_3x3(first, np.logical_or)
    mask = grown & second
    if usable is not None:
        mask &= usable
    return mask
