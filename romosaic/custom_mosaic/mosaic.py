"""Planning and making custom mosaics: the grid, the pipeline runs, the products.

`plan_custom_mosaic` chooses the projection region and the rectangle of
its pixel grid (`romosaic.custom_mosaic.grid`) from the inputs' metadata.
`make_custom_mosaic` runs `~romosaic.pipeline.MosaicPipeline` once per
filter, aligning the inputs first (the tweakreg step, on unless
``align=False``), with the resample step pointed at that grid and drizzling in
strips, optionally resamples again onto the coarse grid, and moves the
finished products into place only when every filter has succeeded.
`perform` wraps both for the command line and Python users: logging, the
log file, and a status of 0 or 1.
"""

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .._atomic import atomic_save_model, make_private_dir
from ..errors import INPUT_ERROR_EXIT_STATUS, RomosaicError, RomosaicInputError
from ..models import one_line_message, read_exposure_group_id
from ..wcs_utils import footprint
from .grid import (
    COARSE_BLOCK,
    bounding_window,
    coarse_window,
    default_prefix,
    footprint_centre,
    nearest_region,
)
from .inputs import expand_input_source, read_inputs

__all__ = [
    "CustomMosaicPlan",
    "choose_on_disk",
    "make_custom_mosaic",
    "perform",
    "plan_custom_mosaic",
]

log = logging.getLogger(__name__)

#: Fraction of the machine's memory the inputs and the outlier-detection frames
#: may take before the models and frames are kept in temporary files.
ON_DISK_MEMORY_FRACTION = 0.25

# Bytes per input pixel of a Level-2 model held in memory after the flux step
# (data and dq 4 bytes each, err and up to three variances in float32).
_MODEL_BYTES_PER_PIXEL = 24

_LOGGERS = ("romosaic", "stpipe")
_PRODUCT_SUFFIXES = ("_coadd.asdf", "_cat.parquet", "_segm.asdf")


@dataclass
class CustomMosaicPlan:
    """Everything decided before any pixel is read.

    Attributes
    ----------
    region : romosaic.skycell.ProjectionRegion
    prefix : str
        Product name prefix.
    window, grid
        The fine (0.055″) rectangle of the region grid (`Window`) and its
        `~romosaic.resample.OutputGrid`.
    coarse_window, coarse_grid
        The same at 0.11″ (2 × 2 region pixels), or None without ``coarse``.
    by_filter : dict of str to list of InputImage
        Inputs per filter (upper case), in input order.
    clipped : list of str
        File names of the inputs that lose area at the region's grid edge.
    """

    region: object
    prefix: str
    window: object
    grid: object
    by_filter: dict
    coarse_window: object = None
    coarse_grid: object = None
    clipped: list = field(default_factory=list)

    def product_names(self, filter_name):
        """Names of the fine (and coarse) products of one filter, without suffix."""
        base = f"{self.prefix}_{filter_name.lower()}"
        return [base] + ([f"{base}_coarse"] if self.coarse_grid is not None else [])


def plan_custom_mosaic(images, *, prefix=None, coarse=False, tessellation=None):
    """Choose the region, the grid and the product names for a set of inputs.

    Parameters
    ----------
    images : list of InputImage
    prefix : str, optional
        Product name prefix; default `default_prefix` of the region.
    coarse : bool, optional
        Also plan the 0.11″ grid.
    tessellation : Tessellation, optional
        Defaults to `romosaic.skycell.get_tessellation`.

    Returns
    -------
    CustomMosaicPlan

    Raises
    ------
    RomosaicInputError
        When the inputs have no area on the chosen region's grid, or the
        prefix is not a plain name.
    """
    from ..resample.grid import region_window_grid
    from ..skycell import get_tessellation

    tessellation = tessellation or get_tessellation()
    footprints = [footprint(image.wcs, image.shape) for image in images]
    try:
        centre = footprint_centre(footprints)
    except ValueError as error:
        raise RomosaicInputError(f"the inputs cannot share one mosaic: {error}") from None
    region = nearest_region(tessellation.regions, *centre)
    pixel_footprints = [region.sky_to_pixel(ra, dec) for ra, dec in footprints]
    try:
        window = bounding_window(region, pixel_footprints)
    except ValueError as error:
        raise RomosaicInputError(
            f"projection region {region.index}: {error}; the inputs are spread too widely "
            "for one custom mosaic") from None
    log.info("projection region %d (tangent point RA %.4f, Dec %+.4f), nearest to the "
             "inputs' centre (RA %.4f, Dec %+.4f)", region.index, region.ra_tangent,
             region.dec_tangent, *centre)
    log.info("mosaic: %d x %d pixels of 0.055 arcsec, region pixels x %d-%d, y %d-%d",
             window.nx, window.ny, window.x0, window.x0 + window.nx - 1, window.y0,
             window.y0 + window.ny - 1)
    clipped = [images[i].name for i in window.clipped]
    if clipped:
        log.warning("%d input(s) reach beyond the pixel grid of projection region %d and "
                    "lose area there: %s", len(clipped), region.index, ", ".join(clipped))
    prefix = _check_prefix(prefix) if prefix is not None else default_prefix(region)
    plan = CustomMosaicPlan(
        region=region,
        prefix=prefix,
        window=window,
        grid=region_window_grid(region, x0=window.x0, y0=window.y0, nx=window.nx,
                                ny=window.ny),
        by_filter=_group_by_filter(images),
        clipped=clipped,
    )
    if coarse:
        plan.coarse_window = coarse_window(window, block=COARSE_BLOCK)
        w = plan.coarse_window
        plan.coarse_grid = region_window_grid(region, x0=w.x0, y0=w.y0, nx=w.nx, ny=w.ny,
                                              block=COARSE_BLOCK)
    return plan


