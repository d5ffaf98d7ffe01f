"""Outlier detection on arrays: group drizzles, their median, blot, flags.

The steps, as in the reference pipeline (REFERENCE §3), with romosaic's
choices about where and how the work is done:

1. **Where.** Everything happens on the data window of a grid finer than
   the inputs (`median_window`): the part the inputs reach, on axes along
   theirs; on a skycell, of its pixel size and within its footprint.
2. **Group drizzles.** Each exposure group is drizzled alone onto the
   window by the `~romosaic.resample.engine.DrizzleEngine` (the engine
   resample uses: strips, threads, inputs read while the previous one is
   drizzled). Pixels whose weight is below ``maskpt`` × the group's typical
   weight (clipped mean of its non-zero weights) are then set to NaN, since
   they are poorly sampled edges or holes.
3. **Median.** The per-pixel median over groups (`nanmedian_stack`), taken in
   horizontal sections of the frames by a pool of threads
   (`median_of_planes`).
4. **Blot and flag.** For each input image the median is interpolated at the
   input's pixel positions (bilinear, through the same pixel map used to
   drizzle it), a band of rows at a time by a compiled kernel
   (`blot_median`), and the test of
   `~romosaic.outlier.flagging.outlier_mask` decides which pixels disagree,
   in one compiled pass over the image's rows (`masked_outliers`,
   `flag_image`).

Frames live in a `~romosaic.resample.planes.PlaneStore` that the caller
hands in, in memory or in memory-mapped files: with files, no step holds a
whole frame, only strips and sections within the memory budget. Strips,
sections and threads change where the arithmetic is done, not its result.
"""

import concurrent.futures
import contextlib
import functools
import logging
import math

import numpy as np

from ..dq import bad_flags_mask
from ..half import as_float32
from ..parallel import prefetch
from ..resample.engine import DrizzleEngine, data_window, plan_strips, prepare_image
from ..resample.grid import free_grid
from ..resample.pixmap import PixelMapper
from . import _kernels
from .flagging import sky_level
from .median import nanmedian_stack

__all__ = [
    "blot_median",
    "drizzle_group",
    "flag_image",
    "group_frames_bytes",
    "image_noise",
    "masked_outliers",
    "median_of_group_drizzles",
    "median_of_planes",
    "median_window",
]

log = logging.getLogger(__name__)

# Rows of an image blotted at once (with the median on disk, the pages of
# it that one band reads are all the blot holds).
_BLOT_ROWS = 256
# The variance planes whose sum is an image's noise, in the order they are added.
_VARIANCE_PLANES = ("var_rnoise", "var_poisson", "var_flat")

# Rows of a group's weights summed at once when finding its typical weight.
_WEIGHT_SECTION_ROWS = 256
# Bytes of one thread's median section (its frames' bands and the median's), at most.
_MEDIAN_SECTION_BYTES = 32 * 2**20

#: Bytes per window pixel of a group drizzle's planes (data and weight).
_GROUP_BYTES_PER_PIXEL = DrizzleEngine.bytes_per_pixel(1, 0, with_context=False)


