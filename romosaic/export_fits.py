"""Mosaics and catalogs as FITS files (``romosaic export-fits``).

DS9, SExtractor and many astropy scripts read FITS, not ASDF. `export_fits`
writes a `~roman_datamodels.datamodels.MosaicModel` as a multi-extension
FITS file:

=========  ========  ===========================================================
EXTNAME    type      content
=========  ========  ===========================================================
(primary)  none      key metadata only (no data)
SCI        float32   ``data``, surface brightness in MJy/sr
ERR        float32   ``err``, one-sigma uncertainty in MJy/sr
WHT        float32   ``weight``, the drizzle weight (``meta.resample.weight_type``)
EXPMAP     float32   exposure time of each pixel in seconds, rebuilt from the
                     context and the inputs' exposure times (not stored in the
                     mosaic; left out when those times are unknown)
NINPUTS    int16     number of inputs that contributed to each pixel
CON        uint32    ``context`` as stored: cube of ``ceil(N / 32)`` planes;
                     bit ``i % 32`` of plane ``i // 32`` is set where input
                     ``i`` (``MEMB<i>`` in the primary header) contributed
=========  ========  ===========================================================

Every image extension carries a FITS WCS fitted to the mosaic's gwcs with
`gwcs.wcs.WCS.to_fits_sip` and the key metadata. A mosaic on a skycell is a
plain gnomonic (TAN) projection: with the reference pixel at the projection's
tangent point the fit is linear and exact to rounding (about 1e-8 pixel). A
WCS that a plain TAN cannot represent gets SIP polynomials, of the lowest
degree that reaches ``max_wcs_error``. Either way the result is checked on a
grid over the whole image, edges and corners included, against the gwcs
(`measure_wcs_accuracy`), and the measured errors are written to the headers
(``WCSERR``, ``WCSRTERR``).

`catalog_to_fits` converts the ``_cat.parquet`` catalog to a FITS binary table
with each column's unit (``TUNITn``) and description (``TCOMMn``).
"""

import argparse
import logging
import math
import os
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ._atomic import atomic_outputs
from .errors import RomosaicInputError
from .mosaic_planes import contributing_inputs, exposure_time_plane

__all__ = [
    "DEFAULT_MAX_WCS_ERROR",
    "ExportResult",
    "WcsAccuracy",
    "add_cli_parser",
    "catalog_to_fits",
    "catalog_table_hdu",
    "export_fits",
    "fits_wcs_header",
    "measure_wcs_accuracy",
    "mosaic_hdulist",
]

log = logging.getLogger(__name__)

#: Largest error, in mosaic pixels, allowed between the FITS WCS and the gwcs
#: anywhere on the image: a tenth of the astrometric precision of a bright star.
DEFAULT_MAX_WCS_ERROR = 0.01

# Points along each axis of the grid on which the FITS WCS is checked: 10,201
# points, a few milliseconds for any mosaic, every 50 pixels on a skycell.
_CHECK_POINTS = 101

_SURFACE_BRIGHTNESS_UNIT = "MJy/sr"

# FITS unit of the weight map for each weight_type: inverse variance of the
# surface brightness, or seconds.
_WEIGHT_UNITS = {"ivm": "MJy-2 sr2", "ivm-sky": "MJy-2 sr2", "exptime": "s"}

# WCS keywords gwcs adds that describe the array rather than the WCS, or that
# say nothing (MJDREF = 0).
_NOT_WCS_KEYWORDS = ("NAXIS", "NAXIS1", "NAXIS2", "MJDREF")


