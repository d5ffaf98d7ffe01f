"""Per-image sky measurements: the whole image, and each cell of a coarse sky grid.

Sky matching needs, for every pair of overlapping exposures, the difference
of their sky levels measured on the same patch of sky. Rather than
intersecting footprints pair by pair and re-reading both images for every
pair (which costs ``O(pairs × pixels)``), romosaic lays one coarse grid of
*cells* over the whole association — a TAN grid like the mosaic's, with
pixels `DEFAULT_CELL_SIZE` input pixels wide — and measures each image once:
a clipped sky statistic of the good pixels whose centres fall in each cell.
Any two images that both cover a cell well have measured the same patch of
sky, so pair differences can later be formed from these small tables alone.

Pixel centres are mapped to cells through an exact WCS evaluation on a sparse
grid of nodes (every 32 pixels) interpolated bilinearly. The map is smooth, so
the interpolation moves a cell boundary by far less than a pixel (measured in
the tests), which changes nothing measurable.
"""

import math
from dataclasses import dataclass

import numpy as np

from ..resample.grid import free_grid, native_pixel_scale
from ..resample.pixmap import map_pixels, node_positions
from . import _statistics
from .statistics import grouped_sky_statistics

__all__ = [
    "DEFAULT_CELL_SIZE",
    "ImageSky",
    "SkyCells",
    "cell_grid",
    "measure_image_sky",
]

#: Width of a coarse sky cell, in input pixels.
DEFAULT_CELL_SIZE = 32

# Spacing (input pixels) of the exact WCS evaluations behind the cell map.
_NODE_STEP = 32
# Rows mapped at a time, to bound the memory of the float64 coordinates.
_STRIP_ROWS = 512
# Pixels renumbered at a time from whole-grid to per-image cells.
_RELABEL_CHUNK = 1 << 18


@dataclass
class SkyCells:
    """Sky statistics of one image (or exposure group) in coarse cells.

    Attributes
    ----------
    cells : numpy.ndarray of int64
        Flat indices ``iy * nx + ix`` of the coarse cells, increasing.
    value : numpy.ndarray of float64
        The sky statistic in each cell.
    variance : numpy.ndarray of float64
        Its noise variance, estimated as stddev² / npix.
    npix : numpy.ndarray of int64
        Pixels used in each cell after clipping.
    fill : numpy.ndarray of float64
        Good pixels mapped into each cell over the pixels a fully covered
        cell holds (1 for a cell wholly inside the image and unflagged).
    """

    cells: np.ndarray
    value: np.ndarray
    variance: np.ndarray
    npix: np.ndarray
    fill: np.ndarray

    @classmethod
    def empty(cls):
        return cls(np.empty(0, np.int64), np.empty(0), np.empty(0), np.empty(0, np.int64),
                   np.empty(0))

    def __len__(self):
        return self.cells.size


@dataclass
class ImageSky:
    """Everything sky matching needs from one image.

    Attributes
    ----------
    local : float
        The sky statistic over all good pixels; NaN when there are none.
    npix : int
        Pixels used for ``local``.
    cells : SkyCells
        Statistics per coarse cell.
    """

    local: float
    npix: int
    cells: SkyCells

    @property
    def valid(self):
        return bool(np.isfinite(self.local))


def cell_grid(wcs_and_shapes, cell_size=DEFAULT_CELL_SIZE):
    """The coarse sky grid over a set of images.

    Parameters
    ----------
    wcs_and_shapes : list of (gwcs.wcs.WCS, tuple)
        Each image's WCS and array shape ``(ny, nx)``.
    cell_size : int, optional
        Cell width in pixels of the first image.

    Returns
    -------
    romosaic.resample.OutputGrid
        A TAN grid covering every image whose pixels are the cells.
    """
    return free_grid(wcs_and_shapes, pixel_scale_ratio=float(cell_size))


def _label_cells(wcs, shape, grid, good, labels):
    """Label each good pixel with its cell in the box of the image's cells.

    Fills ``labels`` (-1 for a pixel not good, else ``(iy - y0) * width +
    ix - x0``) and returns the box ``(x0, x1, y0, y1)`` of the cells, or None
    when no pixel is good. The grid coordinates come from an exact WCS
    evaluation on nodes every `_NODE_STEP` pixels, interpolated linearly
    along each row of nodes (numpy), then down the columns and turned into
    labels in one compiled pass; small images and maps with undefined nodes
    are evaluated at every pixel.
    """
    ny, nx = shape
    gny, gnx = grid.shape
    if nx >= 4 * _NODE_STEP and ny >= 4 * _NODE_STEP:
        xn, yn = node_positions(nx, _NODE_STEP), node_positions(ny, _NODE_STEP)
        gx, gy = map_pixels(wcs, grid.wcs, *np.meshgrid(xn, yn))
        if np.all(np.isfinite(gx)) and np.all(np.isfinite(gy)):
            x_all = np.arange(nx, dtype=float)
            x_rows, y_rows = (np.stack([np.interp(x_all, xn, row) for row in values])
                              for values in (gx, gy))
            rows = np.arange(ny, dtype=float)
            node = np.clip(np.searchsorted(yn, rows, side="right") - 1, 0, yn.size - 2)
            t = (rows - yn[node]) / (yn[node + 1] - yn[node])
            return _statistics.cell_labels(
                x_rows.reshape(-1), y_rows.reshape(-1), node.astype(np.int64), t,
                np.ascontiguousarray(good, dtype=bool).reshape(-1), labels.reshape(-1),
                nx, gnx, gny)
    return _label_cells_exactly(wcs, shape, grid, good, labels)


