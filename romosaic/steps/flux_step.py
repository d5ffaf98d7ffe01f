"""``flux`` step: Level-2 images from DN/s to MJy/sr (see `romosaic.flux`)."""

import logging

import numpy as np

from ..errors import RomosaicInputError
from ..flux import VARIANCE_ARRAYS, check_conversion_factor, scale_to_surface_brightness
from ..models import set_array
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
        library.map_models(self._scale_model, modify=True,
                           threads=resolve_workers(self.workers))
        return library

    def _scale_model(self, index, model):
        if step_status(model, "flux") == STEP_COMPLETE:
            log.info("%s: already in MJy/sr; flux step not repeated", model.meta.filename)
            return
        factor = model.meta.photometry.get("conversion_megajanskys")
        problem = check_conversion_factor(factor)
        if problem:
            raise RomosaicInputError(f"{model.meta.filename}: {problem}")
        for name in ("data", "err", *VARIANCE_ARRAYS):
            current = getattr(model, name, None)
            if current is None:
                continue
            # In the array's own memory where possible, one array at a time.
            values = np.asarray(current)
            scaled = scale_to_surface_brightness({name: values}, float(factor),
                                                 in_place=True)[name]
            if scaled is not values:
                set_array(model, name, scaled)
            del scaled
        self.record_status(model)
        log.info("%s: converted to MJy/sr (x %.6g)", model.meta.filename, factor)