@dataclass(frozen=True)
class WcsAccuracy:
    """How closely a FITS WCS reproduces a gwcs over an image, in pixels.

    Attributes
    ----------
    max_sky_error : float
        Largest angular distance between the two WCSs' sky positions of one
        pixel position, in units of the pixel scale.
    max_round_trip_error : float
        Largest distance between a pixel position and the FITS WCS's pixel
        position of the gwcs's sky position there (gwcs forward, FITS
        inverse): how far a catalog position lands from its source in DS9.
    n_points : int
        Number of pixel positions checked: a square grid over the whole image
        from edge to edge (pixel positions ``-0.5`` to ``n - 0.5``), corners
        included.
    sip_degree : int
        Degree of the SIP polynomials, 0 for none (a linear FITS WCS).
    """

    max_sky_error: float
    max_round_trip_error: float
    n_points: int
    sip_degree: int

    @property
    def max_error(self):
        """The larger of the two errors."""
        return max(self.max_sky_error, self.max_round_trip_error)


@dataclass(frozen=True)
class ExportResult:
    """What `export_fits` wrote.

    Attributes
    ----------
    image : pathlib.Path
        The multi-extension FITS image.
    catalog : pathlib.Path or None
        The FITS table, if a catalog was converted.
    wcs_accuracy : WcsAccuracy
        The measured accuracy of the image's FITS WCS.
    """

    image: Path
    catalog: Path | None
    wcs_accuracy: WcsAccuracy


# -- WCS --------------------------------------------------------------------------------------


def fits_wcs_header(wcs, shape, *, max_error=DEFAULT_MAX_WCS_ERROR, tangent_point=None,
                    check_points=_CHECK_POINTS):
    """A FITS WCS fitted to a gwcs over a whole image, and its measured accuracy.

    Parameters
    ----------
    wcs : gwcs.wcs.WCS
        Maps 0-based ``(x, y)`` pixel positions to ``(ra, dec)`` in degrees.
    shape : tuple of int
        ``(ny, nx)`` of the image.
    max_error : float, optional
        Largest error in pixels allowed anywhere on the image, both from
        pixel to sky and back (see `WcsAccuracy`).
    tangent_point : tuple of float, optional
        ``(ra, dec)`` in degrees of the projection's tangent point (a
        mosaic's ``meta.wcsinfo.ra_ref``, ``dec_ref``). Placing the FITS
        reference pixel there makes a gnomonic gwcs an exact linear FITS WCS;
        without it the reference pixel is the image centre and a TAN gwcs
        needs SIP terms on a large image.
    check_points : int, optional
        Grid points along each axis for the accuracy check.

    Returns
    -------
    header : astropy.io.fits.Header
        The WCS keywords (``CTYPE`` ending in ``-SIP`` when polynomials are needed).
    accuracy : WcsAccuracy
        Measured on the grid.

    Raises
    ------
    RomosaicInputError
        If no FITS WCS of SIP degree up to 9 reaches ``max_error``.
    """
    from scipy.linalg import LinAlgWarning

    ny, nx = shape
    bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    crpix = _tangent_pixel(wcs, tangent_point)
    attempts = [crpix, None] if crpix is not None else [None]
    best = None
    for attempt in attempts:
        try:
            with warnings.catch_warnings():
                # gwcs warns before raising; the error below says it in one line.
                warnings.simplefilter("ignore", LinAlgWarning)
                header = wcs.to_fits_sip(bounding_box=bounding_box, max_pix_error=max_error,
                                         max_inv_pix_error=max_error, crpix=attempt)
        except (ValueError, np.linalg.LinAlgError) as error:
            # gwcs raises ValueError when no degree up to 9 reaches the accuracy
            log.debug("to_fits_sip with crpix=%s failed: %s", attempt, error)
            continue
        header = _clean_wcs_header(header)
        accuracy = measure_wcs_accuracy(wcs, header, shape, check_points=check_points)
        if best is None or accuracy.max_error < best[1].max_error:
            best = (header, accuracy)
        if accuracy.max_error <= max_error:
            return header, accuracy
    found = f"; the best found is off by {best[1].max_error:.3g} pixel" if best else ""
    raise RomosaicInputError(
        f"no FITS WCS (TAN with SIP polynomials up to degree 9) matches the mosaic's WCS to "
        f"within {max_error:g} pixel{found}; allow a larger max_wcs_error (--max-wcs-error)")


