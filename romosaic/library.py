"""The model library: an association's images, borrowed one at a time.

`ModelLibrary` builds on stpipe's `~stpipe.library.AbstractModelLibrary`
(borrow/shelve, exposure groups, ``on_disk`` temporary files). romosaic's
version adds:

* more kinds of input — an association file or dictionary, a single
  ``_cal.asdf`` file, a list of file names, or a list of open models;
* validation of the association up front, with one-line errors;
* exposure groups read from the file headers without loading arrays;
* images that live in their files: a member's file is opened at its first
  borrow and kept open (`_OpenedFile`, up to `KEPT_FILES` of them); each
  borrow gets a model of its own from it, whose arrays are read when first
  used and released with the model, so that memory does not grow with the
  number of inputs. What the steps change is kept as small
  per-image state (`ImageEdits`: a flux factor, a subtracted sky level,
  outlier flags, metadata updates) that every borrow applies again, the
  array changes only when an array is first read;
* its own temporary directory (``on_disk``), removed by `ModelLibrary.close`
  (the pipeline calls it on success and on error) and, as a safety net, at
  exit; named after the process that made it, so that a later run removes
  it if that process was killed (see `romosaic._atomic`);
* member paths are always local files: stpipe would hand a member that looks
  like a URL to the file opener, which may fetch it over the network;
* optionally (``allow_external_members=False``), members must lie inside the
  association's directory;
* another stpipe library (the reference pipeline's ``ModelLibrary``, in
  memory or ``on_disk``) used through its own borrow/shelve interface: a
  romosaic library made from it borrows each model from it when needed,
  never copies it whole, and hands every change back to it (see
  `ModelLibrary.write_back`);
* `ModelLibrary.drop_members`, to leave out images found unusable before any
  step has run;
* no per-step rewrite of every model: stpipe's default ``finalize_result``
  borrows and re-saves every model after each step, which for models that
  live in files means reading and writing every file again for nothing.

Input files are never written to. A model changed in a way the edits cannot
record (arrays changed directly, then shelved with ``modify=True``) is kept
whole: in memory, or with ``on_disk=True`` in a temporary file.
"""

import collections
import concurrent.futures
import contextlib
import copy
import inspect
import logging
import mmap
import os
import shutil
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asdf
import numpy as np
from asdf.tags.core import NDArrayType
from stpipe.datamodel import AbstractDataModel
from stpipe.library import AbstractModelLibrary, BorrowError, ClosedLibraryError, NoGroupID

from ._atomic import make_private_dir
from .associations import (
    SCIENCE_EXPTYPE,
    load_association,
    make_association,
    product_name_from_filename,
    validate_association,
)
from .errors import AssociationError, OutputError
from .flux import VARIANCE_ARRAYS, scale_to_surface_brightness
from .models import group_id_from_model, open_image_model, read_exposure_group_id

__all__ = ["DQFlags", "FluxScale", "ImageEdits", "MemberMetadata", "MetaUpdate", "ModelLibrary",
           "SkySubtraction"]

log = logging.getLogger(__name__)

#: Most member files a library keeps open between borrows (`_OpenedFile`):
#: each holds a file handle and the file's converted metadata (0.1-0.2 MiB
#: for a Level-2 image). Members beyond are opened at each borrow.
KEPT_FILES = 64

# -- per-image edits ------------------------------------------------------------


@dataclass(frozen=True)
class FluxScale:
    """DN/s → MJy/sr: data and err times ``factor``, variances times its square.

    Arithmetic and float16 rounding are those of
    `romosaic.flux.scale_to_surface_brightness`.

    Parameters
    ----------
    factor : float
        MJy/sr per DN/s.
    """

    factor: float

    arrays = ("data", "err", *VARIANCE_ARRAYS)

    def apply_to(self, name, array):
        return scale_to_surface_brightness({name: array}, self.factor,
                                           in_place=_may_write_into(array))[name]


@dataclass(frozen=True)
class SkySubtraction:
    """A sky level removed from the data, in float32.

    Parameters
    ----------
    level : float
        In the data's units.
    """

    level: float

    arrays = ("data",)

    def apply_to(self, name, array):
        level = np.float32(self.level)
        if array.dtype == np.float32 and _may_write_into(array):
            return np.subtract(array, level, out=array)
        return np.asarray(array, dtype=np.float32) - level


