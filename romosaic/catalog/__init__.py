"""Source detection and measurement on a mosaic: the catalog and segmentation map.

Modules, in the order data flows through them:

* `background` — background level and per-pixel noise (photutils Background2D,
  noise following the weight map);
* `detection` — Gaussian smoothing, thresholding, optional deblending,
  rejection of cosmic rays where a single input covers the mosaic;
* `measure` — positions, shapes, photometry in nJy, local background,
  neighbours, flags (`flags`) and ``is_extended`` (`classify`), with sky units
  from the WCS at each source (`geometry`);
* `apcorr` — optional user encircled-energy corrections;
* `psf` — PSF-fit photometry with a user's PSF file or an empirical PSF;
* `forced` — forced photometry inside another band's segments
  (``forced_segmentation``);
* `columns` — the table's columns as the MosaicSourceCatalog schema defines them;
* `core` — `make_source_catalog`, tying them together;
* `products` — the ``MosaicSourceCatalogModel`` and ``MosaicSegmentationMapModel``.

Nothing here reads reference files or contacts a network service.
"""

from .apcorr import ApertureCorrection, read_aperture_corrections
from .background import BackgroundEstimate, box_tiling, estimate_background
from .classify import classify_extended, half_sample_mode
from .columns import aperture_column, catalog_columns, empty_table
from .core import (
    APERTURE_RADII_ARCSEC,
    CatalogResult,
    check_catalog_parameters,
    make_source_catalog,
)
from .detection import (
    convolve_gaussian,
    coverage_from_context,
    find_sources,
    gaussian_kernel_1d,
)
from .forced import forced_photometry, grid_difference
from .geometry import LocalGeometry, local_geometry
from .measure import abmag, measure_sources
from .products import catalog_model, product_stem, segmentation_model
from .psf import PSFModel, build_empirical_psf, fit_psf_photometry, read_psf_file, write_psf_file

__all__ = [
    "APERTURE_RADII_ARCSEC",
    "ApertureCorrection",
    "BackgroundEstimate",
    "CatalogResult",
    "LocalGeometry",
    "PSFModel",
    "abmag",
    "aperture_column",
    "box_tiling",
    "build_empirical_psf",
    "catalog_columns",
    "catalog_model",
    "check_catalog_parameters",
    "classify_extended",
    "convolve_gaussian",
    "coverage_from_context",
    "empty_table",
    "estimate_background",
    "find_sources",
    "fit_psf_photometry",
    "forced_photometry",
    "gaussian_kernel_1d",
    "grid_difference",
    "half_sample_mode",
    "local_geometry",
    "make_source_catalog",
    "measure_sources",
    "product_stem",
    "read_aperture_corrections",
    "read_psf_file",
    "segmentation_model",
    "write_psf_file",
]
