"""Clipped sky statistics of many groups of pixels at once.

The reference pipeline measures sky with IRAF-style clipped statistics
(``imstatistics``): starting from the pixels within ``[lower, upper]``, it
iterates ``nclip`` times, each time keeping the pixels within
``[mean - lsigma * stddev, mean + usigma * stddev]`` of the previous pass
(never outside ``[lower, upper]``), and then reports, on the pixels of the
last pass:

``mean``
    their mean;
``median``
    their exact median;
``mode``
    the peak of their histogram (bins ``binwidth`` standard deviations wide,
    starting at the smallest value), refined by the vertex of the parabola
    through the peak bin and its two neighbours;
``midpt``
    the histogram estimate of the median: the value where the cumulative
    histogram, interpolated linearly within a bin, reaches one half.

`grouped_sky_statistics` computes these for every group of a labelled set of
pixels (every coarse sky cell of an image, or the whole image as one group)
with one sort. Each value is packed with its label into one 64-bit integer
key whose order is (label, value); after sorting, every clipping range of a
group is a contiguous run found by binary search, sums over a run come from
prefix sums, and histogram counts are differences of binary searches. The
cost is one ``O(N log N)`` sort of the pixels plus ``O(groups × bins × log N)``,
independent of ``nclip``.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import RomosaicInputError

__all__ = ["SKY_STATISTICS", "GroupedSky", "SkyStatisticsParameters", "grouped_sky_statistics"]

#: The statistics `grouped_sky_statistics` can report.
SKY_STATISTICS = ("mode", "median", "mean", "midpt")

# A histogram wider than this many bins (possible without clipping, when a
# group holds a cosmic ray thousands of sigma above the sky) is computed with
# wider bins: the peak of such a histogram is still found to a small fraction
# of the data range, and memory stays bounded.
MAX_HISTOGRAM_BINS = 4096

_SIGN = np.uint32(0x80000000)


@dataclass(frozen=True)
class SkyStatisticsParameters:
    """How a sky value is measured from a set of pixels.

    Attributes
    ----------
    skystat : {"mode", "median", "mean", "midpt"}
        The statistic reported (see the module docstring).
    lower, upper : float or None
        Only pixel values within ``[lower, upper]`` are used (None: no limit).
    nclip : int
        Number of sigma-clipping iterations (0: none).
    lsigma, usigma : float
        Lower and upper clipping limits in standard deviations.
    binwidth : float
        Histogram bin width for ``mode`` and ``midpt``, in standard deviations.
    """

    skystat: str = "mode"
    lower: float | None = None
    upper: float | None = None
    nclip: int = 5
    lsigma: float = 4.0
    usigma: float = 4.0
    binwidth: float = 0.1

    def __post_init__(self):
        problem = self.problem()
        if problem:
            raise RomosaicInputError(problem)

    def problem(self):
        """A one-line description of an unusable value, or None."""
        if self.skystat not in SKY_STATISTICS:
            return f"skystat must be one of {', '.join(SKY_STATISTICS)}, got {self.skystat!r}"
        if int(self.nclip) != self.nclip or self.nclip < 0:
            return f"nclip must be a non-negative integer, got {self.nclip}"
        for name in ("lsigma", "usigma", "binwidth"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                return f"{name} must be a positive number, got {value}"
        for name in ("lower", "upper"):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value):
                return f"{name} must be a finite number or None, got {value}"
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            return f"lower ({self.lower}) must not exceed upper ({self.upper})"
        return None


@dataclass
class GroupedSky:
    """Sky statistics of each group of pixels.

    Attributes
    ----------
    value : numpy.ndarray of float64
        The requested statistic; NaN for a group with no usable pixel.
    npix : numpy.ndarray of int64
        Pixels used in the last clipping pass.
    stddev : numpy.ndarray of float64
        Standard deviation of those pixels (0 for fewer than two).
    """

    value: np.ndarray
    npix: np.ndarray
    stddev: np.ndarray


def _orderable(values):
    """float32 values → uint32 keys with the same order (finite values and ±inf)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    # Positive floats order like their bit patterns once the sign bit is set;
    # negative ones order in reverse, so all their bits are flipped. The
    # arithmetic shift spreads the sign bit into a mask of all ones or zeros.
    flip = (bits.view(np.int32) >> 31).view(np.uint32)
    flip |= _SIGN
    flip ^= bits
    return flip


def _from_orderable(keys):
    """Inverse of `_orderable`, for a uint32 or uint64 array of keys below 2**32."""
    keys = keys.astype(np.uint32)
    # Keys with the top bit set came from positive values (sign bit to clear);
    # the others from negative values (every bit to flip).
    flip = keys >> 31
    flip -= np.uint32(1)
    flip |= _SIGN
    keys ^= flip
    return keys.view(np.float32)


def _f32_at_least(x):
    """The smallest float32 not below each float64 ``x``."""
    f = np.asarray(x, dtype=np.float64).astype(np.float32)
    low = f.astype(np.float64) < x
    return np.where(low, np.nextafter(f, np.float32(np.inf)), f)


