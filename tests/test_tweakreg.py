"""The tweakreg step and romosaic.align: corrections, sources, catalogues, outcomes.

The outcome tests simulate exposures whose recorded pointing is off by
0.3″ and whose roll is off by 0.01° (one error per exposure, all detectors
together) and check where stars land in the mosaic's catalog and how much of
their flux is kept, with and without alignment.
"""

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import asdf
import numpy as np
import pyarrow.parquet as pq
import pytest
import roman_datamodels.datamodels as rdm
from astropy.table import Table
from scipy.spatial import cKDTree

from romosaic.align import (
    AlignImage,
    align_images,
    apply_tangent_correction,
    detect_sources,
    find_tangent_correction,
    read_image_catalog,
    read_reference_catalog,
    sky_to_tangent,
    tangent_to_sky,
)
from romosaic.errors import RomosaicInputError
from romosaic.library import ModelLibrary
from romosaic.models import group_id_from_model
from romosaic.pipeline import MosaicPipeline
from romosaic.simulate import make_image_models, simulate_association
from romosaic.steps import TweakRegStep
from romosaic.wcs_utils import s_region_polygon

POINTING_ERROR = 0.3  # arcsec
ROLL_ERROR = 0.01  # degrees
MAX_MEDIAN_OFFSET = 0.005  # arcsec: the outcome asked for
MAX_FLUX_ERROR = 0.01


@pytest.fixture(scope="module")
def misaligned(tmp_path_factory):
    """Four exposures of two detectors, each exposure's WCS off by 0.3″ and 0.01°."""
    out = tmp_path_factory.mktemp("misaligned")
    return simulate_association(out, n_exposures=4, n_detectors=2, size=512, seed=5,
                                pointing_error=POINTING_ERROR, roll_error=ROLL_ERROR)


@pytest.fixture(scope="module")
def misaligned_models():
    models, sources, images, _ = make_image_models(
        n_exposures=4, n_detectors=2, size=512, seed=5, pointing_error=POINTING_ERROR,
        roll_error=ROLL_ERROR)
    return models, sources, images


