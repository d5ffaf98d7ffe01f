"""Atomic file output: a product is either complete or absent.

Every file romosaic writes goes first to a hidden temporary name in the
destination directory and is renamed into place only once it is complete.
A crash or an error part-way leaves the previous file (or nothing), never a
truncated one. The temporary file lives in the destination directory because
``os.replace`` is atomic only within one file system.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_output", "atomic_write_text", "atomic_save_model"]


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path that replaces ``path`` when the block succeeds.

    The temporary file has the destination's own file name inside a hidden
    temporary directory next to it, so writers that record the file name
    (roman_datamodels stores ``meta.filename``) or choose the format from the
    extension behave as if writing the final file.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination.

    Yields
    ------
    pathlib.Path
        Where to write.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    temp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=directory))
    temp_path = temp_dir / path.name
    try:
        yield temp_path
        os.replace(temp_path, path)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


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
    path = Path(path)
    with atomic_output(path) as temp_path:
        model.save(temp_path)
    model.meta.filename = path.name
    return path
