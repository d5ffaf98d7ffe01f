"""Relative and absolute alignment of exposure groups with tweakwcs.

`align_images` takes, for every image, its WCS, shape, exposure group and a
table of source pixel positions, and returns corrected WCSs and a record of
each fit:

1. **Relative.** With two or more exposure groups, tweakwcs matches the
   groups' sources to each other (``XYXYMatch``: a 2-D histogram of offsets
   within ``searchrad``, then ``tolerance``) and fits one linear
   transformation per group (``fitgeometry``), with sigma clipping. One group
   is the reference and keeps its WCS. All detectors of an exposure move
   together: their catalogs are fitted as one.
2. **Absolute.** With a reference catalogue, the groups aligned in step 1
   move together as one block (so the relative solution is kept) and are
   fitted to the catalogue; a group that could not be aligned relatively is
   fitted to the catalogue on its own.

A fit that fails (too few matches, or a shift larger than the search radius,
which no genuine match can give) leaves the WCS as it was and says why in the
record. Everything here works on arrays, gwcs objects and tables; the
``tweakreg`` step (`romosaic.steps.tweakreg_step`) reads and writes models.
"""

import contextlib
import logging
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from tweakwcs.imalign import align_wcs
from tweakwcs.matchutils import XYXYMatch

from ..wcs_utils import footprint
from .corrector import SkyTangentCorrector, sky_to_tangent

__all__ = [
    "FIT_GEOMETRIES",
    "AlignImage",
    "AlignmentResult",
    "MatchParameters",
    "align_images",
    "field_tangent_point",
    "select_field",
]

log = logging.getLogger(__name__)

#: Fit geometries tweakwcs offers (shift; rotation and shift; rotation, one
#: scale and shift; a general linear transformation).
FIT_GEOMETRIES = ("shift", "rshift", "rscale", "general")

_ABSOLUTE_BLOCK = "__relatively_aligned__"


@dataclass(frozen=True)
class MatchParameters:
    """Matching and fitting parameters of one alignment stage.

    Attributes
    ----------
    searchrad : float
        Search radius for matches, arcsec.
    use2dhist : bool
        Find the initial offset from a 2-D histogram of all pair offsets.
    separation : float
        Minimum separation of sources in a catalog, arcsec (closer pairs are
        left out of the matching).
    tolerance : float
        Matching tolerance after the initial offset, arcsec.
    fitgeometry : str
        One of `FIT_GEOMETRIES`.
    nclip : int
        Sigma-clipping iterations of the fit.
    sigma : float
        Clipping limit, in units of the fit's RMS.
    minobj : int
        Fewest matched sources a fit accepts.
    """

    searchrad: float = 2.0
    use2dhist: bool = True
    separation: float = 1.0
    tolerance: float = 0.7
    fitgeometry: str = "rshift"
    nclip: int = 3
    sigma: float = 3.0
    minobj: int = 15

    def matcher(self):
        return XYXYMatch(searchrad=self.searchrad, separation=self.separation,
                         use2dhist=self.use2dhist, tolerance=self.tolerance,
                         xoffset=0.0, yoffset=0.0)


@dataclass
class AlignImage:
    """One image to align.

    Attributes
    ----------
    name : str
        For messages.
    wcs : gwcs.wcs.WCS
        Not modified.
    shape : (int, int)
        ``(ny, nx)``.
    group_id : str
        Exposure group; images of one group get the same correction.
    catalog : astropy.table.Table
        Source pixel positions ``x``, ``y`` (0-based), optional ``weight``.
    """

    name: str
    wcs: object
    shape: tuple
    group_id: str
    catalog: Table


@dataclass
class AlignmentResult:
    """What `align_images` did.

    Attributes
    ----------
    wcs : list
        Per image, the corrected WCS, or None where no fit succeeded.
    fits : list of dict
        Per image, the fit record (see `align_images`).
    tangent_point : (float, float)
        RA, Dec (degrees) of the tangent plane the fits are expressed in.
    refcat : astropy.table.Table or None
        The reference-catalogue rows over the field, as used.
    """

    wcs: list
    fits: list
    tangent_point: tuple
    refcat: Table = None
    messages: list = field(default_factory=list)


