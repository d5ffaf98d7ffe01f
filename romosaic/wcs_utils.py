"""Small WCS tools shared by the steps: TAN grids, footprints, local geometry.

Conventions used throughout romosaic:

* pixel coordinates are 0-based ``(x, y)``, the centre of pixel ``[j, i]``
  being ``(i, j)``;
* a celestial CD matrix maps pixel offsets to *intermediate* coordinates
  ``(east, north)`` in degrees on the tangent plane, so a conventional
  "north up, east left" image has ``CD = s * [[-1, 0], [0, 1]]``;
* an orientation angle is the position angle of the image's +y axis,
  measured from north through east, in degrees (the L3 ``orientation``
  keyword's definition).
"""

import math
import threading
import weakref

import numpy as np
from astropy import coordinates as coord
from astropy import units as u
from astropy.modeling import models
from gwcs import FITSImagingWCSTransform
from gwcs import coordinate_frames as cf
from gwcs import wcs as gwcs_wcs

__all__ = [
    "affine_tan_wcs",
    "cd_from_orientation",
    "footprint",
    "footprint_bounds",
    "local_cd_matrix",
    "orientation_and_parity",
    "padded_window",
    "pixel_scale_arcsec",
    "s_region_polygon",
    "sky_to_unit_vectors",
    "unit_vectors_to_sky",
    "world_to_pixel",
]


def affine_tan_wcs(*, crval, crpix, cd, shape, name=None):
    """A gwcs with a gnomonic (TAN) projection and a linear pixel grid.

    The forward transform is gwcs' `~gwcs.FITSImagingWCSTransform`, as the
    reference pipeline writes for skycells and free grids, so its numbers
    read as the FITS keywords do: ``wcs.forward_transform.crpix`` (0-based
    pixel of the tangent point), ``crval``, ``cdelt`` (degrees per pixel) and
    ``pc`` (the CD matrix divided by ``cdelt``).

    Parameters
    ----------
    crval : (float, float)
        RA, Dec of the tangent point in degrees.
    crpix : (float, float)
        0-based pixel ``(x, y)`` of the tangent point.
    cd : (2, 2) array_like
        Degrees of (east, north) per pixel along x (first column) and y.
    shape : (int, int)
        Array shape ``(ny, nx)``; sets the bounding box and pixel shape.
    name : str, optional
        The WCS's name (a skycell's WCS is named after it).

    Returns
    -------
    gwcs.wcs.WCS
        Pixel ``(x, y)`` → ICRS ``(ra, dec)`` in degrees, with an exact
        analytic inverse.

    Examples
    --------
    >>> w = affine_tan_wcs(crval=(10, 20), crpix=(49.5, 49.5),
    ...                    cd=[[-3e-5, 0], [0, 3e-5]], shape=(100, 100))
    >>> [round(float(v), 6) for v in w(49.5, 49.5)]
    [10.0, 20.0]
    >>> w.forward_transform.cdelt.value.tolist()
    [3e-05, 3e-05]
    """
    cd = np.asarray(cd, dtype=float)
    # One scale on both axes (the grids here have square pixels), taken from
    # the x axis so that an axis-aligned CD splits exactly: s·I gives
    # cdelt = s and pc = I, with no rounding. (A degenerate CD, which the
    # input checks must be able to meet, keeps cdelt = 1.)
    cdelt = math.hypot(float(cd[0, 0]), float(cd[1, 0])) or 1.0
    transform = FITSImagingWCSTransform(
        models.Pix2Sky_TAN(),
        crpix=[float(crpix[0]), float(crpix[1])],
        crval=[float(crval[0]), float(crval[1])],
        cdelt=[cdelt, cdelt],
        pc=cd / cdelt,
    )
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    wcs = gwcs_wcs.WCS([(detector, transform), (sky, None)], name=name)
    ny, nx = (int(n) for n in shape)
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    wcs.pixel_shape = (nx, ny)
    wcs.array_shape = (ny, nx)
    return wcs


# Per WCS object: the transforms of its pipeline when its backward transform
# was composed, and that transform (None: gwcs must invert it numerically).
_BACKWARD = weakref.WeakKeyDictionary()
_BACKWARD_LOCK = threading.Lock()


