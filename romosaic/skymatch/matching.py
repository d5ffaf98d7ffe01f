"""From per-image sky measurements to one sky level per image.

The four methods of the reference pipeline:

``local``
    each image's own sky (its statistic over all its good pixels);
``global``
    the smallest of the images' local skies, given to every image;
``match``
    one offset per image that equalizes the sky where images overlap (least
    squares over all overlapping pairs); within a connected set of
    overlapping images the lowest offset is 0 (``match_down``) or the
    highest is 0 (otherwise, making the others negative);
``global+match``
    the ``match`` offsets plus a common baseline: the smallest of the
    images' matched skies (local sky minus offset), so that the image with
    the lowest sky after matching is at its own measured sky.

The unknowns are *sky units*: one image each, as in the reference pipeline,
because every WFI detector has a background of its own (residual bias, dark
and flat-field differences). `match_sky` also accepts larger units (e.g. the
detectors of one exposure sharing one offset), which the step offers as an
option.

Pair differences (`pair_differences`) use only coarse cells that both units
fill well, combine the cell differences with inverse-variance weights and
iterative clipping (cells where one exposure has a cosmic ray, a satellite
trail or the edge of a source the other does not see differ and are
rejected), and give each pair a variance from the pooled scatter.
`solve_offsets` then minimizes the weighted squared mismatch
``Σ w_gh (x_g − x_h − d_gh)²`` for each connected set of units.
"""

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import spsolve

from ..errors import RomosaicInputError
from .cells import SkyCells

__all__ = [
    "SKY_METHODS",
    "PairDifferences",
    "SkyMatchResult",
    "combine_group_cells",
    "match_sky",
    "pair_differences",
    "solve_offsets",
]

log = logging.getLogger(__name__)

#: The sky methods, as spelled in ``meta.background.method``.
SKY_METHODS = ("local", "global", "match", "global+match")

#: Smallest fraction of a cell that good pixels of a unit must cover for the
#: cell to be compared: partly covered cells at image edges see a different
#: patch of sky than their neighbours' full cells.
MIN_CELL_FILL = 0.5

#: Fewest common cells for two units to count as overlapping.
MIN_PAIR_CELLS = 3

#: Clipping limit (in robust standard deviations) of cell differences.
PAIR_CLIP = 3.0
_PAIR_ITERATIONS = 5
_MIN_REDUCED_CHI2 = 1e-6


@dataclass
class PairDifferences:
    """Sky differences between overlapping sky units (images or groups of them).

    Attributes
    ----------
    first, second : numpy.ndarray of int
        Unit indices, ``first < second``.
    difference : numpy.ndarray of float64
        Sky of ``first`` minus sky of ``second``.
    variance : numpy.ndarray of float64
        Variance of each difference.
    n_cells : numpy.ndarray of int
        Cells used (after clipping).
    """

    first: np.ndarray
    second: np.ndarray
    difference: np.ndarray
    variance: np.ndarray
    n_cells: np.ndarray

    def __len__(self):
        return self.first.size


@dataclass
class SkyMatchResult:
    """What `match_sky` found.

    Attributes
    ----------
    levels : numpy.ndarray of float64
        Sky level per image; NaN for an image without usable pixels.
    group_levels : numpy.ndarray of float64
        Level per sky unit (NaN when none could be measured).
    offsets : numpy.ndarray of float64
        Matched offsets per unit, the lowest (``match_down``) or highest of
        each connected set of units being 0; NaN for a unit that overlaps
        no other, and all NaN for ``local`` and ``global``.
    isolated : list of int
        Units overlapping no other unit (``match`` modes only).
    components : list of list of int
        Sets of units connected by overlaps, two or more units each.
    pairs : PairDifferences or None
        The pair differences used (``match`` modes only).
    residual_rms : float
        RMS of the pair equations' residuals in units of their standard
        deviation (about 1 when the matched skies are consistent).
    """

    levels: np.ndarray
    group_levels: np.ndarray
    offsets: np.ndarray
    isolated: list = field(default_factory=list)
    components: list = field(default_factory=list)
    pairs: PairDifferences | None = None
    residual_rms: float = float("nan")


