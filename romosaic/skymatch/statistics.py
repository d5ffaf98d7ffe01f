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
in compiled code (`romosaic.skymatch._statistics`): the pixels are gathered
group by group, each group is sorted on its own, and every clipping range,
median and histogram bin of a group is then a binary search or a short
sweep over its sorted run. Extra memory is one float32 per pixel, so the
statistics of a full-size detector cost about as much memory as its data.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import RomosaicInputError
from . import _statistics

__all__ = ["SKY_STATISTICS", "GroupedSky", "SkyStatisticsParameters", "grouped_sky_statistics"]

#: The statistics `grouped_sky_statistics` can report.
SKY_STATISTICS = ("mode", "median", "mean", "midpt")

# The compiled module's numbers for them (its `enum statistic`).
_STATISTIC_CODES = {"mean": 0, "median": 1, "mode": 2, "midpt": 3}

# A histogram wider than this many bins (possible without clipping, when a
# group holds a cosmic ray thousands of sigma above the sky) is computed with
# wider bins: the peak of such a histogram is still found to a small fraction
# of the data range, and memory stays bounded.
MAX_HISTOGRAM_BINS = 4096


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
    members : numpy.ndarray of int64
        Pixels in each group before any clipping.
    """

    value: np.ndarray
    npix: np.ndarray
    stddev: np.ndarray
    members: np.ndarray


def grouped_sky_statistics(values, labels, n_groups, params):
    """Clipped sky statistics of every group of a labelled set of pixels.

    Parameters
    ----------
    values : numpy.ndarray
        Pixel values (1-D), finite wherever labelled with a group; computed
        in float32, as the reference does.
    labels : numpy.ndarray of int or None
        Group of each value, below ``n_groups`` and 2**31; a negative label
        leaves the value out. None puts every value in group 0.
    n_groups : int
        Number of groups.
    params : SkyStatisticsParameters

    Returns
    -------
    GroupedSky

    Examples
    --------
    >>> values = np.array([1.0, 2.0, 3.0, 100.0, 5.0, 6.0, 7.0])
    >>> labels = np.array([0, 0, 0, 0, 1, 1, 1])  # -1 would leave a value out
    >>> p = SkyStatisticsParameters(skystat="median", nclip=0, upper=50.0)
    >>> grouped_sky_statistics(values, labels, 2, p).value.tolist()
    [2.0, 6.0]
    """
    n_groups = int(n_groups)
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if labels is not None:
        labels = np.ascontiguousarray(labels, dtype=np.int32).reshape(-1)
    elif n_groups != 1:
        labels = np.zeros(values.size, np.int32)
    value = np.empty(n_groups)
    npix = np.empty(n_groups, np.int64)
    stddev = np.empty(n_groups)
    members = np.empty(n_groups, np.int64)
    _statistics.grouped_statistics(
        values, labels, value, npix, stddev, members,
        statistic=_STATISTIC_CODES[params.skystat],
        lower=-np.inf if params.lower is None else float(params.lower),
        upper=np.inf if params.upper is None else float(params.upper),
        nclip=int(params.nclip), lsigma=float(params.lsigma), usigma=float(params.usigma),
        binwidth=float(params.binwidth), max_bins=MAX_HISTOGRAM_BINS)
    return GroupedSky(value=value, npix=npix, stddev=stddev, members=members)