def field_tangent_point(images):
    """RA, Dec (degrees) of the mean direction of the images' centres."""
    vectors = []
    for image in images:
        ny, nx = image.shape
        ra, dec = image.wcs.forward_transform((nx - 1) / 2.0, (ny - 1) / 2.0)
        ra, dec = np.deg2rad(float(ra)), np.deg2rad(float(dec))
        vectors.append([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    v = np.mean(vectors, axis=0)
    ra = np.rad2deg(np.arctan2(v[1], v[0])) % 360.0
    dec = np.rad2deg(np.arctan2(v[2], np.hypot(v[0], v[1])))
    return float(ra), float(dec)


def select_field(refcat, images, tangent_point, margin_arcsec):
    """Reference-catalogue rows that fall on (or within a margin of) any image.

    Parameters
    ----------
    refcat : astropy.table.Table
        With ``RA`` and ``DEC`` in degrees.
    images : list of AlignImage
    tangent_point : (float, float)
    margin_arcsec : float
        How far beyond an image's edge a source still counts (a misaligned
        WCS may be off by up to the search radius).

    Returns
    -------
    astropy.table.Table
    """
    ra0, dec0 = tangent_point
    # Keep only the hemisphere around the field: the tangent projection of
    # far-away rows is meaningless.
    ra, dec = np.deg2rad(np.asarray(refcat["RA"], float)), np.deg2rad(np.asarray(refcat["DEC"],
                                                                               float))
    cos_distance = (np.sin(dec) * np.sin(np.deg2rad(dec0))
                    + np.cos(dec) * np.cos(np.deg2rad(dec0)) * np.cos(ra - np.deg2rad(ra0)))
    near = cos_distance > np.cos(np.deg2rad(10.0))
    keep = np.zeros(len(refcat), bool)
    if not near.any():
        return refcat[keep]
    xi, eta = sky_to_tangent(np.asarray(refcat["RA"])[near], np.asarray(refcat["DEC"])[near],
                             ra0, dec0)
    inside = np.zeros(xi.size, bool)
    for image in images:
        fra, fdec = footprint(image.wcs, image.shape, points_per_edge=5)
        fx, fy = sky_to_tangent(fra, fdec, ra0, dec0)
        inside |= ((xi >= fx.min() - margin_arcsec) & (xi <= fx.max() + margin_arcsec)
                   & (eta >= fy.min() - margin_arcsec) & (eta <= fy.max() + margin_arcsec))
    keep[np.flatnonzero(near)[inside]] = True
    return refcat[keep]


@contextlib.contextmanager
def _quiet_tweakwcs(level=logging.WARNING):
    """tweakwcs logs dozens of lines per image at INFO; romosaic logs a summary."""
    logger = logging.getLogger("tweakwcs")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _image_catalog(image, use_weights):
    catalog = image.catalog
    (x0, x1), (y0, y1) = _bounds(image)
    x = np.asarray(catalog["x"], float)
    y = np.asarray(catalog["y"], float)
    inside = np.isfinite(x) & np.isfinite(y) & (x > x0) & (x < x1) & (y > y0) & (y < y1)
    columns = {"x": x[inside], "y": y[inside]}
    if use_weights:
        columns["weight"] = np.asarray(catalog["weight"], float)[inside]
    return Table(columns)


def _bounds(image):
    box = image.wcs.bounding_box
    if box is not None:
        return tuple(tuple(float(v) for v in interval) for interval in box)
    ny, nx = image.shape
    return ((-0.5, nx - 0.5), (-0.5, ny - 0.5))


def _stage_record(info, params, reference=None):
    """The plain-value summary of a tweakwcs ``fit_info`` dictionary."""
    status = str(info.get("status", "FAILED: not fitted"))
    record = {"status": status, "fitgeometry": params.fitgeometry}
    if reference is not None:
        record["reference"] = str(reference)
    if status != "SUCCESS":
        return record
    matrix = np.asarray(info["matrix"], float)
    record.update(
        shift=[float(v) for v in info["shift"]],
        rotation=float(info.get("proper_rot", np.rad2deg(np.arctan2(matrix[1, 0],
                                                                       matrix[0, 0])))),
        scale=float(info.get("<scale>", 1.0)),
        skew=float(info.get("skew", 0.0)),
        rmse=float(info.get("rmse", np.nan)),
        mae=float(info.get("mae", np.nan)),
        nmatches=int(info.get("nmatches", 0)),
        matrix=[[float(v) for v in row] for row in matrix],
    )
    return record


def _run_stage(correctors, refcat, params, tangent, *, enforce_user_order, expand_refcat):
    """One call of tweakwcs's ``align_wcs``; returns a message when it could not run."""
    ref_plane = SkyTangentCorrector(correctors[0].original_wcs, *tangent,
                                    shape=correctors[0]._shape)
    with _quiet_tweakwcs():
        try:
            align_wcs(correctors, refcat=refcat, ref_tpwcs=ref_plane,
                      enforce_user_order=enforce_user_order, expand_refcat=expand_refcat,
                      minobj=params.minobj, match=params.matcher(),
                      fitgeom=params.fitgeometry, nclip=params.nclip,
                      sigma=(params.sigma, "rmse"),
                      # The exact union of a group's footprints (spherical
                      # polygons) took 147 of 150 s for 16 images of 1024²;
                      # the convex hull serves the same purpose (choosing
                      # the order by overlap) at a negligible cost.
                      group_bb_policy=1)
        except (ValueError, RuntimeError) as error:
            # NotEnoughCatalogs is a ValueError; xyxymatch raises a
            # RuntimeError when one source matches too many.
            return " ".join(str(error).split())
    return None


def _check_shifts(correctors, saved, params, stage, records):
    """Undo fits that moved an image by more than the search radius."""
    for i, corrector in enumerate(correctors):
        record = records[i]
        if record.get("status") != "SUCCESS":
            corrector.reset(saved[i])
            continue
        (x0, x1), (y0, y1) = corrector.bounding_box
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        before = saved[i].forward_transform(cx, cy)
        after = corrector.wcs.forward_transform(cx, cy)
        bx, by = sky_to_tangent(*before, corrector.ra0, corrector.dec0)
        ax, ay = sky_to_tangent(*after, corrector.ra0, corrector.dec0)
        moved = float(np.hypot(ax - bx, ay - by))
        record["moved"] = moved
        if moved > params.searchrad:
            record["status"] = (f"FAILED: the {stage} fit moves the image by {moved:.3g} arcsec, "
                                f"more than the search radius {params.searchrad:g} arcsec "
                                "(sources mismatched)")
            corrector.reset(saved[i])


def align_images(images, *, refcat=None, relative=None, absolute=None,
                 enforce_user_order=False, expand_refcat=False, refcat_name="refcat"):
    """Align images relatively (by exposure group) and then to a reference catalogue.

    Parameters
    ----------
    images : list of AlignImage
    refcat : astropy.table.Table, optional
        ``RA``, ``DEC`` (degrees), optional ``weight``; None for relative
        alignment only.
    relative, absolute : MatchParameters, optional
        Parameters of the two stages (defaults: `MatchParameters` with
        ``searchrad`` 2″ and 6″ respectively, ``separation`` 1″ and 0.1″).
    enforce_user_order : bool, optional
        Align groups in the given order (True) or in order of overlap.
    expand_refcat : bool, optional
        Add each aligned group's sources to the relative reference catalog.
    refcat_name : str, optional
        Name of the reference catalogue in the records.

    Returns
    -------
    AlignmentResult
        ``fits[i]`` is a dict with ``status`` (``SUCCESS``, ``REFERENCE`` or
        ``FAILED: reason``), ``group_id``, ``tangent_point``,
        ``n_sources`` and, per stage that ran, ``relative`` and ``absolute``
        records (``status``, ``fitgeometry``, ``shift`` in arcsec east and
        north in the tangent plane, ``rotation`` in degrees, ``scale``,
        ``skew``, ``rmse`` and ``mae`` in arcsec, ``nmatches``, ``matrix``).
    """
    relative = relative or MatchParameters()
    absolute = absolute or MatchParameters(searchrad=6.0, separation=0.1)
    if not images:
        return AlignmentResult(wcs=[], fits=[], tangent_point=(np.nan, np.nan))
    tangent = field_tangent_point(images)
    use_weights = all("weight" in image.catalog.colnames for image in images)
    correctors = []
    for image in images:
        catalog = _image_catalog(image, use_weights)
        correctors.append(_Corrector(image.wcs, *tangent, shape=image.shape,
                                     meta={"catalog": catalog, "name": image.name,
                                           "group_id": str(image.group_id)}))
    fits = [{"group_id": str(image.group_id), "tangent_point": list(tangent),
             "n_sources": len(c.meta["catalog"])} for image, c in zip(images, correctors,
                                                                     strict=True)]
    messages = []

    groups_with_sources = {c.meta["group_id"] for c in correctors if len(c.meta["catalog"])}
    relative_ok = [False] * len(images)
    if len({c.meta["group_id"] for c in correctors}) >= 2:
        saved = [c.wcs for c in correctors]
        for c in correctors:
            c.meta.pop("fit_info", None)
        problem = None
        if len(groups_with_sources) >= 2:
            problem = _run_stage(correctors, None, relative, tangent,
                                 enforce_user_order=enforce_user_order,
                                 expand_refcat=expand_refcat)
        else:
            problem = "fewer than two exposure groups have sources"
        if problem:
            messages.append(f"relative alignment not done: {problem}")
        records = [_stage_record(c.meta.get("fit_info", {"status": f"FAILED: {problem}"}
                                                    if problem else {}), relative)
                   for c in correctors]
        for record in records:
            if record["status"] == "FAILED: not fitted":
                record["status"] = "FAILED: no sources"
        _check_shifts(correctors, saved, relative, "relative",
                      [r if r["status"] != "REFERENCE" else {"status": "REFERENCE"}
                       for r in records])
        for i, record in enumerate(records):
            fits[i]["relative"] = record
            relative_ok[i] = record["status"] in ("SUCCESS", "REFERENCE")
        if not problem:
            # A block that is only the reference group aligned nothing.
            aligned = {c.meta["group_id"] for c, ok in zip(correctors, relative_ok, strict=True)
                       if ok}
            if len(aligned) < 2:
                relative_ok = [False] * len(images)

    used_refcat = None
    absolute_ok = [False] * len(images)
    if refcat is not None:
        used_refcat = select_field(refcat, images, tangent, absolute.searchrad + 1.0)
        used_refcat.meta["name"] = refcat_name
        saved = [c.wcs for c in correctors]
        for c, ok in zip(correctors, relative_ok, strict=True):
            c.meta.pop("fit_info", None)
            # Groups aligned to each other move together; the others alone.
            c.meta["group_id"] = _ABSOLUTE_BLOCK if ok else c.meta["group_id"]
        if len(used_refcat) == 0:
            problem = f"{refcat_name}: no reference source falls on the images"
        elif not groups_with_sources:
            problem = "no image has sources"
        else:
            problem = _run_stage(correctors, used_refcat, absolute, tangent,
                                 enforce_user_order=True, expand_refcat=False)
        if problem:
            messages.append(f"absolute alignment not done: {problem}")
        records = [_stage_record(c.meta.get("fit_info", {"status": f"FAILED: {problem}"}
                                                    if problem else {}), absolute,
                                 reference=refcat_name) for c in correctors]
        for record in records:
            if record["status"] == "FAILED: not fitted":
                record["status"] = "FAILED: no sources"
        _check_shifts(correctors, saved, absolute, "absolute", records)
        for i, record in enumerate(records):
            fits[i]["absolute"] = record
            absolute_ok[i] = record["status"] == "SUCCESS"
        for c, image in zip(correctors, images, strict=True):
            c.meta["group_id"] = str(image.group_id)

    wcs = []
    for i, corrector in enumerate(correctors):
        rel = fits[i].get("relative", {}).get("status")
        corrected = absolute_ok[i] or rel == "SUCCESS"
        if absolute_ok[i] or (relative_ok[i] and refcat is None):
            fits[i]["status"] = "REFERENCE" if rel == "REFERENCE" and not absolute_ok[i] \
                else "SUCCESS"
        elif refcat is not None and relative_ok[i]:
            fits[i]["status"] = "FAILED: " + fits[i]["absolute"]["status"].removeprefix(
                "FAILED: ") + " (relative alignment kept)"
        else:
            last = fits[i].get("absolute", fits[i].get("relative", {}))
            fits[i]["status"] = last.get("status", "FAILED: only one exposure group and no "
                                                   "reference catalogue")
        wcs.append(corrector.wcs if corrected else None)
    return AlignmentResult(wcs=wcs, fits=fits, tangent_point=tangent, refcat=used_refcat,
                           messages=messages)


class _Corrector(SkyTangentCorrector):
    """A corrector whose WCS can be put back after a rejected fit."""

    def reset(self, wcs):
        self._wcs = wcs