def combine_group_cells(cell_sets):
    """Merge the cell statistics of the images of one sky unit.

    Used when several images share one offset (the detectors of one
    exposure). They do not overlap, but a cell on the gap between two of them
    is shared; its statistics are combined weighted by pixel counts and its
    fills added. A unit of one image keeps its cells as they are.

    Parameters
    ----------
    cell_sets : list of SkyCells

    Returns
    -------
    SkyCells
    """
    cell_sets = [c for c in cell_sets if len(c)]
    if not cell_sets:
        return SkyCells.empty()
    if len(cell_sets) == 1:
        return cell_sets[0]
    cells = np.concatenate([c.cells for c in cell_sets])
    unique, inverse = np.unique(cells, return_inverse=True)
    n = np.concatenate([c.npix for c in cell_sets]).astype(np.float64)

    def total(values):
        return np.bincount(inverse, weights=values, minlength=unique.size)

    weight = total(n)
    value = total(n * np.concatenate([c.value for c in cell_sets])) / weight
    variance = total(n**2 * np.concatenate([c.variance for c in cell_sets])) / weight**2
    fill = total(np.concatenate([c.fill for c in cell_sets]))
    return SkyCells(cells=unique, value=value, variance=variance,
                    npix=weight.astype(np.int64), fill=fill)


def _grouped_median(values, groups, n_groups):
    order = np.lexsort((values, groups))
    values, groups = values[order], groups[order]
    start = np.searchsorted(groups, np.arange(n_groups), side="left")
    end = np.searchsorted(groups, np.arange(n_groups), side="right")
    count = end - start
    low = start + np.maximum(count - 1, 0) // 2
    high = start + count // 2
    top = max(values.size - 1, 0)
    return 0.5 * (values[np.minimum(low, top)] + values[np.minimum(high, top)])


