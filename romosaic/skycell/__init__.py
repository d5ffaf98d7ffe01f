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
    "find_skycells_near",
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


def find_skycells_near(ra, dec, *, radius_arcsec=0.0, tessellation=None):
    """The skycells that hold a sky position, or come within a radius of it.

    Parameters
    ----------
    ra, dec : float
        Degrees.
    radius_arcsec : float, optional
        Also list cells whose grid comes within this many arcsec.
    tessellation : Tessellation, optional
        Defaults to `get_tessellation`.

    Returns
    -------
    list of (Skycell, (float, float), bool)
        Each cell, the position's pixel ``(x, y)`` on its grid, and whether
        the position lies on the grid; cells holding it first, then by name.

    Examples
    --------
    >>> cell, (x, y), inside = find_skycells_near(269.8193, 66.0686)[0]
    >>> cell.name, inside
    ('270p65x70y49', True)
    """
    import numpy as np

    # A small circle round the position: a polygon the tessellation can test.
    radius = max(float(radius_arcsec), 0.01) / 3600.0
    angle = np.linspace(0.0, 2.0 * np.pi, 33)[:-1]
    dec_ring = np.clip(dec + radius * np.sin(angle), -90.0, 90.0)
    ra_ring = ra + radius * np.cos(angle) / max(np.cos(np.radians(dec)), 1e-6)
    found = []
    for cell in (tessellation or get_tessellation()).skycells_touching(ra_ring, dec_ring):
        x, y = cell.wcs.invert(ra, dec, with_bounding_box=False)
        x, y = float(x), float(y)
        ny, nx = cell.shape
        inside = -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5
        found.append((cell, (x, y), inside))
    return sorted(found, key=lambda item: (not item[2], item[0].name))