def median_window(geometry, *, skycell=None, pixel_scale_ratio=0.5, orientation=None):
    """The window of the grid the group drizzles and their median are made on.

    Parameters
    ----------
    geometry : list of (wcs, shape)
        Every input's WCS and array shape.
    skycell : OutputGrid, optional
        The skycell the mosaic is made on, which the inputs overlap.
    pixel_scale_ratio : float, optional
        Pixel size of the grid over the first input's, without a skycell.
    orientation : float, optional
        Position angle of the grid's axes (see `~romosaic.resample.free_grid`);
        by default the first input's.

    Returns
    -------
    DataWindow
        Without a skycell: the whole of a free grid covering the inputs, of
        pixels ``pixel_scale_ratio`` times the first input's. With one: a
        grid of the skycell's pixel size on the same axes, limited to the box
        of the skycell's footprint (an input pixel's drop on it is a square,
        where on the north-up skycell it is a tilted one, which costs the
        drizzle 2.3 to 3.5 times as much at 20-45 degrees), unless the
        skycell's own window is smaller; then that one.

    Raises
    ------
    ValueError
        When no input lands on the grid (or on the skycell).
    """
    if skycell is None:
        grid = free_grid(geometry, pixel_scale_ratio=pixel_scale_ratio, orientation=orientation)
        return data_window(grid, geometry)
    on_cell = data_window(skycell, geometry)
    aligned = free_grid(geometry, pixel_scale=skycell.pixel_scale, orientation=orientation)
    try:
        window = data_window(aligned, geometry, within=skycell)
    except ValueError:
        return on_cell
    return window if _pixels(window) <= _pixels(on_cell) else on_cell


def _pixels(window):
    return window.shape[0] * window.shape[1]


def group_frames_bytes(window_shape, n_groups):
    """Bytes of the frames outlier detection keeps: each group's data, one
    group's weight while it is drizzled, and the median."""
    return 4 * window_shape[0] * window_shape[1] * (int(n_groups) + 2)


def median_of_group_drizzles(groups, window, store, *, threads=1, memory_budget=None,
                             kernel="square", pixfrac=1.0, weight_type="ivm", good_bits=None,
                             maskpt=0.7, pixmap_stepsize=10):
    """Drizzle each exposure group onto the window and take the median over groups.

    Parameters
    ----------
    groups : list of (str, int, iterable of ResampleInput)
        Each group's name, number of images, and its images (consumed once;
        a generator can load each from its file just in time).
    window : DataWindow
    store : PlaneStore
        Of the window's shape; receives the median (plane ``"median"``).
    threads : int, optional
    memory_budget : float, optional
        Bytes of strips and sections worked on at once when ``store`` is on
        disk (in memory the planes are there anyway).
    kernel, pixfrac, weight_type, good_bits, maskpt, pixmap_stepsize
        As for `drizzle_group`.

    Returns
    -------
    str
        The name of the median's plane in ``store``.
    """
    budget = memory_budget if store.on_disk else None
    strips = plan_strips(*window.shape, bytes_per_pixel=_GROUP_BYTES_PER_PIXEL,
                         threads=threads, memory=budget)
    groups = list(groups)

    prepare = functools.partial(prepare_image, grid=window.grid, weight_type=weight_type,
                                good_bits=good_bits, pixmap_stepsize=pixmap_stepsize)

    def prepared():
        for position, (_, _, images) in enumerate(groups):
            # map keeps no reference to an input once it is prepared, so its
            # DQ array is freed while the image is drizzled.
            for image in map(prepare, images):
                yield position, image

    # One stream over every group: the next group's first image is read
    # while this group's last one is drizzled and its weights are examined
    # (with one image a group, a stream per group would overlap nothing).
    stream = _GroupedStream(prefetch(prepared(), enabled=threads > 1))
    names = []
    try:
        for position, (group_id, n_images, _) in enumerate(groups):
            name = f"group{position}"
            _drizzle_prepared(stream.group(position, n_images), window, store, name=name,
                              n_images=n_images, strips=strips, threads=threads,
                              kernel=kernel, pixfrac=pixfrac, maskpt=maskpt)
            names.append(name)
            log.info("group %s drizzled (%d images)", group_id, n_images)
        stream.close()
        median_of_planes(store, names, "median", threads=threads, memory_budget=memory_budget)
    finally:
        stream.close()
        for name in names:
            if name in store:
                store.remove(name)
    return "median"