def measure_wcs_accuracy(wcs, fits_header, shape, *, check_points=_CHECK_POINTS):
    """Compare a FITS WCS with a gwcs on a grid over the whole image.

    Parameters
    ----------
    wcs : gwcs.wcs.WCS
        The reference.
    fits_header : astropy.io.fits.Header
        The FITS WCS, as astropy reads it.
    shape : tuple of int
        ``(ny, nx)``.
    check_points : int, optional
        Grid points along each axis, from edge to edge (pixel positions
        ``-0.5`` and ``n - 0.5``), so that the corners are checked.

    Returns
    -------
    WcsAccuracy
    """
    from astropy.wcs import WCS

    fits_wcs = WCS(fits_header)
    ny, nx = shape
    x, y = np.meshgrid(np.linspace(-0.5, nx - 0.5, check_points),
                       np.linspace(-0.5, ny - 0.5, check_points))
    x, y = x.ravel(), y.ravel()
    ra, dec = wcs(x, y, with_bounding_box=False)
    fits_ra, fits_dec = fits_wcs.pixel_to_world_values(x, y)
    separation = _angular_separation_deg(ra, dec, fits_ra, fits_dec)
    scale = _pixel_scale_deg(fits_wcs)
    back_x, back_y = fits_wcs.world_to_pixel_values(ra, dec)
    return WcsAccuracy(
        max_sky_error=float(np.max(separation) / scale),
        max_round_trip_error=float(np.max(np.hypot(back_x - x, back_y - y))),
        n_points=int(x.size),
        sip_degree=int(fits_header.get("A_ORDER", 0)),
    )


def _tangent_pixel(wcs, tangent_point):
    """1-based FITS pixel of the tangent point, or None when unknown or not finite."""
    if tangent_point is None:
        return None
    try:
        x, y = wcs.invert(*(float(v) for v in tangent_point), with_bounding_box=False)
    except Exception as error:  # gwcs raises several kinds for WCSs it cannot invert
        log.debug("cannot place the FITS reference pixel on the tangent point: %s", error)
        return None
    if not (np.isfinite(x) and np.isfinite(y)):
        return None
    return (float(x) + 1.0, float(y) + 1.0)


def _clean_wcs_header(header):
    from astropy.io import fits

    cleaned = fits.Header()
    for card in header.cards:
        if card.keyword in _NOT_WCS_KEYWORDS or card.keyword in ("COMMENT", "HISTORY", ""):
            continue
        cleaned.append(card)
    # gwcs's own estimate, in favour of the measured WCSERR and WCSRTERR.
    cleaned.remove("SIPMXERR", ignore_missing=True)
    return cleaned


def _angular_separation_deg(ra1, dec1, ra2, dec2):
    from astropy.coordinates import angular_separation

    return np.degrees(angular_separation(*np.radians([ra1, dec1, ra2, dec2])))


def _pixel_scale_deg(fits_wcs):
    from astropy.wcs.utils import proj_plane_pixel_area

    return math.sqrt(proj_plane_pixel_area(fits_wcs.celestial))


def _wcs_accuracy_cards(accuracy):
    return [
        ("WCSERR", _round(accuracy.max_sky_error), "[pix] max sky offset from the gwcs"),
        ("WCSRTERR", _round(accuracy.max_round_trip_error),
         "[pix] max offset, gwcs pix->sky->this WCS pix"),
        ("WCSNCHK", accuracy.n_points, "grid points checked, corners included"),
    ]


def _round(value):
    return float(f"{value:.3g}")


# -- images -----------------------------------------------------------------------------------