@dataclass(frozen=True)
class DQFlags:
    """Flags ORed into some pixels of ``dq``.

    Build it with `DQFlags.from_indices`, which stores the pixels in the
    smaller of two forms: their flat indices, or a packed bit mask (one bit
    per pixel) when many pixels are flagged.

    Parameters
    ----------
    flags : int
        The bits to set.
    indices : numpy.ndarray or None
        Flat (C-order) pixel indices.
    packed : numpy.ndarray of uint8 or None
        ``numpy.packbits`` of the flat mask of ``size`` pixels.
    size : int
        Pixels in the image.
    """

    flags: int
    indices: np.ndarray | None
    packed: np.ndarray | None
    size: int

    arrays = ("dq",)

    @classmethod
    def from_indices(cls, flat_indices, flags, size):
        """Store ``flat_indices`` compactly.

        Parameters
        ----------
        flat_indices : array_like of int
            Flat indices of the pixels to flag.
        flags : int
            The bits to set.
        size : int
            Pixels in the image.

        Returns
        -------
        DQFlags

        Examples
        --------
        >>> few = DQFlags.from_indices([3, 7], 16, size=4096 * 4096)
        >>> few.indices.tolist(), few.nbytes
        ([3, 7], 8)
        >>> many = DQFlags.from_indices(range(0, 64, 2), 16, size=64)
        >>> many.indices is None, many.nbytes
        (True, 8)
        """
        indices = np.asarray(flat_indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise ValueError(f"pixel indices outside an image of {size} pixels")
        dtype = np.uint32 if size <= 2**32 else np.uint64
        if indices.size * np.dtype(dtype).itemsize <= (size + 7) // 8:
            return cls(int(flags), indices.astype(dtype), None, int(size))
        mask = np.zeros(size, bool)
        mask[indices] = True
        return cls(int(flags), None, np.packbits(mask), int(size))

    @property
    def nbytes(self):
        """Bytes the pixel list takes."""
        return int((self.indices if self.indices is not None else self.packed).nbytes)

    def apply_to(self, name, array):
        if array.size != self.size:
            raise ValueError(f"dq has {array.size} pixels, but flags were recorded for "
                             f"{self.size}")
        ok = array.dtype == np.uint32 and array.flags.c_contiguous and _may_write_into(array)
        dq = array if ok else np.array(array, dtype=np.uint32)
        flat = dq.reshape(-1)
        where = (self.indices if self.indices is not None
                 else np.unpackbits(self.packed, count=self.size).view(bool))
        flat[where] |= np.uint32(self.flags)
        return dq


@dataclass(frozen=True)
class MetaUpdate:
    """Values put into ``model.meta``.

    Parameters
    ----------
    items : tuple of (tuple of str, object)
        ``(path, value)`` pairs, applied in order: ``(("cal_step", "flux"),
        "COMPLETE")`` sets ``model.meta["cal_step"]["flux"]``. Every node
        above the last key must exist.
    """

    items: tuple

    def apply(self, model):
        for path, value in self.items:
            node = model.meta
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = _fresh(value)


@dataclass(frozen=True)
class _KeptTree:
    """Every entry of a model but its arrays (``meta`` above all), kept whole.

    Recorded when a model is shelved with ``modify=True`` without any of its
    arrays read: only those entries can have changed.
    """

    entries: dict

    def apply(self, model):
        node = model._instance
        for key in [k for k in node if k not in self.entries and not _is_array(node[k])]:
            del node[key]
        for key, value in self.entries.items():
            node[key] = value


@dataclass
class ImageEdits:
    """What the steps changed in one image, applied over its file.

    Array edits (`FluxScale`, `SkySubtraction`, `DQFlags`) are applied, in
    the order recorded, to each array when it is first read after a borrow;
    metadata edits (`MetaUpdate`) at the borrow itself.

    Attributes
    ----------
    edits : list
        The edits, in the order recorded.
    """

    edits: list = field(default_factory=list)

    @property
    def flux_scale(self):
        """The product of the recorded flux factors, or None without any."""
        factors = [e.factor for e in self.edits if isinstance(e, FluxScale)]
        return float(np.prod(factors)) if factors else None

    @property
    def nbytes(self):
        """Bytes taken by the recorded pixel lists (the only sizeable part)."""
        return sum(e.nbytes for e in self.edits if isinstance(e, DQFlags))

    def apply(self, model):
        """Apply every edit to a model just opened from its file.

        Parameters
        ----------
        model : roman_datamodels.datamodels.ImageModel
        """
        for edit in self.edits:
            _apply_edit(model, edit)


@dataclass(frozen=True)
class MemberMetadata:
    """A member's metadata, with every recorded edit, and its data's shape.

    What `ModelLibrary.metadata` returns: the metadata-only passes of the
    steps (grids, exposure times, units, recorded states) read it instead
    of opening the member's file again. It has a model's ``meta``, so
    functions that look only at ``model.meta`` take it as they take a model.

    Attributes
    ----------
    meta : roman_datamodels DNode
        The model's ``meta``: a copy detached from the file, or, for a
        model kept in memory, its own. Read it; record changes with the
        library's edit methods (`ModelLibrary.update_meta`).
    shape : tuple of int
        Shape of the data array.
    """

    meta: object
    shape: tuple


def _apply_edit(model, edit):
    """Apply one edit to ``model``; array edits wait for the array's first read."""
    if not hasattr(edit, "arrays"):
        edit.apply(model)
        return
    for name in edit.arrays:
        value = getattr(model, name, None)
        if value is None:
            continue
        if _defer(value, name, edit):
            continue
        array = np.asarray(value)
        result = edit.apply_to(name, array)
        if result is not array:
            setattr(model, name, result)


# asdf reads an array from its file on first use (``NDArrayType``). An array
# not read yet gets its edits then: a borrow that only needs metadata, or a
# few arrays, does not read and convert the others. asdf builds the array in
# ``_make_array``; the instance's own ``_make_array`` reads it, then edits it.
_CAN_DEFER = callable(getattr(NDArrayType, "_make_array", None))


class _EditOnRead:
    """An ``NDArrayType``'s ``_make_array``: read the array, then apply edits.

    Holds the array object through a weak reference, so that the array and
    this function do not keep each other alive after the model is dropped.
    """

    def __init__(self, value, name):
        self._value = weakref.ref(value)
        self._lock = threading.Lock()
        self.name = name
        self.edits = []

    def __call__(self):
        value = self._value()
        # Two threads reading the array at once must not both edit it.
        with self._lock:
            if value._array is None or not self.edits_applied:
                array = NDArrayType._make_array(value)
                for edit in self.edits:
                    array = edit.apply_to(self.name, array)
                value._array = array
                self.edits_applied = True
            return value._array

    edits_applied = False


def _defer(value, name, edit):
    """Queue ``edit`` on an array not read from its file yet; False if it was read."""
    if not (_CAN_DEFER and isinstance(value, NDArrayType)):
        return False
    hook = value.__dict__.get("_make_array")
    if isinstance(hook, _EditOnRead):
        with hook._lock:
            if hook.edits_applied:
                return False
            hook.edits.append(edit)
            return True
    if getattr(value, "_array", True) is not None:
        return False
    hook = _EditOnRead(value, name)
    hook.edits.append(edit)
    value._make_array = hook
    return True


class _OpenedFile:
    """A member's file, opened once: each borrow gets a model of its own from it.

    Opening a file converts its whole metadata tree (WCS, times, units): 6-20
    ms of the interpreter's time, which a run would otherwise spend at every
    borrow (each step borrows every member at least once). The model opened
    here is never handed out. A borrow gets a deep copy of its entries
    other than arrays, and arrays that read their blocks through this
    file anew each time, never into asdf's per-file cache: a borrowed
    array is freed with the model that read it, as one opened alone, and
    edits applied to it in place cannot reach another borrow.

    Parameters
    ----------
    model : roman_datamodels.datamodels.DataModel
        Just opened from the file, with lazily read arrays (`rereadable`).
    """

    def __init__(self, model):
        self._model = model
        # One read of this file at a time: a model released while one of
        # its arrays is still being read must not share the file position
        # with the next borrow's reads.
        self._lock = threading.Lock()

    @staticmethod
    def rereadable(model):
        """Whether every array of ``model`` is still unread in a block of its own file."""
        node = model._instance
        arrays = [node[key] for key in node if _is_array(node[key])]
        return _CAN_REREAD and all(
            isinstance(value, NDArrayType) and _is_unread(value)
            and isinstance(value._source, int) and value._mask is None
            for value in arrays)

    def fresh_model(self):
        """A model of the file as a new opening would give it."""
        node = self._model._instance
        fresh = type(node)()
        for key in node:
            value = node[key]
            fresh[key] = (self._fresh_array(value) if isinstance(value, NDArrayType)
                          else copy.deepcopy(value))
        return type(self._model)(fresh)

    def _fresh_array(self, value):
        return NDArrayType(value._source, value._shape, value._dtype, value._offset,
                           value._strides, value._order, value._mask,
                           _UncachedBlock(value._data_callback, self))

    def read_block(self, callback, attr):
        with self._lock:
            return callback(attr)

    def close(self):
        self._model.close()


class _UncachedBlock:
    """An array's access to its block through an `_OpenedFile`, without asdf's cache.

    Holds the opened file, so that it stays open while an array that may
    still be read from it lives (as the model of a file opened alone does).
    """

    def __init__(self, callback, opened):
        self._callback = callback
        self._opened = opened

    def __call__(self, _attr=None):
        # asdf keeps the block's bytes ("cached_data") for as long as the
        # file is open; a borrow's array must own its bytes instead.
        return self._opened.read_block(self._callback, None if _attr == "cached_data" else _attr)


# Arrays of an `_OpenedFile` are built as asdf builds them on opening.
_CAN_REREAD = _CAN_DEFER and list(inspect.signature(NDArrayType).parameters) == [
    "source", "shape", "dtype", "offset", "strides", "order", "mask", "data_callback"]


def _is_array(value):
    return isinstance(value, (np.ndarray, NDArrayType))


def _is_unread(value):
    """Whether ``value`` is an array still in its file (so certainly unchanged)."""
    if not isinstance(value, NDArrayType):
        return False
    hook = value.__dict__.get("_make_array")
    if isinstance(hook, _EditOnRead):
        return not hook.edits_applied
    return getattr(value, "_array", True) is None


def _may_write_into(array):
    """Whether an edit may change ``array`` in place.

    Never a memory-mapped file: with a writable mapping that would change
    the input file itself.
    """
    if not array.flags.writeable:
        return False
    base = array
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return False
        base = getattr(base, "base", None)
    return True


def _fresh(value):
    """A copy of plain containers, so that no two models share a recorded dict."""
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value


class ModelLibrary(AbstractModelLibrary):
    """The images of one association, with borrow/shelve access.

    A member read from a file lives in that file: borrowing opens it (its
    arrays are read when first used) and shelving releases it, so memory
    holds only the models borrowed at the moment, however many images the
    association has. What the steps change is recorded with
    `record_flux_scale`, `record_sky_subtraction`, `add_dq_flags` and
    `update_meta` (see `ImageEdits`) and applied again at every borrow, so
    every borrower sees the changed model. A model changed in another way
    and shelved with ``modify=True`` is kept whole instead (in memory, or
    with ``on_disk`` in a temporary file), so no change is ever lost: only
    its metadata when none of its arrays was read, else the whole model.
    Open models given in a list stay in memory, and edits change them at
    once.

    Parameters
    ----------
    init : str, os.PathLike, dict, list, or stpipe.library.AbstractModelLibrary
        An association JSON file, a Level-2 ``.asdf`` file, an association
        dictionary (member paths relative to the current directory), a list of
        file names, a list of open ``ImageModel`` objects, or a library of
        another class (the reference pipeline's ``ModelLibrary``, for
        instance). Models of such a *source library* are borrowed from it
        one at a time; edits change them as they are borrowed and are
        shelved back into it, so it holds the steps' results (in memory or
        in its own temporary files, as it was made).
    on_disk : bool, optional
        Where a model changed outside the recorded edits is kept: False
        (default) in memory, True in a temporary file, so that memory stays
        bounded even then. Members read from files are handled the same way
        in both modes (no temporary copies of inputs). Outlier detection also
        keeps its group drizzles in memory-mapped files when True. Not
        available for a list of open models.
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
    ...     library.record_flux_scale(0, model.meta.photometry.conversion_megajanskys)
    ...     library.update_meta(0, {"cal_step.flux": "COMPLETE"})
    ...     library.shelve(model, 0, modify=False)  # changes are recorded, not in the model
    >>> library.edits(0).flux_scale  # doctest: +SKIP
    0.0254
    """

    def __init__(self, init, *, on_disk=False, temp_directory=None,
                 allow_external_members=True, **datamodels_open_kwargs):
        self._temp_root = None
        self._source = None
        if isinstance(init, AbstractModelLibrary) and not isinstance(init, ModelLibrary):
            # The source library keeps its models its own way; this one
            # keeps nothing whole, so on_disk has nothing to do here.
            self._source = _SourceLibrary(init)
            init, on_disk = _thaw(init.asn), False
            self.input_source = None
        else:
            if not allow_external_members:
                _require_members_inside(init)
            init, self.input_source = _normalize_init(init)
        if on_disk:
            self._temp_root = make_private_dir(temp_directory or ".", "library", hidden=False)
            # Removed even if the caller forgets close() or the process exits early.
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._temp_root, True)
            log.debug("on_disk models kept in %s", self._temp_root)

        # Per member read from a file: the edits applied over that file (or
        # over the member's temporary file, see shelve).
        self._edits = {}
        # Per borrowed member read from a file: its arrays as opened, to tell
        # at shelve time whether any was read (and so possibly changed).
        self._unread_arrays = {}
        # Per member read from a file: its metadata as a borrow would show it
        # now (`metadata`), taken at its first open and kept up to date by
        # the metadata edits recorded since.
        self._metadata = {}
        # Per member read from its own file: that file, opened once for
        # every borrow (`_OpenedFile`), for at most `KEPT_FILES` members.
        self._opened_files = {}
        self._edits_lock = threading.Lock()
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
        if self._source is not None:
            # Member paths are the source's (None for models given in memory).
            self._asn_dir = self._source.library._asn_dir

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
        """Whether models changed outside the recorded edits go to temporary files."""
        if self._source is not None:
            return self._source.on_disk
        return self._on_disk

    @property
    def source_library(self):
        """The library of another class this one borrows from, or None."""
        return None if self._source is None else self._source.library

    def write_back(self):
        """Hand the edits not yet in the source library's models to it.

        Edits recorded while a model is borrowed change it at once and are
        shelved into the source library with it; an edit recorded for a
        member not borrowed at the time waits for its next borrow. This
        borrows each such member once more, so that the source library's
        models carry every change when the step returns it. Does nothing
        for a library without a source library.
        """
        if self._source is None:
            return
        with self._edits_lock:
            pending = sorted(index for index, edits in self._edits.items() if edits)
        if not pending:
            return
        with self:
            for index in pending:
                self.shelve(self.borrow(index), index, modify=False)

    def close(self):
        """Release the library's files: its temporary directory and open inputs.

        Removes the temporary directory of an ``on_disk`` library, and closes
        the models and files the library itself opened (models it was given
        open are left alone), so that their file handles are released now,
        not whenever the garbage collector gets to them: after an error, the
        exception's traceback would otherwise keep every input open.

        Safe to call more than once. The library cannot be used after this.
        """
        if self._temp_root is not None:
            self._cleanup()
        if self._source is not None:
            # The source library's models are its own to close.
            self._source.release()
            return
        if self._asn_dir is not None:
            models = list(self._loaded_models.values()) + list(self._ledger.values())
            self._loaded_models = {}
            opened, self._opened_files = list(self._opened_files.values()), {}
            for model in models + opened:
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
        if self._source is not None:
            self._source.keep(keep)
        self._loaded_models = {renumber[i]: model for i, model in self._loaded_models.items()
                               if i in renumber}
        self._edits = {renumber[i]: edits for i, edits in self._edits.items() if i in renumber}
        self._metadata = {renumber[i]: kept for i, kept in self._metadata.items() if i in renumber}
        for index in drop & set(self._opened_files):
            self._opened_files.pop(index).close()
        self._opened_files = {renumber[i]: opened for i, opened in self._opened_files.items()}
        if self._on_disk:
            for index in drop & set(self._temp_filenames):
                Path(self._temp_filenames[index]).unlink(missing_ok=True)
            self._temp_filenames = {renumber[i]: name for i, name in self._temp_filenames.items()
                                    if i in renumber}

    # -- recorded edits ----------------------------------------------------

    def edits(self, index):
        """The edits recorded for member ``index`` over its file.

        Parameters
        ----------
        index : int

        Returns
        -------
        ImageEdits
            A copy. Empty for a model kept in memory (given open, or changed
            outside the recorded edits): edits change such a model at once.
        """
        self._check_index(index)
        return ImageEdits(list(self._edits.get(index, ())))

    def record_flux_scale(self, index, factor):
        """Record a DN/s → MJy/sr conversion of member ``index``.

        Data and err are multiplied by ``factor`` and the variances by its
        square (see `FluxScale`).

        Parameters
        ----------
        index : int
        factor : float
            MJy/sr per DN/s.
        """
        self._record(index, FluxScale(float(factor)))

    def record_sky_subtraction(self, index, level):
        """Record that ``level`` is subtracted from the data of member ``index``.

        Parameters
        ----------
        index : int
        level : float
            In the data's units.
        """
        self._record(index, SkySubtraction(float(level)))

    def add_dq_flags(self, index, flat_indices, flags):
        """Record ``flags`` ORed into some pixels of member ``index``'s ``dq``.

        Parameters
        ----------
        index : int
        flat_indices : array_like of int
            Flat (C-order) indices of the pixels.
        flags : int
            The bits to set.

        Examples
        --------
        >>> library.add_dq_flags(0, np.flatnonzero(mask), OUTLIER_FLAGS)  # doctest: +SKIP
        """
        self._check_index(index)
        size = self._data_size(index)
        self._record(index, DQFlags.from_indices(flat_indices, flags, size))

    def update_meta(self, index, updates):
        """Record new metadata values for member ``index``.

        Parameters
        ----------
        index : int
        updates : dict
            Dotted paths under ``meta`` and their values, set in the order
            given: ``{"cal_step.flux": "COMPLETE", "background": {...}}``.
            Every node above the last key must exist (record while the
            model is borrowed to find a missing one at once).
        """
        items = tuple((tuple(str(path).split(".")), value) for path, value in updates.items())
        self._record(index, MetaUpdate(items))

    def _record(self, index, edit):
        """Apply ``edit`` to the model as it is now, and keep it for later borrows."""
        self._check_index(index)
        with self._edits_lock:
            held = self._loaded_models.get(index)
            borrowed = self._ledger[index] if index in self._ledger else None
            for model in {id(m): m for m in (held, borrowed) if m is not None}.values():
                _apply_edit(model, edit)
            if self._source is not None:
                # The source library keeps a changed model: an edit goes into
                # the borrowed model, or waits for the member's next borrow.
                if borrowed is None:
                    self._edits.setdefault(index, []).append(edit)
                else:
                    self._source.changed.add(index)
            elif held is None:
                self._edits.setdefault(index, []).append(edit)
            kept = self._metadata.get(index)
            if kept is not None and isinstance(edit, MetaUpdate):
                edit.apply(kept)

    def _check_index(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"no member {index} in a library of {len(self)}")

    def _data_size(self, index):
        """Pixels of member ``index``'s data, read from the model or its file header."""
        model = self._loaded_models.get(index)
        if model is None and index in self._ledger:
            model = self._ledger[index]
        if model is None:
            # Opened here without closing the library if the caller has it open.
            was_open, self._open = self._open, True
            try:
                model = self.borrow(index)
                try:
                    return int(np.prod(model.data.shape))
                finally:
                    self.shelve(model, index, modify=False)
            finally:
                self._open = was_open
        return int(np.prod(model.data.shape))

    def metadata(self, index):
        """Member ``index``'s metadata and data shape, without reading its arrays.

        A member read from a file is opened only the first time (by this
        call or any borrow); after that its metadata comes from memory,
        with every metadata edit recorded since (`update_meta`), so that a
        step's metadata-only pass costs no file read.

        Parameters
        ----------
        index : int

        Returns
        -------
        MemberMetadata
        """
        self._check_index(index)
        with self._edits_lock:
            held = self._loaded_models.get(index)
            kept = self._metadata.get(index)
        if held is not None:
            return MemberMetadata(held.meta, tuple(held.data.shape))
        if kept is not None:
            return kept
        # Opened here without closing the library if the caller has it open.
        was_open, self._open = self._open, True
        try:
            model = self.borrow(index)
            try:
                kept = self._metadata.get(index)
                if kept is None:  # borrowed from a source library: not kept
                    kept = MemberMetadata(copy.deepcopy(model.meta), tuple(model.data.shape))
                return kept
            finally:
                self.shelve(model, index, modify=False)
        finally:
            self._open = was_open

    def iter_metadata(self):
        """``(index, MemberMetadata)`` of every member, in order (see `metadata`)."""
        for index in range(len(self)):
            yield index, self.metadata(index)

    def iter_models(self, *, modify=False):
        """Borrow each model in turn, yielding ``(index, model)``.

        The model is shelved before the next one is borrowed, so that only
        one model is in memory at a time. ``modify`` is passed to `shelve`:
        True only for changes not recorded with the edit methods.
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

        With ``threads`` above 1, the calls run in that many threads while
        this one opens the next models; at most ``threads + 1`` models are
        borrowed at a time. Reading and decompressing arrays and numpy's
        arithmetic release the interpreter lock, so two cores share a step's
        per-model work that is mostly that; the results are the same as one
        call after another.

        ``function`` must touch only the model it is given (and record edits
        for its own index). If a call fails, no further model is borrowed,
        and the error of the first failing model (in index order) is raised
        once every call submitted has finished and every model is shelved.

        Parameters
        ----------
        function : callable
            ``function(index, model)``.
        modify : bool, optional
            Whether ``function`` changes the models in ways not recorded as
            edits (see `shelve`).
        threads : int, optional
            Threads to call ``function`` in.

        Returns
        -------
        list
        """
        if threads <= 1 or len(self) <= 1:
            return [function(index, model) for index, model in self.iter_models(modify=modify)]
        results = [None] * len(self)
        in_flight = collections.deque()
        next_index = 0
        failure = None
        with self, concurrent.futures.ThreadPoolExecutor(threads) as pool:
            try:
                while (failure is None and next_index < len(self)) or in_flight:
                    while failure is None and next_index < len(self) and (
                            len(in_flight) <= threads):
                        model = self.borrow(next_index)
                        in_flight.append((next_index, model,
                                          pool.submit(function, next_index, model)))
                        next_index += 1
                        del model
                    index, model, future = in_flight.popleft()
                    concurrent.futures.wait([future])
                    self.shelve(model, index, modify=modify)
                    del model
                    if failure is None:
                        if future.exception() is not None:
                            failure = future.exception()
                        else:
                            results[index] = future.result()
            except BaseException as error:
                # A borrow failed, or an interrupt: the calls submitted
                # finish, their models are shelved, and an earlier model's
                # failure comes first.
                concurrent.futures.wait([future for _, _, future in in_flight])
                while in_flight:
                    index, model, future = in_flight.popleft()
                    self.shelve(model, index, modify=modify)
                    if failure is None and future.exception() is not None:
                        failure = future.exception()
                if failure is not None and isinstance(error, Exception):
                    raise failure from None
                raise
        if failure is not None:
            raise failure
        return results

    # -- AbstractModelLibrary interface ------------------------------------

    @property
    def crds_observatory(self):
        return "roman"

    def _datamodels_open(self, filename, **kwargs):
        return open_image_model(filename, **kwargs)

    def _load_member(self, index):
        # Member `index` from its own file, opened once (see `_OpenedFile`).
        with self._edits_lock:
            opened = self._opened_files.get(index)
        if opened is not None:
            return opened.fresh_model()
        model = super()._load_member(index)
        if (len(self._opened_files) >= KEPT_FILES
                or self._datamodels_open_kwargs.get("memmap", False)
                or not _OpenedFile.rereadable(model)):
            return model
        opened = _OpenedFile(model)
        try:
            fresh = opened.fresh_model()
        except BaseException:
            model.close()
            raise
        with self._edits_lock:
            self._opened_files[index] = opened
        return fresh

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

    def borrow(self, index):
        """Borrow member ``index``; shelve it before the library is closed.

        A member that lives in its file is opened now (its arrays are read
        when first used) and gets its recorded edits.

        Parameters
        ----------
        index : int

        Returns
        -------
        roman_datamodels.datamodels.ImageModel

        Raises
        ------
        stpipe.library.ClosedLibraryError
            Outside a ``with library:`` block.
        stpipe.library.BorrowError
            If the model is already borrowed.
        """
        if not self._open:
            raise ClosedLibraryError("ModelLibrary is not open")
        if index in self._ledger:
            raise BorrowError("Attempt to double-borrow model")
        if self._source is not None:
            model = self._borrow_from_source(index)
        else:
            model = self._loaded_models.get(index)
            if model is None:
                model = self._open_member(index)
        self._ledger[index] = model
        return model

    def _borrow_from_source(self, index):
        """Member ``index`` from the source library, with the edits waiting for it."""
        model = self._source.borrow(index)
        try:
            with self._edits_lock:
                waiting = self._edits.pop(index, [])
            for edit in waiting:
                _apply_edit(model, edit)
        except BaseException:
            self._source.shelve(model, index, modify=False)
            raise
        if waiting:
            self._source.changed.add(index)
        return model

    def _open_member(self, index):
        """Member ``index`` from its file (or temporary file), with its edits applied."""
        if self._on_disk and index in self._temp_filenames:
            model = self._datamodels_open(self._temp_filenames[index],
                                          **self._datamodels_open_kwargs)
        else:
            model = self._load_member(index)
        try:
            with self._edits_lock:
                edits = ImageEdits(list(self._edits.get(index, ())))
            edits.apply(model)
            node = model._instance
            self._unread_arrays[index] = {key: node[key] for key in node
                                          if _is_unread(node[key])}
            if index not in self._metadata:
                # A copy of its own: the borrower may change the model's
                # tree, and a model opened alone (beyond KEPT_FILES) reads
                # it through its file, closed when the model is released.
                kept = MemberMetadata(copy.deepcopy(model.meta), tuple(model.data.shape))
                with self._edits_lock:
                    self._metadata.setdefault(index, kept)
        except BaseException:
            model.close()
            raise
        return model

    def shelve(self, model, index=None, modify=True):
        """Return a borrowed model to the library.

        Parameters
        ----------
        model : roman_datamodels.datamodels.ImageModel
            The model borrowed (or one replacing it, with ``index``).
        index : int, optional
            The member; found from the model when it was borrowed.
        modify : bool, optional
            Whether the model was changed in ways not recorded with the edit
            methods (`record_flux_scale`, `add_dq_flags`, `update_meta`, ...).
            For a member that lives in its file, False releases the model and
            keeps only the recorded edits. True keeps the changes: if no
            array of the model was read, its metadata (every entry but the
            arrays) is kept as an edit and the model released; otherwise the
            whole model is kept, in memory or, with ``on_disk``, in a
            temporary file. Models kept in memory keep every change either
            way.

        Raises
        ------
        stpipe.library.ClosedLibraryError
            Outside a ``with library:`` block.
        stpipe.library.BorrowError
            For a model that is not borrowed.
        """
        if not self._open:
            raise ClosedLibraryError("ModelLibrary is not open")
        if index is None:
            try:
                index = self._ledger[model]
            except KeyError:
                raise BorrowError("Attempt to shelve an unknown model") from None
        if index not in self._ledger:
            raise BorrowError("Attempt to shelve model at a non-borrowed index")
        borrowed = self._ledger[index]
        unread = self._unread_arrays.pop(index, None)
        if self._source is not None:
            try:
                self._source.shelve(model, index, modify=modify)
            finally:
                del self._ledger[index]
            return
        if index in self._loaded_models:
            if modify:
                self._loaded_models[index] = model
            del self._ledger[index]
            return
        try:
            if modify and model is borrowed and _only_entries_changed(model, unread):
                self._keep_entries(index, model, unread)
            elif modify:
                self._keep_whole(index, model)
        finally:
            # Nothing else refers to a model released here, so it is freed
            # (and its file closed) as soon as the caller lets go of it. It
            # is not closed: stpipe's in-memory library lets a caller go on
            # using a model after shelving it.
            del self._ledger[index]

    def _keep_entries(self, index, model, unread):
        """Keep a model's non-array entries as an edit over its file."""
        node = model._instance
        # A copy detached from the file: the lazily read tree converts its
        # nodes through the open file, which goes with the model. Arrays
        # inside (never large in metadata) are read now for the same reason.
        entries = asdf.treeutil.walk_and_modify(
            copy.deepcopy({key: node[key] for key in node if key not in unread}),
            _read_if_array)
        with self._edits_lock:
            array_edits = [e for e in self._edits.get(index, ()) if hasattr(e, "arrays")]
            self._edits[index] = [*array_edits, _KeptTree(entries)]
            # Taken again from the kept entries at the next open.
            self._metadata.pop(index, None)

    def _keep_whole(self, index, model):
        """Keep a model changed beyond the edits: in memory, or in a temporary file."""
        with self._edits_lock:
            self._metadata.pop(index, None)
        if not self._on_disk:
            log.debug("%s: changed outside the recorded edits; kept in memory",
                      model.meta.filename)
            with self._edits_lock:
                self._loaded_models[index] = model
                self._edits.pop(index, None)
            return
        # Temporary files are only read back by this library: schema
        # validation on write (a third of a second per model) buys nothing.
        with asdf.config_context() as config:
            config.validate_on_write = False
            try:
                temp_filename = self._temp_path_for_model(model, index)
                model.save(temp_filename)
            except OSError as error:
                if isinstance(error, OutputError):
                    raise
                reason = error.strerror or str(error)
                raise OutputError(f"{self._temp_root}: cannot write a temporary file "
                                  f"for {model.meta.filename} ({reason})",
                                  error.errno) from None
        old = self._temp_filenames.get(index)
        if old is not None and Path(old) != Path(temp_filename):
            Path(old).unlink(missing_ok=True)
        with self._edits_lock:
            self._temp_filenames[index] = temp_filename
            self._edits.pop(index, None)

    def finalize_result(self, step, reference_files_used):
        # Steps record their own status while they hold each model; see the
        # module docstring for why the default rewrite of every model is skipped.
        return None

    def get_crds_parameters(self):
        # romosaic never consults a reference-file service.
        return {}


