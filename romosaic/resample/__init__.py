"""Resampling (drizzling) Level-2 images onto a mosaic grid.

Modules, in the order data flows through them:

* `grid` — the output grid (free TAN grid, or a user's WCS file);
* `inputs` — what is needed from each input model, with pending sky removed;
* `weights` — per-pixel weights (``ivm``, ``ivm-sky``, ``exptime``);
* `pixmap` — input → output pixel mapping from a sparse exact WCS evaluation;
* `coadd` — the drizzle accumulation of data, variances, weight, context;
* `drizzle_images` — the loop tying them together;
* `mosaic_model` — the Level-3 ``MosaicModel`` and its metadata.
"""

from .coadd import CoaddResult, DrizzleCoadd, context_planes, exposure_time_map
from .drizzle_images import KERNELS, drizzle_images
from .grid import (
    OutputGrid,
    free_grid,
    grid_from_wcs_file,
    require_overlap,
    skycell_grid,
    skycell_grid_for_association,
)
from .inputs import ResampleInput, input_from_model
from .mosaic_model import build_mosaic_model, summarize_input
from .pixmap import compute_pixmap
from .weights import WEIGHT_TYPES, pixel_weights

__all__ = [
    "KERNELS",
    "WEIGHT_TYPES",
    "CoaddResult",
    "DrizzleCoadd",
    "OutputGrid",
    "ResampleInput",
    "build_mosaic_model",
    "compute_pixmap",
    "context_planes",
    "drizzle_images",
    "exposure_time_map",
    "free_grid",
    "grid_from_wcs_file",
    "input_from_model",
    "pixel_weights",
    "require_overlap",
    "skycell_grid",
    "skycell_grid_for_association",
    "summarize_input",
]
