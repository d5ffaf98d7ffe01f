"""The Roman sky tessellation: projection regions and their skycells.

Two sources give the same `Tessellation` interface:

* `ComputedTessellation` (the default) evaluates the tessellation's formula
  (REFERENCE §5), lazily: a region's skycells are computed the first time
  they are needed (about 10 ms) and cached;
* `TableTessellation` reads a skycells reference file (the reference
  pipeline's 8-million-row table) when ``SKYMAP_PATH`` names one.

Both answer: which region holds a sky position, which skycell has a name,
and which skycells touch a footprint. The footprint search never scans the
sky: candidate regions come from the footprint's declination and right
ascension ranges, candidate rows and columns from projecting the footprint
onto each candidate region's plane.
"""

import math
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

from ..errors import RomosaicInputError
from .geometry import (
    NSIDE,
    PIXEL_SCALE_ARCSEC,
    ring_centres,
    ring_edges,
    tan_deproject,
    tan_project,
)

__all__ = [
    "SKYCELL_BORDER",
    "SKYCELL_SIZE",
    "SKYCELL_SPACING",
    "ComputedTessellation",
    "ProjectionRegion",
    "RegionCells",
    "Skycell",
    "SkycellNotFoundError",
    "Tessellation",
    "parse_skycell_name",
]

#: Skycell side in pixels.
SKYCELL_SIZE = 5000
#: Distance between neighbouring skycell centres, pixels.
SKYCELL_SPACING = 4800
#: Overlap border on each side of a skycell, pixels.
SKYCELL_BORDER = (SKYCELL_SIZE - SKYCELL_SPACING) // 2
#: Candidate rows and columns of skycells in a region: -35 … 35.
CANDIDATE_HALF_WIDTH = 35

_SCALE_DEG = PIXEL_SCALE_ARCSEC / 3600.0
_NAME_PATTERN = re.compile(r"^(\d{3})([mp])(\d{2})x(\d{2})y(\d{2})$")


class SkycellNotFoundError(RomosaicInputError):
    """A skycell name that does not exist in the tessellation."""


def parse_skycell_name(name):
    """Split a skycell name into its region prefix, row and column.

    Parameters
    ----------
    name : str
        E.g. ``"270p65x70y49"``: region tangent RA 270°, Dec +65°, row
        70 − 50 = 20, column 49 − 50 = −1 (``x`` encodes the row).

    Returns
    -------
    tuple or None
        ``(prefix, row, col)``, or None if ``name`` does not have the form.
    """
    match = _NAME_PATTERN.match(str(name).strip())
    if not match:
        return None
    ra, sign, dec, x, y = match.groups()
    return f"{ra}{sign}{dec}", int(x) - 50, int(y) - 50


def looks_like_skycell_name(name):
    """Whether ``name`` has the form of a skycell name."""
    return parse_skycell_name(name) is not None


