"""Forced photometry: measuring one band inside another band's sources.

`forced_photometry` measures a mosaic (or Level-2 image) of one band inside
the segments found on another band's mosaic of the same grid (its
segmentation map, ``<product>_segm.asdf``), so that every source of the
detection band has a flux in this band — the basis of colours.

From the detection band it takes what its segmentation file holds: the
segment labels, and the smoothed detection image they were found on. The
positions, shapes and Kron apertures are measured on that detection image
(image moments inside each segment), so they are the same for every band
forced on it: the Kron and circular apertures of a source are identical in
all bands, and colours from them are colours of the same light.

On this band's image (background subtracted as in
`romosaic.catalog.make_source_catalog`, and its ``err`` completed by the
sky noise it leaves out, `romosaic.catalog.noise.sky_noise_ratio`) it
measures, with the usual uncertainties (`romosaic.catalog.measure`):

* segment, Kron and circular-aperture fluxes in those apertures, the local
  background, the half-light radius and ``is_extended``;
* the band's own centroid and shape inside each segment (the reference's
  ``forced_x_centroid``, ``forced_semimajor``, ...).

Those columns carry the ``forced_`` prefix; the detection band's geometry
keeps the usual names, as in the reference's ``ForcedMosaicSourceCatalog``.
A source whose segment has no data in this band keeps its row, with NaN
fluxes and the NO_COVERAGE bit (64) of ``forced_warning_flags``; one partly
covered has MASKED (4) set and fluxes from the pixels with data.
"""

import logging

import numpy as np
from photutils.segmentation import SegmentationImage, SourceCatalog

from ..errors import RomosaicInputError
from .background import estimate_background
from .columns import FORCED_PREFIX, aperture_column, forced_columns, make_forced_table
from .core import (
    APERTURE_RADII_ARCSEC,
    CatalogResult,
    _central_scale,
    _complete_noise,
    _versions,
    aperture_radii,
    apply_aperture_correction,
    correction_meta,
    error_meta,
)
from .flags import FORCED_FLAG_DESCRIPTIONS, NO_COVERAGE, coverage_flags
from .geometry import local_geometry
from .measure import (
    APERTURE_MASK_METHOD,
    KRON_PARAMS,
    _plain,
    measure_sources,
)

__all__ = ["forced_photometry", "grid_difference"]

log = logging.getLogger(__name__)

#: Columns of the band's own photometry (prefixed), cleared where a segment has no data.
_FLUX_LIKE = ("segment_flux", "segment_flux_err", "kron_flux", "kron_flux_err", "kron_abmag",
              "kron_abmag_err", "aper_bkg_flux", "aper_bkg_flux_err", "fluxfrac_radius_50")
#: The band's own shape inside the segment.
_OWN_SHAPE = ("x_centroid", "y_centroid", "ra", "dec", "semimajor", "semiminor",
              "ellipticity", "orientation_sky")


