"""The grid of a custom mosaic: which region, which rectangle, which name.

Plain functions on numbers and `~romosaic.skycell.ProjectionRegion` objects,
with no files involved:

* `footprint_centre` — the geometric centre of the inputs' footprints;
* `nearest_region` — the projection region whose tangent point is closest
  to it;
* `bounding_window` — the smallest rectangle of whole region pixels holding
  every input, clipped to the region's pixel grid, with the inputs that lose
  area to the clipping;
* `coarse_window` — the rectangle of 2 × 2 blocks of region pixels covering
  a fine window;
* `default_prefix` — the product name of a region,
  ``skycell-p<pppp>-ra<DDD>d<dddd>-dec<n|s><DD>d<dddd>``.
"""

import math
from dataclasses import dataclass

import numpy as np

from ..wcs_utils import sky_to_unit_vectors, unit_vectors_to_sky

__all__ = [
    "COARSE_BLOCK",
    "Window",
    "bounding_window",
    "coarse_window",
    "default_prefix",
    "footprint_centre",
    "nearest_region",
]

#: Region pixels per side of a pixel of the ``--coarse`` mosaic (0.11″).
COARSE_BLOCK = 2

# Footprint coordinates within this many pixels of a pixel edge count as on it:
# footprints are computed through WCS transforms good to ~1e-9 pixel.
_EDGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Window:
    """A rectangle of a region's pixel grid, in pixels of ``block`` region pixels.

    Attributes
    ----------
    x0, y0 : int
        First pixel (column, row) of the window.
    nx, ny : int
        Size in pixels.
    block : int
        Region pixels per window pixel along each axis.
    clipped : tuple of int
        Positions (in the input order) of the inputs that reach beyond the
        region's pixel grid and lose area to the clipping.
    """

    x0: int
    y0: int
    nx: int
    ny: int
    block: int = 1
    clipped: tuple = ()

    @property
    def shape(self):
        """``(ny, nx)``."""
        return (self.ny, self.nx)


def footprint_centre(footprints):
    """Geometric centre of a set of footprints on the sky.

    Parameters
    ----------
    footprints : list of (ra, dec) arrays
        Each input's footprint vertices in degrees (every input sampled
        alike, as `romosaic.wcs_utils.footprint` does).

    Returns
    -------
    (float, float)
        RA, Dec in degrees of the normalised mean of the vertices' unit
        vectors: the centre of the inputs' combined footprint, weighting
        inputs equally.

    Examples
    --------
    >>> ra, dec = footprint_centre([([359.0, 1.0], [0.0, 0.0])])
    >>> round(ra % 360.0, 9), round(dec, 9)
    (0.0, 0.0)
    """
    ra = np.concatenate([np.asarray(r, dtype=float).ravel() for r, _ in footprints])
    dec = np.concatenate([np.asarray(d, dtype=float).ravel() for _, d in footprints])
    centre = sky_to_unit_vectors(ra, dec).mean(axis=0)
    if not np.linalg.norm(centre) > 1e-12:
        raise ValueError("the footprints surround the sphere; they have no centre")
    ra0, dec0 = unit_vectors_to_sky(centre)
    return float(ra0[0]) % 360.0, float(dec0[0])


def nearest_region(regions, ra, dec):
    """The projection region whose tangent point is closest to a sky position.

    Parameters
    ----------
    regions : sequence of ProjectionRegion
        E.g. ``get_tessellation().regions`` (4058 of them).
    ra, dec : float
        Degrees.

    Returns
    -------
    ProjectionRegion
        Ties (a position exactly half-way) go to the lower region index.
    """
    tangent_ra = np.array([r.ra_tangent for r in regions], dtype=float)
    tangent_dec = np.array([r.dec_tangent for r in regions], dtype=float)
    # The largest dot product of unit vectors is the smallest angle.
    dots = sky_to_unit_vectors(tangent_ra, tangent_dec) @ sky_to_unit_vectors([ra], [dec])[0]
    return regions[int(np.argmax(dots))]


