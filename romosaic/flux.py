"""Conversion of Level-2 images from DN/s to surface brightness (MJy/sr).

``meta.photometry.conversion_megajanskys`` gives MJy/sr per DN/s. Data and
error scale by it, variances by its square. Arrays keep their stored dtype
(the Level-2 schema stores ``err`` and variances as float16); the arithmetic
is done in float32 so that only the final rounding is in float16.
"""

import math

import numpy as np

from . import _scale

__all__ = ["PIXEL_AREA_TOLERANCE", "VARIANCE_ARRAYS", "check_conversion_factor",
           "resolve_conversion_factor", "scale_to_surface_brightness"]

#: Largest relative difference between ``meta.photometry.pixel_area`` and the
#: WCS's pixel solid angle for a negative pair of conversion and area to be
#: taken as a sign convention (distortion changes the area across a detector
#: by a few percent).
PIXEL_AREA_TOLERANCE = 0.1

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


def resolve_conversion_factor(factor, pixel_area=None, wcs_pixel_area=None):
    """The DN/s → MJy/sr factor to apply, accepting a sign flipped with the pixel area.

    A conversion to MJy/sr divides a flux calibration by the pixel's solid
    angle. Some simulators give that solid angle the sign of the WCS's
    parity, which makes both ``pixel_area`` and the conversion negative. When
    both are negative, and the pixel area's magnitude is that of the WCS
    (within `PIXEL_AREA_TOLERANCE`, when the WCS's area is known), the
    magnitudes are what was meant. Any other non-positive conversion is an
    error.

    Parameters
    ----------
    factor : float or None
        ``meta.photometry.conversion_megajanskys``.
    pixel_area : float or None, optional
        ``meta.photometry.pixel_area`` (sr).
    wcs_pixel_area : float or None, optional
        Solid angle (sr) of a pixel near the image centre, from its WCS.

    Returns
    -------
    factor : float or None
        The factor to apply, or None when there is none.
    problem : str or None
        Why there is none.
    warning : str or None
        What was assumed to find one (the flipped sign).

    Examples
    --------
    >>> resolve_conversion_factor(-0.75, -2.8e-13, 2.8e-13)[0]
    0.75
    >>> resolve_conversion_factor(-0.75, 2.8e-13)[1]
    'has an invalid photometric conversion -0.75 (must be finite and > 0)'
    """
    problem = check_conversion_factor(factor)
    if problem is None:
        return float(factor), None, None
    try:
        value, area = float(factor), float(pixel_area)
    except (TypeError, ValueError):
        return None, problem, None
    if not (math.isfinite(value) and value < 0 and math.isfinite(area) and area < 0):
        return None, problem, None
    if wcs_pixel_area is not None and math.isfinite(wcs_pixel_area) and wcs_pixel_area > 0:
        if abs(abs(area) / wcs_pixel_area - 1) > PIXEL_AREA_TOLERANCE:
            return None, (f"{problem}; its pixel area {area:.4g} sr is negative too but is "
                          f"not the WCS's ({wcs_pixel_area:.4g} sr)"), None
    return -value, None, (f"photometric conversion {value:.4g} and pixel area {area:.4g} sr "
                          f"are both negative; using their magnitudes")


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
