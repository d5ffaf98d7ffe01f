"""``flux`` step: Level-2 images from DN/s to MJy/sr (see `romosaic.flux`)."""

import logging

from ..errors import RomosaicInputError
from ..flux import check_conversion_factor
from ..parallel import resolve_workers
from .base import STEP_COMPLETE, RomosaicStep, step_status

__all__ = ["FluxStep"]

log = logging.getLogger(__name__)


class FluxStep(RomosaicStep):
    """Convert every image of an association from DN/s to MJy/sr.

    Images whose ``meta.cal_step.flux`` is already COMPLETE are left as they
    are, so running the step twice does not scale twice.
    """

    class_alias = "flux"

    spec = """
    workers = integer(min=0, default=0)  # Threads scaling images at once (0: one per usable core)
    """

    def process(self, input_data):
        library = self.open_library(input_data)
        library.map_models(lambda index, model: self._scale_model(library, index, model),
                           threads=resolve_workers(self.workers))
        return library

    def _scale_model(self, library, index, model):
        if step_status(model, "flux") == STEP_COMPLETE:
            log.info("%s: already in MJy/sr; flux step not repeated", model.meta.filename)
            return
        factor = model.meta.photometry.get("conversion_megajanskys")
        problem = check_conversion_factor(factor)
        if problem:
            raise RomosaicInputError(f"{model.meta.filename}: {problem}")
        # Recorded, not applied here: the library scales each array when it
        # is read (in place, in float32 chunks), for every borrower.
        library.record_flux_scale(index, float(factor))
        self.record_status(model, library=library, index=index)
        log.info("%s: converted to MJy/sr (x %.6g)", model.meta.filename, factor)