@dataclass(frozen=True)
class ProjectionRegion:
    """One projection region: a TAN pixel grid around a tangent point.

    Attributes
    ----------
    index : int
        0 (north cap) … 4057 (south cap).
    ra_tangent, dec_tangent : float
        Tangent point, degrees.
    ra_min, ra_max : float
        Right-ascension span; for the first region of a ring, which straddles
        0°, ``ra_min > ra_max`` (e.g. 337.5 … 22.5).
    dec_min, dec_max : float
        Declination span.
    nx, ny : int
        Size of the region's pixel grid.
    skycell_start, skycell_end : int or None
        Global index range of the region's skycells (filled on demand).
    """

    index: int
    ra_tangent: float
    dec_tangent: float
    ra_min: float
    ra_max: float
    dec_min: float
    dec_max: float
    nx: int
    ny: int
    ring: int
    ring_size: int
    orientat: float = 0.0

    @property
    def x_tangent(self):
        """0-based pixel x of the tangent point."""
        return (self.nx - 1) / 2.0

    @property
    def y_tangent(self):
        """0-based pixel y of the tangent point."""
        return (self.ny - 1) / 2.0

    @property
    def is_cap(self):
        return self.ring_size == 1

    @property
    def name_prefix(self):
        """The first seven characters of its skycells' names, e.g. ``270p65``."""
        sign = "m" if self.dec_tangent < 0 else "p"
        # Python's round() rounds half to even, as the published names do.
        return f"{round(self.ra_tangent):03d}{sign}{round(abs(self.dec_tangent)):02d}"

    def pixel_to_sky(self, x, y):
        """RA, Dec (degrees) of region pixels."""
        xi = (np.asarray(x, dtype=float) - self.x_tangent) * _SCALE_DEG
        eta = (np.asarray(y, dtype=float) - self.y_tangent) * _SCALE_DEG
        return tan_deproject(xi, eta, self.ra_tangent, self.dec_tangent)

    def sky_to_pixel(self, ra, dec):
        """Region pixels of sky positions (NaN more than 90° from the tangent point)."""
        xi, eta = tan_project(ra, dec, self.ra_tangent, self.dec_tangent)
        return xi / _SCALE_DEG + self.x_tangent, eta / _SCALE_DEG + self.y_tangent

    def wcs(self):
        """The region's full pixel grid as a gwcs (shape ``(ny, nx)``)."""
        from ..wcs_utils import affine_tan_wcs  # gwcs is slow to import; only when needed

        return affine_tan_wcs(
            crval=(self.ra_tangent, self.dec_tangent),
            crpix=(self.x_tangent, self.y_tangent),
            cd=np.eye(2) * _SCALE_DEG,
            shape=(self.ny, self.nx),
            name=f"proj{self.index}",
        )

    def contains(self, ra, dec):
        """Whether sky positions lie inside the region's RA/Dec bounds."""
        ra = np.asarray(ra, dtype=float) % 360.0
        dec = np.asarray(dec, dtype=float)
        inside = (dec >= self.dec_min) & (dec <= self.dec_max)
        if self.is_cap:
            return inside
        if self.ra_min > self.ra_max:  # straddles 0°
            return inside & ((ra >= self.ra_min) | (ra < self.ra_max))
        return inside & (ra >= self.ra_min) & (ra < self.ra_max)


@dataclass
class RegionCells:
    """The skycells of one region, as arrays in table order (row, then column)."""

    region: ProjectionRegion
    names: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    ra_center: np.ndarray
    dec_center: np.ndarray
    corners: np.ndarray  # (n, 4, 2): corners 1-4 as (ra, dec)
    _by_row_col: dict = field(default=None, repr=False)

    def __len__(self):
        return len(self.names)

    def position(self, row, col):
        """Index of the cell at (row, col), or None."""
        if self._by_row_col is None:
            self._by_row_col = {
                (int(r), int(c)): i for i, (r, c) in enumerate(zip(self.rows, self.cols,
                                                                   strict=True))
            }
        return self._by_row_col.get((int(row), int(col)))

    def skycell(self, position):
        """The `Skycell` at a position in this table."""
        return Skycell(
            name=str(self.names[position]),
            region=self.region,
            row=int(self.rows[position]),
            col=int(self.cols[position]),
            ra_center=float(self.ra_center[position]),
            dec_center=float(self.dec_center[position]),
            corners=tuple((float(r), float(d)) for r, d in self.corners[position]),
        )


