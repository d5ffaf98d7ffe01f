"""Sky geometry at each source: position, pixel size and direction of north.

Pixel-frame measurements become sky quantities with the WCS *at the source*:
the local Jacobian (CD matrix) is measured by finite differences of the
gwcs, for all sources at once. Its determinant is the pixel's solid angle
(fluxes in nJy), its square root the pixel size (lengths in arcsec), and its
columns say where north and east point (position angles).

On a TAN grid the pixel solid angle changes as cos³ of the distance from the
tangent point, so on a skycell whose tangent point is a few degrees away the
pixel area differs by up to ~1e-3 from the square of ``meta.wcsinfo.pixel_scale`` (measured
at the grid centre). Using the local value removes that error.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["ARCSEC_PER_DEGREE", "SR_PER_ARCSEC2", "LocalGeometry", "local_geometry"]

ARCSEC_PER_DEGREE = 3600.0
#: Solid angle of one square arcsecond in steradians.
SR_PER_ARCSEC2 = (np.pi / (180.0 * 3600.0)) ** 2

#: Half-step of the finite differences, pixels.
_DELTA = 0.5


@dataclass
class LocalGeometry:
    """The WCS around each source.

    Attributes
    ----------
    ra, dec : numpy.ndarray
        Sky position of each pixel position, degrees.
    cd : numpy.ndarray
        Shape (n, 2, 2): arcsec of (east, north) per pixel step along (x, y).
    """

    ra: np.ndarray
    dec: np.ndarray
    cd: np.ndarray

    @property
    def pixel_area_arcsec2(self):
        """Solid angle of one pixel, arcsec²."""
        return np.abs(np.linalg.det(self.cd))

    @property
    def pixel_area_sr(self):
        """Solid angle of one pixel, steradians."""
        return self.pixel_area_arcsec2 * SR_PER_ARCSEC2

    @property
    def pixel_scale_arcsec(self):
        """Linear size of one pixel (square root of its area), arcsec."""
        return np.sqrt(self.pixel_area_arcsec2)

    def position_angle(self, angle_pix_deg):
        """Position angle on the sky (degrees east of north, in [0, 180)) of an axis.

        Parameters
        ----------
        angle_pix_deg : numpy.ndarray
            Direction of the axis in the pixel frame, degrees counter-clockwise
            from +x.
        """
        theta = np.radians(angle_pix_deg)
        dx, dy = np.cos(theta), np.sin(theta)
        east = self.cd[:, 0, 0] * dx + self.cd[:, 0, 1] * dy
        north = self.cd[:, 1, 0] * dx + self.cd[:, 1, 1] * dy
        return np.degrees(np.arctan2(east, north)) % 180.0


def local_geometry(wcs, x, y):
    """Evaluate the WCS and its local Jacobian at pixel positions.

    Parameters
    ----------
    wcs : gwcs.wcs.WCS
        Pixel (0-based x, y) → ICRS (RA, Dec) in degrees.
    x, y : numpy.ndarray
        Pixel positions.

    Returns
    -------
    LocalGeometry
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = x.size
    # One call for the positions and the four offsets of every source.
    xs = np.concatenate([x, x - _DELTA, x + _DELTA, x, x])
    ys = np.concatenate([y, y, y, y - _DELTA, y + _DELTA])
    ra_all, dec_all = wcs(xs, ys, with_bounding_box=False)
    ra_all = np.asarray(ra_all, dtype=float).reshape(5, n)
    dec_all = np.asarray(dec_all, dtype=float).reshape(5, n)
    ra, dec = ra_all[0], dec_all[0]
    cos_dec = np.cos(np.radians(dec))

    def step(minus, plus):
        dra = (ra_all[plus] - ra_all[minus] + 180.0) % 360.0 - 180.0
        ddec = dec_all[plus] - dec_all[minus]
        scale = ARCSEC_PER_DEGREE / (2 * _DELTA)
        return dra * cos_dec * scale, ddec * scale

    east_x, north_x = step(1, 2)
    east_y, north_y = step(3, 4)
    cd = np.empty((n, 2, 2))
    cd[:, 0, 0], cd[:, 0, 1] = east_x, east_y
    cd[:, 1, 0], cd[:, 1, 1] = north_x, north_y
    return LocalGeometry(ra=ra % 360.0, dec=dec, cd=cd)
