"""Coordinate transforms between Level-2 images, mosaics and the sky.

The Python side of ``romosaic pixtosky``, ``romosaic skytopix`` and
``romosaic pixtopix``, after the drizzlepac tools of the same names:

* `pixtosky` -- pixel positions on an image or mosaic to ICRS RA, Dec;
* `skytopix` -- RA, Dec to pixel positions;
* `pixtopix` -- pixel positions on one image or mosaic to another (an input
  image and the mosaic made from it, either way, or any two).

Each takes a gwcs, a data model with ``meta.wcs`` (a Level-2 ``ImageModel``,
a Level-3 ``MosaicModel``) or the path of an ASDF file holding one, and
arrays (or scalars) of positions.

Conventions
-----------
* **Pixels are 0-based** by default, as in gwcs, numpy and every romosaic
  product: the centre of the first pixel, ``data[0, 0]``, is ``(0, 0)``, and
  ``x`` is the column. FITS, DS9 and drizzlepac count from 1 (first pixel
  centre ``(1, 1)``); pass ``origin=1`` (``--origin 1`` on the command line)
  to read and write positions in that convention.
* **Exact.** Pixel to sky is the gwcs evaluated as it is. Sky to pixel starts
  from the gwcs inverse (a fitted polynomial for distorted Level-2 images,
  good to about 1e-5 to 1e-3 pixel) and refines it with Newton steps on the
  forward transform, so that the pixel found maps back to the requested
  position to far better than a micro-arcsecond: the forward gwcs is *the*
  WCS, and the two directions agree.
* **Outside the image.** A pixel position outside the WCS's bounding box
  (the outer edges of the pixels, ``-0.5`` to ``n - 0.5``), or a sky
  position that falls there, gives NaN, with one `OutsideBoundingBoxWarning`
  saying how many positions did, as astronomers expect of a transform asked
  about a point the data do not cover (a list of catalogue positions
  usually has some off the image, and one error would lose them all). Pass
  ``bounding_box=False`` to evaluate the transform beyond the edges anyway;
  a distortion's polynomial is then extrapolated.
"""

import copy
import math
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import RomosaicInputError
from .image_inverse import image_inverse

__all__ = [
    "OutsideBoundingBoxWarning",
    "add_cli_parser",
    "get_wcs",
    "pixtopix",
    "pixtosky",
    "read_positions",
    "skytopix",
    "write_positions",
]

#: Largest distance (arcsec) between a requested sky position and the image of
#: the pixel `skytopix` returns, after refinement.
SKY_TOLERANCE = 1e-7

# Newton steps to refine the inverse; one or two suffice from a fitted inverse.
_MAX_NEWTON_STEPS = 10

# Table formats by file extension, for --table and -o.
_TABLE_FORMATS = {
    ".ecsv": "ascii.ecsv",
    ".csv": "ascii.csv",
    ".txt": "ascii.basic",
    ".dat": "ascii.basic",
    ".parquet": "parquet",
    ".fits": "fits",
    ".fit": "fits",
}

# Digits printed: 1e-10 deg is 0.4 micro-arcsec; 1e-6 pixel is far below any
# measurement. Files keep full precision.
_PRINT_FORMATS = {"deg": "{:.10f}", "pix": "{:.6f}"}


class OutsideBoundingBoxWarning(UserWarning):
    """Some positions fall outside a WCS's bounding box; their results are NaN."""


# --- Getting a WCS ------------------------------------------------------------------------


def _describe(source):
    """A short name for a WCS source in messages: its file name if it has one."""
    if isinstance(source, (str, Path)):
        return str(source)
    meta = getattr(source, "meta", None)
    name = getattr(meta, "filename", None) if meta is not None else None
    if name not in (None, "", "?"):
        return str(name)
    return f"the {type(source).__name__}"


def _one_line(error):
    text = str(error).strip().splitlines()
    message = text[0] if text else type(error).__name__
    return message if len(message) < 200 else message[:197] + "..."


