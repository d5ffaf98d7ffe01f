"""Skycell associations: one association per (skycell, filter) an image set touches.

The counterpart of the reference pipeline's ``skycell_asn``. For each input
only the metadata is read (WCS, array shape, filter and visit identifiers —
no pixel data); the footprint search finds the skycells each image touches;
the images are grouped by product type (all together, by pass, or by
visit) and then by skycell and filter. Each association is named

    ``{root}_{data_release_id}_{pr}_{skycell}_{filter}_asn.json``

with ``pr`` = ``full``, ``p<CC><AAA>`` (pass) or ``v<CC><AAA><SSS><OOO><VVV>``
(visit) from the 19-digit visit identifier ``PPPPPCCAAASSSOOOVVV``, its
``target`` is the skycell's name and ``skycell_wcs_info`` its WCS numbers, so
``strun roman_mos`` resamples it onto that skycell.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import asdf

from ..associations import make_association, write_association
from ..errors import RomosaicInputError
from ..models import one_line_message
from . import get_tessellation, skycells_for_image

__all__ = [
    "PRODUCT_TYPES",
    "ImageGeometry",
    "association_name",
    "plan_skycell_associations",
    "read_image_geometry",
    "write_skycell_associations",
]

log = logging.getLogger(__name__)

PRODUCT_TYPES = ("visit", "pass", "full")


@dataclass
class ImageGeometry:
    """What skycell association needs from one Level-2 file."""

    path: Path
    wcs: object
    shape: tuple
    filter_name: str
    visit_id: str


def read_image_geometry(path):
    """Read an image's WCS, shape, filter and visit id without its pixel data.

    Raises
    ------
    RomosaicInputError
        For a missing or unreadable file, or one without a WCS or filter.
    """
    path = Path(path)
    if not path.is_file():
        raise RomosaicInputError(f"{path}: file not found")
    try:
        with asdf.open(path, lazy_load=True, memmap=False) as af:
            roman = af.tree["roman"]
            meta = roman["meta"]
            wcs = meta.get("wcs")
            shape = tuple(int(n) for n in roman["data"].shape)
            filter_name = str(meta["instrument"]["optical_element"])
            observation = meta.get("observation", {})
    except Exception as error:
        raise RomosaicInputError(
            f"{path}: not a readable Roman data file ({one_line_message(error)})") from None
    if wcs is None:
        raise RomosaicInputError(f"{path}: has no WCS (meta.wcs)")
    return ImageGeometry(path=path, wcs=wcs, shape=shape, filter_name=filter_name,
                         visit_id=_visit_id(path, observation))


def _visit_id(path, observation):
    """The 19-digit visit id PPPPPCCAAASSSOOOVVV, from the file name or the metadata."""
    stem = path.name.split("_")[0]
    if stem.startswith("r") and stem[1:20].isdigit() and len(stem) >= 20:
        return stem[1:20]
    try:
        return (f"{int(observation['program']):05d}{int(observation['execution_plan']):02d}"
                f"{int(observation['pass']):03d}{int(observation['segment']):03d}"
                f"{int(observation['observation']):03d}{int(observation['visit']):03d}")
    except (KeyError, TypeError, ValueError):
        return "0" * 19


def association_name(root, *, data_release_id, product_type, visit_id, skycell, filter_name):
    """The reference naming ``{root}_{release}_{pr}_{skycell}_{filter}`` (no extension)."""
    if product_type == "visit":
        pr = "v" + visit_id[5:19]
    elif product_type == "pass":
        pr = "p" + visit_id[5:10]
    else:
        pr = "full"
    return f"{root}_{data_release_id}_{pr}_{skycell}_{filter_name.lower()}"


def plan_skycell_associations(images, *, root, product_type="full", data_release_id="p",
                              tessellation=None):
    """Group images into skycell associations.

    Parameters
    ----------
    images : list of ImageGeometry
    root : str
        Name root (a path prefix allowed; only its last part names products).
    product_type : {"visit", "pass", "full"}
    data_release_id : str
    tessellation : Tessellation, optional

    Returns
    -------
    dict
        Association base name → ``(Skycell, [ImageGeometry, ...])``, sorted by name.
    """
    if product_type not in PRODUCT_TYPES:
        raise RomosaicInputError(
            f"product type {product_type!r} is not one of {', '.join(PRODUCT_TYPES)}")
    tessellation = tessellation or get_tessellation()
    plan = {}
    for image in images:
        cells = skycells_for_image(image.wcs, image.shape, tessellation=tessellation)
        if not cells:
            log.warning("%s touches no skycell", image.path)
        for cell in cells:
            name = association_name(root, data_release_id=data_release_id,
                                    product_type=product_type, visit_id=image.visit_id,
                                    skycell=cell.name, filter_name=image.filter_name)
            plan.setdefault(name, (cell, []))[1].append(image)
    return dict(sorted(plan.items()))


def write_skycell_associations(files, *, root, product_type="full", data_release_id="p"):
    """Write one association per (skycell, filter[, pass or visit]) touched by ``files``.

    Returns
    -------
    list of pathlib.Path
        The association files written.
    """
    images = [read_image_geometry(path) for path in files]
    plan = plan_skycell_associations(images, root=str(root), product_type=product_type,
                                     data_release_id=data_release_id)
    written = []
    for name, (cell, members) in plan.items():
        asn_path = Path(f"{name}_asn.json")
        asn = make_association(
            [image.path for image in members],
            product_name=Path(name).name,
            target=cell.name,
            relative_to=asn_path.parent if str(asn_path.parent) else Path("."),
            program=members[0].visit_id[:5],
            data_release_id=data_release_id,
            skycell_wcs_info=cell.wcs_info(),
        )
        write_association(asn_path, asn)
        log.info("wrote %s (%d members)", asn_path, len(members))
        written.append(asn_path)
    return written
