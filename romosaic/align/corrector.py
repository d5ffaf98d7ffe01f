"""A tangent-plane WCS correction that fits any gwcs, and its tweakwcs adapter.

tweakwcs fits a linear transformation (matrix and shift) between matched
positions in a tangent plane, then asks a *corrector* to fold it into the
image's WCS. Its Roman and JWST correctors insert the correction between the
``v2v3`` frame and the sky, so they need a gwcs built by the reference's
``assign_wcs`` (frames ``detector → v2v3 → world`` and the telescope's
``v2_ref``/``v3_ref``/``roll_ref``). Images made by other software, romosaic's
simulator among them, have a plain ``detector → world`` gwcs, so romosaic
corrects on the sky side instead:

    world → tangent plane at a fixed point → matrix, shift → back to the sky

appended to the transform that ends in the world frame. The projection and
its inverse are exact (TAN), so the corrected WCS keeps an analytic inverse
whenever the original has one, keeps every frame and the bounding box, and
saves to ASDF like any gwcs. All images of an association share one tangent
point, so corrections fitted in that plane apply to every image exactly,
without the plane-to-plane conversion tweakwcs would otherwise linearise.

Applying a second correction about the same point (absolute after
relative) combines it with the first into one affine transformation, so one
alignment leaves one correction block, named `CORRECTION_NAME`.
"""

from copy import deepcopy

import gwcs
import numpy as np
from astropy.modeling import CompoundModel, models
from tweakwcs.correctors import WCSCorrector

from ..transforms import skytopix
from ..wcs_utils import s_region_polygon

__all__ = [
    "CORRECTION_NAME",
    "SkyTangentCorrector",
    "apply_tangent_correction",
    "correction_between",
    "corrected_wcsinfo",
    "find_tangent_correction",
    "sky_to_tangent",
    "tangent_to_sky",
]

#: Name of the correction block romosaic appends to a gwcs.
CORRECTION_NAME = "romosaic_tangent_correction"

_ARCSEC_PER_DEG = 3600.0


def _projection(ra0, dec0):
    """Sky (deg) → tangent plane (deg) at (ra0, dec0), xi east and eta north."""
    return models.RotateCelestial2Native(ra0, dec0, 180.0) | models.Sky2Pix_TAN()


def _deprojection(ra0, dec0):
    return models.Pix2Sky_TAN() | models.RotateNative2Celestial(ra0, dec0, 180.0)


def sky_to_tangent(ra, dec, ra0, dec0):
    """Tangent-plane coordinates (arcsec) of sky positions (deg) about (ra0, dec0).

    Parameters
    ----------
    ra, dec : array_like
        Degrees.
    ra0, dec0 : float
        Tangent point in degrees.

    Returns
    -------
    xi, eta : numpy.ndarray
        Arcsec; ``xi`` grows towards the east, ``eta`` towards the north.

    Examples
    --------
    >>> xi, eta = sky_to_tangent(10.001, 20.0, 10.0, 20.0)
    >>> round(float(xi), 4), round(float(eta), 6)  # eta: the tangent plane's curvature
    (3.3829, 1e-05)
    """
    xi, eta = _projection(ra0, dec0)(np.asarray(ra, float), np.asarray(dec, float))
    return np.asarray(xi) * _ARCSEC_PER_DEG, np.asarray(eta) * _ARCSEC_PER_DEG


def tangent_to_sky(xi, eta, ra0, dec0):
    """Inverse of `sky_to_tangent`: tangent-plane arcsec → RA, Dec in degrees."""
    ra, dec = _deprojection(ra0, dec0)(np.asarray(xi, float) / _ARCSEC_PER_DEG,
                                       np.asarray(eta, float) / _ARCSEC_PER_DEG)
    return np.asarray(ra) % 360.0, np.asarray(dec)