def _shape_of(model):
    """``(ny, nx)`` of a model's data without reading it, or None."""
    try:
        return tuple(int(n) for n in model.data.shape[-2:])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


class _WcsInfo:
    """A gwcs with its name and the pixel box it is valid on."""

    def __init__(self, wcs, name, shape=None):
        self.wcs = wcs
        self.name = name
        self.box = _bounding_box(wcs, shape)


def _bounding_box(wcs, shape):
    """``((xlo, xhi), (ylo, yhi))`` of a gwcs, or of the data shape, or None."""
    try:
        box = wcs.bounding_box
    except NotImplementedError:  # older gwcs: no bounding box set
        box = None
    if box is not None:
        (xlo, xhi), (ylo, yhi) = box.bounding_box(order="F")
        return (float(xlo), float(xhi)), (float(ylo), float(yhi))
    if shape is not None:
        ny, nx = shape
        return (-0.5, nx - 0.5), (-0.5, ny - 0.5)
    return None


def _require_wcs(wcs, name):
    from gwcs import wcs as gwcs_wcs

    if wcs is None:
        raise RomosaicInputError(f"{name}: has no WCS (meta.wcs is missing)")
    if not isinstance(wcs, gwcs_wcs.WCS):
        raise RomosaicInputError(f"{name}: meta.wcs is a {type(wcs).__name__}, not a gwcs")
    if wcs.forward_transform.n_inputs != 2 or wcs.forward_transform.n_outputs != 2:
        raise RomosaicInputError(f"{name}: the WCS is not a 2-D celestial WCS")
    return wcs


@contextmanager
def _open_wcs(source):
    """Yield a `_WcsInfo` for a gwcs, a data model or a file, closing what it opened."""
    from gwcs import wcs as gwcs_wcs

    if isinstance(source, _WcsInfo):
        yield source
        return
    if isinstance(source, gwcs_wcs.WCS):
        yield _WcsInfo(source, "the WCS", None)
        return
    if not isinstance(source, (str, Path)):
        name = _describe(source)
        meta = getattr(source, "meta", None)
        if meta is None:
            raise RomosaicInputError(
                f"{name}: not a WCS, a data model or a file name"
            )
        try:
            wcs = meta.wcs
        except (AttributeError, KeyError):
            wcs = None
        yield _WcsInfo(_require_wcs(wcs, name), name, _shape_of(source))
        return

    path = Path(source)
    if not path.is_file():
        raise RomosaicInputError(f"{path}: file not found")
    import asdf

    try:
        # asdf rather than roman_datamodels.open: only the WCS is needed, and a
        # plain ASDF file holding a gwcs under "wcs" (resample's output_wcs
        # files) works too. Arrays stay unread.
        handle = asdf.open(path, lazy_load=True, memmap=False)
    except Exception as error:  # not ASDF, truncated YAML, unknown tags...
        raise RomosaicInputError(
            f"{path}: not a readable ASDF file ({_one_line(error)})"
        ) from None
    try:
        tree = handle.tree
        if "roman" in tree:
            node = tree["roman"]
            try:
                wcs = node["meta"]["wcs"]
            except (KeyError, TypeError):
                wcs = None
            try:
                shape = tuple(int(n) for n in node["data"].shape[-2:])
            except (KeyError, TypeError, AttributeError):
                shape = None
        else:
            wcs, shape = tree.get("wcs"), None
        yield _WcsInfo(_require_wcs(wcs, str(path)), str(path), shape)
    finally:
        handle.close()


def get_wcs(source):
    """The gwcs of an image, a mosaic or a file.

    Parameters
    ----------
    source : gwcs.wcs.WCS, roman_datamodels.datamodels.DataModel, str or os.PathLike
        A gwcs; a data model with ``meta.wcs`` (``ImageModel``,
        ``MosaicModel``); or an ASDF file holding one (or holding a gwcs
        under the key ``wcs``).

    Returns
    -------
    gwcs.wcs.WCS

    Raises
    ------
    romosaic.errors.RomosaicInputError
        For a missing or unreadable file, or a model without a usable WCS.

    Examples
    --------
    >>> from romosaic.wcs_utils import affine_tan_wcs
    >>> w = affine_tan_wcs(crval=(10, 20), crpix=(49.5, 49.5),
    ...                    cd=[[-3e-5, 0], [0, 3e-5]], shape=(100, 100))
    >>> get_wcs(w) is w
    True
    """
    with _open_wcs(source) as info:
        # A copy: a file's transforms may hold arrays that are read lazily
        # from the file, which is closed on return.
        return copy.deepcopy(info.wcs) if isinstance(source, (str, Path)) else info.wcs


