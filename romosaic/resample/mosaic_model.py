"""Assembling a Level-3 `~roman_datamodels.datamodels.MosaicModel`.

The co-add arrays come from `romosaic.resample.coadd`; this module adds the
metadata the WfiMosaic schema requires, from a compact `InputSummary` of each
input (collected while the inputs stream past, so no input model needs to
stay in memory).
"""

import concurrent.futures
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import roman_datamodels.datamodels as rdm
from astropy.table import Table
from astropy.time import Time

from .. import __version__
from ..models import effective_exposure_time_of, exposure_time_of
from ..wcs_utils import (
    local_cd_matrix,
    orientation_and_parity,
    pixel_scale_arcsec,
    s_region_polygon,
)
from .coadd import exposure_time_map
from .planes import PlaneStore, release_pages

__all__ = ["InputSummary", "build_mosaic_model", "summarize_input"]

log = logging.getLogger(__name__)

# Observation fields copied to the mosaic when every input agrees on them.
_OBSERVATION_FIELDS = (
    "program", "execution_plan", "pass", "segment", "observation", "visit", "exposure",
)
_L2_STEPS_IN_L3 = ("flux", "skymatch", "outlier_detection")
# Pixels of the band of rows worked on at once when combining planes.
_BAND_PIXELS = 1 << 20


@dataclass
class InputSummary:
    """What the mosaic's metadata needs from one input image."""

    filename: str
    group_id: str
    filter_name: str
    exptime: float
    start_time: Time | None
    end_time: Time | None
    cal_step: dict
    observation: dict
    program: dict
    meta_sections: dict = field(repr=False)
    #: Seconds the image counts for in the mosaic's exposure-time map
    #: (`romosaic.models.effective_exposure_time_of`); NaN when unknown.
    effective_exptime: float = math.nan


def summarize_input(model, group_id=None):
    """Collect an `InputSummary` from a Level-2 image's ``model.meta``.

    ``model`` is an open model or a library's
    `~romosaic.library.MemberMetadata`: only its ``meta`` is read.
    """
    meta = model.meta
    exposure = meta.exposure
    return InputSummary(
        filename=str(meta.filename),
        group_id=str(group_id if group_id is not None else meta.get("group_id", meta.filename)),
        filter_name=str(meta.instrument.optical_element),
        exptime=_seconds(exposure_time_of(meta)),
        start_time=_as_time(exposure.get("start_time")),
        end_time=_as_time(exposure.get("end_time")),
        cal_step={k: str(v) for k, v in _plain(meta.get("cal_step") or {}).items()},
        observation=_plain(meta.get("observation", {})),
        program=_plain(meta.get("program", {})),
        meta_sections=_meta_sections(meta),
        effective_exptime=_seconds(effective_exposure_time_of(meta)),
    )


def build_mosaic_model(
    result,
    grid,
    summaries,
    *,
    association_name,
    pixfrac,
    weight_type,
    good_bits,
    pixmap_stepsize,
    input_pixel_scale,
    data_release_id=None,
    include_var_flat=False,
    noise=None,
    store=None,
    threads=1,
):
    """A validated-shape `MosaicModel` from a finished co-add.

    Parameters
    ----------
    result : CoaddResult
    grid : OutputGrid
    summaries : list of InputSummary
        One per input, in context order.
    association_name : str
    pixfrac : float
    weight_type : str
    good_bits : str
    pixmap_stepsize : int
    input_pixel_scale : float
        Native pixel size of the inputs in arcseconds.
    data_release_id : str, optional
    include_var_flat : bool, optional
    noise : NoiseCorrelation, optional
        How the drizzle correlated the noise (see
        `romosaic.resample.noise_correlation`); recorded as
        ``meta.resample.aperture_variance_factor``, ``noise_correlation``
        and ``noise_correlation_inputs``.
    store : PlaneStore, optional
        Of the grid's shape: where the mosaic's own grid-sized plane (err)
        is made; on disk when the co-add's planes are memory-mapped files,
        so that err is one too. The model keeps a mapping of the file, so
        the store may be closed once the model is made. None: in memory.
    threads : int, optional
        With more than one, ``err``, the exposure-time summary and the
        statistics (each a pass over different grid-sized planes) are made
        at once.

    Returns
    -------
    roman_datamodels.datamodels.MosaicModel
    """
    shape = tuple(result.data.shape)
    if store is None:
        store = PlaneStore(shape)
    elif tuple(store.shape) != shape:
        raise ValueError(f"store shape {store.shape} differs from the co-add's {shape}")
    model = rdm.MosaicModel.create_minimal()
    model.data = result.data
    model.weight = result.weight
    model.context = result.context
    if result.dq is not None:
        # The reference's propagate_dq: the OR of the flags drizzled onto
        # each pixel (roman_datamodels' MosaicModel takes the extra array).
        model.dq = result.dq
    variances = result.variances
    zeros = None
    for name in ("var_rnoise", "var_poisson", "var_flat"):
        if name in variances:
            setattr(model, name, variances[name])
        elif name != "var_flat":
            zeros = zeros if zeros is not None else np.zeros(result.data.shape, np.float32)
            setattr(model, name, zeros)
    error_planes = [variances[name] for name in variances
                    if name != "var_flat" or include_var_flat]
    # Three passes over different planes, none depending on another.
    with concurrent.futures.ThreadPoolExecutor(min(3, max(1, int(threads))),
                                               "mosaic") as pool:
        err = pool.submit(_root_of_sum, error_planes, store)
        coadd_info = pool.submit(_coadd_info, result, summaries)
        statistics = pool.submit(_statistics, result)
    model.err = err.result()

    meta = model.meta
    meta.calibration_software_name = "romosaic"
    meta.calibration_software_version = __version__
    meta.product_type = "l3"
    if data_release_id:
        meta.data_release_id = str(data_release_id)
    meta.association.name = str(association_name)
    meta.instrument.name = "WFI"
    meta.instrument.optical_element = summaries[0].filter_name
    meta.observation = _common_observation(summaries)
    meta.program = dict(summaries[0].program) if summaries[0].program else meta.program
    meta.coadd_info = coadd_info.result()
    meta.cal_step = _cal_step(summaries)
    meta.resample = {
        "good_bits": str(good_bits),
        "pixel_scale_ratio": float(grid.pixel_scale / input_pixel_scale),
        "pixfrac": float(pixfrac),
        "pixmap_order": 3,
        "pixmap_stepsize": int(pixmap_stepsize),
        "pointings": len({s.group_id for s in summaries}),
        "members": [s.filename for s in summaries],
        "weight_type": str(weight_type),
    }
    if noise is not None:
        meta.resample.update(noise.to_meta())
    meta.wcs = grid.wcs
    meta.wcsinfo = _wcsinfo(grid)
    meta.statistics = statistics.result()
    meta.individual_image_meta = _individual_image_meta(summaries)
    # The summaries read parts of the planes: when those are file mappings,
    # their pages need not stay resident until the model is written.
    for plane in (result.data, result.weight, result.context, result.dq, *variances.values()):
        if plane is not None:
            release_pages(plane)
    return model