class _GroupedStream:
    """Hands out, group by group, the items of one stream of ``(group, item)``.

    ``group(position, n)`` yields that group's items, at most ``n`` of them,
    and stops early at an item of a later group (kept for that group), so a
    group that has fewer images than announced is caught by its drizzle's
    count, as with a stream of its own.
    """

    _NOTHING = object()

    def __init__(self, items):
        self._items = items
        self._pending = self._NOTHING

    def group(self, position, n):
        for _ in range(n):
            if self._pending is self._NOTHING:
                self._pending = next(self._items, self._NOTHING)
                if self._pending is self._NOTHING:
                    return
            group, item = self._pending
            if group > position:
                return
            self._pending = self._NOTHING
            if group < position:
                raise ValueError(f"exposure group {group} has more images than announced")
            yield item
            del item

    def close(self):
        """Stop the stream (and the thread producing it)."""
        self._pending = self._NOTHING
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


def drizzle_group(images, window, store, *, name, n_images, strips, threads=1,
                  kernel="square", pixfrac=1.0, weight_type="ivm", good_bits=None, maskpt=0.7,
                  pixmap_stepsize=10):
    """Drizzle one exposure group onto the window; NaN where poorly sampled.

    Parameters
    ----------
    images : iterable of ResampleInput
        Consumed one at a time (in a background thread when ``threads`` > 1).
    window : DataWindow
    store : PlaneStore
        Receives the group's frame as plane ``name``.
    name : str
    n_images : int
        How many images ``images`` yields.
    strips : list of (int, int)
        Window rows drizzled at once (see `plan_strips`).
    threads : int, optional
    kernel, pixfrac : optional
        Drizzle kernel and drop size.
    weight_type : {"ivm", "ivm-sky", "exptime"}
    good_bits : str, int or None
        Acceptable DQ flags.
    maskpt : float, optional
        Pixels with less than ``maskpt`` × the typical weight become NaN.
    pixmap_stepsize : int, optional

    Returns
    -------
    str
        ``name``.
    """
    # map keeps no reference to an input once it is prepared (see
    # `median_of_group_drizzles`).
    prepared = map(functools.partial(prepare_image, grid=window.grid, weight_type=weight_type,
                                     good_bits=good_bits, pixmap_stepsize=pixmap_stepsize),
                   images)
    stream = prefetch(prepared, enabled=threads > 1)
    try:
        return _drizzle_prepared(stream, window, store, name=name, n_images=n_images,
                                 strips=strips, threads=threads, kernel=kernel, pixfrac=pixfrac,
                                 maskpt=maskpt)
    finally:
        stream.close()


def _drizzle_prepared(images, window, store, *, name, n_images, strips, threads, kernel,
                      pixfrac, maskpt):
    """`drizzle_group` of images already prepared (`prepare_image`)."""
    prefix = f"{name}-"
    with DrizzleEngine(window, store, strips=strips, n_inputs=n_images, with_context=False,
                       kernel=kernel, pixfrac=pixfrac, threads=threads,
                       prefix=prefix) as engine:
        for image in images:
            engine.add(image)
            del image
    used = len(engine.exptimes)
    data, weight = engine.names["data"], engine.names["weight"]
    if used != n_images:
        store.remove(data)
        store.remove(weight)
        raise ValueError(f"expected {n_images} images in the group, got {used}")
    _mask_poorly_sampled(store, data, weight, maskpt=maskpt, threads=threads)
    store.remove(weight)
    store.rename(data, name)
    return name


def _sections(n_rows):
    """Rows of a frame worked on at once by `_typical_weight` and the masking:
    the same whatever the strips and threads."""
    return [(start, min(n_rows, start + _WEIGHT_SECTION_ROWS))
            for start in range(0, n_rows, _WEIGHT_SECTION_ROWS)]


def _map_sections(function, sections, threads):
    """``function(section)`` for each section, in threads; results in section order."""
    if threads <= 1 or len(sections) < 2:
        return [function(section) for section in sections]
    with concurrent.futures.ThreadPoolExecutor(threads, "sections") as pool:
        return list(pool.map(function, sections))


