"""Comparing pipeline products with the simulator's truth.

Shared by the tests and the accuracy scripts in ``benchmarks/``, so that a
number quoted from a script is measured exactly as the tests measure it.
"""

import numpy as np
from roman_datamodels.dqflags import pixel

__all__ = ["aperture_sum", "cosmic_ray_recovery"]


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
