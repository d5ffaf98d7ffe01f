"""Opening Level-2 images (and mosaics) with clear errors, and reading their metadata cheaply.

Everything that can go wrong when opening a user's file (missing, not ASDF,
truncated, not a Roman data model, a model of the wrong type) becomes a
one-line `~romosaic.errors.RomosaicInputError` naming the file.
`inspect_image_model` goes further, before any processing: arrays that cannot
be read (a file truncated in its data blocks opens fine, because arrays are
read lazily), a missing or unusable WCS, and images with no usable pixel at
all. An exposure time that is not a positive number (roman_datamodels' fake
data carry -999999) is not refused here: only exposure-time weighting and the
mosaic's exposure-time map use it, and they deal with it themselves.
"""

import logging
import math
from pathlib import Path

import asdf
import numpy as np
import roman_datamodels.datamodels as rdm

from .dq import DEFAULT_GOOD_BITS, good_pixel_mask
from .errors import ModelTypeError, RomosaicInputError

__all__ = [
    "IMAGE_ARRAYS",
    "effective_exposure_time_of",
    "exposure_time_of",
    "check_image_wcs",
    "group_id_from_model",
    "image_geometry",
    "inspect_image_model",
    "open_image_model",
    "open_mosaic_model",
    "open_roman_file",
    "read_exposure_group_id",
    "recorded_orientation",
    "require_image_model",
    "set_array",
]

#: Arrays of a Level-2 image that romosaic reads.
IMAGE_ARRAYS = ("data", "dq", "err", "var_poisson", "var_rnoise", "var_flat")

# Bytes asdf reads from a file at a time. Its default, the file system's
# block size (4-8 KiB), makes decompressing an lz4 array a Python loop of
# tens of thousands of reads: 7 s for four 4088 x 4088 images here, against
# 0.8 s with 1 MiB reads (benchmarks/bench_pipeline.py, "flux" and "other").
_READ_BLOCK_BYTES = 2**20

log = logging.getLogger(__name__)


def open_roman_file(path, **open_kwargs):
    """Open any Roman data file with roman_datamodels, or say in one line why not.

    Parameters
    ----------
    path : str or os.PathLike
    **open_kwargs
        Passed to `roman_datamodels.datamodels.open`.

    Returns
    -------
    roman_datamodels.datamodels.DataModel
        Of whatever type the file holds; the caller checks it.

    Raises
    ------
    RomosaicInputError
        If the file is missing or cannot be read as a Roman data model.
    """
    path = Path(path)
    if not path.is_file():
        raise RomosaicInputError(f"{path}: file not found")
    try:
        # The read size is fixed when the file is opened and used by every
        # later (lazy) read of its arrays.
        with asdf.config_context() as config:
            config.io_block_size = _READ_BLOCK_BYTES
            return rdm.open(path, **open_kwargs)
    except Exception as error:  # asdf, yaml, validation and decompression errors alike
        raise RomosaicInputError(
            f"{path}: not a readable Roman data file ({one_line_message(error)})"
        ) from None


def open_image_model(path, **open_kwargs):
    """Open a Level-2 calibrated image as an `~roman_datamodels.datamodels.ImageModel`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``*_cal.asdf`` file.
    **open_kwargs
        Passed to `roman_datamodels.datamodels.open`.

    Returns
    -------
    roman_datamodels.datamodels.ImageModel

    Raises
    ------
    RomosaicInputError
        If the file is missing or unreadable, or holds another kind of model.
    """
    path = Path(path)
    model = open_roman_file(path, **open_kwargs)
    try:
        require_image_model(model, source=path)
    except ModelTypeError:
        model.close()
        raise
    return model


