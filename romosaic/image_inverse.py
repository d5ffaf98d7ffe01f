"""Sky → pixel positions on a Level-2 image whose WCS may have no usable inverse.

Drizzling needs only each input's forward transform (pixel → sky) and the
output grid's inverse, so romosaic does not require an input's WCS to be
invertible. The few places that do map sky positions onto an input (the
noise-correlation probe of `romosaic.resample.noise_correlation`) get the
mapping from `image_inverse`:

* the WCS's own inverse, when it has one that maps a grid of pixels back to
  themselves within `INVERSE_TOLERANCE`;
* otherwise a polynomial fitted to forward evaluations on a grid of nodes
  slightly larger than the image (in tangent-plane coordinates about the
  image centre, where a distorted detector is smooth), then refined with
  Newton steps on the forward transform.

Some Level-2 files (those of the Roman simulator, with a SIP-like
polynomial chain) have no analytic inverse, and gwcs's own numerical one
fails on them, hence the fitted one. An inverse that cannot be found to the
tolerance is a one-line `~romosaic.errors.RomosaicInputError` naming the file.
"""

import math

import numpy as np

from .errors import RomosaicInputError
from .wcs_utils import world_to_pixel

__all__ = ["INVERSE_TOLERANCE", "image_inverse"]

#: Largest pixel → sky → pixel error (pixels) accepted of an image's inverse.
INVERSE_TOLERANCE = 0.01

# Nodes per axis of the fit, its margin beyond the image (fraction of the
# side: sky positions just off an edge still invert), and the degrees tried.
_FIT_NODES = 33
_FIT_MARGIN = 0.05
_FIT_DEGREES = (3, 5, 7)
_NEWTON_STEPS = 3
# Points per axis of the round-trip check (between the fit's nodes).
_CHECK_POINTS = 24


def image_inverse(wcs, shape, name):
    """A function mapping sky positions to pixel positions of an image.

    Parameters
    ----------
    wcs : gwcs.wcs.WCS
        The image's pixel → ICRS transform.
    shape : (int, int)
        Array shape ``(ny, nx)``.
    name : str
        File name for messages.

    Returns
    -------
    callable
        ``inverse(ra, dec) -> (x, y)``, arrays of float (degrees in, 0-based
        pixels out, no bounding box: NaN only where the projection has no
        pixel).

    Raises
    ------
    RomosaicInputError
        When neither the WCS's inverse nor a fitted one maps the image's
        pixels back within `INVERSE_TOLERANCE`.

    Examples
    --------
    >>> from romosaic.wcs_utils import affine_tan_wcs
    >>> w = affine_tan_wcs(crval=(10, 20), crpix=(50, 50),
    ...                    cd=[[-3e-5, 0], [0, 3e-5]], shape=(100, 100))
    >>> inverse = image_inverse(w, (100, 100), "x_cal.asdf")
    >>> [round(float(v), 6) for v in inverse(*w(3.0, 7.0))]
    [3.0, 7.0]
    """
    x, y = _check_points(shape)
    ra, dec = _forward(wcs, x, y)

    def own(ra, dec):
        return world_to_pixel(wcs, ra, dec)

    try:
        with np.errstate(all="ignore"):
            miss = _miss(own, ra, dec, x, y)
    except Exception:  # no inverse, or gwcs's numerical one failing on this chain
        miss = math.inf
    if miss <= INVERSE_TOLERANCE:
        return own
    fitted, miss = _fitted_inverse(wcs, shape, ra, dec, x, y)
    if fitted is None:
        raise RomosaicInputError(
            f"{name}: WCS cannot be inverted (the best inverse found maps pixels back "
            f"{miss:.3g} pixels off; {INVERSE_TOLERANCE} needed)")
    return fitted


def _forward(wcs, x, y):
    with np.errstate(all="ignore"):
        ra, dec = wcs(x, y, with_bounding_box=False)
    return np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)


def _check_points(shape):
    """Pixels spread over the image and its edges, off the fit's nodes."""
    ny, nx = shape
    xs = np.linspace(-0.5, nx - 0.5, _CHECK_POINTS)
    ys = np.linspace(-0.5, ny - 0.5, _CHECK_POINTS)
    x, y = np.meshgrid(xs, ys)
    return x.ravel(), y.ravel()