@dataclass(frozen=True)
class Skycell:
    """A 5000 × 5000 pixel cell of a projection region's grid.

    Attributes
    ----------
    name : str
    region : ProjectionRegion
    row, col : int
        Position in the region's grid of cells (centre of the region = 0, 0).
    ra_center, dec_center : float
        Sky position of the cell centre, degrees.
    corners : tuple of (ra, dec)
        Outer pixel-edge corners at cell pixels (−0.5, −0.5), (4999.5, −0.5),
        (4999.5, 4999.5), (−0.5, 4999.5).
    """

    name: str
    region: ProjectionRegion
    row: int
    col: int
    ra_center: float
    dec_center: float
    corners: tuple

    shape = (SKYCELL_SIZE, SKYCELL_SIZE)
    pixel_scale = PIXEL_SCALE_ARCSEC

    @property
    def x_tangent(self):
        """The cell's own 0-based pixel x of the region's tangent point."""
        return (SKYCELL_SIZE - 1) / 2.0 - SKYCELL_SPACING * self.col

    @property
    def y_tangent(self):
        """The cell's own 0-based pixel y of the region's tangent point."""
        return (SKYCELL_SIZE - 1) / 2.0 - SKYCELL_SPACING * self.row

    @property
    def orientat(self):
        """Tangent-point RA minus cell-centre RA, in (−180, 180] degrees."""
        return -((self.ra_center - self.region.ra_tangent + 180.0) % 360.0 - 180.0)

    @cached_property
    def wcs(self):
        """The cell's gwcs: pixel (x, y) → ICRS degrees, 5000 × 5000, 0.055″."""
        from ..wcs_utils import affine_tan_wcs  # gwcs is slow to import; only when needed

        return affine_tan_wcs(
            crval=(self.region.ra_tangent, self.region.dec_tangent),
            crpix=(self.x_tangent, self.y_tangent),
            cd=np.eye(2) * _SCALE_DEG,
            shape=self.shape,
            name=self.name,
        )

    def wcs_info(self):
        """The ``skycell_wcs_info`` dictionary written into associations."""
        return {
            "name": self.name,
            "pixel_scale": _SCALE_DEG,
            "ra_projection_center": self.region.ra_tangent,
            "dec_projection_center": self.region.dec_tangent,
            "x0_projection": self.x_tangent,
            "y0_projection": self.y_tangent,
            "ra_center": self.ra_center,
            "dec_center": self.dec_center,
            "nx": SKYCELL_SIZE,
            "ny": SKYCELL_SIZE,
            "orientat": self.orientat,
            "orientat_projection_center": self.region.orientat,
        }

    def summary(self):
        """The facts ``romosaic skycell info`` prints."""
        return {
            "name": self.name,
            "region": self.region.index,
            "ra_tangent": self.region.ra_tangent,
            "dec_tangent": self.region.dec_tangent,
            "ra_center": self.ra_center,
            "dec_center": self.dec_center,
            "corners": [list(c) for c in self.corners],
            "x_tangent": self.x_tangent,
            "y_tangent": self.y_tangent,
            "shape": list(self.shape),
            "pixel_scale": self.pixel_scale,
        }


