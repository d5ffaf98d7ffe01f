"""The sky scene: stars and galaxies at fixed sky positions, and its truth table.

The scene is drawn once for the whole association, over the union of all image
footprints, so every exposure sees the same sources at the same sky positions.
A guaranteed set of bright, well-isolated stars (away from other sources and
from image edges) gives photometric and astrometric tests something clean to
measure.
"""

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from ..errors import RomosaicInputError
from .instrument import GALAXY_DENSITY, PIXEL_AREA, STAR_DENSITY, abmag_to_njy
from .wcs import from_tangent_plane, to_tangent_plane

__all__ = ["ISOLATION_RADIUS", "default_counts", "footprint_area", "make_scene"]

#: A source is flagged ``isolated`` when no other source lies within this radius (arcsec).
ISOLATION_RADIUS = 2.0

#: Guaranteed bright stars have no other source within this radius (arcsec) ...
CLEAR_RADIUS = 3.0
#: ... and lie at least this many pixels from every edge of at least one image.
EDGE_MARGIN = 10.0
#: ... and have magnitudes in this range.
BRIGHT_RANGE = (18.0, 21.0)

STAR_MAG_RANGE = (17.0, 25.0)
GALAXY_MAG_RANGE = (18.0, 25.0)

#: Galaxy profiles are truncated at this many half-light radii; the rendered
#: flux is normalised to the truncated profile, so truth fluxes are exact.
TRUNCATION = 5.0

_UNITS = {
    "ra": "deg",
    "dec": "deg",
    "flux_njy": "nJy",
    "flux_mjysr_pix": "MJy / sr",
    "nn_distance": "arcsec",
    "r_eff": "arcsec",
    "position_angle": "deg",
    "truncation_radius": "arcsec",
}


class _Footprint:
    """The union of the image footprints, sampled in the scene's tangent plane."""

    def __init__(self, geometries, ra0, dec0):
        self.geometries = geometries
        self.ra0, self.dec0 = ra0, dec0
        corners = [g.corners for g in geometries]
        ra = np.concatenate([c[0] for c in corners])
        dec = np.concatenate([c[1] for c in corners])
        xi, eta = to_tangent_plane(ra, dec, ra0, dec0)
        # A little slack covers edges bowed outwards by a distortion.
        pad = 2.0
        self.box = (xi.min() - pad, xi.max() + pad, eta.min() - pad, eta.max() + pad)

    @property
    def box_area(self):
        x0, x1, y0, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    def draw(self, rng, n):
        """``n`` uniform points in the bounding box of the union, as (xi, eta) arcsec."""
        x0, x1, y0, y1 = self.box
        return rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)

    def covered(self, xi, eta, margin=0.0):
        """Whether points lie on at least one image, ``margin`` pixels inside its edges."""
        ra, dec = from_tangent_plane(xi, eta, self.ra0, self.dec0)
        inside = np.zeros(np.shape(xi), dtype=bool)
        for geometry in self.geometries:
            inside |= geometry.contains(ra, dec, margin=margin)
        return inside


def footprint_area(geometries, ra0, dec0, rng, n_samples=20000):
    """Estimate the solid angle of the union of image footprints.

    Parameters
    ----------
    geometries : list of ImageGeometry
        The images.
    ra0, dec0 : float
        A point near the middle of the footprints (tangent point), degrees.
    rng : numpy.random.Generator
        Source of the Monte-Carlo samples.
    n_samples : int
        Number of samples; the estimate is good to about 1%.

    Returns
    -------
    float
        Area in square arcminutes.
    """
    footprint = _Footprint(geometries, ra0, dec0)
    xi, eta = footprint.draw(rng, n_samples)
    return footprint.box_area * footprint.covered(xi, eta).mean() / 3600.0


def default_counts(area_arcmin2):
    """Default numbers of stars and galaxies for a footprint of the given area.

    Parameters
    ----------
    area_arcmin2 : float
        Union footprint in square arcminutes.

    Returns
    -------
    n_stars, n_galaxies : int
    """
    n_stars = max(3, int(round(STAR_DENSITY * area_arcmin2)))
    n_galaxies = max(1, int(round(GALAXY_DENSITY * area_arcmin2)))
    return n_stars, n_galaxies