def pair_differences(group_cells, *, min_fill=MIN_CELL_FILL, min_cells=MIN_PAIR_CELLS,
                     clip=PAIR_CLIP):
    """Sky differences of every pair of sky units that share well-filled cells.

    Parameters
    ----------
    group_cells : list of SkyCells
        One per sky unit (`combine_group_cells`).
    min_fill : float, optional
        Smallest cell fill used.
    min_cells : int, optional
        Fewest cells (after clipping) for a pair to be kept.
    clip : float, optional
        Clipping limit of cell differences, in robust standard deviations.

    Returns
    -------
    PairDifferences

    Notes
    -----
    The cost is proportional to the number of (cell, unit) entries times
    the largest number of units covering one cell: near-linear in the
    number of images, since a cell is covered by the images of a few
    exposures only.
    """
    group = np.concatenate([np.full(len(c), g, np.int64) for g, c in enumerate(group_cells)]
                           or [np.empty(0, np.int64)])
    cells = np.concatenate([c.cells for c in group_cells] or [np.empty(0, np.int64)])
    value = np.concatenate([c.value for c in group_cells] or [np.empty(0)])
    variance = np.concatenate([c.variance for c in group_cells] or [np.empty(0)])
    fill = np.concatenate([c.fill for c in group_cells] or [np.empty(0)])
    usable = (fill >= min_fill) & np.isfinite(value) & (variance > 0)
    group, cells, value, variance = group[usable], cells[usable], value[usable], variance[usable]
    order = np.lexsort((group, cells))
    group, cells, value, variance = group[order], cells[order], value[order], variance[order]

    # Entries of one cell are adjacent, ordered by unit: pairing each entry
    # with the one `offset` places later, for growing offsets, visits every
    # pair of units sharing a cell once.
    firsts, seconds = [], []
    offset = 1
    while offset < cells.size:
        same = np.flatnonzero(cells[:-offset] == cells[offset:])
        if same.size == 0:
            break
        firsts.append(same)
        seconds.append(same + offset)
        offset += 1
    if not firsts:
        return PairDifferences(*(np.empty(0, np.int64),) * 2, np.empty(0), np.empty(0),
                               np.empty(0, np.int64))
    i = np.concatenate(firsts)
    j = np.concatenate(seconds)
    n_groups = len(group_cells)
    pair_key = group[i] * n_groups + group[j]
    keys, pair = np.unique(pair_key, return_inverse=True)
    n_pairs = keys.size
    d = value[i] - value[j]
    w = 1.0 / (variance[i] + variance[j])

    estimate = _grouped_median(d, pair, n_pairs)
    keep = np.ones(d.size, dtype=bool)
    for _ in range(_PAIR_ITERATIONS):
        chi = (d - estimate[pair]) * np.sqrt(w)
        # One robust scale for all pairs: the cell variances are estimates
        # (the histogram mode, for one, is noisier than stddev²/npix says),
        # and pooling gives that correction from many cells, not a few.
        scale = 1.4826 * np.median(np.abs(chi[keep])) if keep.any() else 0.0
        new_keep = np.abs(chi) <= clip * scale if scale > 0 else np.ones(d.size, dtype=bool)
        sum_w = np.bincount(pair, weights=w * new_keep, minlength=n_pairs)
        with np.errstate(invalid="ignore", divide="ignore"):
            new_estimate = np.bincount(pair, weights=w * d * new_keep, minlength=n_pairs) / sum_w
        # A pair whose cells were all clipped keeps its median.
        estimate = np.where(sum_w > 0, new_estimate, estimate)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep

    n_cells = np.bincount(pair, weights=keep, minlength=n_pairs).astype(np.int64)
    sum_w = np.bincount(pair, weights=w * keep, minlength=n_pairs)
    chi2 = np.sum(w * keep * (d - estimate[pair]) ** 2)
    dof = int(keep.sum()) - n_pairs
    reduced = chi2 / dof if dof > 0 else 1.0
    with np.errstate(divide="ignore"):
        # Noise-free images agree exactly (chi2 = 0); a floor keeps their
        # pair variances, and so the solver's weights, finite.
        pair_variance = max(reduced, _MIN_REDUCED_CHI2) / sum_w
    valid = n_cells >= min_cells
    return PairDifferences(
        first=(keys // n_groups)[valid],
        second=(keys % n_groups)[valid],
        difference=estimate[valid],
        variance=pair_variance[valid],
        n_cells=n_cells[valid],
    )


def solve_offsets(n_groups, pairs):
    """Offsets ``x`` minimizing ``Σ (x_first − x_second − difference)² / variance``.

    Parameters
    ----------
    n_groups : int
    pairs : PairDifferences

    Returns
    -------
    offsets : numpy.ndarray of float64
        NaN for units in no pair. Each connected component's offsets are
        determined up to a constant; its first unit is set to 0.
    components : list of list of int
        The connected components with two or more units.
    residual_rms : float
        RMS of ``(x_first − x_second − difference) / sqrt(variance)``.
    """
    offsets = np.full(n_groups, np.nan)
    if len(pairs) == 0:
        return offsets, [], float("nan")
    w = 1.0 / pairs.variance
    a, b = pairs.first, pairs.second
    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(n_groups, n_groups))
    _, label = connected_components(graph, directed=False)
    in_pair = np.zeros(n_groups, dtype=bool)
    in_pair[a] = in_pair[b] = True

    # Normal equations L x = r of the weighted least squares: L is the
    # weighted graph Laplacian, sparse with one row per unit.
    rows = np.concatenate([a, b, a, b])
    cols = np.concatenate([a, b, b, a])
    vals = np.concatenate([w, w, -w, -w])
    laplacian = coo_matrix((vals, (rows, cols)), shape=(n_groups, n_groups)).tocsr()
    rhs = np.bincount(a, weights=w * pairs.difference, minlength=n_groups) - np.bincount(
        b, weights=w * pairs.difference, minlength=n_groups)

    components = []
    for comp in np.unique(label[in_pair]):
        members = np.flatnonzero(label == comp)
        components.append(members.tolist())
        # Fixing one unit's offset at 0 removes the null space (a constant).
        free = members[1:]
        offsets[members[0]] = 0.0
        if free.size == 1:
            offsets[free] = rhs[free] / laplacian[free[0], free[0]]
        else:
            sub = laplacian[free][:, free].tocsc()
            offsets[free] = spsolve(sub, rhs[free])
    residual = (offsets[a] - offsets[b] - pairs.difference) * np.sqrt(w)
    return offsets, components, float(np.sqrt(np.mean(residual**2)))


