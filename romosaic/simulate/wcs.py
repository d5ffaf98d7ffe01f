"""Where each simulated image looks: the dither layout and each image's gwcs.

An exposure points the focal plane at a *boresight* with a roll angle; each
detector is a fixed region of that focal plane, offset from the boresight. All
detectors of one exposure therefore share one TAN projection (as on the real
instrument), while exposures differ by small dithers and rotations.

Pixel coordinates are 0-based with pixel centres on integers. The detector
axes have the usual sky parity: with zero roll, north is +y and east is -x.
"""

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from astropy import coordinates as coord
from astropy import units as u
from astropy.modeling import models
from gwcs import coordinate_frames as cf
from gwcs import wcs as gwcs_wcs

from .instrument import DETECTOR_SIZE, PIXEL_SCALE

__all__ = [
    "ImageGeometry",
    "Placement",
    "PointingError",
    "build_gwcs",
    "draw_pointing_errors",
    "from_tangent_plane",
    "plan_layout",
    "recorded_placement",
    "to_tangent_plane",
]

#: Largest dither, as a fraction of the detector size, along each axis.
DITHER_FRACTION = 0.1

#: Largest roll of an exposure away from the mean roll, in degrees.
ROLL_JITTER = 0.05

#: Gap between neighbouring detectors of one exposure, as a fraction of their size.
GAP_FRACTION = 0.03

#: Corner displacement of the optional distortion of a full-size detector, in pixels.
#: Smaller images get proportionally less, so the relative distortion stays the same.
DISTORTION_CORNER = 2.0

# Shape of the distortion in coordinates normalised to [-1, 1] over the detector;
# each term is 1 at the corner (1, 1), so the amplitudes add to the corner shift.
_DISTORTION_X = {(1, 1): 0.55, (3, 0): 0.45}
_DISTORTION_Y = {(2, 0): 0.35, (0, 3): 0.45, (2, 1): 0.2}

# Degree of the polynomial fitted to invert the distortion; a 3rd-order
# distortion of a few pixels is inverted to ~1e-5 px by a 5th-order polynomial.
_INVERSE_DEGREE = 5


def to_tangent_plane(ra, dec, ra0, dec0):
    """Project sky positions onto the tangent plane at (ra0, dec0).

    Parameters
    ----------
    ra, dec : float or array-like
        Sky positions in degrees.
    ra0, dec0 : float
        Tangent point in degrees.

    Returns
    -------
    xi, eta : numpy.ndarray
        Gnomonic coordinates in arcsec, xi towards east and eta towards north.
    """
    ra, dec = np.deg2rad(ra), np.deg2rad(dec)
    ra0, dec0 = np.deg2rad(ra0), np.deg2rad(dec0)
    cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cos_c
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cos_c
    return np.rad2deg(xi) * 3600.0, np.rad2deg(eta) * 3600.0


def from_tangent_plane(xi, eta, ra0, dec0):
    """Inverse of `to_tangent_plane`.

    Parameters
    ----------
    xi, eta : float or array-like
        Gnomonic coordinates in arcsec (xi towards east, eta towards north).
    ra0, dec0 : float
        Tangent point in degrees.

    Returns
    -------
    ra, dec : numpy.ndarray
        Sky positions in degrees, RA in [0, 360).
    """
    xi = np.deg2rad(np.asarray(xi, dtype=float) / 3600.0)
    eta = np.deg2rad(np.asarray(eta, dtype=float) / 3600.0)
    ra0, dec0 = np.deg2rad(ra0), np.deg2rad(dec0)
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.rad2deg(ra) % 360.0, np.rad2deg(dec)


def _rotation(angle_deg):
    """Matrix turning the +y axis to position angle ``angle_deg`` (north through east)."""
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])


