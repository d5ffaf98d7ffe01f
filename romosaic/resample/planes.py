"""Where drizzle planes live: in memory, or in memory-mapped files.

A `PlaneStore` holds named arrays of one 2-D shape (a co-add's data,
weight, variances and context; outlier detection's group frames and their
median), either as ordinary arrays or as files in a directory the caller
made (and removes). Work on the planes goes through `PlaneStore.rows`, a
band of rows at a time: in memory that is a view; on disk it is a mapping
of the file that lives only as long as the band is used, so a process
holds the pages of the bands it is working on and no others, however large
the planes are. Both forms give the same values.

Threads may work on different bands of the same plane at once.

A whole plane from `PlaneStore.array` is a mapping too, and every page of
it that is read or written stays in the process's resident memory while
the mapping lives: a mosaic's planes, read in full to be summarised or
written, would end up resident all together. `release_pages` gives such
pages back once a pass over them is done (the values stay in the file and
the system's file cache, and are read back on the next access); it does
nothing to any other array.
"""

import contextlib
import functools
import mmap
import os
import threading
import uuid
import weakref
from pathlib import Path

import numpy as np

__all__ = ["PlaneStore", "maps_a_plane", "release_pages"]

# Where the system has no madvise, `release_pages` does nothing.
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None) if hasattr(mmap.mmap, "madvise") else None


class _PlaneMapping(mmap.mmap):
    """A shared, writeable mapping of a plane's file.

    Only these are given to `release_pages`: dropping pages of a shared
    mapping of a file keeps their values (in the file and its cache), which
    for anonymous or copy-on-write memory would be lost.
    """


def _plane_bytes(dtype, full):
    """Bytes of a plane of ``dtype`` and shape ``full`` (its file's size)."""
    return int(np.prod(full, dtype=np.int64)) * dtype.itemsize


def _map_plane(path, dtype, full, on_unmap=None):
    """An ndarray of shape ``full`` over a new shared mapping of the file ``path``.

    ``on_unmap()``, if given, is called when the mapping goes (when the last
    array using it does).
    """
    with open(path, "r+b") as handle:
        # ACCESS_WRITE: shared (MAP_SHARED), writes go to the file.
        mapping = _PlaneMapping(handle.fileno(), _plane_bytes(dtype, full),
                                access=mmap.ACCESS_WRITE)
    if on_unmap is not None:
        weakref.finalize(mapping, on_unmap)
    # The mapping itself is the array's base, so that `release_pages` can
    # find it from any view; the array's first byte is the mapping's first.
    array = np.ndarray(full, dtype, buffer=mapping)
    mapping.address = array.__array_interface__["data"][0]
    return array


def _plane_mapping_of(values):
    """The `_PlaneMapping` that ``values`` (array or memoryview) is a view of, or None."""
    owner = values
    while True:
        if isinstance(owner, _PlaneMapping):
            return owner
        if isinstance(owner, np.ndarray):
            owner = owner.base
        elif isinstance(owner, memoryview):
            owner = owner.obj
        else:
            return None


def maps_a_plane(values):
    """Whether ``values`` (an array or memoryview) is a view of a plane a
    `PlaneStore` mapped from its file: the arrays `release_pages` acts on."""
    return _plane_mapping_of(values) is not None


