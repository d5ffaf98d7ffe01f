"""Alignment: corrections to the images' WCS so that their sources coincide on the sky.

The algorithm, on arrays, gwcs objects and tables only (the ``tweakreg`` step
in `romosaic.steps.tweakreg_step` wraps it):

1. Source positions per image: `read_image_catalog` reads a Level-2
   catalog file; `detect_sources` finds compact bright sources in the pixels.
2. `read_reference_catalog` reads an absolute reference catalogue file
   (ECSV, Parquet or FITS with RA/Dec columns).
3. `align_images` matches and fits with tweakwcs, first the exposure groups
   to each other, then the aligned block to the reference catalogue, and
   returns corrected WCSs and a record of every fit.
4. `SkyTangentCorrector` / `apply_tangent_correction`: the correction,
   appended on the sky side of any gwcs (`romosaic.align.corrector`).
"""

from .corrector import (
    CORRECTION_NAME,
    SkyTangentCorrector,
    apply_tangent_correction,
    corrected_wcsinfo,
    correction_between,
    find_tangent_correction,
    sky_to_tangent,
    tangent_to_sky,
)
from .refcat import read_reference_catalog
from .solve import (
    FIT_GEOMETRIES,
    AlignImage,
    AlignmentResult,
    MatchParameters,
    align_images,
    field_tangent_point,
    select_field,
)
from .sources import DEFAULT_MAX_SOURCES, DEFAULT_SNR, detect_sources, read_image_catalog

__all__ = [
    "CORRECTION_NAME",
    "DEFAULT_MAX_SOURCES",
    "DEFAULT_SNR",
    "FIT_GEOMETRIES",
    "AlignImage",
    "AlignmentResult",
    "MatchParameters",
    "SkyTangentCorrector",
    "align_images",
    "apply_tangent_correction",
    "corrected_wcsinfo",
    "correction_between",
    "detect_sources",
    "field_tangent_point",
    "find_tangent_correction",
    "read_image_catalog",
    "read_reference_catalog",
    "select_field",
    "sky_to_tangent",
    "tangent_to_sky",
]