def forced_photometry(data, err, wcs, labels, detection_image, *, weight=None, coverage=None,
                      pixel_scale_arcsec=None, bkg_boxsize=1000, noise_correlation=None,
                      aperture_correction=None):
    """Measure an image inside another band's segments, at its positions and apertures.

    Parameters
    ----------
    data, err : numpy.ndarray
        This band's image and its uncertainty, MJy/sr; NaN where there is
        no data.
    wcs : gwcs.wcs.WCS
        The image's WCS (also the detection band's: the grids must match).
    labels : numpy.ndarray
        The detection band's segmentation map (0 = no source), ``data``'s shape.
    detection_image : numpy.ndarray
        The detection band's smoothed, background-subtracted image that
        ``labels`` was found on (``detection_image`` of its segmentation
        file); positions, shapes and Kron apertures are measured on it.
    weight : numpy.ndarray, optional
        This band's weight map (0 = no data; the noise follows it).
    coverage : numpy.ndarray, optional
        Number of inputs per pixel of this band (sets SINGLE_INPUT).
    pixel_scale_arcsec : float, optional
        Pixel size; measured from the WCS at the centre when None.
    bkg_boxsize : int
        Background box size in pixels, as for `make_source_catalog`.
    noise_correlation : romosaic.resample.noise_correlation.NoiseCorrelation, optional
        This band's drizzle noise correlation, for the uncertainties.
    aperture_correction : romosaic.catalog.ApertureCorrection, optional
        Encircled-energy fractions of this band's circular apertures.

    Returns
    -------
    CatalogResult
        ``table`` with one row per label of ``labels`` (the columns of
        `romosaic.catalog.columns.forced_columns`), ``segmentation`` the
        labels and ``detection_image`` the detection band's.

    Raises
    ------
    romosaic.errors.RomosaicInputError
        When the arrays' shapes differ.
    """
    data = np.asarray(data)
    err = np.asarray(err)
    labels = np.asarray(labels)
    detection_image = np.asarray(detection_image, dtype=np.float32)
    for name, array in (("err", err), ("segmentation map", labels),
                        ("detection image", detection_image), ("weight", weight),
                        ("coverage", coverage)):
        if array is not None and np.shape(array) != data.shape:
            raise RomosaicInputError(
                f"the {name} has shape {np.shape(array)}, the image {data.shape}")
    if pixel_scale_arcsec is None:
        pixel_scale_arcsec = _central_scale(wcs, data.shape)
    meta = _forced_meta(bkg_boxsize, pixel_scale_arcsec, aperture_correction)
    notes = []
    no_data = ~np.isfinite(data) | ~np.isfinite(err)
    if weight is not None:
        no_data |= ~(np.asarray(weight) > 0)
    segmentation = SegmentationImage(labels.astype(np.int64, copy=False))
    n_sources = segmentation.n_labels if np.any(labels) else 0
    if n_sources == 0:
        return _result(_empty_values(), meta, notes, labels, detection_image,
                       "the segmentation map has no sources")

    background = estimate_background(data, no_data, bkg_boxsize, weight=weight)
    if background is None:
        # Nothing to measure: every source keeps its row, without fluxes.
        notes.append("the image has no usable pixels: every source is flagged NO_COVERAGE")
        log.warning("forced photometry: %s", notes[-1])
        no_data = np.ones(data.shape, bool)
        subtracted = np.zeros(data.shape, np.float32)
        error = np.ones(data.shape, np.float32)
    else:
        meta.update({"background_method": background.method,
                     "background_box_size": list(background.box_size),
                     "background_median": background.median_background,
                     "background_rms_median": background.median_rms})
        notes.extend(background.notes)
        subtracted = np.subtract(data, background.background, dtype=np.float32)
        subtracted[no_data] = 0.0
        error = np.where(no_data, 0.0, err).astype(np.float32)
        background.background = background.rms = None
        # The same completion as the detection band's catalog: this band's
        # err leaves out its inputs' flat-field noise just the same.
        _complete_noise(subtracted, error, no_data, labels, meta)

    detection = SourceCatalog(detection_image, segmentation, kron_params=KRON_PARAMS,
                              aperture_mask_method=APERTURE_MASK_METHOD, progress_bar=False)
    correlation = None if noise_correlation is None else noise_correlation.correlation
    measured = measure_sources(
        subtracted, segmentation, error, no_data, wcs,
        aperture_radii_arcsec=APERTURE_RADII_ARCSEC, pixel_scale_arcsec=pixel_scale_arcsec,
        correlation=correlation, detection_catalog=detection)
    band = measured.values
    if coverage is not None:
        band["warning_flags"] = band["warning_flags"] | coverage_flags(
            band["x_centroid"], band["y_centroid"], np.asarray(coverage))
    own = _own_shapes(subtracted, segmentation, error, no_data, wcs, band)
    # A segment without a single pixel of data in this band has no flux here.
    has_data = np.bincount(labels[~no_data].ravel(), minlength=int(labels.max()) + 1) > 0
    uncovered = ~has_data[band["label"]]
    band["warning_flags"] = band["warning_flags"] | np.where(uncovered, NO_COVERAGE, 0)
    for name in (*_FLUX_LIKE, *_aperture_names()):
        band[name] = np.where(uncovered, np.nan, band[name])
    for name in _OWN_SHAPE:
        own[name] = np.where(uncovered, np.nan, own[name])
    if np.any(uncovered):
        notes.append(f"{int(uncovered.sum())} of {uncovered.size} sources have no data in "
                     "this image (forced_warning_flags 64, fluxes NaN)")
        log.warning("forced photometry: %s", notes[-1])
    meta["sources_without_data"] = int(uncovered.sum())
    if background is not None:
        error_meta(meta, measured, noise_correlation, notes)
    meta["stellar_locus_concentration"] = measured.stellar_locus

    values = {}
    for name in forced_columns(APERTURE_RADII_ARCSEC):
        if name.startswith(FORCED_PREFIX):
            base = name[len(FORCED_PREFIX):]
            values[name] = own[base] if base in _OWN_SHAPE else band[base]
        else:
            values[name] = band[name]
    apply_aperture_correction(values, aperture_correction, prefix=FORCED_PREFIX)
    log.info("forced catalog: %d sources, %d without data", uncovered.size,
             int(uncovered.sum()))
    return _result(values, meta, notes, labels, detection_image)


def _aperture_names():
    names = []
    for radius in APERTURE_RADII_ARCSEC:
        name = aperture_column(radius)
        names.extend([name, f"{name}_err"])
    return names


