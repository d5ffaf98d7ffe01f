"""Per-pixel drizzle weights of an input image.

``weight_type`` (the reference pipeline's parameter):

* ``ivm``: inverse read-noise variance, ``1 / var_rnoise``. It leaves out the
  Poisson term on purpose: weighting by the total variance would give an
  exposure in which a star happens to be brighter (by noise) less weight,
  biasing photometry low.
* ``ivm-sky``: inverse of read noise plus the *sky's* Poisson variance, the
  median ``var_poisson`` of the image's good pixels (dominated by sky
  pixels). Like ``ivm`` it does not depend on the source; unlike ``ivm`` it
  down-weights exposures with a brighter sky.
* ``exptime``: the exposure time, uniform over the image.

Pixels that are flagged bad, or whose data or weighting variance is not a
finite positive number, get zero weight whatever the type.
"""

import numpy as np

from ..errors import RomosaicInputError

__all__ = ["WEIGHT_TYPES", "pixel_weights"]

WEIGHT_TYPES = ("ivm", "ivm-sky", "exptime")


def pixel_weights(weight_type, *, data, good, var_rnoise=None, var_poisson=None, exptime=None):
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
    usable = good & np.isfinite(data)
    if weight_type == "exptime":
        if exptime is None or not exptime > 0:
            raise RomosaicInputError(
                f"exptime weighting needs a positive exposure time, got {exptime}"
            )
        return np.where(usable, np.float32(exptime), np.float32(0.0)).astype(np.float32)

    if weight_type not in ("ivm", "ivm-sky"):
        raise RomosaicInputError(
            f"unknown weight_type {weight_type!r}; choose one of {', '.join(WEIGHT_TYPES)}"
        )
    if var_rnoise is None:
        raise RomosaicInputError(f"weight_type {weight_type!r} needs a var_rnoise array")
    variance = np.asarray(var_rnoise, dtype=np.float32)
    if weight_type == "ivm-sky":
        sky_poisson = _sky_poisson_variance(var_poisson, usable)
        variance = variance + np.float32(sky_poisson)

    usable &= np.isfinite(variance) & (variance > 0)
    weights = np.zeros(variance.shape, dtype=np.float32)
    np.divide(np.float32(1.0), variance, out=weights, where=usable)
    return weights


def _sky_poisson_variance(var_poisson, usable):
    if var_poisson is None:
        return 0.0
    values = np.asarray(var_poisson, dtype=np.float32)[usable]
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else 0.0
