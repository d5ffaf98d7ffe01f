"""Atomic file output and romosaic's private temporary directories.

A product is either complete or absent. Every file romosaic writes goes first
to a private temporary directory inside the destination directory and is
renamed into place (``os.replace``) only once it is complete and flushed to
disk. A crash, a kill or an error part-way leaves the previous file (or
nothing), never a truncated one. The temporary directory lives in the
destination directory because ``os.replace`` is atomic only within one file
system.

Private directories are named
``[.]romosaic-tmp-<host>_<pid>_<start>_<purpose>-<random>`` (hidden, with the
leading dot, for writes; visible for the ``on_disk`` model library, whose
name users know), where ``pid`` and ``start`` identify the process that made
them (``start`` is the process's start time on Linux, so that a recycled
process id is not mistaken for the owner). A process that is killed
(SIGKILL, power loss) cannot remove its own; `remove_stale_temporaries` does
it later, removing those whose owner on this host no longer runs, and those
of other hosts after `FOREIGN_STALE_AGE` seconds. It runs when a pipeline or
step run starts (`prepare_output_directory`), and before a process makes its
first private directory in a directory (again every `SWEEP_INTERVAL`
seconds).
"""

import contextlib
import errno as errno_codes
import io
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from .errors import OutputError

__all__ = [
    "FOREIGN_STALE_AGE",
    "TEMP_PREFIX",
    "atomic_output",
    "atomic_outputs",
    "atomic_save_model",
    "atomic_save_models",
    "atomic_write_text",
    "make_private_dir",
    "prepare_output_directory",
    "remove_empty_directories",
    "remove_stale_temporaries",
]

log = logging.getLogger(__name__)

#: Name prefix of every private temporary directory (hidden ones add a leading dot).
TEMP_PREFIX = "romosaic-tmp-"

#: Age in seconds after which another host's private directory counts as stale.
#: Its owner cannot be checked from here, so this is deliberately long: no
#: romosaic run keeps one temporary directory for a week.
FOREIGN_STALE_AGE = 7 * 24 * 3600

#: Bytes handed to the system in one write while a model is saved; the
#: memory pages of mapped planes are given back after each (see `_SavingFile`).
WRITE_CHUNK = 32 * 2**20

#: Seconds between two sweeps of one directory by one process: a write
#: sweeps its directory first, and listing a directory of thousands of
#: products before each of thousands of writes would cost more than the writes.
SWEEP_INTERVAL = 600.0

# Directory → time.monotonic() of this process's last sweep of it.
_last_sweep = {}

_NAME = re.compile(
    r"\.?" + re.escape(TEMP_PREFIX)
    + r"(?P<host>[A-Za-z0-9-]+)_(?P<pid>\d+)_(?P<start>\d+)_(?P<rest>.*)"
)


def _host_name():
    # '_' separates the fields of a private directory's name.
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "localhost")


def _process_start(pid):
    """Start time of process ``pid`` in clock ticks since boot, or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
    except OSError:
        return None
    # Field 22 (starttime); the command name in field 2 may hold spaces, so
    # count from the closing parenthesis.
    fields = text[text.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _owner_token():
    pid = os.getpid()
    return f"{_host_name()}_{pid}_{_process_start(pid) or 0}"


def _owner_alive(host, pid, start):
    """True or False for a process on this host; None for another host's."""
    if host != _host_name():
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    if start:
        current = _process_start(pid)
        if current is not None and current != start:
            return False  # the id now belongs to another process
    return True


