"""Measuring the detected sources: positions, shapes, photometry, flags.

Most quantities come from photutils' `~photutils.segmentation.SourceCatalog`
on the background-subtracted mosaic, with the mosaic's ``err`` array as the
per-pixel uncertainty:

* centroids and shapes from the image moments of each segment's pixels
  (measured on the unsmoothed image, so sizes are the source's own, not
  broadened by the detection kernel);
* windowed centroids (SourceExtractor's XWIN/YWIN);
* isophotal (segment) flux, elliptical Kron flux (photutils' default
  ``kron_params`` 2.5, 1.4) and circular-aperture fluxes. Pixels of a
  neighbouring source inside an aperture are replaced by their mirror image
  about the source's centre.

romosaic adds what photutils does not provide: uncertainties that include
the drizzle's noise correlation, or else calibrated on empty sky
(`romosaic.catalog.noise`; photutils treats pixels as independent, drizzled
pixels are not), centroid uncertainties,
the residual local background in a 2.4-2.8″ annulus, sky units from the WCS
at each source (see `romosaic.catalog.geometry`), nearest neighbours,
``is_extended`` (`romosaic.catalog.classify`) and the flags
(`romosaic.catalog.flags`).

Units: surface brightness in MJy/sr times the pixel solid angle in sr is
MJy; times 1e15 it is nJy. AB magnitudes are ``-2.5 log10(f / nJy) + 31.4``.
"""

import logging
from dataclasses import dataclass

import numpy as np
from photutils.segmentation import SourceCatalog
from scipy.spatial import cKDTree

from ..resample.noise_correlation import circular_aperture_factor, correlated_variance
from .classify import classify_extended
from .columns import aperture_column
from .flags import BLENDED, MASKED, aperture_flags, centroid_flags
from .geometry import SR_PER_ARCSEC2, local_geometry
from .noise import (
    NoiseCalibration,
    aperture_errors,
    calibrate_aperture_noise,
    empty_aperture_check,
    segment_errors,
)

__all__ = [
    "AB_ZERO_POINT_NJY",
    "APERTURE_MASK_METHOD",
    "KRON_PARAMS",
    "LOCAL_BACKGROUND_ANNULUS",
    "MeasuredSources",
    "abmag",
    "measure_sources",
]

log = logging.getLogger(__name__)

#: photutils' Kron parameters: aperture = 2.5 × the first-moment radius,
#: that radius at least 1.4 (in units of the moment ellipse).
KRON_PARAMS = (2.5, 1.4, 0.0)
#: How photutils treats pixels of other sources inside a Kron aperture:
#: replaced by their mirror image across the source's centre.
APERTURE_MASK_METHOD = "correct"
#: Inner and outer radius (arcsec) of the local-background annulus.
LOCAL_BACKGROUND_ANNULUS = (2.4, 2.8)
#: AB magnitude of a 1 nJy source: -2.5 log10(1e-9 Jy / 3631 Jy).
AB_ZERO_POINT_NJY = 31.4
#: MJy → nJy.
NJY_PER_MJY = 1.0e15
#: The circular apertures that define the concentration for ``is_extended``.
CONCENTRATION_APERTURES = (0.2, 0.4)


@dataclass
class MeasuredSources:
    """Column values of the catalog and facts for its metadata.

    Attributes
    ----------
    values : dict
        Column name → array, one entry per source, in catalog units.
    stellar_locus : float
        Point-source concentration used for ``is_extended``.
    stellar_locus_measured : bool
        Whether it was measured from the mosaic (else the fallback 1.0).
    aperture_radii_pix : list of float
        Radii of the circular apertures in pixels.
    noise : NoiseCalibration
        The error factors: measured on empty apertures and applied (no
        ``correlation``), or with a correlation the factors of circular
        apertures on uniform noise, for information.
    empty_check : list of float or None
        With a correlation: scatter of empty-aperture sums over their
        predicted errors, per radius (1 is right).
    """

    values: dict
    stellar_locus: float
    stellar_locus_measured: bool
    aperture_radii_pix: list
    noise: NoiseCalibration
    empty_check: list | None = None