def world_to_pixel(wcs, ra, dec):
    """Pixel ``(x, y)`` of sky positions: ``wcs.invert(ra, dec, with_bounding_box=False)``.

    gwcs composes a WCS's transforms and their inverses anew at every
    `~gwcs.wcs.WCS.invert` (6 ms for a TAN grid, more than evaluating the
    result at 10 000 points), and a run inverts the same grid and image
    WCSs hundreds of times. Here the composed backward transform is kept
    for as long as the WCS object lives and its pipeline holds the same
    transform objects; a WCS without an analytical inverse, or whose
    transforms use units, goes through `~gwcs.wcs.WCS.invert` itself.

    Parameters
    ----------
    wcs : gwcs.wcs.WCS
    ra, dec : float or numpy.ndarray
        Degrees.

    Returns
    -------
    x, y : numpy.ndarray
        0-based pixel coordinates (float).

    Examples
    --------
    >>> w = affine_tan_wcs(crval=(10, 20), crpix=(50, 50),
    ...                    cd=[[-3e-5, 0], [0, 3e-5]], shape=(100, 100))
    >>> [round(float(v), 6) for v in world_to_pixel(w, *w(3.0, 7.0))]
    [3.0, 7.0]
    """
    backward = _backward_transform(wcs)
    if backward is None:
        x, y = wcs.invert(ra, dec, with_bounding_box=False)
    else:
        x, y = backward(ra, dec, with_bounding_box=False)
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def _backward_transform(wcs):
    """``wcs.backward_transform``, composed once per WCS (see `world_to_pixel`)."""
    steps = tuple(step.transform for step in wcs.pipeline)
    with _BACKWARD_LOCK:
        kept = _BACKWARD.get(wcs)
    if kept is not None and len(kept[0]) == len(steps) and all(
            a is b for a, b in zip(kept[0], steps, strict=True)):
        return kept[1]
    try:
        backward = wcs.backward_transform
    except NotImplementedError:
        backward = None
    if backward is not None and backward.uses_quantity:
        backward = None
    with _BACKWARD_LOCK:
        _BACKWARD[wcs] = (steps, backward)
    return backward


def cd_from_orientation(scale_deg, orientation_deg, *, parity=-1):
    """The CD matrix of a square-pixel grid with a given orientation.

    Parameters
    ----------
    scale_deg : float
        Pixel size in degrees.
    orientation_deg : float
        Position angle of +y, from north through east, in degrees.
    parity : {-1, +1}
        -1 for the usual sky orientation (east is 90° counter-clockwise from
        north, "north up, east left"); +1 for the mirrored one, which the
        Roman sky tessellation uses (RA increasing along +x).

    Returns
    -------
    numpy.ndarray of shape (2, 2)
    """
    theta = math.radians(orientation_deg)
    y_axis = np.array([math.sin(theta), math.cos(theta)])
    # +x is +y turned by -90° on the sky for the usual parity, +90° mirrored.
    x_axis = np.array([-math.cos(theta), math.sin(theta)]) * (-parity)
    return scale_deg * np.column_stack([x_axis, y_axis])


def local_cd_matrix(wcs, x, y, *, delta=0.5):
    """The local CD matrix of any WCS at pixel ``(x, y)``, by finite differences.

    Returns
    -------
    numpy.ndarray of shape (2, 2)
        Degrees of (east, north) per pixel along x and y.
    """
    xs = np.array([x - delta, x + delta, x, x], dtype=float)
    ys = np.array([y, y, y - delta, y + delta], dtype=float)
    ra, dec = wcs(xs, ys, with_bounding_box=False)
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    cos_dec = math.cos(math.radians(float(np.mean(dec))))
    dra = (ra[[1, 3]] - ra[[0, 2]] + 180.0) % 360.0 - 180.0
    ddec = dec[[1, 3]] - dec[[0, 2]]
    east = dra * cos_dec / (2 * delta)
    north = ddec / (2 * delta)
    return np.array([[east[0], east[1]], [north[0], north[1]]])


def orientation_and_parity(cd):
    """Orientation (degrees, see module notes) and parity (±1) of a CD matrix."""
    cd = np.asarray(cd, dtype=float)
    parity = 1 if np.linalg.det(cd) > 0 else -1
    orientation = math.degrees(math.atan2(cd[0, 1], cd[1, 1]))
    return orientation, parity


def pixel_scale_arcsec(cd):
    """Mean linear pixel size of a CD matrix, in arcseconds."""
    return math.sqrt(abs(np.linalg.det(np.asarray(cd, dtype=float)))) * 3600.0