def _own_shapes(data, segmentation, error, no_data, wcs, band):
    """This band's centroid and moment shape inside each segment (``forced_x_centroid``...)."""
    own = SourceCatalog(data, segmentation, error=error, mask=no_data, progress_bar=False)
    x, y = _plain(own.x_centroid), _plain(own.y_centroid)
    # Units and angles at the detection position, which is always defined.
    geometry = local_geometry(wcs, band["x_centroid"], band["y_centroid"])
    scale = geometry.pixel_scale_arcsec
    ra, dec = wcs(x, y, with_bounding_box=False)
    orientation = _plain(own.orientation) % 180.0
    return {
        "x_centroid": x, "y_centroid": y,
        "ra": np.asarray(ra, dtype=float) % 360.0, "dec": np.asarray(dec, dtype=float),
        "semimajor": _plain(own.semimajor_axis) * scale,
        "semiminor": _plain(own.semiminor_axis) * scale,
        "ellipticity": _plain(own.ellipticity),
        "orientation_sky": geometry.position_angle(orientation),
    }


def _forced_meta(bkg_boxsize, pixel_scale_arcsec, correction):
    from .. import __version__

    meta = {
        "software": f"romosaic {__version__}",
        "forced_photometry": ("fluxes (forced_ columns) measured on this image inside the "
                              "segments, at the positions and in the Kron and circular "
                              "apertures measured on the detection image of the "
                              "forced_segmentation file"),
        "bkg_boxsize": int(bkg_boxsize),
        "versions": _versions(),
        "aperture_mask_method": APERTURE_MASK_METHOD,
        "kron_params": [float(p) for p in KRON_PARAMS],
        "flux_unit": "nJy",
        "flags": dict(FORCED_FLAG_DESCRIPTIONS),
        "pixel_scale_arcsec": float(pixel_scale_arcsec),
        "aperture_radii": aperture_radii(pixel_scale_arcsec),
        "fit_psf": False,
        "psf_photometry": "not performed in forced photometry",
    }
    meta.update(correction_meta(correction))
    return meta


def _empty_values():
    return {name: np.zeros(0) for name in forced_columns(APERTURE_RADII_ARCSEC)}


def _result(values, meta, notes, labels, detection_image, empty_reason=None):
    if empty_reason is not None:
        log.warning("empty forced catalog: %s", empty_reason)
        notes.append(f"empty catalog: {empty_reason}")
    meta["notes"] = list(notes)
    return CatalogResult(
        table=make_forced_table(values, APERTURE_RADII_ARCSEC, meta=meta),
        segmentation=np.asarray(labels, dtype=np.uint32),
        detection_image=np.asarray(detection_image, dtype=np.float32),
        notes=notes,
    )


#: wcsinfo entries that describe where the pixels are, not how they were named.
_DERIVED_WCSINFO = ("s_region", "ra", "dec", "pixel_scale_ref", "orientation_ref")


def grid_difference(shape, wcsinfo, other_shape, other_wcsinfo):
    """How two grids differ, from their shapes and ``meta.wcsinfo``; None when they match.

    Parameters
    ----------
    shape, other_shape : tuple of int
        The arrays' shapes.
    wcsinfo, other_wcsinfo : mapping or None
        Each product's ``meta.wcsinfo``. Numbers present in both must agree
        to 1e-7 (degrees or pixels: well below a thousandth of a pixel),
        names (``projection``, ``skycell_name``) exactly; None, ``"?"`` and
        the schema's -999999 placeholders are not compared.

    Returns
    -------
    str or None

    Examples
    --------
    >>> grid_difference((10, 10), {"ra_ref": 80.0}, (10, 12), {"ra_ref": 80.0})
    'shape (10, 12) instead of (10, 10)'
    >>> grid_difference((10, 10), {"ra_ref": 80.0}, (10, 10), {"ra_ref": 80.1})
    'wcsinfo.ra_ref 80.1 instead of 80.0'
    >>> grid_difference((10, 10), {"ra_ref": 80.0}, (10, 10), {"ra_ref": 80.0}) is None
    True
    """
    if tuple(other_shape) != tuple(shape):
        return f"shape {tuple(other_shape)} instead of {tuple(shape)}"
    wcsinfo, other_wcsinfo = dict(wcsinfo or {}), dict(other_wcsinfo or {})
    for key in sorted(set(wcsinfo) & set(other_wcsinfo)):
        if key in _DERIVED_WCSINFO:
            continue
        mine, theirs = wcsinfo[key], other_wcsinfo[key]
        if _placeholder(mine) or _placeholder(theirs):
            continue
        if isinstance(mine, str) or isinstance(theirs, str):
            same = str(mine) == str(theirs)
        else:
            try:
                a = np.asarray(mine, dtype=float)
                b = np.asarray(theirs, dtype=float)
            except (TypeError, ValueError):
                continue
            same = a.shape == b.shape and bool(np.all(np.isclose(a, b, rtol=1e-9,
                                                                 atol=1e-7)))
        if not same:
            return f"wcsinfo.{key} {theirs} instead of {mine}"
    return None


def _placeholder(value):
    if value is None:
        return True
    if isinstance(value, str):
        return value in ("?", "")
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return True
    return array.size == 0 or bool(np.all(array == -999999))
