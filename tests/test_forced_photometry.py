"""Forced photometry (``source_catalog --forced_segmentation``) on a simulated two-band scene.

One scene, simulated in F158 and F213 through the same pointings (same stars,
random colours, each band its own noise), is drizzled onto one grid per band
(flux → skymatch → resample, in memory; no cosmic rays, so outlier detection
is not needed). F158 is the detection band: its catalog and segmentation map
are made as usual; F213 is measured in those segments.
"""

import copy

import numpy as np
import pytest
import roman_datamodels.datamodels as rdm
from astropy.stats import mad_std
from astropy.table import Table
from scipy.spatial import cKDTree

from romosaic.catalog import forced_photometry
from romosaic.catalog.flags import MASKED, NO_COVERAGE
from romosaic.errors import ModelTypeError, RomosaicInputError
from romosaic.resample.noise_correlation import NoiseCorrelation
from romosaic.simulate import simulate_association
from romosaic.steps import FluxStep, ResampleStep, SkyMatchStep
from romosaic.steps.source_catalog_step import SourceCatalogStep
from romosaic.wcs_utils import affine_tan_wcs, cd_from_orientation

#: Truth S/N (true flux over the 0.4" aperture's error) of faint-to-moderate stars.
PULL_SNR = (5.0, 100.0)
#: Stars without another within this distance (arcsec) count as isolated: the
#: simulated PSF (0.15" FWHM Gaussian) puts no light of a neighbour this far
#: into a 0.4" aperture.
ISOLATION = 1.0


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    """Both bands' mosaics saved, the detection band's catalog and segmentation saved."""
    out = tmp_path_factory.mktemp("two_bands")
    sim = simulate_association(out, n_exposures=4, size=512, seed=5, cosmic_ray_rate=0.0,
                               n_stars=700, n_galaxies=0, sky_levels=[40.0] * 4,
                               star_mag_range=(20.0, 25.0), second_filter="F213")
    paths = {}
    for band, result in (("f158", sim), ("f213", sim.second_band)):
        mosaic = ResampleStep.call(SkyMatchStep.call(FluxStep.call(str(result.asn_path))))
        paths[band] = out / f"{result.product_name}_coadd.asdf"
        mosaic.save(paths[band])
    SourceCatalogStep.call(str(paths["f158"]), fit_psf=False, save_results=True,
                           output_dir=str(out))
    return {"sim": sim, "dir": out, "coadd": paths["f158"], "coadd2": paths["f213"],
            "segm": out / "sim_f158_segm.asdf", "cat": out / "sim_f158_cat.parquet"}


@pytest.fixture(scope="module")
def forced(bands):
    catalog, segmentation = SourceCatalogStep.call(str(bands["coadd2"]),
                                                   forced_segmentation=str(bands["segm"]))
    return catalog, segmentation


def test_simulate_two_bands_share_the_scene_and_grid(bands):
    sim = bands["sim"]
    second = sim.second_band
    assert second is not None and second.product_name == "sim_f213"
    for table in (sim.sources, second.sources):
        for name in ("flux_njy_f158", "flux_njy_f213", "mag_ab_f158", "mag_ab_f213"):
            assert name in table.colnames
    np.testing.assert_allclose(second.sources["flux_njy"], second.sources["flux_njy_f213"])
    np.testing.assert_allclose(sim.sources["ra"], second.sources["ra"])
    colour = np.asarray(sim.sources["mag_ab_f213"] - sim.sources["mag_ab_f158"])
    assert 0.2 < np.std(colour) < 0.4
    np.testing.assert_allclose(sim.sources["flux_njy_f213"] / sim.sources["flux_njy_f158"],
                               10 ** (-0.4 * colour), rtol=1e-9)
    with rdm.open(bands["coadd"]) as one, rdm.open(bands["coadd2"]) as two:
        assert one.data.shape == two.data.shape
        assert dict(one.meta.wcsinfo)["ra_ref"] == dict(two.meta.wcsinfo)["ra_ref"]
        assert two.meta.instrument.optical_element == "F213"


