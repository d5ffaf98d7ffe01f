"""User-supplied aperture corrections (encircled energy per aperture radius).

A circular aperture holds only part of a point source's light: its
*encircled energy* (EE) fraction. Dividing an aperture flux by the EE of its
radius corrects it to a total flux *for point sources*. romosaic ships no
PSF model and fetches no reference files, so corrections are applied only
when the user gives a table of EE fractions:

* **ECSV**: columns ``radius`` (arcsec; a unit, if present, must convert to
  arcsec) and ``ee_fraction`` (0 < EE ≤ 1), and optionally ``filter``; with a
  ``filter`` column only the rows of the mosaic's filter are used.
* **ASDF**: top-level ``radius`` and ``ee_fraction`` arrays (``radius`` may be
  an astropy Quantity), and optionally a ``filter`` string that must match the
  mosaic's filter.

The EE at each catalog radius is interpolated linearly between the table's
radii. The table must span every catalog radius: extrapolating an EE curve
is guesswork, so it is refused.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RomosaicInputError

__all__ = ["ApertureCorrection", "read_aperture_corrections"]


@dataclass
class ApertureCorrection:
    """Encircled-energy fractions at the catalog's aperture radii.

    Attributes
    ----------
    source : str
        The file they came from.
    radii_arcsec : numpy.ndarray
        The catalog's aperture radii.
    ee_fraction : numpy.ndarray
        EE at each radius; aperture fluxes and errors are divided by it.
    """

    source: str
    radii_arcsec: np.ndarray
    ee_fraction: np.ndarray


def read_aperture_corrections(path, radii_arcsec, filter_name=None):
    """Read an EE table and interpolate it at the catalog's aperture radii.

    Parameters
    ----------
    path : str or os.PathLike
        ECSV (``.ecsv``) or ASDF (``.asdf``) file, described in the module notes.
    radii_arcsec : sequence of float
        Aperture radii of the catalog.
    filter_name : str, optional
        The mosaic's filter, used to pick rows of a multi-filter table.

    Returns
    -------
    ApertureCorrection

    Raises
    ------
    RomosaicInputError
        For a missing or unreadable file, or a table that cannot be used.
    """
    path = Path(path)
    if not path.is_file():
        raise RomosaicInputError(f"{path}: aperture_corrections file not found")
    suffix = path.suffix.lower()
    if suffix == ".ecsv":
        radius, ee = _read_ecsv(path, filter_name)
    elif suffix == ".asdf":
        radius, ee = _read_asdf(path, filter_name)
    else:
        raise RomosaicInputError(
            f"{path}: aperture_corrections must be an .ecsv or .asdf file")
    radii = np.asarray(radii_arcsec, dtype=float)
    return ApertureCorrection(
        source=str(path), radii_arcsec=radii, ee_fraction=_interpolate(path, radius, ee, radii))


def _read_ecsv(path, filter_name):
    from astropy.table import Table

    try:
        table = Table.read(path, format="ascii.ecsv")
    except Exception as error:
        raise RomosaicInputError(f"{path}: not a readable ECSV table ({_first_line(error)})") \
            from None
    missing = [name for name in ("radius", "ee_fraction") if name not in table.colnames]
    if missing:
        raise RomosaicInputError(f"{path}: aperture_corrections table lacks column(s) "
                                 f"{', '.join(missing)}")
    if "filter" in table.colnames:
        if filter_name is None:
            raise RomosaicInputError(f"{path}: has a filter column but the mosaic has no filter")
        rows = np.array([str(f).strip().upper() == filter_name.upper()
                         for f in table["filter"]], dtype=bool)
        if not rows.any():
            raise RomosaicInputError(f"{path}: has no aperture corrections for {filter_name}")
        table = table[rows]
    return _arcsec(path, table["radius"]), np.asarray(table["ee_fraction"], dtype=float)


def _read_asdf(path, filter_name):
    import asdf

    try:
        with asdf.open(path, lazy_load=False, memmap=False) as af:
            tree = af.tree
            if "radius" not in tree or "ee_fraction" not in tree:
                raise RomosaicInputError(
                    f"{path}: aperture_corrections file needs 'radius' and 'ee_fraction'")
            radius = _arcsec(path, tree["radius"])
            ee = np.asarray(tree["ee_fraction"], dtype=float)
            file_filter = tree.get("filter")
    except RomosaicInputError:
        raise
    except Exception as error:
        raise RomosaicInputError(f"{path}: not a readable ASDF file ({_first_line(error)})") \
            from None
    if file_filter is not None and filter_name is not None and \
            str(file_filter).strip().upper() != filter_name.upper():
        raise RomosaicInputError(
            f"{path}: aperture corrections are for {file_filter}, the mosaic is {filter_name}")
    return radius, ee


def _arcsec(path, values):
    """Radii in arcsec from a column or array with or without a unit."""
    import astropy.units as u

    unit = getattr(values, "unit", None)
    if unit is None:
        return np.asarray(values, dtype=float)
    try:
        return np.asarray(u.Quantity(values, unit).to_value(u.arcsec), dtype=float)
    except u.UnitConversionError:
        raise RomosaicInputError(f"{path}: radius unit {unit} is not an angle") from None


def _interpolate(path, radius, ee, radii):
    radius = np.ravel(radius)
    ee = np.ravel(ee)
    if radius.size != ee.size or radius.size < 2:
        raise RomosaicInputError(
            f"{path}: needs at least two radius/ee_fraction pairs of equal length")
    if not (np.all(np.isfinite(radius)) and np.all(np.isfinite(ee))):
        raise RomosaicInputError(f"{path}: radius and ee_fraction must be finite")
    if np.any(radius <= 0) or np.any(ee <= 0) or np.any(ee > 1):
        raise RomosaicInputError(f"{path}: needs radius > 0 and 0 < ee_fraction <= 1")
    order = np.argsort(radius)
    radius, ee = radius[order], ee[order]
    if np.any(np.diff(radius) <= 0):
        raise RomosaicInputError(f"{path}: radii must be distinct")
    tolerance = 1e-9
    outside = radii[(radii < radius[0] - tolerance) | (radii > radius[-1] + tolerance)]
    if outside.size:
        raise RomosaicInputError(
            f"{path}: covers radii {radius[0]:g}-{radius[-1]:g} arcsec, not "
            f"{', '.join(f'{r:g}' for r in outside)} arcsec")
    return np.interp(radii, radius, ee)


def _first_line(error):
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