def footprint(wcs, shape, *, points_per_edge=9):
    """Sky positions along the edge of an image, outer pixel edges included.

    Sampling each edge at several points (not only the corners) keeps a
    distorted detector's bulging edges inside the footprint.

    Parameters
    ----------
    wcs : gwcs.wcs.WCS
    shape : (int, int)
        Array shape ``(ny, nx)``.
    points_per_edge : int, optional

    Returns
    -------
    ra, dec : numpy.ndarray
        Degrees, going round the image; the first four points are the corners
        ``(-0.5, -0.5), (nx-0.5, -0.5), (nx-0.5, ny-0.5), (-0.5, ny-0.5)``.
    """
    ny, nx = shape
    x0, x1, y0, y1 = -0.5, nx - 0.5, -0.5, ny - 0.5
    t = np.linspace(0.0, 1.0, points_per_edge)[1:-1]
    xs = np.concatenate(
        [[x0, x1, x1, x0], x0 + (x1 - x0) * t, np.full_like(t, x1), x1 - (x1 - x0) * t,
         np.full_like(t, x0)]
    )
    ys = np.concatenate(
        [[y0, y0, y1, y1], np.full_like(t, y0), y0 + (y1 - y0) * t, np.full_like(t, y1),
         y1 - (y1 - y0) * t]
    )
    ra, dec = wcs(xs, ys, with_bounding_box=False)
    return np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)


def footprint_bounds(geometry, grid_wcs, *, points_per_edge=9):
    """Where each image's footprint falls on a grid, as a box of grid pixels.

    Parameters
    ----------
    geometry : list of (wcs, shape)
        Each image's WCS and array shape.
    grid_wcs : gwcs.wcs.WCS
        The grid's WCS.
    points_per_edge : int, optional
        Footprint sampling (see `footprint`).

    Returns
    -------
    list of (float, float, float, float)
        ``(x_min, x_max, y_min, y_max)`` in grid pixels; all NaN for an image
        without a position on the grid.
    """
    bounds = []
    for wcs, shape in geometry:
        ra, dec = footprint(wcs, shape, points_per_edge=points_per_edge)
        x, y = world_to_pixel(grid_wcs, ra, dec)
        finite = np.isfinite(x) & np.isfinite(y)
        if not finite.any():
            bounds.append((math.nan,) * 4)
        else:
            bounds.append((float(x[finite].min()), float(x[finite].max()),
                           float(y[finite].min()), float(y[finite].max())))
    return bounds


def padded_window(bounds, shape, pad):
    """The grid rows and columns holding every box of ``bounds``, ``pad`` pixels wider.

    Parameters
    ----------
    bounds : list of (float, float, float, float)
        `footprint_bounds` of the images.
    shape : (int, int)
        Grid ``(ny, nx)``.
    pad : int
        Pixels added on every side before clipping to the grid.

    Returns
    -------
    ((int, int), (int, int)) or None
        Half-open ``(row_start, row_stop), (col_start, col_stop)``; None when
        no image lands on the grid.

    Examples
    --------
    >>> padded_window([(100.0, 200.0, 50.0, 60.0)], (1000, 1000), 7)
    ((43, 68), (93, 208))
    """
    ny, nx = (int(n) for n in shape)
    placed = [b for b in bounds if all(math.isfinite(v) for v in b)]
    if not placed:
        return None
    x_min, x_max = min(b[0] for b in placed), max(b[1] for b in placed)
    y_min, y_max = min(b[2] for b in placed), max(b[3] for b in placed)
    rows = (max(0, math.floor(y_min) - pad), min(ny, math.ceil(y_max) + pad + 1))
    cols = (max(0, math.floor(x_min) - pad), min(nx, math.ceil(x_max) + pad + 1))
    if rows[0] >= rows[1] or cols[0] >= cols[1]:
        return None
    return rows, cols


def sky_to_unit_vectors(ra, dec):
    """Unit vectors of sky positions (degrees), shape ``(n, 3)``."""
    ra = np.radians(np.asarray(ra, dtype=float))
    dec = np.radians(np.asarray(dec, dtype=float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def unit_vectors_to_sky(vectors):
    """RA, Dec in degrees (RA in [0, 360)) of one or more 3-vectors."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=float))
    norm = np.linalg.norm(vectors, axis=1)
    ra = np.degrees(np.arctan2(vectors[:, 1], vectors[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(vectors[:, 2] / norm, -1.0, 1.0)))
    return ra, dec


def s_region_polygon(wcs, shape):
    """The IVOA ``s_region`` string of an image's four outer corners."""
    ra, dec = footprint(wcs, shape, points_per_edge=2)
    corners = " ".join(f"{r:.9f} {d:.9f}" for r, d in zip(ra[:4], dec[:4], strict=True))
    return f"POLYGON ICRS {corners}"
