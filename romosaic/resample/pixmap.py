"""Pixel maps: where each input pixel centre lands on the output grid.

Evaluating a full WCS chain (distortion, projection, sky rotation, inverse
projection) for every one of 16.7 million pixels of a WFI detector costs more
than drizzling them. The mapping is smooth, so `compute_pixmap` evaluates it
exactly on a sparse grid of nodes (every ``stepsize`` pixels, plus the last
row and column) and interpolates with bicubic splines. For TAN grids with the
polynomial distortions of wide-field detectors, the interpolation error at
``stepsize=10`` is far below 0.001 output pixel (measured in the tests and
reported in the documentation); ``stepsize=1`` evaluates every pixel exactly.
"""

import numpy as np
from scipy.interpolate import RectBivariateSpline

from ..wcs_utils import world_to_pixel

__all__ = [
    "PixelMapper",
    "compute_pixmap",
    "map_pixels",
    "node_positions",
]


def compute_pixmap(input_wcs, output_wcs, shape, *, stepsize=10):
    """Map every pixel of an input image onto the output grid.

    Parameters
    ----------
    input_wcs, output_wcs : gwcs.wcs.WCS
        Pixel → sky transforms of the input image and the output grid.
    shape : (int, int)
        Input array shape ``(ny, nx)``.
    stepsize : int, optional
        Spacing in input pixels of the nodes where the WCS is evaluated
        exactly; 1 evaluates every pixel.

    Returns
    -------
    numpy.ndarray of shape (ny, nx, 2), float64
        ``pixmap[j, i] = (x_out, y_out)`` of input pixel ``(i, j)``; NaN where
        the input pixel has no sky position.

    Examples
    --------
    >>> from romosaic.wcs_utils import affine_tan_wcs
    >>> w = affine_tan_wcs(crval=(10, 20), crpix=(50, 50),
    ...                    cd=[[-3e-5, 0], [0, 3e-5]], shape=(100, 100))
    >>> pm = compute_pixmap(w, w, (100, 100))
    >>> bool(np.allclose(pm[7, 3], [3, 7], atol=1e-6))
    True
    """
    return PixelMapper(input_wcs, output_wcs, shape, stepsize=stepsize).region()