@dataclass(frozen=True)
class Placement:
    """Where one detector of one exposure points.

    Attributes
    ----------
    exposure, detector : int
        1-based exposure and detector numbers.
    ra_v1, dec_v1 : float
        Boresight of the exposure (the tangent point of its projection), degrees.
    roll : float
        Position angle of the focal plane's +y axis, degrees east of north.
    offset : tuple of float
        Detector centre in the focal plane, arcsec (before the roll).
    scale : float
        Pixel scale of this detector, arcsec per pixel.
    rotation : float
        Small rotation of this detector within the focal plane, degrees.
    shape : tuple of int
        Image shape (ny, nx).
    distortion : float
        Corner displacement of the polynomial distortion in pixels (0 for none).
    distortion_gains : tuple of float
        Per-detector multipliers of the distortion terms, so detectors differ.
    """

    exposure: int
    detector: int
    ra_v1: float
    dec_v1: float
    roll: float
    offset: tuple
    scale: float
    rotation: float
    shape: tuple
    distortion: float = 0.0
    distortion_gains: tuple = ()


def _detector_offsets(n_detectors, size):
    """Focal-plane centres (arcsec) of detectors on a grid, one of them at the origin.

    The detector nearest the middle of the grid sits on the boresight so the scene
    centre falls on a detector (not in a gap) whatever the number of detectors.
    """
    ncols = int(np.ceil(np.sqrt(n_detectors)))
    nrows = int(np.ceil(n_detectors / ncols))
    pitch = size * PIXEL_SCALE * (1.0 + GAP_FRACTION)
    index = np.arange(n_detectors)
    cols = index % ncols - (ncols - 1) / 2.0
    rows = index // ncols - (nrows - 1) / 2.0
    central = int(np.argmin(np.hypot(cols, rows)))
    return np.column_stack([(cols - cols[central]) * pitch, (rows - rows[central]) * pitch])


def plan_layout(
    rng, *, ra, dec, n_exposures, n_detectors, size, roll=None, distortion=False
):
    """Choose pointings for every image of a dithered association.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the dithers, rolls and detector properties.
    ra, dec : float
        Scene centre in degrees; every exposure covers it.
    n_exposures, n_detectors, size : int
        Number of exposures, detectors per exposure, and pixels on a side.
    roll : float or None
        Mean position angle of the focal plane +y axis in degrees; drawn at random
        when None.
    distortion : bool or float
        False for none; True for the default mild distortion; a number gives
        the corner displacement in pixels.

    Returns
    -------
    list of Placement
        In exposure-then-detector order.
    """
    if roll is None:
        roll = float(rng.uniform(0.0, 360.0))
    if distortion is True:
        corner = DISTORTION_CORNER * size / DETECTOR_SIZE
    else:
        corner = float(distortion or 0.0)

    # Detector properties belong to the hardware, so they are drawn once and
    # shared by every exposure.
    offsets = _detector_offsets(n_detectors, size)
    scales = PIXEL_SCALE * (1.0 + 2.0e-4 * np.clip(rng.standard_normal(n_detectors), -2, 2))
    rotations = rng.uniform(-0.02, 0.02, n_detectors)
    n_terms = len(_DISTORTION_X) + len(_DISTORTION_Y)
    gains = 1.0 + 0.2 * np.clip(rng.standard_normal((n_detectors, n_terms)), -2, 2)

    placements = []
    for exposure in range(1, n_exposures + 1):
        if exposure == 1:
            dither, exposure_roll = np.zeros(2), roll
        else:
            dither = rng.uniform(-DITHER_FRACTION, DITHER_FRACTION, 2) * size * PIXEL_SCALE
            exposure_roll = roll + rng.uniform(-ROLL_JITTER, ROLL_JITTER)
        xi, eta = _rotation(exposure_roll) @ dither
        ra_v1, dec_v1 = from_tangent_plane(xi, eta, ra, dec)
        for index in range(n_detectors):
            placements.append(
                Placement(
                    exposure=exposure,
                    detector=index + 1,
                    ra_v1=float(ra_v1),
                    dec_v1=float(dec_v1),
                    roll=float(exposure_roll % 360.0),
                    offset=(float(offsets[index, 0]), float(offsets[index, 1])),
                    scale=float(scales[index]),
                    rotation=float(rotations[index]),
                    shape=(size, size),
                    distortion=corner,
                    distortion_gains=tuple(float(g) for g in gains[index]),
                )
            )
    return placements


