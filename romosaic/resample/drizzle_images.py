"""Drizzle a stream of input images onto one output grid.

`drizzle_images` is resample's algorithm with no files or stpipe in sight:
it takes `ResampleInput` objects one at a time (so a caller can load each
from disk just before it is needed and drop it afterwards), prepares each
once (`prepare_image`) and deposits it with the `DrizzleEngine` on the part
of the grid the inputs reach, in threads, while the next input is read.
"""

import functools
import logging

from ..dq import DEFAULT_GOOD_BITS
from ..parallel import prefetch
from .engine import DataWindow, DrizzleEngine, plan_strips, prepare_image, result_on_grid
from .kernels import KERNELS
from .planes import PlaneStore

__all__ = ["KERNELS", "drizzle_images", "variance_names_for"]

log = logging.getLogger(__name__)


def variance_names_for(include_var_flat):
    """The variance planes a co-add propagates."""
    return ["var_rnoise", "var_poisson"] + (["var_flat"] if include_var_flat else [])


def drizzle_images(
    inputs,
    grid,
    n_inputs,
    *,
    window=None,
    store=None,
    threads=1,
    memory_budget=None,
    kernel="square",
    pixfrac=1.0,
    fillval="NaN",
    weight_type="ivm",
    good_bits=DEFAULT_GOOD_BITS,
    include_var_flat=False,
    pixmap_stepsize=10,
    propagate_dq=False,
):
    """Co-add images onto ``grid``.

    Parameters
    ----------
    inputs : iterable of ResampleInput
        Consumed once, in order (in a background thread when ``threads`` >
        1); input ``i`` gets context bit ``i``.
    grid : OutputGrid
    n_inputs : int
        Number of items ``inputs`` will yield.
    window : DataWindow, optional
        The part of the grid the inputs reach (see `data_window`); the whole
        grid by default.
    store : PlaneStore, optional
        Where the window's planes live (of the window's shape); in memory by
        default.
    threads : int, optional
        Threads drizzling strips of the window at once.
    memory_budget : float, optional
        Bytes of planes the strips being drizzled at once may hold, when
        ``store`` is on disk.
    kernel, pixfrac, fillval
        Drizzle parameters (see `DrizzleEngine`).
    weight_type : {"ivm", "ivm-sky", "exptime"}
    good_bits : str, int or None
        Acceptable DQ flags (see `romosaic.dq`).
    include_var_flat : bool, optional
        Also propagate ``var_flat`` (and include it in the error).
    pixmap_stepsize : int, optional
        Node spacing of the sparse WCS evaluation (see `PixelMapper`).
    propagate_dq : bool, optional
        Give the result a ``dq`` plane: the OR of the DQ flags of the input
        pixels drizzled onto each pixel (flagged pixels that are left out
        add nothing).

    Returns
    -------
    result : CoaddResult
        On the whole grid; memory-mapped arrays when ``store`` is on disk.
    input_pixel_scale : float
        Native pixel size of the first input, arcseconds.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if window is None:
        window = DataWindow(grid=grid, x0=0, y0=0, shape=tuple(grid.shape))
    if store is None:
        store = PlaneStore(window.shape)
    variance_names = variance_names_for(include_var_flat)
    bytes_per_pixel = DrizzleEngine.bytes_per_pixel(n_inputs, len(variance_names),
                                                    with_dq=propagate_dq)
    strips = plan_strips(*window.shape, bytes_per_pixel=bytes_per_pixel, threads=threads,
                         memory=memory_budget if store.on_disk else None)
    log.info("drizzling %d x %d of the grid's %d x %d pixels in %d strip(s), %d thread(s)%s",
             window.shape[1], window.shape[0], grid.shape[1], grid.shape[0], len(strips),
             threads, ", planes in files" if store.on_disk else "")
    # map keeps no reference to an input once it is prepared, so its DQ
    # array is freed while the image is drizzled (unless it is propagated).
    prepared = map(functools.partial(prepare_image, grid=grid, weight_type=weight_type,
                                     good_bits=good_bits, pixmap_stepsize=pixmap_stepsize,
                                     keep_dq=propagate_dq),
                   inputs)
    input_pixel_scale = None
    with DrizzleEngine(window, store, strips=strips, n_inputs=n_inputs,
                       variance_names=variance_names, with_dq=propagate_dq, kernel=kernel,
                       pixfrac=pixfrac, fillval=fillval, threads=threads) as engine:
        for image in prefetch(prepared, enabled=threads > 1):
            if input_pixel_scale is None:
                input_pixel_scale = image.pixel_scale
            deposited = engine.add(image)
            if deposited:
                log.info("%s: drizzled %d usable pixels", image.name, image.usable_pixels)
            else:
                log.info("%s: no pixel lands on the output grid", image.name)
            del image
        if input_pixel_scale is None:
            raise ValueError("no input images to drizzle")
        if len(engine.exptimes) != n_inputs:
            raise ValueError(f"expected {n_inputs} images, got {len(engine.exptimes)}")
        engine.finish()
        return result_on_grid(store, window, engine, directory=store.directory,
                              threads=threads), input_pixel_scale
