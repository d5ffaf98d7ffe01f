"""The model library: an association's images, borrowed one at a time.

`ModelLibrary` builds on stpipe's `~stpipe.library.AbstractModelLibrary`
(borrow/shelve, exposure groups, ``on_disk`` temporary files). romosaic's
version adds:

* more kinds of input — an association file or dictionary, a single
  ``_cal.asdf`` file, a list of file names, or a list of open models;
* validation of the association up front, with one-line errors;
* exposure groups read from the file headers without loading arrays;
* its own temporary directory, removed by `ModelLibrary.close` (the pipeline
  calls it on success and on error) and, as a safety net, at exit;
* no per-step rewrite of every model: stpipe's default ``finalize_result``
  borrows and re-saves every model after each step, which for an ``on_disk``
  library means reading and writing every file again for nothing.

Input files are never written to: with ``on_disk=False`` modified models live
in memory; with ``on_disk=True`` they are saved in the temporary directory.
"""

import copy
import logging
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path

import asdf
from stpipe.datamodel import AbstractDataModel
from stpipe.library import AbstractModelLibrary, NoGroupID

from .associations import (
    SCIENCE_EXPTYPE,
    load_association,
    make_association,
    product_name_from_filename,
    validate_association,
)
from .errors import AssociationError
from .models import group_id_from_model, open_image_model, read_exposure_group_id

__all__ = ["ModelLibrary"]

log = logging.getLogger(__name__)


class ModelLibrary(AbstractModelLibrary):
    """The images of one association, with borrow/shelve access.

    Parameters
    ----------
    init : str, os.PathLike, dict, list, or ModelLibrary
        An association JSON file, a Level-2 ``.asdf`` file, an association
        dictionary (member paths relative to the current directory), a list of
        file names, or a list of open ``ImageModel`` objects.
    on_disk : bool, optional
        Keep models in temporary files between uses, so that memory holds
        about one model at a time. Not available for a list of open models.
    temp_directory : str or os.PathLike, optional
        Where to create the temporary directory for ``on_disk``; defaults to
        the current directory (not the system temporary directory, which is
        often held in memory).
    **datamodels_open_kwargs
        Passed to `roman_datamodels.datamodels.open`.

    Examples
    --------
    >>> library = ModelLibrary("mosaic_asn.json")  # doctest: +SKIP
    >>> with library:  # doctest: +SKIP
    ...     model = library.borrow(0)
    ...     print(model.meta.filename)
    ...     library.shelve(model, 0, modify=False)
    """

    def __init__(self, init, *, on_disk=False, temp_directory=None, **datamodels_open_kwargs):
        self._temp_root = None
        if on_disk:
            self._temp_root = Path(
                tempfile.mkdtemp(prefix="romosaic-tmp-", dir=temp_directory or ".")
            )
            # Removed even if the caller forgets close() or the process exits early.
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._temp_root, True)
            log.debug("on_disk models kept in %s", self._temp_root)

        init, self.input_source = _normalize_init(init)
        try:
            super().__init__(
                init,
                on_disk=on_disk,
                temp_directory=self._temp_root,
                **datamodels_open_kwargs,
            )
        except BaseException:
            self.close()
            raise

    # -- romosaic additions ------------------------------------------------

    @property
    def product_name(self):
        """The association's product name (outputs are ``<name>_<suffix>.<ext>``)."""
        product = self._asn["products"][0]
        name = product.get("name")
        if name:
            return name
        if self.input_source is not None:
            return product_name_from_filename(self.input_source)
        return "mosaic"

    @property
    def target(self):
        """The association's ``target``, or None."""
        return self._asn.get("target")

    @property
    def skycell_wcs_info(self):
        """The association's ``skycell_wcs_info`` dictionary, or None."""
        info = self._asn.get("skycell_wcs_info")
        return info if isinstance(info, Mapping) else None

    @property
    def on_disk(self):
        """Whether models are kept in temporary files between uses."""
        return self._on_disk

    def close(self):
        """Remove the temporary directory of an ``on_disk`` library.

        Safe to call more than once. The library cannot borrow models that
        were only stored in the temporary directory after this.
        """
        if self._temp_root is not None:
            self._cleanup()

    def iter_models(self, *, modify=False):
        """Borrow each model in turn, yielding ``(index, model)``.

        The model is shelved (and, with ``modify`` and ``on_disk``, saved to
        the temporary directory) before the next one is borrowed, so that
        only one model is in memory at a time.
        """
        with self:
            for index in range(len(self)):
                model = self.borrow(index)
                try:
                    yield index, model
                finally:
                    self.shelve(model, index, modify=modify)
                del model

    # -- AbstractModelLibrary interface ------------------------------------

    @property
    def crds_observatory(self):
        return "roman"

    def _datamodels_open(self, filename, **kwargs):
        return open_image_model(filename, **kwargs)

    @classmethod
    def _load_asn(cls, filename):
        return _science_members_only(load_association(filename))

    def _filename_to_group_id(self, filename):
        group_id = read_exposure_group_id(filename)
        if group_id is None:
            raise NoGroupID(f"{filename} records no exposure group")
        return group_id

    def _model_to_group_id(self, model):
        group_id = group_id_from_model(model)
        if group_id is None:
            raise NoGroupID(f"{model.meta.filename} records no exposure group")
        return group_id

    def _assign_member_to_model(self, model, member):
        # The Level-2 schema has no ``meta.asn`` or ``meta.exptype``; keep only
        # the exposure group, which later steps use.
        model.meta["group_id"] = member["group_id"]

    def shelve(self, model, index=None, modify=True):
        if not (self._on_disk and modify):
            return super().shelve(model, index, modify)
        # Temporary files are only read back by this library: schema
        # validation on write (a third of a second per model) buys nothing.
        with asdf.config_context() as config:
            config.validate_on_write = False
            return super().shelve(model, index, modify)

    def finalize_result(self, step, reference_files_used):
        # Steps record their own status while they hold each model; see the
        # module docstring for why the default rewrite of every model is skipped.
        return None

    def get_crds_parameters(self):
        # romosaic never consults a reference-file service.
        return {}