class PixelMapper:
    """The input → output pixel mapping of one image, evaluated region by region.

    The WCS is evaluated once, on the sparse node grid; any rectangle of
    input pixels can then be mapped (`region`) without holding the pixel map
    of the whole image, and `input_pieces_for` finds the input rectangles
    that land on a given output rectangle. A region's values are exactly
    those of the same pixels in the whole-image map.

    Parameters
    ----------
    input_wcs, output_wcs : gwcs.wcs.WCS
    shape : (int, int)
        Input array shape ``(ny, nx)``.
    stepsize : int, optional
        Node spacing in input pixels; 1 evaluates every pixel exactly.
    """

    def __init__(self, input_wcs, output_wcs, shape, *, stepsize=10):
        self.shape = tuple(int(n) for n in shape)
        ny, nx = self.shape
        stepsize = int(stepsize)
        self._splines = None
        self._coefficients = None
        self._exact = None
        if stepsize > 1 and nx >= 4 * stepsize and ny >= 4 * stepsize:
            x_nodes = node_positions(nx, stepsize)
            y_nodes = node_positions(ny, stepsize)
            node_map = _exact_pixmap(input_wcs, output_wcs, x_nodes, y_nodes)
            if np.all(np.isfinite(node_map)):
                self._splines = [
                    RectBivariateSpline(y_nodes, x_nodes, node_map[:, :, axis], kx=3, ky=3, s=0)
                    for axis in (0, 1)
                ]
                self._x_nodes, self._y_nodes, self._node_map = x_nodes, y_nodes, node_map
        if self._splines is None:
            # Splines cannot bridge undefined nodes (e.g. pixels off the sky of
            # a distorted WCS), and small images gain nothing from them.
            self._exact = _exact_pixmap(input_wcs, output_wcs, np.arange(nx), np.arange(ny))

    def region(self, rows=None, cols=None):
        """Output ``(x, y)`` of the input pixels ``[rows] x [cols]``.

        Parameters
        ----------
        rows, cols : (int, int), optional
            Half-open input pixel ranges; the whole axis by default.

        Returns
        -------
        numpy.ndarray of shape (n_rows, n_cols, 2), float64
        """
        ny, nx = self.shape
        r0, r1 = rows if rows is not None else (0, ny)
        c0, c1 = cols if cols is not None else (0, nx)
        if self._exact is not None:
            return self._exact[r0:r1, c0:c1].copy()
        pixmap = np.empty((r1 - r0, c1 - c0, 2), dtype=np.float64)
        y = np.arange(r0, r1, dtype=float)
        x = np.arange(c0, c1, dtype=float)
        for axis, spline in enumerate(self._splines):
            pixmap[:, :, axis] = spline(y, x)
        return pixmap

    def spline_coefficients(self):
        """The bicubic splines of the map, or None when it is evaluated exactly.

        Returns
        -------
        (ty, tx, cx, cy) or None
            Knots along input rows and columns, and the coefficients of the
            output ``x`` and ``y`` as ``(len(ty) - 4, len(tx) - 4)`` arrays
            (FITPACK's representation, as `scipy.interpolate.RectBivariateSpline`
            holds it), all C-contiguous float64: what the compiled square
            kernel evaluates row by row instead of a pixel map.
        """
        if self._splines is None:
            return None
        if self._coefficients is None:
            ty, tx = (np.ascontiguousarray(t, dtype=np.float64)
                      for t in self._splines[0].tck[:2])
            # Interpolating splines (s=0) place their knots by the nodes
            # alone, so both axes share them.
            other_ty, other_tx = self._splines[1].tck[:2]
            if not (np.array_equal(other_ty, ty) and np.array_equal(other_tx, tx)):
                return None
            self._coefficients = (ty, tx) + tuple(
                np.ascontiguousarray(spline.tck[2], dtype=np.float64).reshape(
                    ty.size - 4, tx.size - 4)
                for spline in self._splines)
        return self._coefficients

    def output_bounds(self):
        """``(x_min, x_max, y_min, y_max)`` of the whole image on the output grid."""
        corners = self._node_map if self._exact is None else self._exact
        x, y = corners[..., 0], corners[..., 1]
        with np.errstate(invalid="ignore"):
            return (float(np.nanmin(x)), float(np.nanmax(x)), float(np.nanmin(y)),
                    float(np.nanmax(y)))

    def input_pieces_for(self, x_range, y_range, *, piece_rows=64):
        """The input rectangles whose pixels can land in an output rectangle.

        An image rotated with respect to the grid crosses a band of output
        rows along a diagonal: the one input rectangle holding that diagonal
        is mostly pixels that land elsewhere, and each of them would be
        mapped and clipped for nothing. So the rows are cut into pieces of
        about ``piece_rows`` rows, each with the columns that can land there
        in its own rows; pieces that gain little from being apart (the usual
        case for an image aligned with the grid) are joined.

        Parameters
        ----------
        x_range, y_range : (float, float)
            Output pixel coordinate ranges.
        piece_rows : int, optional
            Input rows a piece spans before joining.

        Returns
        -------
        list of (rows, cols)
            Half-open input ranges, in increasing rows, no two sharing a row;
            every pixel landing in the rectangle is in one of them (they may
            hold extra pixels, which land outside). Empty when no input pixel
            lands there.

        Examples
        --------
        >>> from romosaic.wcs_utils import affine_tan_wcs
        >>> w = affine_tan_wcs(crval=(10, 20), crpix=(50, 50),
        ...                    cd=[[-3e-5, 0], [0, 3e-5]], shape=(100, 100))
        >>> PixelMapper(w, w, (100, 100)).input_pieces_for((10, 20), (30, 40))
        [((20, 51), (0, 31))]
        """
        ny, nx = self.shape
        pieces = []
        if self._exact is not None:
            x, y = self._exact[..., 0], self._exact[..., 1]
            with np.errstate(invalid="ignore"):
                inside = ((x >= x_range[0]) & (x <= x_range[1])
                          & (y >= y_range[0]) & (y <= y_range[1]))
            step = max(1, int(piece_rows))
            for start in range(0, ny, step):
                block = inside[start:start + step]
                rows = np.flatnonzero(block.any(axis=1))
                if rows.size:
                    cols = np.flatnonzero(block.any(axis=0))
                    pieces.append(((start + int(rows[0]), start + int(rows[-1]) + 1),
                                   (int(cols[0]), int(cols[-1]) + 1)))
            return _joined(pieces)
        # A node cell can reach the output rectangle only if the box of its
        # four corners does; pad by one output pixel for the spline's bulge.
        x, y = self._node_map[..., 0], self._node_map[..., 1]
        cell_x_min = _corner_reduce(np.minimum, x) - 1.0
        cell_x_max = _corner_reduce(np.maximum, x) + 1.0
        cell_y_min = _corner_reduce(np.minimum, y) - 1.0
        cell_y_max = _corner_reduce(np.maximum, y) + 1.0
        touches = ((cell_x_max >= x_range[0]) & (cell_x_min <= x_range[1])
                   & (cell_y_max >= y_range[0]) & (cell_y_min <= y_range[1]))
        touching = touches.any(axis=1)
        cells_per_piece = max(1, round(piece_rows / (self._y_nodes[1] - self._y_nodes[0])))
        n_cell_rows = touches.shape[0]
        first = 0
        while first < n_cell_rows:
            if not touching[first]:
                first += 1
                continue
            stop = first
            while stop < n_cell_rows and touching[stop] and stop - first < cells_per_piece:
                stop += 1
            # Cell k spans node rows k and k + 1, inclusive: the last node
            # row goes with the next piece, or with this one at the end of a
            # run of touching cells.
            rows = (int(self._y_nodes[first]),
                    int(self._y_nodes[stop]) + (stop == n_cell_rows or not touching[stop]))
            cols = np.flatnonzero(touches[first:stop].any(axis=0))
            pieces.append(((rows[0], min(ny, rows[1])),
                           (int(self._x_nodes[cols[0]]),
                            min(nx, int(self._x_nodes[cols[-1] + 1]) + 1))))
            first = stop
        return _joined(pieces)


