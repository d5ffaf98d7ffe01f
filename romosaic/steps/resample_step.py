"""``resample`` step: drizzle an association onto one mosaic grid.

The step opens the inputs, chooses the output grid, streams the inputs
through `romosaic.resample.drizzle_images` one at a time and returns a
Level-3 ``MosaicModel``. The algorithm lives in `romosaic.resample`.
"""

import concurrent.futures
import logging
from pathlib import Path

import numpy as np

from .._atomic import scratch_directory
from ..dq import bad_flags_mask
from ..errors import RomosaicInputError
from ..parallel import resolve_workers
from ..resample import (
    KERNELS,
    build_mosaic_model,
    drizzle_images,
    free_grid,
    grid_from_wcs_file,
    require_overlap,
    skycell_grid_for_association,
)
from ..resample.drizzle_images import variance_names_for
from ..resample.engine import DEFAULT_MEMORY_BUDGET_MIB, DrizzleEngine, data_window
from ..resample.grid import DEFAULT_MAX_OUTPUT_PIXELS, check_grid_size
from ..resample.noise_correlation import noise_correlation_for_grid
from ..resample.planes import PlaneStore, release_pages
from ._inputs import read_inputs
from ._pixmap import pixmap_order_notes
from ._survey import recorded_grid_orientation, survey_inputs
from .base import STEP_COMPLETE, RomosaicStep

__all__ = ["ResampleStep"]

log = logging.getLogger(__name__)