def _power_law_mags(rng, n, lo, hi, slope):
    """Magnitudes with counts rising as 10**(slope * mag) between lo and hi."""
    top = 10.0 ** (slope * (hi - lo)) - 1.0
    return lo + np.log10(1.0 + rng.uniform(0.0, 1.0, n) * top) / slope


def _place_bright_stars(rng, footprint, n_wanted):
    """Greedily pick well-separated positions far enough from image edges."""
    chosen_x, chosen_y = [], []
    for _ in range(50):
        if len(chosen_x) >= n_wanted:
            break
        xi, eta = footprint.draw(rng, max(256, 8 * n_wanted))
        good = footprint.covered(xi, eta, margin=EDGE_MARGIN)
        for x, y in zip(xi[good], eta[good], strict=True):
            if chosen_x:
                distance = np.hypot(np.asarray(chosen_x) - x, np.asarray(chosen_y) - y)
                if distance.min() < CLEAR_RADIUS:
                    continue
            chosen_x.append(x)
            chosen_y.append(y)
            if len(chosen_x) >= n_wanted:
                break
    if len(chosen_x) < n_wanted:
        raise RomosaicInputError(
            f"cannot place {n_wanted} isolated bright stars in the simulated footprint; "
            "use a larger image size or fewer stars"
        )
    return np.asarray(chosen_x), np.asarray(chosen_y)


def _place_others(rng, footprint, n_wanted, avoid_x, avoid_y):
    """Uniform positions on the footprint, away from the guaranteed bright stars."""
    if n_wanted == 0:
        return np.empty(0), np.empty(0)
    tree = cKDTree(np.column_stack([avoid_x, avoid_y])) if len(avoid_x) else None
    xs, ys = [], []
    n_found = 0
    for _ in range(200):
        if n_found >= n_wanted:
            break
        xi, eta = footprint.draw(rng, max(256, 2 * (n_wanted - n_found)))
        good = footprint.covered(xi, eta)
        if tree is not None:
            distance, _ = tree.query(np.column_stack([xi, eta]))
            good &= distance >= CLEAR_RADIUS
        xs.append(xi[good])
        ys.append(eta[good])
        n_found += int(good.sum())
    if n_found < n_wanted:
        raise RomosaicInputError(
            f"cannot place {n_wanted} sources in the simulated footprint; use fewer sources"
        )
    return np.concatenate(xs)[:n_wanted], np.concatenate(ys)[:n_wanted]


def _galaxy_shapes(rng, mags):
    """Sersic index, half-light radius (arcsec), axis ratio and position angle per galaxy."""
    n = len(mags)
    # Mostly disc-like profiles, with a minority of bulge-dominated ones.
    disky = rng.uniform(0.0, 1.0, n) < 0.75
    sersic_n = np.where(disky, rng.uniform(0.7, 1.6, n), rng.uniform(2.0, 4.0, n))
    # Fainter galaxies are smaller; bulges are more compact at a given magnitude.
    log_re = np.log10(0.55) - 0.1 * (mags - 20.0) + 0.15 * rng.standard_normal(n)
    log_re -= np.where(disky, 0.0, 0.15)
    r_eff = np.clip(10.0**log_re, 0.08, 1.2)
    axis_ratio = rng.uniform(0.3, 1.0, n)
    position_angle = rng.uniform(0.0, 180.0, n)
    return sersic_n, r_eff, axis_ratio, position_angle


