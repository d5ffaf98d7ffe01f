"""From a mosaic's arrays to a source catalog and segmentation map.

`make_source_catalog` ties the stages together:

1. pixels without data (NaN data or error, zero weight) are masked;
2. background level and noise (`romosaic.catalog.background`);
3. the background-subtracted image is smoothed with a Gaussian matched to
   a point source (or of ``kernel_fwhm`` pixels) and segmented at
   ``snr_threshold`` × the smoothed image's noise into groups of at least
   ``min_area_arcsec2`` (or ``npixels``) (`romosaic.catalog.detection`),
   optionally deblended; where a single
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
from .._malloc import give_back_freed_memory
from ..errors import RomosaicInputError
from .background import estimate_background, typical_value
from .columns import aperture_column, empty_table, make_table
from .detection import (
    INPUT_PIXEL_SCALE,
    above_threshold,
    convolve_gaussian,
    matched_kernel_fwhm,
    measured_noise_ratio,
    pixels_for_area,
    psf_fwhm_for_filter,
    reject_cosmic_rays,
    reject_wing_detections,
    require_deblender,
    segment_above,
    segment_peaks,
    smoothed_noise_ratio,
)
from .flags import FLAG_DESCRIPTIONS, coverage_flags
from .geometry import local_geometry
from .measure import (
    APERTURE_MASK_METHOD,
    KRON_PARAMS,
    LOCAL_BACKGROUND_ANNULUS,
    measure_sources,
)
from .noise import add_sky_noise, sky_noise_ratio
from .psf import prepare_psf_fits, run_psf_fits, sky_error_map

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

#: Default minimum source area above the threshold, arcsec² (see the step's docs).
MIN_AREA_ARCSEC2 = 0.02
#: Kernel FWHM (pixels) setting the cosmic-ray test's window when the
#: detection kernel is the matched one.
COSMIC_RAY_WINDOW_KERNEL = 2.0

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
                             deblend=False, psf_fwhm_arcsec=None,
                             min_area_arcsec2=MIN_AREA_ARCSEC2):
    """Raise `RomosaicInputError` for detection parameters that cannot work.

    ``kernel_fwhm``, ``npixels`` and ``psf_fwhm_arcsec`` may be None (derived
    from the sky); ``min_area_arcsec2`` matters only when ``npixels`` is None.
    """
    if not bkg_boxsize >= 1:
        raise RomosaicInputError(f"bkg_boxsize must be at least 1 pixel, got {bkg_boxsize}")
    if kernel_fwhm is not None and not (np.isfinite(kernel_fwhm) and kernel_fwhm > 0):
        raise RomosaicInputError(f"kernel_fwhm must be > 0 pixels, got {kernel_fwhm}")
    if psf_fwhm_arcsec is not None and not (np.isfinite(psf_fwhm_arcsec)
                                            and psf_fwhm_arcsec > 0):
        raise RomosaicInputError(f"psf_fwhm_arcsec must be > 0, got {psf_fwhm_arcsec}")
    if not (np.isfinite(snr_threshold) and snr_threshold > 0):
        raise RomosaicInputError(f"snr_threshold must be > 0, got {snr_threshold}")
    if npixels is not None and not npixels >= 1:
        raise RomosaicInputError(f"npixels must be at least 1, got {npixels}")
    if npixels is None and not (min_area_arcsec2 is not None and np.isfinite(min_area_arcsec2)
                                and min_area_arcsec2 > 0):
        raise RomosaicInputError(f"min_area_arcsec2 must be > 0, got {min_area_arcsec2}")
    if deblend:
        require_deblender()


def make_source_catalog(data, err, wcs, *, weight=None, coverage=None,
                        pixel_scale_arcsec=None,
                        bkg_boxsize=1000, kernel_fwhm=None, snr_threshold=6.0, npixels=None,
                        deblend=False, aperture_correction=None, noise_correlation=None,
                        psf_fwhm_arcsec=None, min_area_arcsec2=MIN_AREA_ARCSEC2,
                        filter_name=None, fit_psf=False, psf_model=None, pixfrac=1.0):
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
    kernel_fwhm : float, optional
        FWHM of the Gaussian detection kernel, pixels. Default: matched to a
        point source in the mosaic (`romosaic.catalog.detection.matched_kernel_fwhm`
        of ``psf_fwhm_arcsec`` at the mosaic's pixel scale).
    snr_threshold : float
        Detection threshold in units of the noise of the smoothed image
        (the per-pixel background noise times the factor by which the
        kernel averages it down, with the drizzle's correlation).
    npixels : int, optional
        Minimum number of connected pixels of a source; overrides
        ``min_area_arcsec2``.
    min_area_arcsec2 : float
        Minimum area of a source above the threshold, arcsec², when
        ``npixels`` is not given.
    psf_fwhm_arcsec : float, optional
        FWHM of the optical PSF; default: the table value of ``filter_name``
        (`romosaic.catalog.detection.PSF_FWHM_ARCSEC`).
    filter_name : str, optional
        The mosaic's filter (``meta.instrument.optical_element``).
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
    pixfrac : float
        The drizzle's ``pixfrac`` (``meta.resample.pixfrac``): with the
        input pixel size (`romosaic.catalog.detection.INPUT_PIXEL_SCALE`) it
        gives the footprint of one drizzled input pixel, the shape a cosmic
        ray takes in the mosaic.

    Returns
    -------
    CatalogResult

    Raises
    ------
    RomosaicInputError
        For arrays of the wrong shape or parameters that cannot work.
    """
    check_catalog_parameters(bkg_boxsize=bkg_boxsize, kernel_fwhm=kernel_fwhm,
                             snr_threshold=snr_threshold, npixels=npixels, deblend=deblend,
                             psf_fwhm_arcsec=psf_fwhm_arcsec,
                             min_area_arcsec2=min_area_arcsec2)
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
    if not (np.isfinite(pixfrac) and pixfrac > 0):
        raise RomosaicInputError(f"pixfrac must be > 0, got {pixfrac}")

    notes = []
    if pixel_scale_arcsec is None:
        pixel_scale_arcsec = _central_scale(wcs, data.shape)
    if psf_fwhm_arcsec is None:
        psf_fwhm_arcsec = psf_fwhm_for_filter(filter_name)
    # The cosmic-ray test's window is twice a kernel of at most 2 pixels: a
    # window as wide as twice the matched kernel on 0.055" pixels (5.6
    # pixels) let cosmic rays pass as stars on simulated scenes, and on 0.11"
    # pixels the matched kernel's 3-pixel window rejected more than 4 pixels.
    window_kernel = kernel_fwhm
    if kernel_fwhm is None:
        kernel_fwhm = matched_kernel_fwhm(psf_fwhm_arcsec, pixel_scale_arcsec)
        window_kernel = min(kernel_fwhm, COSMIC_RAY_WINDOW_KERNEL)
    if npixels is None:
        npixels = pixels_for_area(min_area_arcsec2, pixel_scale_arcsec)
    meta = _base_meta(bkg_boxsize, kernel_fwhm, snr_threshold, npixels, deblend,
                      aperture_correction)
    meta.update({
        "psf_fwhm_arcsec": float(psf_fwhm_arcsec),
        "kernel_fwhm_arcsec": float(kernel_fwhm * pixel_scale_arcsec),
        "min_area_arcsec2": float(npixels * pixel_scale_arcsec**2),
    })
    meta["fit_psf"] = bool(fit_psf)
    meta["psf_photometry"] = ("not performed: no sources" if fit_psf
                              else "not requested (fit_psf=False)")
    no_data = ~np.isfinite(data) | ~np.isfinite(err)
    if weight is not None:
        no_data |= ~(np.asarray(weight) > 0)
    meta["pixel_scale_arcsec"] = float(pixel_scale_arcsec)
    meta["aperture_radii"] = aperture_radii(pixel_scale_arcsec)

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
    # Each full-size map is 300 MB on a 75-Mpix mosaic: let go of each as
    # soon as it has served, make none before it is needed (the error map
    # waits for the segmentation), and make no copies on the way.
    background.background = None
    noise = _detection_noise(background.rms, err, no_data, notes, meta)
    background.rms = None
    detection_image = _detection_image(subtracted, kernel_fwhm, no_data)
    if noise is None:
        return _empty(data.shape, meta, notes, "neither the background nor the err array "
                      "shows any noise; no detection threshold can be set",
                      detection_image=detection_image)
    ratio = _smoothed_noise_ratio(subtracted, detection_image, noise, no_data, kernel_fwhm,
                                  noise_correlation, meta)
    threshold = noise
    del noise
    threshold *= np.float32(snr_threshold * ratio)
    # Pixels without a threshold (no data) cannot be part of a source.
    above = above_threshold(detection_image, threshold, no_data)
    # Only the threshold at the sources' peaks is needed from here on, and
    # the peaks are pixels above it: keep it there alone.
    source_pixels = np.flatnonzero(above)
    source_threshold = threshold.ravel()[source_pixels]
    del threshold
    segmentation = segment_above(above, npixels, detection_image=detection_image,
                                 deblend=deblend)
    del above
    if segmentation is None:
        return _empty(data.shape, meta, notes, "no sources detected",
                      detection_image=detection_image)
    peaks_y, peaks_x = segment_peaks(detection_image, segmentation.data,
                                     np.asarray(segmentation.labels))
    threshold_at_peaks = source_threshold[np.searchsorted(
        source_pixels, np.ravel_multi_index((peaks_y, peaks_x), data.shape))]
    del source_pixels, source_threshold
    wing_removed, _ = reject_wing_detections(
        segmentation, detection_image, threshold_at_peaks.astype(np.float64),
        peaks_y, peaks_x, no_data, pixel_scale_arcsec)
    meta["wing_detections_rejected"] = wing_removed
    if segmentation.n_labels == 0:
        return _empty(data.shape, meta, notes, "every detection was a bright source's wing",
                      detection_image=detection_image)
    error = _error_map(err, no_data)
    # Two passes: windows started at each segment's smoothed peak, then at its
    # brightest unsmoothed pixel. The matched kernel can move a cosmic ray's
    # smoothed peak beside a hole in the data, where its window is cut and
    # the test not trusted; the brightest pixel can lie off a faint
    # cosmic ray's track. A star is not sharp from either start.
    # A point source's width in the mosaic, for a field without bright stars.
    point_source_fwhm = matched_kernel_fwhm(psf_fwhm_arcsec, pixel_scale_arcsec)
    # A cosmic ray is one input pixel drizzled: its footprint and the PSF
    # set how much wider than it a star must be.
    drizzled_pixel = {"input_pixel": INPUT_PIXEL_SCALE / pixel_scale_arcsec,
                      "pixel_size": pixfrac * INPUT_PIXEL_SCALE / pixel_scale_arcsec,
                      "psf_fwhm": psf_fwhm_arcsec / pixel_scale_arcsec}
    peaks = segment_peaks(detection_image, segmentation.data, np.asarray(segmentation.labels))
    # The detection image serves again only as a product: it is made again
    # at the end, from the same image, rather than held through the
    # measurements (300 MB on a 75-Mpix mosaic).
    del detection_image
    segmentation, rejection = reject_cosmic_rays(
        segmentation, subtracted, None, error, no_data, coverage, window_kernel,
        point_source_fwhm=point_source_fwhm, peaks=peaks, **drizzled_pixel)
    del peaks
    if segmentation is not None and rejection.threshold is not None:
        segmentation, second = reject_cosmic_rays(
            segmentation, subtracted, subtracted, error, no_data, coverage, window_kernel,
            point_source_fwhm=point_source_fwhm, **drizzled_pixel)
        rejection.rejected += second.rejected
    meta.update(rejection.meta())
    notes.extend(rejection.notes)
    if segmentation is None:
        return _empty(data.shape, meta, notes, "every detection was a cosmic ray",
                      detection_image=_detection_image(subtracted, kernel_fwhm, no_data))

    _complete_noise(subtracted, error, no_data, segmentation.data, meta)
    measured = measure_sources(
        subtracted, segmentation, error, no_data, wcs,
        aperture_radii_arcsec=APERTURE_RADII_ARCSEC, pixel_scale_arcsec=pixel_scale_arcsec,
        deblended=deblend,
        correlation=None if noise_correlation is None else noise_correlation.correlation)
    values = measured.values
    noise_calibration = measured.noise
    if coverage is not None:
        values["warning_flags"] = values["warning_flags"] | coverage_flags(
            values["x_centroid"], values["y_centroid"], np.asarray(coverage))
    apply_aperture_correction(values, aperture_correction)
    error_meta(meta, measured, noise_correlation, notes)
    meta.update({
        "stellar_locus_concentration": measured.stellar_locus,
        "stellar_locus_measured": measured.stellar_locus_measured,
    })
    if not measured.stellar_locus_measured:
        notes.append("too few bright, clean sources to measure the point-source "
                     "concentration: is_extended assumed C* = 1")
    labels = _as_uint32(segmentation.data)
    del segmentation, measured
    if fit_psf:
        # The measurements leave tens of MB of small freed blocks in the
        # allocator's heaps: given back before the fits add their maps.
        give_back_freed_memory()
        plan = prepare_psf_fits(subtracted, error, no_data, labels, values,
                                psf_model=psf_model, pixel_scale_arcsec=pixel_scale_arcsec)
        # The fits do not read the label image: it waits as its source
        # pixels alone (1% of a 300-MB map on a 75-Mpix mosaic).
        source_pixels = np.flatnonzero(labels)
        source_labels = labels.ravel()[source_pixels]
        del labels
        psf = run_psf_fits(
            plan, subtracted, error, no_data, wcs, values, noise=noise_calibration,
            correlation=None if noise_correlation is None else noise_correlation.correlation,
            coverage=None if coverage is None else np.asarray(coverage))
        del plan
        labels = np.zeros(data.shape, np.uint32)
        labels.ravel()[source_pixels] = source_labels
        del source_pixels, source_labels
        values.update(psf.values)
        meta.update(psf.meta)
        notes.extend(psf.notes)
    meta["notes"] = list(notes)
    table = make_table(values, APERTURE_RADII_ARCSEC, meta=meta, psf=fit_psf)
    log.info("catalog: %d sources", len(table))
    del error
    detection_image = _detection_image(subtracted, kernel_fwhm, no_data)
    return CatalogResult(
        table=table,
        segmentation=labels,
        detection_image=detection_image,
        notes=notes,
    )


