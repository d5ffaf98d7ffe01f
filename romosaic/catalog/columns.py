"""The catalog table: column names, order, dtypes, units and descriptions.

Names, dtypes and units follow the ``MosaicSourceCatalogModel`` schema of
the installed roman_datamodels (read through its ``get_column_definition``),
so the table validates and its Parquet file carries the schema's units. A
few descriptions are made more precise where romosaic defines the quantity.
"""

import functools

import numpy as np
from astropy.table import Column, Table

__all__ = [
    "FORCED_PREFIX",
    "aperture_column",
    "catalog_columns",
    "empty_table",
    "forced_columns",
    "make_forced_table",
    "make_table",
]

#: Columns before the aperture photometry, in output order.
_LEADING = (
    "label", "flagged_spatial_id",
    "x_centroid", "y_centroid", "x_centroid_err", "y_centroid_err",
    "x_centroid_win", "y_centroid_win", "x_centroid_win_err", "y_centroid_win_err",
    "ra", "dec", "ra_centroid", "dec_centroid", "ra_centroid_err", "dec_centroid_err",
    "ra_centroid_win", "dec_centroid_win", "ra_centroid_win_err", "dec_centroid_win_err",
    "bbox_xmin", "bbox_xmax", "bbox_ymin", "bbox_ymax",
    "segment_area", "semimajor", "semiminor", "ellipticity", "orientation_pix",
    "orientation_sky", "cxx", "cxy", "cyy", "fwhm", "kron_radius", "fluxfrac_radius_50",
    "segment_flux", "segment_flux_err", "kron_flux", "kron_flux_err",
    "kron_abmag", "kron_abmag_err",
)
#: Columns after the aperture photometry, in output order.
_TRAILING = (
    "aper_bkg_flux", "aper_bkg_flux_err", "is_extended", "nn_label", "nn_distance",
    "roundness1", "sharpness", "dust_ebv", "warning_flags", "image_flags",
)

#: Forced photometry: columns of the detection band's geometry, as the
#: ForcedMosaicSourceCatalog schema names them (no prefix).
_FORCED_GEOMETRY = (
    *_LEADING[:_LEADING.index("fluxfrac_radius_50")], "nn_label", "nn_distance",
)
#: Forced photometry: this band's own positions and shapes inside the
#: detection band's segments, and its photometry (with the prefix).
_FORCED_OWN_SHAPE = (
    "x_centroid", "y_centroid", "ra", "dec", "semimajor", "semiminor", "ellipticity",
    "orientation_sky",
)
_FORCED_LEADING_FLUX = (
    "segment_flux", "segment_flux_err", "kron_flux", "kron_flux_err",
    "kron_abmag", "kron_abmag_err",
)
_FORCED_TRAILING = (
    "aper_bkg_flux", "aper_bkg_flux_err", "fluxfrac_radius_50", "is_extended", "roundness1",
    "sharpness", "warning_flags",
)
#: Prefix of the columns measured on the forced band.
FORCED_PREFIX = "forced_"

#: PSF-fit columns (``fit_psf``) and the column each group follows.
_PSF_PLACES = (
    ("y_centroid_win_err", ("x_psf", "x_psf_err", "y_psf", "y_psf_err")),
    ("dec_centroid_win_err", ("ra_psf", "dec_psf", "ra_psf_err", "dec_psf_err")),
    ("image_flags", ("psf_flags", "psf_gof")),
)
#: PSF fluxes follow the aperture fluxes.
_PSF_FLUX = ("psf_flux", "psf_flux_err")

