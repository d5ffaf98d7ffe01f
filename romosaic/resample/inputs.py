"""What the resampler needs from each input image, detached from data models.

`input_from_model` extracts it from an open Level-2 model and applies the sky
level recorded by skymatch when it has not been subtracted from the data yet
(``meta.background.subtracted`` False), so that resample and outlier
detection see sky-matched data without the input models being modified.
"""

import math
from dataclasses import dataclass

import numpy as np

from ..errors import RomosaicInputError

__all__ = ["ResampleInput", "input_from_model", "sky_level_to_subtract"]


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
        Seconds.
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
        For a missing WCS or an exposure time that is not a positive number.
    """
    meta = model.meta
    name = str(meta.filename)
    if meta.get("wcs") is None:
        raise RomosaicInputError(f"{name}: has no WCS (meta.wcs)")
    exptime = meta.exposure.get("exposure_time")
    if exptime is None or not math.isfinite(float(exptime)) or float(exptime) <= 0:
        raise RomosaicInputError(
            f"{name}: exposure time {exptime} is not a positive number of seconds"
        )
    data = np.asarray(model.data, dtype=np.float32)
    sky = sky_level_to_subtract(meta)
    if sky:
        data = data - np.float32(sky)
    planes = {}
    for plane in INPUT_VARIANCES:
        values = getattr(model, plane, None) if plane in variances else None
        if values is not None:
            planes[plane] = np.asarray(values)
    return ResampleInput(
        name=name,
        data=data,
        dq=np.asarray(model.dq),
        wcs=meta.wcs,
        exptime=float(exptime),
        variances=planes,
    )
