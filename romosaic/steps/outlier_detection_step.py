"""``outlier_detection`` step: flag cosmic rays and other outliers in the inputs.

The step drives `romosaic.outlier.detect` over a library: it works on a
grid aligned with the inputs, twice as fine as they are
(``pixel_scale_ratio``), or, when resample will use the association's
skycell, of the skycell's pixel size and limited to its footprint;
drizzles each exposure group onto the window of that grid the inputs cover,
takes the median, and flags each input's disagreeing pixels with
DO_NOT_USE | OUTLIER in its ``dq`` (so resample then leaves them out); the
flags are recorded in the library as small per-image edits over the input
files. The group drizzles and their median are held in memory up to
``memory_budget`` MiB, beyond it (and always with ``on_disk`` or
``in_memory=False``) in memory-mapped temporary files in the output
directory.
"""

import logging
import math
from pathlib import Path

import asdf
import numpy as np
from roman_datamodels.dqflags import pixel

from .._atomic import atomic_output, scratch_directory
from ..dq import bad_flags_mask, good_pixel_mask
from ..errors import RomosaicInputError
from ..outlier.detect import (
    flag_image,
    group_frames_bytes,
    masked_outliers,
    median_of_group_drizzles,
    median_of_planes,
    median_window,
)
from ..outlier.flagging import parse_pair
from ..parallel import resolve_workers
from ..resample import (
    KERNELS,
    input_from_model,
    require_overlap,
    skycell_grid_for_association,
)
from ..resample.engine import DEFAULT_MEMORY_BUDGET_MIB
from ..resample.planes import PlaneStore
from ..resample.weights import weight_variances
from ._inputs import read_inputs
from ._pixmap import pixmap_order_notes
from ._survey import recorded_grid_orientation, survey_inputs
from .base import STEP_COMPLETE, STEP_SKIPPED, RomosaicStep

__all__ = ["OutlierDetectionStep"]

log = logging.getLogger(__name__)

OUTLIER_FLAGS = np.uint32(pixel.DO_NOT_USE | pixel.OUTLIER)