def open_mosaic_model(path, **open_kwargs):
    """Open a Level-3 mosaic (a ``roman_mos`` coadd) as a ``MosaicModel``.

    Parameters
    ----------
    path : str or os.PathLike
        A ``*_coadd.asdf`` file.
    **open_kwargs
        Passed to `roman_datamodels.datamodels.open`.

    Returns
    -------
    roman_datamodels.datamodels.MosaicModel

    Raises
    ------
    RomosaicInputError
        If the file is missing or unreadable.
    ModelTypeError
        If it holds another kind of model.
    """
    path = Path(path)
    model = open_roman_file(path, **open_kwargs)
    if not isinstance(model, rdm.MosaicModel):
        kind = type(model).__name__
        model.close()
        raise ModelTypeError(f"{path}: is a {kind}, not a mosaic (MosaicModel)")
    return model


def inspect_image_model(model, *, source=None, good_bits=DEFAULT_GOOD_BITS):
    """Check that an image can be processed, before any step runs.

    Reads every array (so a file truncated or corrupted in its data blocks
    is found now, not in the middle of a step), and checks the data shape
    and the WCS (`check_image_wcs`).

    Parameters
    ----------
    model : roman_datamodels.datamodels.ImageModel
    source : str, optional
        Name used in messages; defaults to ``meta.filename``.
    good_bits : str or int, optional
        Acceptable DQ flags (see `romosaic.dq`).

    Returns
    -------
    str or None
        None if the image has usable pixels, else why it has none (for a
        warning: such an image is skipped, not an error, unless every image
        of the association is like it).

    Raises
    ------
    RomosaicInputError
        For an image that cannot be processed at all.
    """
    name = str(source or _model_filename(model))
    arrays = {}
    for array_name in IMAGE_ARRAYS:
        try:
            value = getattr(model, array_name, None)
            if value is not None:
                arrays[array_name] = np.asarray(value)
        except Exception as error:  # asdf block, decompression and I/O errors alike
            raise RomosaicInputError(
                f"{name}: array '{array_name}' cannot be read; the file is truncated or "
                f"corrupt ({one_line_message(error)})") from None
    data = arrays.get("data")
    if data is None or data.ndim != 2 or 0 in data.shape:
        shape = None if data is None else data.shape
        raise RomosaicInputError(f"{name}: data is not a 2-D image (shape {shape})")
    for array_name, value in arrays.items():
        if value.shape != data.shape:
            raise RomosaicInputError(
                f"{name}: array '{array_name}' has shape {value.shape}, but data has "
                f"{data.shape}")
    check_image_wcs(model.meta.get("wcs"), data.shape, name)
    finite = np.isfinite(data)
    if not finite.any():
        return "every data value is NaN or infinite"
    good = good_pixel_mask(arrays["dq"], good_bits) if "dq" in arrays else np.ones_like(finite)
    if not good.any():
        return "every pixel is flagged as unusable in dq"
    if not (finite & good).any():
        return "no pixel is both finite and unflagged"
    return None


def exposure_time_of(meta):
    """An image's exposure time in seconds, or None when it is not a positive number.

    Parameters
    ----------
    meta : mapping
        The model's ``meta``.

    Returns
    -------
    float or None

    Examples
    --------
    >>> exposure_time_of({"exposure": {"exposure_time": 139.8}})
    139.8
    >>> exposure_time_of({"exposure": {"exposure_time": -999999.0}}) is None
    True
    """
    exposure = _get(meta, "exposure")
    try:
        value = float(_get(exposure, "exposure_time"))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def effective_exposure_time_of(meta):
    """An image's effective exposure time in seconds, else its exposure time.

    The reference pipeline sums ``meta.exposure.effective_exposure_time``
    into a mosaic's exposure-time map (``meta.coadd_info``). An image whose
    effective time is not a positive number (the -999999 of placeholder
    metadata) counts with ``exposure_time`` instead.

    Parameters
    ----------
    meta : mapping
        The model's ``meta``.

    Returns
    -------
    float or None
        None when neither time is a positive number.

    Examples
    --------
    >>> effective_exposure_time_of({"exposure": {"exposure_time": 152.04,
    ...                                          "effective_exposure_time": 145.92}})
    145.92
    >>> effective_exposure_time_of({"exposure": {"exposure_time": 152.04,
    ...                                          "effective_exposure_time": -999999.0}})
    152.04
    """
    try:
        value = float(_get(_get(meta, "exposure"), "effective_exposure_time"))
    except (TypeError, ValueError):
        value = math.nan
    if math.isfinite(value) and value > 0:
        return value
    return exposure_time_of(meta)