def mosaic_hdulist(model, *, max_wcs_error=DEFAULT_MAX_WCS_ERROR):
    """A mosaic as a FITS `~astropy.io.fits.HDUList` (see the module description).

    Parameters
    ----------
    model : roman_datamodels.datamodels.MosaicModel
    max_wcs_error : float, optional
        Largest allowed error of the FITS WCS in pixels (see `fits_wcs_header`).

    Returns
    -------
    hdulist : astropy.io.fits.HDUList
    accuracy : WcsAccuracy
        Of the FITS WCS written to every image extension.

    Raises
    ------
    RomosaicInputError
        If the mosaic has no usable WCS or its arrays are not two-dimensional,
        or no FITS WCS reaches ``max_wcs_error``.
    """
    from astropy.io import fits

    name = _model_name(model)
    data = model.data
    if np.ndim(data) != 2:
        raise RomosaicInputError(f"{name}: data must be two-dimensional, got shape "
                                 f"{np.shape(data)}")
    shape = np.shape(data)
    wcs = _get(model.meta, "wcs")
    if wcs is None or not hasattr(wcs, "to_fits_sip"):
        raise RomosaicInputError(f"{name}: the mosaic has no gwcs (meta.wcs) to convert")
    wcsinfo = _get(model.meta, "wcsinfo")
    tangent = (_get(wcsinfo, "ra_ref"), _get(wcsinfo, "dec_ref"))
    wcs_header, accuracy = fits_wcs_header(
        wcs, shape, max_error=max_wcs_error,
        tangent_point=tangent if None not in tangent else None)
    log.info("%s: FITS WCS %s matches the gwcs to %.2g pixel (%d points, corners included)",
             name, wcs_header["CTYPE1"], accuracy.max_error, accuracy.n_points)

    key_cards = _key_metadata_cards(model, wcs_header)
    members = [str(m) for m in (_get(_get(model.meta, "resample"), "members") or [])]

    primary = fits.PrimaryHDU()
    _extend(primary.header, key_cards)
    _extend(primary.header, _wcs_accuracy_cards(accuracy))
    _extend(primary.header, [(f"MEMB{index}", member, f"CON plane {index // 32} bit {index % 32}")
                             for index, member in enumerate(members)])
    primary.header["COMMENT"] = ("Converted from the ASDF mosaic by romosaic export-fits; "
                                 "extensions SCI ERR WHT [EXPMAP] NINPUTS CON.")

    hdus = [primary]

    def image(extname, array, unit, comment, extra=()):
        hdu = fits.ImageHDU(data=array, name=extname)
        header = hdu.header
        if unit is not None:
            header["BUNIT"] = (unit, "unit of the values")
        header["COMMENT"] = comment
        _extend(header, extra)
        _extend(header, key_cards)
        header.extend(wcs_header)
        _extend(header, _wcs_accuracy_cards(accuracy))
        hdus.append(hdu)
        return hdu

    image("SCI", _array(model, "data", np.float32), _SURFACE_BRIGHTNESS_UNIT,
          "Surface brightness (roman_datamodels MosaicModel.data).")
    image("ERR", _array(model, "err", np.float32), _SURFACE_BRIGHTNESS_UNIT,
          "One-sigma uncertainty of SCI (MosaicModel.err).")
    weight_type = str(_get(_get(model.meta, "resample"), "weight_type") or "")
    image("WHT", _array(model, "weight", np.float32), _WEIGHT_UNITS.get(weight_type),
          f"Drizzle weight, weight_type={weight_type or 'unknown'} (MosaicModel.weight).")

    context = _get(model, "context")
    if context is None:
        log.warning("%s has no context; EXPMAP, NINPUTS and CON are left out", name)
    else:
        context = np.asarray(context, dtype=np.uint32)
        if context.ndim == 2:
            context = context[np.newaxis]
        exposure_map = exposure_time_plane(model, context)
        if exposure_map is None:
            log.warning("%s: the inputs' exposure times are not recorded "
                        "(meta.individual_image_meta.exposure, one row per member); "
                        "EXPMAP is left out", name)
        else:
            image("EXPMAP", exposure_map, "s",
                  "Sum of the exposure times of the inputs contributing to each pixel.")
        ninputs = image("NINPUTS", contributing_inputs(context), None,
                        "Number of inputs contributing to each pixel (bits set in CON).")
        ninputs.header["NINPUTS"] = (len(members), "inputs of the mosaic")
        con = fits.ImageHDU(data=context, name="CON")
        header = con.header
        header["COMMENT"] = ("Context (MosaicModel.context): bit i%32 of plane i//32 is set "
                             "where input i (MEMBi in the primary header) contributed. "
                             "Plane index is the third axis (NAXIS3), counted from 0.")
        header["NINPUTS"] = (len(members), "inputs of the mosaic")
        _extend(header, key_cards)
        header.extend(_cube_wcs(wcs_header))
        _extend(header, _wcs_accuracy_cards(accuracy))
        hdus.append(con)
    return fits.HDUList(hdus), accuracy


