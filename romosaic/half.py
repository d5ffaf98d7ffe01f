"""Fast conversion of float32 arrays to float16, exact to numpy's rounding.

Level-2 images store ``err`` and the variance planes as float16, so the flux
step must round its scaled float32 values back to float16. Variances in
MJy²/sr² are often below float16's smallest normal number (6.1e-5), and
numpy converts such values one element at a time through a slow
subnormal path (about 5 s for one 4088 × 4088 plane here, ten times the
normal case). A float16 subnormal is just an integer multiple of 2⁻²⁴, so
those values are rounded directly: ``rint(|x| · 2²⁴)`` is exact in float32
and rounds half to even, as the cast does.
"""

import numpy as np

__all__ = ["to_float16"]

_SMALLEST_NORMAL = np.float32(2.0**-14)
_SUBNORMAL_STEP_INVERSE = np.float32(2.0**24)
# Elements converted at a time (256 KiB of float32).
_CHUNK = 2**16


def to_float16(values):
    """``values.astype(np.float16)``, bit for bit, without numpy's slow subnormal path.

    Parameters
    ----------
    values : numpy.ndarray
        Float32 values (other dtypes are converted to float32 first).

    Returns
    -------
    numpy.ndarray of float16

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([1.0, 3e-7, -2.5e-8, 6e4, np.nan], np.float32)
    >>> bool(np.array_equal(to_float16(x).view(np.uint16), x.astype(np.float16).view(np.uint16)))
    True
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    result = np.empty(values.shape, np.float16)
    flat_values, flat_result = values.reshape(-1), result.reshape(-1)
    # A chunk at a time, so that the dozen temporaries stay in the cache
    # instead of streaming whole planes through memory a dozen times.
    for start in range(0, flat_values.size, _CHUNK):
        chunk = slice(start, start + _CHUNK)
        flat_result[chunk] = _chunk_to_float16(flat_values[chunk])
    return result


def _chunk_to_float16(values):
    magnitude = np.abs(values)
    tiny = magnitude < _SMALLEST_NORMAL  # False for NaN
    if not tiny.any():
        return values.astype(np.float16)
    half = np.where(tiny, np.float32(0.0), values).astype(np.float16).view(np.uint16)
    # rint(|x| 2^24) runs from 0 to 1024; 1024 is the bit pattern of the
    # smallest normal number, exactly where rounding up should land.
    steps = np.rint(np.fmin(magnitude, _SMALLEST_NORMAL) * _SUBNORMAL_STEP_INVERSE)
    subnormal = steps.astype(np.uint16) | (np.signbit(values).astype(np.uint16) << np.uint16(15))
    return np.where(tiny, subnormal, half).view(np.float16)