def _mask_poorly_sampled(store, data_name, weight_name, *, maskpt, threads=1):
    """Set the group's data to NaN where its weight is below ``maskpt`` × typical."""
    # One mapping of each file for every pass (a mapping per section would
    # fault its pages in again each time).
    weights = store.array(weight_name)
    threshold = maskpt * _typical_weight(weights, threads=threads)
    data = store.array(data_name)

    def mask(rows):
        # NaN where not weight >= threshold (compared in float32, as numpy
        # compares), and where weight <= 0 when the threshold would keep it.
        _kernels.mask_poor(data[rows[0]:rows[1]], weights[rows[0]:rows[1]], threshold,
                           not threshold > 0)

    _map_sections(mask, _sections(store.shape[0]), threads)


def _typical_weight(weights, *, threads=1):
    """Sigma-clipped mean of a frame's non-zero weights (3σ, at most 3 rounds).

    Each round keeps the weights within 3σ of the previous round's mean; as
    the kept set is always an interval of values, a round is one compiled
    pass per section of the frame that counts the kept weights and sums them
    and their squares in double precision (``_kernels.weight_moments``),
    never a copy of the weights. The sections are the same whatever the
    strips and threads of the drizzle, each is summed in an order fixed by
    its size, and their sums are added in section order, so the result, and
    the mask, are the same for any number of threads.

    Parameters
    ----------
    weights : numpy.ndarray
        The frame's weights (an array or a mapping of its file); compared
        and summed as float32.
    threads : int, optional
        Sections summed at once.
    """
    # The smallest positive float32: "non-zero weights" as an interval bound.
    low, high = float(np.nextafter(np.float32(0), np.float32(1))), np.inf
    sections = _sections(weights.shape[0])

    def section_moments(rows, lo, hi):
        values = np.ascontiguousarray(weights[rows[0]:rows[1]], dtype=np.float32)
        return _kernels.weight_moments(values, lo, hi)

    def moments(lo, hi):
        count, total, squares = 0, 0.0, 0.0
        for n, t, q in _map_sections(lambda rows: section_moments(rows, lo, hi), sections,
                                     threads):
            count += n
            total += t
            squares += q
        return count, total, squares

    count, total, squares = moments(low, high)
    if count == 0:
        return 0.0
    for _ in range(3):
        mean = total / count
        std = math.sqrt(max(squares / count - mean * mean, 0.0))
        new_low, new_high = max(low, mean - 3 * std), min(high, mean + 3 * std)
        new_count, new_total, new_squares = moments(new_low, new_high)
        if new_count == count or new_count == 0:
            break
        low, high = new_low, new_high
        count, total, squares = new_count, new_total, new_squares
    return total / count