def _as_uint32(labels):
    """Labels (never negative) as uint32: int32 ones reinterpreted rather than copied."""
    if labels.dtype == np.int32:
        return labels.view(np.uint32)
    return labels.astype(np.uint32)


def apply_aperture_correction(values, aperture_correction, prefix=""):
    """Divide the circular-aperture fluxes and errors in ``values`` by the encircled energy.

    Does nothing without a correction; ``prefix`` is the columns' prefix
    (``forced_`` in a forced catalog).
    """
    if aperture_correction is None:
        return
    for radius, ee in zip(APERTURE_RADII_ARCSEC, aperture_correction.ee_fraction, strict=True):
        name = prefix + aperture_column(radius)
        values[name] = values[name] / ee
        values[f"{name}_err"] = values[f"{name}_err"] / ee


def error_meta(meta, measured, noise_correlation, notes):
    """Record in ``meta`` how the uncertainties of ``measured`` were calibrated."""
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


def _detection_noise(rms, err, no_data, notes, meta):
    """Per-pixel noise for the threshold: the background RMS, else the err array.

    A mosaic rendered without noise (a simulation) shows almost no
    background scatter (only rounding), far below what its err array says;
    thresholding at a multiple of that scatter would turn rounding errors
    into sources. When the measured scatter is below `NOISELESS_RATIO` of the
    typical error, or zero somewhere, the err array stands in for it there.
    Returns ``rms`` itself or a new array (never ``err``), 0 where there is
    no data; None when neither has any noise.
    """
    good = ~no_data
    typical_error = typical_value(np.asarray(err, dtype=np.float32), good)
    typical_rms = typical_value(rms, good)
    if typical_error > 0 and typical_rms < NOISELESS_RATIO * typical_error:
        note = (f"the background scatter ({typical_rms:.3g}) is far below the err array "
                f"({typical_error:.3g}), as in a noise-free image: err sets the threshold")
        log.warning("%s", note)
        notes.append(note)
        meta["noise_model"] = "err array (no measurable background scatter)"
        return _error_map(err, no_data)
    if not np.any(good & ~(rms > 0)):
        return rms
    if typical_rms > 0:
        # A few pixels (a flat patch) without scatter: err there.
        return np.where(rms > 0, rms, _error_map(err, no_data))
    return None