@dataclass(frozen=True)
class PointingError:
    """How far an exposure's recorded pointing is from its true one.

    Attributes
    ----------
    east, north : float
        Offset of the recorded boresight from the true one on the sky, arcsec
        (east is along increasing RA, i.e. a change of RA times cos(Dec)).
    roll : float
        Recorded roll minus true roll, degrees (position angle, east of north).
    """

    east: float = 0.0
    north: float = 0.0
    roll: float = 0.0

    def __bool__(self):
        return bool(self.east or self.north or self.roll)


def draw_pointing_errors(rng, n_exposures, pointing_error=0.0, roll_error=0.0):
    """Draw one pointing and roll error per exposure.

    Every exposure is off by exactly ``pointing_error`` arcsec, in a random
    direction, and its roll by exactly ``roll_error`` degrees with a random
    sign. Fixed magnitudes (rather than Gaussian ones) make a simulation with
    "0.3 arcsec errors" mean what it says for every exposure, while the random
    directions still make exposures disagree with each other (by up to twice
    the magnitude), as alignment must correct.

    Parameters
    ----------
    rng : numpy.random.Generator
        A stream of its own: the directions and signs are drawn whatever the
        magnitudes, so a magnitude scales the errors without turning them, and
        no other random choice of the simulation changes.
    n_exposures : int
    pointing_error : float
        Magnitude of the boresight error, arcsec (>= 0).
    roll_error : float
        Magnitude of the roll error, degrees (>= 0).

    Returns
    -------
    list of PointingError
        One per exposure, in order.

    Examples
    --------
    >>> import numpy as np
    >>> errors = draw_pointing_errors(np.random.default_rng(1), 2, 0.3, 0.01)
    >>> [round(float(np.hypot(e.east, e.north)), 6) for e in errors]
    [0.3, 0.3]
    """
    angles = rng.uniform(0.0, 2.0 * np.pi, n_exposures)
    signs = np.where(rng.uniform(size=n_exposures) < 0.5, -1.0, 1.0)
    return [
        PointingError(
            east=float(pointing_error * np.sin(a)),
            north=float(pointing_error * np.cos(a)),
            roll=float(roll_error * s),
        )
        for a, s in zip(angles, signs, strict=True)
    ]


def recorded_placement(placement, error):
    """The placement an exposure's file records when its pointing is in error.

    The boresight moves by the error on the sky and the roll turns about the
    boresight, so all detectors of the exposure move together: those off the
    boresight also move by the roll error times their distance from it, as
    for a real attitude error.

    Parameters
    ----------
    placement : Placement
        The true placement.
    error : PointingError

    Returns
    -------
    Placement
        ``placement`` itself when there is no error.
    """
    if not error:
        return placement
    ra_v1, dec_v1 = from_tangent_plane(error.east, error.north, placement.ra_v1, placement.dec_v1)
    return replace(
        placement,
        ra_v1=float(ra_v1),
        dec_v1=float(dec_v1),
        roll=float((placement.roll + error.roll) % 360.0),
    )


def _polynomial(degree, coefficients):
    """A Polynomial2D with the given {(i, j): c} coefficients of x**i * y**j."""
    params = {f"c{i}_{j}": value for (i, j), value in coefficients.items()}
    return models.Polynomial2D(degree, **params)