def _correction_model(ra0, dec0, matrix, shift_arcsec):
    """world → world: the affine map in the tangent plane at (ra0, dec0)."""
    affine = models.AffineTransformation2D(
        matrix=np.asarray(matrix, float),
        translation=np.asarray(shift_arcsec, float) / _ARCSEC_PER_DEG,
    )
    model = _projection(ra0, dec0) | affine | _deprojection(ra0, dec0)
    model.name = CORRECTION_NAME
    return model


def _last_step_index(wcs):
    """Index of the pipeline step whose transform leads into the world frame."""
    return len(wcs.pipeline) - 2


def find_tangent_correction(wcs):
    """The correction romosaic applied to a gwcs, if any.

    Returns
    -------
    (ra0, dec0, matrix, shift_arcsec) or None
    """
    transform = wcs.pipeline[_last_step_index(wcs)].transform
    if getattr(transform, "name", None) == CORRECTION_NAME:
        correction = transform
    elif (isinstance(transform, CompoundModel) and transform.op == "|"
          and getattr(transform.right, "name", None) == CORRECTION_NAME):
        correction = transform.right
    else:
        return None
    rotate = correction[0]
    affine = correction[2]
    ra0, dec0 = float(rotate.lon.value), float(rotate.lat.value)
    return (ra0, dec0, np.array(affine.matrix.value, float),
            np.array(affine.translation.value, float) * _ARCSEC_PER_DEG)


def apply_tangent_correction(wcs, matrix, shift_arcsec, ra0, dec0):
    """A copy of a gwcs with a tangent-plane correction applied on the sky side.

    The corrected WCS maps a pixel to ``T(sky)``, where ``T`` projects onto the
    tangent plane at (ra0, dec0), applies ``matrix @ p + shift`` and projects
    back. A correction already applied by romosaic about the same point is
    combined with the new one (new after old); one about another point (an
    image aligned earlier with other images) is kept, and the new block
    follows it.

    Parameters
    ----------
    wcs : gwcs.wcs.WCS
        Pixel → ICRS degrees; not modified.
    matrix : (2, 2) array_like
        Linear part, in the tangent plane.
    shift_arcsec : (2,) array_like
        Shift in arcsec (east, north), applied after ``matrix``.
    ra0, dec0 : float
        Tangent point, degrees.

    Returns
    -------
    gwcs.wcs.WCS
        Same frames, bounding box and pixel shape.

    """
    matrix = np.asarray(matrix, float)
    shift = np.asarray(shift_arcsec, float)
    pipeline = deepcopy(wcs.pipeline)
    index = _last_step_index(wcs)
    step = pipeline[index]
    transform = step.transform
    previous = find_tangent_correction(wcs)
    base = transform
    if previous is not None:
        old_ra0, old_dec0, old_matrix, old_shift = previous
        if (np.isclose(old_ra0, ra0, rtol=0, atol=1e-12)
                and np.isclose(old_dec0, dec0, rtol=0, atol=1e-12)):
            matrix, shift = matrix @ old_matrix, matrix @ old_shift + shift
            base = (None if getattr(transform, "name", None) == CORRECTION_NAME
                    else transform.left)
        # About another point (an image aligned before, with other images):
        # the new block follows the old one.
    correction = _correction_model(ra0, dec0, matrix, shift)
    new_transform = correction if base is None else base | correction
    # A two-frame gwcs keeps its bounding box on this very transform.
    bounding_box = wcs.bounding_box if index == 0 else None
    pipeline[index] = gwcs.wcs.Step(step.frame, new_transform)
    corrected = gwcs.WCS(pipeline, name=wcs.name)
    if bounding_box is not None:
        corrected.bounding_box = bounding_box
    if wcs.pixel_shape is not None:
        corrected.pixel_shape = wcs.pixel_shape
    return corrected