def match_sky(image_skies, groups, *, skymethod="match", match_down=True, **pair_options):
    """Sky levels of every image by one of the reference pipeline's methods.

    Parameters
    ----------
    image_skies : list of ImageSky
        One per image (`romosaic.skymatch.measure_image_sky`).
    groups : list of list of int
        Image indices of each sky unit, the images that share one offset:
        ``[[0], [1], ...]`` matches every image on its own (the reference
        pipeline's way); the images of each exposure group make the
        detectors of one exposure move together.
    skymethod : {"local", "global", "match", "global+match"}
    match_down : bool
        For ``match``: the lowest offset of each connected set of units is
        0 (True) or the highest is (False).
    **pair_options
        Passed to `pair_differences`.

    Returns
    -------
    SkyMatchResult

    Examples
    --------
    Three images whose sky is 0.5 apart, overlapping in a chain:

    >>> from romosaic.skymatch import ImageSky, SkyCells
    >>> def sky(level, cells):
    ...     n = len(cells)
    ...     c = SkyCells(np.array(cells), np.full(n, level), np.full(n, 1e-4),
    ...                  np.full(n, 900), np.ones(n))
    ...     return ImageSky(local=level, npix=900 * n, cells=c)
    >>> images = [sky(1.0, [1, 2, 3, 4]), sky(1.5, [3, 4, 5, 6, 7]), sky(2.0, [6, 7, 8, 9])]
    >>> match_sky(images, [[0], [1], [2]], skymethod="match", min_cells=2).levels.tolist()
    [0.0, 0.5, 1.0]
    """
    if skymethod not in SKY_METHODS:
        raise RomosaicInputError(
            f"skymethod must be one of {', '.join(SKY_METHODS)}, got {skymethod!r}")
    n_images = len(image_skies)
    local = np.array([s.local for s in image_skies], dtype=float)
    group_of = np.full(n_images, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        group_of[list(members)] = g
    if (group_of < 0).any():
        raise ValueError("every image must belong to one sky unit")
    n_groups = len(groups)
    # A unit of several images takes the lowest of their skies (as the
    # reference does for the images of one group).
    group_local = np.array([np.nanmin(local[m]) if np.isfinite(local[m]).any() else np.nan
                            for m in groups])
    valid = np.isfinite(local)

    if skymethod in ("local", "global"):
        if skymethod == "local":
            levels = local.copy()
        else:
            floor = np.nanmin(local) if valid.any() else np.nan
            levels = np.where(valid, floor, np.nan)
        return SkyMatchResult(levels=levels, group_levels=np.full(n_groups, np.nan),
                              offsets=np.full(n_groups, np.nan))

    group_cells = [combine_group_cells([image_skies[i].cells for i in m if valid[i]])
                   for m in groups]
    pairs = pair_differences(group_cells, **pair_options)
    offsets, components, residual_rms = solve_offsets(n_groups, pairs)
    group_levels = np.full(n_groups, np.nan)
    matched = np.full(n_groups, np.nan)
    for members in components:
        x = offsets[members]
        matched[members] = x - (x.min() if match_down else x.max())
        if skymethod == "match":
            group_levels[members] = matched[members]
        else:
            # Gauge-free: adding a constant to x changes nothing here, so
            # match_down does not matter (as in the reference's arithmetic).
            group_levels[members] = x + np.nanmin(group_local[members] - x)
    isolated = [g for g in range(n_groups) if not np.isfinite(offsets[g])]
    for g in isolated:
        group_levels[g] = group_local[g]
    levels = np.where(valid, group_levels[group_of], np.nan)
    return SkyMatchResult(levels=levels, group_levels=group_levels, offsets=matched,
                          isolated=isolated, components=components, pairs=pairs,
                          residual_rms=residual_rms)