def measure_sources(data, segmentation, error, no_data, wcs, *, aperture_radii_arcsec,
                    pixel_scale_arcsec, deblended=False, correlation=None,
                    detection_catalog=None):
    """Measure every segment of a segmentation image.

    Parameters
    ----------
    data : numpy.ndarray
        Background-subtracted mosaic in MJy/sr, 0 where ``no_data``.
    segmentation : photutils.segmentation.SegmentationImage
        The detected sources.
    error : numpy.ndarray
        One-sigma uncertainty of each pixel (MJy/sr), finite everywhere.
    no_data : numpy.ndarray of bool
        Pixels without data.
    wcs : gwcs.wcs.WCS
        The mosaic's WCS.
    aperture_radii_arcsec : sequence of float
        Circular aperture radii; must include 0.2 and 0.4 (``is_extended``).
    pixel_scale_arcsec : float
        Pixel size used to turn aperture radii into pixels.
    deblended : bool
        Whether the segmentation was deblended (sets the BLENDED flag).
    correlation : numpy.ndarray, optional
        The drizzle's noise correlation kernel ``ρ`` (see
        `romosaic.resample.noise_correlation`): uncertainties then include
        it exactly; without it they are calibrated on empty apertures.
    detection_catalog : photutils.segmentation.SourceCatalog, optional
        Forced photometry: a catalog of the same segmentation measured on
        another image (the detection band's). Centroids, shapes, bounding
        boxes and Kron apertures are then its, and fluxes are measured in
        those apertures on ``data``; the centroid uncertainties, which
        belong to the other image, are NaN.

    Returns
    -------
    MeasuredSources
    """
    catalog = SourceCatalog(
        data, segmentation, error=error, mask=no_data, kron_params=KRON_PARAMS,
        aperture_mask_method=APERTURE_MASK_METHOD, progress_bar=False,
        detection_catalog=detection_catalog)
    labels = np.asarray(catalog.labels)
    values = {"label": labels, "flagged_spatial_id": np.full(labels.size, -1, np.int64)}

    x, y = _plain(catalog.x_centroid), _plain(catalog.y_centroid)
    x_win, y_win = _plain(catalog.x_centroid_win), _plain(catalog.y_centroid_win)
    bbox = {name: np.asarray(getattr(catalog, name)) for name in
            ("bbox_xmin", "bbox_xmax", "bbox_ymin", "bbox_ymax")}
    # Where a centroid is undefined (a segment with no positive flux), the
    # WCS is still needed for units: use the middle of the bounding box.
    x_geo = np.where(np.isfinite(x), x, (bbox["bbox_xmin"] + bbox["bbox_xmax"]) / 2.0)
    y_geo = np.where(np.isfinite(y), y, (bbox["bbox_ymin"] + bbox["bbox_ymax"]) / 2.0)
    geometry = local_geometry(wcs, x_geo, y_geo)
    scale = geometry.pixel_scale_arcsec
    to_njy = geometry.pixel_area_sr * NJY_PER_MJY

    ra_win, dec_win = wcs(x_win, y_win, with_bounding_box=False)
    ra_win = np.asarray(ra_win, dtype=float) % 360.0
    dec_win = np.asarray(dec_win, dtype=float)
    undefined = ~np.isfinite(x) | ~np.isfinite(y)
    ra_c = np.where(undefined, np.nan, geometry.ra)
    dec_c = np.where(undefined, np.nan, geometry.dec)
    win_ok = np.isfinite(ra_win) & np.isfinite(dec_win)

    radii_pix = [float(r) / pixel_scale_arcsec for r in aperture_radii_arcsec]
    empty_check = None
    if correlation is None:
        noise = calibrate_aperture_noise(data, error, no_data, segmentation.data, radii_pix)
    else:
        # For the record only: what the correlation does to circular apertures on flat noise.
        noise = NoiseCalibration(radii_pix, [np.sqrt(circular_aperture_factor(correlation, r))
                                             for r in radii_pix], [0] * len(radii_pix))
        empty_check, _ = empty_aperture_check(data, error, no_data, segmentation.data,
                                              radii_pix, correlation)
    area_pix = _plain(catalog.area)
    half_light = _plain(catalog.flux_radius(0.5))

    x_err, y_err, xw_err, yw_err = _centroid_errors(
        data, error, no_data, segmentation, labels, x, y, x_win, y_win, half_light,
        correlation)
    if correlation is None:
        # The formal errors treat pixels as independent; scale them by the
        # empty-aperture factor of a comparable aperture (romosaic.catalog.noise).
        segment_factor = noise.at_area(area_pix)
        window_factor = noise.at_radius(2.0 * np.maximum(half_light, 0.5))
        x_err, y_err = x_err * segment_factor, y_err * segment_factor
        xw_err, yw_err = xw_err * window_factor, yw_err * window_factor
    if detection_catalog is not None:
        x_err = y_err = xw_err = yw_err = np.full(labels.size, np.nan)
    east_err, north_err = _sky_errors(geometry.cd, x_err, y_err)
    east_werr, north_werr = _sky_errors(geometry.cd, xw_err, yw_err)

    values.update({
        "x_centroid": x, "y_centroid": y, "x_centroid_err": x_err, "y_centroid_err": y_err,
        "x_centroid_win": x_win, "y_centroid_win": y_win,
        "x_centroid_win_err": xw_err, "y_centroid_win_err": yw_err,
        "ra_centroid": ra_c, "dec_centroid": dec_c,
        "ra_centroid_err": east_err, "dec_centroid_err": north_err,
        "ra_centroid_win": ra_win, "dec_centroid_win": dec_win,
        "ra_centroid_win_err": east_werr, "dec_centroid_win_err": north_werr,
        **bbox,
    })

    semimajor = _plain(catalog.semimajor_axis)
    semiminor = _plain(catalog.semiminor_axis)
    orientation = _plain(catalog.orientation) % 180.0
    values.update({
        "segment_area": area_pix * geometry.pixel_area_arcsec2,
        "semimajor": semimajor * scale,
        "semiminor": semiminor * scale,
        "ellipticity": _plain(catalog.ellipticity),
        "orientation_pix": orientation,
        "orientation_sky": geometry.position_angle(orientation),
        "cxx": _plain(catalog.ellipse_cxx) / scale**2,
        "cxy": _plain(catalog.ellipse_cxy) / scale**2,
        "cyy": _plain(catalog.ellipse_cyy) / scale**2,
        "fwhm": _plain(catalog.fwhm) * scale,
        "kron_radius": _plain(catalog.kron_radius) * np.sqrt(semimajor * semiminor) * scale,
        "fluxfrac_radius_50": half_light * scale,
    })

    kron = _per_source(catalog.kron_aperture)
    kron_area = np.array([np.nan if k is None else float(k.area) for k in kron])
    values["segment_flux"] = _plain(catalog.segment_flux) * to_njy
    kron_flux = _plain(catalog.kron_flux) * to_njy
    if correlation is None:
        values["segment_flux_err"] = _plain(catalog.segment_flux_err) * to_njy * segment_factor
        kron_err = _plain(catalog.kron_flux_err) * to_njy * noise.at_area(kron_area)
    else:
        values["segment_flux_err"] = segment_errors(segmentation, labels, error,
                                                    correlation) * to_njy
        kron_err = _masked_like(aperture_errors(kron, error, correlation),
                                _plain(catalog.kron_flux_err)) * to_njy
    values["kron_flux"], values["kron_flux_err"] = kron_flux, kron_err
    values["kron_abmag"], values["kron_abmag_err"] = abmag(kron_flux, kron_err)

    for radius, radius_pix, factor in zip(aperture_radii_arcsec, radii_pix, noise.factors,
                                          strict=True):
        flux, flux_err = catalog.circular_photometry(radius_pix)
        name = aperture_column(radius)
        values[name] = _plain(flux) * to_njy
        if correlation is None:
            values[f"{name}_err"] = _plain(flux_err) * to_njy * factor
        else:
            circles = _per_source(catalog.make_circular_apertures(radius_pix))
            values[f"{name}_err"] = _masked_like(aperture_errors(circles, error, correlation),
                                                 _plain(flux_err)) * to_njy

    values["aper_bkg_flux"], values["aper_bkg_flux_err"] = _local_background(
        data, no_data | (segmentation.data > 0), x_geo, y_geo, pixel_scale_arcsec)

    nn_label, nn_distance = _nearest_neighbours(labels, x_geo, y_geo, scale)
    values["nn_label"], values["nn_distance"] = nn_label, nn_distance

    # Flags from the Kron aperture and the largest circular aperture.
    largest = _per_source(catalog.make_circular_apertures(max(radii_pix)))
    apertures = [[k, c] for k, c in zip(kron, largest, strict=True)]
    warning = centroid_flags(x, y, no_data) | aperture_flags(
        apertures, labels, segmentation.data, no_data)
    if deblended:
        children = np.asarray(getattr(segmentation, "deblended_labels", []), dtype=labels.dtype)
        warning |= np.where(np.isin(labels, children), BLENDED, 0).astype(np.int32)
    values["warning_flags"] = warning
    values["image_flags"] = np.where(warning & MASKED, 1, 0).astype(np.int32)

    small, large = (aperture_column(r) for r in CONCENTRATION_APERTURES)
    is_extended, locus, measured = classify_extended(
        values[small], values[f"{small}_err"], values[large], values[f"{large}_err"],
        usable=warning == 0)
    values["is_extended"] = is_extended
    # Best position: the windowed centroid is the less noisy for resolved
    # sources, but on an undersampled PSF it has a pixel-phase bias of a few
    # hundredths of a pixel, while the moment centroid of a point source is
    # unbiased (the first moment of pixel-integrated light is exact).
    use_win = np.where(is_extended, win_ok, ~np.isfinite(ra_c))
    values["ra"] = np.where(use_win, ra_win, ra_c)
    values["dec"] = np.where(use_win, dec_win, dec_c)

    nan = np.full(labels.size, np.nan)
    values["roundness1"], values["sharpness"], values["dust_ebv"] = nan, nan, nan
    return MeasuredSources(values=values, stellar_locus=locus, stellar_locus_measured=measured,
                           aperture_radii_pix=radii_pix, noise=noise, empty_check=empty_check)


