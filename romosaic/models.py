"""Opening Level-2 images with clear errors, and reading their metadata cheaply.

Everything that can go wrong when opening a user's file (missing, not ASDF,
truncated, not a Roman data model, a model of the wrong type) becomes a
one-line `~romosaic.errors.RomosaicInputError` naming the file.
"""

import logging
from pathlib import Path

import asdf
import roman_datamodels.datamodels as rdm

from .errors import ModelTypeError, RomosaicInputError

__all__ = [
    "group_id_from_model",
    "open_image_model",
    "read_exposure_group_id",
    "require_image_model",
]

log = logging.getLogger(__name__)


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
    if not path.is_file():
        raise RomosaicInputError(f"{path}: file not found")
    try:
        model = rdm.open(path, **open_kwargs)
    except Exception as error:  # asdf, yaml, validation and decompression errors alike
        raise RomosaicInputError(
            f"{path}: not a readable Roman data file ({one_line_message(error)})"
        ) from None
    try:
        require_image_model(model, source=path)
    except ModelTypeError:
        model.close()
        raise
    return model


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
    # lazy_load keeps array blocks unread; only the YAML tree is parsed.
    try:
        with asdf.open(path, lazy_load=True, memmap=False) as af:
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