def _cube_wcs(wcs_header):
    """The celestial WCS with a third axis that counts context planes from 0."""
    cube = wcs_header.copy()
    cube["WCSAXES"] = 3
    cube["CTYPE3"] = ("PLANE", "context plane: inputs 32*p to 32*p+31")
    cube["CRPIX3"] = 1.0
    cube["CRVAL3"] = 0.0
    # With a CD matrix, CDELT is ignored and a missing CD3_3 is 0.
    cube["CD3_3" if "CD1_1" in cube else "CDELT3"] = 1.0
    return cube


def _key_metadata_cards(model, wcs_header):
    """Header cards with the mosaic's key metadata, in every HDU."""
    meta = model.meta
    coadd = _get(meta, "coadd_info")
    resample = _get(meta, "resample")
    wcsinfo = _get(meta, "wcsinfo")
    instrument = _get(meta, "instrument")
    from . import __version__

    cards = [
        ("TELESCOP", _text(_get(meta, "telescope")), "telescope"),
        ("INSTRUME", _text(_get(instrument, "name")), "instrument"),
        ("FILTER", _text(_get(instrument, "optical_element")), "optical element"),
        ("ORIGIN", _text(_get(meta, "origin")), "institution that made the mosaic"),
        ("FILENAME", _text(_get(meta, "filename")), "the ASDF mosaic this was converted from"),
        ("PRODTYPE", _text(_get(meta, "product_type")), "product type"),
        ("CALSOFT", _text(_get(meta, "calibration_software_name")), "mosaic made by"),
        ("CALVER", _text(_get(meta, "calibration_software_version")), "its version"),
        ("ASNNAME", _text(_get(_get(meta, "association"), "name")), "association"),
        ("SKYCELL", _text(_get(wcsinfo, "skycell_name")), "skycell"),
        ("CREATOR", f"romosaic {__version__} export-fits", "software that wrote this file"),
        ("DATE", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "[UTC] file written"),
        ("TIMESYS", "UTC", "time scale of the DATE-* and MJD-* keywords"),
    ]
    for keyword, key, comment in (("BEG", "time_first", "start of the first input exposure"),
                                  ("END", "time_last", "end of the last input exposure"),
                                  ("AVG", "time_mean", "mean of the exposures' mid-times")):
        time = _time(_get(coadd, key))
        if time is not None:
            cards.append((f"DATE-{keyword}", time.isot, comment))
            cards.append((f"MJD-{keyword}", float(time.mjd), comment))
    cards += [
        ("EXPTIME", _number(_get(coadd, "exposure_time")),
         "[s] mean exposure time of the pixels with data"),
        ("EXPMAX", _number(_get(coadd, "max_exposure_time")), "[s] maximum exposure time"),
        ("NCOMBINE", len(_get(resample, "members") or []), "number of input images"),
        ("WHTTYPE", _text(_get(resample, "weight_type")), "drizzle weighting of the inputs"),
        ("PIXFRAC", _number(_get(resample, "pixfrac")), "drizzle pixfrac"),
    ]
    scale_deg = _pixel_scale_deg(_astropy_wcs(wcs_header))
    pixel_sr = math.radians(scale_deg) ** 2
    cards += [
        ("PIXSCALE", scale_deg * 3600.0, "[arcsec] pixel scale at the reference pixel"),
        ("PIXAR_SR", pixel_sr, "[sr] pixel area at the reference pixel"),
        ("PIXAR_A2", (scale_deg * 3600.0) ** 2, "[arcsec2] pixel area at the reference pixel"),
        # AB magnitude of a sum S of SCI pixel values: ABZP - 2.5 log10(S).
        ("ABZP", 2.5 * math.log10(3631.0 / (1e6 * pixel_sr)),
         "AB zero point for sums of SCI (MJy/sr) pixels"),
    ]
    return [card for card in cards if card[1] is not None]