_DESCRIPTIONS = {
    "flagged_spatial_id": "Spatial bit-field identifier; -1: not computed by romosaic",
    "ra": "Best estimate of the right ascension (ICRS): the windowed centroid for "
          "extended sources, the moment centroid for point sources",
    "dec": "Best estimate of the declination (ICRS): the windowed centroid for "
           "extended sources, the moment centroid for point sources",
    "x_centroid": "Column of the source centroid from the image moments of its segment in "
                  "the background-subtracted mosaic (0 indexed)",
    "y_centroid": "Row of the source centroid from the image moments of its segment in the "
                  "background-subtracted mosaic (0 indexed)",
    "x_centroid_err": "Uncertainty of x_centroid (formal error from the err array times the "
                      "empty-aperture noise factor)",
    "y_centroid_err": "Uncertainty of y_centroid (formal error from the err array times the "
                      "empty-aperture noise factor)",
    "x_centroid_win": "Column of the windowed (Gaussian-weighted, iterated) centroid "
                      "(0 indexed)",
    "y_centroid_win": "Row of the windowed (Gaussian-weighted, iterated) centroid (0 indexed)",
    "ellipticity": "1 - semiminor / semimajor",
    "orientation_pix": "Angle from the +x axis, counter-clockwise, to the major axis, "
                       "in [0, 180)",
    "orientation_sky": "Position angle of the major axis, east of north at the source, "
                       "in [0, 180)",
    "kron_flux_err": "Uncertainty of kron_flux",
    "kron_radius": "Unscaled first-moment (Kron) radius, circularized: "
                   "r_k * sqrt(semimajor * semiminor)",
    "aper_bkg_flux": "Sigma-clipped median of the background-subtracted image in a "
                     "2.4-2.8 arcsec annulus (residual local background; not subtracted)",
    "aper_bkg_flux_err": "Uncertainty of aper_bkg_flux",
    "is_extended": "Concentration F(0.4\")/F(0.2\") above 1.2 times the stellar locus "
                   "and 3 sigma above it",
    "nn_label": "Label of the nearest other source; 0 when there is none",
    "nn_distance": "Distance to the nearest other source; NaN when there is none",
    "roundness1": "DAOFind roundness1; not measured by romosaic (NaN)",
    "sharpness": "DAOFind sharpness; not measured by romosaic (NaN)",
    "dust_ebv": "Dust reddening E(B-V); not available offline (NaN)",
    "warning_flags": "Warning bit flags (0 = good): 1 centroid without data, 2 edge, "
                     "4 pixels without data, 8 deblended, 16 neighbour in aperture",
    "image_flags": "1 if an aperture of the source contains pixels without data, else 0",
    "psf_flux": "Flux of the fitted PSF model (its total if the model holds the whole PSF)",
    "psf_flux_err": "Uncertainty of psf_flux, including the drizzle's noise correlation",
    "ra_psf_err": "Uncertainty of ra_psf (east, arcsec)",
    "dec_psf_err": "Uncertainty of dec_psf (north, arcsec)",
    "psf_gof": "Reduced chi-square of the PSF fit (pixels taken as independent)",
    "psf_flags": "PSF fitting bit flags (0 = good); meanings in the psf_flags metadata",
}


def aperture_column(radius_arcsec):
    """``aperNN_flux`` with NN the radius in tenths of an arcsecond (0.4″ → ``aper04``)."""
    return f"aper{int(round(radius_arcsec * 10)):02d}_flux"


def catalog_columns(radii_arcsec, *, psf=False):
    """All column names in output order (with ``psf``, the PSF-fit columns, placed as the
    reference places them)."""
    aperture = []
    for radius in radii_arcsec:
        name = aperture_column(radius)
        aperture.extend([name, f"{name}_err"])
    if not psf:
        return [*_LEADING, *aperture, *_TRAILING]
    leading = list(_LEADING)
    for after, names in _PSF_PLACES[:2]:
        position = leading.index(after) + 1
        leading[position:position] = names
    after, names = _PSF_PLACES[2]
    trailing = list(_TRAILING)
    position = trailing.index(after) + 1
    trailing[position:position] = names
    return [*leading, *aperture, *_PSF_FLUX, *trailing]


