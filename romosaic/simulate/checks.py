"""Comparing pipeline products with the simulator's truth.

Shared by the tests and the accuracy scripts in ``benchmarks/``, so that a
number quoted from a script is measured exactly as the tests measure it.
"""

from dataclasses import dataclass

import numpy as np
from roman_datamodels.dqflags import pixel

__all__ = [
    "CoverageRegions",
    "aperture_sum",
    "catalog_rows_of_isolated_truth",
    "coverage_regions",
    "cosmic_ray_recovery",
    "source_mask",
]


def aperture_sum(mosaic, ra, dec, *, radius_arcsec=0.5):
    """Sum of a mosaic's pixels within a circle around a sky position.

    Parameters
    ----------
    mosaic : roman_datamodels.datamodels.MosaicModel
    ra, dec : float
        Degrees.
    radius_arcsec : float, optional

    Returns
    -------
    float
        In the mosaic's units times pixels; NaN when the circle is not
        wholly inside the mosaic.
    """
    x, y = mosaic.meta.wcs.invert(ra, dec)
    radius = radius_arcsec / (mosaic.meta.wcsinfo.pixel_scale * 3600)
    ny, nx = mosaic.data.shape
    if not (radius + 2 < x < nx - radius - 3 and radius + 2 < y < ny - radius - 3):
        return np.nan
    yy, xx = np.mgrid[int(y - radius - 2):int(y + radius + 3),
                      int(x - radius - 2):int(x + radius + 3)]
    inside = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    return float(np.nansum(mosaic.data[yy[inside], xx[inside]]))


def catalog_rows_of_isolated_truth(table, truth, wcs, *, pixel_scale_arcsec,
                                   max_distance_arcsec=0.2):
    """The catalog rows of the isolated true sources, matched by position.

    Each isolated true source is paired with the catalog row whose centroid
    is nearest its true position on the mosaic; pairs further apart than
    ``max_distance_arcsec`` are dropped.

    Parameters
    ----------
    table : astropy.table.Table
        The catalog (``x_centroid``, ``y_centroid`` in mosaic pixels).
    truth : astropy.table.Table
        The simulator's sources (``ra``, ``dec``, ``isolated``).
    wcs : gwcs.wcs.WCS
        The mosaic's WCS.
    pixel_scale_arcsec : float
        The mosaic's pixel size.
    max_distance_arcsec : float, optional

    Returns
    -------
    rows, matched_truth : astropy.table.Table
        Row ``i`` of one is the match of row ``i`` of the other.
    """
    from scipy.spatial import cKDTree

    x, y = wcs.invert(np.asarray(truth["ra"]), np.asarray(truth["dec"]))
    on_grid = np.isfinite(x) & np.isfinite(y)
    distance, index = cKDTree(np.column_stack([table["x_centroid"], table["y_centroid"]])) \
        .query(np.column_stack([np.where(on_grid, x, -1e6), np.where(on_grid, y, -1e6)]))
    keep = (distance * pixel_scale_arcsec < max_distance_arcsec) & np.asarray(truth["isolated"])
    return table[index[keep]], truth[keep]


def cosmic_ray_recovery(library, cosmic_rays, *, min_sigma=5.0, min_groups=2, edge=1):
    """How many significant cosmic-ray pixels outlier detection flagged.

    Counts the truth-table hits more than ``min_sigma`` times the pixel's
    error above the data, at sky positions covered by at least
    ``min_groups`` exposure groups (more than ``edge`` pixels inside an
    image of the group), and how many of them carry the OUTLIER flag.

    Parameters
    ----------
    library : romosaic.library.ModelLibrary
        The images after outlier detection (in MJy/sr).
    cosmic_rays : astropy.table.Table
        The simulator's cosmic-ray truth (filename, x, y, value_dn_s).

    Returns
    -------
    flagged, eligible : int
    """
    images = {}
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            images[model.meta.filename] = (
                model.dq.copy(), model.err.astype(np.float32), model.meta.wcs,
                model.meta.group_id, float(model.meta.photometry.conversion_megajanskys))
            library.shelve(model, index, modify=False)
    groups = {}
    for name, (_, _, _, group, _) in images.items():
        groups.setdefault(group, []).append(name)
    hits = [h for h in cosmic_rays
            if h["value_dn_s"] * images[h["filename"]][4]
            > min_sigma * images[h["filename"]][1][int(h["y"]), int(h["x"])]]
    if not hits:
        return 0, 0
    x = np.array([h["x"] for h in hits], float)
    y = np.array([h["y"] for h in hits], float)
    # Sky positions of the hits, and the groups covering them, one WCS call
    # per image rather than one per hit.
    ra = np.empty(len(hits))
    dec = np.empty(len(hits))
    for name, (_, _, wcs, _, _) in images.items():
        mine = np.array([h["filename"] == name for h in hits])
        if mine.any():
            ra[mine], dec[mine] = wcs(x[mine], y[mine])
    covering = np.zeros(len(hits), int)
    for names in groups.values():
        inside = np.zeros(len(hits), bool)
        for name in names:
            ny, nx = images[name][0].shape
            px, py = images[name][2].invert(ra, dec)
            inside |= (px >= edge) & (px <= nx - 1 - edge) & (py >= edge) & (py <= ny - 1 - edge)
        covering += inside
    eligible = covering >= min_groups
    flagged = np.array([bool(images[h["filename"]][0][int(h["y"]), int(h["x"])] & pixel.OUTLIER)
                        for h in hits])
    return int(flagged[eligible].sum()), int(eligible.sum())