def _astropy_wcs(header):
    from astropy.wcs import WCS

    return WCS(header)


def _extend(header, cards):
    from astropy.io import fits

    for keyword, value, comment in cards:
        # A comment too long to sit beside its value is cut, not warned about
        # (astropy cuts it anyway).
        used = len(fits.Card(keyword, value).image.rstrip())
        room = 80 - used - 3
        header[keyword] = (value, comment[:room] if room > 0 else "")


def _array(model, name, dtype):
    array = getattr(model, name)
    # A view when the file already holds this type (the common case); else one copy.
    return np.asarray(array, dtype=dtype)


def _get(node, key):
    if node is None:
        return None
    try:
        return node[key]
    except (KeyError, TypeError, AttributeError, IndexError):
        return getattr(node, key, None)


def _text(value):
    # Unset string metadata in roman_datamodels is "?".
    if value is None or str(value) in ("", "?", "None"):
        return None
    return str(value)


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _time(value):
    from astropy.time import Time

    if value is None:
        return None
    try:
        time = value if isinstance(value, Time) else Time(value)
        return time.utc
    except (TypeError, ValueError):
        return None


def _model_name(model):
    return _text(_get(model.meta, "filename")) or f"in-memory {type(model).__name__}"


# -- catalog ----------------------------------------------------------------------------------


def catalog_table_hdu(path, *, extra_cards=()):
    """A ``_cat.parquet`` catalog as a FITS binary table HDU.

    Parameters
    ----------
    path : str or os.PathLike
        The catalog (``MosaicSourceCatalogModel`` saved as Parquet).
    extra_cards : sequence of (keyword, value, comment), optional
        Added to the header.

    Returns
    -------
    astropy.io.fits.BinTableHDU
        EXTNAME ``CATALOG``. Each column keeps its unit (``TUNITn``; AB
        magnitudes, which FITS cannot name, as ``mag`` with "AB" in the
        description) and its description (``TCOMMn``). The catalog's
        processing notes (the Parquet schema's ``source_catalog.*``
        metadata) become ``HIERARCH source_catalog.*`` cards.

    Raises
    ------
    RomosaicInputError
        If the file is missing or not a readable Parquet table.
    """
    import astropy.units as u
    from astropy.io import fits
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise RomosaicInputError(f"{path}: file not found")
    try:
        table = Table.read(path, format="parquet")
        schema_meta = _parquet_schema_metadata(path)
    except Exception as error:  # pyarrow and astropy raise many kinds for bad files
        from .models import one_line_message

        raise RomosaicInputError(f"{path}: cannot read as a Parquet table "
                                 f"({one_line_message(error)})") from None
    table.meta = {}
    units = {}
    descriptions = {}
    for column in table.itercols():
        descriptions[column.name] = column.description
        unit = column.unit
        if unit is None:
            continue
        try:
            units[column.name] = unit.to_string("fits")
        except (ValueError, TypeError, AttributeError):
            if isinstance(unit, u.MagUnit):
                units[column.name] = "mag"
                text = column.description or ""
                descriptions[column.name] = f"{text} (AB)" if "AB" not in text else text
            else:
                units[column.name] = str(unit)
        column.unit = None
        column.description = None
    with warnings.catch_warnings():
        # Boolean columns become FITS logicals; nothing here is lost.
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        hdu = fits.table_to_hdu(table, character_as_bytes=True, name="CATALOG")
    header = hdu.header
    for index, name in enumerate(table.colnames, start=1):
        if name in units:
            header[f"TUNIT{index}"] = units[name]
        if descriptions.get(name):
            header[f"TCOMM{index}"] = descriptions[name]
    _extend(header, extra_cards)
    header["CATFILE"] = (path.name, "the Parquet catalog this was converted from")
    for key, value in schema_meta.items():
        if key.startswith("source_catalog."):
            header[f"HIERARCH {key}"] = value
    return hdu


