"""Reading an absolute reference catalogue: a local table file of sky positions.

romosaic never asks a network service for a catalogue (the reference
pipeline queries one by name, e.g. ``GAIADR3``); the user gives a file. Any
table astropy reads by its extension will do: ECSV, Parquet or FITS. Columns
are found by their usual spellings, whatever their case: ``ra``/``dec``,
``ra_deg``/``dec_deg``, ``raj2000``/``dej2000``, ``ra_icrs``/``de_icrs``; an
optional ``weight`` column weights the fit.
"""

from pathlib import Path

import numpy as np
from astropy.table import Table

from ..errors import RomosaicInputError
from .sources import _column_named, _read_table

__all__ = ["read_reference_catalog"]

_RA_NAMES = ("ra", "ra_deg", "raj2000", "ra_icrs", "alpha_j2000", "ra_centroid")
_DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "de_icrs", "dec_icrs", "delta_j2000",
              "dec_centroid")


def _looks_like_url(text):
    return "://" in text


def read_reference_catalog(path, *, catalog_format=None):
    """Sky positions (and weights) of an absolute reference catalogue file.

    Parameters
    ----------
    path : str or os.PathLike
        ECSV, Parquet or FITS table with RA and Dec columns in degrees.
    catalog_format : str, optional
        astropy ``Table.read`` format; guessed from the extension when None.

    Returns
    -------
    astropy.table.Table
        Columns ``RA`` and ``DEC`` (degrees; the names tweakwcs expects) and
        ``weight`` when the file has one; rows with non-finite positions
        removed. ``meta['name']`` is the file name.

    Raises
    ------
    RomosaicInputError
        For a name that is not a file (a catalogue service name or URL
        included), an unreadable file, a table without RA/Dec columns,
        positions outside the sky, or no usable row.
    """
    text = str(path).strip()
    if not text:
        raise RomosaicInputError("abs_refcat: no file given")
    if _looks_like_url(text):
        raise RomosaicInputError(
            f"{text}: abs_refcat must be a local table file (ECSV, Parquet or FITS); "
            "romosaic does not download catalogues")
    path = Path(text)
    if not path.exists() and path.suffix == "" and text.isalnum():
        raise RomosaicInputError(
            f"{text}: no such file; abs_refcat must be a local table file (ECSV, Parquet or "
            "FITS with RA/Dec columns), not a catalogue service name")
    table = _read_table(path, catalog_format)
    ra_name, dec_name = _column_named(table, _RA_NAMES), _column_named(table, _DEC_NAMES)
    if ra_name is None or dec_name is None:
        raise RomosaicInputError(
            f"{path}: reference catalogue has no RA/Dec columns (expected ra and dec, any "
            f"case); columns are {', '.join(table.colnames) or 'none'}")
    try:
        ra = np.asarray(_degrees(table[ra_name]), float)
        dec = np.asarray(_degrees(table[dec_name]), float)
    except (TypeError, ValueError) as error:
        raise RomosaicInputError(f"{path}: RA/Dec columns are not numbers in degrees "
                                 f"({' '.join(str(error).split())[:100]})") from None
    finite = np.isfinite(ra) & np.isfinite(dec)
    if np.any(np.abs(dec[finite]) > 90.0):
        raise RomosaicInputError(f"{path}: Dec values outside [-90, 90] degrees in column "
                                 f"{dec_name}")
    columns = {"RA": ra % 360.0, "DEC": dec}
    weight_name = _column_named(table, ("weight",))
    if weight_name is not None:
        weight = np.asarray(table[weight_name], float)
        finite &= np.isfinite(weight) & (weight > 0)
        columns["weight"] = weight
    result = Table(columns)[finite]
    if len(result) == 0:
        raise RomosaicInputError(f"{path}: reference catalogue has no usable row "
                                 "(empty, or no finite RA/Dec)")
    result.meta["name"] = path.name
    return result


def _degrees(column):
    unit = getattr(column, "unit", None)
    if unit is not None and str(unit) not in ("", "deg"):
        return column.quantity.to_value("deg")
    return column
