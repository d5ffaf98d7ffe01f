"""The drizzle engine: every drizzle of a run, on a window of an output grid.

Resample's co-add and outlier detection's group drizzles both go through
`DrizzleEngine`:

* **Window.** Only the part of the grid the inputs can reach is drizzled
  (`data_window`): on a 5000 × 5000 skycell holding a few detectors that is
  a fraction of the grid.
* **Strips.** The window is cut into bands of rows (`plan_strips`): one
  band or a few per thread when the planes are in memory, bands of at most
  the memory budget per thread when they are memory-mapped files.
* **Prepared once.** Each input is read, weighted (`pixel_weights`) and its
  WCS evaluated on sparse nodes (`PixelMapper`) once (`prepare_image`), then
  deposited into every strip it reaches; for each strip only the input
  pixels that can land on it are mapped and drizzled.
* **Threads.** The strips an input reaches are drizzled by a pool of
  threads at the same time (the compiled kernels release the interpreter
  lock), while the next input is read and prepared in the background
  (`romosaic.parallel.prefetch`).

Every output pixel receives the same inputs, in the same order, from the
same input pixels as one drizzle of the whole grid would give it, so the
result does not depend on the strips or the number of threads (the tests
compare them to the bit).
"""

import concurrent.futures
import contextlib
import logging
import math
import threading
from dataclasses import dataclass

import numpy as np

from ..dq import DEFAULT_GOOD_BITS, good_pixel_mask
from ..wcs_utils import footprint_bounds, padded_window
from .coadd import CoaddResult, context_planes, fill_value
from .grid import native_pixel_scale
from .kernels import drizzle_add
from .pixmap import PixelMapper
from .planes import PlaneStore
from .weights import pixel_weights

__all__ = [
    "DEFAULT_MEMORY_BUDGET_MIB",
    "DataWindow",
    "DrizzleEngine",
    "PreparedImage",
    "data_window",
    "edge_margin",
    "plan_strips",
    "prepare_image",
    "result_on_grid",
]

log = logging.getLogger(__name__)

#: Default of the steps' ``memory_budget`` (MiB): drizzle planes beyond it
#: are memory-mapped files.
DEFAULT_MEMORY_BUDGET_MIB = 64

#: Output pixels of slack, beyond a drop's reach, when deciding which input
#: pixels can land on a strip (footprints and node cells are sampled).
_REACH_SLACK = 4

#: Fewest rows in a strip: thinner strips would mostly re-map input pixels
#: whose drops straddle their edges.
_MIN_STRIP_ROWS = 64
# Bytes of a grid plane's band written at once when a window is placed on the grid.
_GRID_BAND_BYTES = 8 * 2**20


def edge_margin(input_to_output_scale):
    """Output pixels a drop can reach beyond its input pixel's centre.

    The widest kernel (lanczos3) spans three input pixels each side; at
    ``input_to_output_scale`` output pixels per input pixel that is this
    many output pixels, plus one for the pixel itself.
    """
    return int(math.ceil(3.0 * input_to_output_scale)) + 1


@dataclass(frozen=True)
class DataWindow:
    """The part of an output grid that the inputs cover.

    Attributes
    ----------
    grid : OutputGrid
        The full output grid.
    x0, y0 : int
        Grid pixel of the window's pixel (0, 0).
    shape : tuple of int
        ``(ny, nx)`` of the window.
    """

    grid: object
    x0: int
    y0: int
    shape: tuple

    @property
    def fraction_of_grid(self):
        return (self.shape[0] * self.shape[1]) / (self.grid.shape[0] * self.grid.shape[1])

    @property
    def covers_grid(self):
        return self.shape == tuple(self.grid.shape)

    @property
    def cols(self):
        """Half-open grid columns of the window."""
        return self.x0, self.x0 + self.shape[1]


def data_window(grid, geometry, *, within=None):
    """The window of ``grid`` that the inputs' drops can reach.

    Parameters
    ----------
    grid : OutputGrid
    geometry : list of (wcs, shape)
        Every input's WCS and array shape.
    within : OutputGrid, optional
        Another grid (a skycell) outside which nothing is wanted: the window
        is then also limited to the box of that grid's footprint on
        ``grid``, with the same margin.

    Returns
    -------
    DataWindow

    Raises
    ------
    ValueError
        When no input lands on the grid (or within ``within``).
    """
    if not geometry:
        raise ValueError("no input images to drizzle")
    scales = [native_pixel_scale(wcs, shape) for wcs, shape in geometry]
    margin = edge_margin(max(scales) / grid.pixel_scale) + _REACH_SLACK
    # 17 points an edge: what an input reaches is decided from these bounds.
    bounds = footprint_bounds(geometry, grid.wcs, points_per_edge=17)
    window = padded_window(bounds, grid.shape, margin)
    if window is not None and within is not None:
        limit = padded_window(footprint_bounds([(within.wcs, within.shape)], grid.wcs,
                                               points_per_edge=17), grid.shape, margin)
        window = None if limit is None else _intersection(window, limit)
    if window is None:
        raise ValueError("the inputs do not overlap the output grid")
    (y0, y1), (x0, x1) = window
    return DataWindow(grid=grid, x0=x0, y0=y0, shape=(y1 - y0, x1 - x0))


