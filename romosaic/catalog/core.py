"""From a mosaic's arrays to a source catalog and segmentation map.

`make_source_catalog` ties the stages together:

1. pixels without data (NaN data or error, zero weight) are masked;
2. background level and noise (`romosaic.catalog.background`);
3. the background-subtracted image is smoothed with a Gaussian of
   ``kernel_fwhm`` pixels and segmented at ``snr_threshold`` × noise
   (`romosaic.catalog.detection`), optionally deblended; where a single
   input covers the mosaic, detections sharper than a point source are
   rejected as cosmic rays;
4. every segment is measured (`romosaic.catalog.measure`);
5. aperture fluxes are divided by the user's encircled-energy fractions, if
   given (`romosaic.catalog.apcorr`);
6. with ``fit_psf``, a PSF is fitted to every source (`romosaic.catalog.psf`).

A mosaic without data, without detectable noise *and* error, or without
sources gives an empty (but complete) table and an all-zero segmentation map,
with a warning.
"""

import logging
import platform
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from .. import __version__
from ..errors import RomosaicInputError
from .background import estimate_background
from .columns import aperture_column, empty_table, make_table
from .detection import convolve_gaussian, find_sources, reject_cosmic_rays, require_deblender
from .flags import FLAG_DESCRIPTIONS, coverage_flags
from .geometry import local_geometry
from .measure import (
    APERTURE_MASK_METHOD,
    KRON_PARAMS,
    LOCAL_BACKGROUND_ANNULUS,
    measure_sources,
)
from .psf import fit_psf_photometry

__all__ = [
    "APERTURE_RADII_ARCSEC",
    "CatalogResult",
    "aperture_radii",
    "check_catalog_parameters",
    "make_source_catalog",
]

log = logging.getLogger(__name__)

#: Radii of the circular apertures, arcsec (columns aper01 ... aper16).
APERTURE_RADII_ARCSEC = (0.1, 0.2, 0.4, 0.8, 1.6)

#: The minimum source area of the default ``npixels=25`` on 0.055″ skycell pixels.
REFERENCE_MIN_AREA_ARCSEC2 = 25 * 0.055**2

#: Measured background scatter below this fraction of the typical err means
#: the image carries no noise (see `_detection_noise`).
NOISELESS_RATIO = 0.01

NO_CORRECTION = "none: aperture fluxes are the fluxes inside each aperture (no " \
                "aperture_corrections file was given)"


@dataclass
class CatalogResult:
    """A catalog and the images it was measured from.

    Attributes
    ----------
    table : astropy.table.Table
        One row per source, units on every dimensioned column; processing
        facts in ``table.meta``.
    segmentation : numpy.ndarray
        uint32 labels (0 = no source), the mosaic's shape.
    detection_image : numpy.ndarray
        float32 background-subtracted, smoothed image that was thresholded
        (MJy/sr; 0 where there is no data).
    notes : list of str
        Warnings issued (also logged).
    """

    table: Table
    segmentation: np.ndarray
    detection_image: np.ndarray
    notes: list = field(default_factory=list)


def check_catalog_parameters(*, bkg_boxsize, kernel_fwhm, snr_threshold, npixels,
                             deblend=False):
    """Raise `RomosaicInputError` for detection parameters that cannot work."""
    if not bkg_boxsize >= 1:
        raise RomosaicInputError(f"bkg_boxsize must be at least 1 pixel, got {bkg_boxsize}")
    if not (np.isfinite(kernel_fwhm) and kernel_fwhm > 0):
        raise RomosaicInputError(f"kernel_fwhm must be > 0 pixels, got {kernel_fwhm}")
    if not (np.isfinite(snr_threshold) and snr_threshold > 0):
        raise RomosaicInputError(f"snr_threshold must be > 0, got {snr_threshold}")
    if not npixels >= 1:
        raise RomosaicInputError(f"npixels must be at least 1, got {npixels}")
    if deblend:
        require_deblender()