def _error_map(err, no_data):
    """The err array as float32, 0 where there is no data (a new array)."""
    return np.where(no_data, np.float32(0.0), err).astype(np.float32, copy=False)


def _detection_image(image, kernel_fwhm, no_data):
    """The smoothed image that is thresholded: ``image`` convolved, 0 where there is no data."""
    smoothed = convolve_gaussian(image, kernel_fwhm)
    smoothed[no_data] = 0.0
    return smoothed


def _complete_noise(image, error, no_data, labels, meta):
    """Add to ``error`` (in place) the sky noise it leaves out; record the ratio.

    See `romosaic.catalog.noise.sky_noise_ratio`: a mosaic's ``err`` does not
    hold the inputs' flat-field errors unless ``include_var_flat`` was set.
    A noise-free image has nothing to measure: its ``err`` is kept.
    """
    if meta.get("noise_model", "").startswith("err array"):
        return
    ratio = sky_noise_ratio(image, error, no_data, labels)
    meta["sky_noise_over_err"] = ratio
    if ratio > 1.0:
        add_sky_noise(error, sky_error_map(error, labels, no_data), ratio)
        meta["sky_noise_added"] = (
            "the sky pixels scatter sky_noise_over_err times their err: every pixel's "
            "variance grew by (sky_noise_over_err^2 - 1) times the sky's err^2 before any "
            "uncertainty was computed")