# --- The transforms -----------------------------------------------------------------------


def _as_arrays(a, b):
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return a, b, a.ndim == 0


def _scalar_or_array(values, scalar):
    return tuple(float(v) if scalar else v for v in values)


def _outside(box, x, y):
    """Positions outside a bounding box (NaN positions are not counted as outside)."""
    if box is None:
        return np.zeros(x.shape, dtype=bool)
    (xlo, xhi), (ylo, yhi) = box
    with np.errstate(invalid="ignore"):
        return (x < xlo) | (x > xhi) | (y < ylo) | (y > yhi)


def _warn_outside(outside, name, what):
    count = int(np.count_nonzero(outside))
    if count:
        warnings.warn(
            f"{count} of {outside.size} {what} outside the bounding box of {name}; "
            "their results are NaN",
            OutsideBoundingBoxWarning,
            stacklevel=3,
        )


def _forward(wcs, x, y):
    ra, dec = wcs(x, y, with_bounding_box=False)
    return np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)


def _offsets(ra, dec, ra0, dec0):
    """Tangent-plane offsets (arcsec, east and north) of positions about others.

    A gnomonic projection about each reference, so that it is exact for any
    separation and has no trouble at RA = 0/360 or near the poles.
    """
    ra, dec, ra0, dec0 = (np.deg2rad(v) for v in (ra, dec, ra0, dec0))
    cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    east = np.cos(dec) * np.sin(ra - ra0) / cos_c
    north = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cos_c
    return np.rad2deg(east) * 3600.0, np.rad2deg(north) * 3600.0


def _first_guess(info, ra, dec):
    """Pixel positions near those of (ra, dec), for the Newton steps to refine."""
    if info.box is None:
        try:
            return info.wcs.invert(ra, dec, with_bounding_box=False)
        except NotImplementedError:
            return info.wcs.numerical_inverse(ra, dec, with_bounding_box=False, tolerance=1e-8)
    # The WCS's own inverse where it maps the image's pixels back, else one
    # fitted to the forward transform (gwcs cannot invert the polynomial
    # chains the Roman simulator writes).
    (xlo, xhi), (ylo, yhi) = info.box
    shape = (int(round(yhi - ylo)), int(round(xhi - xlo)))
    return image_inverse(info.wcs, shape, info.name)(ra, dec)