def test_every_detection_source_is_measured(bands, forced):
    catalog, segmentation = forced
    assert isinstance(catalog, rdm.ForcedMosaicSourceCatalogModel)
    assert catalog.meta.image.forced_segmentation == str(bands["segm"])
    table = catalog.source_catalog
    detection = Table.read(bands["cat"])
    assert len(detection) > 300
    np.testing.assert_array_equal(np.sort(table["label"]), np.sort(detection["label"]))
    for name in ("forced_segment_flux", "forced_kron_flux", "forced_aper02_flux",
                 "forced_aper04_flux", "forced_semimajor", "forced_semiminor",
                 "forced_ellipticity", "forced_x_centroid", "x_centroid", "kron_radius"):
        assert name in table.colnames, name
    for name in ("forced_kron_flux", "forced_aper04_flux", "forced_segment_flux"):
        assert np.all(np.isfinite(table[name])), name
        assert np.all(table[f"{name}_err"] > 0), name
    assert not np.any(table["forced_warning_flags"] & NO_COVERAGE)
    # Positions are the detection band's (on its detection image); forced_ ones this band's.
    table = table[np.argsort(table["label"])]
    detection = detection[np.argsort(detection["label"])]
    bright = detection["aper04_flux"] > 30 * detection["aper04_flux_err"]
    shift = np.hypot(table["x_centroid"] - detection["x_centroid"],
                     table["y_centroid"] - detection["y_centroid"])
    assert np.median(shift[bright]) < 0.05
    own = np.hypot(table["forced_x_centroid"] - detection["x_centroid"],
                   table["forced_y_centroid"] - detection["y_centroid"])
    assert np.median(own[bright]) > 0
    with rdm.open(bands["segm"]) as segm:
        np.testing.assert_array_equal(segmentation.data, segm.data)
    catalog.validate()


def test_forced_fluxes_follow_the_truth_within_their_errors(bands, forced):
    table = forced[0].source_catalog
    truth = bands["sim"].second_band.sources
    with rdm.open(bands["coadd2"]) as mosaic:
        x, y = mosaic.meta.wcs.invert(np.asarray(truth["ra"]), np.asarray(truth["dec"]))
    on_grid = np.isfinite(x) & np.isfinite(y)
    distance, index = cKDTree(np.column_stack([x[on_grid], y[on_grid]])).query(
        np.column_stack([table["x_centroid"], table["y_centroid"]]))
    matched = truth[np.flatnonzero(on_grid)[index]]
    flux = np.asarray(table["forced_aper04_flux"], dtype=float)
    error = np.asarray(table["forced_aper04_flux_err"], dtype=float)
    true_flux = np.asarray(matched["flux_njy_f213"], dtype=float)
    snr = true_flux / error
    flags = np.asarray(table["forced_warning_flags"])
    use = ((distance < 1.0) & (matched["kind"] == "star")
           & (np.asarray(matched["nn_distance"]) > ISOLATION)
           & (flags & ~np.int32(16 | 32) == 0) & (snr > PULL_SNR[0]) & (snr < PULL_SNR[1]))
    pulls = (flux[use] - true_flux[use]) / error[use]
    assert use.sum() > 100
    assert 0.9 <= mad_std(pulls) <= 1.1
    # The second band's own fluxes, not the detection band's.
    other = np.asarray(matched["flux_njy_f158"], dtype=float)[use]
    assert np.median(np.abs(flux[use] - true_flux[use])) < np.median(
        np.abs(flux[use] - other))