def _smoothed_noise_ratio(image, smoothed, noise, no_data, kernel_fwhm, noise_correlation,
                          meta):
    """Noise of the smoothed image over the per-pixel noise, recorded in ``meta``.

    From the drizzle's recorded correlation when the mosaic has one, else
    measured on the mosaic; independent pixels when neither works.
    """
    if meta.get("noise_model", "").startswith("err array"):
        # A noise-free image has no scatter to measure: the err array's pixels
        # are taken as independent.
        ratio = smoothed_noise_ratio(kernel_fwhm)
        how = "independent pixels assumed (err array)"
    elif noise_correlation is not None:
        ratio = smoothed_noise_ratio(kernel_fwhm, noise_correlation.correlation)
        how = "the drizzle's noise correlation (meta.resample)"
    else:
        ratio = measured_noise_ratio(image, smoothed, noise, no_data)
        how = "measured on the mosaic"
        if ratio is None:
            ratio = smoothed_noise_ratio(kernel_fwhm)
            how = "independent pixels assumed"
    meta["smoothed_noise_ratio"] = float(ratio)
    meta["smoothed_noise_from"] = how
    return ratio


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
    meta.update(correction_meta(correction))
    return meta


def correction_meta(correction):
    """The catalog metadata saying whether aperture fluxes were corrected, and by what."""
    if correction is None:
        return {"aperture_correction": NO_CORRECTION}
    return {"aperture_correction": (f"applied: aperture fluxes divided by the encircled "
                                    f"energy fractions from {correction.source}"),
            "ee_fractions": np.asarray(correction.ee_fraction, dtype=np.float32)}


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