def forced_columns(radii_arcsec):
    """All column names of a forced-photometry catalog, in output order.

    The detection band's geometry keeps the usual names; what is measured on
    the forced band carries `FORCED_PREFIX`, as in the reference's forced
    catalogs.
    """
    band = [*_FORCED_OWN_SHAPE, *_FORCED_LEADING_FLUX]
    for radius in radii_arcsec:
        name = aperture_column(radius)
        band.extend([name, f"{name}_err"])
    band.extend(_FORCED_TRAILING)
    return [*_FORCED_GEOMETRY, *(FORCED_PREFIX + name for name in band), "image_flags"]


def make_forced_table(values, radii_arcsec, meta=None):
    """An astropy Table of a forced catalog's columns, cast to the forced schema's dtypes.

    Parameters
    ----------
    values : dict
        Column name → array for every column of `forced_columns`.
    radii_arcsec : sequence of float
        Aperture radii (they name the aperture columns).
    meta : dict, optional
        Table metadata.

    Returns
    -------
    astropy.table.Table
    """
    columns = []
    for name in forced_columns(radii_arcsec):
        dtype, unit, description = _forced_definition(name)
        data = np.asarray(values[name]).astype(dtype)
        columns.append(Column(data, name=name, unit=unit, description=description))
    return Table(columns, meta=dict(meta or {}))


@functools.cache
def _forced_definition(name):
    """(dtype, unit, description) of a forced catalog's column."""
    import roman_datamodels.datamodels as rdm

    definition = rdm.ForcedMosaicSourceCatalogModel.create_minimal().get_column_definition(name)
    if definition is None:
        raise KeyError(f"column {name} is not defined by the ForcedMosaicSourceCatalog schema")
    dtype = np.dtype(definition["datatype"])
    unit = definition["unit"]
    unit = None if unit in (None, "none", "") else unit
    if name.startswith(FORCED_PREFIX):
        base = name[len(FORCED_PREFIX):]
        description = (f"{_DESCRIPTIONS.get(base, definition['description'])}; measured on "
                       "this mosaic")
        if base in _FORCED_OWN_SHAPE:
            description += " inside the detection band's segment"
        if base == "warning_flags":
            description += "; 64: no data in the segment"
    else:
        description = _DESCRIPTIONS.get(name, definition["description"])
        if name not in ("label", "flagged_spatial_id", "image_flags"):
            description += ("; of the detection band, measured on its detection image "
                            "(forced_segmentation)")
    return dtype, unit, description


@functools.cache
def _definition(name):
    """(dtype, unit, description) of a column from the installed schema."""
    definition = _catalog_prototype().get_column_definition(name)
    if definition is None:
        raise KeyError(f"column {name} is not defined by the MosaicSourceCatalog schema")
    dtype = np.dtype(definition["datatype"])
    unit = definition["unit"]
    unit = None if unit in (None, "none", "") else unit
    description = _DESCRIPTIONS.get(name, definition["description"])
    return dtype, unit, description


@functools.cache
def _catalog_prototype():
    import roman_datamodels.datamodels as rdm

    return rdm.MosaicSourceCatalogModel.create_minimal()


def make_table(values, radii_arcsec, meta=None, *, psf=False):
    """An astropy Table of the catalog columns, cast to the schema's dtypes.

    Parameters
    ----------
    values : dict
        Column name → array (one entry per source). Every column of
        `catalog_columns` must be present.
    radii_arcsec : sequence of float
        Aperture radii (they name the aperture columns).
    meta : dict, optional
        Table metadata.
    psf : bool
        Include the PSF-fit columns.

    Returns
    -------
    astropy.table.Table
    """
    columns = []
    for name in catalog_columns(radii_arcsec, psf=psf):
        dtype, unit, description = _definition(name)
        data = np.asarray(values[name]).astype(dtype)
        columns.append(Column(data, name=name, unit=unit, description=description))
    return Table(columns, meta=dict(meta or {}))


def empty_table(radii_arcsec, meta=None, *, psf=False):
    """A catalog table with every column and no rows."""
    values = {}
    for name in catalog_columns(radii_arcsec, psf=psf):
        dtype, _, _ = _definition(name)
        values[name] = np.zeros(0, dtype=dtype)
    return make_table(values, radii_arcsec, meta=meta, psf=psf)
