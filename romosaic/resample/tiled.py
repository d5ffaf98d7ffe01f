"""Drizzling a large output grid in horizontal strips, into memory-mapped arrays.

`drizzle_images` holds the whole output (data, weight, two or three
variance planes and the context) in memory while it drizzles: 24 bytes a
pixel or more, about 5 GB for a 15000 × 15000 mosaic of 3 × 3 skycells.
`drizzle_images_tiled` bounds that memory:

* the output grid is cut into full-width strips of rows (`plan_strips`),
  each small enough that its drizzle arrays fit in ``tile_memory`` bytes;
* each strip is a window of the same grid, padded by the same drizzle
  margin `drizzle_images` uses, so that every strip pixel receives exactly
  the contributions it would receive in one big drizzle;
* for each strip, the inputs that reach it are loaded again (the caller
  supplies a loader), their pixel maps computed on the full grid, and only
  the input rows and columns that land in the padded strip are drizzled;
* inputs that miss a strip still take their turn, as an empty image of
  zero weight, so that input ``i`` keeps context bit ``i`` in every strip;
* strips cover only the *data window*: the rows and columns of the grid
  that some input can reach (`drizzle_window`). On a 5000 × 5000 skycell
  holding a few detectors that is a fraction of the grid; the pixels
  outside it get the values an empty drizzle gives (``fillval``, zero
  weight and context), without drizzling them;
* each finished strip is written into memory-mapped arrays in temporary
  files (`MappedPlanes`), which are unlinked as soon as the result is
  assembled: the space is given back when the last mapping goes, even if
  the process dies.

Every output pixel therefore gets the same inputs, in the same order, with
the same pixel maps and weights as in one big drizzle. Strip coordinates
differ from grid coordinates by whole pixels, a shift that is exact in
floating point, and the results equal those of one big drizzle to the bit
(``tests/test_resample_core.py`` compares them).

The same strips let more than one core drizzle: with ``workers`` > 1 the
strips are drizzled by forked worker processes (`romosaic.parallel`), each
writing its finished strips into the shared output planes. With
``in_memory=True`` those planes are shared memory (`SharedPlanes`) instead of
files and the grid is cut into one strip per worker: the parallel form of
`drizzle_images`, with identical results.
"""

import logging
import math
import shutil
import weakref

import numpy as np

from .._atomic import make_private_dir
from ..dq import DEFAULT_GOOD_BITS, good_pixel_mask
from ..parallel import run_in_workers, shared_zeros
from ..wcs_utils import footprint_bounds, padded_window
from .coadd import CoaddResult, DrizzleCoadd, context_planes
from .drizzle_images import KERNELS, edge_margin
from .grid import native_pixel_scale
from .pixmap import PixelMapper
from .weights import pixel_weights

__all__ = [
    "MappedPlanes",
    "SharedPlanes",
    "bytes_per_output_pixel",
    "data_window_fraction",
    "drizzle_images_tiled",
    "drizzle_window",
    "plan_bands",
    "plan_strips",
]

log = logging.getLogger(__name__)

#: Output pixels of slack, beyond the drizzle margin, when deciding which
#: inputs (and which of their pixels) reach a strip. Footprints are sampled
#: at a few points per edge; this absorbs their rounding.
_REACH_SLACK = 4

#: Input pixels kept round the part of an input that lands in a strip, so
#: that drizzle's kernel sees the same neighbouring pixel-map values there
#: as in the whole image.
_INPUT_BORDER = 2


def bytes_per_output_pixel(n_inputs, n_variances):
    """Bytes of drizzle arrays per output pixel: data, weight, variances, context."""
    return 4 * (2 + int(n_variances)) + 4 * context_planes(n_inputs)