def _root_of_sum(planes, store, name="err"):
    """``sqrt(sum(planes))`` in float32, made as plane ``name`` of ``store``.

    A band of rows at a time, so that the result is the only image-sized
    array made, and in a file when the store is on disk; the pages of
    memory-mapped ``planes`` are given back after each band is summed.
    """
    store.new_plane(name)
    ny, nx = store.shape
    band = max(1, _BAND_PIXELS // max(1, nx))
    for start in range(0, ny, band):
        stop = min(ny, start + band)
        with store.rows(name, (start, stop)) as root:
            for plane in planes:
                part = plane[start:stop]
                np.add(root, part, out=root)
                release_pages(part)
            np.sqrt(root, out=root)
    return store.array(name)


def _seconds(value):
    return math.nan if value is None else float(value)


def _coadd_info(result, summaries):
    # The reference sums effective exposure times (between the midpoints of
    # the first and last resultants: the span the ramp's slope measures), not
    # the exposures' durations.
    seconds = [s.effective_exptime for s in summaries]
    for summary, time in zip(summaries, seconds, strict=True):
        if not (math.isfinite(time) and time > 0):
            log.warning("%s: exposure time %s is not a positive number of seconds; the image "
                        "is left out of the mosaic's exposure-time map (meta.coadd_info)",
                        summary.filename, summary.exptime)
    # Outside the region the context is 0: no exposure time there.
    rows, cols = result.region
    exptime = exposure_time_map(result.context[:, rows, cols], seconds)
    release_pages(result.context)
    covered = exptime > 0
    starts = [s.start_time for s in summaries if s.start_time is not None]
    ends = [s.end_time for s in summaries if s.end_time is not None]
    first = min(starts, key=lambda t: t.mjd) if starts else Time("2000-01-01T00:00:00")
    last = max(ends, key=lambda t: t.mjd) if ends else first
    mids = [
        (s.start_time.mjd + s.end_time.mjd) / 2
        for s in summaries
        if s.start_time is not None and s.end_time is not None
    ]
    mean = Time(float(np.mean(mids)), format="mjd").utc if mids else first
    mean.format = "isot"
    return {
        "time_first": first,
        "time_last": last,
        "time_mean": mean,
        "exposure_time": float(exptime[covered].mean()) if covered.any() else 0.0,
        "max_exposure_time": float(exptime.max()) if exptime.size else 0.0,
    }


def _cal_step(summaries):
    steps = {}
    for name in _L2_STEPS_IN_L3:
        states = {s.cal_step.get(name, "INCOMPLETE") for s in summaries}
        steps[name] = states.pop() if len(states) == 1 else "INCOMPLETE"
    steps["resample"] = "INCOMPLETE"
    return steps


def _common_observation(summaries):
    observation = {}
    for name in _OBSERVATION_FIELDS:
        values = {s.observation.get(name) for s in summaries}
        value = values.pop() if len(values) == 1 else None
        observation[name] = int(value) if isinstance(value, (int, np.integer)) else None
    groupings = {s.observation.get("exposure_grouping") or None for s in summaries}
    grouping = groupings.pop() if len(groupings) == 1 else None
    observation["exposure_grouping"] = str(grouping) if grouping else None
    return observation


def _wcsinfo(grid):
    ny, nx = grid.shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra, dec = grid.wcs(cx, cy, with_bounding_box=False)
    cd_centre = local_cd_matrix(grid.wcs, cx, cy)
    cd_ref = local_cd_matrix(grid.wcs, grid.crpix[0], grid.crpix[1])
    orientation, _ = orientation_and_parity(cd_centre)
    orientation_ref, _ = orientation_and_parity(cd_ref)
    scale_ref = pixel_scale_arcsec(cd_ref)
    rotation = cd_ref / (scale_ref / 3600.0)
    return {
        "ra_ref": float(grid.crval[0]),
        "dec_ref": float(grid.crval[1]),
        "x_ref": float(grid.crpix[0]),
        "y_ref": float(grid.crpix[1]),
        "pixel_scale_ref": float(grid.pixel_scale_ref) / 3600.0,
        "pixel_scale": pixel_scale_arcsec(cd_centre) / 3600.0,
        "projection": "TAN",
        "s_region": s_region_polygon(grid.wcs, grid.shape),
        "image_shape": [int(nx), int(ny)],
        "ra": float(ra),
        "dec": float(dec),
        "orientation": float(orientation),
        "orientation_ref": float(orientation_ref),
        "skycell_name": grid.skycell_name,
        "rotation_matrix": [[float(v) for v in row] for row in rotation],
    }


def _statistics(result):
    # Nothing was deposited outside the region (weight 0 there). A band of
    # rows at a time, so that planes in files need not be resident whole;
    # the values kept are the region's, in the same order as in one pass.
    weight, data = result.weight[result.region], result.data[result.region]
    parts, n_covered = [], 0
    band = max(1, _BAND_PIXELS // max(1, weight.shape[-1]))
    for start in range(0, weight.shape[0], band):
        weights, values = weight[start:start + band], data[start:start + band]
        covered = weights > 0
        n_covered += int(np.count_nonzero(covered))
        parts.append(values[covered & np.isfinite(values)])
        release_pages(weights)
        release_pages(values)
    values = np.concatenate(parts) if parts else np.empty(0, data.dtype)
    del parts
    if values.size:
        median = float(np.median(values))
        rms = float(np.sqrt(np.mean((values - median) ** 2)))
    else:
        median = rms = float("nan")
    fraction = float(n_covered) / result.weight.size if result.weight.size else 0.0
    return {"image_median": median, "image_rms": rms, "good_pixel_fraction": fraction}


# -- individual_image_meta ------------------------------------------------------

_SECTION_NAMES = (
    "background", "cal_step", "coordinates", "ephemeris", "exposure", "guide_star",
    "instrument", "observation", "photometry", "pointing", "program", "rcs", "ref_file",
    "velocity_aberration", "visit", "wcsinfo",
)


def _meta_sections(meta):
    sections = {"basic": {}}
    for key, value in _plain(meta).items():
        if key in _SECTION_NAMES and isinstance(value, Mapping):
            sections[key] = _flatten(value)
        elif not isinstance(value, Mapping) and key != "wcs":
            sections["basic"][key] = value
    return sections


def _individual_image_meta(summaries):
    names = []
    for summary in summaries:
        names.extend(n for n in summary.meta_sections if n not in names)
    tables = {}
    for name in names:
        rows = [summary.meta_sections.get(name, {}) for summary in summaries]
        tables[name] = _table_from_rows(rows)
    return tables


def _table_from_rows(rows):
    columns = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    table = Table()
    for column in columns:
        values = [row.get(column) for row in rows]
        table[column] = _column_values(values)
    return table


def _column_values(values):
    if all(isinstance(v, bool | np.bool_) for v in values):
        return np.array(values, dtype=bool)
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.int64)
    if all(isinstance(v, float | int | np.floating | np.integer) and not isinstance(v, bool)
           for v in values):
        return np.array(values, dtype=np.float64)
    return np.array(["None" if v is None else _to_text(v) for v in values], dtype=str)


def _to_text(value):
    if isinstance(value, Time):
        return value.isot
    return str(value)


def _flatten(mapping, prefix=""):
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}_"))
        elif isinstance(value, list | tuple | np.ndarray):
            flat[name] = str(_builtin(value))
        else:
            flat[name] = value
    return flat


def _builtin(value):
    """Nested lists of Python scalars, for readable text in a table cell."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_builtin(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _plain(node):
    """A node of model metadata as plain nested dicts."""
    if isinstance(node, Mapping) or hasattr(node, "items"):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, float) and not math.isfinite(node):
        return node
    return node


def _as_time(value):
    if value is None:
        return None
    return value if isinstance(value, Time) else Time(value)
