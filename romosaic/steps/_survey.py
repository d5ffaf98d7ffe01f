"""A first, metadata-only pass over a library, shared by the grid-making steps."""

import logging

from ..errors import RomosaicInputError
from ..models import image_geometry, recorded_orientation
from ..resample import summarize_input

__all__ = ["recorded_grid_orientation", "survey_inputs"]

log = logging.getLogger(__name__)


def survey_inputs(library):
    """Each input's (WCS, shape) and metadata summary, checking they belong together.

    Only metadata and the data array's shape are read here; the arrays are
    read during drizzling.
    """
    geometry = []
    summaries = []
    group_ids = [m["group_id"] for m in library.asn["products"][0]["members"]]
    for index, model in library.iter_models(modify=False):
        geometry.append(image_geometry(model))
        summaries.append(summarize_input(model, group_id=group_ids[index]))
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
    for _, model in library.iter_models(modify=False):
        return recorded_orientation(model.meta)
    return None
