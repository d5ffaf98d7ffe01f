"""A first, metadata-only pass over a library, shared by the grid-making steps."""

import logging

from ..errors import RomosaicInputError
from ..models import image_geometry, recorded_orientation
from ..resample import summarize_input

__all__ = ["recorded_grid_orientation", "survey_inputs"]

log = logging.getLogger(__name__)


def survey_inputs(library):
    """Each input's (WCS, shape) and metadata summary, checking they belong together.

    Only metadata and the data array's shape are read here (from the
    library's memory, once a member has been opened: `ModelLibrary.metadata`);
    the arrays are read during drizzling.
    """
    geometry = []
    summaries = []
    group_ids = [m["group_id"] for m in library.asn["products"][0]["members"]]
    for index, member in library.iter_metadata():
        geometry.append(image_geometry(member.meta, member.shape))
        summaries.append(summarize_input(member, group_id=group_ids[index]))
    not_converted = [s.filename for s in summaries if s.cal_step.get("flux") != "COMPLETE"]
    if not_converted:
        log.warning("%s: not converted to MJy/sr (run the flux step first); the mosaic will "
                    "be in the inputs' units", ", ".join(not_converted[:3]) +
                    (" ..." if len(not_converted) > 3 else ""))
    filters = {}
    for summary in summaries:
        filters.setdefault(summary.filter_name, summary.filename)
    if len(filters) > 1:
        listing = ", ".join(f"{f} ({name})" for f, name in filters.items())
        raise RomosaicInputError(f"inputs are in different filters: {listing}")
    return geometry, summaries


def recorded_grid_orientation(library):
    """The first input's aperture orientation from its pointing metadata, or None.

    The orientation the reference pipeline gives a free grid (see
    `romosaic.models.recorded_orientation`); only metadata is read.
    """
    for _, member in library.iter_metadata():
        return recorded_orientation(member.meta)
    return None
