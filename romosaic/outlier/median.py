"""Per-pixel median of a small stack of images, NaN meaning "no data".

Outlier detection takes, at every pixel, the median over a handful of
exposure groups (typically 2-16). ``numpy.nanmedian`` over such a stack
spends most of its time in generic machinery (a few Mpix/s for 8 frames
here). romosaic's compiled kernel (``_kernels.nanmedian``) reads a block
of pixels from each frame where it lies, with NaN made +inf so that it
sorts last, sorts every pixel's values at once with a *sorting network*
(Batcher's odd-even merge sort: a fixed list of compare-and-exchange
steps, each a branch-free loop over the block), and reads each pixel's
median at the position its count of values gives. Above 32 frames each
pixel's values are sorted on their own.
"""

import numpy as np

from . import _kernels

__all__ = ["nanmedian_stack"]


def nanmedian_stack(stack, *, out=None, low=False):
    """Median along the first axis, ignoring NaN; NaN where all are NaN.

    Parameters
    ----------
    stack : numpy.ndarray or sequence of numpy.ndarray, shape (n, ...)
        Frames of one shape, compared and returned as float32. Not
        modified; frames that are C-contiguous float32 arrays are read
        where they are.
    out : numpy.ndarray, optional
        Where to write the result: C-contiguous float32 of a frame's shape.
    low : bool, optional
        For an even number of values take the lower middle one instead of
        the mean of the two middle ones (``(a + b) * 0.5`` in float32). With
        two values that is their minimum, which a single positive outlier (a
        cosmic ray) cannot raise.

    Returns
    -------
    numpy.ndarray
        float32, a frame's shape.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([[1.0, np.nan], [5.0, np.nan], [2.0, 7.0], [np.nan, np.nan]])
    >>> nanmedian_stack(s[:, :, None])[:, 0].tolist()
    [2.0, 7.0]
    >>> nanmedian_stack(np.array([[1.0], [9.0]]), low=True).tolist()
    [1.0]
    """
    frames = [np.ascontiguousarray(frame, dtype=np.float32) for frame in stack]
    if out is None:
        shape = frames[0].shape if frames else np.shape(stack)[1:]
        out = np.empty(shape, np.float32)
    _kernels.nanmedian(frames, out, bool(low))
    return out
