"""Drizzle a stream of input images onto one output grid.

`drizzle_images` is the resampling algorithm with no files or stpipe in
sight: it takes `ResampleInput` objects one at a time (so a caller can load
each from disk just before it is needed and drop it afterwards), maps each
onto the grid with `compute_pixmap`, weights it with `pixel_weights`, and
adds it to a `DrizzleCoadd`.
"""

import logging
import math

import numpy as np

from ..dq import DEFAULT_GOOD_BITS, good_pixel_mask
from .coadd import DrizzleCoadd
from .grid import native_pixel_scale
from .pixmap import compute_pixmap
from .weights import pixel_weights

__all__ = ["KERNELS", "drizzle_images", "edge_margin"]

log = logging.getLogger(__name__)

KERNELS = ("square", "point", "turbo", "gaussian", "lanczos2", "lanczos3")


def drizzle_images(
    inputs,
    grid,
    n_inputs,
    *,
    kernel="square",
    pixfrac=1.0,
    fillval="NaN",
    weight_type="ivm",
    good_bits=DEFAULT_GOOD_BITS,
    include_var_flat=False,
    pixmap_stepsize=10,
):
    """Co-add images onto ``grid``.

    Parameters
    ----------
    inputs : iterable of ResampleInput
        Consumed once, in order; input ``i`` gets context bit ``i``.
    grid : OutputGrid
    n_inputs : int
        Number of items ``inputs`` will yield.
    kernel, pixfrac, fillval
        Drizzle parameters (see `DrizzleCoadd`).
    weight_type : {"ivm", "ivm-sky", "exptime"}
    good_bits : str, int or None
        Acceptable DQ flags (see `romosaic.dq`).
    include_var_flat : bool, optional
        Also propagate ``var_flat`` (and include it in the error).
    pixmap_stepsize : int, optional
        Node spacing of the sparse WCS evaluation (see `compute_pixmap`).

    Returns
    -------
    result : CoaddResult
    input_pixel_scale : float
        Native pixel size of the first input, arcseconds.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    variance_names = ["var_rnoise", "var_poisson"] + (["var_flat"] if include_var_flat else [])
    coadd = None
    input_pixel_scale = None
    for image in inputs:
        scale = native_pixel_scale(image.wcs, image.shape)
        if coadd is None:
            input_pixel_scale = scale
            margin = edge_margin(scale / grid.pixel_scale)
            coadd = DrizzleCoadd(
                (grid.shape[0] + 2 * margin, grid.shape[1] + 2 * margin),
                n_inputs,
                variance_names=variance_names,
                kernel=kernel,
                pixfrac=pixfrac,
                fillval=fillval,
            )
        good = good_pixel_mask(image.dq, good_bits)
        weight = pixel_weights(
            weight_type,
            data=image.data,
            good=good,
            var_rnoise=image.variances.get("var_rnoise"),
            var_poisson=image.variances.get("var_poisson"),
            exptime=image.exptime,
        )
        n_used = int(np.count_nonzero(weight))
        if n_used == 0:
            log.warning("%s: no usable pixels (all flagged, NaN or zero weight)", image.name)
        pixmap = compute_pixmap(image.wcs, grid.wcs, image.shape, stepsize=pixmap_stepsize)
        pixmap += margin
        coadd.add(
            image.data,
            pixmap,
            weight=weight,
            variances=image.variances,
            exptime=image.exptime,
            pixel_scale_ratio=grid.pixel_scale / scale,
        )
        log.info("%s: drizzled %d usable pixels", image.name, n_used)
    if coadd is None:
        raise ValueError("no input images to drizzle")
    result = coadd.finish()
    del coadd  # let the padded arrays go as crop() replaces them
    return result.crop(margin), input_pixel_scale


def edge_margin(input_to_output_scale):
    """Output pixels added round the grid while drizzling, then cropped.

    drizzle drops an input pixel whose centre falls outside the output
    image, so the outermost output pixels would otherwise receive only part
    of their contributions (their values then differ from a neighbouring
    skycell's in the shared border). The margin holds the widest kernel
    (lanczos3: three input pixels) at the input-to-output pixel-size ratio.
    """
    return int(math.ceil(3.0 * input_to_output_scale)) + 1