def _digests(paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _align_inputs(models):
    return [AlignImage(str(m.meta.filename), m.meta.wcs, m.data.shape, group_id_from_model(m),
                       detect_sources(m.data, (m.dq & 1) == 0)) for m in models]


def _star_offsets(wcs, catalog, stars, ra0=80.0, dec0=-30.0, radius=0.5):
    """Distances (arcsec) from detections, placed by ``wcs``, to the nearest true star."""
    ra, dec = wcs.forward_transform(np.asarray(catalog["x"]), np.asarray(catalog["y"]))
    xi, eta = sky_to_tangent(ra, dec, ra0, dec0)
    sx, sy = sky_to_tangent(stars["ra"], stars["dec"], ra0, dec0)
    distance, index = cKDTree(np.c_[sx, sy]).query(np.c_[xi, eta])
    ok = distance < radius
    return distance[ok], index[ok], np.c_[xi, eta][ok]


def _catalog_against_truth(path, sources):
    """Median offset (arcsec) of matched stars and flux ratios of bright isolated ones."""
    table = pq.read_table(path).to_pydict()
    stars = sources[sources["kind"] == "star"]
    sx, sy = sky_to_tangent(stars["ra"], stars["dec"], 80.0, -30.0)
    cx, cy = sky_to_tangent(np.asarray(table["ra_centroid"]), np.asarray(table["dec_centroid"]),
                            80.0, -30.0)
    distance, index = cKDTree(np.c_[sx, sy]).query(np.c_[cx, cy])
    matched = distance < 0.5
    bright = matched & np.asarray(stars["isolated"])[index] & (
        np.asarray(stars["mag_ab"])[index] < 22.0)
    flux = np.asarray(table["aper04_flux"])[bright] / np.asarray(stars["flux_njy"])[index[bright]]
    return distance[matched], flux


# -- the correction ----------------------------------------------------------------


def _rotation(degrees):
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def test_tangent_round_trip():
    xi, eta = sky_to_tangent([80.01, 79.99], [-30.02, -29.97], 80.0, -30.0)
    ra, dec = tangent_to_sky(xi, eta, 80.0, -30.0)
    np.testing.assert_allclose(ra, [80.01, 79.99], atol=1e-11)
    np.testing.assert_allclose(dec, [-30.02, -29.97], atol=1e-11)


def test_correction_is_the_affine_map_in_the_tangent_plane(tmp_path, image_model_factory):
    wcs = image_model_factory(shape=(100, 120)).meta.wcs
    matrix, shift = _rotation(0.01), np.array([0.3, -0.2])
    corrected = apply_tangent_correction(wcs, matrix, shift, 80.0, -30.0)
    x, y = np.array([0.0, 60.0, 119.0]), np.array([0.0, 40.0, 99.0])
    before = np.array(sky_to_tangent(*wcs(x, y), 80.0, -30.0))
    after = np.array(sky_to_tangent(*corrected(x, y), 80.0, -30.0))
    np.testing.assert_allclose(after, matrix @ before + shift[:, None], atol=1e-9)
    # Frames, bounding box and the analytic inverse are kept.
    assert corrected.available_frames == wcs.available_frames
    assert corrected.bounding_box is not None
    back = corrected.invert(*corrected(x, y))
    np.testing.assert_allclose(back, [x, y], atol=1e-7)
    # A second correction is combined with the first: one block.
    twice = apply_tangent_correction(corrected, matrix.T, -matrix.T @ shift, 80.0, -30.0)
    _, _, combined, combined_shift = find_tangent_correction(twice)
    np.testing.assert_allclose(combined, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(combined_shift, 0.0, atol=1e-9)
    np.testing.assert_allclose(twice(x, y), wcs(x, y), atol=1e-12)
    # And it is saved and read back like any gwcs.
    asdf.AsdfFile({"wcs": corrected}).write_to(tmp_path / "w.asdf")
    with asdf.open(tmp_path / "w.asdf") as af:
        np.testing.assert_allclose(af["wcs"](x, y), corrected(x, y), atol=1e-12)


# -- sources -----------------------------------------------------------------------


def test_detected_centroids_match_true_stars():
    models, sources, _, _ = make_image_models(n_exposures=1, n_detectors=1, size=512, seed=2)
    model = models[0]
    catalog = detect_sources(model.data, (model.dq & 1) == 0)
    stars = sources[sources["kind"] == "star"]
    distance, _, _ = _star_offsets(model.meta.wcs, catalog, stars)
    assert len(distance) >= 40
    # 0.11″ pixels: a median error of 0.05 px is 5.5 mas per star.
    assert np.median(distance) < 0.006


def test_detect_sources_rejects_single_pixel_spikes():
    rng = np.random.default_rng(1)
    image = rng.normal(0.0, 1.0, (200, 200)).astype(np.float32)
    image[50, 60] += 500.0  # a cosmic ray: nothing in its neighbours
    yy, xx = np.mgrid[:200, :200]
    image += 300.0 * np.exp(-((xx - 120.3) ** 2 + (yy - 80.6) ** 2) / (2 * 0.7**2))
    catalog = detect_sources(image)
    assert len(catalog) == 1
    assert abs(catalog["x"][0] - 120.3) < 0.05 and abs(catalog["y"][0] - 80.6) < 0.05
    assert len(detect_sources(np.zeros((50, 50)))) == 0


def test_read_image_catalog_column_spellings(tmp_path):
    path = tmp_path / "cat.ecsv"
    Table({"xcentroid": [1.0, np.nan], "ycentroid": [2.0, 3.0]}).write(path)
    catalog = read_image_catalog(path)
    assert list(catalog["x"]) == [1.0] and list(catalog["y"]) == [2.0]
    bad = tmp_path / "bad.ecsv"
    Table({"a": [1.0]}).write(bad)
    with pytest.raises(RomosaicInputError, match="bad.ecsv: source catalog has no pixel"):
        read_image_catalog(bad)


# -- reference catalogue files --------------------------------------------------------


@pytest.mark.parametrize("name, columns", [
    ("r.ecsv", {"ra": [80.0, 80.1], "dec": [-30.0, -30.1]}),
    ("r.parquet", {"RA": [80.0, 80.1], "DEC": [-30.0, -30.1], "weight": [1.0, 2.0]}),
    ("r.fits", {"RA_DEG": [80.0, 80.1], "Dec_deg": [-30.0, -30.1]}),
])
def test_reference_catalogue_formats(tmp_path, name, columns):
    Table(columns).write(tmp_path / name)
    table = read_reference_catalog(tmp_path / name)
    assert list(table["RA"]) == [80.0, 80.1] and list(table["DEC"]) == [-30.0, -30.1]
    assert ("weight" in table.colnames) == ("weight" in columns)


def test_reference_catalogue_errors_name_the_file(tmp_path):
    Table({"x": [1.0], "y": [2.0]}).write(tmp_path / "nocoords.ecsv")
    (tmp_path / "junk.ecsv").write_text("this is not a table\x00\x01")
    Table({"ra": [], "dec": []}).write(tmp_path / "empty.ecsv")
    cases = {
        tmp_path / "nocoords.ecsv": "nocoords.ecsv: reference catalogue has no RA/Dec",
        tmp_path / "junk.ecsv": "junk.ecsv: cannot read as a table",
        tmp_path / "empty.ecsv": "empty.ecsv: reference catalogue has no usable row",
        tmp_path / "missing.ecsv": "missing.ecsv: file not found",
        "GAIADR3": "GAIADR3: no such file; abs_refcat must be a local table file",
        "https://example.org/cat.ecsv": "romosaic does not download catalogues",
    }
    for path, message in cases.items():
        with pytest.raises(RomosaicInputError, match=message) as info:
            read_reference_catalog(path)
        assert "\n" not in str(info.value)


# -- alignment on simulated exposures --------------------------------------------------


def test_relative_alignment_makes_exposures_agree(misaligned_models):
    models, sources, _ = misaligned_models
    images = _align_inputs(models)
    result = align_images(images)
    stars = sources[sources["kind"] == "star"]
    # Positions of the same star seen by different exposures, after alignment.
    by_star = {}
    for image, wcs in zip(images, result.wcs, strict=True):
        _, index, position = _star_offsets(wcs or image.wcs, image.catalog, stars)
        for i, p in zip(index, position, strict=True):
            by_star.setdefault(int(i), {}).setdefault(image.group_id, p)
    spreads = [np.hypot(*(np.array(list(seen.values())) - np.mean(list(seen.values()), axis=0)).T)
               for seen in by_star.values() if len(seen) >= 2]
    spread = np.median(np.concatenate(spreads))
    statuses = [fit["status"] for fit in result.fits]
    assert statuses.count("REFERENCE") == 2 and statuses.count("SUCCESS") == 6
    assert spread < MAX_MEDIAN_OFFSET, spread
    fit = result.fits[2]["relative"]
    assert fit["nmatches"] >= 15 and fit["rmse"] < 0.02
    assert abs(fit["rotation"]) < 3 * ROLL_ERROR


def test_absolute_alignment_to_the_truth(misaligned_models):
    models, sources, _ = misaligned_models
    images = _align_inputs(models)
    stars = sources[sources["kind"] == "star"]
    refcat = Table({"RA": stars["ra"], "DEC": stars["dec"]})
    before = np.concatenate([_star_offsets(i.wcs, i.catalog, stars)[0] for i in images])
    result = align_images(images, refcat=refcat)
    after = np.concatenate([_star_offsets(w, i.catalog, stars)[0]
                            for i, w in zip(images, result.wcs, strict=True)])
    assert np.median(before) > 0.2
    assert np.median(after) < MAX_MEDIAN_OFFSET
    assert all(fit["status"] == "SUCCESS" for fit in result.fits)
    # The detectors of one exposure got the same correction.
    assert result.fits[0]["absolute"]["shift"] == result.fits[1]["absolute"]["shift"]


# -- the step ------------------------------------------------------------------------


def test_step_aligns_in_memory_and_records_the_fit(misaligned):
    inputs = _digests(misaligned.cal_paths)
    library = TweakRegStep.call(str(misaligned.asn_path), abs_refcat=str(misaligned.refcat_path))
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            assert model.meta.cal_step.tweakreg == "COMPLETE"
            fit = model.meta.wcs_fit_results
            assert fit["status"] == "SUCCESS"
            assert fit["absolute"]["nmatches"] >= 15
            assert len(fit["absolute"]["shift"]) == 2
            model.validate()
            library.shelve(model, index, modify=False)
    assert _digests(misaligned.cal_paths) == inputs


def test_pointing_keywords_and_footprint_follow_the_correction(misaligned):
    # The recorded pointing is off by the simulated error; once aligned to the
    # true stars, ra_ref/dec_ref and roll_ref must be the true ones.
    library = TweakRegStep.call(str(misaligned.asn_path), abs_refcat=str(misaligned.refcat_path))
    truth = {row["filename"]: row for row in misaligned.images}
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            row = truth[str(model.meta.filename)]
            with rdm.open(misaligned.cal_paths[index]) as original:
                recorded = original.meta.wcsinfo
                east, north = float(row["pointing_error_ra"]), float(row["pointing_error_dec"])
                true_ra, true_dec = tangent_to_sky(-east, -north, recorded.ra_ref,
                                                   recorded.dec_ref)
                true_roll = recorded.roll_ref - float(row["roll_error"])
            info = model.meta.wcsinfo
            error = np.hypot(*sky_to_tangent(info.ra_ref, info.dec_ref, true_ra, true_dec))
            assert error < 0.02  # arcsec; the recorded pointing was 0.3" off
            assert abs((info.roll_ref - true_roll + 180.0) % 360.0 - 180.0) < 2e-3  # deg
            assert info.s_region == s_region_polygon(model.meta.wcs, model.data.shape)
            library.shelve(model, index, modify=False)


def test_too_few_matches_keeps_the_wcs_with_a_warning(misaligned, caplog):
    library = ModelLibrary(str(misaligned.asn_path))
    with library:
        model = library.borrow(0)
        original = model.meta.wcs(100.0, 100.0)
        library.shelve(model, 0, modify=False)
    with caplog.at_level(logging.WARNING, logger="romosaic"):
        TweakRegStep.call(library, minobj=100000, abs_minobj=100000,
                          abs_refcat=str(misaligned.refcat_path))
    with library:
        model = library.borrow(0)
        assert model.meta.cal_step.tweakreg == "SKIPPED"
        assert model.meta.wcs(100.0, 100.0) == original
        assert model.meta.wcs_fit_results["status"].startswith("FAILED")
        library.shelve(model, 0, modify=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cal.asdf" in w and "unchanged" in w for w in warnings), warnings
    assert all("\n" not in w for w in warnings)


def test_reference_catalogue_off_the_field_is_a_warning(misaligned, tmp_path, caplog):
    far = tmp_path / "elsewhere.ecsv"
    Table({"ra": np.linspace(200, 201, 50), "dec": np.linspace(10, 11, 50)}).write(far)
    with caplog.at_level(logging.WARNING, logger="romosaic"):
        library = TweakRegStep.call(str(misaligned.asn_path), abs_refcat=str(far))
    with library:
        model = library.borrow(2)
        # Relative alignment still applies.
        assert model.meta.cal_step.tweakreg == "COMPLETE"
        library.shelve(model, 2, modify=False)
    assert any("elsewhere.ecsv: no reference source falls on the images" in r.getMessage()
               for r in caplog.records)


def test_one_exposure_without_refcat_is_skipped(misaligned):
    library = TweakRegStep.call([str(p) for p in misaligned.cal_paths[:2]])
    with library:
        model = library.borrow(0)
        assert model.meta.cal_step.tweakreg == "SKIPPED"
        library.shelve(model, 0, modify=False)


def test_l2_catalog_named_by_the_model_is_used(misaligned, tmp_path, caplog):
    models = [ModelLibrary(str(p)) for p in misaligned.cal_paths[:4]]
    opened = []
    for i, library in enumerate(models):
        with library:
            model = library.borrow(0)
            library.shelve(model, 0, modify=False)
        catalog = detect_sources(model.data)
        path = tmp_path / f"cat{i}.ecsv"
        Table({"xcentroid": catalog["x"], "ycentroid": catalog["y"]}).write(path)
        model.meta["source_catalog"] = {"tweakreg_catalog_name": str(path)}
        opened.append(model)
    with caplog.at_level(logging.INFO, logger="romosaic"):
        TweakRegStep.call(opened)
    assert sum(f"from {tmp_path}" in r.getMessage() for r in caplog.records) == 4
    assert opened[2].meta.cal_step.tweakreg == "COMPLETE"


def test_bad_refcat_stops_before_work(misaligned, tmp_path, clean_env):
    bad = tmp_path / "nocoords.ecsv"
    Table({"x": [1.0]}).write(bad)
    inputs = _digests(misaligned.cal_paths)
    strun = str(Path(sys.executable).parent / "strun")
    result = subprocess.run([strun, "tweakreg", str(misaligned.asn_path), f"--abs_refcat={bad}"],
                            capture_output=True, text=True, cwd=tmp_path, env=clean_env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{bad}: reference catalogue has no RA/Dec columns" in result.stderr
    assert _digests(misaligned.cal_paths) == inputs


def test_save_results_writes_aligned_copies_and_never_an_input(misaligned, tmp_path):
    out = tmp_path / "out"
    TweakRegStep.call(str(misaligned.asn_path), abs_refcat=str(misaligned.refcat_path),
                      save_results=True, output_dir=str(out), save_abs_catalog=True,
                      catalog_path=str(out))
    written = sorted(p.name for p in out.iterdir())
    assert len([n for n in written if n.endswith("_tweakreg.asdf")]) == 8
    assert f"{misaligned.product_name}_abs_refcat.ecsv" in written
    import roman_datamodels.datamodels as rdm
    with rdm.open(out / written[0]) as model:
        assert model.meta.cal_step.tweakreg == "COMPLETE"
        assert model.meta.wcs_fit_results["status"] == "SUCCESS"
    # An input named like an aligned copy, written into its own directory.
    source = out / written[0]
    before = _digests([source])
    with pytest.raises(RomosaicInputError, match="would replace the input file"):
        TweakRegStep.call(str(source), save_results=True, output_dir=str(out),
                          abs_refcat=str(misaligned.refcat_path))
    assert _digests([source]) == before


# -- in the pipeline -------------------------------------------------------------------


def test_pipeline_skips_tweakreg_by_default():
    pipeline = MosaicPipeline()
    assert list(pipeline.step_defs)[0] == "tweakreg"
    assert pipeline.tweakreg.skip
    assert not MosaicPipeline(steps={"tweakreg": {"skip": False}}).tweakreg.skip
    assert not TweakRegStep().skip
    from romosaic._stpipe_integration import get_steps
    assert ("romosaic.steps.TweakRegStep", "tweakreg", False) in get_steps()


def test_pipeline_with_tweakreg_and_refcat_recovers_the_truth(misaligned, tmp_path):
    out = tmp_path / "aligned"
    MosaicPipeline.call(str(misaligned.asn_path), save_results=True, output_dir=str(out),
                        steps={"tweakreg": {"skip": False,
                                            "abs_refcat": str(misaligned.refcat_path)},
                               # Aperture fluxes and centroids are what is checked;
                               # PSF fitting has its own tests.
                               "source_catalog": {"fit_psf": False}})
    offsets, flux = _catalog_against_truth(out / f"{misaligned.product_name}_cat.parquet",
                                           misaligned.sources)
    print(f"aligned: {len(offsets)} stars, median offset {1000 * np.median(offsets):.2f} mas; "
          f"{len(flux)} bright isolated stars, median flux ratio {np.median(flux):.4f}")
    assert np.median(offsets) < MAX_MEDIAN_OFFSET
    assert len(flux) >= 10
    assert abs(np.median(flux) - 1.0) < MAX_FLUX_ERROR


@pytest.mark.slow
def test_pipeline_without_alignment_loses_stars_and_flux(misaligned, tmp_path):
    out = tmp_path / "unaligned"
    MosaicPipeline.call(str(misaligned.asn_path), save_results=True, output_dir=str(out))
    offsets, flux = _catalog_against_truth(out / f"{misaligned.product_name}_cat.parquet",
                                           misaligned.sources)
    print(f"unaligned: {len(offsets)} stars, median offset {1000 * np.median(offsets):.1f} mas; "
          f"{len(flux)} bright isolated stars, median flux ratio {np.median(flux):.4f}")
    assert np.median(offsets) > 0.1
    assert len(flux) == 0 or np.median(flux) < 0.9


# -- custom mosaics ---------------------------------------------------------------------


def test_custom_mosaic_aligns_by_default_and_skips_on_request(misaligned, tmp_path, capsys):
    from romosaic.cli import main
    from romosaic.custom_mosaic import perform

    files = [str(p) for p in misaligned.cal_paths]
    assert perform(files, output_dir=tmp_path / "a", output_file_prefix="field",
                   refcat=str(misaligned.refcat_path)) == 0
    offsets, flux = _catalog_against_truth(tmp_path / "a" / "field_f158_cat.parquet",
                                           misaligned.sources)
    assert np.median(offsets) < MAX_MEDIAN_OFFSET
    assert abs(np.median(flux) - 1.0) < MAX_FLUX_ERROR
    log_text = (tmp_path / "a" / "field.log").read_text()
    assert "absolute fit" in log_text and "relative fit" in log_text

    skip_steps = {"outlier_detection": {"skip": True}, "source_catalog": {"skip": True}}
    assert perform(files, output_dir=tmp_path / "s", output_file_prefix="field",
                   align=False, steps=skip_steps) == 0
    skipped_log = (tmp_path / "s" / "field.log").read_text()
    assert "Step tweakreg running" in skipped_log and "relative fit" not in skipped_log
    import roman_datamodels.datamodels as rdm
    with rdm.open(tmp_path / "s" / "field_f158_coadd.asdf") as mosaic:
        assert mosaic.data.shape[0] > 0

    bad = tmp_path / "nocoords.ecsv"
    Table({"x": [1.0]}).write(bad)
    status = main(["custom-mosaic", files[0], "--output-dir", str(tmp_path / "b"),
                   "--refcat", str(bad)])
    assert status == 2  # bad input, as for every romosaic command
    assert f"{bad}: reference catalogue has no RA/Dec columns" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
