"""Outlier detection on arrays: group drizzles, their median, blot, flags.

The steps, as in the reference pipeline (REFERENCE §3), with romosaic's
choices about where and how the work is done:

1. **Where.** Everything happens on a *data window* of the output grid: the
   bounding box of the inputs' footprints (plus a drizzle margin), clipped
   to the grid. On a 5000 × 5000 skycell holding a few detectors this is a
   fraction of the grid, so cost follows the data, not the grid.
2. **Group drizzles.** Each exposure group is drizzled alone onto the
   window, one output *tile* at a time (`drizzle_group`): only the input
   pixels that land on the tile are mapped and drizzled, into the tile's
   part of the group's frame. Pixels whose weight is below ``maskpt`` × the
   group's typical weight (clipped mean of its non-zero weights) are then
   set to NaN, since they are poorly sampled edges or holes.
3. **Median.** The per-pixel median over groups (`nanmedian_stack`), taken in
   horizontal sections of the frames (`median_of_frames`).
4. **Blot and flag.** For each input image the median is interpolated at the
   input's pixel positions (bilinear, through the same pixel map used to
   drizzle it), one input tile at a time (`blot_median`), and `outlier_mask`
   decides which pixels disagree, a band of rows at a time (`flag_image`).

Frames live in a `FrameStore`, in memory or in memory-mapped temporary
files. With the files, no step ever holds a whole frame: the working set is
one input image plus ``memory_budget`` bytes of tiles or sections, whatever
the number of groups and the size of the window. Tiles and sections change
where the arithmetic is done, not its result: a tile sees exactly the
contributions, in the same order, that a whole-window drizzle would.
"""

import logging
import math
import os
import shutil
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .._atomic import make_private_dir
from ..dq import good_pixel_mask
from ..parallel import shared_zeros
from ..resample.coadd import DrizzleCoadd
from ..resample.drizzle_images import edge_margin
from ..resample.grid import native_pixel_scale
from ..resample.pixmap import PixelMapper
from ..resample.weights import pixel_weights
from ..wcs_utils import footprint_bounds, padded_window
from .flagging import outlier_mask, sky_level
from .median import nanmedian_stack

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DataWindow",
    "FrameStore",
    "blot_median",
    "data_window",
    "drizzle_group",
    "drizzle_group_into",
    "flag_image",
    "image_noise",
    "median_of_frames",
    "median_section_into",
    "median_sections",
]

log = logging.getLogger(__name__)

#: Bytes of tiles, sections and their temporaries to hold at once.
DEFAULT_MEMORY_BUDGET = 64 * 2**20

# Side, in input pixels, of the pieces an image is blotted in.
_BLOT_TILE = 1024
# Rows of an image flagged at once, and the rows of context each side that
# make the result independent of the split (derivative, 3x3 maximum, 3x3
# growth: two rows).
_FLAG_ROWS = 512
_FLAG_HALO = 2


@dataclass
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

    def mapper(self, wcs, shape, *, stepsize=10):
        """A `PixelMapper` from an input image onto the grid (window offset not applied)."""
        return PixelMapper(wcs, self.grid.wcs, shape, stepsize=stepsize)


def data_window(grid, geometry, *, margin=8):
    """The window of ``grid`` holding every input footprint, plus ``margin`` pixels.

    Parameters
    ----------
    grid : OutputGrid
    geometry : list of (wcs, shape)
    margin : int, optional

    Returns
    -------
    DataWindow
    """
    window = padded_window(footprint_bounds(geometry, grid.wcs), grid.shape, margin)
    if window is None:
        raise ValueError("the inputs do not overlap the output grid")
    (y0, y1), (x0, x1) = window
    return DataWindow(grid=grid, x0=x0, y0=y0, shape=(y1 - y0, x1 - x0))