def _miss(inverse, ra, dec, x, y):
    xb, yb = inverse(ra, dec)
    miss = np.hypot(xb - x, yb - y)
    return float(miss.max()) if np.isfinite(miss).all() else math.inf


def _tangent_plane(ra, dec, ra0, dec0):
    """Gnomonic coordinates (degrees) about ``(ra0, dec0)``; NaN on the far side."""
    ra, dec, ra0, dec0 = (np.radians(v) for v in (ra, dec, ra0, dec0))
    cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    with np.errstate(all="ignore"):
        scale = np.where(cos_c > 0, 1.0 / cos_c, np.nan)
    xi = np.cos(dec) * np.sin(ra - ra0) * scale
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) * scale
    return np.degrees(xi), np.degrees(eta)


def _design(u, v, degree):
    return np.column_stack([u**i * v**j for i in range(degree + 1)
                            for j in range(degree + 1 - i)])


def _fitted_inverse(wcs, shape, ra_check, dec_check, x_check, y_check):
    """The best polynomial inverse and its round-trip miss (None if above tolerance)."""
    ny, nx = shape
    centre = _forward(wcs, np.array([(nx - 1) / 2]), np.array([(ny - 1) / 2]))
    ra0, dec0 = float(centre[0][0]), float(centre[1][0])
    if not (math.isfinite(ra0) and math.isfinite(dec0)):
        return None, math.inf
    margin_x, margin_y = _FIT_MARGIN * nx, _FIT_MARGIN * ny
    xs = np.linspace(-0.5 - margin_x, nx - 0.5 + margin_x, _FIT_NODES)
    ys = np.linspace(-0.5 - margin_y, ny - 0.5 + margin_y, _FIT_NODES)
    x, y = (a.ravel() for a in np.meshgrid(xs, ys))
    u, v = _tangent_plane(*_forward(wcs, x, y), ra0, dec0)
    good = np.isfinite(u) & np.isfinite(v)
    if good.sum() < 10:
        return None, math.inf
    x, y, u, v = x[good], y[good], u[good], v[good]
    # Normalised plane coordinates keep the high powers well conditioned.
    u_scale = max(float(np.abs(u).max()), 1e-12)
    v_scale = max(float(np.abs(v).max()), 1e-12)
    best_miss = math.inf
    for degree in _FIT_DEGREES:
        design = _design(u / u_scale, v / v_scale, degree)
        cx = np.linalg.lstsq(design, x, rcond=None)[0]
        cy = np.linalg.lstsq(design, y, rcond=None)[0]
        inverse = _make_inverse(wcs, ra0, dec0, u_scale, v_scale, degree, cx, cy)
        miss = _miss(inverse, ra_check, dec_check, x_check, y_check)
        best_miss = min(best_miss, miss)
        if miss <= INVERSE_TOLERANCE:
            return inverse, miss
    return None, best_miss


def _make_inverse(wcs, ra0, dec0, u_scale, v_scale, degree, cx, cy):
    def inverse(ra, dec):
        ra = np.asarray(ra, dtype=float)
        dec = np.asarray(dec, dtype=float)
        shape = np.broadcast(ra, dec).shape
        ra, dec = (np.broadcast_to(a, shape).ravel() for a in (ra, dec))
        u, v = _tangent_plane(ra, dec, ra0, dec0)
        design = _design(u / u_scale, v / v_scale, degree)
        x, y = design @ cx, design @ cy
        # Newton steps on the forward transform, in the same tangent plane,
        # with a finite-difference Jacobian: the polynomial only starts them.
        h = 0.5
        for _ in range(_NEWTON_STEPS):
            u1, v1 = _tangent_plane(*_forward(wcs, x, y), ra0, dec0)
            ux, vx = _tangent_plane(*_forward(wcs, x + h, y), ra0, dec0)
            uy, vy = _tangent_plane(*_forward(wcs, x, y + h), ra0, dec0)
            a, b = (ux - u1) / h, (uy - u1) / h
            c, d = (vx - v1) / h, (vy - v1) / h
            det = a * d - b * c
            du, dv = u - u1, v - v1
            with np.errstate(all="ignore"):
                dx = (d * du - b * dv) / det
                dy = (a * dv - c * du) / det
            step = np.isfinite(dx) & np.isfinite(dy)
            x = np.where(step, x + dx, x)
            y = np.where(step, y + dy, y)
        return x.reshape(shape), y.reshape(shape)

    return inverse
