"""Detection depth that does not depend on the output grid (docs/steps/source_catalog.rst).

Faint point sources of the same significance on the sky must be found on
0.11″ and 0.055″ mosaics alike with the default parameters; the rings and
spikes of bright stars must not become sources; the reference's pixel
parameters still override.
"""

import logging

import numpy as np
import pytest
import roman_datamodels.datamodels as rdm

from romosaic.catalog import make_source_catalog
from romosaic.catalog.detection import (
    matched_kernel_fwhm,
    measured_noise_ratio,
    pixels_for_area,
    smoothed_noise_ratio,
)
from romosaic.errors import RomosaicInputError
from romosaic.simulate import render
from romosaic.simulate.psf import airy_psf
from romosaic.steps.source_catalog_step import SourceCatalogStep
from romosaic.wcs_utils import affine_tan_wcs, cd_from_orientation

PIXEL_SR_PER_ARCSEC2 = 1.0 / 206264.806**2
#: Per-pixel noise (MJy/sr) of the 0.11" mosaic; finer pixels scale it up.
NOISE_011 = 0.01
SNR_RADIUS = 0.15


def _grid_mosaic(scale, stars, *, size_arcsec=26.4, seed=0, psf=None):
    """A mosaic with independent noise of the same depth on the sky at any scale.

    ``stars``: (x, y) in arcsec from the lower-left corner and flux in nJy.
    ``psf``: a `PixelPSF` for pixels of ``scale`` (default: the simulator's
    0.15" Gaussian).
    """
    n = int(round(size_arcsec / scale))
    shape = (n, n)
    wcs = affine_tan_wcs(crval=(80.0, -30.0), crpix=((n - 1) / 2, (n - 1) / 2),
                         cd=cd_from_orientation(scale / 3600, 0.0), shape=shape)
    image = np.zeros(shape)
    if len(stars):
        stars = np.asarray(stars, float)
        x, y = stars[:, 0] / scale, stars[:, 1] / scale
        jac = np.tile(np.diag([-scale, scale]), (len(x), 1, 1))
        if psf is None:
            render.render_stars(image, x, y, stars[:, 2] * 1e-15, jac, 0.15)
        else:
            render.render_stars_table(image, x, y, stars[:, 2] * 1e-15, jac, psf)
    noise = NOISE_011 * 0.11 / scale
    rng = np.random.default_rng(seed)
    model = rdm.MosaicModel.create_fake_data(shape=shape)
    model.data = (0.3 + image + noise * rng.standard_normal(shape)).astype(np.float32)
    model.err = np.full(shape, noise, np.float32)
    model.weight = np.ones(shape, np.float32)
    model.meta.wcs = wcs
    model.meta.wcsinfo.pixel_scale = scale / 3600
    model.meta.instrument.optical_element = "F158"
    model.meta.filename = "depth_coadd.asdf"
    return model


def _snr10_flux():
    """Flux (nJy) of a 0.15" Gaussian star with S/N 10 in a 0.15"-radius aperture."""
    # Encircled energy of the pixel-blurred star at 0.15" (about 0.71), and the
    # aperture noise of NOISE_011 per 0.11" pixel (the same on any grid).
    ee = 0.71
    noise = NOISE_011 * np.sqrt(np.pi * (SNR_RADIUS / 0.11) ** 2) * 0.11**2 * \
        PIXEL_SR_PER_ARCSEC2 * 1e15
    return 10.0 * noise / ee


def _star_grid(flux, spacing=3.3, margin=2.2, size=26.4):
    positions = np.arange(margin, size - margin + 1e-6, spacing)
    return [(x, y, flux) for x in positions for y in positions]


def _found(table, stars, scale, radius=0.1):
    x = np.asarray(table["x_centroid"]) * scale
    y = np.asarray(table["y_centroid"]) * scale
    found = 0
    for sx, sy, _ in stars:
        found += bool(np.any(np.hypot(x - sx, y - sy) <= radius))
    return found


@pytest.mark.parametrize("scale", [0.11, 0.055])
def test_faint_point_sources_are_found_at_either_scale(scale, caplog):
    stars = _star_grid(_snr10_flux())
    with caplog.at_level(logging.WARNING, logger="romosaic"):
        result = SourceCatalogStep.call(_grid_mosaic(scale, stars))
    table = result[0].source_catalog
    assert _found(table, stars, scale) >= 0.9 * len(stars)
    matched = _found_entries(table, stars, scale)
    assert len(table) - matched <= 0.02 * len(table) + 1
    # The default run has nothing to warn about.
    assert "npixels" not in caplog.text
    assert not [note for note in table.meta["notes"] if "npixels" in note]


def _found_entries(table, stars, scale, radius=0.1):
    x = np.asarray(table["x_centroid"]) * scale
    y = np.asarray(table["y_centroid"]) * scale
    truth = np.asarray(stars)[:, :2]
    distance = np.hypot(x[:, None] - truth[None, :, 0], y[:, None] - truth[None, :, 1])
    return int(np.count_nonzero(distance.min(axis=1) <= radius))


