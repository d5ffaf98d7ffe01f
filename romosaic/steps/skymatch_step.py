"""``skymatch`` step: one sky level per image, equal where images overlap.

The algorithm lives in `romosaic.skymatch`. The step reads the library three
times, one model at a time: the geometry (to lay the coarse cell grid), the
pixels (to measure each image's sky; with ``workers`` above 1, threads
measure different images at once), and finally to record each level in
``meta.background`` (and its subtraction from the data, when asked) as edits
of the library (`~romosaic.library.ModelLibrary.update_meta`).
"""

import logging

import numpy as np

from ..dq import bad_flags_mask, good_pixel_mask
from ..errors import RomosaicInputError
from ..models import image_geometry
from ..parallel import resolve_workers
from ..skymatch import (
    SKY_METHODS,
    SKY_STATISTICS,
    SkyStatisticsParameters,
    cell_grid,
    match_sky,
    measure_image_sky,
)
from .base import STEP_COMPLETE, STEP_SKIPPED, RomosaicStep, step_status

__all__ = ["SkyMatchStep"]

log = logging.getLogger(__name__)

# Statistic measured in coarse cells for the match methods when skystat is
# 'mode': the histogram peak of the thousand pixels of one cell scatters by
# about 0.27 standard deviation, seven times the median's 0.04, and a
# difference of skies needs precision rather than an absolute zero point.
_CELL_STATISTIC_FOR_MODE = "median"


def _background_state(model):
    """``(level, subtracted)`` recorded in a model; (None, False) when absent."""
    background = model.meta.get("background")
    if not background:
        return None, False
    return background.get("level"), bool(background.get("subtracted", False))