def recorded_orientation(meta):
    """The orientation of an image's aperture as its pointing metadata records it.

    The reference pipeline orients a free mosaic grid this way: the position
    angle of the aperture's y axis is ``roll_ref - vparity * v3yangle``
    (``meta.wcsinfo``), with the parity ``vparity``.

    Parameters
    ----------
    meta : mapping
        The model's ``meta``.

    Returns
    -------
    (float, int) or None
        Position angle of +y east of north in degrees, and the parity
        (-1 for the usual "east left" sky); None when ``roll_ref`` or
        ``v3yangle`` is missing or a placeholder (-999999), or ``vparity``
        is not ±1.

    Examples
    --------
    >>> recorded_orientation({"wcsinfo": {"roll_ref": 70.3, "v3yangle": -60.0,
    ...                                   "vparity": -1}})
    (10.3, -1)
    >>> recorded_orientation({"wcsinfo": {"roll_ref": -999999.0, "v3yangle": -60.0,
    ...                                   "vparity": -1}}) is None
    True
    """
    wcsinfo = _get(meta, "wcsinfo")
    try:
        roll = float(_get(wcsinfo, "roll_ref"))
        yangle = float(_get(wcsinfo, "v3yangle"))
        parity = int(_get(wcsinfo, "vparity"))
    except (TypeError, ValueError):
        return None
    # Angles are degrees within a turn or so; -999999 is a placeholder.
    if parity not in (-1, 1) or not all(math.isfinite(v) and abs(v) <= 720.0
                                        for v in (roll, yangle)):
        return None
    angle = (roll - parity * yangle + 180.0) % 360.0 - 180.0
    return round(angle, 12), parity


def check_image_wcs(wcs, shape, name):
    """Raise `RomosaicInputError` unless ``wcs`` places an image on the sky.

    The WCS must give finite sky positions at the image's corners, edge
    midpoints and centre, and must not squash the image to a point. Its
    inverse is not checked: drizzling uses only the forward transform of an
    input, and what maps sky positions onto an input finds its own inverse
    (`romosaic.image_inverse`), so a WCS without one is usable.

    Parameters
    ----------
    wcs : gwcs.wcs.WCS or None
    shape : tuple of int
        Array shape ``(ny, nx)``.
    name : str
        File name for messages.
    """
    if wcs is None:
        raise RomosaicInputError(f"{name}: has no WCS (meta.wcs)")
    ny, nx = shape
    x, y = np.meshgrid([0.0, (nx - 1) / 2, nx - 1.0], [0.0, (ny - 1) / 2, ny - 1.0])
    x, y = x.ravel(), y.ravel()
    try:
        with np.errstate(all="ignore"):
            ra, dec = (np.asarray(v, dtype=float) for v in wcs(x, y, with_bounding_box=False))
    except Exception as error:
        raise RomosaicInputError(
            f"{name}: WCS cannot be evaluated ({one_line_message(error)})") from None
    if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
        raise RomosaicInputError(f"{name}: WCS gives no sky position for some pixels")
    # Corner-to-corner separation: a WCS that maps the image to one point
    # (a zero CD matrix) cannot be inverted and has no pixel scale.
    spread = np.ptp(dec) + np.ptp(ra) * math.cos(math.radians(float(np.median(dec))))
    if not spread > 0:
        raise RomosaicInputError(
            f"{name}: WCS is not invertible (it maps the whole image to one sky position)")


def require_image_model(model, *, source=None):
    """Raise `ModelTypeError` unless ``model`` is an ``ImageModel``.

    Parameters
    ----------
    model : object
    source : str or os.PathLike, optional
        Name used in the message; defaults to the model's ``meta.filename``.
    """
    if isinstance(model, rdm.ImageModel):
        return
    name = source or _model_filename(model)
    kind = type(model).__name__
    raise ModelTypeError(
        f"{name}: is a {kind}, but romosaic needs Level-2 calibrated images (ImageModel)"
    )