def correction_between(old_wcs, new_wcs):
    """The sky → sky map that turns ``old_wcs`` into ``new_wcs``.

    ``new_wcs`` must be ``old_wcs`` with a correction applied by
    `apply_tangent_correction`: the map is that correction alone, without any
    correction ``old_wcs`` already carried.

    Parameters
    ----------
    old_wcs, new_wcs : gwcs.wcs.WCS

    Returns
    -------
    callable
        ``(ra, dec) → (ra, dec)`` in degrees; the identity when ``new_wcs``
        carries no romosaic correction.
    """
    new = find_tangent_correction(new_wcs)
    if new is None:
        return lambda ra, dec: (np.asarray(ra, float), np.asarray(dec, float))
    ra0, dec0, matrix, shift = new
    old = find_tangent_correction(old_wcs)
    if old is not None and np.isclose(old[0], ra0, rtol=0, atol=1e-12) and np.isclose(
            old[1], dec0, rtol=0, atol=1e-12):
        # Both corrections are affine in the same plane: new = step ∘ old.
        inverse = np.linalg.inv(old[2])
        matrix, shift = matrix @ inverse, shift - matrix @ inverse @ old[3]

    def to_corrected(ra, dec):
        xi, eta = sky_to_tangent(ra, dec, ra0, dec0)
        xi, eta = (matrix[0, 0] * xi + matrix[0, 1] * eta + shift[0],
                   matrix[1, 0] * xi + matrix[1, 1] * eta + shift[1])
        return tangent_to_sky(xi, eta, ra0, dec0)

    return to_corrected


def corrected_wcsinfo(wcsinfo, old_wcs, new_wcs, shape):
    """``meta.wcsinfo`` entries that follow a WCS correction.

    The telescope's reference point (``ra_ref``, ``dec_ref``) moves with the
    correction, ``roll_ref`` turns by the rotation the correction gives the
    sky around it, and ``s_region`` is the corrected footprint.

    Parameters
    ----------
    wcsinfo : mapping
        The image's ``meta.wcsinfo`` (only the keys present are updated).
    old_wcs, new_wcs : gwcs.wcs.WCS
        Before and after the correction.
    shape : (int, int)
        The image's shape.

    Returns
    -------
    dict
        The updated entries.
    """
    updated = {"s_region": s_region_polygon(new_wcs, shape)} if "s_region" in wcsinfo else {}
    if "ra_ref" not in wcsinfo or "dec_ref" not in wcsinfo:
        return updated
    to_corrected = correction_between(old_wcs, new_wcs)
    ra_ref, dec_ref = float(wcsinfo["ra_ref"]), float(wcsinfo["dec_ref"])
    # A point 10" north of the reference point, before and after.
    ra, dec = to_corrected([ra_ref, ra_ref], [dec_ref, dec_ref + 10.0 / _ARCSEC_PER_DEG])
    updated["ra_ref"], updated["dec_ref"] = float(ra[0]), float(dec[0])
    if "roll_ref" in wcsinfo:
        east, north = sky_to_tangent(ra[1], dec[1], ra[0], dec[0])
        turn = np.degrees(np.arctan2(east, north))
        updated["roll_ref"] = float((float(wcsinfo["roll_ref"]) + turn) % 360.0)
    return updated