def _invert(info, ra, dec, tolerance=SKY_TOLERANCE):
    """Pixel positions whose forward transform is (ra, dec), refined by Newton steps.

    Returns x, y (NaN where no pixel maps there, e.g. the far side of a TAN
    projection, or the iteration does not converge).
    """
    wcs = info.wcs
    shape = ra.shape
    # 1-D throughout: masks of 0-d arrays are numpy scalars, which cannot be assigned to.
    ra, dec = ra.ravel(), dec.ravel()
    x, y = _first_guess(info, ra, dec)
    x = np.array(x, dtype=float, copy=True).reshape(ra.shape)
    y = np.array(y, dtype=float, copy=True).reshape(ra.shape)
    todo = np.isfinite(x) & np.isfinite(y)
    h = 0.5  # pixels; the Jacobian only steers the steps, the residual sets the accuracy
    for _ in range(_MAX_NEWTON_STEPS):
        if not todo.any():
            break
        xs, ys = x[todo], y[todo]
        r0, d0 = ra[todo], dec[todo]
        ra1, dec1 = _forward(wcs, xs, ys)
        east, north = _offsets(r0, d0, ra1, dec1)
        done = np.hypot(east, north) <= tolerance
        # Jacobian of (east, north) with respect to (x, y), about the current position.
        ra_x, dec_x = _forward(wcs, xs + h, ys)
        ra_y, dec_y = _forward(wcs, xs, ys + h)
        ex, nx_ = _offsets(ra_x, dec_x, ra1, dec1)
        ey, ny_ = _offsets(ra_y, dec_y, ra1, dec1)
        det = (ex * ny_ - ey * nx_) / h**2
        with np.errstate(divide="ignore", invalid="ignore"):
            dx = (ny_ * east - ey * north) / h / det
            dy = (ex * north - nx_ * east) / h / det
        dx[done], dy[done] = 0.0, 0.0
        x[todo] = xs + dx
        y[todo] = ys + dy
        still = np.flatnonzero(todo)
        todo[still[done]] = False
    # Whatever has not converged (the inverse was far off, the projection
    # folds) has no reliable pixel.
    if todo.any():
        ra1, dec1 = _forward(wcs, x[todo], y[todo])
        east, north = _offsets(ra[todo], dec[todo], ra1, dec1)
        bad = ~(np.hypot(east, north) <= 10 * tolerance)
        idx = np.flatnonzero(todo)[bad]
        x[idx] = np.nan
        y[idx] = np.nan
    return x.reshape(shape), y.reshape(shape)


def _pixtosky(info, x, y, origin, bounding_box):
    x0, y0 = x - origin, y - origin
    ra, dec = _forward(info.wcs, x0, y0)
    ra = np.array(ra, dtype=float).reshape(x.shape)
    dec = np.array(dec, dtype=float).reshape(x.shape)
    if bounding_box:
        outside = _outside(info.box, x0, y0)
        _warn_outside(outside, info.name, "pixel positions are")
        ra[outside] = np.nan
        dec[outside] = np.nan
    return ra, dec


def _skytopix(info, ra, dec, origin, bounding_box):
    x, y = _invert(info, ra, dec)
    if bounding_box:
        outside = _outside(info.box, x, y)
        _warn_outside(outside, info.name, "sky positions fall")
        x[outside] = np.nan
        y[outside] = np.nan
    return x + origin, y + origin


def pixtosky(source, x, y, *, origin=0, bounding_box=True):
    """Sky positions (ICRS RA, Dec in degrees) of pixel positions.

    Parameters
    ----------
    source : gwcs.wcs.WCS, data model or path
        The image or mosaic (see `get_wcs`).
    x, y : float or array_like
        Pixel positions: column and row, broadcast together.
    origin : {0, 1}, optional
        Pixel convention: 0 (default) counts from 0 like gwcs and numpy;
        1 counts from 1 like FITS, DS9 and drizzlepac.
    bounding_box : bool, optional
        True (default): positions outside the WCS's bounding box give NaN,
        with one `OutsideBoundingBoxWarning`. False: evaluate everywhere.

    Returns
    -------
    ra, dec : float or numpy.ndarray
        Degrees; floats for scalar input.

    Raises
    ------
    romosaic.errors.RomosaicInputError
        For an unreadable file or a model without a WCS.

    Examples
    --------
    >>> from romosaic.wcs_utils import affine_tan_wcs
    >>> w = affine_tan_wcs(crval=(10, 20), crpix=(49.5, 49.5),
    ...                    cd=[[-3e-5, 0], [0, 3e-5]], shape=(100, 100))
    >>> ra, dec = pixtosky(w, 49.5, 49.5)
    >>> round(ra, 9), round(dec, 9)
    (10.0, 20.0)
    >>> ra, dec = pixtosky(w, 50.5, 50.5, origin=1)   # the same point, counted from 1
    >>> round(ra, 9), round(dec, 9)
    (10.0, 20.0)
    """
    origin = _check_origin(origin)
    x, y, scalar = _as_arrays(x, y)
    with _open_wcs(source) as info:
        return _scalar_or_array(_pixtosky(info, x, y, origin, bounding_box), scalar)