class Tessellation:
    """Lookups common to every source of the tessellation.

    Subclasses provide `regions` (every `ProjectionRegion`, by index) and
    `region_cells` (the `RegionCells` of one region).
    """

    @property
    def regions(self):
        raise NotImplementedError

    def region_cells(self, index):
        raise NotImplementedError

    # -- regions ----------------------------------------------------------

    @cached_property
    def _regions_by_prefix(self):
        return {region.name_prefix: region for region in self.regions}

    @cached_property
    def _rings(self):
        """Regions by ring, and by position in their ring: ``{ring: {i: region}}``.

        A dictionary rather than arithmetic on indices, so that a partial
        table (such as a test excerpt) still answers for what it holds.
        """
        rings = {}
        for region in self.regions:
            i = round(region.ra_tangent / (360.0 / region.ring_size)) % region.ring_size
            rings.setdefault(region.ring, {})[i] = region
        return rings

    def region(self, index):
        """The projection region with this index."""
        return self.regions[int(index)]

    def region_for(self, ra, dec):
        """The projection region whose RA/Dec bounds contain a sky position."""
        ra = float(ra) % 360.0
        dec = float(dec)
        for ring in self._rings_for_dec(dec, dec):
            members = self._rings[ring]
            n = next(iter(members.values())).ring_size
            region = members.get(int(math.floor(ra / (360.0 / n) + 0.5)) % n)
            if region is not None and region.contains(ra, dec):
                return region
        raise ValueError(f"no projection region contains ({ra}, {dec})")

    def _rings_for_dec(self, dec_low, dec_high):
        """Rings whose declination span overlaps [dec_low, dec_high]."""
        return [
            ring for ring, members in self._rings.items()
            if (first := next(iter(members.values()))).dec_max >= dec_low
            and first.dec_min <= dec_high
        ]

    # -- skycells -----------------------------------------------------------

    def skycell(self, name):
        """The `Skycell` with this name.

        Raises
        ------
        SkycellNotFoundError
            If the name is malformed or names no existing skycell.
        """
        parsed = parse_skycell_name(name)
        if parsed is None:
            raise SkycellNotFoundError(f"{name!r} is not a skycell name (like 270p65x70y49)")
        prefix, row, col = parsed
        region = self._regions_by_prefix.get(prefix)
        if region is None:
            raise SkycellNotFoundError(
                f"skycell {name}: no projection region has the prefix {prefix}"
            )
        cells = self.region_cells(region.index)
        position = cells.position(row, col)
        if position is None:
            raise SkycellNotFoundError(
                f"skycell {name} does not exist in projection region {region.index}"
            )
        return cells.skycell(position)

    def skycell_range(self, index):
        """Global ``(start, end)`` indices of a region's skycells in table order."""
        start = sum(len(self.region_cells(i)) for i in range(int(index)))
        return start, start + len(self.region_cells(index))

    def skycells_touching(self, ra, dec):
        """The skycells that overlap a sky polygon.

        Parameters
        ----------
        ra, dec : array_like
            Vertices in degrees, going round a convex footprint (such as an
            image's edge sampled by `romosaic.wcs_utils.footprint`).

        Returns
        -------
        list of Skycell
            Sorted by name.
        """
        ra = np.asarray(ra, dtype=float) % 360.0
        dec = np.asarray(dec, dtype=float)
        found = {}
        for region in self._candidate_regions(ra, dec):
            for cell in self._cells_touching_in_region(region, ra, dec):
                found[cell.name] = cell
        return [found[name] for name in sorted(found)]

    def _candidate_regions(self, ra, dec):
        # Skycells reach past their region's bounds by up to ~0.055° (half a
        # cell plus the border, diagonally); 0.1° of margin covers that.
        margin = 0.1
        dec_low, dec_high = dec.min() - margin, dec.max() + margin
        # Unwrap RA around the first vertex so a footprint across 0° is one interval.
        offsets = (ra - ra[0] + 180.0) % 360.0 - 180.0
        ra_low, ra_high = ra[0] + offsets.min(), ra[0] + offsets.max()
        for ring in self._rings_for_dec(dec_low, dec_high):
            members = self._rings[ring]
            ring_region = next(iter(members.values()))
            n = ring_region.ring_size
            if n == 1:
                yield ring_region
                continue
            widest = max(abs(ring_region.dec_min), abs(ring_region.dec_max), abs(dec_low),
                         abs(dec_high))
            cos_dec = math.cos(math.radians(min(widest, 89.9)))
            ra_margin = margin / cos_dec
            if ra_high - ra_low + 2 * ra_margin >= 360.0:
                indices = range(n)
            else:
                width = 360.0 / n
                first = math.floor((ra_low - ra_margin) / width + 0.5)
                last = math.floor((ra_high + ra_margin) / width + 0.5)
                indices = sorted({i % n for i in range(first, last + 1)})
            for i in indices:
                if i in members:
                    yield members[i]

    def _cells_touching_in_region(self, region, ra, dec):
        x, y = region.sky_to_pixel(ra, dec)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            return []
        polygon = _convex_hull(np.column_stack([x, y]))
        half = SKYCELL_SIZE / 2.0
        col_low = math.ceil((x.min() - region.x_tangent - half) / SKYCELL_SPACING)
        col_high = math.floor((x.max() - region.x_tangent + half) / SKYCELL_SPACING)
        row_low = math.ceil((y.min() - region.y_tangent - half) / SKYCELL_SPACING)
        row_high = math.floor((y.max() - region.y_tangent + half) / SKYCELL_SPACING)
        limit = CANDIDATE_HALF_WIDTH
        rows = range(max(row_low, -limit), min(row_high, limit) + 1)
        cols = range(max(col_low, -limit), min(col_high, limit) + 1)
        if not rows or not cols:
            return []
        cells = self.region_cells(region.index)
        touching = []
        for row in rows:
            for col in cols:
                position = cells.position(row, col)
                if position is None:
                    continue
                cx = region.x_tangent + SKYCELL_SPACING * col
                cy = region.y_tangent + SKYCELL_SPACING * row
                square = np.array([[cx - half, cy - half], [cx + half, cy - half],
                                   [cx + half, cy + half], [cx - half, cy + half]])
                if _convex_polygons_overlap(polygon, square):
                    touching.append(cells.skycell(position))
        return touching