def release_pages(values):
    """Give back the memory pages that ``values`` spans in a plane's file mapping.

    Once a bulk pass over a memory-mapped plane is done (filling, summing,
    writing it out), its pages need not stay in this process's resident
    memory: the values are kept in the file (and the system's file cache),
    and a later access reads them back. Pages at the edges of ``values``
    are released whole, which is harmless for the same reason.

    Parameters
    ----------
    values : numpy.ndarray or memoryview
        Any array or buffer. Only views of a plane mapped by a `PlaneStore`
        (`PlaneStore.array`, `PlaneStore.rows`) are released; for anything
        else, such as arrays in memory, this does nothing.

    Returns
    -------
    int
        Bytes of the mapping released (0 when ``values`` is not one of a
        store's mappings, or is empty).

    Examples
    --------
    >>> values = np.arange(4.0)
    >>> release_pages(values), values.tolist()
    (0, [0.0, 1.0, 2.0, 3.0])
    """
    mapping = _plane_mapping_of(values)
    if mapping is None or _DONTNEED is None:
        return 0
    array = np.asarray(values)
    if array.size == 0:
        return 0
    low, high = np.lib.array_utils.byte_bounds(array)
    start = max(0, low - mapping.address) // mmap.PAGESIZE * mmap.PAGESIZE
    stop = min(len(mapping), high - mapping.address)
    if stop <= start:
        return 0
    mapping.madvise(_DONTNEED, start, stop - start)
    return stop - start