def skytopix(source, ra, dec, *, origin=0, bounding_box=True):
    """Pixel positions of sky positions, exact to the forward gwcs.

    Parameters
    ----------
    source : gwcs.wcs.WCS, data model or path
        The image or mosaic (see `get_wcs`).
    ra, dec : float or array_like
        ICRS degrees, broadcast together.
    origin : {0, 1}, optional
        Pixel convention of the result (see `pixtosky`).
    bounding_box : bool, optional
        True (default): positions falling outside the bounding box give NaN,
        with one `OutsideBoundingBoxWarning`.

    Returns
    -------
    x, y : float or numpy.ndarray
        Pixel column and row; floats for scalar input. Each maps back through
        the forward gwcs to within `SKY_TOLERANCE` arcsec of (ra, dec).

    Raises
    ------
    romosaic.errors.RomosaicInputError
        For an unreadable file or a model without a WCS.

    Examples
    --------
    >>> from romosaic.wcs_utils import affine_tan_wcs
    >>> w = affine_tan_wcs(crval=(10, 20), crpix=(49.5, 49.5),
    ...                    cd=[[-3e-5, 0], [0, 3e-5]], shape=(100, 100))
    >>> x, y = skytopix(w, 10.0, 20.0)
    >>> round(x, 6), round(y, 6)
    (49.5, 49.5)
    """
    origin = _check_origin(origin)
    ra, dec, scalar = _as_arrays(ra, dec)
    with _open_wcs(source) as info:
        return _scalar_or_array(_skytopix(info, ra, dec, origin, bounding_box), scalar)


def pixtopix(source, target, x, y, *, origin=0, bounding_box=True):
    """Pixel positions on one image or mosaic to pixel positions on another.

    The composition of `pixtosky` on ``source`` and `skytopix` on
    ``target``: an input image to the mosaic made from it, the mosaic back
    to an input, or any two images with WCSs.

    Parameters
    ----------
    source, target : gwcs.wcs.WCS, data model or path
        From and to (see `get_wcs`).
    x, y : float or array_like
        Pixel positions on ``source``.
    origin : {0, 1}, optional
        Pixel convention of input and output (see `pixtosky`).
    bounding_box : bool, optional
        True (default): positions outside ``source``'s bounding box, or
        landing outside ``target``'s, give NaN, with a warning for each.

    Returns
    -------
    x, y : float or numpy.ndarray
        Pixel positions on ``target``.

    Examples
    --------
    >>> from romosaic.wcs_utils import affine_tan_wcs
    >>> a = affine_tan_wcs(crval=(10, 20), crpix=(49.5, 49.5),
    ...                    cd=[[-3e-5, 0], [0, 3e-5]], shape=(100, 100))
    >>> b = affine_tan_wcs(crval=(10, 20), crpix=(99.5, 99.5),
    ...                    cd=[[-1.5e-5, 0], [0, 1.5e-5]], shape=(200, 200))
    >>> x, y = pixtopix(a, b, 59.5, 49.5)   # 10 pixels of a are 20 of b
    >>> round(x, 6), round(y, 6)
    (119.5, 99.5)
    """
    origin = _check_origin(origin)
    x, y, scalar = _as_arrays(x, y)
    with _open_wcs(source) as info_from, _open_wcs(target) as info_to:
        ra, dec = _pixtosky(info_from, x, y, origin, bounding_box)
        return _scalar_or_array(_skytopix(info_to, ra, dec, origin, bounding_box), scalar)


def _check_origin(origin):
    if origin not in (0, 1):
        raise RomosaicInputError(f"origin must be 0 or 1, not {origin!r}")
    return int(origin)


# --- Tables of positions ------------------------------------------------------------------


def _table_format(path):
    fmt = _TABLE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_TABLE_FORMATS))
        raise RomosaicInputError(
            f"{path}: unknown table format; use a file ending in one of {known}"
        )
    return fmt