class FrameStore:
    """Float32 frames of one shape, in memory or in memory-mapped temporary files.

    Frames are read and written a rectangle at a time, so that with
    ``on_disk=True`` only the rectangles in use are in memory.

    Parameters
    ----------
    shape : tuple of int
        Frame shape ``(ny, nx)``.
    on_disk : bool, optional
        Keep frames in files under ``directory`` instead of memory.
    directory : str or os.PathLike, optional
        Where on-disk frames go (a private temporary directory is made in it).

    Examples
    --------
    >>> store = FrameStore((4, 5))
    >>> frame = store.new_frame()
    >>> store.write(frame, np.full((2, 2), 7.0), rows=(1, 3), cols=(0, 2))
    >>> store.read(frame, rows=(0, 2)).tolist()[1]
    [7.0, 7.0, 0.0, 0.0, 0.0]
    >>> store.close()
    """

    def __init__(self, shape, *, on_disk=False, directory=None):
        self.shape = tuple(int(n) for n in shape)
        self.on_disk = on_disk
        self._frames = {}
        self._count = 0
        self._temp = None
        if on_disk:
            # Named after this process, so that a later run removes it if this
            # one is killed (see romosaic._atomic).
            self._temp = make_private_dir(directory or ".", "median")

    def new_frame(self):
        """Make a frame of zeros (free for a new file); returns its key."""
        key = self._count
        self._count += 1
        if self.on_disk:
            path = os.path.join(self._temp, f"frame{key:04d}.f32")
            with open(path, "wb") as handle:  # a sparse file: reads as zeros
                handle.truncate(4 * self.shape[0] * self.shape[1])
            self._frames[key] = path
        else:
            # Shared, so that worker processes forked later write into it.
            self._frames[key] = shared_zeros(self.shape, np.float32)
        return key

    def add(self, frame):
        """Store a whole frame (float32); returns its key."""
        key = self.new_frame()
        self.write(key, np.asarray(frame, dtype=np.float32))
        return key

    def read(self, key, rows=None, cols=None):
        """A copy of ``frame[rows, cols]`` (half-open ranges; whole axes by default)."""
        region = self._region(rows, cols)
        if not self.on_disk:
            return self._frames[key][region].copy()
        mapped = np.memmap(self._frames[key], dtype=np.float32, mode="r", shape=self.shape)
        values = np.array(mapped[region])
        del mapped  # unmapping returns the pages to the page cache
        return values

    def read_only(self, key, rows=None, cols=None):
        """``frame[rows, cols]`` for reading only: a view in memory, a copy on disk.

        Saves `read`'s copy where the caller neither keeps nor changes the
        values (the view would see later writes to the frame).
        """
        if not self.on_disk:
            return self._frames[key][self._region(rows, cols)]
        return self.read(key, rows=rows, cols=cols)

    def write(self, key, values, rows=None, cols=None):
        """Set ``frame[rows, cols] = values``."""
        region = self._region(rows, cols)
        if not self.on_disk:
            self._frames[key][region] = values
            return
        mapped = np.memmap(self._frames[key], dtype=np.float32, mode="r+", shape=self.shape)
        mapped[region] = values
        # No flush: the files are scratch, and the page cache already shares
        # the new values with every later map of the file.
        del mapped

    def remove(self, key):
        """Forget a frame (and delete its file).

        A worker process may delete a frame's file before its parent
        forgets the frame; the parent's `remove` then only forgets it.
        """
        frame = self._frames.pop(key)
        if self.on_disk:
            try:
                os.remove(frame)
            except FileNotFoundError:
                pass

    def keys(self):
        return list(self._frames)

    def __len__(self):
        return len(self._frames)

    def rows(self, start, stop, keys=None):
        """Rows ``start:stop`` of the frames, stacked: shape (n, stop-start, nx)."""
        keys = self.keys() if keys is None else keys
        out = np.empty((len(keys), stop - start, self.shape[1]), np.float32)
        for i, key in enumerate(keys):
            out[i] = self.read_only(key, rows=(start, stop))
        return out

    def array(self, key):
        """The whole frame: the array itself in memory, a read-only map on disk."""
        if not self.on_disk:
            return self._frames[key]
        return np.memmap(self._frames[key], dtype=np.float32, mode="r", shape=self.shape)

    def close(self):
        """Remove on-disk frames."""
        self._frames = {}
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def _region(self, rows, cols):
        ny, nx = self.shape
        r0, r1 = rows if rows is not None else (0, ny)
        c0, c1 = cols if cols is not None else (0, nx)
        return slice(r0, r1), slice(c0, c1)