def remove_stale_temporaries(directory, *, now=None):
    """Remove private directories left in ``directory`` by processes that died.

    A directory is stale when its owner ran on this host and no longer runs,
    or when it belongs to another host and is older than `FOREIGN_STALE_AGE`.
    Directories of live processes, including this one, are never touched.

    Parameters
    ----------
    directory : str or os.PathLike
    now : float, optional
        Current time (seconds since the epoch), for tests.

    Returns
    -------
    list of pathlib.Path
        What was removed.
    """
    directory = Path(directory)
    now = time.time() if now is None else now
    removed = []
    try:
        entries = [e for e in directory.iterdir() if e.name.lstrip(".").startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None:
            continue  # not named by this module: leave it alone
        alive = _owner_alive(match["host"], int(match["pid"]), int(match["start"]))
        if alive is None:
            try:
                alive = now - entry.lstat().st_mtime < FOREIGN_STALE_AGE
            except OSError:
                continue
        if alive:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        if not entry.exists():
            log.info("removed %s, left by an interrupted run", entry)
            removed.append(entry)
    return removed


def make_private_dir(directory, purpose, *, hidden=True):
    """Create a private temporary directory in ``directory``.

    Stale private directories of dead processes are removed first (see
    `remove_stale_temporaries`), at most once per `SWEEP_INTERVAL` seconds
    for each directory.

    Parameters
    ----------
    directory : str or os.PathLike
        Where; created if missing.
    purpose : str
        A word naming what the directory is for (appears in its name).
    hidden : bool, optional
        Start the name with a dot.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OutputError
        If the directory cannot be created or written to.
    """
    directory = Path(directory) if str(directory) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(directory)
        now = time.monotonic()
        if now - _last_sweep.get(key, -SWEEP_INTERVAL) >= SWEEP_INTERVAL:
            remove_stale_temporaries(directory)
            _last_sweep[key] = now
        prefix = f"{'.' if hidden else ''}{TEMP_PREFIX}{_owner_token()}_{purpose}-"
        return Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    except OSError as error:
        raise OutputError(
            f"{directory}: cannot write in this directory ({_reason(error)})", error.errno
        ) from None


@contextlib.contextmanager
def scratch_directory(directory, purpose, *, enabled=True):
    """A private temporary directory for the duration of a ``with`` block.

    Made with `make_private_dir` (so a later run removes it if this process
    is killed) and removed when the block ends, whatever happens in it.
    Arrays memory-mapped from its files stay readable after that (POSIX).

    Parameters
    ----------
    directory : str or os.PathLike or None
        Where to make it (None: the current directory).
    purpose : str
        A word naming what it is for.
    enabled : bool, optional
        False yields None and makes nothing.

    Yields
    ------
    pathlib.Path or None
    """
    if not enabled:
        yield None
        return
    path = make_private_dir(directory or ".", purpose)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def prepare_output_directory(directory):
    """Make sure files can be written to ``directory``, before any work is done.

    Creates the directory (and missing parents) if needed, removes stale
    temporary files of killed runs from it, and creates and removes a
    private directory as a probe.

    Parameters
    ----------
    directory : str or os.PathLike

    Returns
    -------
    list of pathlib.Path
        The directories this created, outermost first, for
        `remove_empty_directories` if the run then fails.

    Raises
    ------
    OutputError
    """
    directory = Path(directory) if str(directory) else Path(".")
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{directory}: output directory exists and is not a directory",
                          errno_codes.ENOTDIR)
    missing = []
    parent = directory
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    created = list(reversed(missing))
    try:
        if directory.is_dir():
            remove_stale_temporaries(directory)
        probe = make_private_dir(directory, "probe")
    except OutputError:
        remove_empty_directories(created)
        raise
    probe.rmdir()
    return created


def remove_empty_directories(directories):
    """Remove ``directories`` (outermost first in the list) where still empty, deepest first."""
    for directory in reversed(list(directories)):
        try:
            directory.rmdir()
        except OSError:
            return


def _reason(error):
    if isinstance(error, OutputError):
        return error.message
    return error.strerror or str(error) or type(error).__name__


