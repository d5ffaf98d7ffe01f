"""``flux`` step: Level-2 images from DN/s to MJy/sr (see `romosaic.flux`)."""

import logging
import math

import numpy as np

from ..errors import RomosaicInputError
from ..flux import check_conversion_factor, resolve_conversion_factor
from ..parallel import resolve_workers
from ..wcs_utils import local_cd_matrix
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
        return self.step_result(library, input_data, single_model=True)

    def _scale_model(self, library, index, model):
        if step_status(model, "flux") == STEP_COMPLETE:
            log.info("%s: already in MJy/sr; flux step not repeated", model.meta.filename)
            return
        photometry = model.meta.photometry
        factor = photometry.get("conversion_megajanskys")
        # The WCS's pixel area is only needed to judge a conversion of the wrong sign.
        wcs_area = _wcs_pixel_area(model) if check_conversion_factor(factor) else None
        factor, problem, warning = resolve_conversion_factor(
            factor, photometry.get("pixel_area"), wcs_area)
        if problem:
            raise RomosaicInputError(f"{model.meta.filename}: {problem}")
        if warning:
            log.warning("%s: %s", model.meta.filename, warning)
        # Recorded, not applied here: the library scales each array when it
        # is read (in place, in float32 chunks), for every borrower.
        library.record_flux_scale(index, float(factor))
        self.record_status(model, library=library, index=index)
        log.info("%s: converted to MJy/sr (x %.6g)", model.meta.filename, factor)


def _wcs_pixel_area(model):
    """Solid angle (sr) of the pixel at the image centre, or None without a usable WCS."""
    wcs = model.meta.get("wcs")
    if wcs is None:
        return None
    ny, nx = model.data.shape[-2:]
    try:
        cd = local_cd_matrix(wcs, (nx - 1) / 2, (ny - 1) / 2)
    except Exception:  # any WCS failure just means the check is not made
        return None
    area = abs(float(np.linalg.det(cd))) * math.radians(1.0) ** 2
    return area if math.isfinite(area) and area > 0 else None
