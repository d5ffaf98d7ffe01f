"""Outlier detection on arrays: group drizzles, their median, blot, flags.

The steps, as in the reference pipeline (REFERENCE §3), with romosaic's
choices about where and how the work is done:

1. **Where.** Everything happens on a *data window* of the output grid: the
   bounding box of the inputs' footprints (plus a drizzle margin), clipped
   to the grid. On a 5000 × 5000 skycell holding a few detectors this is a
   fraction of the grid, so cost follows the data, not the grid.
2. **Group drizzles.** Each exposure group is drizzled alone onto the
   window; pixels whose weight is below ``maskpt`` × the group's typical
   weight (clipped mean of its non-zero weights) are set to NaN, since they
   are poorly sampled edges or holes.
3. **Median.** The per-pixel median over groups (`nanmedian_stack`), taken in
   horizontal sections so that only ``memory_budget`` bytes of group frames
   are read at once. With a `FrameStore` on disk, no more than a section of
   the N frames is ever in memory.
4. **Blot and flag.** For each input image the median is interpolated at the
   input's pixel positions (bilinear, through the same pixel map used to
   drizzle it) and `outlier_mask` decides which pixels disagree.
"""

import logging
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..dq import good_pixel_mask
from ..resample.coadd import DrizzleCoadd
from ..resample.drizzle_images import edge_margin
from ..resample.grid import native_pixel_scale
from ..resample.pixmap import compute_pixmap
from ..resample.weights import pixel_weights
from ..wcs_utils import footprint
from .flagging import outlier_mask
from .median import nanmedian_stack

__all__ = [
    "DataWindow",
    "FrameStore",
    "blot_median",
    "data_window",
    "drizzle_group",
    "flag_image",
    "image_noise",
    "median_of_frames",
]