def bounding_window(region, pixel_footprints, *, block=1):
    """The smallest rectangle of whole region pixels holding every input.

    Parameters
    ----------
    region : ProjectionRegion
        Supplies the pixel grid size ``nx``, ``ny``.
    pixel_footprints : list of (x, y) arrays
        Each input's footprint vertices in region pixel coordinates (0-based,
        pixel ``i`` spanning ``i − ½ … i + ½``); NaN for vertices with no
        position on the region's plane.
    block : int, optional
        Build the window from blocks of ``block × block`` region pixels
        whose first pixels are multiples of ``block``.

    Returns
    -------
    Window
        Clipped to the region's pixel grid; ``clipped`` names the inputs that
        reach beyond it (including any with no position on the plane).

    Raises
    ------
    ValueError
        When no input has any area on the region's pixel grid.

    Examples
    --------
    A footprint from pixel edge 9.5 to 20.5 covers pixels 10 … 20:

    >>> from types import SimpleNamespace
    >>> region = SimpleNamespace(nx=100, ny=50)
    >>> w = bounding_window(region, [([9.5, 20.5], [-3.0, 4.2])])
    >>> (w.x0, w.nx, w.y0, w.ny, w.clipped)
    (10, 11, 0, 5, (0,))
    """
    block = int(block)
    lows_x, highs_x, lows_y, highs_y = [], [], [], []
    clipped = []
    for index, (x, y) in enumerate(pixel_footprints):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if x.size == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            clipped.append(index)
            continue
        x_low, x_high = _pixel_range(x.min(), x.max())
        y_low, y_high = _pixel_range(y.min(), y.max())
        if x_low < 0 or y_low < 0 or x_high > region.nx - 1 or y_high > region.ny - 1:
            clipped.append(index)
        x_low, x_high = max(x_low, 0), min(x_high, region.nx - 1)
        y_low, y_high = max(y_low, 0), min(y_high, region.ny - 1)
        if x_low > x_high or y_low > y_high:
            continue  # wholly off the grid: all its area is lost
        lows_x.append(x_low)
        highs_x.append(x_high)
        lows_y.append(y_low)
        highs_y.append(y_high)
    if not lows_x:
        raise ValueError("no input has any area on the projection region's pixel grid")
    x0, x1 = min(lows_x) // block, max(highs_x) // block
    y0, y1 = min(lows_y) // block, max(highs_y) // block
    return Window(x0=x0, y0=y0, nx=x1 - x0 + 1, ny=y1 - y0 + 1, block=block,
                  clipped=tuple(clipped))


def _pixel_range(low, high):
    """First and last pixel touched by the span ``low … high`` of pixel coordinates."""
    first = math.floor(low + 0.5 + _EDGE_TOLERANCE)
    last = math.ceil(high + 0.5 - _EDGE_TOLERANCE) - 1
    return first, max(first, last)


def coarse_window(window, *, block=COARSE_BLOCK):
    """The window of ``block × block`` region-pixel blocks covering a fine window.

    Blocks start at region pixels that are multiples of ``block``, so the
    coarse pixels of every custom mosaic of a region line up, and each one is
    exactly ``block × block`` fine pixels. The coarse window reaches at most
    ``block − 1`` fine pixels beyond the fine one on each side.

    Examples
    --------
    >>> w = coarse_window(Window(x0=11, y0=4, nx=10, ny=7))
    >>> (w.x0, w.nx, w.y0, w.ny, w.block)
    (5, 6, 2, 4, 2)
    """
    if window.block != 1:
        raise ValueError("coarse_window takes a window of region pixels (block=1)")
    x0, x1 = window.x0 // block, (window.x0 + window.nx - 1) // block
    y0, y1 = window.y0 // block, (window.y0 + window.ny - 1) // block
    return Window(x0=x0, y0=y0, nx=x1 - x0 + 1, ny=y1 - y0 + 1, block=block,
                  clipped=window.clipped)


def default_prefix(region):
    """The default product name of a region's custom mosaics.

    ``skycell-p<pppp>-ra<DDD>d<dddd>-dec<n|s><DD>d<dddd>``: the region index,
    then the tangent point's RA and absolute Dec with whole and decimal (4 digits)
    parts separated by ``d``, and ``n`` or ``s`` for the sign of Dec.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> default_prefix(SimpleNamespace(index=1974, ra_tangent=201.9512, dec_tangent=26.0012))
    'skycell-p1974-ra201d9512-decn26d0012'
    >>> default_prefix(SimpleNamespace(index=4057, ra_tangent=225.0, dec_tangent=-90.0))
    'skycell-p4057-ra225d0000-decs90d0000'
    """
    ra = _degrees_text(float(region.ra_tangent) % 360.0, 3)
    dec = float(region.dec_tangent)
    sign = "s" if dec < 0 else "n"
    return f"skycell-p{int(region.index):04d}-ra{ra}-dec{sign}{_degrees_text(abs(dec), 2)}"


def _degrees_text(value, whole_digits):
    # Round once, then split, so 26.99999 gives 27d0000 rather than 26d10000.
    units = round(value * 10_000)
    whole, fraction = divmod(units, 10_000)
    return f"{whole:0{whole_digits}d}d{fraction:04d}"