def _check_prefix(prefix):
    prefix = str(prefix).strip()
    if not prefix or prefix in (".", ".."):
        raise RomosaicInputError(f"output prefix {prefix!r} is not a usable file name")
    if "/" in prefix or os.sep in prefix:
        raise RomosaicInputError(
            f"output prefix {prefix!r} contains a directory; give the directory with "
            "--output-dir (output_dir) and a plain name as the prefix")
    return prefix


def _group_by_filter(images):
    groups = {}
    for image in images:
        groups.setdefault(image.filter_name.upper(), []).append(image)
    return dict(sorted(groups.items()))


def choose_on_disk(input_pixels, n_groups, grid_pixels, memory_bytes,
                   fraction=ON_DISK_MEMORY_FRACTION):
    """Whether to keep models and outlier frames in temporary files.

    In memory, a library holds every input model (about 24 bytes a pixel
    after the flux step) and outlier detection one float32 frame per
    exposure group on a grid about as large as the mosaic. When these would
    take more than ``fraction`` of the machine's memory, ``on_disk`` keeps
    them in files instead.

    Examples
    --------
    >>> choose_on_disk(36 * 4088**2, 36, 15000**2, 24 * 2**30)
    True
    >>> choose_on_disk(8 * 512**2, 4, 3000**2, 24 * 2**30)
    False
    """
    needed = _MODEL_BYTES_PER_PIXEL * input_pixels + 4 * n_groups * grid_pixels
    return needed > fraction * memory_bytes