def _f32_at_most(x):
    """The largest float32 not above each float64 ``x``."""
    f = np.asarray(x, dtype=np.float64).astype(np.float32)
    high = f.astype(np.float64) > x
    return np.where(high, np.nextafter(f, np.float32(-np.inf)), f)


class _SortedGroups:
    """Pixels sorted by (label, value), with binary search by value within a label."""

    def __init__(self, values, labels, n_groups):
        if labels is None:
            # One group: 32-bit keys sort faster than 64-bit ones, take half
            # the memory, and are searched as they are (label shift 0).
            keys = _orderable(values)
            keys.sort()
            self.values = _from_orderable(keys)
            self.keys = keys
        else:
            keys = np.array(labels, dtype=np.uint64)
            keys <<= np.uint64(32)
            keys |= _orderable(values)
            keys.sort()
            self.keys = keys
            self.values = _from_orderable(keys)
        self.label_shift = np.arange(n_groups, dtype=np.uint64) << np.uint64(32)
        self.n_groups = n_groups

    def first_at_least(self, groups_shift, threshold):
        """Index of the first value ≥ ``threshold`` of each group."""
        bits = _orderable(_f32_at_least(threshold)).astype(np.uint64)
        return np.searchsorted(self.keys, self._as_keys(groups_shift | bits), side="left")

    def after_at_most(self, groups_shift, threshold):
        """Index after the last value ≤ ``threshold`` of each group."""
        bits = _orderable(_f32_at_most(threshold)).astype(np.uint64)
        return np.searchsorted(self.keys, self._as_keys(groups_shift | bits), side="right")

    def _as_keys(self, queries):
        # Searching uint32 keys with uint64 queries would convert (copy) all
        # the keys on every search; one group's queries fit in 32 bits.
        return queries.astype(self.keys.dtype, copy=False)


