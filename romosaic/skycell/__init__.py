"""The Roman sky tessellation: projection regions and skycells, offline.

`get_tessellation` returns the tessellation in use: computed from its formula
(`ComputedTessellation`), or read from the table that ``SKYMAP_PATH`` names
(`TableTessellation`). Both have the same interface (`Tessellation`).

Examples
--------
>>> from romosaic.skycell import get_tessellation
>>> cell = get_tessellation().skycell("270p65x70y49")
>>> round(cell.ra_center, 4), round(cell.dec_center, 4), cell.x_tangent, cell.y_tangent
(269.8193, 66.0686, 7299.5, -93500.5)
"""

import logging
import os
from functools import lru_cache
from pathlib import Path

from .tessellation import (
    ComputedTessellation,
    ProjectionRegion,
    Skycell,
    SkycellNotFoundError,
    Tessellation,
    looks_like_skycell_name,
    parse_skycell_name,
)

__all__ = [
    "SKYMAP_PATH_VARIABLE",
    "ComputedTessellation",
    "ProjectionRegion",
    "Skycell",
    "SkycellNotFoundError",
    "Tessellation",
    "get_tessellation",
    "looks_like_skycell_name",
    "parse_skycell_name",
    "skycells_for_image",
]

log = logging.getLogger(__name__)

#: Environment variable naming a skycells reference file to use instead of the formula.
SKYMAP_PATH_VARIABLE = "SKYMAP_PATH"


def get_tessellation():
    """The tessellation in use (see the module docstring)."""
    path = os.environ.get(SKYMAP_PATH_VARIABLE, "").strip()
    if path:
        if Path(path).is_file():
            return _table_tessellation(str(Path(path).resolve()))
        log.warning("%s=%s is not a file; computing the tessellation instead",
                    SKYMAP_PATH_VARIABLE, path)
    return _computed_tessellation()


@lru_cache(maxsize=1)
def _computed_tessellation():
    return ComputedTessellation()


@lru_cache(maxsize=4)
def _table_tessellation(path):
    from .table import TableTessellation

    return TableTessellation(path)


def skycells_for_image(wcs, shape, *, tessellation=None):
    """The skycells an image's footprint touches, distortion included.

    Parameters
    ----------
    wcs : gwcs.wcs.WCS
    shape : (int, int)
        Array shape ``(ny, nx)``.
    tessellation : Tessellation, optional
        Defaults to `get_tessellation`.

    Returns
    -------
    list of Skycell
    """
    from ..wcs_utils import footprint

    ra, dec = footprint(wcs, shape, points_per_edge=17)
    return (tessellation or get_tessellation()).skycells_touching(ra, dec)