def read_positions(path, columns):
    """Read a table of positions, checking that it has the named columns.

    Parameters
    ----------
    path : str or os.PathLike
        ECSV, CSV, whitespace-separated text (``.txt``, ``.dat``), Parquet or
        FITS table, chosen by the extension.
    columns : (str, str)
        The two columns to use (e.g. ``("x", "y")`` or ``("ra", "dec")``).

    Returns
    -------
    table : astropy.table.Table
    a, b : numpy.ndarray
        The two columns as floats (masked values as NaN).

    Raises
    ------
    romosaic.errors.RomosaicInputError
        For a missing or unreadable file, or a missing or non-numeric column.
    """
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise RomosaicInputError(f"{path}: file not found")
    fmt = _table_format(path)
    try:
        table = _read_parquet(path) if fmt == "parquet" else Table.read(path, format=fmt)
    except Exception as error:  # parser errors of every format
        raise RomosaicInputError(f"{path}: cannot read as a table ({_one_line(error)})") from None
    values = []
    for name in columns:
        if name not in table.colnames:
            raise RomosaicInputError(
                f"{path}: no column {name!r} (columns: {', '.join(table.colnames)})"
            )
        column = table[name]
        try:
            data = np.ma.filled(np.ma.asarray(column, dtype=float), np.nan)
        except (TypeError, ValueError):
            raise RomosaicInputError(f"{path}: column {name!r} is not numeric") from None
        if data.ndim != 1:
            raise RomosaicInputError(f"{path}: column {name!r} is not one value per row")
        values.append(np.asarray(data))
    return table, values[0], values[1]


def _read_parquet(path):
    """A Parquet file as an astropy Table, with pyarrow alone.

    Only the values are needed here, and pyarrow reads them from any Parquet
    file, whoever wrote it.
    """
    from astropy.table import Table
    from pyarrow import parquet

    arrow = parquet.read_table(path)
    return Table({name: arrow.column(name).to_numpy(zero_copy_only=False)
                  for name in arrow.column_names})


def write_positions(table, path):
    """Write a table atomically, in the format its extension names.

    Parameters
    ----------
    table : astropy.table.Table
    path : str or os.PathLike
        ``.ecsv``, ``.csv``, ``.txt``/``.dat``, ``.parquet`` or ``.fits``.

    Returns
    -------
    pathlib.Path
    """
    from ._atomic import atomic_output

    path = Path(path)
    fmt = _table_format(path)
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise RomosaicInputError(f"{path}: the directory does not exist")
    with atomic_output(path) as temp_path:
        table.write(temp_path, format=fmt)
    return path


# --- Command line -------------------------------------------------------------------------

_COMMANDS = {
    # name: (help, input columns, output columns, input units, output units, meaning)
    "pixtosky": ("pixel positions on an image or mosaic to RA, Dec",
                 ("x", "y"), ("ra", "dec"), "pix", "deg"),
    "skytopix": ("RA, Dec to pixel positions on an image or mosaic",
                 ("ra", "dec"), ("x", "y"), "deg", "pix"),
    "pixtopix": ("pixel positions on one image or mosaic to another",
                 ("x", "y"), ("x_out", "y_out"), "pix", "pix"),
}