def _fsync_file(path):
    # Without this, a crash of the machine (not just of the process) can
    # leave the renamed file empty on some file systems.
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_directory(directory):
    """Make renames in ``directory`` durable (quietly skipped where unsupported)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems do not support syncing a directory
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_outputs(paths):
    """Yield temporary paths that replace ``paths`` when the block succeeds.

    All files are written first and only then renamed into place, one right
    after the other, so that a run interrupted while writing leaves the
    previous set of products, not a mixture. The temporary files have the
    destinations' own names inside one private directory, so writers that
    record the file name (roman_datamodels stores ``meta.filename``) or choose
    the format from the extension behave as if writing the final files.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Final destinations, all in one directory.

    Yields
    ------
    list of pathlib.Path
        Where to write, in the order of ``paths``.

    Raises
    ------
    OutputError
        If writing or renaming fails (disk full, no permission, ...). The
        destinations are then unchanged and the temporary files removed.
    """
    paths = [Path(p) for p in paths]
    directory = paths[0].parent if str(paths[0].parent) else Path(".")
    if any(p.parent != paths[0].parent for p in paths):
        raise ValueError("atomic_outputs needs destinations in one directory")
    temp_dir = make_private_dir(directory, "write")
    temp_paths = [temp_dir / p.name for p in paths]
    current = paths[0]
    try:
        yield temp_paths
        for temp_path, path in zip(temp_paths, paths, strict=True):
            current = path
            if not temp_path.exists():
                raise OutputError(f"{path}: the writer produced no file", errno_codes.ENOENT)
            _fsync_file(temp_path)
        for temp_path, path in zip(temp_paths, paths, strict=True):
            current = path
            os.replace(temp_path, path)
        fsync_directory(directory)
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"{current}: cannot write ({_reason(error)})", error.errno) from None
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path that replaces ``path`` when the block succeeds.

    See `atomic_outputs`; this is the one-file form.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination.

    Yields
    ------
    pathlib.Path
        Where to write.
    """
    with atomic_outputs([path]) as (temp_path,):
        yield temp_path


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as temp_path:
        temp_path.write_text(text)


def atomic_save_model(model, path):
    """Save a roman_datamodels model to ``path`` atomically.

    Parameters
    ----------
    model : roman_datamodels.datamodels.DataModel
    path : str or os.PathLike
        Destination; its extension (``.asdf`` or ``.parquet``) selects the format.

    Returns
    -------
    pathlib.Path
    """
    return atomic_save_models([(model, path)])[0]


def atomic_save_models(models_and_paths):
    """Save several models so that they replace their destinations together.

    Parameters
    ----------
    models_and_paths : sequence of (model, path)
        Destinations in one directory.

    Returns
    -------
    list of pathlib.Path
    """
    paths = [Path(path) for _, path in models_and_paths]
    with atomic_outputs(paths) as temp_paths:
        for (model, _), temp_path in zip(models_and_paths, temp_paths, strict=True):
            _save_model(model, temp_path)
    for (model, _), path in zip(models_and_paths, paths, strict=True):
        model.meta.filename = path.name
    return paths


def _save_model(model, path):
    """``model.save(path)``; through a `_SavingFile` when its arrays are mapped planes."""
    # Imported here: the light modules that write only text import this one.
    import numpy as np

    from .resample.planes import maps_a_plane, release_pages

    planes = []
    if Path(path).suffix == ".asdf" and hasattr(model, "to_asdf"):
        planes = [value for _, value in model.items()
                  if isinstance(value, np.ndarray) and maps_a_plane(value)]
    if not planes:
        model.save(path)
        return
    # save(path) of an ASDF file is to_asdf(path), with the same defaults;
    # given a file rather than a path, to_asdf writes through it.
    with _SavingFile(path, planes, release_pages) as handle:
        model.to_asdf(handle)


class _SavingFile(io.FileIO):
    """A file being written that gives back the memory of mapped planes as it goes.

    A mosaic's planes may be mappings of files (`romosaic.resample.planes`):
    each page that ASDF reads to write them (to compress them, or to hand
    them to write() as they are) would otherwise stay in this process's
    resident memory until the model goes, and all the planes would end up
    resident together. Each write is passed on in parts of `WRITE_CHUNK`
    bytes; after each part, the part itself (an uncompressed block is a view
    of its array) and the model's mapped ``arrays`` (a compressed block's
    array was read to make the bytes written) are given to ``release``.

    The file is also a path (``os.fspath`` gives its name), as the model's
    writer records the file's name in it.
    """

    def __init__(self, path, arrays, release):
        super().__init__(path, "w")
        self._arrays = list(arrays)
        self._release = release

    def __fspath__(self):
        return os.fspath(self.name)

    def write(self, data):
        view = memoryview(data).cast("B")
        for start in range(0, len(view), WRITE_CHUNK):
            part = view[start:start + WRITE_CHUNK]
            done = 0
            while done < len(part):
                done += super().write(part[done:])
            self._release(part)
            for array in self._arrays:
                self._release(array)
        return len(view)