class PlaneStore:
    """Named planes of one shape, in memory or in memory-mapped files.

    Parameters
    ----------
    shape : (int, int)
        Shape ``(ny, nx)`` of every plane (a plane may add a leading depth
        axis, e.g. the context's one layer per 32 inputs).
    directory : str or os.PathLike, optional
        Keep the planes in files in this existing directory (the caller
        makes it and removes it); None keeps them in memory.

    Notes
    -----
    On disk, the file of a removed plane is kept as the store's *spare*
    (one at most) and becomes the next new plane of its size, zeroed, unless
    a mapping of it is still in use. Writing into pages the system's file
    cache already holds is several times cheaper than having it find new
    ones (0.05 s against 0.13-0.64 s for 325 MB on the development machine),
    and outlier detection makes a new weight plane for every exposure group
    right after removing the previous group's.

    Examples
    --------
    >>> store = PlaneStore((4, 5))
    >>> store.new_plane("data", fill=1.0)
    >>> with store.rows("data", (1, 3)) as band:
    ...     band[:, 0] = 7.0
    >>> store.read("data", rows=(0, 2)).tolist()[1]
    [7.0, 1.0, 1.0, 1.0, 1.0]
    >>> store.close()
    """

    def __init__(self, shape, *, directory=None):
        self.shape = tuple(int(n) for n in shape)
        self.directory = None if directory is None else Path(directory)
        self._planes = {}  # name -> (dtype, full shape, array or file path)
        self._spare = None  # on disk: (bytes, path) of a removed plane's file
        # On disk: live mappings per file, so that no file still mapped is reused.
        self._mappings = {}
        self._lock = threading.Lock()

    @property
    def on_disk(self):
        """Whether the planes are memory-mapped files."""
        return self.directory is not None

    def new_plane(self, name, dtype=np.float32, *, fill=0, depth=None):
        """Make a plane filled with ``fill``.

        Parameters
        ----------
        name : str
        dtype : numpy dtype, optional
        fill : scalar, optional
        depth : int, optional
            Leading axis length (the plane is then ``(depth, ny, nx)``).
        """
        if name in self._planes:
            raise ValueError(f"plane {name!r} already exists")
        full = self.shape if depth is None else (int(depth), *self.shape)
        dtype = np.dtype(dtype)
        if not self.on_disk:
            # Zeros from np.zeros are pages the system has not handed out yet:
            # the parts of a plane nothing is drizzled onto cost no memory,
            # even when the plane is read or written to a file.
            plane = np.zeros(full, dtype) if fill == 0 else np.full(full, fill, dtype)
            self._planes[name] = (dtype, full, plane)
            return
        path = self.directory / f"{name}-{uuid.uuid4().hex[:8]}.plane"
        nbytes = _plane_bytes(dtype, full)
        reused = self._reuse_spare(nbytes, path)
        if not reused:
            with open(path, "wb") as handle:
                # Sparse: reads as zeros, no disk used until written.
                handle.truncate(nbytes)
        self._planes[name] = (dtype, full, path)
        if fill != 0 or reused:
            step = max(1, (8 * 2**20) // (self.shape[1] * dtype.itemsize))
            for start in range(0, self.shape[0], step):
                with self.rows(name, (start, min(self.shape[0], start + step))) as band:
                    band[...] = fill

    def names(self):
        """Names of the planes, in the order they were made."""
        return list(self._planes)

    def __contains__(self, name):
        return name in self._planes

    @contextlib.contextmanager
    def rows(self, name, rows):
        """Rows ``[start, stop)`` of a plane, writeable, for the duration of a ``with`` block.

        In memory this is a view; on disk a mapping that is closed (its pages
        left to the system's file cache) when the block ends. Each layer of a
        plane with depth is C-contiguous.
        """
        start, stop = (int(v) for v in rows)
        dtype, full, held = self._planes[name]
        if not self.on_disk:
            yield held[..., start:stop, :]
            return
        mapped = self._map(held, dtype, full)
        try:
            yield mapped[..., start:stop, :]
        finally:
            # No flush: the file is scratch, and the page cache already shares
            # the new values with every later mapping.
            del mapped

    def read(self, name, rows=None, cols=None):
        """A copy of ``plane[..., rows, cols]`` (half-open ranges; whole axes by default)."""
        r0, r1 = rows if rows is not None else (0, self.shape[0])
        c0, c1 = cols if cols is not None else (0, self.shape[1])
        with self.rows(name, (r0, r1)) as band:
            return np.array(band[..., c0:c1])

    def write(self, name, values, rows=None, cols=None):
        """Set ``plane[..., rows, cols] = values``."""
        r0, r1 = rows if rows is not None else (0, self.shape[0])
        c0, c1 = cols if cols is not None else (0, self.shape[1])
        with self.rows(name, (r0, r1)) as band:
            band[..., c0:c1] = values

    def array(self, name):
        """The whole plane: the array in memory, or a mapping of its file.

        A mapping is a plain ndarray (not an np.memmap: ASDF refuses those)
        and stays valid after `remove` or `close` (the file's space is given
        back when the last array using it goes). The pages of it that are
        used stay resident until `release_pages` gives them back.
        """
        dtype, full, held = self._planes[name]
        if not self.on_disk:
            return held
        return self._map(held, dtype, full)

    def rename(self, name, new_name):
        """Give a plane another name (its values stay where they are)."""
        if new_name in self._planes:
            raise ValueError(f"plane {new_name!r} already exists")
        self._planes[new_name] = self._planes.pop(name)

    def remove(self, name):
        """Forget a plane; on disk its file becomes the spare (see Notes) or is deleted."""
        dtype, full, held = self._planes.pop(name)
        if not self.on_disk:
            return
        with self._lock:
            if self._mappings.get(held, 0) > 0:
                # An array of it is still in use: it keeps its values.
                unwanted = held
            else:
                unwanted = self._spare[1] if self._spare is not None else None
                self._spare = (_plane_bytes(dtype, full), held)
        if unwanted is not None:
            _delete(unwanted)

    def close(self):
        """Forget every plane and delete their files."""
        for name in list(self._planes):
            self.remove(name)
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            _delete(spare[1])

    def _reuse_spare(self, nbytes, path):
        """Move the spare file to ``path`` if it has ``nbytes``; whether it did."""
        with self._lock:
            if self._spare is None or self._spare[0] != nbytes:
                return False
            # Not mapped: `remove` kept it only then, and the store maps only its planes.
            spare, self._spare = self._spare[1], None
        os.replace(spare, path)
        return True

    def _map(self, path, dtype, full):
        with self._lock:
            self._mappings[path] = self._mappings.get(path, 0) + 1
        return _map_plane(path, dtype, full, on_unmap=functools.partial(self._unmapped, path))

    def _unmapped(self, path):
        with self._lock:
            left = self._mappings.pop(path) - 1
            if left:
                self._mappings[path] = left


def _delete(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