def make_scene(geometries, rng, *, ra, dec, n_stars=None, n_galaxies=None,
               star_mag_range=None):
    """Draw the stars and galaxies of an association's scene.

    Parameters
    ----------
    geometries : list of ImageGeometry
        All images; sources are spread over the union of their footprints.
    rng : numpy.random.Generator
        Source of positions, magnitudes and shapes.
    ra, dec : float
        Scene centre (tangent point for the placement), degrees.
    n_stars, n_galaxies : int or None
        Numbers of sources; None scales them with the footprint area
        (about 55 stars and 37 galaxies per square arcminute).
    star_mag_range : tuple of float, optional
        ``(bright, faint)`` magnitude limits of the stars other than the
        guaranteed bright ones; default `STAR_MAG_RANGE`.

    Returns
    -------
    astropy.table.Table
        One row per source: ``source_id``, ``kind`` ("star"/"galaxy"), ``ra``,
        ``dec`` (deg), ``mag_ab``, ``flux_njy``, ``flux_mjysr_pix`` (flux over the
        nominal pixel area: the sum of surface brightness in MJy/sr over native
        pixels), ``isolated`` (no other source within 2″), ``nn_distance``
        (arcsec), and for galaxies ``sersic_n``, ``r_eff`` (arcsec, semi-major),
        ``axis_ratio``, ``position_angle`` (deg east of north) and
        ``truncation_radius`` (arcsec); the shape columns are NaN for stars.
    """
    footprint = _Footprint(geometries, ra, dec)
    if n_stars is None or n_galaxies is None:
        default_stars, default_galaxies = default_counts(
            footprint_area(geometries, ra, dec, rng)
        )
        n_stars = default_stars if n_stars is None else n_stars
        n_galaxies = default_galaxies if n_galaxies is None else n_galaxies
    if n_stars < 0 or n_galaxies < 0:
        raise RomosaicInputError("numbers of stars and galaxies must not be negative")

    n_bright = min(n_stars, max(3, int(round(0.1 * n_stars))))
    bright_x, bright_y = _place_bright_stars(rng, footprint, n_bright) if n_bright else ([], [])
    other_x, other_y = _place_others(
        rng, footprint, n_stars - n_bright + n_galaxies, bright_x, bright_y
    )
    xi = np.concatenate([bright_x, other_x])
    eta = np.concatenate([bright_y, other_y])
    n_total = n_stars + n_galaxies
    is_star = np.arange(n_total) < n_stars

    mags = np.empty(n_total)
    mags[:n_bright] = rng.uniform(*BRIGHT_RANGE, n_bright)
    star_range = STAR_MAG_RANGE if star_mag_range is None else tuple(star_mag_range)
    mags[n_bright:n_stars] = _power_law_mags(rng, n_stars - n_bright, *star_range, 0.2)
    mags[n_stars:] = _power_law_mags(rng, n_galaxies, *GALAXY_MAG_RANGE, 0.3)

    shape_columns = np.full((4, n_total), np.nan)
    shape_columns[:, n_stars:] = _galaxy_shapes(rng, mags[n_stars:])
    sersic_n, r_eff, axis_ratio, position_angle = shape_columns

    if n_total > 1:
        distance, _ = cKDTree(np.column_stack([xi, eta])).query(np.column_stack([xi, eta]), k=2)
        nn_distance = distance[:, 1]
    else:
        nn_distance = np.full(n_total, np.inf)

    ra_src, dec_src = from_tangent_plane(xi, eta, ra, dec)
    flux_njy = abmag_to_njy(mags)
    table = Table(
        {
            "source_id": np.arange(1, n_total + 1),
            "kind": np.where(is_star, "star", "galaxy"),
            "ra": ra_src,
            "dec": dec_src,
            "mag_ab": mags,
            "flux_njy": flux_njy,
            "flux_mjysr_pix": flux_njy * 1.0e-15 / PIXEL_AREA,
            "isolated": nn_distance > ISOLATION_RADIUS,
            "nn_distance": nn_distance,
            "sersic_n": sersic_n,
            "r_eff": r_eff,
            "axis_ratio": axis_ratio,
            "position_angle": position_angle,
            "truncation_radius": TRUNCATION * r_eff,
        },
        meta={"isolation_radius_arcsec": ISOLATION_RADIUS},
    )
    for name, unit in _UNITS.items():
        table[name].unit = unit
    return table