def test_sources_outside_the_second_band_are_flagged(bands, tmp_path):
    with rdm.open(bands["coadd2"]) as mosaic:
        cut = copy.deepcopy(mosaic)
    nx = cut.data.shape[1]
    # The second band covers only the right two thirds of the grid.
    cut.data[:, : nx // 3] = np.nan
    cut.weight[:, : nx // 3] = 0.0
    catalog, _ = SourceCatalogStep.call(cut, forced_segmentation=str(bands["segm"]))
    table = catalog.source_catalog
    detection = Table.read(bands["cat"])
    assert len(table) == len(detection)
    with rdm.open(bands["segm"]) as segm:
        labels = np.asarray(segm.data)
    outside = set(np.unique(labels[:, : nx // 3])) - set(np.unique(labels[:, nx // 3:]))
    outside.discard(0)
    flagged = (np.asarray(table["forced_warning_flags"]) & NO_COVERAGE) != 0
    assert outside and set(np.asarray(table["label"])[flagged]) == outside
    assert np.all(np.isnan(table["forced_kron_flux"][flagged]))
    assert np.all(np.isnan(table["forced_aper04_flux"][flagged]))
    assert np.all(np.isfinite(table["x_centroid"][flagged]))
    assert np.all(np.isfinite(table["forced_aper04_flux"][~flagged]))
    # Cut by the edge of the coverage: measured, and MASKED.
    straddling = set(np.unique(labels[:, nx // 3 - 1])) & set(np.unique(labels[:, nx // 3]))
    straddling.discard(0)
    for label in straddling:
        row = np.flatnonzero(np.asarray(table["label"]) == label)[0]
        assert table["forced_warning_flags"][row] & MASKED


def test_grid_mismatch_names_both_files(bands, tmp_path):
    with rdm.open(bands["segm"]) as segm:
        moved = copy.deepcopy(segm)
    moved.meta.wcsinfo.ra_ref = float(moved.meta.wcsinfo.ra_ref) + 1e-4
    moved_path = tmp_path / "moved_segm.asdf"
    moved.save(moved_path)
    with pytest.raises(RomosaicInputError) as error:
        SourceCatalogStep.call(str(bands["coadd2"]), forced_segmentation=str(moved_path),
                               save_results=True, output_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert str(moved_path) in message and str(bands["coadd2"]) in message
    assert "ra_ref" in message

    cropped = copy.deepcopy(moved)
    cropped.meta.wcsinfo.ra_ref = float(segm.meta.wcsinfo.ra_ref)
    cropped.data = np.ascontiguousarray(moved.data[:-3])
    cropped.detection_image = np.ascontiguousarray(moved.detection_image[:-3])
    cropped_path = tmp_path / "cropped_segm.asdf"
    cropped.save(cropped_path)
    with pytest.raises(RomosaicInputError, match="shape") as error:
        SourceCatalogStep.call(str(bands["coadd2"]), forced_segmentation=str(cropped_path),
                               save_results=True, output_dir=str(tmp_path))
    assert str(cropped_path) in str(error.value) and str(bands["coadd2"]) in str(error.value)
    # Nothing partial written.
    assert not list(tmp_path.glob("*.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cropped_segm.asdf",
                                                          "moved_segm.asdf"]


def test_missing_or_wrong_segmentation_file(bands, tmp_path):
    missing = tmp_path / "nothing_segm.asdf"
    with pytest.raises(RomosaicInputError, match="nothing_segm.asdf: forced_segmentation "
                                                 "file not found"):
        SourceCatalogStep.call(str(bands["coadd2"]), forced_segmentation=str(missing))
    with pytest.raises(ModelTypeError) as error:
        SourceCatalogStep.call(str(bands["coadd2"]), forced_segmentation=str(bands["coadd"]))
    message = str(error.value)
    assert message.startswith(str(bands["coadd"])) and "MosaicSegmentationMapModel" in message
    assert "\n" not in message


def test_forced_segmentation_from_the_command_line(bands, tmp_path):
    SourceCatalogStep.from_cmdline([
        "source_catalog", str(bands["coadd2"]), f"--forced_segmentation={bands['segm']}",
        f"--output_dir={tmp_path}"])
    path = tmp_path / "sim_f213_cat.parquet"
    assert path.is_file() and (tmp_path / "sim_f213_segm.asdf").is_file()

    table = Table.read(path)
    assert "forced_kron_flux" in table.colnames
    assert str(table["forced_kron_flux"].unit) == "nJy"
    assert np.all(np.isfinite(table["forced_kron_flux"]))


def test_level2_images_of_two_bands(bands, tmp_path):
    # One exposure of each band, same detector and pointing: the same pixel grid.
    first = str(bands["sim"].cal_paths[0])
    second = str(bands["sim"].second_band.cal_paths[0])
    detection, segmentation = SourceCatalogStep.call(first, fit_psf=False)
    assert isinstance(segmentation, rdm.SegmentationMapModel)
    segm_path = tmp_path / "l2_segm.asdf"
    segmentation.save(segm_path)
    catalog, _ = SourceCatalogStep.call(second, forced_segmentation=str(segm_path))
    assert isinstance(catalog, rdm.ForcedImageSourceCatalogModel)
    table = catalog.source_catalog
    np.testing.assert_array_equal(np.sort(table["label"]),
                                  np.sort(detection.source_catalog["label"]))
    assert np.all(np.isfinite(table["forced_aper04_flux"]))
    catalog.validate()
    # A mosaic's segmentation map does not fit a Level-2 image.
    with pytest.raises(ModelTypeError, match="needs a SegmentationMapModel"):
        SourceCatalogStep.call(second, forced_segmentation=str(bands["segm"]))


def test_a_band_without_data_keeps_every_row(bands):
    with rdm.open(bands["coadd2"]) as mosaic:
        empty = copy.deepcopy(mosaic)
    empty.data[...] = np.nan
    catalog, _ = SourceCatalogStep.call(empty, forced_segmentation=str(bands["segm"]))
    table = catalog.source_catalog
    assert len(table) == len(Table.read(bands["cat"]))
    assert np.all(table["forced_warning_flags"] & NO_COVERAGE)
    assert np.all(np.isnan(table["forced_kron_flux"]))
    assert np.all(np.isfinite(table["x_centroid"]))
    assert table.meta["sources_without_data"] == len(table)


def test_sky_noise_that_err_leaves_out_is_added():
    """Sky pixels scattering 1.5 times their err: the forced errors describe the real noise.

    400 empty segments on pure noise, so every forced flux is noise alone.
    With a noise correlation the errors come from ``err`` only (no empty
    apertures rescale them), as on romosaic's own mosaics.
    """
    rng = np.random.default_rng(11)
    spacing, n = 30, 20
    shape = (spacing * n, spacing * n)
    data = rng.normal(0.0, 1.5, shape).astype(np.float32)
    err = np.ones(shape, np.float32)
    labels = np.zeros(shape, np.int64)
    detection = np.zeros(shape, np.float32)
    yy, xx = np.mgrid[-2:3, -2:3]
    for k in range(n * n):
        y, x = spacing // 2 + spacing * (k // n), spacing // 2 + spacing * (k % n)
        labels[y - 2:y + 3, x - 2:x + 3] = k + 1
        detection[y - 2:y + 3, x - 2:x + 3] = np.exp(-(xx**2 + yy**2) / 2.0)
    wcs = affine_tan_wcs(crval=(80.0, -30.0), crpix=((shape[1] - 1) / 2, (shape[0] - 1) / 2),
                         cd=cd_from_orientation(0.1 / 3600.0, 0.0), shape=shape)
    result = forced_photometry(data, err, wcs, labels, detection, pixel_scale_arcsec=0.1,
                               noise_correlation=NoiseCorrelation.uncorrelated())
    table = result.table
    for name in ("forced_aper02_flux", "forced_aper04_flux", "forced_segment_flux"):
        pulls = np.asarray(table[name]) / np.asarray(table[f"{name}_err"])
        assert 0.9 <= mad_std(pulls) <= 1.1, name
    # Recorded as the detection band's catalog records it.
    assert table.meta["sky_noise_over_err"] == pytest.approx(1.5, abs=0.02)
    assert "sky_noise_added" in table.meta