def _parquet_schema_metadata(path):
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    decoded = {}
    for key, value in metadata.items():
        key, value = key.decode("utf-8", "replace"), value.decode("utf-8", "replace")
        # FITS cards hold printable ASCII only.
        if key.isascii() and key.isprintable() and "=" not in key:
            decoded[key] = value.encode("ascii", "replace").decode("ascii")
    return decoded


def catalog_to_fits(catalog, output, *, extra_cards=()):
    """Write a ``_cat.parquet`` catalog as a FITS table, atomically.

    Parameters
    ----------
    catalog : str or os.PathLike
        The Parquet catalog.
    output : str or os.PathLike
        The FITS file to write (a primary HDU and the ``CATALOG`` table).
    extra_cards : sequence of (keyword, value, comment), optional
        Added to the table's header.

    Returns
    -------
    pathlib.Path
    """
    output = Path(output)
    _check_output(output, [catalog])
    hdulist = _catalog_hdulist(catalog, extra_cards)
    with atomic_outputs([output]) as (temporary,):
        hdulist.writeto(temporary)
    return output


# -- the whole export -------------------------------------------------------------------------


def export_fits(coadd, output=None, *, catalog=None, max_wcs_error=DEFAULT_MAX_WCS_ERROR):
    """Write a mosaic, and optionally its catalog, as FITS files.

    Parameters
    ----------
    coadd : str or os.PathLike
        The mosaic (``<product>_coadd.asdf``).
    output : str or os.PathLike, optional
        The FITS image to write; default: ``coadd`` with ``.fits`` for
        ``.asdf``, beside it.
    catalog : bool or str or os.PathLike, optional
        True: also convert the product's catalog, ``<product>_cat.parquet``
        beside ``coadd``; a path: convert that catalog. It is written beside
        ``output`` with ``.fits`` for ``.parquet`` (``<product>_cat.fits``).
    max_wcs_error : float, optional
        Largest allowed error of the FITS WCS in pixels anywhere on the
        image (see `fits_wcs_header`).

    Returns
    -------
    ExportResult

    Raises
    ------
    RomosaicInputError
        A missing or unreadable input, a file that is not a mosaic, an output
        that would overwrite an input, a missing output directory, or a WCS
        that FITS cannot represent to within ``max_wcs_error``.
    OutputError
        If a file cannot be written. Files are written under temporary names
        and renamed into place together, so a failure leaves any previous
        files unchanged.
    """
    from .catalog.products import product_stem
    from .models import open_mosaic_model

    coadd = Path(coadd)
    if not (isinstance(max_wcs_error, int | float) and max_wcs_error > 0
            and math.isfinite(max_wcs_error)):
        raise RomosaicInputError(f"max_wcs_error must be a positive number of pixels, "
                                 f"got {max_wcs_error!r}")
    output = Path(output) if output is not None else _with_suffix(coadd, ".fits")
    catalog_path = None
    if catalog is True:
        catalog_path = coadd.parent / f"{product_stem(coadd.name)}_cat.parquet"
    elif catalog not in (None, False):
        catalog_path = Path(catalog)
    catalog_output = (output.parent / _with_suffix(Path(catalog_path.name), ".fits")
                      if catalog_path is not None else None)
    inputs = [coadd] + ([catalog_path] if catalog_path is not None else [])
    _check_output(output, inputs)
    if catalog_output is not None:
        _check_output(catalog_output, inputs + [output])
        if not catalog_path.is_file():
            raise RomosaicInputError(f"{catalog_path}: file not found")

    model = open_mosaic_model(coadd, memmap=True)
    try:
        hdulist, accuracy = mosaic_hdulist(model, max_wcs_error=max_wcs_error)
        destinations = [output]
        writers = [hdulist]
        if catalog_output is not None:
            key_cards = _key_metadata_cards(model, hdulist["SCI"].header)
            writers.append(_catalog_hdulist(catalog_path, key_cards))
            destinations.append(catalog_output)
        with atomic_outputs(destinations) as temporaries:
            for hdus, temporary in zip(writers, temporaries, strict=True):
                hdus.writeto(temporary)
    finally:
        model.close()
    log.info("Wrote %s", ", ".join(str(p) for p in destinations))
    return ExportResult(image=output, catalog=catalog_output, wcs_accuracy=accuracy)