class _SourceLibrary:
    """Borrowing from a library of another class, on behalf of a `ModelLibrary`.

    Opens the source library (its ``with`` block) while any of its models is
    borrowed, maps this library's member numbers to the source's (members
    may have been dropped), and shelves a model with ``modify=True`` only
    when it changed, so that an ``on_disk`` source library writes a
    temporary file only for a model that needs one.
    """

    def __init__(self, library):
        self.library = library
        self.indices = list(range(len(library)))
        # Members changed while borrowed (by edits, or ``modify=True``).
        self.changed = set()
        self._borrowed = 0
        self._opened_here = False
        self._lock = threading.Lock()

    @property
    def on_disk(self):
        return bool(getattr(self.library, "_on_disk", False))

    def keep(self, indices):
        """Keep only the members ``indices`` (of this library's numbering), renumbered."""
        self.indices = [self.indices[index] for index in indices]
        self.changed = {new for new, old in enumerate(indices) if old in self.changed}

    def borrow(self, index):
        with self._lock:
            if self._borrowed == 0 and not getattr(self.library, "_open", False):
                self.library.__enter__()
                self._opened_here = True
            try:
                model = self.library.borrow(self.indices[index])
            except BaseException:
                self._close_if_idle()
                raise
            self._borrowed += 1
            return model

    def shelve(self, model, index, *, modify):
        with self._lock:
            changed = modify or index in self.changed
            self.changed.discard(index)
            try:
                self.library.shelve(model, self.indices[index], modify=changed)
            finally:
                self._borrowed -= 1
                self._close_if_idle()

    def _close_if_idle(self):
        if self._borrowed == 0 and self._opened_here:
            self._opened_here = False
            self.library.__exit__(None, None, None)

    def release(self):
        """Close the source library's ``with`` block if this object opened it."""
        with self._lock:
            if self._opened_here:
                self._opened_here = False
                # Models still borrowed after an error: the original
                # exception matters, not the source's complaint about them.
                self.library.__exit__(RuntimeError, RuntimeError("closed"), None)


def _thaw(node):
    """A plain, writable copy of an association given as read-only mappings and tuples."""
    if isinstance(node, Mapping):
        return {key: _thaw(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_thaw(value) for value in node]
    return node


def _only_entries_changed(model, unread):
    """Whether every array of ``model`` is one opened from its file and never read.

    Such a model can differ from its file (and edits) only in its other
    entries, metadata above all.
    """
    if unread is None:
        return False
    node = model._instance
    arrays = {key: node[key] for key in node if _is_array(node[key])}
    return (arrays.keys() == unread.keys()
            and all(arrays[key] is value and _is_unread(value) for key, value in unread.items()))


def _read_if_array(node):
    return np.array(node) if isinstance(node, NDArrayType) else node


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