def source_mask(mosaic, sources, *, star_radius_arcsec=1.0, galaxy_margin_arcsec=0.5):
    """Pixels of a mosaic near any source of the simulator's truth table.

    Parameters
    ----------
    mosaic : roman_datamodels.datamodels.MosaicModel
    sources : astropy.table.Table
        The simulator's source truth (ra, dec, kind, truncation_radius).
    star_radius_arcsec : float, optional
        Radius masked around each star.
    galaxy_margin_arcsec : float, optional
        Added to each galaxy's truncation radius.

    Returns
    -------
    numpy.ndarray of bool
    """
    ny, nx = mosaic.data.shape
    scale = mosaic.meta.wcsinfo.pixel_scale * 3600.0
    x, y = mosaic.meta.wcs.invert(np.asarray(sources["ra"]), np.asarray(sources["dec"]))
    extent = np.nan_to_num(np.asarray(sources["truncation_radius"], dtype=float))
    radius = np.where(np.asarray(sources["kind"]) == "star", star_radius_arcsec,
                      extent + galaxy_margin_arcsec) / scale
    mask = np.zeros((ny, nx), dtype=bool)
    for xc, yc, r in zip(x, y, radius, strict=True):
        if not (np.isfinite(xc) and -r <= xc <= nx + r and -r <= yc <= ny + r):
            continue
        y0, y1 = max(int(yc - r), 0), min(int(yc + r) + 2, ny)
        x0, x1 = max(int(xc - r), 0), min(int(xc + r) + 2, nx)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= (xx - xc) ** 2 + (yy - yc) ** 2 <= r * r
    return mask


@dataclass
class CoverageRegions:
    """Background of every coverage region of a mosaic.

    A coverage region is the set of pixels with the same contributing inputs
    (the same context bits).

    Attributes
    ----------
    labels : numpy.ndarray of int
        Region label of every pixel (-1: no data).
    median : numpy.ndarray of float64
        Median of each region's source-free pixels.
    noise : numpy.ndarray of float64
        Standard error of that median, allowing for the correlation of
        neighbouring pixels (measured on the mosaic's own source-free sky).
    npix : numpy.ndarray of int
        Source-free pixels of each region.
    n_inputs : numpy.ndarray of int
        Inputs contributing to each region.
    neighbours : numpy.ndarray of int, shape (n, 2)
        Pairs of regions whose pixels touch.
    """

    labels: np.ndarray
    median: np.ndarray
    noise: np.ndarray
    npix: np.ndarray
    n_inputs: np.ndarray
    neighbours: np.ndarray

    def large(self, min_pixels):
        """Indices of the regions with at least ``min_pixels`` source-free pixels."""
        return np.flatnonzero(self.npix >= min_pixels)


def _correlation_area(data, usable, block=4):
    """Pixels per independent noise sample: var(block sum) / (block² var(pixel))."""
    ny, nx = (s - s % block for s in data.shape)
    tiles = data[:ny, :nx].reshape(ny // block, block, nx // block, block)
    clean = usable[:ny, :nx].reshape(ny // block, block, nx // block, block).all(axis=(1, 3))
    sums = tiles.sum(axis=(1, 3))[clean]
    pixels = data[usable]
    if sums.size < 30 or pixels.size < 300:
        return 1.0
    def robust_var(v):
        return (1.4826 * np.median(np.abs(v - np.median(v)))) ** 2
    return max(robust_var(sums) / (block**2 * robust_var(pixels)), 1.0)


def coverage_regions(mosaic, mask):
    """Background medians of the mosaic's coverage regions.

    Parameters
    ----------
    mosaic : roman_datamodels.datamodels.MosaicModel
    mask : numpy.ndarray of bool
        Pixels to leave out (sources; see `source_mask`).

    Returns
    -------
    CoverageRegions
    """
    data = np.asarray(mosaic.data, dtype=np.float64)
    context = np.asarray(mosaic.context)
    has_data = context.any(axis=0) & np.isfinite(data)
    keys, inverse = np.unique(context.reshape(context.shape[0], -1).T, axis=0,
                              return_inverse=True)
    labels = inverse.reshape(data.shape).astype(np.int64)
    # Relabel without the "no input" key, so that labels count regions of data.
    empty = ~keys.any(axis=1)
    new = np.cumsum(~empty) - 1
    labels = np.where(has_data, new[labels], -1)
    keys = keys[~empty]
    n_inputs = np.array([sum(bin(int(v)).count("1") for v in k) for k in keys], dtype=int)
    usable = has_data & ~mask
    n = keys.shape[0]
    medians = np.full(n, np.nan)
    spreads = np.full(n, np.nan)
    npix = np.bincount(labels[usable], minlength=n)
    order = np.argsort(labels[usable], kind="stable")
    values = data[usable][order]
    bounds = np.concatenate([[0], np.cumsum(npix)])
    for r in range(n):
        v = values[bounds[r]:bounds[r + 1]]
        if v.size:
            medians[r] = np.median(v)
            spreads[r] = 1.4826 * np.median(np.abs(v - medians[r]))
    area = _correlation_area(data, usable)
    with np.errstate(divide="ignore", invalid="ignore"):
        noise = 1.2533 * spreads * np.sqrt(area / npix)
    pairs = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        touching = (a != b) & (a >= 0) & (b >= 0)
        pairs.append(np.stack([np.minimum(a, b)[touching], np.maximum(a, b)[touching]], 1))
    neighbours = np.unique(np.concatenate(pairs), axis=0) if pairs else np.empty((0, 2), int)
    return CoverageRegions(labels=labels, median=medians, noise=noise, npix=npix,
                           n_inputs=n_inputs, neighbours=neighbours)
