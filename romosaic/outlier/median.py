"""Per-pixel median of a small stack of images, NaN meaning "no data".

Outlier detection takes, at every pixel, the median over a handful of
exposure groups (typically 2-16). ``numpy.nanmedian`` over such a stack
spends most of its time in generic machinery (a few Mpix/s for 8 frames
here). With so few values per pixel a *sorting network* is far faster: a
fixed sequence of compare-exchange steps, each one ``numpy.minimum`` /
``numpy.maximum`` over whole image planes, so the work is a few dozen
vectorised passes. NaNs are replaced by +inf so they sort last; the median
of each pixel is then read from the ``(n_valid - 1) // 2`` and
``n_valid // 2`` positions.
"""

from functools import cache

import numpy as np

__all__ = ["nanmedian_stack", "sorting_network"]

# Beyond this many frames a sorting network has too many steps to beat np.sort.
_NETWORK_LIMIT = 32


@cache
def sorting_network(n):
    """Compare-exchange pairs ``(i, j)`` (i < j) that sort ``n`` values.

    Batcher's odd-even merge sort, generated for the next power of two and
    pruned to the first ``n`` positions (pairs touching padding positions,
    which hold +inf, never move a real value).

    Examples
    --------
    >>> len(sorting_network(4)), sorting_network(2)
    (5, ((0, 1),))
    """
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


def nanmedian_stack(stack, *, out=None, low=False):
    """Median along the first axis, ignoring NaN; NaN where all are NaN.

    Parameters
    ----------
    stack : numpy.ndarray, shape (n, ...)
        Floating-point frames. Not modified.
    out : numpy.ndarray, optional
        Where to write the result (shape ``stack.shape[1:]``).
    low : bool, optional
        For an even number of values take the lower middle one instead of
        the mean of the two middle ones. With two values that is their
        minimum, which a single positive outlier (a cosmic ray) cannot raise.

    Returns
    -------
    numpy.ndarray
        Same dtype as ``stack``.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([[1.0, np.nan], [5.0, np.nan], [2.0, 7.0], [np.nan, np.nan]])
    >>> nanmedian_stack(s[:, :, None])[:, 0].tolist()
    [2.0, 7.0]
    >>> nanmedian_stack(np.array([[1.0], [9.0]]), low=True).tolist()
    [1.0]
    """
    stack = np.asarray(stack)
    n = stack.shape[0]
    if out is None:
        out = np.empty(stack.shape[1:], dtype=stack.dtype)
    if n == 0:
        out[...] = np.nan
        return out
    missing = np.isnan(stack)
    counts = n - np.count_nonzero(missing, axis=0)
    if n > _NETWORK_LIMIT:
        ordered = np.sort(stack, axis=0)  # NaN sorts last
        frames = list(ordered)
    else:
        ordered = np.where(missing, np.inf, stack).astype(stack.dtype, copy=False)
        # Each compare-exchange writes its minimum into a spare frame and
        # swaps the frames' roles, rather than copying it back.
        frames = list(ordered)
        spare = np.empty_like(frames[0])
        for a, b in sorting_network(n):
            np.minimum(frames[a], frames[b], out=spare)
            np.maximum(frames[a], frames[b], out=frames[b])
            frames[a], spare = spare, frames[a]
    del missing
    low_index = np.maximum(counts - 1, 0) // 2
    lower = _select(frames, low_index)
    upper = lower if low else _select(frames, np.minimum(counts // 2, n - 1))
    np.multiply(lower + upper, 0.5, out=out)
    out[counts == 0] = np.nan
    return out


def _select(frames, index):
    """``frames[index[p]][p]`` at every pixel ``p``."""
    # A few masked copies, one per position a median can take, cost less
    # than indexing with an array of positions.
    chosen = frames[0].copy()
    for position in range(1, int(index.max(initial=0)) + 1):
        np.copyto(chosen, frames[position], where=index == position)
    return chosen