def _intersection(window, other):
    """The rows and columns two windows share, or None."""
    (rows, cols), (other_rows, other_cols) = window, other
    rows = (max(rows[0], other_rows[0]), min(rows[1], other_rows[1]))
    cols = (max(cols[0], other_cols[0]), min(cols[1], other_cols[1]))
    if rows[0] >= rows[1] or cols[0] >= cols[1]:
        return None
    return rows, cols


def plan_strips(n_rows, n_cols, *, bytes_per_pixel, threads=1, memory=None):
    """Cut a window's rows into the strips the engine drizzles.

    Parameters
    ----------
    n_rows, n_cols : int
        Window shape.
    bytes_per_pixel : int
        Bytes of planes per window pixel.
    threads : int, optional
        Threads that will drizzle strips at once: in memory, two strips per
        thread let them share inputs that reach only part of the window.
    memory : float, optional
        Bytes the strips being worked on at once may hold (planes in files);
        None when the planes are in memory anyway.

    Returns
    -------
    list of (int, int)
        Half-open row ranges covering ``0 … n_rows`` in order.

    Examples
    --------
    >>> plan_strips(1000, 100, bytes_per_pixel=20, threads=2)
    [(0, 250), (250, 500), (500, 750), (750, 1000)]
    >>> len(plan_strips(1000, 1000, bytes_per_pixel=20, threads=1, memory=2e6))
    10
    """
    n_rows, threads = int(n_rows), max(1, int(threads))
    count = 1 if threads == 1 else 2 * threads
    if memory is not None:
        rows_in_memory = int(memory // (threads * bytes_per_pixel * max(1, int(n_cols))))
        count = max(count, math.ceil(n_rows / max(1, rows_in_memory)))
    count = max(1, min(count, n_rows // _MIN_STRIP_ROWS))
    height = math.ceil(n_rows / count)
    return [(start, min(n_rows, start + height)) for start in range(0, n_rows, height)]


@dataclass
class PreparedImage:
    """One input, ready to be deposited on any part of a grid.

    Attributes
    ----------
    name : str
    data : numpy.ndarray of float32
        Surface brightness, pending sky removed.
    weight : numpy.ndarray of float32
        Drizzle weight of each pixel (0 for pixels left out).
    variances : dict of str to numpy.ndarray
        Variance planes, in their stored dtype.
    exptime : float
    mapper : PixelMapper
        The input → grid pixel mapping.
    pixel_scale : float
        Native pixel size of the input, arcseconds.
    pixel_scale_ratio : float
        Output over input pixel size.
    reach : int
        Output pixels a drop can extend beyond its pixel's centre.
    bounds : (float, float, float, float)
        ``(x_min, x_max, y_min, y_max)`` of its pixel centres on the grid.
    usable_pixels : int
        Pixels with a positive weight.
    dq : numpy.ndarray or None
        DQ flags, kept only for an engine that propagates them.
    """

    name: str
    data: np.ndarray
    weight: np.ndarray
    variances: dict
    exptime: float
    mapper: PixelMapper
    pixel_scale: float
    pixel_scale_ratio: float
    reach: int
    bounds: tuple
    usable_pixels: int
    dq: np.ndarray | None = None


def prepare_image(image, grid, *, weight_type="ivm", good_bits=DEFAULT_GOOD_BITS,
                  pixmap_stepsize=10, keep_dq=False):
    """Weights and pixel mapping of an input, computed once for every strip.

    Parameters
    ----------
    image : ResampleInput
    grid : OutputGrid
    weight_type : {"ivm", "ivm-sky", "exptime"}
    good_bits : str, int or None
        Acceptable DQ flags (see `romosaic.dq`).
    pixmap_stepsize : int, optional
        Node spacing of the sparse WCS evaluation (see `PixelMapper`).
    keep_dq : bool, optional
        Keep the DQ array, for an engine that propagates it (otherwise it is
        not needed once the weights exist).

    Returns
    -------
    PreparedImage
    """
    good = good_pixel_mask(image.dq, good_bits)
    weight = pixel_weights(
        weight_type,
        data=image.data,
        good=good,
        var_rnoise=image.variances.get("var_rnoise"),
        var_poisson=image.variances.get("var_poisson"),
        exptime=image.exptime,
        name=image.name,
    )
    del good
    usable = int(np.count_nonzero(weight))
    if usable == 0:
        log.warning("%s: no usable pixels (all flagged, NaN or zero weight)", image.name)
    scale = native_pixel_scale(image.wcs, image.shape)
    mapper = PixelMapper(image.wcs, grid.wcs, image.shape, stepsize=pixmap_stepsize)
    return PreparedImage(
        name=image.name,
        data=image.data,
        weight=weight,
        variances=image.variances,
        exptime=image.exptime,
        mapper=mapper,
        pixel_scale=scale,
        pixel_scale_ratio=grid.pixel_scale / scale,
        reach=edge_margin(scale / grid.pixel_scale) + _REACH_SLACK,
        bounds=mapper.output_bounds(),
        usable_pixels=usable,
        dq=image.dq if keep_dq else None,
    )


class DrizzleEngine:
    """Drizzle prepared images onto a window of a grid, strip by strip, in threads.

    The planes are made in ``store`` (of the window's shape) under the names
    ``prefix + "data"``, ``"weight"``, ``"var-<name>"``, ``"context"`` and,
    with ``with_dq``, ``"dq"``.
    Use as a context manager (it owns a pool of threads).

    Parameters
    ----------
    window : DataWindow
    store : PlaneStore
    strips : list of (int, int)
        Window row ranges (see `plan_strips`).
    n_inputs : int
        Images that will be added (sets the context depth).
    variance_names : sequence of str, optional
        Variance planes to propagate.
    with_context : bool, optional
    with_dq : bool, optional
        Propagate the inputs' DQ flags: each output pixel gets the OR of the
        flags of the input pixels that deposit on it (the images must be
        prepared with ``keep_dq``).
    kernel : str, optional
    pixfrac : float, optional
    fillval : str or float, optional
        Value of pixels that receive nothing (applied by `finish`).
    threads : int, optional
    prefix : str, optional
        Prefix of the plane names.

    Examples
    --------
    >>> from romosaic.wcs_utils import affine_tan_wcs
    >>> from romosaic.resample.grid import free_grid
    >>> from romosaic.resample.inputs import ResampleInput
    >>> wcs = affine_tan_wcs(crval=(10, 20), crpix=(32, 32),
    ...                      cd=[[-3e-5, 0], [0, 3e-5]], shape=(64, 64))
    >>> grid = free_grid([(wcs, (64, 64))])
    >>> image = ResampleInput(name="a", data=np.full((64, 64), 2.0, np.float32),
    ...                       dq=np.zeros((64, 64), np.uint32), wcs=wcs, exptime=10.0,
    ...                       variances={"var_rnoise": np.ones((64, 64), np.float32)})
    >>> window = data_window(grid, [(wcs, (64, 64))])
    >>> store = PlaneStore(window.shape)
    >>> with DrizzleEngine(window, store, strips=[(0, 64)], n_inputs=1,
    ...                    variance_names=["var_rnoise"]) as engine:
    ...     engine.add(prepare_image(image, grid))
    ...     engine.finish()
    4096
    >>> data, variance = store.read("data")[30, 30], store.read("var-var_rnoise")[30, 30]
    >>> round(float(data), 5), round(float(variance), 5)
    (2.0, 1.0)
    """

    def __init__(self, window, store, *, strips, n_inputs, variance_names=(), with_context=True,
                 with_dq=False, kernel="square", pixfrac=1.0, fillval="NaN", threads=1,
                 prefix=""):
        if tuple(store.shape) != tuple(window.shape):
            raise ValueError(f"store shape {store.shape} differs from the window's "
                             f"{window.shape}")
        self.window = window
        self.store = store
        self.strips = [tuple(s) for s in strips]
        self.n_inputs = int(n_inputs)
        self.variance_names = tuple(variance_names)
        self.kernel = str(kernel)
        self.pixfrac = float(pixfrac)
        self.fill = fill_value(fillval)
        self.threads = max(1, int(threads))
        self.exptimes = []
        #: Identities of the threads that deposited pixels (for the tests' proof
        #: that more than one ran).
        self.threads_used = set()
        self.names = {"data": prefix + "data", "weight": prefix + "weight"}
        self.names.update({f"var-{v}": f"{prefix}var-{v}" for v in self.variance_names})
        # The kernel keeps running means that start from zero weight, so the
        # planes start as zeros (free in a sparse file); `finish` gives pixels
        # that received nothing the fill value.
        for name in self.names.values():
            store.new_plane(name)
        self.context_name = None
        if with_context:
            self.context_name = prefix + "context"
            store.new_plane(self.context_name, np.uint32, depth=context_planes(self.n_inputs))
        self.dq_name = None
        if with_dq:
            self.dq_name = prefix + "dq"
            store.new_plane(self.dq_name, np.uint32)
        self._pool = (concurrent.futures.ThreadPoolExecutor(self.threads, "drizzle")
                      if self.threads > 1 else None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop the threads (the planes stay in the store)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @classmethod
    def bytes_per_pixel(cls, n_inputs, n_variances, with_context=True, with_dq=False):
        """Bytes of planes per window pixel: data, weight, variances, context, DQ."""
        context = 4 * context_planes(n_inputs) if with_context else 0
        return 4 * (2 + int(n_variances) + bool(with_dq)) + context

    def add(self, image):
        """Deposit one prepared image on every strip it reaches.

        Returns
        -------
        int
            Input pixels deposited (a pixel landing on two strips counts twice).
        """
        index = len(self.exptimes)
        if index >= self.n_inputs:
            raise ValueError(f"the engine was sized for {self.n_inputs} inputs")
        self.exptimes.append(float(image.exptime))
        strips = [strip for strip in self.strips if self._reaches(image, strip)]
        if self._pool is None or len(strips) < 2:
            counts = [self._deposit(image, index, strip) for strip in strips]
        else:
            counts = list(self._pool.map(lambda s: self._deposit(image, index, s), strips))
        return int(sum(counts))

    def finish(self):
        """Give pixels that received nothing the fill value."""
        def fill(strip):
            with self.store.rows(self.names["weight"], strip) as weight:
                empty = weight <= 0
                if not empty.any():
                    return
                for key, name in self.names.items():
                    if key != "weight":
                        with self.store.rows(name, strip) as plane:
                            plane[empty] = self.fill

        if self._pool is None:
            for strip in self.strips:
                fill(strip)
        else:
            list(self._pool.map(fill, self.strips))

    def _reaches(self, image, strip):
        x_min, x_max, y_min, y_max = image.bounds
        if not all(math.isfinite(v) for v in (x_min, x_max, y_min, y_max)):
            return False
        top, bottom = self.window.y0 + strip[0], self.window.y0 + strip[1]
        left, right = self.window.cols
        return (y_max + image.reach >= top and y_min - image.reach < bottom
                and x_max + image.reach >= left and x_min - image.reach < right)

    def _deposit(self, image, index, strip):
        """Drizzle the input pixels that can land on one strip into it."""
        start, stop = strip
        left, right = self.window.cols
        top, bottom = self.window.y0 + start, self.window.y0 + stop
        pieces = image.mapper.input_pieces_for(
            (left - image.reach, right + image.reach), (top - image.reach, bottom + image.reach))
        if not pieces:
            return 0
        if self.dq_name is not None and image.dq is None:
            raise ValueError(f"{image.name}: prepared without its DQ array (keep_dq)")
        variances = [image.variances.get(name) for name in self.variance_names]
        deposited = 0
        with contextlib.ExitStack() as stack:
            def band(name):
                return stack.enter_context(self.store.rows(name, strip))

            out = {"out_data": band(self.names["data"]), "out_weight": band(self.names["weight"]),
                   "out_variances": [band(self.names[f"var-{name}"])
                                     for name in self.variance_names],
                   "out_context": band(self.context_name) if self.context_name else None,
                   "out_dq": band(self.dq_name) if self.dq_name else None}
            # In row order, so that each output pixel gets its contributions
            # in the same order as from one rectangle holding every piece.
            for rows, cols in pieces:
                deposited += self._deposit_piece(image, index, rows, cols, variances,
                                                 origin=(left, top), **out)
        if deposited:
            self.threads_used.add(threading.get_ident())
        return deposited

    def _deposit_piece(self, image, index, rows, cols, variances, *, origin, out_data,
                       out_weight, out_variances, out_context, out_dq):
        (r0, r1), (c0, c1) = rows, cols
        ny, nx = image.data.shape
        # One pixel of border round the piece: the square kernel finds a
        # pixel's corners from its neighbours' positions, as in the whole
        # image. The border pixels themselves get no weight (their drops
        # are another piece's, or cannot reach the strip).
        h0, h1, g0, g1 = max(0, r0 - 1), min(ny, r1 + 1), max(0, c0 - 1), min(nx, c1 + 1)
        rows, cols = slice(h0, h1), slice(g0, g1)
        weight = np.array(image.weight[rows, cols])
        weight[:r0 - h0] = 0
        weight[r1 - h0:] = 0
        weight[:, :c0 - g0] = 0
        weight[:, c1 - g0:] = 0
        # The mapper itself: the square kernel evaluates the pixel map as it
        # goes, without the piece's whole map in memory.
        return drizzle_add(
            image.data[rows, cols], image.mapper, out_data, out_weight,
            weight=weight,
            variances=[None if plane is None else plane[rows, cols] for plane in variances],
            out_variances=out_variances,
            out_context=out_context,
            context_index=index,
            dq=image.dq[rows, cols] if out_dq is not None else None,
            out_dq=out_dq,
            kernel=self.kernel,
            pixfrac=self.pixfrac,
            pixel_scale_ratio=image.pixel_scale_ratio,
            origin=origin,
            input_origin=(g0, h0),
        )


def result_on_grid(store, window, engine, *, directory=None, threads=1):
    """The engine's planes as a `CoaddResult` on the whole grid.

    When the window is the grid, the store's own arrays are used; otherwise
    the window is placed in arrays of the grid's shape (in memory, or in new
    files in ``directory``), filled as an empty drizzle leaves them.

    Parameters
    ----------
    store : PlaneStore
    window : DataWindow
    engine : DrizzleEngine
        The finished engine whose planes to use.
    directory : str or os.PathLike, optional
        Where the grid-sized planes go when the store is on disk.
    threads : int, optional
        Planes placed on the grid at once.

    Returns
    -------
    CoaddResult
    """
    names = engine.names
    if window.covers_grid:
        planes = {key: store.array(name) for key, name in names.items()}
        context = store.array(engine.context_name) if engine.context_name else None
        dq = store.array(engine.dq_name) if engine.dq_name else None
        return _coadd_result(planes, context, dq, engine)
    grid_store = PlaneStore(window.grid.shape, directory=directory if store.on_disk else None)
    top, (left, right) = window.y0, window.cols
    bottom = top + window.shape[0]
    grid_rows, grid_cols = window.grid.shape

    def move_to_grid(name, dtype=np.float32, fill=0, depth=None):
        # Each grid pixel is written once, a band of rows at a time: the
        # window's part copied, the rest given the fill (zeros need no
        # writing: a new plane is zeros, untouched).
        grid_store.new_plane(name, dtype, depth=depth)
        itemsize = np.dtype(dtype).itemsize * (depth or 1)
        step = max(1, _GRID_BAND_BYTES // (grid_cols * itemsize))
        for start in range(0, grid_rows, step):
            stop = min(grid_rows, start + step)
            w0, w1 = max(start, top), min(stop, bottom)
            with grid_store.rows(name, (start, stop)) as band:
                if fill != 0:
                    band[..., :max(0, w0 - start), :] = fill
                    band[..., max(0, w1 - start):, :] = fill
                if w0 < w1:
                    inside = band[..., w0 - start:w1 - start, :]
                    if fill != 0:
                        inside[..., :left] = fill
                        inside[..., right:] = fill
                    inside[..., left:right] = store.read(name, rows=(w0 - top, w1 - top))
        store.remove(name)
        return grid_store.array(name)

    # Per result key: the plane's name, dtype, fill and depth.
    moves = {key: (name, np.float32, 0 if key == "weight" else engine.fill, None)
             for key, name in names.items()}
    if engine.context_name:
        moves["context"] = (engine.context_name, np.uint32, 0,
                            context_planes(engine.n_inputs))
    if engine.dq_name:
        moves["dq"] = (engine.dq_name, np.uint32, 0, None)
    with concurrent.futures.ThreadPoolExecutor(max(1, int(threads)), "grid") as pool:
        moved = dict(zip(moves, pool.map(lambda key: move_to_grid(*moves[key]), moves),
                         strict=True))
    planes = {key: moved[key] for key in names}
    if grid_store.on_disk:
        # The arrays are mappings: the files can go now.
        grid_store.close()
    return _coadd_result(planes, moved.get("context"), moved.get("dq"), engine,
                         region=(slice(top, bottom), slice(left, right)))


def _coadd_result(planes, context, dq, engine, region=(slice(None), slice(None))):
    return CoaddResult(
        data=planes["data"],
        weight=planes["weight"],
        context=context,
        dq=dq,
        variances={name: planes[f"var-{name}"] for name in engine.variance_names},
        exptimes=list(engine.exptimes),
        region=region,
    )