def grouped_sky_statistics(values, labels, n_groups, params):
    """Clipped sky statistics of every group of a labelled set of pixels.

    Parameters
    ----------
    values : numpy.ndarray
        Finite pixel values (1-D); computed in float32, as the reference does.
    labels : numpy.ndarray of int or None
        Group of each value, in ``[0, n_groups)`` and below 2**31; None puts
        every value in group 0.
    n_groups : int
        Number of groups.
    params : SkyStatisticsParameters

    Returns
    -------
    GroupedSky

    Examples
    --------
    >>> values = np.array([1.0, 2.0, 3.0, 100.0, 5.0, 6.0, 7.0])
    >>> labels = np.array([0, 0, 0, 0, 1, 1, 1])
    >>> p = SkyStatisticsParameters(skystat="median", nclip=0, upper=50.0)
    >>> grouped_sky_statistics(values, labels, 2, p).value.tolist()
    [2.0, 6.0]
    """
    n_groups = int(n_groups)
    values = np.asarray(values)
    if labels is None:
        labels = None if n_groups == 1 else np.zeros(values.size, np.int64)
    sorted_groups = _SortedGroups(values, labels, n_groups)
    vals = sorted_groups.values
    shift = sorted_groups.label_shift

    # Prefix sums (float64) of the values minus one typical value: removing
    # a common zero point keeps the sums of squares accurate however far the
    # data sit from zero.
    reference = float(vals[vals.size // 2]) if vals.size else 0.0
    sum1 = np.empty(vals.size + 1)
    sum1[0] = 0.0
    np.subtract(vals, reference, out=sum1[1:], dtype=np.float64)
    sum2 = np.square(sum1)
    np.cumsum(sum1[1:], out=sum1[1:])
    np.cumsum(sum2[1:], out=sum2[1:])

    lower = -np.inf if params.lower is None else float(params.lower)
    upper = np.inf if params.upper is None else float(params.upper)
    lo = np.full(n_groups, lower)
    hi = np.full(n_groups, upper)
    for iteration in range(int(params.nclip) + 1):
        start = sorted_groups.first_at_least(shift, lo)
        end = np.maximum(sorted_groups.after_at_most(shift, hi), start)
        n = end - start
        with np.errstate(invalid="ignore", divide="ignore"):
            s1 = sum1[end] - sum1[start]
            s2 = sum2[end] - sum2[start]
            mean_c = s1 / n
            var = np.where(n > 1, (s2 - s1 * mean_c) / (n - 1), 0.0)
        std = np.sqrt(np.maximum(var, 0.0))
        mean = mean_c + reference
        if iteration < params.nclip:
            # Groups whose pixels all went stay empty: NaN limits select nothing.
            lo = np.maximum(lower, mean - params.lsigma * std)
            hi = np.minimum(upper, mean + params.usigma * std)

    empty = n == 0
    if params.skystat == "mean":
        value = mean
    elif params.skystat == "median":
        value = _median_of_runs(vals, start, n)
    else:
        value = _histogram_statistic(sorted_groups, shift, start, end, n, std,
                                     params.binwidth, params.skystat)
        value = np.where(np.isfinite(value), value, mean)
    value = np.where(empty, np.nan, value)
    return GroupedSky(value=value.astype(np.float64), npix=n.astype(np.int64),
                      stddev=np.where(empty, np.nan, std))


def _median_of_runs(vals, start, n):
    safe = np.maximum(n, 1)
    last = max(vals.size - 1, 0)
    low = np.minimum(start + (safe - 1) // 2, last)
    high = np.minimum(start + safe // 2, last)
    if vals.size == 0:
        return np.full(start.shape, np.nan)
    return 0.5 * (vals[low].astype(np.float64) + vals[high].astype(np.float64))


def _histogram_statistic(sorted_groups, shift, start, end, n, std, binwidth, skystat):
    """Histogram mode or midpoint of each run ``[start, end)`` of sorted values."""
    vals = sorted_groups.values
    result = np.full(n.shape, np.nan)
    usable = n > 0
    if not usable.any():
        return result
    vmin = np.where(usable, vals[np.minimum(start, vals.size - 1)], 0.0).astype(np.float64)
    vmax = np.where(usable, vals[np.maximum(end - 1, 0)], 0.0).astype(np.float64)
    span = vmax - vmin
    width = binwidth * std
    tiny = 10.0 * np.finfo(np.float32).eps * np.maximum(1.0, np.abs(vmax))
    # Degenerate groups (one distinct value, or bins wider than the data):
    # every estimator of the centre gives the middle of the range.
    single = usable & ((width <= tiny) | (span <= tiny) | (width > span))
    result[single] = 0.5 * (vmin[single] + vmax[single])
    binned = usable & ~single
    if not binned.any():
        return result

    idx = np.flatnonzero(binned)
    nbins = np.floor(span[idx] / width[idx]).astype(np.int64) + 1
    wide = nbins > MAX_HISTOGRAM_BINS
    nbins[wide] = MAX_HISTOGRAM_BINS
    width_i = np.where(wide, span[idx] * (1 + 1e-9) / MAX_HISTOGRAM_BINS, width[idx])
    # Edges of all histograms back to back: group k has nbins[k] + 1 edges.
    n_edges = nbins + 1
    owner = np.repeat(np.arange(idx.size), n_edges)
    first_edge = np.concatenate(([0], np.cumsum(n_edges)[:-1]))
    position = np.arange(owner.size) - first_edge[owner]
    edges = vmin[idx][owner] + position * width_i[owner]
    below = sorted_groups.first_at_least(shift[idx][owner], edges)
    # Every value of a run lies within its histogram: the first edge is its
    # minimum and the last lies beyond its maximum.
    below = np.clip(below, start[idx][owner], end[idx][owner])
    below[first_edge] = start[idx]
    below[first_edge + nbins] = end[idx]
    counts_all = np.diff(below).astype(np.float64)
    # Drop the differences that straddle two groups.
    keep = np.ones(counts_all.size, dtype=bool)
    keep[(first_edge + nbins)[:-1]] = False
    counts = counts_all[keep]
    bin_start = first_edge - np.arange(idx.size)  # offsets of each group's bins in `counts`

    if skystat == "mode":
        peak_count = np.maximum.reduceat(counts, bin_start)
        owner_bins = np.repeat(np.arange(idx.size), nbins)
        is_peak = counts == peak_count[owner_bins]
        candidates = np.where(is_peak, np.arange(counts.size), counts.size)
        peak = np.minimum.reduceat(candidates, bin_start)  # first highest bin
        k = peak - bin_start
        interior = (k > 0) & (k < nbins - 1)
        c0 = counts[peak]
        cm = np.where(interior, counts[np.maximum(peak - 1, 0)], c0)
        cp = np.where(interior, counts[np.minimum(peak + 1, counts.size - 1)], c0)
        curvature = 2.0 * c0 - cm - cp
        with np.errstate(invalid="ignore", divide="ignore"):
            vertex = np.where(curvature > 0, 0.5 * (cp - cm) / curvature, 0.0)
        result[idx] = vmin[idx] + (k + 0.5 + vertex) * width_i
    else:  # midpt
        cumulative = np.cumsum(counts)
        before_group = np.concatenate(([0.0], cumulative))[bin_start]
        half = before_group + 0.5 * n[idx]
        owner_bins = np.repeat(np.arange(idx.size), nbins)
        # First bin where the group's cumulative count reaches one half.
        reached = np.where(cumulative >= half[owner_bins], np.arange(counts.size), counts.size)
        bin_half = np.minimum.reduceat(reached, bin_start)
        k = bin_half - bin_start
        before = cumulative[bin_half] - counts[bin_half]
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(counts[bin_half] > 0,
                                (half - before) / counts[bin_half], 0.5)
        result[idx] = vmin[idx] + (k + fraction) * width_i
    return result