class SkyMatchStep(RomosaicStep):
    """Measure (and optionally subtract) the sky of every image of an association.

    With ``skymethod='match'`` (the default), sky differences between images
    are measured only where they overlap on the sky, and one offset per image
    is solved for by least squares, so that the mosaic shows no steps between
    exposures or detectors (every detector has a background of its own). With
    ``per_exposure_group=True`` the detectors of one exposure share one
    offset instead. The result is written to ``meta.background``
    (``level``, ``subtracted``, ``method``); resample and outlier detection
    remove a level that is not yet subtracted on the fly.
    """

    class_alias = "skymatch"

    spec = f"""
    skymethod = option({", ".join(repr(m) for m in SKY_METHODS)}, default='match')  # Sky method
    match_down = boolean(default=True)  # Match to the lowest sky (True) or the highest (False)
    subtract = boolean(default=False)  # Subtract the levels from the data
    skystat = option({", ".join(repr(s) for s in SKY_STATISTICS)}, default='mode')  # Sky statistic
    dqbits = string(default='~DO_NOT_USE+NON_SCIENCE')  # Acceptable DQ flags (as good_bits)
    lower = float(default=None)  # Lowest pixel value used for the sky (data units)
    upper = float(default=None)  # Highest pixel value used for the sky (data units)
    nclip = integer(min=0, default=5)  # Sigma-clipping iterations
    lsigma = float(min=0.0, default=4.0)  # Lower clipping limit, in sigma
    usigma = float(min=0.0, default=4.0)  # Upper clipping limit, in sigma
    binwidth = float(min=0.0, default=0.1)  # Histogram bin width for mode and midpt, in sigma
    stepsize = integer(default=None)  # Reference parameter; moot (overlaps computed exactly)
    per_exposure_group = boolean(default=False)  # One offset per exposure group, not per image
    workers = integer(min=0, default=0)  # Threads (0: one per usable core)
    """

    def check_parameters(self):
        self._statistics_parameters()
        try:
            bad_flags_mask(self.dqbits)
        except RomosaicInputError:
            raise RomosaicInputError(
                f"skymatch: dqbits {self.dqbits!r} is not understood (flag names or integers "
                "joined with '+', optionally preceded by '~')") from None

    def parameter_notes(self):
        notes = super().parameter_notes()
        if self.stepsize is not None:
            # The reference samples image edges every stepsize pixels to
            # outline footprints; romosaic maps every cell of the overlap grid
            # through the WCS, so there is nothing to space out.
            notes.append((logging.INFO,
                          f"skymatch: stepsize={self.stepsize} has no effect: romosaic "
                          "computes image overlaps from the WCS of every cell, not from "
                          "sampled footprint edges"))
        return notes

    def _statistics_parameters(self, skystat=None):
        try:
            return SkyStatisticsParameters(
                skystat=skystat or self.skystat,
                lower=self.lower,
                upper=self.upper,
                nclip=self.nclip,
                lsigma=self.lsigma,
                usigma=self.usigma,
                binwidth=self.binwidth,
            )
        except RomosaicInputError as error:
            raise RomosaicInputError(f"skymatch: {error}") from None

    def process(self, input_data):
        self.check_parameters()
        library = self.open_library(input_data)
        matching = "match" in self.skymethod
        geometry, names = self._survey(library)

        params = self._statistics_parameters()
        cell_params = params
        grid = None
        if matching:
            grid = cell_grid(geometry)
            if self.skystat == "mode":
                cell_params = self._statistics_parameters(_CELL_STATISTIC_FOR_MODE)
            log.info("sky differences measured in %d x %d cells of %.2f arcsec (%s per cell)",
                     grid.shape[1], grid.shape[0], grid.pixel_scale, cell_params.skystat)

        def measure(index, model):
            # Images are measured independently, in threads.
            data = np.asarray(model.data)
            good = good_pixel_mask(model.dq, self.dqbits) & np.isfinite(data)
            return measure_image_sky(data, good, model.meta.wcs, grid, params,
                                     cell_params=cell_params)

        skies = library.map_models(measure, threads=resolve_workers(self.workers))

        units, unit_names = self._sky_units(library, names)
        result = match_sky(skies, units, skymethod=self.skymethod, match_down=self.match_down)
        self._report(result, skies, names, units, unit_names)

        for index, member in library.iter_metadata():
            self._record(library, index, member, result.levels[index])
        return self.step_result(library, input_data)

    def _survey(self, library):
        """Each model's (WCS, shape) and file name; refuse to subtract twice."""
        geometry, names = [], []
        for _, member in library.iter_metadata():
            name = str(member.meta.filename)
            wcs_and_shape = image_geometry(member.meta, member.shape)
            level, subtracted = _background_state(member)
            if subtracted and self.subtract:
                raise RomosaicInputError(
                    f"{name}: sky level {level} was already subtracted "
                    "(meta.background.subtracted is True); refusing to subtract again")
            if step_status(member, "flux") != STEP_COMPLETE:
                log.info("%s: not in MJy/sr (flux step not run); levels are in the data's units",
                         name)
            geometry.append(wcs_and_shape)
            names.append(name)
        return geometry, names

    def _sky_units(self, library, names):
        """The sets of images that share one offset, and how the log names them."""
        if self.per_exposure_group:
            group_ids = list(library.group_indices)
            units = [library.group_indices[g] for g in group_ids]
            return units, [f"exposure group {g} ({names[m[0]]})"
                           for g, m in zip(group_ids, units, strict=True)]
        return [[i] for i in range(len(names))], list(names)

    def _report(self, result, skies, names, units, unit_names):
        for i, sky in enumerate(skies):
            if not sky.valid:
                log.warning("%s: no usable pixels (all flagged by dqbits, outside "
                            "[lower, upper], or not finite); sky not measured, image skipped",
                            names[i])
        if "match" not in self.skymethod:
            for i, sky in enumerate(skies):
                if sky.valid:
                    log.info("%s: local sky %.6g, level %.6g", names[i], sky.local,
                             result.levels[i])
            return
        kind = "exposure groups" if self.per_exposure_group else "images"
        for u in result.isolated:
            if not np.isfinite(result.group_levels[u]):
                continue
            if len(units) == 1:
                log.warning("only one %s (%s): nothing to match; its local sky %.6g is used",
                            kind[:-1], unit_names[u], result.group_levels[u])
            else:
                log.warning("%s overlaps no other %s; its local sky %.6g is used",
                            unit_names[u], kind[:-1], result.group_levels[u])
        if len(result.components) > 1:
            log.warning("the %s form %d separate overlapping sets; their skies are matched "
                        "within each set only", kind, len(result.components))
        pairs = result.pairs
        if pairs is not None and len(pairs):
            log.info("matched %d overlapping pairs of %s (%d cells); pair residual rms "
                     "%.2f sigma", len(pairs), kind, int(pairs.n_cells.sum()),
                     result.residual_rms)
        for u, members in enumerate(units):
            local = [skies[i].local for i in members if skies[i].valid]
            if local:
                log.info("%s: level %.6g (local sky %.6g)", unit_names[u],
                         result.group_levels[u], min(local))

    def _record(self, library, index, member, level):
        name = member.meta.filename
        if not np.isfinite(level):
            self.record_status(member, STEP_SKIPPED, library=library, index=index)
            return
        previous, was_subtracted = _background_state(member)
        if was_subtracted:
            # The data no longer hold that level, so what was measured is
            # the residual sky on top of it, which is what remains to remove.
            log.info("%s: sky level %s was already subtracted; recording the residual level",
                     name, previous)
        level = float(level)
        if self.subtract:
            library.record_sky_subtraction(index, level)
        library.update_meta(index, {"background": {
            "level": level,
            "subtracted": bool(self.subtract),
            "method": str(self.skymethod),
        }})
        self.record_status(member, STEP_COMPLETE, library=library, index=index)