class OutlierDetectionStep(RomosaicStep):
    """Flag pixels that disagree with the median of the other exposures."""

    class_alias = "outlier_detection"

    spec = f"""
    weight_type = option('ivm', 'ivm-sky', 'exptime', default='ivm')  # Group drizzle weights
    pixfrac = float(min=0.0, max=1.0, default=1.0)  # Drizzle drop size for the group drizzles
    kernel = option({", ".join(repr(k) for k in KERNELS)}, default='square')  # Drizzle kernel
    fillval = string(default='NaN')  # Kept for compatibility; poorly sampled pixels are always NaN
    pixel_scale_ratio = float(min=0.0, default=0.5)  # Free-grid pixel size over the inputs'
    maskpt = float(min=0.0, default=0.7)  # Ignore group pixels below maskpt x typical weight
    snr = string(default='5.0 4.0')  # Noise multiples of the two tests
    scale = string(default='1.2 0.7')  # Derivative multiples of the two tests
    backg = float(default=0.0)  # Background removed from the differences
    model_error = float(min=0.0, default=0.1)  # Fractional tolerance of the median model
    good_bits = string(default='~DO_NOT_USE+NON_SCIENCE')  # Acceptable DQ flags
    resample_data = boolean(default=True)  # False: inputs already share one pixel grid
    resample_on_skycell = boolean(default=True)  # Work on the association's skycell grid
    memory_budget = float(min=1.0, default={DEFAULT_MEMORY_BUDGET_MIB})  # MiB of planes in memory
    pixmap_stepsize = float(min=1.0, default=10.0)  # Spacing of exact WCS evaluations (pixels)
    pixmap_order = integer(min=1, default=3)  # Reference parameter; always bicubic splines
    in_memory = boolean(default=True)  # False: models and frames in temporary files (on_disk)
    save_intermediate_results = boolean(default=False)  # Write the median and blotted images
    workers = integer(min=0, default=0)  # Threads (0: one per usable core)
    """

    def check_parameters(self):
        try:
            self._snr = parse_pair(self.snr, "snr")
            self._scale = parse_pair(self.scale, "scale")
        except ValueError as error:
            raise RomosaicInputError(str(error)) from None
        if not 0 < self.pixfrac <= 1:
            raise RomosaicInputError(f"pixfrac must be in (0, 1], got {self.pixfrac}")
        bad_flags_mask(self.good_bits)

    def process(self, input_data):
        library = self.open_library(input_data)
        owns_library = library is not input_data
        try:
            self.check_parameters()
            groups = library.group_indices
            if len(groups) < 2:
                log.warning("outlier_detection needs at least two exposure groups, found %d; "
                            "skipped", len(groups))
                for index, model in library.iter_models(modify=False):
                    self.record_status(model, STEP_SKIPPED, library=library, index=index)
                return self.step_result(library, input_data)
            if self.resample_data:
                geometry, _ = survey_inputs(library)
                window = self._window(library, geometry)
                grid = window.grid
                log.info("outlier detection on a %d x %d window (%.0f%% of the %d x %d %s)",
                         window.shape[1], window.shape[0], 100 * window.fraction_of_grid,
                         grid.shape[1], grid.shape[0],
                         "skycell grid" if grid.skycell_name else "grid along the inputs")
                frames_bytes = group_frames_bytes(window.shape, len(groups))
            else:
                window = None
                frames_bytes = 4 * (len(library) + 1) * self._image_pixels(library)
            # Frames beyond the budget are scratch that the page cache holds
            # as well as the process would.
            in_files = (library.on_disk or not self.in_memory
                        or frames_bytes > self._memory_budget_bytes)
            if in_files:
                log.info("outlier frames (%.0f MiB) kept in memory-mapped files",
                         frames_bytes / 2**20)
            with scratch_directory(self.search_attr("output_dir"), "median",
                                   enabled=in_files) as directory:
                if window is None:
                    store, median = self._median_of_raw_images(library, directory)
                else:
                    store = PlaneStore(window.shape, directory=directory)
                try:
                    if window is not None:
                        median = self._median_of_group_drizzles(library, groups, window, store)
                    self._flag_models(library, store, median, window)
                finally:
                    store.close()
        finally:
            if owns_library:
                library.close()
        return self.step_result(library, input_data)

    def parameter_notes(self):
        return super().parameter_notes() + pixmap_order_notes(self)

    @property
    def _pixmap_stepsize(self):
        return max(1, round(self.pixmap_stepsize))

    @property
    def _memory_budget_bytes(self):
        return int(self.memory_budget * 2**20)

    # -- the median ---------------------------------------------------------

    def _median_of_group_drizzles(self, library, groups, window, store):
        median = median_of_group_drizzles(
            [(group_id, len(indices),
              read_inputs(library, indices, variances=weight_variances(self.weight_type)))
             for group_id, indices in groups.items()],
            window, store,
            threads=resolve_workers(self.workers),
            memory_budget=self._memory_budget_bytes,
            kernel=self.kernel,
            pixfrac=self.pixfrac,
            weight_type=self.weight_type,
            good_bits=self.good_bits,
            maskpt=self.maskpt,
            pixmap_stepsize=self._pixmap_stepsize,
        )
        if self.save_intermediate_results:
            self._save_array("median", store.array(median), wcs=window.grid.wcs,
                             offset=(window.x0, window.y0))
        return median

    def _window(self, library, geometry):
        """The window of the median's grid that the work is done on."""
        skycell = None
        if self.resample_on_skycell:
            skycell = skycell_grid_for_association(skycell_wcs_info=library.skycell_wcs_info,
                                                   target=library.target)
            if skycell is not None:
                require_overlap(skycell, geometry)
        # A grid finer than the inputs keeps the median sharp enough to
        # predict undersampled star cores (docs/steps/outlier_detection.rst).
        return median_window(geometry, skycell=skycell,
                             pixel_scale_ratio=self.pixel_scale_ratio,
                             orientation=recorded_grid_orientation(library))

    @staticmethod
    def _image_pixels(library):
        # The shape, without reading (and decompressing) the data.
        for _, model in library.iter_models(modify=False):
            return math.prod(model.data.shape)
        return 0

    def _median_of_raw_images(self, library, directory):
        store = None
        frames = []
        try:
            for _, model in library.iter_models(modify=False):
                image = input_from_model(model)
                if store is None:
                    store = PlaneStore(image.shape, directory=directory)
                elif image.shape != store.shape:
                    raise RomosaicInputError(
                        f"{image.name}: shape {image.shape} differs from the first image's "
                        f"{store.shape}; resample_data=false needs images on one pixel grid")
                name = f"image{len(frames)}"
                store.new_plane(name)
                store.write(name, np.where(good_pixel_mask(image.dq, self.good_bits),
                                           image.data, np.float32(np.nan)))
                frames.append(name)
            median = median_of_planes(store, frames, "median",
                                      threads=resolve_workers(self.workers),
                                      memory_budget=self._memory_budget_bytes)
            for name in frames:
                store.remove(name)
        except BaseException:
            if store is not None:
                store.close()
            raise
        return store, median

    # -- flags --------------------------------------------------------------

    def _flag_models(self, library, store, median, window):
        # Images are flagged independently, in threads; the flags are
        # recorded in the library as small per-image edits.
        def flag(index, model):
            pixels, size = self._outlier_pixels(model, store, median, window)
            library.add_dq_flags(index, pixels, OUTLIER_FLAGS)
            self.record_status(model, STEP_COMPLETE, library=library, index=index)
            log.info("%s: %d pixels (%.3f%%) flagged as outliers", model.meta.filename,
                     pixels.size, 100.0 * pixels.size / size)
            return pixels.size

        counts = library.map_models(flag, modify=False, threads=resolve_workers(self.workers))
        log.info("outlier detection flagged %d pixels in %d images", sum(counts), len(library))

    def _outlier_pixels(self, model, store, median, window):
        """Flat indices of a model's outlier pixels, and the image's size."""
        image = input_from_model(model)
        if window is None:
            blot = store.read(median)
            mask = masked_outliers(image, blot, snr=self._snr, scale=self._scale,
                                   backg=self.backg, model_error=self.model_error,
                                   good_bits=self.good_bits)
        else:
            mask, blot = flag_image(image, store, median, window, snr=self._snr,
                                    scale=self._scale, backg=self.backg,
                                    model_error=self.model_error, good_bits=self.good_bits,
                                    pixmap_stepsize=self._pixmap_stepsize)
        del image
        if self.save_intermediate_results:
            self._save_array(f"{Path(model.meta.filename).stem}_blot", blot, wcs=None)
        return np.flatnonzero(mask), mask.size

    def _save_array(self, suffix, array, *, wcs=None, offset=(0, 0)):
        output_dir = Path(self.search_attr("output_dir") or ".")
        output_dir.mkdir(parents=True, exist_ok=True)
        base = self.search_attr("_input_filename") or "outlier"
        stem = Path(str(base)).name.split(".")[0]
        path = output_dir / f"{self.remove_suffix(stem)[0]}_{suffix}.asdf"
        tree = {"data": np.asarray(array, np.float32), "grid_offset": list(offset)}
        if wcs is not None:
            tree["wcs"] = wcs
        with atomic_output(path) as temp_path:
            asdf.AsdfFile(tree).write_to(temp_path)
        log.info("saved %s", path)