class ComputedTessellation(Tessellation):
    """The tessellation from its formula (REFERENCE §5), computed lazily.

    Parameters
    ----------
    nside : int, optional
        Rings per quarter sphere; 13 for Roman.
    cache_regions : int, optional
        How many regions' skycell tables to keep in memory.
    """

    def __init__(self, nside=NSIDE, cache_regions=256):
        self.nside = int(nside)
        self.region_cells = lru_cache(maxsize=cache_regions)(self._compute_region_cells)

    @cached_property
    def regions(self):
        edges = ring_edges(self.nside)
        centres = ring_centres(self.nside)
        n_rings = 4 * self.nside - 1
        regions = []

        def cap(index, ra, dec, dec_min, dec_max, ring):
            size = _even_floor(2.0 * (90.0 - abs(edges[0])) / _SCALE_DEG)
            regions.append(ProjectionRegion(index, ra, dec, 0.0, 360.0, dec_min, dec_max,
                                            size, size, ring, 1))

        cap(0, 135.0, 90.0, float(edges[0]), 90.0, 0)
        for k in range(1, n_rings + 1):
            n = 8 * min(k, self.nside, 4 * self.nside - k)
            dec_max, dec_min = float(edges[k - 1]), float(edges[k])
            dec_ref = min(abs(dec_min), abs(dec_max))  # the edge nearer the equator
            width = 360.0 / n
            ny = _even_floor((dec_max - dec_min) / _SCALE_DEG)
            nx = _even_floor(width * math.cos(math.radians(dec_ref)) / _SCALE_DEG)
            for i in range(n):
                ra_t = i * width
                regions.append(ProjectionRegion(
                    len(regions), ra_t, float(centres[k - 1]),
                    (ra_t - width / 2) % 360.0, (ra_t + width / 2) % 360.0,
                    dec_min, dec_max, nx, ny, k, n))
        cap(len(regions), 225.0, -90.0, -90.0, -float(edges[0]), n_rings + 1)
        return regions

    def _compute_region_cells(self, index):
        region = self.regions[int(index)]
        steps = np.arange(-CANDIDATE_HALF_WIDTH, CANDIDATE_HALF_WIDTH + 1)
        rows, cols = (a.ravel() for a in np.meshgrid(steps, steps, indexing="ij"))
        cx = region.x_tangent + SKYCELL_SPACING * cols
        cy = region.y_tangent + SKYCELL_SPACING * rows
        ra_c, dec_c = region.pixel_to_sky(cx, cy)

        core = SKYCELL_SPACING / 2.0
        signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
        core_ra, core_dec = region.pixel_to_sky(cx[:, None] + core * signs[:, 0],
                                                cy[:, None] + core * signs[:, 1])
        keep = self._core_inside(region, core_ra, core_dec, ra_c).any(axis=1)

        rows, cols, cx, cy = rows[keep], cols[keep], cx[keep], cy[keep]
        half = SKYCELL_SIZE / 2.0
        corner_ra, corner_dec = region.pixel_to_sky(cx[:, None] + half * signs[:, 0],
                                                    cy[:, None] + half * signs[:, 1])
        prefix = region.name_prefix
        names = np.array([f"{prefix}x{50 + r:02d}y{50 + c:02d}" for r, c in zip(rows, cols,
                                                                                  strict=True)])
        return RegionCells(
            region=region,
            names=names,
            rows=rows,
            cols=cols,
            ra_center=ra_c[keep],
            dec_center=dec_c[keep],
            corners=np.stack([corner_ra, corner_dec], axis=-1),
        )

    @staticmethod
    def _core_inside(region, ra, dec, ra_centre):
        if region.index == 0:
            return dec >= region.dec_min
        if region.is_cap:
            return dec <= region.dec_max
        inside_dec = (dec >= region.dec_min) & (dec <= region.dec_max)
        half_width = 180.0 / region.ring_size
        if region.ra_tangent == 0.0:
            # The first region of a ring spans [-w/2, w/2): compare with RAs
            # shifted by -360° for cells on the 360° side.
            shifted = np.where(ra_centre[:, None] > 270.0, ra - 360.0, ra)
            return inside_dec & (shifted >= -half_width) & (shifted < half_width)
        return inside_dec & (ra >= region.ra_tangent - half_width) & (
            ra < region.ra_tangent + half_width)


def _even_floor(value):
    return int(math.floor(value / 2.0)) * 2


def _convex_hull(points):
    """Convex hull (counter-clockwise) of 2-D points, monotone chain."""
    pts = sorted(set(map(tuple, np.asarray(points, dtype=float))))
    if len(pts) <= 2:
        return np.array(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _convex_polygons_overlap(a, b):
    """Separating-axis test for two convex polygons given as (n, 2) vertices."""
    for polygon in (a, b):
        n = len(polygon)
        for i in range(n):
            edge = polygon[(i + 1) % n] - polygon[i]
            axis = np.array([-edge[1], edge[0]])
            projected_a = a @ axis
            projected_b = b @ axis
            if projected_a.max() < projected_b.min() or projected_b.max() < projected_a.min():
                return False
    return True
