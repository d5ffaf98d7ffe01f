"""``flux`` step: Level-2 images from DN/s to MJy/sr (see `romosaic.flux`)."""

import concurrent.futures
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
        # Only metadata is read here. Arrays of images in files are scaled
        # when a later step reads them; those of open models at once, in
        # threads.
        members = list(library.iter_metadata())
        threads = min(resolve_workers(self.workers), len(members))
        with concurrent.futures.ThreadPoolExecutor(max(threads, 1)) as pool:
            list(pool.map(lambda item: self._scale_member(library, *item), members))
        return self.step_result(library, input_data, single_model=True)

    def _scale_member(self, library, index, member):
        if step_status(member, "flux") == STEP_COMPLETE:
            log.info("%s: already in MJy/sr; flux step not repeated", member.meta.filename)
            return
        photometry = member.meta.photometry
        factor = photometry.get("conversion_megajanskys")
        # The WCS's pixel area is only needed to judge a conversion of the wrong sign.
        wcs_area = (_wcs_pixel_area(member.meta.get("wcs"), member.shape)
                    if check_conversion_factor(factor) else None)
        factor, problem, warning = resolve_conversion_factor(
            factor, photometry.get("pixel_area"), wcs_area)
        if problem:
            raise RomosaicInputError(f"{member.meta.filename}: {problem}")
        if warning:
            log.warning("%s: %s", member.meta.filename, warning)
        # Recorded, not applied here: the library scales each array when it
        # is read (in place, in float32 chunks), for every borrower.
        library.record_flux_scale(index, float(factor))
        self.record_status(member, library=library, index=index)
        log.info("%s: converted to MJy/sr (x %.6g)", member.meta.filename, factor)


def _wcs_pixel_area(wcs, shape):
    """Solid angle (sr) of the pixel at the image centre, or None without a usable WCS."""
    if wcs is None:
        return None
    ny, nx = shape[-2:]
    try:
        cd = local_cd_matrix(wcs, (nx - 1) / 2, (ny - 1) / 2)
    except Exception:  # any WCS failure just means the check is not made
        return None
    area = abs(float(np.linalg.det(cd))) * math.radians(1.0) ** 2
    return area if math.isfinite(area) and area > 0 else None
