"""The model library: an association's images, borrowed one at a time.

`ModelLibrary` builds on stpipe's `~stpipe.library.AbstractModelLibrary`
(borrow/shelve, exposure groups, ``on_disk`` temporary files). romosaic's
version adds:

* more kinds of input — an association file or dictionary, a single
  ``_cal.asdf`` file, a list of file names, or a list of open models;
* validation of the association up front, with one-line errors;
* exposure groups read from the file headers without loading arrays;
* its own temporary directory, removed by `ModelLibrary.close` (the pipeline
  calls it on success and on error) and, as a safety net, at exit; named
  after the process that made it, so that a later run removes it if that
  process was killed (see `romosaic._atomic`);
* member paths are always local files: stpipe would hand a member that looks
  like a URL to the file opener, which may fetch it over the network;
* optionally (``allow_external_members=False``), members must lie inside the
  association's directory;
* `ModelLibrary.drop_members`, to leave out images found unusable before any
  step has run;
* no per-step rewrite of every model: stpipe's default ``finalize_result``
  borrows and re-saves every model after each step, which for an ``on_disk``
  library means reading and writing every file again for nothing.

Input files are never written to: with ``on_disk=False`` modified models live
in memory; with ``on_disk=True`` they are saved in the temporary directory.
"""

import concurrent.futures
import contextlib
import copy
import logging
import os
import shutil
import weakref
from collections.abc import Mapping
from pathlib import Path

import asdf
from stpipe.datamodel import AbstractDataModel
from stpipe.library import AbstractModelLibrary, NoGroupID

from ._atomic import make_private_dir
from .associations import (
    SCIENCE_EXPTYPE,
    load_association,
    make_association,
    product_name_from_filename,
    validate_association,
)
from .errors import AssociationError, OutputError
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
    allow_external_members : bool, optional
        Accept association members outside the association's directory
        (default True: ``asn-from-list`` and ``skycell-asn`` write such paths
        when the association is kept apart from its data). False refuses
        absolute member paths and paths leading out of the directory,
        symbolic links included.
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

    def __init__(self, init, *, on_disk=False, temp_directory=None,
                 allow_external_members=True, **datamodels_open_kwargs):
        self._temp_root = None
        if not allow_external_members:
            _require_members_inside(init)
        init, self.input_source = _normalize_init(init)
        if on_disk:
            self._temp_root = make_private_dir(temp_directory or ".", "library", hidden=False)
            # Removed even if the caller forgets close() or the process exits early.
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._temp_root, True)
            log.debug("on_disk models kept in %s", self._temp_root)

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
        """Release the library's files: its temporary directory and open inputs.

        Removes the temporary directory of an ``on_disk`` library, and closes
        the models the library itself opened from files (models it was given
        open are left alone), so that their file handles are released now,
        not whenever the garbage collector gets to them: after an error, the
        exception's traceback would otherwise keep every input open.

        Safe to call more than once. The library cannot be used after this.
        """
        if self._temp_root is not None:
            self._cleanup()
        if self._asn_dir is not None:
            models = list(self._loaded_models.values()) + list(self._ledger.values())
            self._loaded_models = {}
            for model in models:
                with contextlib.suppress(Exception):
                    model.close()

    def drop_members(self, indices):
        """Leave members out of the library, before any step has run.

        Used to skip images found unusable (no finite, unflagged pixel). The
        remaining members keep their order and are renumbered from 0.

        Parameters
        ----------
        indices : iterable of int
            Members to remove.
        """
        drop = set(indices)
        if not drop:
            return
        if self._ledger:
            raise RuntimeError("cannot drop members while models are borrowed")
        keep = [index for index in range(len(self)) if index not in drop]
        renumber = {old: new for new, old in enumerate(keep)}
        self._members[:] = [self._members[index] for index in keep]
        self._loaded_models = {renumber[i]: model for i, model in self._loaded_models.items()
                               if i in renumber}
        if self._on_disk:
            for index in drop & set(self._temp_filenames):
                Path(self._temp_filenames[index]).unlink(missing_ok=True)
            self._temp_filenames = {renumber[i]: name for i, name in self._temp_filenames.items()
                                    if i in renumber}

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

    def map_models(self, function, *, modify=False, threads=1):
        """Call ``function(index, model)`` on every model; the results in index order.

        With ``threads`` above 1 and an in-memory library, the calls run in
        that many threads while this one opens the next models. Reading and
        decompressing arrays and numpy's arithmetic release the interpreter
        lock, so two cores share a step's per-model work that is mostly
        that; the results are the same as one call after another. With
        ``on_disk`` it is `iter_models`: one model in memory at a time.

        ``function`` must touch only the model it is given. If calls fail,
        the error of the first model (in index order) is raised once every
        call submitted has finished and every model is shelved again.

        Parameters
        ----------
        function : callable
            ``function(index, model)``.
        modify : bool, optional
            Whether ``function`` changes the models (see `iter_models`).
        threads : int, optional
            Threads to call ``function`` in.

        Returns
        -------
        list
        """
        if self._on_disk or threads <= 1 or len(self) <= 1:
            return [function(index, model) for index, model in self.iter_models(modify=modify)]
        borrowed = {}
        futures = []
        with self:
            try:
                with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                    try:
                        for index in range(len(self)):
                            borrowed[index] = self.borrow(index)
                            futures.append(pool.submit(function, index, borrowed[index]))
                    except BaseException:
                        # An earlier model's failure comes first, as it would
                        # one model after another.
                        concurrent.futures.wait(futures)
                        for future in futures:
                            if future.exception() is not None:
                                raise future.exception() from None
                        raise
                return [future.result() for future in futures]
            finally:
                for index, model in borrowed.items():
                    self.shelve(model, index, modify=modify)

    # -- AbstractModelLibrary interface ------------------------------------

    @property
    def crds_observatory(self):
        return "roman"

    def _datamodels_open(self, filename, **kwargs):
        return open_image_model(filename, **kwargs)

    def _member_to_filename(self, member):
        # Never a URL: the member is a local path relative to the association.
        if self._asn_dir is None:
            return member["expname"]
        return os.path.join(self._asn_dir, member["expname"])

    def _model_to_filename(self, model):
        # Only the base name: the temporary file must stay in its directory
        # whatever the model's meta.filename says.
        name = Path(str(model.meta.filename or "model.asdf")).name
        return name if name not in ("", ".", "..") else "model.asdf"

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
            try:
                return super().shelve(model, index, modify)
            except OSError as error:
                if isinstance(error, OutputError):
                    raise
                reason = error.strerror or str(error)
                raise OutputError(f"{self._temp_root}: cannot write a temporary file "
                                  f"for {model.meta.filename} ({reason})",
                                  error.errno) from None

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


def _require_members_inside(init):
    """Refuse members outside the association's directory (see ``allow_external_members``)."""
    if isinstance(init, (str, Path)) and Path(init).suffix.lower() == ".json":
        asn = load_association(init)
        base, source = Path(init).resolve().parent, str(init)
    elif isinstance(init, Mapping):
        validate_association(init, base_dir=Path.cwd(), source="association")
        asn, base, source = init, Path.cwd().resolve(), "association"
    else:
        return  # a list of files or models is not an association
    for member in asn["products"][0]["members"]:
        expname = member["expname"]
        target = (base / expname).resolve()
        if Path(expname).is_absolute() or not target.is_relative_to(base):
            raise AssociationError(
                f"{source}: member {expname} lies outside the association's directory "
                f"{base}; move it there, or set allow_external_members=true")


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