def tile_side(memory_budget):
    """Side of the square output tiles that fit ``memory_budget`` bytes.

    A tile holds data and weight (8 bytes per output pixel); the input
    pixels that land on it need about 24 bytes each (pixel map, data,
    weight), and there are at most as many as output pixels on the grids
    outlier detection uses (which are as fine as the inputs or finer).
    """
    return max(256, int(math.sqrt(memory_budget / 32)))


def drizzle_group(images, window, store, *, n_images, kernel="square", pixfrac=1.0,
                  weight_type="ivm", good_bits=None, maskpt=0.7, pixmap_stepsize=10,
                  memory_budget=DEFAULT_MEMORY_BUDGET):
    """Drizzle one exposure group onto the window; NaN where poorly sampled.

    Makes the group's frames in ``store`` and calls `drizzle_group_into`
    (which a worker process can call on frames its parent made).

    Parameters
    ----------
    images : iterable of ResampleInput
        Consumed one at a time (a generator can load each just in time).
    window : DataWindow
    store : FrameStore
        Holds the result (and, while drizzling, the group's weights).
    n_images : int
        How many images ``images`` yields.
    memory_budget : int, optional
        Bytes of output tiles and their inputs to hold at once.

    Returns
    -------
    key
        The group's frame in ``store``.
    """
    # Both start as zeros (free for a new file): drizzle treats a pixel of
    # zero weight as empty whatever its value, and pixels that stay empty
    # become NaN in the masking.
    data_key = store.new_frame()
    weight_key = store.new_frame()
    drizzle_group_into(images, window, store, data_key, weight_key, n_images=n_images,
                       kernel=kernel, pixfrac=pixfrac, weight_type=weight_type,
                       good_bits=good_bits, maskpt=maskpt, pixmap_stepsize=pixmap_stepsize,
                       memory_budget=memory_budget)
    store.remove(weight_key)
    return data_key