def _label_cells_exactly(wcs, shape, grid, good, labels):
    """`_label_cells` with the WCS evaluated at every pixel, a strip of rows at a time."""
    ny, nx = shape
    gny, gnx = grid.shape
    x_all = np.arange(nx, dtype=float)
    bounds = None
    for r0 in range(0, ny, _STRIP_ROWS):
        rows = slice(r0, min(r0 + _STRIP_ROWS, ny))
        gx, gy = map_pixels(wcs, grid.wcs,
                            *np.meshgrid(x_all, np.arange(rows.start, rows.stop, dtype=float)))
        keep = good[rows]
        ix = _cell_index(gx, gnx)
        iy = _cell_index(gy, gny)
        if keep.any():
            kx, ky = ix[keep], iy[keep]
            box = (kx.min(), kx.max(), ky.min(), ky.max())
            bounds = box if bounds is None else (min(bounds[0], box[0]), max(bounds[1], box[1]),
                                                 min(bounds[2], box[2]), max(bounds[3], box[3]))
        iy *= gnx
        iy += ix
        labels[rows] = np.where(keep, iy, np.int32(-1))
    if bounds is None:
        return None
    x0, _, y0, _ = bounds
    width = bounds[1] - x0 + 1
    flat = labels.reshape(-1)
    # In chunks: whole-image temporaries would cost more than the labels.
    for start in range(0, flat.size, _RELABEL_CHUNK):
        chunk = flat[start:start + _RELABEL_CHUNK]
        good_pixels = chunk >= 0
        cell_y, cell_x = np.divmod(chunk[good_pixels], np.int32(gnx))
        cell_y -= y0
        cell_y *= width
        cell_y += cell_x
        cell_y -= x0
        chunk[good_pixels] = cell_y
    return tuple(int(b) for b in bounds)


def _cell_index(coordinate, n):
    """Index of the cell holding each grid coordinate (cell i spans [i - ½, i + ½))."""
    coordinate += 0.5
    np.floor(coordinate, out=coordinate)
    # Pixel centres within half a cell of the grid edge belong to the edge
    # cells; the grid is built to hold every image, so this only absorbs
    # rounding at its border.
    np.clip(coordinate, 0, n - 1, out=coordinate)
    return coordinate.astype(np.int32)


def measure_image_sky(data, good, wcs, grid, params, *, cell_params=None):
    """Measure one image's sky over all its good pixels and in each coarse cell.

    Parameters
    ----------
    data : numpy.ndarray
        2-D image, in any unit.
    good : numpy.ndarray of bool
        Usable pixels (DQ accepted and finite data).
    wcs : gwcs.wcs.WCS
        The image's pixel → sky transform.
    grid : romosaic.resample.OutputGrid or None
        The coarse cell grid (`cell_grid`); None measures only the local sky.
    params : SkyStatisticsParameters
        The statistic of the whole-image ("local") sky.
    cell_params : SkyStatisticsParameters, optional
        The statistic in cells; ``params`` when None.

    Returns
    -------
    ImageSky
    """
    cell_params = params if cell_params is None else cell_params
    # The statistics read the data plane where it is, and skip pixels
    # labelled -1: no copy of the good values is made.
    values = np.ascontiguousarray(data, dtype=np.float32).reshape(-1)
    if grid is None:
        labels = np.where(good.reshape(-1), np.int32(0), np.int32(-1))
        whole = grouped_sky_statistics(values, labels, 1, params)
        return ImageSky(local=float(whole.value[0]), npix=int(whole.npix[0]),
                        cells=SkyCells.empty())
    gny, gnx = grid.shape
    per_cell = (grid.pixel_scale / native_pixel_scale(wcs, data.shape)) ** 2

    # First the cell of every good pixel on the whole coarse grid (below
    # 2**31 cells for any grid smaller than the sky), then, once the image's
    # bounding box on it is known, renumbered within that box, so that the
    # statistics work on this image's cells only, whatever the mosaic's size.
    labels = np.empty(data.shape, np.int32)
    bounds = _label_cells(wcs, data.shape, grid, good, labels)
    if bounds is None:
        return ImageSky(local=math.nan, npix=0, cells=SkyCells.empty())
    x0, x1, y0, y1 = bounds
    width = x1 - x0 + 1
    labels = labels.reshape(-1)
    n_local = int(width * (y1 - y0 + 1))

    stats = grouped_sky_statistics(values, labels, n_local, cell_params)
    counts = stats.members
    np.minimum(labels, 0, out=labels)  # every good pixel in one group
    whole = grouped_sky_statistics(values, labels, 1, params)
    del labels

    present = np.flatnonzero((counts > 0) & np.isfinite(stats.value))
    cells = (y0 + present // width) * gnx + (x0 + present % width)
    npix = stats.npix[present]
    spread = stats.stddev[present]
    value = stats.value[present]
    # A floor on the noise keeps weights finite for noiseless (synthetic) data.
    floor = 1e-7 * np.maximum(np.abs(value), np.finfo(np.float32).tiny)
    variance = (spread**2 + floor**2) / np.maximum(npix, 1)
    return ImageSky(
        local=float(whole.value[0]),
        npix=int(whole.npix[0]),
        cells=SkyCells(cells=cells.astype(np.int64), value=value, variance=variance,
                       npix=npix, fill=counts[present] / per_cell),
    )
