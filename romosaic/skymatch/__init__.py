"""Sky matching: one sky level per image, equal where exposures overlap.

The algorithm, on arrays and WCS objects only (the ``skymatch`` step in
`romosaic.steps.skymatch_step` wraps it):

1. `cell_grid` lays a coarse TAN grid of cells (`DEFAULT_CELL_SIZE` input
   pixels wide) over all the images.
2. `measure_image_sky`, once per image, measures the clipped sky statistic
   over all good pixels (the image's "local" sky) and in every cell
   (`romosaic.skymatch.statistics`).
3. `match_sky` forms sky differences between overlapping images from the
   cells both fill (`pair_differences`), solves for one offset per image by
   weighted least squares (`solve_offsets`) and turns offsets and local
   skies into levels for the chosen method. Optionally the images of one
   exposure share one offset (their cells combined by `combine_group_cells`).

Only step 2 touches pixels, one image at a time; the rest works on tables
of a few numbers per cell.
"""

from .cells import DEFAULT_CELL_SIZE, ImageSky, SkyCells, cell_grid, measure_image_sky
from .matching import (
    SKY_METHODS,
    PairDifferences,
    SkyMatchResult,
    combine_group_cells,
    match_sky,
    pair_differences,
    solve_offsets,
)
from .statistics import (
    SKY_STATISTICS,
    GroupedSky,
    SkyStatisticsParameters,
    grouped_sky_statistics,
)

__all__ = [
    "DEFAULT_CELL_SIZE",
    "SKY_METHODS",
    "SKY_STATISTICS",
    "GroupedSky",
    "ImageSky",
    "PairDifferences",
    "SkyCells",
    "SkyMatchResult",
    "SkyStatisticsParameters",
    "cell_grid",
    "combine_group_cells",
    "grouped_sky_statistics",
    "match_sky",
    "measure_image_sky",
    "pair_differences",
    "solve_offsets",
]
