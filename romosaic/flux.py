"""Conversion of Level-2 images from DN/s to surface brightness (MJy/sr).

``meta.photometry.conversion_megajanskys`` gives MJy/sr per DN/s. Data and
error scale by it, variances by its square. Arrays keep their stored dtype
(the Level-2 schema stores ``err`` and variances as float16); the arithmetic
is done in float32 so that only the final rounding is in float16.
"""

import math

import numpy as np

from . import _scale

__all__ = ["VARIANCE_ARRAYS", "check_conversion_factor", "scale_to_surface_brightness"]

#: Variance arrays a Level-2 image may carry.
VARIANCE_ARRAYS = ("var_poisson", "var_rnoise", "var_flat")

# Element types of the compiled scaling (native byte order).
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def check_conversion_factor(factor):
    """Whether ``factor`` is a usable DN/s → MJy/sr conversion.

    Parameters
    ----------
    factor : float or None

    Returns
    -------
    str or None
        A description of what is wrong, or None if it is usable.
    """
    if factor is None:
        return "has no photometric conversion (meta.photometry.conversion_megajanskys)"
    try:
        value = float(factor)
    except (TypeError, ValueError):
        return f"has a non-numeric photometric conversion {factor!r}"
    if not math.isfinite(value) or value <= 0:
        return f"has an invalid photometric conversion {value!r} (must be finite and > 0)"
    return None


def scale_to_surface_brightness(arrays, factor, *, in_place=False):
    """Scale an image's arrays from DN/s to MJy/sr.

    Parameters
    ----------
    arrays : dict of str to numpy.ndarray
        Any of ``data``, ``err`` and the names in `VARIANCE_ARRAYS`; missing or
        None entries are skipped.
    factor : float
        MJy/sr per DN/s.
    in_place : bool, optional
        Write the scaled values into ``numpy.asarray(array)`` where that is
        writeable and C-contiguous (others get new arrays). This
        saves a new plane per array, whose memory is slow to obtain on
        virtual machines that hand freed pages back to their host.

    Returns
    -------
    dict of str to numpy.ndarray
        The scaled arrays, with the same names and dtypes (``numpy.asarray``
        of the given arrays where scaled in place).

    Examples
    --------
    >>> import numpy as np
    >>> out = scale_to_surface_brightness(
    ...     {"data": np.ones(2, np.float32), "var_rnoise": np.ones(2, np.float16)}, 0.5)
    >>> out["data"].tolist(), out["var_rnoise"].tolist()
    ([0.5, 0.5], [0.25, 0.25])
    """
    scaled = {}
    for name, array in arrays.items():
        if array is None:
            continue
        scale = np.float32(factor * factor if name in VARIANCE_ARRAYS else factor)
        values = np.asarray(array)
        writeable = values.flags.writeable and values.flags.c_contiguous
        out = values if in_place and writeable else np.empty(values.shape, values.dtype)
        _scale_into(values, scale, out)
        scaled[name] = out
    return scaled


def _scale_into(values, scale, out):
    """``out = values * scale`` in float32 arithmetic, rounded to ``out``'s dtype.

    ``out`` (C-contiguous) may be ``values`` itself. float32 and float16
    arrays are scaled by the compiled `romosaic._scale`, in one pass and
    without the interpreter lock; variances in MJy^2/sr^2 are often float16
    subnormals, which it rounds as numpy does but without numpy's slow path.
    """
    if values.dtype not in _KERNEL_DTYPES:
        values = values.astype(np.float32)
    values = np.ascontiguousarray(values)
    if out.dtype in _KERNEL_DTYPES:
        _scale.scale(values, out, scale)
    else:
        product = np.empty(values.shape, np.float32)
        _scale.scale(values, product, scale)
        out[...] = product