class SkyTangentCorrector(WCSCorrector):
    """tweakwcs corrector for any gwcs, with a tangent plane at a fixed sky point.

    Parameters
    ----------
    wcs : gwcs.wcs.WCS
        The image's WCS (pixel → ICRS degrees). A corrected copy is kept in
        ``.wcs``; the original is never modified.
    ra0, dec0 : float
        Tangent point in degrees; the same for every image aligned together.
    shape : (int, int), optional
        Image shape ``(ny, nx)``, for the bounding box when the WCS has none.
    meta : dict, optional
        tweakwcs metadata (``catalog``, ``name``, ``group_id``).
    """

    units = "arcsec"

    def __init__(self, wcs, ra0, dec0, shape=None, meta=None):
        super().__init__(wcs, meta=meta)
        self.ra0 = float(ra0)
        self.dec0 = float(dec0)
        self._shape = shape

    def set_correction(self, matrix=((1, 0), (0, 1)), shift=(0, 0), ref_tpwcs=None,
                       meta=None, **kwargs):
        matrix = np.asarray(matrix, float)
        shift = np.asarray(shift, float)
        if ref_tpwcs is not None and not self._same_plane(ref_tpwcs):
            matrix, shift = _to_own_plane(ref_tpwcs, self, matrix, shift)
        self._wcs = apply_tangent_correction(self._wcs, matrix, shift, self.ra0, self.dec0)
        super().set_correction(matrix=matrix, shift=shift, meta=meta, **kwargs)

    def _same_plane(self, other):
        return (isinstance(other, SkyTangentCorrector)
                and np.isclose(other.ra0, self.ra0, rtol=0, atol=1e-12)
                and np.isclose(other.dec0, self.dec0, rtol=0, atol=1e-12))

    def det_to_world(self, x, y):
        ra, dec = self._wcs.forward_transform(np.asarray(x, float), np.asarray(y, float))
        return np.asarray(ra), np.asarray(dec)

    def world_to_det(self, ra, dec):
        # romosaic's inverse: exact to the forward transform, and it works on
        # WCSs gwcs cannot invert (the Roman simulator's polynomial chains).
        x, y = skytopix(self._wcs, np.asarray(ra, float), np.asarray(dec, float),
                        bounding_box=False)
        return np.asarray(x), np.asarray(y)

    def det_to_tanp(self, x, y):
        return self.world_to_tanp(*self.det_to_world(x, y))

    def tanp_to_det(self, x, y):
        return self.world_to_det(*self.tanp_to_world(x, y))

    def world_to_tanp(self, ra, dec):
        return sky_to_tangent(ra, dec, self.ra0, self.dec0)

    def tanp_to_world(self, x, y):
        return tangent_to_sky(x, y, self.ra0, self.dec0)

    def _get_tanp_center_pixel_scale(self):
        # The shared tangent point may lie off this image; measure the scale
        # at the image's centre instead.
        (x0, x1), (y0, y1) = self.bounding_box
        return self.tanp_pixel_scale((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    @property
    def bounding_box(self):
        box = self._owcs.bounding_box
        if box is not None:
            (x0, x1), (y0, y1) = (tuple(float(v) for v in interval) for interval in box)
            return ((x0, x1), (y0, y1))
        if self._shape is not None:
            ny, nx = self._shape
            return ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
        return None


def _to_own_plane(ref, target, matrix, shift):
    """Express a correction fitted in ``ref``'s tangent plane in ``target``'s.

    Both planes are related by a smooth map; near the image it is linear, so
    the correction is conjugated by the local affine map between them.
    """
    (x0, x1), (y0, y1) = target.bounding_box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    ra, dec = target.det_to_world(np.array([cx, cx + 1.0, cx]), np.array([cy, cy, cy + 1.0]))
    px, py = ref.world_to_tanp(ra, dec)
    qx, qy = target.world_to_tanp(ra, dec)
    # Affine maps P (pixel → ref plane) and Q (pixel → target plane).
    p_lin = np.array([[px[1] - px[0], px[2] - px[0]], [py[1] - py[0], py[2] - py[0]]])
    q_lin = np.array([[qx[1] - qx[0], qx[2] - qx[0]], [qy[1] - qy[0], qy[2] - qy[0]]])
    r = q_lin @ np.linalg.inv(p_lin)  # ref plane → target plane
    p0 = np.array([px[0], py[0]])
    q0 = np.array([qx[0], qy[0]])
    # target point t = q0 + r (p - p0); correction in ref: p' = M p + s.
    new_matrix = r @ matrix @ np.linalg.inv(r)
    new_shift = q0 + r @ (matrix @ p0 + shift - p0) - new_matrix @ q0
    return new_matrix, new_shift
