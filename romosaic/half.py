"""Fast conversions between float32 and float16 arrays, exact to numpy's.

Level-2 images store ``err`` and the variance planes as float16, so the flux
step must round its scaled float32 values back to float16. Variances in
MJy²/sr² are often below float16's smallest normal number (6.1e-5), and
numpy converts such values one element at a time through a slow
subnormal path (about 5 s for one 4088 × 4088 plane here, ten times the
normal case). The compiled `romosaic._scale` converts instead, working on
the bit patterns by numpy's rules (round to nearest, ties to even; overflow
to infinity; NaN payloads as numpy keeps them): the same code the flux
scaling uses. The other way, numpy widens float16 one value at a time
too (about 5 ns a value here); `as_float32` widens a float16 plane with
the same compiled code, in vectors.
"""

import numpy as np

from . import _scale

__all__ = ["as_float32", "to_float16"]


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
    # No factor: a multiplication by 1 would make signalling NaNs quiet,
    # which astype does not.
    _scale.scale(values, result)
    return result


def as_float32(values):
    """``np.ascontiguousarray(values, dtype=np.float32)``, with float16 widened by compiled code.

    Parameters
    ----------
    values : array_like

    Returns
    -------
    numpy.ndarray of float32
        C-contiguous; ``values`` itself when it already is that.

    Examples
    --------
    >>> import numpy as np
    >>> h = np.array([1.0, 6e-8, -0.0, np.inf, np.nan], np.float16)
    >>> bool(np.array_equal(as_float32(h).view(np.uint32), h.astype(np.float32).view(np.uint32)))
    True
    """
    values = np.asarray(values)
    if values.dtype != np.float16:
        return np.ascontiguousarray(values, dtype=np.float32)
    result = np.empty(values.shape, np.float32)
    # No factor: the values are only widened, signalling NaNs included.
    _scale.scale(np.ascontiguousarray(values), result)
    return result