def add_cli_parser(subparsers):
    """Add ``pixtosky``, ``skytopix`` and ``pixtopix`` to the ``romosaic`` command line.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        As returned by `argparse.ArgumentParser.add_subparsers`.

    Returns
    -------
    list of argparse.ArgumentParser
        The three sub-commands' parsers.
    """
    parsers = []
    for name, (summary, in_cols, out_cols, in_unit, _) in _COMMANDS.items():
        parser = subparsers.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}, exactly with the file's gwcs. "
            "Pixels are 0-based (the first pixel's centre is 0, 0) unless --origin 1. "
            "Positions outside the bounding box give NaN, with a warning. "
            "Give one position, or a table of them with --table.",
        )
        parser.add_argument("file", metavar="FILE", help="image (*_cal.asdf) or mosaic "
                            "(*_coadd.asdf), or an ASDF file with a gwcs under 'wcs'")
        if name == "pixtopix":
            parser.add_argument("target", metavar="TO", help="image or mosaic to map onto")
        a, b = ("X", "Y") if in_unit == "pix" else ("RA", "DEC")
        parser.add_argument("first", metavar=a, nargs="?",
                            help="pixel column" if in_unit == "pix" else "RA in degrees")
        parser.add_argument("second", metavar=b, nargs="?",
                            help="pixel row" if in_unit == "pix" else "Dec in degrees")
        parser.add_argument(
            "--table", metavar="TABLE",
            help="table of positions (.ecsv, .csv, .txt/.dat, .parquet, .fits) instead of "
                 f"{a} {b}",
        )
        parser.add_argument(
            "--columns", nargs=2, metavar=(a, b), default=in_cols,
            help=f"the table's columns to read (default: {' '.join(in_cols)})",
        )
        parser.add_argument(
            "--output-columns", nargs=2, metavar=("A", "B"), default=out_cols,
            help=f"names of the columns added (default: {' '.join(out_cols)})",
        )
        parser.add_argument(
            "-o", "--output", metavar="OUT",
            help="write the table (the input columns and the results) here instead of "
                 "printing it; format from the extension",
        )
        parser.add_argument(
            "--origin", type=int, choices=(0, 1), default=0,
            help="pixel convention: 0 (default; numpy, gwcs) or 1 (FITS, DS9, drizzlepac)",
        )
        parser.add_argument(
            "--no-bounding-box", dest="bounding_box", action="store_false",
            help="evaluate outside the bounding box instead of giving NaN",
        )
        parser.set_defaults(run=_run, transform=name)
        parsers.append(parser)
    return parsers


def _number(text, what):
    try:
        value = float(text)
    except ValueError:
        raise RomosaicInputError(f"{what} must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise RomosaicInputError(f"{what} must be finite, not {text!r}")
    return value


def _input_table(args, in_unit):
    """The positions as a table, and the two input columns as arrays."""
    from astropy.table import Table

    given = (args.first is not None, args.second is not None)
    if args.table is not None:
        if any(given):
            raise RomosaicInputError("give positions either on the command line or with --table")
        return read_positions(args.table, args.columns)
    if not all(given):
        raise RomosaicInputError("give a position (two numbers) or --table FILE")
    names = ("X", "Y") if in_unit == "pix" else ("RA", "DEC")
    a = np.array([_number(args.first, names[0])])
    b = np.array([_number(args.second, names[1])])
    table = Table({args.columns[0]: a, args.columns[1]: b})
    for column in args.columns:
        table[column].unit = in_unit
    return table, a, b


def _run(args):
    name = args.transform
    _, _, _, in_unit, out_unit = _COMMANDS[name]
    table, a, b = _input_table(args, in_unit)
    clash = [c for c in args.output_columns if c in table.colnames]
    if clash:
        raise RomosaicInputError(
            f"the table already has a column {clash[0]!r}; name the results with --output-columns"
        )
    options = {"origin": args.origin, "bounding_box": args.bounding_box}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OutsideBoundingBoxWarning)
        if name == "pixtosky":
            first, second = pixtosky(args.file, a, b, **options)
        elif name == "skytopix":
            first, second = skytopix(args.file, a, b, **options)
        else:
            first, second = pixtopix(args.file, args.target, a, b, **options)
    for warning in caught:
        print(f"romosaic {name}: warning: {warning.message}", file=sys.stderr)
    table[args.output_columns[0]] = first
    table[args.output_columns[1]] = second
    for column in args.output_columns:
        table[column].unit = out_unit
    if args.output:
        print(write_positions(table, args.output))
    else:
        _print_table(table)
    return 0


def _print_table(table):
    """Print a whitespace-separated table with a header, enough digits for any use."""
    shown = table.copy(copy_data=False)
    for column in shown.itercols():
        unit = str(column.unit) if column.unit is not None else None
        if unit in _PRINT_FORMATS and column.dtype.kind == "f":
            column.info.format = _PRINT_FORMATS[unit]
    shown.write(sys.stdout, format="ascii.basic")

