"""Per-source quality flags.

``warning_flags`` (int32) is the sum of these bits; 0 means no warning:

==== ================= =========================================================
Bit  Name              Meaning
==== ================= =========================================================
1    NO_DATA_CENTROID  the centroid's (rounded) pixel is outside the mosaic or
                       has no data (NaN, zero weight)
2    EDGE              the Kron aperture or the largest circular aperture
                       extends beyond the mosaic array
4    MASKED            the Kron aperture or the largest circular aperture
                       contains pixels without data (outside the coverage, or a
                       hole where every input was flagged)
8    BLENDED           the source was split from a larger segment by the
                       deblender (``deblend=True`` only)
16   NEIGHBOUR         the Kron aperture or the largest circular aperture
                       overlaps another source's segment; those pixels were
                       replaced by their mirror image about the source's centre
                       before photometry (photutils' ``correct`` method)
32   SINGLE_INPUT      at most one input image contributes at the centroid
                       pixel: outlier detection could not compare exposures
                       there, so a cosmic ray broader than the sharpness test
                       allows, or one on top of a source, may remain
                       (set only when the mosaic's context image is known)
64   NO_COVERAGE       forced photometry only: no pixel of the source's segment
                       (from the detection band) has data in this mosaic; its
                       fluxes are NaN
==== ================= =========================================================

``image_flags`` (int32) is 1 when any pixel of those apertures lacks data
(bit 4 above), so that it keeps the reference's meaning "a pixel used for
this source was flagged", and 0 otherwise.

A source with EDGE or MASKED set has fluxes measured on fewer pixels than
the aperture: they are lower limits.
"""

import numpy as np

__all__ = [
    "BLENDED",
    "EDGE",
    "FLAG_DESCRIPTIONS",
    "FORCED_FLAG_DESCRIPTIONS",
    "MASKED",
    "NEIGHBOUR",
    "NO_COVERAGE",
    "NO_DATA_CENTROID",
    "SINGLE_INPUT",
    "aperture_flags",
    "centroid_flags",
    "coverage_flags",
]

NO_DATA_CENTROID = 1
EDGE = 2
MASKED = 4
BLENDED = 8
NEIGHBOUR = 16
SINGLE_INPUT = 32
NO_COVERAGE = 64

#: Stored with the catalog so that the file explains its own flags.
FLAG_DESCRIPTIONS = {
    "warning_flags_1": "centroid pixel outside the mosaic or without data",
    "warning_flags_2": "Kron or largest circular aperture extends beyond the mosaic array",
    "warning_flags_4": "Kron or largest circular aperture contains pixels without data",
    "warning_flags_8": "split from a larger segment by the deblender",
    "warning_flags_16": "Kron or largest circular aperture overlaps another source's segment",
    "warning_flags_32": "at most one input image contributes at the centroid: cosmic rays "
                        "could not be rejected by comparing exposures",
    "image_flags_1": "Kron or largest circular aperture contains pixels without data",
}

#: A forced catalog's flags: its band's are ``forced_warning_flags``, with one more bit.
FORCED_FLAG_DESCRIPTIONS = {
    **{key.replace("warning_flags", "forced_warning_flags"): value
       for key, value in FLAG_DESCRIPTIONS.items()},
    "forced_warning_flags_64": "no pixel of the detection band's segment has data in this "
                               "mosaic: fluxes NaN",
}


def centroid_flags(x, y, no_data):
    """NO_DATA_CENTROID where the rounded centroid is off the array or on a pixel without data.

    Parameters
    ----------
    x, y : numpy.ndarray
        Centroids in pixels (may be NaN).
    no_data : numpy.ndarray of bool
        True where the mosaic has no data.

    Returns
    -------
    numpy.ndarray of int32
    """
    ny, nx = no_data.shape
    finite = np.isfinite(x) & np.isfinite(y)
    ix = np.full(x.shape, -1, dtype=np.int64)
    iy = np.full(y.shape, -1, dtype=np.int64)
    ix[finite] = np.floor(x[finite] + 0.5).astype(np.int64)
    iy[finite] = np.floor(y[finite] + 0.5).astype(np.int64)
    inside = finite & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    bad = ~inside
    bad[inside] = no_data[iy[inside], ix[inside]]
    return np.where(bad, NO_DATA_CENTROID, 0).astype(np.int32)


def coverage_flags(x, y, coverage):
    """SINGLE_INPUT where at most one input image contributes at the rounded centroid.

    Parameters
    ----------
    x, y : numpy.ndarray
        Centroids in pixels (may be NaN; such sources are not flagged here,
        NO_DATA_CENTROID covers them).
    coverage : numpy.ndarray
        Number of input images contributing to each pixel.

    Returns
    -------
    numpy.ndarray of int32
    """
    ny, nx = coverage.shape
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    ix = np.zeros(x.shape, dtype=np.int64)
    iy = np.zeros(y.shape, dtype=np.int64)
    ix[finite] = np.floor(x[finite] + 0.5).astype(np.int64)
    iy[finite] = np.floor(y[finite] + 0.5).astype(np.int64)
    inside = finite & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    single = np.zeros(x.shape, dtype=bool)
    single[inside] = coverage[iy[inside], ix[inside]] <= 1
    return np.where(single, SINGLE_INPUT, 0).astype(np.int32)


def aperture_flags(apertures, labels, segmentation, no_data):
    """EDGE, MASKED and NEIGHBOUR bits from each source's apertures.

    Parameters
    ----------
    apertures : list of list
        For each source, its photutils apertures (None entries are skipped).
    labels : numpy.ndarray
        Segment label of each source.
    segmentation : numpy.ndarray
        The label image.
    no_data : numpy.ndarray of bool
        True where the mosaic has no data.

    Returns
    -------
    numpy.ndarray of int32
    """
    shape = segmentation.shape
    flags = np.zeros(len(labels), dtype=np.int32)
    for index, (label, source_apertures) in enumerate(zip(labels, apertures, strict=True)):
        value = 0
        for aperture in source_apertures:
            if aperture is None:
                continue
            # 'center': a pixel belongs to the aperture if its centre does.
            footprint = aperture.to_mask(method="center")
            overlap = footprint.get_overlap_slices(shape)
            inside = footprint.data > 0
            if overlap is None or overlap[0] is None:
                value |= EDGE
                continue
            large, small = overlap
            used = inside[small]
            if used.sum() < inside.sum():
                value |= EDGE
            if np.any(no_data[large][used]):
                value |= MASKED
            others = segmentation[large][used]
            if np.any((others != 0) & (others != label)):
                value |= NEIGHBOUR
        flags[index] = value
    return flags