def test_rings_and_spikes_of_bright_stars_are_not_sources():
    bright = [(6.6, 6.6, 2.0e6), (19.8, 6.6, 1.0e6), (6.6, 19.8, 4.0e5), (19.8, 19.8, 1.0e5)]
    for scale in (0.11, 0.055):
        mosaic = _grid_mosaic(scale, bright, psf=airy_psf(scale), seed=5)
        table = SourceCatalogStep.call(mosaic)[0].source_catalog
        matched = _found_entries(table, bright, scale)
        assert matched == len(bright)
        assert len(table) == len(bright), (scale, len(table))


def test_reference_pixel_parameters_override():
    mosaic = _grid_mosaic(0.11, _star_grid(5 * _snr10_flux()))
    table = SourceCatalogStep.call(mosaic, npixels=25, kernel_fwhm=2.0)[0].source_catalog
    assert table.meta["npixels"] == 25 and table.meta["kernel_fwhm_pix"] == 2.0
    table = SourceCatalogStep.call(mosaic)[0].source_catalog
    assert table.meta["npixels"] == pixels_for_area(0.02, 0.11) == 2
    assert table.meta["kernel_fwhm_pix"] == pytest.approx(matched_kernel_fwhm(0.128, 0.11))
    table = SourceCatalogStep.call(mosaic, psf_fwhm_arcsec=0.2, min_area_arcsec2=0.05)[0] \
        .source_catalog
    assert table.meta["npixels"] == 4
    assert table.meta["kernel_fwhm_arcsec"] == pytest.approx(
        matched_kernel_fwhm(0.2, 0.11) * 0.11)


@pytest.mark.parametrize("parameters", [{"psf_fwhm_arcsec": -1.0}, {"min_area_arcsec2": 0.0},
                                        {"kernel_fwhm": 0.0}])
def test_bad_sky_parameters_are_one_line_errors(parameters):
    with pytest.raises(RomosaicInputError) as error:
        SourceCatalogStep.call(_grid_mosaic(0.11, []), **parameters)
    assert "\n" not in str(error.value)


def test_smoothed_noise_ratio_with_correlated_noise():
    """The predicted noise of the smoothed image matches the measured one."""
    rng = np.random.default_rng(1)
    white = rng.standard_normal((600, 600))
    # Correlate like a drizzle onto half-size pixels: a 2x2 box average.
    from scipy.ndimage import uniform_filter

    correlated = uniform_filter(white, 2, mode="wrap")
    sigma = correlated.std()
    lags = np.arange(-2, 3)
    rho = np.array([[np.mean(correlated * np.roll(correlated, (dy, dx), axis=(0, 1)))
                     for dx in lags] for dy in lags]) / sigma**2
    from romosaic.catalog import convolve_gaussian

    smoothed = convolve_gaussian(correlated.astype(np.float32), 2.8)[20:-20, 20:-20]
    measured = smoothed.std() / sigma
    assert smoothed_noise_ratio(2.8, rho) == pytest.approx(measured, rel=0.05)
    assert smoothed_noise_ratio(2.8) < 0.8 * measured
    no_data = np.zeros(correlated.shape, bool)
    noise = np.full(correlated.shape, sigma)
    assert measured_noise_ratio(correlated, convolve_gaussian(correlated.astype(np.float32), 2.8),
                                noise, no_data) == pytest.approx(measured, rel=0.08)


def test_make_source_catalog_defaults_are_sky_based():
    mosaic = _grid_mosaic(0.055, _star_grid(5 * _snr10_flux()))
    result = make_source_catalog(mosaic.data, mosaic.err, mosaic.meta.wcs, weight=mosaic.weight,
                                 filter_name="F158")
    assert result.table.meta["npixels"] == 7
    assert result.table.meta["kernel_fwhm_pix"] == pytest.approx(2.78, abs=0.01)
    assert result.table.meta["smoothed_noise_from"] == "measured on the mosaic"


def test_empty_field_cosmic_rays_are_rejected_with_the_psf_width():
    """Without bright stars, the point-source width comes from the PSF."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_catalog.py"
    spec = importlib.util.spec_from_file_location("accuracy_catalog", script)
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    logging.disable(logging.INFO)
    try:
        models, sources, cosmic_rays = accuracy.simulate_scene(accuracy.SCENES["empty"])
        cr_ra, cr_dec = accuracy.cosmic_ray_positions(models, cosmic_rays)
        mosaic = accuracy.make_mosaic(models, pixel_scale_ratio=0.5)
        catalog, segmentation = SourceCatalogStep.call(mosaic)
    finally:
        logging.disable(logging.NOTSET)
    table = catalog.source_catalog
    result = accuracy.evaluate(table, mosaic, sources, cr_ra, cr_dec,
                               segmentation=np.asarray(segmentation.data))
    assert table.meta["cosmic_rays_rejected"] > 0
    assert not np.any(result["spurious"] & result["low_coverage"])
    assert any("width is taken from the PSF" in note for note in table.meta["notes"])
