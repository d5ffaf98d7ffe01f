"""``flux`` step: Level-2 images from DN/s to MJy/sr (see `romosaic.flux`)."""

import logging

from ..errors import RomosaicInputError
from ..flux import VARIANCE_ARRAYS, check_conversion_factor, scale_to_surface_brightness
from ..models import set_array
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
    """

    def process(self, input_data):
        library = self.open_library(input_data)
        for _, model in library.iter_models(modify=True):
            if step_status(model, "flux") == STEP_COMPLETE:
                log.info("%s: already in MJy/sr; flux step not repeated", model.meta.filename)
                continue
            factor = model.meta.photometry.get("conversion_megajanskys")
            problem = check_conversion_factor(factor)
            if problem:
                raise RomosaicInputError(f"{model.meta.filename}: {problem}")
            for name in ("data", "err", *VARIANCE_ARRAYS):
                # One array at a time, so that only one scaled copy exists at once.
                scaled = scale_to_surface_brightness({name: getattr(model, name, None)},
                                                     float(factor))
                if name in scaled:
                    set_array(model, name, scaled[name])
                del scaled
            self.record_status(model)
            log.info("%s: converted to MJy/sr (x %.6g)", model.meta.filename, factor)
        return library