def _distortion_model(placement):
    """Distortion in normalised detector coordinates, with a fitted inverse attached."""
    relative = placement.distortion / ((placement.shape[1] - 1) / 2.0)
    gains = iter(placement.distortion_gains)
    x_terms = {(1, 0): 1.0}
    x_terms.update({k: relative * v * next(gains) for k, v in _DISTORTION_X.items()})
    y_terms = {(0, 1): 1.0}
    y_terms.update({k: relative * v * next(gains) for k, v in _DISTORTION_Y.items()})
    forward = models.Mapping((0, 1, 0, 1)) | (_polynomial(3, x_terms) & _polynomial(3, y_terms))

    # The inverse is fitted over a grid slightly larger than the detector so that
    # positions just off its edges still invert accurately.
    grid = np.linspace(-1.1, 1.1, 45)
    uu, vv = (a.ravel() for a in np.meshgrid(grid, grid))
    up, vp = forward(uu, vv)
    powers = [(i, j) for i in range(_INVERSE_DEGREE + 1) for j in range(_INVERSE_DEGREE + 1 - i)]
    design = np.column_stack([up**i * vp**j for i, j in powers])
    cx = np.linalg.lstsq(design, uu, rcond=None)[0]
    cy = np.linalg.lstsq(design, vv, rcond=None)[0]
    inverse = models.Mapping((0, 1, 0, 1)) | (
        _polynomial(_INVERSE_DEGREE, dict(zip(powers, cx, strict=True)))
        & _polynomial(_INVERSE_DEGREE, dict(zip(powers, cy, strict=True)))
    )
    forward.inverse = inverse
    return forward


def build_gwcs(placement):
    """Build the gwcs of one image: 0-based pixels to ICRS degrees.

    Parameters
    ----------
    placement : Placement
        Where the image points.

    Returns
    -------
    gwcs.WCS
        With frames ``detector`` and ``world`` and a bounding box covering the
        pixels' outer edges.
    """
    ny, nx = placement.shape
    half = (nx - 1) / 2.0
    to_normalised = (models.Shift(-(nx - 1) / 2.0) & models.Shift(-(ny - 1) / 2.0)) | (
        models.Scale(1.0 / half) & models.Scale(1.0 / half)
    )
    # Detector pixels -> focal plane (parity flip, detector scale and rotation),
    # then the exposure's roll; degrees on the projection plane.
    parity = np.array([[-1.0, 0.0], [0.0, 1.0]])
    matrix = _rotation(placement.roll) @ _rotation(placement.rotation) @ parity
    matrix = matrix * placement.scale * half / 3600.0
    translation = _rotation(placement.roll) @ np.asarray(placement.offset) / 3600.0
    affine = models.AffineTransformation2D(matrix=matrix, translation=translation)
    sky = models.Pix2Sky_TAN() | models.RotateNative2Celestial(
        placement.ra_v1, placement.dec_v1, 180.0
    )
    if placement.distortion:
        transform = to_normalised | _distortion_model(placement) | affine | sky
    else:
        transform = to_normalised | affine | sky

    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = cf.CelestialFrame(
        reference_frame=coord.ICRS(),
        name="world",
        unit=(u.deg, u.deg),
        axes_names=("lon", "lat"),
    )
    wcs = gwcs_wcs.WCS([(detector, transform), (world, None)])
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return wcs


def _sky_offsets(ra, dec, ra_ref, dec_ref):
    """Small offsets (arcsec, east and north) of positions from reference positions."""
    dra = (np.asarray(ra) - ra_ref + 180.0) % 360.0 - 180.0
    return dra * np.cos(np.deg2rad(dec_ref)) * 3600.0, (np.asarray(dec) - dec_ref) * 3600.0