def make_source_catalog(data, err, wcs, *, weight=None, coverage=None,
                        pixel_scale_arcsec=None,
                        bkg_boxsize=1000, kernel_fwhm=2.0, snr_threshold=3.0, npixels=25,
                        deblend=False, aperture_correction=None, noise_correlation=None,
                        fit_psf=False, psf_model=None):
    """Detect and measure the sources of a mosaic.

    Parameters
    ----------
    data : numpy.ndarray
        2-D mosaic in MJy/sr (NaN where there is no data).
    err : numpy.ndarray
        One-sigma uncertainty of each pixel, MJy/sr.
    wcs : gwcs.wcs.WCS
        Pixel → ICRS degrees.
    weight : numpy.ndarray, optional
        The mosaic's weight map: zero marks pixels without data, and the
        detection noise follows it (see `romosaic.catalog.background`).
    coverage : numpy.ndarray, optional
        Number of input images contributing to each pixel (see
        `romosaic.catalog.detection.coverage_from_context`). Where it is at
        most 1, detections sharper than a point source are rejected as
        cosmic rays (`romosaic.catalog.detection.reject_cosmic_rays`).
    pixel_scale_arcsec : float, optional
        Pixel size converting aperture radii to pixels; default: measured
        from ``wcs`` at the centre of the mosaic.
    bkg_boxsize : int
        Background box size in pixels.
    kernel_fwhm : float
        FWHM of the Gaussian detection kernel, pixels.
    snr_threshold : float
        Detection threshold in units of the per-pixel background noise.
    npixels : int
        Minimum number of connected pixels of a source.
    deblend : bool
        Split blended sources.
    aperture_correction : ApertureCorrection, optional
        Encircled-energy fractions dividing the aperture fluxes.
    noise_correlation : NoiseCorrelation, optional
        How the drizzle correlated the mosaic's noise
        (`romosaic.resample.noise_correlation.NoiseCorrelation.from_meta`):
        every uncertainty then includes it. Without it, flux uncertainties
        are calibrated on empty apertures (`romosaic.catalog.noise`).
    fit_psf : bool
        Add the PSF-fit columns (`romosaic.catalog.psf.fit_psf_photometry`).
    psf_model : romosaic.catalog.psf.PSFModel, optional
        The PSF to fit (`romosaic.catalog.psf.read_psf_file`); None builds
        one from the mosaic's own stars.

    Returns
    -------
    CatalogResult

    Raises
    ------
    RomosaicInputError
        For arrays of the wrong shape or parameters that cannot work.
    """
    check_catalog_parameters(bkg_boxsize=bkg_boxsize, kernel_fwhm=kernel_fwhm,
                             snr_threshold=snr_threshold, npixels=npixels, deblend=deblend)
    data = np.asarray(data)
    err = np.asarray(err)
    if data.ndim != 2:
        raise RomosaicInputError(f"the mosaic data must be a 2-D image, got shape {data.shape}")
    if err.shape != data.shape:
        raise RomosaicInputError(f"err has shape {err.shape}, data {data.shape}")
    if weight is not None and np.shape(weight) != data.shape:
        raise RomosaicInputError(f"weight has shape {np.shape(weight)}, data {data.shape}")
    if coverage is not None and np.shape(coverage) != data.shape:
        raise RomosaicInputError(f"coverage has shape {np.shape(coverage)}, data {data.shape}")

    notes = []
    meta = _base_meta(bkg_boxsize, kernel_fwhm, snr_threshold, npixels, deblend,
                      aperture_correction)
    meta["fit_psf"] = bool(fit_psf)
    meta["psf_photometry"] = ("not performed: no sources" if fit_psf
                              else "not requested (fit_psf=False)")
    no_data = ~np.isfinite(data) | ~np.isfinite(err)
    if weight is not None:
        no_data |= ~(np.asarray(weight) > 0)
    if pixel_scale_arcsec is None:
        pixel_scale_arcsec = _central_scale(wcs, data.shape)
    meta["pixel_scale_arcsec"] = float(pixel_scale_arcsec)
    meta["aperture_radii"] = aperture_radii(pixel_scale_arcsec)
    _check_minimum_area(npixels, pixel_scale_arcsec, notes)

    background = estimate_background(data, no_data, bkg_boxsize, weight=weight)
    if background is None:
        return _empty(data.shape, meta, notes, "the mosaic has no usable pixels (all NaN, "
                      "zero weight, or fewer than 16 pixels with data)")
    meta.update({
        "background_method": background.method,
        "background_box_size": list(background.box_size),
        "background_median": background.median_background,
        "background_rms_median": background.median_rms,
        "noise_model": ("background RMS following the weight map" if background.weighted_noise
                        else "background RMS"),
    })
    notes.extend(background.notes)

    subtracted = np.subtract(data, background.background, dtype=np.float32)
    subtracted[no_data] = 0.0
    error = np.where(no_data, 0.0, err).astype(np.float32)
    noise = _detection_noise(background.rms, error, no_data, notes, meta)
    detection_image = convolve_gaussian(subtracted, kernel_fwhm)
    detection_image[no_data] = 0.0
    if noise is None:
        return _empty(data.shape, meta, notes, "neither the background nor the err array "
                      "shows any noise; no detection threshold can be set",
                      detection_image=detection_image)
    threshold = (snr_threshold * noise).astype(np.float32)
    # The full-size background maps are not needed past this point; on a
    # skycell each is 100 MB.
    del noise
    background.background = background.rms = None
    # Pixels without a threshold (no data) cannot be part of a source.
    segmentation = find_sources(detection_image, threshold, npixels, no_data, deblend=deblend)
    del threshold
    if segmentation is None:
        return _empty(data.shape, meta, notes, "no sources detected",
                      detection_image=detection_image)
    segmentation, rejection = reject_cosmic_rays(
        segmentation, subtracted, detection_image, error, no_data, coverage, kernel_fwhm)
    meta.update(rejection.meta())
    notes.extend(rejection.notes)
    if segmentation is None:
        return _empty(data.shape, meta, notes, "every detection was a cosmic ray",
                      detection_image=detection_image)

    measured = measure_sources(
        subtracted, segmentation, error, no_data, wcs,
        aperture_radii_arcsec=APERTURE_RADII_ARCSEC, pixel_scale_arcsec=pixel_scale_arcsec,
        deblended=deblend,
        correlation=None if noise_correlation is None else noise_correlation.correlation)
    values = measured.values
    if coverage is not None:
        values["warning_flags"] = values["warning_flags"] | coverage_flags(
            values["x_centroid"], values["y_centroid"], np.asarray(coverage))
    if aperture_correction is not None:
        for radius, ee in zip(APERTURE_RADII_ARCSEC, aperture_correction.ee_fraction,
                              strict=True):
            name = aperture_column(radius)
            values[name] = values[name] / ee
            values[f"{name}_err"] = values[f"{name}_err"] / ee
    noise = measured.noise
    if noise_correlation is not None:
        meta.update({
            "error_calibration": (
                "drizzle noise correlation: each uncertainty is the variance of its weighted "
                "pixel sum with the mosaic's noise_correlation kernel (meta.resample); "
                "error_factors give its effect on circular apertures on flat noise, "
                "empty_aperture_check the scatter of empty-aperture sums over their errors"),
            "aperture_variance_factor": float(noise_correlation.aperture_variance_factor),
            "error_factors": [float(f) for f in noise.factors],
            "empty_aperture_check": [float(r) for r in measured.empty_check],
        })
    else:
        meta.update({
            "error_calibration": ("empty apertures: formal errors multiplied by the factors in "
                                  "error_factors (Kron and segment: circle of equal area)"
                                  if noise.calibrated else
                                  "none: too little empty sky; errors are the formal ones "
                                  "from the err array and likely underestimated"),
            "error_factors": [float(f) for f in noise.factors],
            "error_factor_apertures": [int(n) for n in noise.counts],
        })
        if not noise.calibrated:
            notes.append("too little empty sky to calibrate flux uncertainties on empty "
                         "apertures")
    meta.update({
        "stellar_locus_concentration": measured.stellar_locus,
        "stellar_locus_measured": measured.stellar_locus_measured,
    })
    if not measured.stellar_locus_measured:
        notes.append("too few bright, clean sources to measure the point-source "
                     "concentration: is_extended assumed C* = 1")
    if fit_psf:
        psf = fit_psf_photometry(
            subtracted, error, no_data, segmentation.data, wcs, values, psf_model=psf_model,
            pixel_scale_arcsec=pixel_scale_arcsec, noise=measured.noise,
            correlation=None if noise_correlation is None else noise_correlation.correlation)
        values.update(psf.values)
        meta.update(psf.meta)
        notes.extend(psf.notes)
    meta["notes"] = list(notes)
    table = make_table(values, APERTURE_RADII_ARCSEC, meta=meta, psf=fit_psf)
    log.info("catalog: %d sources", len(table))
    return CatalogResult(
        table=table,
        segmentation=segmentation.data.astype(np.uint32),
        detection_image=detection_image,
        notes=notes,
    )