def plan_strips(ny, nx, *, bytes_per_pixel, tile_memory, margin):
    """Cut ``ny`` output rows into strips whose drizzle arrays fit in ``tile_memory``.

    Parameters
    ----------
    ny, nx : int
        Output shape.
    bytes_per_pixel : int
        See `bytes_per_output_pixel`.
    tile_memory : float
        Bytes allowed for one strip's arrays, margins included.
    margin : int
        Drizzle margin added on every side of a strip.

    Returns
    -------
    list of (int, int)
        ``(start, stop)`` row ranges covering ``0 … ny`` in order, of equal
        height but for the last.

    Examples
    --------
    >>> plan_strips(1000, 100, bytes_per_pixel=24, tile_memory=24 * 110 * 260, margin=5)
    [(0, 250), (250, 500), (500, 750), (750, 1000)]
    """
    ny, nx, margin = int(ny), int(nx), int(margin)
    row_bytes = bytes_per_pixel * (nx + 2 * margin)
    rows = int(tile_memory // row_bytes) - 2 * margin
    # A strip thinner than its margins would mostly drizzle margin.
    rows = max(rows, 2 * margin, 16)
    count = max(1, math.ceil(ny / rows))
    height = math.ceil(ny / count)
    return [(start, min(ny, start + height)) for start in range(0, ny, height)]


def drizzle_window(bounds, shape, margin):
    """The rows and columns of a grid that the inputs can reach.

    Parameters
    ----------
    bounds : list of (float, float, float, float)
        `~romosaic.wcs_utils.footprint_bounds` of the inputs.
    shape : (int, int)
        Grid ``(ny, nx)``.
    margin : int
        Drizzle margin: how far past its footprint an input's pixels reach.

    Returns
    -------
    ((int, int), (int, int))
        Half-open ``(row_start, row_stop), (col_start, col_stop)``; the whole
        grid when no input has a position on it (nothing is then saved, and
        nothing lands).
    """
    window = padded_window(bounds, shape, int(margin) + _REACH_SLACK)
    return window or ((0, int(shape[0])), (0, int(shape[1])))


class MappedPlanes:
    """The output arrays of a tiled drizzle, in memory-mapped temporary files.

    Strips are written through short-lived mappings (`write`), so the
    process holds no output pages between strips; `arrays` maps the
    finished planes for reading and unlinks the files at once.

    Parameters
    ----------
    shape : (int, int)
        Output ``(ny, nx)``.
    variance_names : sequence of str
    n_context_planes : int
    directory : str or os.PathLike, optional
        Where the temporary directory is made (default: the current one;
        not the system temporary directory, often held in memory).
    """

    def __init__(self, shape, variance_names, n_context_planes, *, directory=None):
        self.shape = tuple(int(n) for n in shape)
        self.variance_names = tuple(variance_names)
        self.n_context_planes = int(n_context_planes)
        # A private directory named after this process, so that a later run
        # removes it if this one is killed (see romosaic._atomic).
        self._dir = make_private_dir(directory or ".", "tiles")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._specs = {"data": (np.float32, self.shape), "weight": (np.float32, self.shape),
                       "context": (np.uint32, (self.n_context_planes, *self.shape))}
        for name in self.variance_names:
            self._specs[f"var-{name}"] = (np.float32, self.shape)
        for name, (dtype, full_shape) in self._specs.items():
            nbytes = int(np.prod(full_shape)) * np.dtype(dtype).itemsize
            with open(self._path(name), "wb") as handle:
                handle.truncate(nbytes)  # sparse: no disk used until written

    def _path(self, name):
        return self._dir / f"{name}.bin"

    def write(self, start, stop, result, cols=None):
        """Store a finished strip (a `CoaddResult` for rows ``start:stop``).

        ``cols`` (half-open) are the grid columns the strip covers; all by
        default.
        """
        planes = {"data": result.data, "weight": result.weight}
        planes.update({f"var-{n}": result.variances[n] for n in self.variance_names})
        ny, nx = self.shape
        cols = cols or (0, nx)
        for name, values in planes.items():
            self._write_rows(name, start, stop, values, cols)
        context = result.context
        for plane in range(self.n_context_planes):
            row_offset = plane * ny
            self._write_rows("context", row_offset + start, row_offset + stop, context[plane],
                             cols, dtype=np.uint32)

    def fill(self, rows, cols, values):
        """Set ``plane[rows, cols]`` to ``values[plane]`` (a scalar per plane name)."""
        (r0, r1), (c0, c1) = rows, cols
        ny, nx = self.shape
        # A few MiB at a time: the region may be most of a large grid.
        step = max(1, (4 * 2**20) // (4 * nx))
        for name, value in values.items():
            dtype = self._specs[name][0]
            planes = range(self.n_context_planes) if name == "context" else [0]
            for plane in planes:
                for start in range(r0, r1, step):
                    stop = min(r1, start + step)
                    block = np.full((stop - start, c1 - c0), value, dtype)
                    self._write_rows(name, plane * ny + start, plane * ny + stop, block,
                                     (c0, c1), dtype=dtype)

    def _write_rows(self, name, start, stop, values, cols, dtype=np.float32):
        nx = self.shape[1]
        itemsize = np.dtype(dtype).itemsize
        mapped = np.memmap(self._path(name), dtype=dtype, mode="r+", offset=start * nx * itemsize,
                           shape=(stop - start, nx))
        mapped[:, cols[0]:cols[1]] = values
        mapped.flush()
        del mapped

    def arrays(self, exptimes):
        """The finished planes as a `CoaddResult` of memory-mapped arrays.

        The files are unlinked once mapped (on systems that allow it); the
        data live until the last array referring to them is released.
        """
        def open_plane(name):
            dtype, full_shape = self._specs[name]
            mapped = np.memmap(self._path(name), dtype=dtype, mode="r+", shape=full_shape)
            # A plain ndarray view (ASDF refuses the memmap subclass); it keeps
            # the mapping alive.
            return np.asarray(mapped)

        result = CoaddResult(
            data=open_plane("data"),
            weight=open_plane("weight"),
            context=open_plane("context"),
            variances={n: open_plane(f"var-{n}") for n in self.variance_names},
            exptimes=list(exptimes),
        )
        self.close()
        return result

    def close(self):
        """Remove the temporary files (mapped arrays stay readable on POSIX systems)."""
        try:
            shutil.rmtree(self._dir)
        except OSError:
            # Mapped files cannot be removed on some systems: at exit, then.
            return
        self._cleanup.detach()


class SharedPlanes:
    """The output arrays of a tiled drizzle, in memory shared with worker processes.

    The same interface as `MappedPlanes`: strips are written with `write`
    (by this process or a worker forked after the planes were made), and
    `arrays` gives the finished planes.

    Parameters
    ----------
    shape : (int, int)
        Output ``(ny, nx)``.
    variance_names : sequence of str
    n_context_planes : int
    """

    def __init__(self, shape, variance_names, n_context_planes):
        self.shape = tuple(int(n) for n in shape)
        self.variance_names = tuple(variance_names)
        self.n_context_planes = int(n_context_planes)
        self._planes = {"data": shared_zeros(self.shape), "weight": shared_zeros(self.shape),
                        "context": shared_zeros((self.n_context_planes, *self.shape), np.uint32)}
        for name in self.variance_names:
            self._planes[f"var-{name}"] = shared_zeros(self.shape)

    def write(self, start, stop, result, cols=None):
        """Store a finished strip (a `CoaddResult` for rows ``start:stop``, columns ``cols``)."""
        c0, c1 = cols or (0, self.shape[1])
        self._planes["data"][start:stop, c0:c1] = result.data
        self._planes["weight"][start:stop, c0:c1] = result.weight
        for name in self.variance_names:
            self._planes[f"var-{name}"][start:stop, c0:c1] = result.variances[name]
        self._planes["context"][:, start:stop, c0:c1] = result.context

    def fill(self, rows, cols, values):
        """Set ``plane[rows, cols]`` to ``values[plane]`` (a scalar per plane name)."""
        (r0, r1), (c0, c1) = rows, cols
        for name, value in values.items():
            if name == "context":
                self._planes[name][:, r0:r1, c0:c1] = value
            else:
                self._planes[name][r0:r1, c0:c1] = value

    def arrays(self, exptimes):
        """The finished planes as a `CoaddResult`."""
        planes = self._planes
        return CoaddResult(
            data=planes["data"],
            weight=planes["weight"],
            context=planes["context"],
            variances={n: planes[f"var-{n}"] for n in self.variance_names},
            exptimes=list(exptimes),
        )

    def close(self):
        """Let the planes go (their memory is freed with the last array using it)."""
        self._planes = {}


def plan_bands(ny, count):
    """Cut ``ny`` rows into ``count`` bands of (nearly) equal height.

    Examples
    --------
    >>> plan_bands(10, 3)
    [(0, 4), (4, 8), (8, 10)]
    """
    count = max(1, min(int(count), int(ny)))
    height = math.ceil(ny / count)
    return [(start, min(ny, start + height)) for start in range(0, ny, height)]


def data_window_fraction(geometry, grid):
    """The fraction of ``grid``'s pixels in the data window `drizzle_images_tiled` uses.

    Parameters
    ----------
    geometry : list of (wcs, shape)
    grid : OutputGrid

    Returns
    -------
    float
        1.0 when the inputs fill the grid; small for a few detectors on a
        skycell.
    """
    margin = edge_margin(native_pixel_scale(*geometry[0]) / grid.pixel_scale)
    (row0, row1), (col0, col1) = drizzle_window(_input_bounds(geometry, grid), grid.shape,
                                                margin)
    return (row1 - row0) * (col1 - col0) / (grid.shape[0] * grid.shape[1])


def drizzle_images_tiled(
    load_input,
    geometry,
    grid,
    *,
    tile_memory=0,
    directory=None,
    workers=1,
    in_memory=False,
    kernel="square",
    pixfrac=1.0,
    fillval="NaN",
    weight_type="ivm",
    good_bits=DEFAULT_GOOD_BITS,
    include_var_flat=False,
    pixmap_stepsize=10,
):
    """Co-add images onto ``grid`` a strip at a time (see the module docstring).

    Parameters
    ----------
    load_input : callable
        ``load_input(i)`` returns a context manager giving input ``i`` as a
        `ResampleInput` (so a model can be borrowed while it is used); called
        once for every strip the input reaches.
    geometry : list of (wcs, shape)
        Every input's WCS and shape, in context order.
    grid : OutputGrid
    tile_memory : float, optional
        Bytes allowed for one strip's drizzle arrays (with ``in_memory=False``).
    directory : str or os.PathLike, optional
        Where the memory-mapped output files are made.
    workers : int, optional
        Processes drizzling strips at once (see `romosaic.parallel`).
    in_memory : bool, optional
        Keep the output in shared memory, cut into one strip per worker,
        rather than in files cut into strips of ``tile_memory``.
    kernel, pixfrac, fillval, weight_type, good_bits, include_var_flat, pixmap_stepsize
        As for `drizzle_images`.

    Returns
    -------
    result : CoaddResult
        Arrays in shared memory, or memory-mapped from (already unlinked)
        temporary files.
    input_pixel_scale : float
        Native pixel size of the first input, arcseconds.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if not geometry:
        raise ValueError("no input images to drizzle")
    n_inputs = len(geometry)
    variance_names = ["var_rnoise", "var_poisson"] + (["var_flat"] if include_var_flat else [])
    input_pixel_scale = native_pixel_scale(*geometry[0])
    # One margin for every strip, from the first input, as drizzle_images does.
    margin = edge_margin(input_pixel_scale / grid.pixel_scale)
    ny, nx = grid.shape
    reach = _input_bounds(geometry, grid)
    (row0, row1), (col0, col1) = drizzle_window(reach, grid.shape, margin)
    coadd_options = {"variance_names": variance_names, "kernel": kernel, "pixfrac": pixfrac,
                     "fillval": fillval}
    if in_memory:
        strips = [(row0 + start, row0 + stop) for start, stop in plan_bands(row1 - row0, workers)]
        planes = SharedPlanes(grid.shape, variance_names, context_planes(n_inputs))
    else:
        strips = [(row0 + start, row0 + stop) for start, stop in plan_strips(
            row1 - row0, col1 - col0, bytes_per_pixel=bytes_per_output_pixel(
                n_inputs, len(variance_names)), tile_memory=tile_memory, margin=margin)]
        planes = MappedPlanes(grid.shape, variance_names, context_planes(n_inputs),
                              directory=directory)
    log.info("drizzling %d x %d of the grid's %d x %d pixels in %d strip(s) of up to %d rows",
             col1 - col0, row1 - row0, nx, ny, len(strips), strips[0][1] - strips[0][0])
    options = {"weight_type": weight_type, "good_bits": good_bits,
               "pixmap_stepsize": pixmap_stepsize}
    # Grid columns of a strip's padded arrays: the same for every strip.
    left, right = col0 - margin, col1 + margin

    def drizzle_strip(number):
        start, stop = strips[number]
        low, high = start - margin, stop + margin
        coadd = DrizzleCoadd((stop - start + 2 * margin, right - left), n_inputs,
                             **coadd_options)
        seen = {}  # input index -> (exposure time, usable pixels)
        for index in range(n_inputs):
            _, _, y_min, y_max = reach[index]
            touches = (math.isfinite(y_min) and y_max >= low - _REACH_SLACK
                       and y_min < high + _REACH_SLACK)
            added = False
            if touches:
                with load_input(index) as image:
                    added = _add_strip_part(coadd, image, grid, (low, high), (left, right),
                                            **options)
                    seen[index] = (image.exptime, added)
            if not added:
                _add_nothing(coadd, seen.get(index, (None,))[0])
        result = coadd.finish()
        del coadd
        planes.write(start, stop, result.crop(margin), cols=(col0, col1))
        del result
        reached = sum(1 for _, added in seen.values() if added)
        log.info("strip %d/%d (rows %d-%d): %d input(s)", number + 1, len(strips), start,
                 stop - 1, reached)
        return {index: exptime for index, (exptime, _) in seen.items()}

    try:
        _fill_outside_window(planes, grid.shape, (row0, row1), (col0, col1),
                             _empty_pixel(n_inputs, margin, coadd_options))
        exptimes = [None] * n_inputs
        for seen in run_in_workers(drizzle_strip, range(len(strips)), workers=workers):
            for index, exptime in seen.items():
                exptimes[index] = exptime
        for index in range(n_inputs):
            if exptimes[index] is None:
                # Never reached the grid: its exposure time still counts in the
                # metadata; read it once.
                with load_input(index) as image:
                    exptimes[index] = image.exptime
                    log.info("%s: no pixel lands on the output grid", image.name)
        return planes.arrays(exptimes), input_pixel_scale
    except BaseException:
        planes.close()
        raise


# A stand-in for an input that misses a strip: its context bit is taken but
# nothing lands (far outside the output, zero weight).
_NOTHING_DATA = np.zeros((2, 2), np.float32)
_NOTHING_PIXMAP = np.full((2, 2, 2), -1.0e9)


def _input_bounds(geometry, grid):
    # 17 points an edge: finer than the default, as a strip's reach is
    # decided from these bounds alone.
    return footprint_bounds(geometry, grid.wcs, points_per_edge=17)


def _add_nothing(coadd, exptime):
    coadd.add(_NOTHING_DATA, _NOTHING_PIXMAP, weight=_NOTHING_DATA, exptime=exptime or 1.0)


def _empty_pixel(n_inputs, margin, coadd_options):
    """Each plane's value where nothing lands, from drizzling nothing onto one pixel."""
    coadd = DrizzleCoadd((1 + 2 * margin, 1 + 2 * margin), n_inputs, **coadd_options)
    for _ in range(n_inputs):
        _add_nothing(coadd, 1.0)
    empty = coadd.finish().crop(margin)
    values = {"data": empty.data[0, 0], "weight": empty.weight[0, 0],
              "context": empty.context[0, 0, 0]}
    values.update({f"var-{name}": plane[0, 0] for name, plane in empty.variances.items()})
    return values


def _fill_outside_window(planes, shape, rows, cols, values):
    """Give the grid outside the data window the values of an empty drizzle.

    Planes start as zeros, so zero values need no writing (and the pages
    of a shared or sparse plane stay untouched).
    """
    ny, nx = shape
    (r0, r1), (c0, c1) = rows, cols
    to_write = {name: value for name, value in values.items() if value != 0}  # NaN != 0
    if not to_write:
        return
    for region in (((0, r0), (0, nx)), ((r1, ny), (0, nx)),
                   ((r0, r1), (0, c0)), ((r0, r1), (c1, nx))):
        (a, b), (c, d) = region
        if b > a and d > c:
            planes.fill(*region, to_write)


def _add_strip_part(coadd, image, grid, strip_rows, strip_cols, *, weight_type, good_bits,
                    pixmap_stepsize):
    """Drizzle the part of ``image`` landing in a padded strip.

    ``strip_rows`` and ``strip_cols`` are the grid rows and columns
    (half-open) of the strip's padded arrays. Returns False (adding nothing)
    when no pixel lands there.
    """
    mapper = PixelMapper(image.wcs, grid.wcs, image.shape, stepsize=pixmap_stepsize)
    (low, high), (left, right) = strip_rows, strip_cols
    part = mapper.input_region_for(
        (left - _REACH_SLACK, right + _REACH_SLACK),
        (low - _REACH_SLACK, high + _REACH_SLACK))
    if part is None:
        return False
    (r0, r1), (c0, c1) = part
    # Input pixels landing outside the padded strip are dropped by drizzle,
    # so a generous rectangle changes nothing in the strip.
    r0, c0 = max(0, r0 - _INPUT_BORDER), max(0, c0 - _INPUT_BORDER)
    r1 = min(image.shape[0], r1 + _INPUT_BORDER)
    c1 = min(image.shape[1], c1 + _INPUT_BORDER)
    rows, cols = slice(r0, r1), slice(c0, c1)
    good = good_pixel_mask(image.dq, good_bits)
    # Weights of the whole image: ivm smoothing works on blocks of it.
    weight = pixel_weights(
        weight_type,
        data=image.data,
        good=good,
        var_rnoise=image.variances.get("var_rnoise"),
        var_poisson=image.variances.get("var_poisson"),
        exptime=image.exptime,
    )
    del good
    weight = np.ascontiguousarray(weight[rows, cols])
    pixmap = mapper.region((r0, r1), (c0, c1))
    # Shifting grid coordinates by whole numbers is exact.
    pixmap[..., 0] -= left
    pixmap[..., 1] -= low
    scale = native_pixel_scale(image.wcs, image.shape)
    coadd.add(
        image.data[rows, cols],
        pixmap,
        weight=weight,
        variances={name: plane[rows, cols] for name, plane in image.variances.items()},
        exptime=image.exptime,
        pixel_scale_ratio=grid.pixel_scale / scale,
    )
    return True