def _machine_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def make_custom_mosaic(plan, *, output_dir=".", steps=None, on_disk=None,
                       memory_budget=None, align=True, refcat=None):
    """Run the pipeline for each filter of a plan and write its products.

    Products go to a hidden staging directory inside ``output_dir`` and are
    moved into place only when every filter has succeeded; on any error the
    staging directory is removed and nothing is written.

    Parameters
    ----------
    plan : CustomMosaicPlan
    output_dir : str or os.PathLike, optional
    steps : dict, optional
        Step parameters by step name, e.g. ``{"resample": {"pixfrac": 0.8}}``
        (as ``steps.<step>.<parameter>`` of ``strun roman_mos``). The coarse
        products use the same ``resample`` and ``source_catalog`` values,
        with ``npixels`` and ``bkg_boxsize`` scaled to the same sky area.
    on_disk : bool or None, optional
        Keep models in temporary files; None decides by `choose_on_disk`.
    memory_budget : float, optional
        MiB of drizzle planes the resample and outlier_detection steps hold
        in memory (their ``memory_budget``; beyond it, memory-mapped files);
        None keeps the steps' own values.
    align : bool, optional
        Align the inputs before drizzling (the tweakreg step; default True).
        Values in ``steps["tweakreg"]`` take precedence.
    refcat : str or os.PathLike, optional
        Reference catalogue file for absolute alignment (tweakreg's
        ``abs_refcat``); None aligns the exposures to each other only.

    Returns
    -------
    list of pathlib.Path
        The products written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    steps = {name: dict(values) for name, values in (steps or {}).items()}
    steps["tweakreg"] = {"skip": not align, "abs_refcat": str(refcat or ""),
                         **steps.get("tweakreg", {})}
    if memory_budget is not None:
        for name in ("outlier_detection", "resample"):
            steps[name] = {"memory_budget": float(memory_budget), **steps.get(name, {})}
    if on_disk is None:
        on_disk = _auto_on_disk(plan)
    # Named after this process, so that a later run removes it if this one
    # is killed (see romosaic._atomic).
    staging = make_private_dir(output_dir, "custom")
    try:
        for filter_name, images in plan.by_filter.items():
            log.info("filter %s: %d input(s)%s", filter_name, len(images),
                     ", models kept in temporary files" if on_disk else "")
            _make_filter_products(plan, filter_name, images, staging, steps=steps,
                                  on_disk=on_disk)
        written = []
        for filter_name in plan.by_filter:
            for name in plan.product_names(filter_name):
                for suffix in _PRODUCT_SUFFIXES:
                    staged = staging / f"{name}{suffix}"
                    if staged.exists():
                        target = output_dir / staged.name
                        os.replace(staged, target)
                        written.append(target)
        for path in written:
            log.info("wrote %s", path)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _auto_on_disk(plan):
    images = [image for group in plan.by_filter.values() for image in group]
    input_pixels = sum(image.shape[0] * image.shape[1] for image in images)
    groups = {read_exposure_group_id(image.path) or image.name for image in images}
    grid_pixels = plan.window.nx * plan.window.ny
    return choose_on_disk(input_pixels, len(groups), grid_pixels, _machine_memory())


def _make_filter_products(plan, filter_name, images, staging, *, steps, on_disk):
    from ..associations import make_association
    from ..library import ModelLibrary
    from ..pipeline import MosaicPipeline

    fine_name, *coarse_name = plan.product_names(filter_name)
    asn = make_association([image.path.resolve() for image in images], product_name=fine_name)
    library = ModelLibrary(asn, on_disk=on_disk, temp_directory=staging)
    try:
        pipeline = MosaicPipeline(steps=steps, on_disk=on_disk, save_results=True,
                                  output_dir=str(staging), resample_on_skycell=False)
        pipeline.resample.output_grid = plan.grid
        # The mosaic, catalog and segmentation are written by the pipeline.
        result = pipeline.run(library)
        del result
        if coarse_name:
            _make_coarse_products(plan, library, coarse_name[0], staging, steps=steps)
    finally:
        library.close()


def _make_coarse_products(plan, library, name, staging, *, steps):
    """Resample the already processed library onto the coarse grid and catalog it."""
    from ..steps import ResampleStep, SourceCatalogStep

    resample = ResampleStep(**steps.get("resample", {}))
    resample.output_dir = str(staging)
    resample.output_grid = plan.coarse_grid
    mosaic = resample.run(library)
    mosaic.meta.filename = f"{name}_coadd.asdf"
    catalog = _coarse_catalog_step(steps.get("source_catalog", {}), SourceCatalogStep)
    outputs = [(mosaic, staging / f"{name}_coadd.asdf")]
    if not catalog.skip:
        result = catalog.run(mosaic)
        if isinstance(result, tuple):
            outputs += [(result[0], staging / f"{name}_cat.parquet"),
                        (result[1], staging / f"{name}_segm.asdf")]
    for model, path in outputs:
        atomic_save_model(model, path)
    for model, _ in outputs:
        model.close()


def _coarse_catalog_step(parameters, step_class):
    """The catalog step for the coarse mosaic: same sky areas on 4× larger pixels."""
    step = step_class(**parameters)
    if step.npixels is not None:
        # An area in arcsec² (npixels None) needs no scaling.
        step.npixels = max(1, round(step.npixels / COARSE_BLOCK**2))
    step.bkg_boxsize = max(1, round(step.bkg_boxsize / COARSE_BLOCK))
    return step


# -- perform ---------------------------------------------------------------


def perform(input_image_source, log_level="info", output_file_prefix=None, *,
            output_dir=None, coarse=False, steps=None, on_disk=None,
            memory_budget=None, align=True, refcat=None):
    """Make a custom mosaic: one seamless mosaic of a projection region per filter.

    Parameters
    ----------
    input_image_source : str, os.PathLike or list
        A text file listing Level-2 ``*_cal.asdf`` files one per line, a glob
        pattern (quote it on the command line), or a list of files.
    log_level : str or int, optional
        ``debug``, ``info``, ``warning``, ``error`` or ``critical`` (or a
        `logging` level number), for the screen and the log file
        ``<prefix>.log`` beside the outputs.
    output_file_prefix : str, optional
        Product name prefix; default
        ``skycell-p<pppp>-ra<DDD>d<dddd>-dec<n|s><DD>d<dddd>`` from the
        chosen region. Products are ``<prefix>_<filter>_coadd.asdf``,
        ``_cat.parquet`` and ``_segm.asdf``.
    output_dir : str or os.PathLike, optional
        Where products and the log file go (default: the current directory).
    coarse : bool, optional
        Also make ``<prefix>_<filter>_coarse_*`` products at 0.11″, whose
        pixels are 2 × 2 blocks of the 0.055″ grid.
    steps : dict, optional
        Step parameters by step name (see `make_custom_mosaic`).
    on_disk : bool or None, optional
        Keep models in temporary files; None decides from the data size.
    memory_budget : float, optional
        MiB of drizzle planes the resample and outlier_detection steps hold
        in memory (their ``memory_budget``; beyond it, memory-mapped files);
        None keeps the steps' own values.
    align : bool, optional
        Align the inputs first (default True; the command's
        ``--skip-alignment`` sets False).
    refcat : str or os.PathLike, optional
        Reference catalogue file (ECSV, Parquet or FITS with RA/Dec) for
        absolute alignment (``--refcat``); None: relative alignment only.

    Returns
    -------
    int
        0 on success; 2 for bad input (an input file, the log level, the
        reference catalogue: the romosaic command's convention), 1 when the
        work failed; after logging one line saying why. No product is left
        behind.
    """
    try:
        level = _log_level(log_level)
    except ValueError as error:
        print(f"romosaic custom-mosaic: error: {error}", file=sys.stderr)
        return INPUT_ERROR_EXIT_STATUS
    with _logging_to(level) as logs:
        try:
            if align and refcat:
                # A bad catalogue is reported before any pixel is read.
                from ..align import read_reference_catalog

                read_reference_catalog(refcat)
            images = read_inputs(expand_input_source(input_image_source))
            log.info("%d input file(s)", len(images))
            plan = plan_custom_mosaic(images, prefix=output_file_prefix, coarse=coarse)
            output_dir = Path(output_dir or ".")
            output_dir.mkdir(parents=True, exist_ok=True)
            logs.add_file(output_dir / f"{plan.prefix}.log")
            make_custom_mosaic(plan, output_dir=output_dir, steps=steps, on_disk=on_disk,
                               memory_budget=memory_budget, align=align, refcat=refcat)
        except RomosaicError as error:
            # The pipeline logs its own input errors once already.
            if str(error) not in logs.error_messages():
                log.error("%s", error)
            return error.exit_status
        except Exception as error:  # report, don't crash the caller: status 1
            log.debug("custom mosaic failed", exc_info=True)
            log.error("custom mosaic failed: %s: %s", type(error).__name__,
                      one_line_message(error))
            return 1
    return 0


def _log_level(value):
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {value!r}; use debug, info, warning, error "
                         "or critical")
    return level


class _logging_to:
    """Send romosaic's and stpipe's log to the screen (and later a file) at one level.

    Used as ``with _logging_to(level) as logs``. Lines logged before
    the file is known (its name comes from the chosen region) are kept and
    written to it first. While active, those loggers do not propagate, so a
    root handler (the ``romosaic`` command's) does not print each line twice;
    everything is restored on exit.
    """

    _FORMAT = "%(asctime)s - %(levelname)s - %(message)s"

    def __init__(self, level):
        self.level = level
        self.handlers = []
        self.saved = {}
        self.early = None

    def __enter__(self):
        screen = logging.StreamHandler(sys.stderr)
        screen.setFormatter(logging.Formatter("%(levelname)s - %(message)s"))
        self._attach(screen)
        self.early = _RecordList()
        self._attach(self.early)
        self.errors = _RecordList()
        self._attach(self.errors, level=logging.ERROR)
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            self.saved[name] = (logger.level, logger.propagate)
            logger.setLevel(self.level)
            logger.propagate = False
        return self

    def error_messages(self):
        """The messages of the ERROR records logged so far."""
        return {record.getMessage() for record in self.errors.records}

    def _attach(self, handler, level=None):
        handler.setLevel(self.level if level is None else max(level, self.level))
        self.handlers.append(handler)
        for name in _LOGGERS:
            logging.getLogger(name).addHandler(handler)

    def add_file(self, path):
        handler = logging.FileHandler(path, mode="w", encoding="utf-8")
        handler.setFormatter(logging.Formatter(self._FORMAT))
        handler.setLevel(self.level)
        self._detach(self.early)
        for record in self.early.records:
            handler.handle(record)
        self._attach(handler)
        log.info("log file %s", path)

    def _detach(self, handler):
        self.handlers.remove(handler)
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(handler)

    def __exit__(self, *exc_info):
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            for handler in self.handlers:
                logger.removeHandler(handler)
            logger.setLevel(self.saved[name][0])
            logger.propagate = self.saved[name][1]
        for handler in self.handlers:
            handler.close()
        return False


class _RecordList(logging.Handler):
    """Keeps log records for a log file opened later."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)