log = logging.getLogger(__name__)


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

    def pixmap(self, wcs, shape, *, stepsize=10):
        """Input pixels mapped into window coordinates."""
        pixmap = compute_pixmap(wcs, self.grid.wcs, shape, stepsize=stepsize)
        pixmap[..., 0] -= self.x0
        pixmap[..., 1] -= self.y0
        return pixmap


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
    ny, nx = grid.shape
    xs, ys = [], []
    for wcs, shape in geometry:
        ra, dec = footprint(wcs, shape)
        x, y = grid.wcs.invert(ra, dec, with_bounding_box=False)
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    x0 = max(0, int(math.floor(np.nanmin(x))) - margin)
    y0 = max(0, int(math.floor(np.nanmin(y))) - margin)
    x1 = min(nx, int(math.ceil(np.nanmax(x))) + margin + 1)
    y1 = min(ny, int(math.ceil(np.nanmax(y))) + margin + 1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the inputs do not overlap the output grid")
    return DataWindow(grid=grid, x0=x0, y0=y0, shape=(y1 - y0, x1 - x0))


class FrameStore:
    """Holds the group drizzles: in memory, or in memory-mapped temporary files.

    Parameters
    ----------
    shape : tuple of int
        Frame shape.
    on_disk : bool, optional
        Keep frames in files under ``directory`` instead of memory.
    directory : str or os.PathLike, optional
        Where on-disk frames go (a private temporary directory is made in it).
    """

    def __init__(self, shape, *, on_disk=False, directory=None):
        self.shape = tuple(shape)
        self.on_disk = on_disk
        self._frames = []
        self._temp = None
        if on_disk:
            self._temp = tempfile.TemporaryDirectory(prefix="romosaic-median-",
                                                     dir=directory or ".")

    def add(self, frame):
        """Store one frame (float32)."""
        frame = np.asarray(frame, dtype=np.float32)
        if self.on_disk:
            path = os.path.join(self._temp.name, f"group{len(self._frames):04d}.f32")
            mapped = np.memmap(path, dtype=np.float32, mode="w+", shape=self.shape)
            mapped[...] = frame
            mapped.flush()
            del mapped
            self._frames.append(path)
        else:
            self._frames.append(frame)

    def __len__(self):
        return len(self._frames)

    def rows(self, start, stop):
        """Rows ``start:stop`` of every frame, stacked: shape (n, stop-start, nx)."""
        out = np.empty((len(self._frames), stop - start, self.shape[1]), np.float32)
        for i, frame in enumerate(self._frames):
            if self.on_disk:
                mapped = np.memmap(frame, dtype=np.float32, mode="r", shape=self.shape)
                out[i] = mapped[start:stop]
                del mapped
            else:
                out[i] = frame[start:stop]
        return out

    def close(self):
        """Remove on-disk frames."""
        self._frames = []
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None


def drizzle_group(images, window, *, n_images, kernel="square", pixfrac=1.0,
                  weight_type="ivm", good_bits=None, maskpt=0.7, pixmap_stepsize=10):
    """Drizzle one exposure group onto the window; NaN where poorly sampled.

    Parameters
    ----------
    images : iterable of ResampleInput
        Consumed one at a time (a generator can load each just in time).
    window : DataWindow
    n_images : int
        How many images ``images`` yields.

    Returns
    -------
    numpy.ndarray of float32
    """
    margin = None
    coadd = None
    for image in images:
        scale = native_pixel_scale(image.wcs, image.shape)
        if coadd is None:
            margin = edge_margin(scale / window.grid.pixel_scale)
            shape = (window.shape[0] + 2 * margin, window.shape[1] + 2 * margin)
            coadd = DrizzleCoadd(shape, n_images, kernel=kernel, pixfrac=pixfrac,
                                 fillval="NaN", with_context=False)
        good = good_pixel_mask(image.dq, good_bits)
        weight = pixel_weights(weight_type, data=image.data, good=good,
                               var_rnoise=image.variances.get("var_rnoise"),
                               var_poisson=image.variances.get("var_poisson"),
                               exptime=image.exptime)
        pixmap = window.pixmap(image.wcs, image.shape, stepsize=pixmap_stepsize) + margin
        coadd.add(image.data, pixmap, weight=weight, exptime=image.exptime,
                  pixel_scale_ratio=window.grid.pixel_scale / scale)
    result = coadd.finish()
    del coadd
    result.crop(margin)
    data, weight = result.data, result.weight
    threshold = maskpt * _typical_weight(weight)
    data[~(weight >= threshold) | (weight <= 0)] = np.nan
    return data


def _typical_weight(weight):
    """Sigma-clipped mean of the non-zero weights."""
    values = weight[weight > 0]
    if values.size == 0:
        return 0.0
    for _ in range(3):
        mean, std = float(values.mean()), float(values.std())
        keep = np.abs(values - mean) <= 3 * std
        if keep.all() or not keep.any():
            break
        values = values[keep]
    return float(values.mean())


def median_of_frames(store, *, memory_budget=256 * 2**20, low=True):
    """Per-pixel median over the stored frames, computed in row sections.

    Parameters
    ----------
    store : FrameStore
    memory_budget : int, optional
        Bytes of frame data to hold at once (the sorting also needs about
        as much again).
    low : bool, optional
        Lower median for even counts (see `nanmedian_stack`): where only two
        groups overlap, the mean of the two would carry half of a cosmic ray
        into the model and hide it.

    Returns
    -------
    numpy.ndarray of float32
    """
    ny, nx = store.shape
    n = max(len(store), 1)
    rows_per_section = max(1, int(memory_budget // (4 * nx * n)))
    median = np.empty(store.shape, np.float32)
    for start in range(0, ny, rows_per_section):
        stop = min(ny, start + rows_per_section)
        nanmedian_stack(store.rows(start, stop), out=median[start:stop], low=low)
    return median


def blot_median(median, pixmap):
    """The median image interpolated (bilinearly) at input pixel positions.

    Parameters
    ----------
    median : numpy.ndarray
        In window pixels.
    pixmap : numpy.ndarray, shape (ny, nx, 2)
        Window ``(x, y)`` of each input pixel.

    Returns
    -------
    numpy.ndarray of float32
        NaN where the input pixel falls outside the median or on no data.
    """
    coordinates = np.array([pixmap[..., 1], pixmap[..., 0]])
    holes = np.isnan(median)
    filled = np.where(holes, 0.0, median).astype(np.float32)
    blot = ndimage.map_coordinates(filled, coordinates, order=1, mode="constant",
                                   cval=np.nan, prefilter=False)
    # A pixel next to a hole would mix in the zero fill: mark it missing.
    near_hole = ndimage.map_coordinates(holes.astype(np.float32), coordinates, order=1,
                                        mode="constant", cval=1.0, prefilter=False) > 0
    blot[near_hole] = np.nan
    return blot.astype(np.float32)


def flag_image(image, median, window, *, snr, scale, backg=0.0, model_error=0.0,
               good_bits=None, pixmap_stepsize=10):
    """Outlier mask of one input image against the median.

    Parameters
    ----------
    image : ResampleInput
    median : numpy.ndarray
        Median over groups, in window pixels.
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
    pixmap = window.pixmap(image.wcs, image.shape, stepsize=pixmap_stepsize)
    blot = blot_median(median, pixmap)
    noise = image_noise(image)
    usable = good_pixel_mask(image.dq, good_bits)
    mask = outlier_mask(image.data, blot, noise, snr=snr, scale=scale, backg=backg,
                        model_error=model_error, usable=usable)
    return mask, blot


def image_noise(image):
    """1-σ noise of a `ResampleInput`: the square root of its summed variance planes."""
    variance = np.zeros(image.shape, np.float32)
    for name in ("var_rnoise", "var_poisson", "var_flat"):
        plane = image.variances.get(name)
        if plane is not None:
            variance += np.nan_to_num(plane, nan=0.0)
    return np.sqrt(variance)