def _detection_noise(rms, error, no_data, notes, meta):
    """Per-pixel noise for the threshold: the background RMS, else the err array.

    A mosaic rendered without noise (a simulation) shows almost no
    background scatter (only rounding), far below what its err array says;
    thresholding at a multiple of that scatter would turn rounding errors
    into sources. When the measured scatter is below `NOISELESS_RATIO` of the
    typical error, or zero somewhere, the err array stands in for it there.
    Returns None when neither has any noise.
    """
    good = ~no_data
    typical_error = float(np.median(error[good]))
    typical_rms = float(np.median(rms[good]))
    if typical_error > 0 and typical_rms < NOISELESS_RATIO * typical_error:
        note = (f"the background scatter ({typical_rms:.3g}) is far below the err array "
                f"({typical_error:.3g}), as in a noise-free image: err sets the threshold")
        log.warning("%s", note)
        notes.append(note)
        meta["noise_model"] = "err array (no measurable background scatter)"
        return error
    if np.all(rms[good] > 0):
        return rms
    if typical_rms > 0:
        # A few pixels (a flat patch) without scatter: err there.
        return np.where(rms > 0, rms, error)
    return None


def _check_minimum_area(npixels, pixel_scale_arcsec, notes):
    """Warn when ``npixels`` asks for a much larger area than the reference's default.

    The default ``npixels=25`` was chosen for 0.055″ skycell pixels (0.076
    arcsec²). On a mosaic of native 0.11″ pixels the same number asks for
    four times the area, and faint point sources are lost (on simulated data
    a fifth of the isolated stars with S/N > 20).
    """
    area = npixels * pixel_scale_arcsec**2
    if area > 2 * REFERENCE_MIN_AREA_ARCSEC2:
        suggestion = max(1, int(round(REFERENCE_MIN_AREA_ARCSEC2 / pixel_scale_arcsec**2)))
        note = (f"npixels={npixels} at {pixel_scale_arcsec:.3f}\" pixels asks for "
                f"{area:.3f} arcsec2 above the threshold, {area / REFERENCE_MIN_AREA_ARCSEC2:.1f}"
                f" times the default's area on 0.055\" pixels: faint point sources will be "
                f"missed; npixels={suggestion} keeps the default's area")
        log.warning("%s", note)
        notes.append(note)