def image_geometry(meta, shape):
    """An image's ``(wcs, shape)``, with a one-line error when it has none.

    Parameters
    ----------
    meta : roman_datamodels DNode
        The image's ``meta``: an open model's, or a library's
        `~romosaic.library.MemberMetadata` ``meta``.
    shape : tuple of int
        Shape of its data array.

    Returns
    -------
    wcs : gwcs.wcs.WCS
    shape : tuple of int
        ``(ny, nx)`` of the data array.

    Raises
    ------
    romosaic.errors.RomosaicInputError
        Without ``meta.wcs``, or when the data are not a 2-D image.
    """
    name = meta.get("filename", "image")
    if meta.get("wcs") is None:
        raise RomosaicInputError(f"{name}: has no WCS (meta.wcs)")
    shape = tuple(shape)
    if len(shape) != 2:
        raise RomosaicInputError(f"{name}: data is not a 2-D image (shape {shape})")
    return meta.wcs, shape


def read_exposure_group_id(path):
    """The exposure group of a file, read without loading its arrays.

    The group is ``meta.group_id`` when present, else
    ``meta.observation.observation_id``, which is unique per exposure and
    shared by all detectors of that exposure.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str or None
        None when the file records neither.
    """
    # lazy_load keeps array blocks unread, and lazy_tree converts only the
    # nodes looked at: the WCS and the times are never built (half the cost
    # of reading the tree, paid once per input before any step runs).
    try:
        with asdf.open(path, lazy_load=True, memmap=False, lazy_tree=True) as af:
            meta = af.tree.get("roman", {}).get("meta", {})
            return _group_id_from_meta(meta)
    except FileNotFoundError:
        raise RomosaicInputError(f"{path}: file not found") from None
    except Exception as error:
        raise RomosaicInputError(
            f"{path}: not a readable Roman data file ({one_line_message(error)})"
        ) from None


def group_id_from_model(model):
    """The exposure group of an open model (see `read_exposure_group_id`)."""
    return _group_id_from_meta(model.meta)


def _group_id_from_meta(meta):
    group_id = _get(meta, "group_id")
    if group_id not in (None, ""):
        return str(group_id)
    observation_id = _get(_get(meta, "observation"), "observation_id")
    if observation_id in (None, "", "?"):
        return None
    return str(observation_id)


def _get(node, key):
    if node is None:
        return None
    try:
        return node[key]
    except (KeyError, TypeError):
        return getattr(node, key, None)


def _model_filename(model):
    try:
        return model.meta.filename
    except AttributeError:
        return repr(model)


def one_line_message(error):
    text = str(error).strip().splitlines()
    message = text[0] if text else type(error).__name__
    return message if len(message) < 200 else message[:197] + "..."


def set_array(model, name, values):
    """Give a model's array new values, in its own memory when possible.

    An array read from a file is a view of a buffer that asdf keeps (its
    block cache) until the file is closed. Assigning a new array to the
    model would keep both in memory: 200 MiB more for each 4088 x 4088
    image whose data, error and variances a step rescales. Writing into the
    existing array avoids that. A new array is assigned when there is no
    array yet, or when it is read-only or of another shape or dtype.

    Parameters
    ----------
    model : roman_datamodels.datamodels.DataModel
    name : str
        Array attribute, e.g. ``"data"``.
    values : numpy.ndarray
        The new values.

    Examples
    --------
    >>> import numpy as np
    >>> import roman_datamodels.datamodels as rdm
    >>> model = rdm.ImageModel.create_fake_data(shape=(2, 2))
    >>> before = model.data
    >>> set_array(model, "data", np.full((2, 2), 3.0, np.float32))
    >>> model.data is before, float(before[0, 0])
    (True, 3.0)
    """
    current = getattr(model, name, None)
    existing = None if current is None else np.asarray(current)
    if (existing is not None and existing.flags.writeable and existing.shape == values.shape
            and existing.dtype == values.dtype):
        existing[...] = values
    else:
        setattr(model, name, values)