class ResampleStep(RomosaicStep):
    """Resample (drizzle) the images of an association onto one grid.

    Output grid, in order of precedence: the `output_grid` attribute (an
    `~romosaic.resample.OutputGrid` set from Python, as custom mosaics do);
    ``output_wcs`` (an ASDF file with a gwcs under ``wcs``); the
    association's skycell; otherwise a free TAN grid covering the inputs, set
    by ``pixel_scale`` or ``pixel_scale_ratio``, ``rotation``, ``crpix``,
    ``crval`` and ``output_shape``.

    The drizzle's planes (data, weight, variances, context of the part of
    the grid the inputs reach) are held in memory up to ``memory_budget``
    MiB; beyond it, and always with ``in_memory=False``, they are
    memory-mapped temporary files in the output directory, drizzled a strip
    at a time (see `romosaic.resample.engine`).
    The result is the same either way, and for any number of ``workers``.
    """

    class_alias = "resample"

    spec = f"""
    pixfrac = float(min=0.0, max=1.0, default=1.0)  # Linear size of drizzle drops, in input pixels
    kernel = option({", ".join(repr(k) for k in KERNELS)}, default='square')  # Drizzle kernel
    fillval = string(default='NaN')  # Value of output pixels with no data
    weight_type = option('ivm', 'ivm-sky', 'exptime', default='ivm')  # Input pixel weighting
    output_shape = int_list(min=2, max=2, default=None)  # Output shape [nx, ny]
    crpix = float_list(min=2, max=2, default=None)  # 0-based pixel [x, y] of crval
    crval = float_list(min=2, max=2, default=None)  # Tangent point [RA, Dec] in degrees
    rotation = float(default=None)  # PA of output +y east of north (deg); None: as first input
    pixel_scale_ratio = float(default=1.0)  # Output over input pixel size
    pixel_scale = float(default=None)  # Output pixel size in arcsec (overrides the ratio)
    output_wcs = string(default='')  # ASDF file holding the output gwcs under 'wcs'
    good_bits = string(default='~DO_NOT_USE+NON_SCIENCE')  # Acceptable DQ flags
    include_var_flat = boolean(default=False)  # Propagate var_flat and include it in err
    pixmap_stepsize = float(min=1.0, default=10.0)  # Spacing of exact WCS evaluations (pixels)
    pixmap_order = integer(min=1, default=3)  # Reference parameter; always bicubic splines
    in_memory = boolean(default=True)  # False: models and planes in temporary files (on_disk)
    propagate_dq = boolean(default=False)  # Give the mosaic a dq plane (OR of drizzled flags)
    resample_on_skycell = boolean(default=True)  # Use the association's skycell grid if named
    memory_budget = float(min=1.0, default={DEFAULT_MEMORY_BUDGET_MIB})  # MiB of planes in memory
    max_output_pixels = integer(min=1, default={DEFAULT_MAX_OUTPUT_PIXELS})  # Refuse larger grids
    workers = integer(min=0, default=0)  # Threads (0: one per usable core)
    """

    #: An `~romosaic.resample.OutputGrid` to use instead of any grid parameter;
    #: set from Python only (it is not a parameter a file or command line can give).
    output_grid = None

    def process(self, input_data):
        library = self.open_library(input_data)
        owns_library = library is not input_data
        try:
            return self._resample(library)
        finally:
            if owns_library:
                library.close()

    def _resample(self, library):
        self.check_parameters()
        geometry, summaries = survey_inputs(library)
        grid = self.plan_grid(library, geometry)
        log.info("output grid: %d x %d pixels of %.4f arcsec", grid.shape[1], grid.shape[0],
                 grid.pixel_scale)

        window = self._window(library, geometry, grid)
        in_files = self._planes_in_files(len(library), window)
        # The mosaic's planes live in files of this directory when they are
        # too large for memory; the model keeps mappings of them, so the
        # directory can go once the model is made.
        with scratch_directory(self.search_attr("output_dir"), "planes",
                               enabled=in_files) as directory, \
                concurrent.futures.ThreadPoolExecutor(1, "noise") as background:
            # The noise correlation needs only the geometry: its WCS
            # evaluations (Python) run while the drizzle's kernels (which
            # let go of the interpreter) use the cores.
            noise = background.submit(
                noise_correlation_for_grid, geometry, grid.wcs, grid.shape, kernel=self.kernel,
                pixfrac=self.pixfrac, names=[s.filename for s in summaries])
            result, input_scale = self._drizzle(library, grid, window, directory)
            if not _any_positive(result.weight):
                raise RomosaicInputError(
                    f"{library.product_name}: no input pixel landed on the output grid "
                    "(inputs all flagged, or outside the grid)"
                )
            release_pages(result.weight)
            grid_store = PlaneStore(grid.shape, directory=directory)
            try:
                mosaic = build_mosaic_model(
                    result,
                    grid,
                    summaries,
                    association_name=library.asn.get("table_name", library.product_name),
                    pixfrac=self.pixfrac,
                    weight_type=self.weight_type,
                    good_bits=self.good_bits,
                    pixmap_stepsize=self._pixmap_stepsize,
                    input_pixel_scale=input_scale,
                    data_release_id=library.asn.get("data_release_id"),
                    include_var_flat=self.include_var_flat,
                    noise=noise.result(),
                    store=grid_store,
                    threads=resolve_workers(self.workers),
                )
            finally:
                grid_store.close()
        log.info("aperture variance factor (drizzle noise correlation): %.3f",
                 mosaic.meta.resample["aperture_variance_factor"])
        self.record_status(mosaic, STEP_COMPLETE)
        mosaic.meta.filename = f"{library.product_name}_coadd.asdf"
        return mosaic

    def _window(self, library, geometry, grid):
        try:
            return data_window(grid, geometry)
        except ValueError:
            raise RomosaicInputError(
                f"{library.product_name}: no input pixel lands on the output grid") from None

    def _planes_in_files(self, n_inputs, window):
        n_planes_bytes = DrizzleEngine.bytes_per_pixel(
            n_inputs, len(variance_names_for(self.include_var_flat)),
            with_dq=self.propagate_dq)
        in_files = (not self.in_memory
                    or n_planes_bytes * window.shape[0] * window.shape[1]
                    > self.memory_budget * 2**20)
        if in_files:
            log.info("drizzle planes (%.0f MiB) kept in memory-mapped files",
                     n_planes_bytes * window.shape[0] * window.shape[1] / 2**20)
        return in_files

    def _drizzle(self, library, grid, window, directory):
        store = PlaneStore(window.shape, directory=directory)
        try:
            return drizzle_images(
                read_inputs(library), grid, len(library),
                window=window,
                store=store,
                threads=resolve_workers(self.workers),
                memory_budget=self.memory_budget * 2**20,
                kernel=self.kernel,
                pixfrac=self.pixfrac,
                fillval=self.fillval,
                weight_type=self.weight_type,
                good_bits=self.good_bits,
                include_var_flat=self.include_var_flat,
                pixmap_stepsize=self._pixmap_stepsize,
                propagate_dq=self.propagate_dq,
            )
        finally:
            store.close()

    @property
    def _pixmap_stepsize(self):
        return max(1, round(self.pixmap_stepsize))

    def parameter_notes(self):
        return super().parameter_notes() + pixmap_order_notes(self)

    def check_parameters(self):
        if not 0 < self.pixfrac <= 1:
            raise RomosaicInputError(f"pixfrac must be in (0, 1], got {self.pixfrac}")
        if self.fillval.strip().upper() != "INDEF":
            try:
                float(self.fillval)
            except ValueError:
                raise RomosaicInputError(
                    f"fillval must be a number, NaN or INDEF, got {self.fillval!r}") from None
        bad_flags_mask(self.good_bits)
        if self.pixel_scale is not None and not self.pixel_scale > 0:
            raise RomosaicInputError(f"pixel_scale must be > 0 arcsec, got {self.pixel_scale}")
        if not self.pixel_scale_ratio > 0:
            raise RomosaicInputError(
                f"pixel_scale_ratio must be > 0, got {self.pixel_scale_ratio}")
        if self.output_wcs and not Path(self.output_wcs).is_file():
            raise RomosaicInputError(f"{self.output_wcs}: output_wcs file not found")
        if not self.max_output_pixels >= 1:
            raise RomosaicInputError(
                f"max_output_pixels must be >= 1, got {self.max_output_pixels}")

    def plan_grid(self, library, geometry=None):
        """The output grid for ``library``, refused if it has more than ``max_output_pixels``.

        Parameters
        ----------
        library : ModelLibrary
        geometry : list of (wcs, shape), optional
            The inputs' geometry, if already surveyed.

        Returns
        -------
        romosaic.resample.OutputGrid
        """
        if geometry is None:
            geometry, _ = survey_inputs(library)
        grid = self._output_grid(geometry, library)
        check_grid_size(grid.shape, n_inputs=len(library), max_pixels=self.max_output_pixels,
                        parameter=self._max_pixels_parameter(),
                        include_var_flat=self.include_var_flat)
        return grid

    def _max_pixels_parameter(self):
        # As the user would write it: on the command line of this step, or
        # of the pipeline that runs it.
        if self.parent is None:
            return "max_output_pixels"
        return f"steps.{self.name}.max_output_pixels"

    def _output_grid(self, geometry, library):
        if self.output_grid is not None:
            require_overlap(self.output_grid, geometry)
            return self.output_grid
        if self.output_wcs:
            return grid_from_wcs_file(self.output_wcs, output_shape=self.output_shape)
        if self.resample_on_skycell:
            grid = skycell_grid_for_association(
                skycell_wcs_info=library.skycell_wcs_info, target=library.target)
            if grid is not None:
                require_overlap(grid, geometry)
                return grid
        return free_grid(
            geometry,
            pixel_scale_ratio=self.pixel_scale_ratio,
            pixel_scale=self.pixel_scale,
            rotation=self.rotation,
            crpix=self.crpix,
            crval=self.crval,
            output_shape=self.output_shape,
            max_pixels=self.max_output_pixels,
            max_pixels_parameter=self._max_pixels_parameter(),
            orientation=recorded_grid_orientation(library),
        )


def _any_positive(values, rows=1024):
    """Whether any element is > 0, reading a large (memory-mapped) array in row blocks."""
    return any(bool(np.any(values[start:start + rows] > 0))
               for start in range(0, values.shape[0], rows))