def _joined(pieces, waste=1.25):
    """Join consecutive pieces while the rectangle holding them has at most
    ``waste`` times their pixels: fewer, larger pieces where apart they save
    little."""
    joined, pixels = [], []
    for piece in pieces:
        (b0, b1), (bc0, bc1) = piece
        size = (b1 - b0) * (bc1 - bc0)
        if joined:
            (a0, a1), (ac0, ac1) = joined[-1]
            u0, u1 = min(ac0, bc0), max(ac1, bc1)
            if a1 == b0 and (b1 - a0) * (u1 - u0) <= waste * (pixels[-1] + size):
                joined[-1] = ((a0, b1), (u0, u1))
                pixels[-1] += size
                continue
        joined.append(piece)
        pixels.append(size)
    return joined


def _corner_reduce(function, values):
    """``function`` over the four corners of every node cell."""
    return function(function(values[:-1, :-1], values[1:, :-1]),
                    function(values[:-1, 1:], values[1:, 1:]))


def node_positions(n, stepsize):
    """Pixel positions 0, stepsize, 2·stepsize, … and always the last pixel n − 1."""
    nodes = np.arange(0, n, stepsize, dtype=float)
    if nodes[-1] != n - 1:
        nodes = np.append(nodes, n - 1)
    return nodes


def map_pixels(input_wcs, output_wcs, x, y):
    """Output pixel ``(x, y)`` of input pixels, through the sky, exactly."""
    ra, dec = input_wcs(x, y, with_bounding_box=False)
    return world_to_pixel(output_wcs, ra, dec)


def _exact_pixmap(input_wcs, output_wcs, x_values, y_values):
    x, y = np.meshgrid(np.asarray(x_values, float), np.asarray(y_values, float))
    return np.dstack(map_pixels(input_wcs, output_wcs, x, y))