def _normalize_init(init):
    """Turn any accepted input into what AbstractModelLibrary understands.

    Returns the new ``init`` and the name of the user's input (for product
    names and messages).
    """
    if isinstance(init, ModelLibrary):
        raise TypeError("pass the ModelLibrary itself rather than building a new one from it")
    if isinstance(init, (str, Path)):
        path = Path(init)
        if path.suffix.lower() == ".json":
            return str(path), str(path)
        if not path.exists():
            raise AssociationError(f"{path}: file not found")
        if path.is_dir():
            raise AssociationError(f"{path}: is a directory, not an association or image file")
        # A single image: an association of one, so that on_disk and group ids
        # work as for any association.
        return _file_list_association([path], product_name_from_filename(path)), str(path)
    if isinstance(init, Mapping):
        validate_association(init, base_dir=Path.cwd(), source="association")
        return _science_members_only(init), None
    if isinstance(init, (list, tuple)):
        if not init:
            raise AssociationError("empty list of input images")
        if all(isinstance(item, (str, Path)) for item in init):
            first = Path(init[0])
            return (
                _file_list_association([Path(p) for p in init], product_name_from_filename(first)),
                str(first),
            )
        if all(isinstance(item, AbstractDataModel) for item in init):
            return list(init), None
        raise AssociationError("a list of inputs must hold only file names or only models")
    raise AssociationError(f"cannot make a model library from {type(init).__name__}")


def _science_members_only(asn):
    """A copy of a validated association keeping only its science members.

    stpipe's own filter matches ``exptype`` case-sensitively and fails on
    members without one; romosaic treats a missing exptype as science.
    """
    asn = copy.deepcopy(dict(asn))
    product = asn["products"][0]
    product["members"] = [
        {**member, "exptype": SCIENCE_EXPTYPE}
        for member in product["members"]
        if str(member.get("exptype", SCIENCE_EXPTYPE)).lower() == SCIENCE_EXPTYPE
    ]
    return asn


def _file_list_association(paths, product_name):
    for path in paths:
        if not path.is_file():
            raise AssociationError(f"{path}: file not found")
    # Absolute member paths: messages then name files the way users know them.
    asn = make_association([p.resolve() for p in paths], product_name=product_name)
    validate_association(asn, base_dir=Path.cwd(), source=str(paths[0]))
    return asn