class ImageGeometry:
    """One image's placement with its gwcs and exact pixel/sky conversions.

    Parameters
    ----------
    placement : Placement
        Where the image points.
    """

    def __init__(self, placement):
        self.placement = placement
        self.shape = placement.shape
        self.wcs = build_gwcs(placement)
        self._forward = self.wcs.forward_transform
        self._backward = self.wcs.backward_transform

    def pixel_to_world(self, x, y):
        """Sky position (degrees) of 0-based pixel coordinates, ignoring the bounding box."""
        return self._forward(np.asarray(x, dtype=float), np.asarray(y, dtype=float))

    def jacobian(self, x, y):
        """Local affine WCS: arcsec (east, north) per pixel (x, y) at each position.

        Parameters
        ----------
        x, y : array-like
            0-based pixel coordinates.

        Returns
        -------
        numpy.ndarray
            Shape (n, 2, 2); ``J[:, 0, 1]`` is the eastward shift per pixel in y.
        """
        x = np.atleast_1d(np.asarray(x, dtype=float))
        y = np.atleast_1d(np.asarray(y, dtype=float))
        n, h = x.size, 0.5
        xs = np.concatenate([x - h, x + h, x, x])
        ys = np.concatenate([y, y, y - h, y + h])
        ra, dec = self._forward(xs, ys)
        ra_c, dec_c = self._forward(x, y)
        east, north = _sky_offsets(ra, dec, np.tile(ra_c, 4), np.tile(dec_c, 4))
        jac = np.empty((n, 2, 2))
        jac[:, 0, 0] = (east[n : 2 * n] - east[:n]) / (2 * h)
        jac[:, 1, 0] = (north[n : 2 * n] - north[:n]) / (2 * h)
        jac[:, 0, 1] = (east[3 * n :] - east[2 * n : 3 * n]) / (2 * h)
        jac[:, 1, 1] = (north[3 * n :] - north[2 * n : 3 * n]) / (2 * h)
        return jac

    def world_to_pixel(self, ra, dec):
        """0-based pixel coordinates of sky positions, ignoring the bounding box.

        The distortion's inverse is a fitted polynomial, so positions are refined
        with Newton steps on the forward transform: the truth positions of the
        scene are where the forward transform puts them.

        Parameters
        ----------
        ra, dec : array-like
            Sky positions in degrees.

        Returns
        -------
        x, y : numpy.ndarray
        """
        ra = np.atleast_1d(np.asarray(ra, dtype=float))
        dec = np.atleast_1d(np.asarray(dec, dtype=float))
        x, y = self._backward(ra, dec)
        if not self.placement.distortion:
            return np.asarray(x), np.asarray(y)
        for _ in range(2):
            ra1, dec1 = self._forward(x, y)
            east, north = _sky_offsets(ra, dec, ra1, dec1)
            step = np.linalg.solve(self.jacobian(x, y), np.stack([east, north], axis=-1)[..., None])
            x = x + step[:, 0, 0]
            y = y + step[:, 1, 0]
        return x, y

    def contains(self, ra, dec, margin=0.0):
        """Whether sky positions fall on the image, at least ``margin`` pixels from its edges."""
        x, y = self.world_to_pixel(ra, dec)
        ny, nx = self.shape
        lo = -0.5 + margin
        return (x >= lo) & (x <= nx - 0.5 - margin) & (y >= lo) & (y <= ny - 0.5 - margin)

    @cached_property
    def corners(self):
        """Sky positions (ra, dec arrays) of the outer pixel corners, in pixel order."""
        ny, nx = self.shape
        return self.pixel_to_world(
            np.array([-0.5, nx - 0.5, nx - 0.5, -0.5]), np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
        )

    @property
    def s_region(self):
        """The footprint as an ``s_region`` string: ``POLYGON ICRS ra1 dec1 ...``."""
        ra, dec = self.corners
        points = " ".join(f"{r:.9f} {d:.9f}" for r, d in zip(ra, dec, strict=True))
        return f"POLYGON ICRS {points}"

    def wcsinfo(self):
        """Values for ``meta.wcsinfo``: reference pointing of the image centre."""
        p = self.placement
        ny, nx = self.shape
        ra_ref, dec_ref = self.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0)
        return {
            "aperture_name": f"WFI{p.detector:02d}_FULL",
            "v2_ref": float(p.offset[0]),
            "v3_ref": float(p.offset[1]),
            "vparity": -1,
            "v3yangle": 0.0,
            "ra_ref": float(ra_ref),
            "dec_ref": float(dec_ref),
            "roll_ref": float((p.roll + p.rotation) % 360.0),
            "s_region": self.s_region,
        }
