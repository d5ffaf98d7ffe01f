"""romosaic's compiled drizzle kernels, as a function on arrays.

`drizzle_add` deposits one input image onto output arrays in a single pass:
its data, its weight, any number of variance planes, one context bit and,
when asked, its DQ flags.
The arithmetic is that of the ``drizzle`` package's kernels (the tests
compare the two on random geometries); the differences are listed in the
function's notes. The compiled part runs without Python's interpreter lock,
so threads can drizzle different inputs or tiles at the same time, each into
its own output arrays.
"""

import numpy as np

from ..half import as_float32
from . import _kernels
from .pixmap import PixelMapper

__all__ = ["KERNELS", "drizzle_add"]

#: Kernel names, in the order of the compiled module's codes.
KERNELS = ("square", "point", "turbo", "gaussian", "lanczos2", "lanczos3")

#: Inputs per context plane (one bit each).
CONTEXT_BITS = 32


def _input_array(array, dtype, name, shape=None):
    array = as_float32(array) if dtype == np.float32 else np.ascontiguousarray(array, dtype)
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
    return array


def _output_array(array, dtype, name, shape):
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        raise TypeError(f"{name} must be a numpy array of {np.dtype(dtype).name}")
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable (it is updated in place)")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
    return array


def drizzle_add(
    data, pixmap, out_data, out_weight, *, weight=None, variances=(), out_variances=(),
    out_context=None, context_index=0, dq=None, out_dq=None, kernel="square", pixfrac=1.0,
    pixel_scale_ratio=1.0, iscale=1.0, origin=(0, 0), input_origin=(0, 0),
):
    """Drizzle one input image onto output arrays, in place.

    Each output pixel holds the weighted mean of what was deposited on it,
    with ``a`` the kernel's share of an input pixel falling on it and ``w``
    that pixel's weight:

    * ``out_data = Σ a·w·d / Σ a·w`` (surface brightness is preserved);
    * ``out_weight = Σ a·w``;
    * each ``out_variances[k] = Σ (a·w)²·var_k / (Σ a·w)²``;
    * bit ``context_index % 32`` of ``out_context[context_index // 32]`` is
      set where this input deposited a positive weight;
    * with ``dq``, ``out_dq`` is ORed with the flags of every input pixel
      that deposits on it (as ``drizzle``'s ``out_dq``: a pixel's first
      deposit sets its flags). Pixels left out (zero weight) add none.

    Parameters
    ----------
    data : numpy.ndarray, shape (ny, nx)
        Input image (converted to float32). Pixels whose value is not finite
        are left out.
    pixmap : numpy.ndarray, shape (ny, nx, 2), or PixelMapper
        Output grid ``(x, y)`` of each input pixel centre (float64), as
        `romosaic.resample.compute_pixmap` makes it. Input pixels whose
        position is not finite (or, for the square kernel, whose corners
        cannot be interpolated from finite positions, or whose drop would
        span more than 256 output pixels: a broken map) are left out.
        A `~romosaic.resample.pixmap.PixelMapper` stands for its map of the
        input pixels ``data`` covers (see ``input_origin``); the square
        kernel then evaluates the mapper's splines row by row as it goes,
        without the whole map in memory, and gives what it gives with
        ``mapper.region(...)`` to within the rounding of the spline
        evaluation (about 1e-12 output pixel).
    out_data, out_weight : numpy.ndarray of float32, shape (my, mx)
        Running weighted mean and weight, updated in place. Start them with
        the fill value (e.g. NaN) and zeros: pixels that receive nothing keep
        their values.
    weight : numpy.ndarray, shape (ny, nx), optional
        Per-pixel weight (converted to float32); pixels with a weight that is
        not a finite positive number are left out. None: weight 1.
    variances : sequence of numpy.ndarray or None, optional
        Input variance planes, one per ``out_variances`` entry (None counts as
        zero). Values that are not finite count as zero.
    out_variances : sequence of numpy.ndarray of float32, optional
        Running variances of the weighted mean, updated in place; start them
        with the fill value.
    out_context : numpy.ndarray of uint32 or int32, shape (planes, my, mx), optional
        Context bits, updated in place.
    context_index : int, optional
        Index of this input (the context bit).
    dq : numpy.ndarray, shape (ny, nx), optional
        Input DQ flags (converted to uint32), with ``out_dq``.
    out_dq : numpy.ndarray of uint32, shape (my, mx), optional
        Output DQ flags, updated in place; start them at zero.
    kernel : {"square", "point", "turbo", "gaussian", "lanczos2", "lanczos3"}
    pixfrac : float, optional
        Linear size of the drop in input pixels (square, turbo; the FWHM of
        the gaussian). Ignored by point and lanczos. At or below 0.001 the
        point kernel is used, as ``drizzle`` does.
    pixel_scale_ratio : float, optional
        Output over input pixel size; sets the size in output pixels of the
        turbo, gaussian and lanczos kernels.
    iscale : float, optional
        Factor applied to the data (its square to the variances).
    origin : (int, int), optional
        Grid ``(x0, y0)`` of ``out_data[0, 0]``: the output arrays may be a
        tile of the grid the pixel map refers to. Geometry is computed in grid
        coordinates, so a tile receives exactly what the same pixels of the
        whole grid receive.
    input_origin : (int, int), optional
        With a `~romosaic.resample.pixmap.PixelMapper` for ``pixmap``: input
        pixel ``(x, y)`` of ``data[0, 0]``, when ``data`` is a rectangle of
        the mapper's image (as ``mapper.region(rows, cols)`` would map it).
        Ignored with an array.

    Returns
    -------
    int
        Number of input pixels that deposited on the output arrays.

    Notes
    -----
    Differences from ``drizzle.resample.Drizzle.add_image``:

    * every drop is deposited wherever it overlaps the output arrays;
      ``drizzle`` leaves out input pixels whose centre falls outside its
      output image, which is why romosaic pads that image and crops it;
    * pixels with non-finite data, or weight that is not positive, are left
      out (``drizzle`` would propagate a NaN), and non-finite variances count
      as zero;
    * square kernel: overlaps below 1e-10 of an output pixel, the rounding
      residue of the exact clipping, are not deposited (``drizzle`` deposits
      such residues with a tiny weight, which can set a context bit and a
      data value next to a drop).

    Two threads may run this function at the same time (the compiled kernel
    releases the interpreter lock) as long as they do not write to the same
    output arrays.
    """
    try:
        code = KERNELS.index(kernel)
    except ValueError:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}") from None
    pixfrac = float(pixfrac)
    if not np.isfinite(pixfrac) or pixfrac <= 0.0:
        raise ValueError(f"pixfrac must be positive, got {pixfrac}")
    if pixfrac <= 0.001:
        code = KERNELS.index("point")
    data = _input_array(data, np.float32, "data")
    shape = data.shape
    if data.ndim != 2:
        raise ValueError(f"data must be 2-D, got shape {shape}")
    spline = None
    col0 = row0 = 0
    if isinstance(pixmap, PixelMapper):
        col0, row0 = (int(v) for v in input_origin)
        rows, cols = (row0, row0 + shape[0]), (col0, col0 + shape[1])
        if not (0 <= rows[0] and rows[1] <= pixmap.shape[0] and 0 <= cols[0]
                and cols[1] <= pixmap.shape[1]):
            raise ValueError(f"data of shape {shape} at input_origin {tuple(input_origin)} "
                             f"is not within the mapper's image {pixmap.shape}")
        if code == KERNELS.index("square") and min(shape) >= 2:
            spline = pixmap.spline_coefficients()
        pixmap = None if spline is not None else pixmap.region(rows, cols)
    if pixmap is not None:
        pixmap = _input_array(pixmap, np.float64, "pixmap", (*shape, 2))
    if weight is not None:
        weight = _input_array(weight, np.float32, "weight", shape)
    variances = tuple(variances)
    out_variances = tuple(out_variances)
    if len(variances) != len(out_variances):
        raise ValueError(f"{len(variances)} variance planes for {len(out_variances)} outputs")
    variances = tuple(None if v is None else _input_array(v, np.float32, "variance", shape)
                      for v in variances)
    out_data = _output_array(out_data, np.float32, "out_data", None)
    if out_data.ndim != 2:
        raise ValueError(f"out_data must be 2-D, got shape {out_data.shape}")
    out_shape = out_data.shape
    _output_array(out_weight, np.float32, "out_weight", out_shape)
    for plane in out_variances:
        _output_array(plane, np.float32, "out_variances", out_shape)
    context_plane = None
    bit = 0
    if out_context is not None:
        if out_context.dtype not in (np.uint32, np.int32) or out_context.ndim != 3:
            raise TypeError("out_context must be a 3-D array of uint32 or int32")
        context_index = int(context_index)
        plane = context_index // CONTEXT_BITS
        if not 0 <= plane < out_context.shape[0]:
            raise ValueError(f"context index {context_index} needs plane {plane}, but "
                             f"out_context has {out_context.shape[0]}")
        context_plane = _output_array(out_context[plane], out_context.dtype, "out_context",
                                      out_shape)
        bit = context_index % CONTEXT_BITS
    if (dq is None) != (out_dq is None):
        raise ValueError("give dq and out_dq together")
    if dq is not None:
        dq = _input_array(dq, np.uint32, "dq", shape)
        _output_array(out_dq, np.uint32, "out_dq", out_shape)
    x0, y0 = (int(v) for v in origin)
    return _kernels.drizzle_add(
        code, data, weight, pixmap, variances, out_data, out_weight, out_variances,
        context_plane, bit, x0, y0, pixfrac, float(pixel_scale_ratio), float(iscale),
        spline=spline, col0=col0, row0=row0, dq=dq, out_dq=out_dq,
    )