def drizzle_group_into(images, window, store, data_key, weight_key, *, n_images,
                       kernel="square", pixfrac=1.0, weight_type="ivm", good_bits=None,
                       maskpt=0.7, pixmap_stepsize=10, memory_budget=DEFAULT_MEMORY_BUDGET):
    """`drizzle_group` into frames of ``store`` made beforehand (zero-filled).

    ``data_key`` receives the group's drizzle, NaN where poorly sampled;
    ``weight_key`` its weights (the caller removes that frame). The other
    parameters are those of `drizzle_group`.
    """
    side = tile_side(memory_budget)
    ny, nx = window.shape
    used = 0
    for image in images:
        used += 1
        scale = native_pixel_scale(image.wcs, image.shape)
        # Drizzle drops input pixels centred off its output: pad each tile
        # so that pixels straddling its edge are drizzled into it.
        margin = edge_margin(scale / window.grid.pixel_scale)
        mapper = window.mapper(image.wcs, image.shape, stepsize=pixmap_stepsize)
        good = good_pixel_mask(image.dq, good_bits)
        weight = pixel_weights(weight_type, data=image.data, good=good,
                               var_rnoise=image.variances.get("var_rnoise"),
                               var_poisson=image.variances.get("var_poisson"),
                               exptime=image.exptime)
        del good
        for (ty0, ty1), (tx0, tx1) in _tiles(window.shape, side, mapper.output_bounds(),
                                             (window.x0, window.y0), margin):
            # Tile pixel (0, 0) in grid coordinates, padding included.
            origin_x, origin_y = window.x0 + tx0 - margin, window.y0 + ty0 - margin
            region = mapper.input_region_for(
                (origin_x - 0.5, window.x0 + tx1 + margin - 0.5),
                (origin_y - 0.5, window.y0 + ty1 + margin - 0.5))
            if region is None:
                continue
            (r0, r1), (c0, c1) = region
            shape = (ty1 - ty0 + 2 * margin, tx1 - tx0 + 2 * margin)
            tile_data = np.zeros(shape, np.float32)
            tile_weight = np.zeros(shape, np.float32)
            inner = (slice(margin, shape[0] - margin), slice(margin, shape[1] - margin))
            tile_data[inner] = store.read_only(data_key, rows=(ty0, ty1), cols=(tx0, tx1))
            tile_weight[inner] = store.read_only(weight_key, rows=(ty0, ty1), cols=(tx0, tx1))
            pixmap = mapper.region((r0, r1), (c0, c1))
            pixmap[..., 0] -= origin_x
            pixmap[..., 1] -= origin_y
            coadd = DrizzleCoadd(shape, 1, kernel=kernel, pixfrac=pixfrac, fillval="NaN",
                                 with_context=False, out_data=tile_data, out_weight=tile_weight)
            coadd.add(image.data[r0:r1, c0:c1], pixmap, weight=weight[r0:r1, c0:c1],
                      exptime=image.exptime, pixel_scale_ratio=window.grid.pixel_scale / scale)
            result = coadd.finish()
            del coadd, pixmap
            store.write(data_key, result.data[inner], rows=(ty0, ty1), cols=(tx0, tx1))
            store.write(weight_key, result.weight[inner], rows=(ty0, ty1), cols=(tx0, tx1))
            del result, tile_data, tile_weight
        del image, weight
    if used != n_images:
        raise ValueError(f"expected {n_images} images in the group, got {used}")
    _mask_poorly_sampled(store, data_key, weight_key, maskpt=maskpt,
                         rows_per_section=max(1, memory_budget // (16 * nx)))


def _tiles(window_shape, side, bounds, window_origin, margin):
    """Tiles ``((y0, y1), (x0, x1))`` of the window that an image's bounds reach."""
    ny, nx = window_shape
    x_min, x_max, y_min, y_max = bounds
    wx0, wy0 = window_origin
    x_lo = max(0, int(math.floor(x_min - wx0)) - margin - 1)
    x_hi = min(nx, int(math.ceil(x_max - wx0)) + margin + 2)
    y_lo = max(0, int(math.floor(y_min - wy0)) - margin - 1)
    y_hi = min(ny, int(math.ceil(y_max - wy0)) + margin + 2)
    # Tiles are laid on a fixed lattice, the same for every image.
    for ty0 in range((y_lo // side) * side, y_hi, side):
        for tx0 in range((x_lo // side) * side, x_hi, side):
            yield (ty0, min(ny, ty0 + side)), (tx0, min(nx, tx0 + side))


def _mask_poorly_sampled(store, data_key, weight_key, *, maskpt, rows_per_section):
    """Set the group's data to NaN where its weight is below ``maskpt`` × typical."""
    ny = store.shape[0]
    threshold = maskpt * _typical_weight(store, weight_key, rows_per_section)
    for start in range(0, ny, rows_per_section):
        rows = (start, min(ny, start + rows_per_section))
        data = store.read(data_key, rows=rows)
        weight = store.read_only(weight_key, rows=rows)
        data[~(weight >= threshold) | (weight <= 0)] = np.nan
        store.write(data_key, data, rows=rows)


def _typical_weight(store, weight_key, rows_per_section):
    """Sigma-clipped mean of a frame's non-zero weights (3σ, at most 3 rounds).

    Each round keeps the weights within 3σ of the previous round's mean; as
    the kept set is always an interval of values, the rounds are sums over
    sections of the frame, never a copy of all the weights.
    """
    # The smallest positive float32: "non-zero weights" as an interval bound.
    low, high = float(np.nextafter(np.float32(0), np.float32(1))), np.inf

    def moments(lo, hi):
        count, total, squares = 0, 0.0, 0.0
        for start in range(0, store.shape[0], rows_per_section):
            values = store.read(weight_key, rows=(start, start + rows_per_section))
            kept = (values >= lo) & (values <= hi)
            count += int(np.count_nonzero(kept))
            total += float(np.add.reduce(values, axis=None, dtype=np.float64, where=kept))
            np.multiply(values, values, out=values)
            squares += float(np.add.reduce(values, axis=None, dtype=np.float64, where=kept))
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


def median_of_frames(store, *, memory_budget=DEFAULT_MEMORY_BUDGET, low=True, keys=None):
    """Per-pixel median over stored frames, computed in row sections.

    Parameters
    ----------
    store : FrameStore
    memory_budget : int, optional
        Bytes for a section of the frames and the median's temporaries.
    low : bool, optional
        Lower median for even counts (see `nanmedian_stack`): where only two
        groups overlap, the mean of the two would carry half of a cosmic ray
        into the model and hide it.
    keys : list, optional
        The frames to use; all by default.

    Returns
    -------
    key
        The median's frame in ``store``.
    """
    keys = store.keys() if keys is None else list(keys)
    median_key = store.new_frame()
    for section in median_sections(store, len(keys), memory_budget=memory_budget):
        median_section_into(store, keys, median_key, section, low=low)
    return median_key


def median_sections(store, n_frames, *, memory_budget=DEFAULT_MEMORY_BUDGET):
    """The row ranges ``(start, stop)`` `median_of_frames` works in, each within the budget."""
    ny, nx = store.shape
    # Per pixel: the section and the sorted copy (8 bytes a frame) and the
    # counts, indices and results of `nanmedian_stack` (about 40 bytes).
    rows_per_section = max(1, int(memory_budget // (nx * (8 * max(n_frames, 1) + 40))))
    return [(start, min(ny, start + rows_per_section)) for start in range(0, ny, rows_per_section)]


def median_section_into(store, keys, median_key, rows, *, low=True):
    """Write the median of frames ``keys`` over ``rows`` into frame ``median_key``."""
    start, stop = rows
    section = nanmedian_stack(store.rows(start, stop, keys=keys), low=low)
    store.write(median_key, section, rows=(start, stop))


def blot_median(store, median_key, mapper, window):
    """The median interpolated (bilinearly) at an image's pixel positions.

    Parameters
    ----------
    store : FrameStore
        Holds the median, in window pixels.
    median_key
        The median's frame.
    mapper : PixelMapper
        The image's mapping onto the grid.
    window : DataWindow

    Returns
    -------
    numpy.ndarray of float32
        NaN where the input pixel falls outside the median or on no data.
    """
    ny, nx = mapper.shape
    blot = np.full((ny, nx), np.nan, np.float32)
    wy, wx = store.shape
    for r0 in range(0, ny, _BLOT_TILE):
        for c0 in range(0, nx, _BLOT_TILE):
            rows, cols = (r0, min(ny, r0 + _BLOT_TILE)), (c0, min(nx, c0 + _BLOT_TILE))
            pixmap = mapper.region(rows, cols)
            x = pixmap[..., 0] - window.x0
            y = pixmap[..., 1] - window.y0
            del pixmap
            finite = np.isfinite(x) & np.isfinite(y)
            if not finite.any():
                continue
            # The median pixels this piece can touch (bilinear: floor and floor + 1).
            y0 = min(wy, max(0, int(math.floor(y[finite].min())) - 1))
            y1 = max(0, min(wy, int(math.floor(y[finite].max())) + 3))
            x0 = min(wx, max(0, int(math.floor(x[finite].min())) - 1))
            x1 = max(0, min(wx, int(math.floor(x[finite].max())) + 3))
            if y1 <= y0 or x1 <= x0:
                continue
            # Shifted coordinates keep points off the median off the piece too:
            # the piece only ends short of the median where no point reaches.
            piece = store.read(median_key, rows=(y0, y1), cols=(x0, x1))
            blot[rows[0]:rows[1], cols[0]:cols[1]] = _interpolate(piece, y - y0, x - x0)
    return blot


def _interpolate(median, y, x):
    """Bilinear interpolation of ``median`` at ``(y, x)``, NaN next to holes or outside."""
    coordinates = np.array([y, x])
    holes = np.isnan(median)
    has_holes = bool(holes.any())
    filled = np.where(holes, np.float32(0.0), median) if has_holes else median
    values = ndimage.map_coordinates(filled.astype(np.float32, copy=False), coordinates,
                                     order=1, mode="constant", cval=np.nan, prefilter=False)
    if has_holes:
        # A pixel next to a hole would mix in the zero fill: mark it missing.
        # (Without holes this second interpolation could only find the
        # points off the piece, which the first already made NaN.)
        near_hole = ndimage.map_coordinates(holes.astype(np.float32), coordinates, order=1,
                                            mode="constant", cval=1.0, prefilter=False) > 0
        values[near_hole] = np.nan
    return values.astype(np.float32, copy=False)


def flag_image(image, store, median_key, window, *, snr, scale, backg=0.0, model_error=0.0,
               good_bits=None, pixmap_stepsize=10):
    """Outlier mask of one input image against the median.

    Parameters
    ----------
    image : ResampleInput
    store : FrameStore
        Holds the median over groups, in window pixels.
    median_key
        The median's frame.
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
    mapper = window.mapper(image.wcs, image.shape, stepsize=pixmap_stepsize)
    blot = blot_median(store, median_key, mapper, window)
    mask = masked_outliers(image, blot, snr=snr, scale=scale, backg=backg,
                           model_error=model_error, good_bits=good_bits)
    return mask, blot


def masked_outliers(image, blot, *, snr, scale, backg=0.0, model_error=0.0, good_bits=None):
    """`outlier_mask` of an image against its blot, a band of rows at a time.

    Bands overlap by the rows of context the test needs, and the model's
    sky level is taken over the whole blot, so the result equals one call
    on the whole image while its temporaries stay a band in size.
    """
    ny = image.shape[0]
    level = sky_level(blot)
    mask = np.zeros(image.shape, bool)
    for start in range(0, ny, _FLAG_ROWS):
        stop = min(ny, start + _FLAG_ROWS)
        lo, hi = max(0, start - _FLAG_HALO), min(ny, stop + _FLAG_HALO)
        band = slice(lo, hi)
        usable = good_pixel_mask(image.dq[band], good_bits)
        band_mask = outlier_mask(image.data[band], blot[band], image_noise(image, rows=(lo, hi)),
                                 snr=snr, scale=scale, backg=backg, model_error=model_error,
                                 usable=usable, sky_level=level)
        mask[start:stop] = band_mask[start - lo:stop - lo]
    return mask


def image_noise(image, rows=None):
    """1-σ noise of a `ResampleInput` (or of its ``rows``): the root of its summed variances."""
    r0, r1 = rows if rows is not None else (0, image.shape[0])
    variance = np.zeros((r1 - r0, image.shape[1]), np.float32)
    for name in ("var_rnoise", "var_poisson", "var_flat"):
        plane = image.variances.get(name)
        if plane is not None:
            variance += np.nan_to_num(np.asarray(plane[r0:r1], np.float32), nan=0.0)
    return np.sqrt(variance)