def _catalog_hdulist(catalog_path, key_cards):
    """An `~astropy.io.fits.HDUList`: the key metadata in the primary header, then the table."""
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    _extend(primary.header, key_cards)
    return fits.HDUList([primary, catalog_table_hdu(catalog_path, extra_cards=key_cards)])


def _with_suffix(path, suffix):
    return path.with_suffix(suffix) if path.suffix else path.with_name(path.name + suffix)


def _check_output(output, inputs):
    """Refuse to write over an input, into a directory that does not exist, or onto a directory."""
    if output.is_dir():
        raise RomosaicInputError(f"{output}: is a directory, not a file to write")
    if not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise RomosaicInputError(f"{output}: directory {output.parent} does not exist")
    for path in inputs:
        if _same_file(path, output):
            raise RomosaicInputError(f"{output}: would overwrite the input {path}")


def _same_file(a, b):
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


# -- command line -----------------------------------------------------------------------------


def add_cli_parser(subparsers):
    """Add the ``export-fits`` sub-command to the ``romosaic`` command line.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        As returned by `argparse.ArgumentParser.add_subparsers`.

    Returns
    -------
    argparse.ArgumentParser
        The sub-command's parser.
    """
    parser = subparsers.add_parser(
        "export-fits",
        help="write a mosaic (and its catalog) as FITS",
        description="Write a mosaic as a multi-extension FITS file (SCI, ERR, WHT, EXPMAP, "
        "NINPUTS, CON) with a FITS WCS checked against the mosaic's own over the whole "
        "image, and optionally its catalog as a FITS table. Prints the files written.",
    )
    parser.add_argument("input", metavar="COADD.asdf", help="mosaic (MosaicModel) ASDF file")
    parser.add_argument("-o", "--output", metavar="OUT.fits",
                        help="FITS image to write (default: the input path with .fits "
                        "replacing .asdf)")
    parser.add_argument("--catalog", nargs="?", const=True, default=None, metavar="CAT.parquet",
                        help="also write the catalog as a FITS table beside the output, "
                        "named like it with .fits (default catalog: <product>_cat.parquet "
                        "beside the mosaic)")
    parser.add_argument("--max-wcs-error", type=_positive_float, default=DEFAULT_MAX_WCS_ERROR,
                        metavar="PIX",
                        help="largest allowed error of the FITS WCS anywhere on the image, "
                        f"in pixels (default: {DEFAULT_MAX_WCS_ERROR})")
    parser.set_defaults(run=_run)
    return parser


def _run(args):
    result = export_fits(args.input, args.output, catalog=args.catalog,
                         max_wcs_error=args.max_wcs_error)
    print(result.image)
    if result.catalog is not None:
        print(result.catalog)
    return 0


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