def median_of_planes(store, names, out_name, *, threads=1, memory_budget=None, low=True):
    """Per-pixel median over planes of a store, in row sections, in threads.

    Parameters
    ----------
    store : PlaneStore
    names : list of str
        The planes to take the median of.
    out_name : str
        The plane made for the median.
    threads : int, optional
        Sections worked on at once.
    memory_budget : float, optional
        Most bytes for the sections being worked on and their temporaries.
        Sections hold at most 32 MiB a thread whatever the budget: larger
        ones only add page faults and cache misses (a budget of 1 GiB made
        one section of a 5-Mpix window take ten times as long).
    low : bool, optional
        Lower median for even counts (see `nanmedian_stack`): where only two
        groups overlap, the mean of the two would carry half of a cosmic ray
        into the model and hide it.

    Returns
    -------
    str
        ``out_name``.

    Examples
    --------
    >>> from romosaic.resample.planes import PlaneStore
    >>> store = PlaneStore((2, 3))
    >>> for name, value in (("a", 1.0), ("b", 5.0), ("c", np.nan)):
    ...     store.new_plane(name, fill=value)
    >>> store.read(median_of_planes(store, ["a", "b", "c"], "m"))[0].tolist()
    [1.0, 1.0, 1.0]
    """
    names = list(names)
    threads = max(1, int(threads))
    ny, nx = store.shape
    budget = threads * _MEDIAN_SECTION_BYTES
    if memory_budget:
        budget = min(budget, memory_budget)
    # Per pixel: the pages of the frames' bands and of the median's, which
    # stay resident while a section is worked on.
    per_row = nx * 4 * (len(names) + 1)
    rows_per_section = max(1, int(budget // (threads * per_row)))
    sections = [(start, min(ny, start + rows_per_section))
                for start in range(0, ny, rows_per_section)]
    store.new_plane(out_name)

    def median_section(rows):
        with contextlib.ExitStack() as stack:
            bands = [stack.enter_context(store.rows(name, rows)) for name in names]
            out = stack.enter_context(store.rows(out_name, rows))
            nanmedian_stack(bands, out=out, low=low)

    if threads == 1 or len(sections) == 1:
        for rows in sections:
            median_section(rows)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads, "median") as pool:
            list(pool.map(median_section, sections))
    return out_name


def blot_median(store, median_name, mapper, window):
    """The median interpolated (bilinearly) at an image's pixel positions.

    A compiled kernel evaluates the image's pixel map row by row from its
    splines and interpolates the median there, so neither the map nor
    coordinate arrays are held (an exact map, without splines, is made a
    band of rows at a time).
    Its values equal, to the bit, scipy's evaluation of the splines
    (`scipy.interpolate.RectBivariateSpline`) followed by
    ``scipy.ndimage.map_coordinates(median, (y - y0, x - x0), order=1,
    mode="constant", cval=nan, prefilter=False)``, except next to holes
    (NaN pixels of the median): there the median with its holes set to zero
    is interpolated, and the value is NaN only where a hole has a non-zero
    weight, so a point exactly on a pixel row or column next to a hole keeps
    its value. The tests compare the kernel with that scipy form.

    Parameters
    ----------
    store : PlaneStore
        Holds the median, in window pixels.
    median_name : str
        The median's plane.
    mapper : PixelMapper
        The image's mapping onto the grid.
    window : DataWindow

    Returns
    -------
    numpy.ndarray of float32
        NaN where the input pixel falls outside the median or on no data.
    """
    ny, nx = mapper.shape
    blot = np.empty((ny, nx), np.float32)
    spline = mapper.spline_coefficients()
    for r0 in range(0, ny, _BLOT_ROWS):
        rows = (r0, min(ny, r0 + _BLOT_ROWS))
        pixmap = None if spline is not None else mapper.region(rows)
        # The whole median, as a view in memory; on disk a mapping of which
        # only the pages this band reads are faulted in, and let go after it.
        with store.rows(median_name, (0, store.shape[0])) as median:
            _blot_rows(median, window, blot[rows[0]:rows[1]], rows[0], pixmap=pixmap,
                       spline=spline)
        del pixmap
    return blot


def _blot_rows(median, window, out, row0, *, pixmap=None, spline=None):
    """Fill ``out`` (image rows ``row0``...) with the median at their positions.

    Parameters
    ----------
    median : numpy.ndarray of float32
        The whole median, C-contiguous.
    window : DataWindow
    out : numpy.ndarray of float32
        C-contiguous rows of the blot, written (float64 gives the values
        before their rounding to float32, for the tests).
    row0 : int
        The image row of ``out[0]``.
    pixmap : numpy.ndarray of float64, optional
        The grid ``(x, y)`` of the pixels of ``out`` (shape ``(*out.shape, 2)``).
    spline : tuple, optional
        Instead of ``pixmap``: `PixelMapper.spline_coefficients` of the image.
    """
    median = np.ascontiguousarray(median, dtype=np.float32)
    if pixmap is not None:
        pixmap = np.ascontiguousarray(pixmap, dtype=np.float64)
    _kernels.blot(median, float(window.y0), float(window.x0), out, int(row0), pixmap, spline)


def flag_image(image, store, median_name, window, *, snr, scale, backg=0.0, model_error=0.0,
               good_bits=None, pixmap_stepsize=10):
    """Outlier mask of one input image against the median.

    Parameters
    ----------
    image : ResampleInput
    store : PlaneStore
        Holds the median over groups, in window pixels.
    median_name : str
        The median's plane.
    window : DataWindow
    snr, scale : (float, float)
    backg, model_error : float, optional
    good_bits : str, int or None, optional
        Only pixels with acceptable flags can be newly flagged.

    Returns
    -------
    mask : numpy.ndarray of bool
    blot : numpy.ndarray of float32
    """
    mapper = PixelMapper(image.wcs, window.grid.wcs, image.shape, stepsize=pixmap_stepsize)
    blot = blot_median(store, median_name, mapper, window)
    mask = masked_outliers(image, blot, snr=snr, scale=scale, backg=backg,
                           model_error=model_error, good_bits=good_bits)
    return mask, blot


def masked_outliers(image, blot, *, snr, scale, backg=0.0, model_error=0.0, good_bits=None):
    """The outlier mask of an image against its blot, in one compiled pass over its rows.

    That of `~romosaic.outlier.flagging.outlier_mask` with the image's noise
    (`image_noise`), its pixels whose flags are acceptable to ``good_bits``,
    and the sky level of the whole blot. The compiled test forms each
    pixel's float32 values by the same operations, in the same order, as
    those two functions (the tests compare them), and holds three rows of
    intermediates where numpy holds a dozen arrays of the image's size.
    """
    level = sky_level(blot)
    mask = np.empty(image.shape, bool)
    variances = tuple(_variance_plane(image.variances[name]) for name in _VARIANCE_PLANES
                      if image.variances.get(name) is not None)
    dq = np.ascontiguousarray(np.asarray(image.dq).astype(np.uint32, copy=False))
    _kernels.flag(np.ascontiguousarray(image.data, dtype=np.float32),
                  np.ascontiguousarray(blot, dtype=np.float32), dq, variances, mask,
                  float(scale[0]), float(scale[1]), float(snr[0]), float(snr[1]), float(backg),
                  float(model_error), None if level is None else float(level),
                  bad_flags_mask(good_bits), _finite_half_to_single())
    return mask


def _variance_plane(values):
    """A variance plane as the compiled test reads it: native float16, float32
    or float64, C-contiguous (others converted to float32, as `image_noise` does)."""
    values = np.asarray(values)
    if values.dtype in (np.float16, np.float32, np.float64) and values.flags.c_contiguous:
        return values
    return np.ascontiguousarray(values, dtype=np.float32)


def image_noise(image, rows=None):
    """1-σ noise of a `ResampleInput` (or of its ``rows``): the root of its summed variances."""
    r0, r1 = rows if rows is not None else (0, image.shape[0])
    variance = np.zeros((r1 - r0, image.shape[1]), np.float32)
    for name in _VARIANCE_PLANES:
        plane = image.variances.get(name)
        if plane is not None:
            values = _single_precision(plane[r0:r1])
            if not np.isfinite(values).all():
                np.nan_to_num(values, copy=False, nan=0.0)
            variance += values
    return np.sqrt(variance)


@functools.cache
def _half_to_single():
    """Every float16 bit pattern's float32 value, indexed by the pattern."""
    return np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)


@functools.cache
def _finite_half_to_single():
    """`_half_to_single` with non-finite values replaced as `image_noise` replaces them."""
    return np.nan_to_num(_half_to_single(), nan=0.0)


def _single_precision(values):
    """A float32 copy of ``values`` (float16 widened by `romosaic.half.as_float32`)."""
    values = np.asarray(values)
    if values.dtype == np.float16:
        return as_float32(values)
    return np.array(values, dtype=np.float32)
