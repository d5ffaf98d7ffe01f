"""What the resampler needs from each input image, detached from data models.

`input_from_model` extracts it from an open Level-2 model and applies the sky
level recorded by skymatch when it has not been subtracted from the data yet
(``meta.background.subtracted`` False), so that resample and outlier
detection see sky-matched data without the input models being modified.
"""

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..errors import RomosaicInputError
from ..models import exposure_time_of

__all__ = ["ResampleInput", "derived_read_noise_variance", "input_from_model",
           "sky_level_to_subtract"]

log = logging.getLogger(__name__)


@dataclass
class ResampleInput:
    """One input image, in MJy/sr, with its WCS and noise.

    Attributes
    ----------
    name : str
        File name, for messages.
    data : numpy.ndarray of float32
        Surface brightness with any pending sky level removed.
    dq : numpy.ndarray of uint32
    wcs : gwcs.wcs.WCS
    exptime : float
        Seconds; NaN when the file records no positive exposure time (only
        ``exptime`` weighting and the exposure-time map need it).
    variances : dict of str to numpy.ndarray
        ``var_rnoise``, ``var_poisson`` and, when present, ``var_flat``, in
        their stored dtype (float16 in Level-2 files): each user converts
        what it needs, so three float32 copies of a detector are never held.
    """

    name: str
    data: np.ndarray
    dq: np.ndarray
    wcs: object
    exptime: float
    variances: dict

    @property
    def shape(self):
        return self.data.shape


def sky_level_to_subtract(meta):
    """The sky level (MJy/sr) still to be removed from an image, or 0.

    An absent ``meta.background``, a level of None, or a level already
    subtracted all give 0.
    """
    background = meta.get("background") if hasattr(meta, "get") else None
    if not background:
        return 0.0
    level = background.get("level")
    if level is None or background.get("subtracted", False):
        return 0.0
    level = float(level)
    return level if math.isfinite(level) else 0.0


#: The variance planes an input may carry, in the order they are read.
INPUT_VARIANCES = ("var_rnoise", "var_poisson", "var_flat")


def derived_read_noise_variance(model):
    """A read-noise variance for an image that lacks ``var_rnoise``, from its other noise arrays.

    ``err`` is the root of the summed variances, so ``err² − var_poisson −
    var_flat`` is what is left for the read noise. Negative differences
    (float16 rounding where the Poisson term dominates) become 0, which the
    weights treat as unusable and smooth over.

    Parameters
    ----------
    model : roman_datamodels.datamodels.ImageModel

    Returns
    -------
    numpy.ndarray of float32 or None
        None without both ``err`` and ``var_poisson``: the total variance
        alone holds the source's own Poisson noise, which must not set a
        weight (see `romosaic.resample.weights`).

    Examples
    --------
    >>> import roman_datamodels.datamodels as rdm
    >>> model = rdm.ImageModel.create_fake_data(shape=(2, 2))
    >>> model.err = np.full((2, 2), 5.0, np.float16)
    >>> model.var_poisson = np.full((2, 2), 16.0, np.float16)
    >>> derived_read_noise_variance(model).tolist()
    [[9.0, 9.0], [9.0, 9.0]]
    """
    err = getattr(model, "err", None)
    var_poisson = getattr(model, "var_poisson", None)
    if err is None or var_poisson is None:
        return None
    variance = np.square(np.asarray(err, dtype=np.float32))
    variance -= np.asarray(var_poisson, dtype=np.float32)
    var_flat = getattr(model, "var_flat", None)
    if var_flat is not None:
        variance -= np.asarray(var_flat, dtype=np.float32)
    np.maximum(variance, np.float32(0.0), out=variance)
    return variance


def input_from_model(model, *, variances=INPUT_VARIANCES):
    """A `ResampleInput` from an open Level-2 ``ImageModel`` in MJy/sr.

    Parameters
    ----------
    model : roman_datamodels.datamodels.ImageModel
    variances : sequence of str, optional
        The variance planes to read (those the model lacks are left out);
        reading only what a consumer uses saves decompressing the others.

    Raises
    ------
    RomosaicInputError
        For a missing WCS.
    """
    meta = model.meta
    name = str(meta.filename)
    if meta.get("wcs") is None:
        raise RomosaicInputError(f"{name}: has no WCS (meta.wcs)")
    exptime = exposure_time_of(meta)
    data = np.asarray(model.data, dtype=np.float32)
    sky = sky_level_to_subtract(meta)
    if sky:
        data = data - np.float32(sky)
    planes = {}
    for plane in INPUT_VARIANCES:
        values = getattr(model, plane, None) if plane in variances else None
        if values is not None:
            planes[plane] = np.asarray(values)
    if "var_rnoise" in variances and "var_rnoise" not in planes:
        derived = derived_read_noise_variance(model)
        if derived is not None:
            log.info("%s: has no var_rnoise; using err^2 - var_poisson - var_flat", name)
            planes["var_rnoise"] = derived
    return ResampleInput(
        name=name,
        data=data,
        dq=np.asarray(model.dq),
        wcs=meta.wcs,
        exptime=math.nan if exptime is None else exptime,
        variances=planes,
    )
