"""Data-quality flags: which pixels count as good.

``good_bits`` follows the reference pipeline's syntax: flag names or integers
joined with ``+`` (or ``,``), optionally negated as a whole with a leading
``~``. The default ``"~DO_NOT_USE+NON_SCIENCE"`` means "every flag is
acceptable except DO_NOT_USE and NON_SCIENCE". An integer is the sum of the
acceptable flags; ``None`` or ``"GOOD"`` accepts only pixels with no flag set.
"""

import numpy as np
from astropy.nddata import bitmask
from roman_datamodels.dqflags import pixel

from .errors import RomosaicInputError

__all__ = ["DEFAULT_GOOD_BITS", "bad_flags_mask", "good_pixel_mask"]

DEFAULT_GOOD_BITS = "~DO_NOT_USE+NON_SCIENCE"

# Pixels whose flags are tested at once by `good_pixel_mask`.
_MASK_CHUNK = 1 << 18

_FLAG_NAMES = bitmask.extend_bit_flag_map(
    "RomanPixelFlags", **{flag.name: int(flag.value) for flag in pixel if int(flag.value)}
)


def bad_flags_mask(good_bits):
    """The integer mask of DQ bits that make a pixel bad.

    Parameters
    ----------
    good_bits : str, int or None

    Returns
    -------
    int

    Examples
    --------
    >>> bad_flags_mask("~DO_NOT_USE+NON_SCIENCE")
    513
    >>> bad_flags_mask(0) == 0xFFFFFFFF
    True
    """
    if good_bits is None or (isinstance(good_bits, str) and good_bits.strip().upper() in
                             ("", "GOOD", "NONE")):
        return 0xFFFFFFFF
    try:
        acceptable = bitmask.interpret_bit_flags(good_bits, flag_name_map=_FLAG_NAMES)
    except (ValueError, TypeError, AttributeError) as error:
        raise RomosaicInputError(f"good_bits {good_bits!r} is not understood ({error})") from None
    if acceptable is None:
        return 0xFFFFFFFF
    return ~int(acceptable) & 0xFFFFFFFF


def good_pixel_mask(dq, good_bits=DEFAULT_GOOD_BITS):
    """True where a pixel's DQ flags are all acceptable.

    Parameters
    ----------
    dq : numpy.ndarray of unsigned int
    good_bits : str, int or None

    Returns
    -------
    numpy.ndarray of bool

    Examples
    --------
    >>> good_pixel_mask(np.array([0, 1, 4], np.uint32), "~DO_NOT_USE").tolist()
    [True, False, True]
    """
    bad = np.uint32(bad_flags_mask(good_bits))
    dq = np.asarray(dq)
    good = np.empty(dq.shape, bool)
    flat_dq, flat_good = dq.reshape(-1), good.reshape(-1)
    # In chunks: the flags of a whole image would be a second image-sized array.
    for start in range(0, flat_dq.size, _MASK_CHUNK):
        chunk = slice(start, start + _MASK_CHUNK)
        np.equal(flat_dq[chunk].astype(np.uint32, copy=False) & bad, 0, out=flat_good[chunk])
    return good
