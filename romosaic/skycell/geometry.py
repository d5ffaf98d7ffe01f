"""Spherical geometry of the Roman sky tessellation, on plain numpy arrays.

The tessellation (REFERENCE §5) divides the sky into declination rings of
projection regions, each with its own gnomonic (TAN) pixel grid of
0.055″ pixels, north up and right ascension increasing along +x. These
functions are the exact formulas, written with numpy so that a whole
region's candidate skycells (71 × 71 × 4 corners) are computed in one call;
the gwcs objects built from the same numbers agree with them to ~1e-12°.
"""

import math

import numpy as np

__all__ = [
    "NSIDE",
    "PIXEL_SCALE_ARCSEC",
    "latitude_map",
    "ring_centres",
    "ring_edges",
    "tan_deproject",
    "tan_project",
]

#: Rings of the tessellation per quarter of the sphere's latitude range.
NSIDE = 13
#: Pixel size of every region and skycell grid, arcseconds.
PIXEL_SCALE_ARCSEC = 0.055


def latitude_map(y):
    """Declination (degrees) of the normalised latitude coordinate ``y`` in [-½, ½].

    Equal-area within the equatorial band (``|y| ≤ ¼``), with the polar
    caps mapped so that ring areas stay comparable.
    """
    y = np.asarray(y, dtype=float)
    magnitude = np.abs(y)
    sin_dec = np.where(
        magnitude <= 0.25, 8.0 * y / 3.0, np.sign(y) * (1.0 - (2.0 - 4.0 * magnitude) ** 2 / 3.0)
    )
    # Multiplying by 180/π (rather than np.degrees) reproduces the published
    # table to the last bit.
    return np.arcsin(np.clip(sin_dec, -1.0, 1.0)) * 180.0 / np.pi


def ring_centres(nside=NSIDE):
    """Declinations of rings k = 1 … 4·nside − 1 (index k − 1), north to south."""
    k = np.arange(1, 4 * nside)
    return latitude_map((2 * nside - k) / (4 * nside))


def ring_edges(nside=NSIDE):
    """Declinations e_0 … e_{4·nside−1}: ring k spans e_{k−1} (north) to e_k (south)."""
    j = np.arange(0, 4 * nside)
    return latitude_map((2 * nside - j - 0.5) / (4 * nside))


def tan_deproject(xi, eta, ra0, dec0):
    """Sky position of tangent-plane coordinates.

    Parameters
    ----------
    xi, eta : array_like
        Tangent-plane offsets in degrees, ``xi`` toward increasing right
        ascension (east) and ``eta`` toward north.
    ra0, dec0 : float
        Tangent point, degrees.

    Returns
    -------
    ra, dec : numpy.ndarray
        Degrees, ``ra`` in [0, 360).
    """
    x = np.radians(np.asarray(xi, dtype=float))
    y = np.radians(np.asarray(eta, dtype=float))
    d0 = math.radians(dec0)
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    sin_c, cos_c = np.sin(c), np.cos(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(rho > 0, y * sin_c / np.where(rho > 0, rho, 1.0), 0.0)
    dec = np.arcsin(np.clip(cos_c * math.sin(d0) + ratio * math.cos(d0), -1.0, 1.0))
    ra = math.radians(ra0) + np.arctan2(
        x * sin_c, rho * math.cos(d0) * cos_c - y * math.sin(d0) * sin_c
    )
    return np.degrees(ra) % 360.0, np.degrees(dec)


def tan_project(ra, dec, ra0, dec0):
    """Tangent-plane coordinates (degrees) of sky positions; NaN behind the plane.

    The inverse of `tan_deproject`.
    """
    a = np.radians(np.asarray(ra, dtype=float) - ra0)
    d = np.radians(np.asarray(dec, dtype=float))
    d0 = math.radians(dec0)
    cos_c = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        inverse = np.where(cos_c > 0, 1.0 / cos_c, np.nan)
    xi = np.cos(d) * np.sin(a) * inverse
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(a)) * inverse
    return np.degrees(xi), np.degrees(eta)