def _masked_like(errors, photutils_errors):
    """NaN where photutils found no usable pixel, as its own errors say."""
    return np.where(np.isfinite(photutils_errors), errors, np.nan)


def abmag(flux_njy, flux_err_njy):
    """AB magnitude and its uncertainty from a flux in nJy; NaN where flux ≤ 0."""
    flux = np.asarray(flux_njy, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        positive = flux > 0
        mag = np.where(positive, -2.5 * np.log10(np.where(positive, flux, 1.0))
                       + AB_ZERO_POINT_NJY, np.nan)
        mag_err = np.where(positive, 2.5 / np.log(10.0) * flux_err_njy / flux, np.nan)
    return mag, mag_err


def _plain(value):
    """A photutils result (Quantity or array) as a float ndarray."""
    return np.atleast_1d(np.asarray(getattr(value, "value", value), dtype=float))


def _per_source(apertures):
    """photutils gives a list of apertures, or a bare one for a one-source catalog."""
    return list(apertures) if isinstance(apertures, (list, tuple)) else [apertures]


def _sky_errors(cd, x_err, y_err):
    """Pixel uncertainties as (east, north) uncertainties in arcsec."""
    east = np.sqrt((cd[:, 0, 0] * x_err) ** 2 + (cd[:, 0, 1] * y_err) ** 2)
    north = np.sqrt((cd[:, 1, 0] * x_err) ** 2 + (cd[:, 1, 1] * y_err) ** 2)
    return east, north


def _centroid_errors(data, error, no_data, segmentation, labels, x, y, x_win, y_win,
                     half_light, correlation=None):
    """Uncertainties of the moment and windowed centroids, pixels.

    Moment centroid over the segment S: ``σ_x² = Σ_S (x − x̄)² σ² / (Σ_S I)²``.
    Windowed centroid with Gaussian weights ``w`` (σ_w = half-light radius ×
    2/2.35, pixels within 4 σ_w): ``σ_x² = 4 Σ w² (x − x̄)² σ² / (Σ w I)²``
    (SourceExtractor's ERRX2WIN). Both are the variance of a weighted pixel
    sum, so with a noise ``correlation`` the same weights go through
    `correlated_variance`. NaN where a centroid is undefined.
    """
    n = labels.size
    out = np.full((4, n), np.nan)
    seg = segmentation.data
    ny, nx = data.shape
    slices = dict(zip(segmentation.labels, segmentation.slices, strict=True))
    for i, label in enumerate(labels):
        sy, sx = slices[label]
        inside = (seg[sy, sx] == label) & ~no_data[sy, sx]
        total = data[sy, sx][inside].astype(np.float64).sum()
        if total > 0 and np.isfinite(x[i]):
            yy, xx = np.indices(inside.shape)
            for axis, offset in ((0, xx + sx.start - x[i]), (1, yy + sy.start - y[i])):
                out[axis, i] = _weighted_sum_error(np.where(inside, offset / total, 0.0),
                                                   error[sy, sx], correlation)
        if not (np.isfinite(x_win[i]) and np.isfinite(y_win[i])):
            continue
        sigma = max(half_light[i], 0.5) * 2.0 / 2.35 if np.isfinite(half_light[i]) else 0.5
        radius = 4.0 * sigma
        y0, y1 = max(int(y_win[i] - radius), 0), min(int(y_win[i] + radius) + 2, ny)
        x0, x1 = max(int(x_win[i] - radius), 0), min(int(x_win[i] + radius) + 2, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1)[:, None] - y_win[i]
        dx = np.arange(x0, x1)[None, :] - x_win[i]
        r2 = dx**2 + dy**2
        use = (r2 <= radius**2) & ~no_data[y0:y1, x0:x1]
        weight = np.where(use, np.exp(-r2 / (2.0 * sigma**2)), 0.0)
        flux = np.sum(weight * data[y0:y1, x0:x1])
        if flux <= 0:
            continue
        err = error[y0:y1, x0:x1]
        for axis, offset in ((2, np.broadcast_to(dx, r2.shape)),
                             (3, np.broadcast_to(dy, r2.shape))):
            out[axis, i] = _weighted_sum_error(2.0 * weight * offset / flux, err, correlation)
    return out[0], out[1], out[2], out[3]


def _weighted_sum_error(weights, err, correlation):
    """One-sigma uncertainty of ``Σ weights · data``; independent pixels without a correlation."""
    if correlation is None:
        return float(np.sqrt(np.sum(weights**2 * err.astype(np.float64) ** 2)))
    return float(np.sqrt(max(correlated_variance(weights, err, correlation), 0.0)))


def _local_background(data, excluded, x, y, pixel_scale_arcsec):
    """Residual local background (nJy/arcsec²) in an annulus, and its uncertainty.

    Sigma-clipped (3σ about the median, until stable) median of the
    background-subtracted pixels whose centres lie between 2.4″ and 2.8″ from
    the source, other sources' segments excluded. The uncertainty is that of
    a median, 1.2533 σ / sqrt(n). NaN with fewer than 10 pixels.
    """
    inner, outer = (r / pixel_scale_arcsec for r in LOCAL_BACKGROUND_ANNULUS)
    ny, nx = data.shape
    median = np.full(x.size, np.nan)
    median_err = np.full(x.size, np.nan)
    for i, (xc, yc) in enumerate(zip(x, y, strict=True)):
        y0, y1 = max(int(yc - outer), 0), min(int(yc + outer) + 2, ny)
        x0, x1 = max(int(xc - outer), 0), min(int(xc + outer) + 2, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        r2 = (np.arange(y0, y1)[:, None] - yc) ** 2 + (np.arange(x0, x1)[None, :] - xc) ** 2
        use = (r2 >= inner**2) & (r2 <= outer**2) & ~excluded[y0:y1, x0:x1]
        values = data[y0:y1, x0:x1][use].astype(np.float64)
        if values.size < 10:
            continue
        centre, sigma = _clipped_median(values)
        median[i] = centre
        median_err[i] = 1.2533 * sigma / np.sqrt(values.size)
    # MJy/sr → nJy/arcsec².
    to_surface = NJY_PER_MJY * SR_PER_ARCSEC2
    return median * to_surface, median_err * to_surface


def _clipped_median(values, nsigma=3.0, maxiters=10):
    """Median and standard deviation after iterative sigma clipping about the median."""
    for _ in range(maxiters):
        centre = np.median(values)
        sigma = values.std()
        keep = np.abs(values - centre) <= nsigma * sigma
        if keep.all() or keep.sum() < 3:
            break
        values = values[keep]
    return float(np.median(values)), float(values.std())


def _nearest_neighbours(labels, x, y, scale):
    """Label of and distance (arcsec) to each source's nearest other source."""
    n = labels.size
    nn_label = np.zeros(n, dtype=np.int64)
    nn_distance = np.full(n, np.nan)
    if n < 2:
        return nn_label, nn_distance
    points = np.column_stack([x, y])
    distance, index = cKDTree(points).query(points, k=2)
    nn_label = labels[index[:, 1]]
    # Pixel distance times the local pixel size of the source.
    nn_distance = distance[:, 1] * scale
    return nn_label, nn_distance