def _central_scale(wcs, shape):
    ny, nx = shape
    geometry = local_geometry(wcs, np.array([(nx - 1) / 2.0]), np.array([(ny - 1) / 2.0]))
    return float(geometry.pixel_scale_arcsec[0])


def _base_meta(bkg_boxsize, kernel_fwhm, snr_threshold, npixels, deblend, correction):
    meta = {
        "software": f"romosaic {__version__}",
        "bkg_boxsize": int(bkg_boxsize),
        "kernel_fwhm_pix": float(kernel_fwhm),
        "snr_threshold": float(snr_threshold),
        "npixels": int(npixels),
        "deblend": bool(deblend),
        "versions": _versions(),
        "aperture_mask_method": APERTURE_MASK_METHOD,
        "kron_params": [float(p) for p in KRON_PARAMS],
        "flux_unit": "nJy",
        "flags": dict(FLAG_DESCRIPTIONS),
    }
    if correction is None:
        meta["aperture_correction"] = NO_CORRECTION
    else:
        meta["aperture_correction"] = (f"applied: aperture fluxes divided by the encircled "
                                       f"energy fractions from {correction.source}")
        meta["ee_fractions"] = np.asarray(correction.ee_fraction, dtype=np.float32)
    return meta


def aperture_radii(pixel_scale_arcsec):
    """The aperture radii in the reference pipeline's ``aperture_radii`` form.

    Parameters
    ----------
    pixel_scale_arcsec : float
        The mosaic's pixel size.

    Returns
    -------
    dict
        ``circle_pix``, ``annulus_pix`` (radii in pixels), ``circle_arcsec``
        and ``annulus_arcsec`` (in arcseconds): float arrays for the circular
        apertures and the local-background annulus, in that key order.

    Examples
    --------
    >>> aperture_radii(0.1)["annulus_pix"].round(9).tolist()
    [24.0, 28.0]
    """
    circle = np.array(APERTURE_RADII_ARCSEC, dtype=float)
    annulus = np.array(LOCAL_BACKGROUND_ANNULUS, dtype=float)
    scale = float(pixel_scale_arcsec)
    return {"circle_pix": circle / scale, "annulus_pix": annulus / scale,
            "circle_arcsec": circle, "annulus_arcsec": annulus}


def _versions():
    """Versions of the software that made the catalog (the reference's ``versions``)."""
    import astropy
    import gwcs
    import photutils
    import scipy

    return {"Python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "astropy": astropy.__version__,
            "photutils": photutils.__version__, "gwcs": gwcs.__version__,
            "romosaic": __version__}


def _empty(shape, meta, notes, reason, detection_image=None):
    log.warning("empty catalog: %s", reason)
    notes.append(f"empty catalog: {reason}")
    meta["notes"] = list(notes)
    if detection_image is None:
        detection_image = np.zeros(shape, np.float32)
    return CatalogResult(
        table=empty_table(APERTURE_RADII_ARCSEC, meta=meta, psf=meta["fit_psf"]),
        segmentation=np.zeros(shape, np.uint32),
        detection_image=detection_image,
        notes=notes,
    )
