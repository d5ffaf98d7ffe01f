"""Planes derived from a mosaic's own arrays and metadata.

A ``MosaicModel`` stores which inputs contributed to each pixel as bits
(``context``) and the inputs' exposure times as a table
(``meta.individual_image_meta``); the number of contributing inputs and the
exposure-time map follow from them. The FITS export and the preview show
them.
"""

import numpy as np

__all__ = ["contributing_inputs", "exposure_time_plane"]


def contributing_inputs(context):
    """Number of inputs that contributed to each pixel of a mosaic.

    Parameters
    ----------
    context : numpy.ndarray of uint32, shape (planes, ny, nx) or (ny, nx)
        A mosaic's context: bit ``i % 32`` of plane ``i // 32`` set where
        input ``i`` contributed.

    Returns
    -------
    numpy.ndarray of int16, shape (ny, nx)

    Examples
    --------
    >>> contributing_inputs(np.array([[[0, 1, 7]], [[0, 0, 1]]], np.uint32)).tolist()
    [[0, 1, 4]]
    """
    context = np.asarray(context)
    if context.ndim == 2:
        context = context[np.newaxis]
    count = np.zeros(context.shape[1:], dtype=np.int16)
    for plane in context:
        count += np.bitwise_count(plane).astype(np.int16)
    return count


def exposure_time_plane(model, context=None):
    """Total exposure time (s) of the inputs contributing to each pixel, or None.

    Parameters
    ----------
    model : roman_datamodels.datamodels.MosaicModel
    context : numpy.ndarray, optional
        The model's context, if already read.

    Returns
    -------
    numpy.ndarray of float32 or None
        None when the mosaic records no context, or no exposure time for
        each of its inputs (``meta.individual_image_meta.exposure``).
    """
    from .resample import exposure_time_map

    if context is None:
        context = getattr(model, "context", None)
        if context is None:
            return None
    context = np.asarray(context, dtype=np.uint32)
    if context.ndim == 2:
        context = context[np.newaxis]
    try:
        table = model.meta.individual_image_meta["exposure"]
        exptimes = [float(t) for t in table["exposure_time"]]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if not exptimes or len(exptimes) > 32 * context.shape[0]:
        return None
    return exposure_time_map(context, exptimes)
