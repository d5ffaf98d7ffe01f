"""Tests of the simulator of Roman WFI Level-2 images (`romosaic.simulate`)."""

import argparse
import dataclasses
import json

import numpy as np
import pytest
from astropy.table import Table
from roman_datamodels import datamodels
from roman_datamodels.dqflags import pixel as dqflags

from romosaic.errors import RomosaicInputError
from romosaic.simulate import SimulationResult, make_image_models, simulate_association
from romosaic.simulate.cli import add_cli_parser
from romosaic.simulate.instrument import PIXEL_AREA, abmag_to_njy
from romosaic.simulate.wcs import build_gwcs, plan_layout, to_tangent_plane

ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi
HOT = int(dqflags.HOT | dqflags.DO_NOT_USE)

# One scene seen three times by a 2-detector instrument; "clean" is the same
# scene, detectors and sky without random noise or cosmic rays.
LAYOUT = {"n_exposures": 3, "n_detectors": 2, "size": 160, "seed": 11}


@pytest.fixture(scope="module")
def noisy():
    return make_image_models(**LAYOUT)


@pytest.fixture(scope="module")
def clean():
    return make_image_models(**LAYOUT, noise=False, cosmic_ray_rate=0.0)


@pytest.fixture(scope="module")
def stars_only():
    """Noise-free stars only, so aperture sums see no other light."""
    return make_image_models(
        n_exposures=2, size=192, seed=4, n_stars=12, n_galaxies=0, noise=False,
        cosmic_ray_rate=0.0, distortion=True,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("sim")
    return simulate_association(outdir, n_exposures=2, size=128, seed=5)


def _local_solid_angle(wcs, x, y):
    """Pixel solid angle (sr) at (x, y) from finite differences of a gwcs."""
    h = 0.5
    ra, dec = wcs(np.array([x - h, x + h, x, x]), np.array([y, y, y - h, y + h]),
                  with_bounding_box=False)
    cosd = np.cos(np.deg2rad(dec.mean()))
    east = (ra - ra.mean()) * cosd * 3600.0
    north = (dec - dec.mean()) * 3600.0
    jac = np.array([[east[1] - east[0], east[3] - east[2]],
                    [north[1] - north[0], north[3] - north[2]]]) / (2 * h)
    return abs(np.linalg.det(jac)) / ARCSEC_PER_RAD**2


def _pixel(model, ra, dec):
    return model.meta.wcs.invert(ra, dec, with_bounding_box=False)


def _variance(model):
    return (model.var_poisson.astype(np.float64) + model.var_rnoise.astype(np.float64)
            + model.var_flat.astype(np.float64))


# --- Files and data models -------------------------------------------------------------


def test_files_validate_and_reload(written):
    assert isinstance(written, SimulationResult)
    assert len(written.cal_paths) == 2
    for path in written.cal_paths:
        with datamodels.open(path) as model:
            assert isinstance(model, datamodels.ImageModel)
            assert model.data.dtype == np.float32
            assert model.dq.dtype == np.uint32
            for name in ("err", "var_poisson", "var_rnoise", "var_flat"):
                assert getattr(model, name).dtype == np.float16
                assert getattr(model, name).shape == (128, 128)
            assert model.meta.filename == path.name
            assert model.meta.instrument.optical_element == "F158"
            assert model.meta.instrument.detector == "WFI01"
            assert model.meta.cal_step.flux == "INCOMPLETE"
            assert model.meta.cal_step.photom == "COMPLETE"
            assert "background" not in model.meta
            assert model.meta.photometry.pixel_area == pytest.approx(2.844e-13, rel=1e-3)
            assert model.meta.exposure.effective_exposure_time == pytest.approx(139.8)
            assert model.meta.wcsinfo.s_region.startswith("POLYGON ICRS ")
            assert len(model.meta.wcsinfo.s_region.split()) == 2 + 8


def test_file_names_and_times(written):
    names = [p.name for p in written.cal_paths]
    assert names == [
        "r0000101001001001001_0001_wfi01_f158_cal.asdf",
        "r0000101001001001001_0002_wfi01_f158_cal.asdf",
    ]
    with datamodels.open(written.cal_paths[0]) as first, \
            datamodels.open(written.cal_paths[1]) as second:
        assert (first.meta.exposure.end_time - first.meta.exposure.start_time).sec == \
            pytest.approx(139.8)
        assert second.meta.exposure.start_time > first.meta.exposure.end_time


def test_association_and_truth_files(written):
    assert written.asn_path.name == "sim_f158_asn.json"
    asn = json.loads(written.asn_path.read_text())
    assert asn["asn_type"] == "image"
    assert asn["asn_rule"] == "DMS_ELPP_Base"
    assert asn["target"] == "None"
    assert asn["skycell_wcs_info"] == "none"
    (product,) = asn["products"]
    assert product["name"] == "sim_f158"
    for member in product["members"]:
        assert member["exptype"] == "science"
        assert (written.asn_path.parent / member["expname"]).is_file()
    assert [m["expname"] for m in product["members"]] == [p.name for p in written.cal_paths]

    sources = Table.read(written.truth_sources_path, format="ascii.ecsv")
    assert written.truth_sources_path.name == "sim_f158_truth_sources.ecsv"
    assert set(sources["kind"]) <= {"star", "galaxy"}
    assert len(sources) == len(written.sources)
    images = Table.read(written.truth_images_path, format="ascii.ecsv")
    assert list(images["filename"]) == [p.name for p in written.cal_paths]
    cosmic_rays = Table.read(written.truth_cosmic_rays_path, format="ascii.ecsv")
    assert set(cosmic_rays.colnames) == {"filename", "x", "y", "value_dn_s"}
    assert len(cosmic_rays) == len(written.cosmic_rays)


def test_cli_writes_association(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="romosaic")
    add_cli_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["simulate", str(tmp_path), "--n-exposures", "2", "--size", "96", "--seed", "2",
         "--filter", "f129", "--product-name", "demo", "--distortion"]
    )
    assert args.run(args) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.endswith("demo_asn.json")
    asn = json.loads((tmp_path / "demo_asn.json").read_text())
    assert len(asn["products"][0]["members"]) == 2
    assert (tmp_path / "r0000101001001001001_0002_wfi01_f129_cal.asdf").is_file()
    assert (tmp_path / "demo_truth_cosmic_rays.ecsv").is_file()


def test_bad_options_are_input_errors():
    with pytest.raises(RomosaicInputError, match="sky_levels"):
        make_image_models(n_exposures=2, size=64, sky_levels=[1.0])
    with pytest.raises(RomosaicInputError, match="detector_sky_scatter"):
        make_image_models(n_exposures=2, size=64, detector_sky_scatter=-0.1)
    with pytest.raises(RomosaicInputError, match="filter"):
        make_image_models(n_exposures=1, size=64, filter_name="F999")


# --- Geometry ---------------------------------------------------------------------------


def test_wcs_frames_scale_and_bounding_box(noisy):
    models = noisy[0]
    for model in models:
        wcs = model.meta.wcs
        assert wcs.input_frame.name == "detector"
        assert wcs.output_frame.name == "world"
        assert wcs.bounding_box.bounding_box() == ((-0.5, 159.5), (-0.5, 159.5))
        scale = np.sqrt(_local_solid_angle(wcs, 80.0, 80.0)) * ARCSEC_PER_RAD
        assert scale == pytest.approx(0.11, rel=2e-3)
        ra, dec = wcs(10.0, 20.0)
        assert np.allclose(wcs.invert(ra, dec), (10.0, 20.0), atol=1e-6)


def test_layout_dithers_rotations_and_gaps(noisy):
    models = noisy[0]
    by_exposure = {}
    for model in models:
        by_exposure.setdefault(model.meta.observation.exposure, []).append(model)
    reference = by_exposure[1][0]
    for exposure, group in by_exposure.items():
        # Every exposure covers the scene centre.
        covered = [np.all(np.isfinite(m.meta.wcs.invert(80.0, -30.0))) for m in group]
        assert any(covered), exposure
        # Detectors of one exposure do not overlap.
        first, second = group
        x, y = _pixel(second, *first.meta.wcs(np.array([0.0, 159.0, 0.0, 159.0]),
                                               np.array([0.0, 0.0, 159.0, 159.0])))
        assert not np.any((x > -0.5) & (x < 159.5) & (y > -0.5) & (y < 159.5))
        # Small dithers and rotations relative to the first exposure.
        x, y = _pixel(group[0], *reference.meta.wcs(79.5, 79.5))
        assert np.hypot(x - 79.5, y - 79.5) <= 0.1 * 160 * np.sqrt(2) + 1
        assert abs(group[0].meta.wcsinfo.roll_ref - reference.meta.wcsinfo.roll_ref) < 0.15


def test_distortion_is_mild_and_serializable(tmp_path, stars_only):
    # On a full-size detector the distortion moves the corners by a couple of pixels.
    (placement,) = plan_layout(
        np.random.default_rng(0), ra=80.0, dec=-30.0, n_exposures=1, n_detectors=1,
        size=4088, distortion=True,
    )
    distorted = build_gwcs(placement)
    straight = build_gwcs(dataclasses.replace(placement, distortion=0.0))
    corners = np.array([0.0, 4087.0, 4087.0, 0.0]), np.array([0.0, 0.0, 4087.0, 4087.0])
    x, y = straight.invert(*distorted(*corners), with_bounding_box=False)
    shift = np.hypot(x - corners[0], y - corners[1])
    assert np.all((shift > 0.5) & (shift < 5.0))
    centre = straight.invert(*distorted(2043.5, 2043.5), with_bounding_box=False)
    assert np.allclose(centre, 2043.5, atol=1e-6)

    model = stars_only[0][0]
    wcs = model.meta.wcs
    corners = np.array([0.0, 191.0]), np.array([0.0, 191.0])
    assert np.allclose(wcs.invert(*wcs(*corners)), corners, atol=1e-4)
    path = tmp_path / "d_cal.asdf"
    model.save(path)
    with datamodels.open(path) as reloaded:
        assert np.allclose(reloaded.meta.wcs(5.0, 7.0), wcs(5.0, 7.0), rtol=0, atol=1e-10)


# --- Photometry -----------------------------------------------------------------------------


def test_star_flux_is_conserved(stars_only):
    models, sources, images, _ = stars_only
    bright = sources[sources["isolated"] & (sources["mag_ab"] < 21.0)]
    checked = 0
    for model, row in zip(models, images, strict=True):
        conversion = model.meta.photometry.conversion_megajanskys
        for source in bright:
            x, y = _pixel(model, source["ra"], source["dec"])
            if not (8 <= x <= 183 and 8 <= y <= 183):
                continue
            xc, yc, r = int(round(x)), int(round(y)), 8
            window = slice(yc - r, yc + r + 1), slice(xc - r, xc + r + 1)
            if model.dq[window].any():  # a hot pixel adds its own light
                continue
            box = model.data[window] - row["sky_dn_s"]
            omega = _local_solid_angle(model.meta.wcs, x, y)
            flux_njy = box.astype(np.float64).sum() * conversion * omega * 1e15
            assert flux_njy == pytest.approx(source["flux_njy"], rel=5e-3)
            # The truth's pixel-summed surface brightness uses the nominal pixel area.
            assert box.sum() * conversion == pytest.approx(source["flux_mjysr_pix"], rel=5e-3)
            checked += 1
    assert checked >= 4


def test_galaxy_flux_is_conserved():
    models, sources, images, _ = make_image_models(
        n_exposures=1, size=256, seed=8, n_stars=3, n_galaxies=6, noise=False,
        cosmic_ray_rate=0.0,
    )
    model, row = models[0], images[0]
    checked = 0
    for source in sources[sources["kind"] == "galaxy"]:
        x, y = _pixel(model, source["ra"], source["dec"])
        r = int(np.ceil(source["truncation_radius"] / 0.11)) + 4
        if not (r <= x <= 255 - r and r <= y <= 255 - r):
            continue
        if source["nn_distance"] < 2 * source["truncation_radius"] + 2.0:
            continue
        xc, yc = int(round(x)), int(round(y))
        window = slice(yc - r, yc + r + 1), slice(xc - r, xc + r + 1)
        if model.dq[window].any():  # a hot pixel adds its own light
            continue
        box = model.data[window] - row["sky_dn_s"]
        omega = _local_solid_angle(model.meta.wcs, x, y)
        flux_njy = box.astype(np.float64).sum() * row["conversion_megajanskys"] * omega * 1e15
        assert flux_njy == pytest.approx(source["flux_njy"], rel=5e-3)
        checked += 1
    assert checked >= 1


def test_conversion_gives_a_few_hundred_dn_per_s_at_mag_20(noisy):
    conversion = noisy[0][0].meta.photometry.conversion_megajanskys
    total_dn_s = abmag_to_njy(20.0) * 1e-15 / PIXEL_AREA / conversion
    assert 150 < total_dn_s < 800


def test_scene_truth(noisy):
    _, sources, _, _ = noisy
    stars = sources[sources["kind"] == "star"]
    galaxies = sources[sources["kind"] == "galaxy"]
    assert len(stars) >= 3 and len(galaxies) >= 1
    assert np.all((sources["mag_ab"] >= 17) & (sources["mag_ab"] <= 25))
    assert np.all(np.isfinite(galaxies["r_eff"])) and np.all(np.isnan(stars["r_eff"]))
    assert np.allclose(sources["flux_njy"], 3631e9 * 10 ** (-0.4 * sources["mag_ab"]))
    # The isolated flag matches the positions.
    cosd = np.cos(np.deg2rad(-30.0))
    east = (sources["ra"] - 80.0) * cosd * 3600
    north = (sources["dec"] + 30.0) * 3600
    distance = np.hypot(east[:, None] - east[None, :], north[:, None] - north[None, :])
    np.fill_diagonal(distance, np.inf)
    assert np.array_equal(sources["isolated"], distance.min(axis=1) > 2.0)
    # Guaranteed bright stars: mag 18-21, 3" clear, 10 px inside some image.
    clear = (sources["kind"] == "star") & (distance.min(axis=1) >= 3.0)
    clear &= (sources["mag_ab"] >= 18) & (sources["mag_ab"] <= 21)
    inside = np.zeros(len(sources), dtype=bool)
    for model in noisy[0]:
        x, y = _pixel(model, sources["ra"], sources["dec"])
        inside |= (x >= 9.5) & (x <= 149.5) & (y >= 9.5) & (y <= 149.5)
    assert (clear & inside).sum() >= 3


def test_default_counts_scale_with_area():
    small = make_image_models(n_exposures=1, size=128, seed=1)[1]
    large = make_image_models(n_exposures=1, size=256, seed=1, cosmic_ray_rate=0.0)[1]
    assert len(large) > 3 * len(small)


# --- Sky, noise and defects -----------------------------------------------------------------


def test_sky_levels(noisy, clean):
    models, _, images, _ = noisy
    # Every image has a sky of its own: the exposure's, scattered by about 10 %
    # from one detector to the next.
    assert len(set(np.round(images["sky_dn_s"], 6))) == len(images)
    assert np.all((images["sky_dn_s"] >= 0.3 * 0.75) & (images["sky_dn_s"] <= 1.5 * 1.25))
    assert np.allclose(images["sky_mjysr"], images["sky_dn_s"] * images["conversion_megajanskys"])
    for model, clean_model, row in zip(models, clean[0], images, strict=True):
        # Where no source light falls the noise-free image is exactly the sky.
        assert np.mean(np.abs(clean_model.data - row["sky_dn_s"]) < 1e-5) > 0.3
        good = model.dq == 0
        assert np.median(model.data[good]) == pytest.approx(row["sky_dn_s"], abs=0.01)


@pytest.mark.parametrize("given, expected", [
    ([0.5, 1.25], [0.5, 0.5, 1.25, 1.25]),  # one per exposure, shared by its detectors
    ([0.5, 0.6, 1.25, 1.0], [0.5, 0.6, 1.25, 1.0]),  # one per image
])
def test_sky_levels_can_be_given(given, expected):
    models, _, images, _ = make_image_models(
        n_exposures=2, n_detectors=2, size=64, seed=0, sky_levels=given, noise=False,
        cosmic_ray_rate=0
    )
    assert list(images["sky_dn_s"]) == expected
    for model, level in zip(models, expected, strict=True):
        assert np.median(model.data) == pytest.approx(level, abs=1e-4)


def test_one_sky_per_exposure_without_detector_scatter():
    images = make_image_models(n_exposures=3, n_detectors=2, size=64, seed=0,
                               detector_sky_scatter=0.0)[2]
    sky = np.asarray(images["sky_dn_s"]).reshape(3, 2)
    assert np.all(sky[:, 0] == sky[:, 1]) and len(set(sky[:, 0])) == 3


def test_error_matches_variances_and_noise(noisy, clean):
    models, _, _, cosmic_rays = noisy
    for model, clean_model in zip(models, clean[0], strict=True):
        variance = _variance(model)
        assert np.allclose(model.err.astype(np.float64) ** 2, variance, rtol=5e-3)
        # Residual noise, in units of the stated error, has unit scatter.
        hit = np.zeros(model.data.shape, dtype=bool)
        mine = cosmic_rays[cosmic_rays["filename"] == model.meta.filename]
        hit[mine["y"], mine["x"]] = True
        good = (model.dq == 0) & ~hit
        residual = (model.data - clean_model.data)[good] / np.sqrt(variance[good])
        assert np.std(residual) == pytest.approx(1.0, abs=0.05)
        assert abs(np.mean(residual)) < 0.05
        # The pixel-to-pixel scatter of a source-free region matches sqrt(var).
        sky = np.median(clean_model.data)
        empty = good & (np.abs(clean_model.data - sky) < 1e-5)
        assert empty.sum() > 1000
        scatter = np.std(model.data[empty] - sky)
        assert scatter == pytest.approx(np.median(np.sqrt(variance[empty])), rel=0.1)


def test_variance_components(noisy):
    model = noisy[0][0]
    good = model.dq == 0
    assert np.all(model.var_rnoise[good] > 0)
    assert np.all(model.var_flat[good] >= 0)
    # Sky-dominated pixels: Poisson variance of sky electrons (gain 2 e/DN, 139.8 s).
    sky = noisy[2]["sky_dn_s"][0]
    assert np.median(model.var_poisson[good]) == pytest.approx(sky / (2 * 139.8), rel=0.05)


def test_cosmic_rays_are_bright_unflagged_and_single_exposure(noisy, clean):
    models, _, _, cosmic_rays = noisy
    clean_models = clean[0]
    by_name = {m.meta.filename: (m, c) for m, c in zip(models, clean_models, strict=True)}
    assert len(cosmic_rays) > 0
    assert set(cosmic_rays["filename"]) <= set(by_name)
    for hit in cosmic_rays:
        model, clean_model = by_name[hit["filename"]]
        x, y = hit["x"], hit["y"]
        sigma = float(model.err[y, x])
        excess = float(model.data[y, x]) - float(clean_model.data[y, x])
        assert hit["value_dn_s"] >= 19 * sigma
        assert excess == pytest.approx(hit["value_dn_s"], abs=6 * sigma + 1e-3)
        assert model.dq[y, x] == 0
        # The same sky position in other exposures shows nothing unusual.
        ra, dec = model.meta.wcs(float(x), float(y))
        for other, other_clean in zip(models, clean_models, strict=True):
            if other.meta.observation.exposure == model.meta.observation.exposure:
                continue
            ox, oy = (int(round(float(v))) for v in _pixel(other, ra, dec))
            if not (0 <= ox < 160 and 0 <= oy < 160) or other.dq[oy, ox]:
                continue
            theirs = cosmic_rays[cosmic_rays["filename"] == other.meta.filename]
            if np.any((theirs["x"] == ox) & (theirs["y"] == oy)):
                continue
            other_excess = float(other.data[oy, ox]) - float(other_clean.data[oy, ox])
            assert abs(other_excess) < 6 * float(other.err[oy, ox])


def test_hot_pixels_are_flagged(noisy):
    models = noisy[0]
    for model in models:
        flagged = model.dq != 0
        assert 3 <= flagged.sum() < 20
        assert np.all(model.dq[flagged] & HOT == HOT)
        assert np.all(model.data[flagged] > 10)
    # Hot pixels belong to the detector: the same pixels in every exposure.
    detector_1 = [m for m in models if m.meta.instrument.detector == "WFI01"]
    assert np.array_equal(detector_1[0].dq, detector_1[1].dq)


# --- Identifiers and determinism ------------------------------------------------------------


def test_observation_ids(noisy):
    models = noisy[0]
    ids = {}
    for model in models:
        ids.setdefault(model.meta.observation.exposure, set()).add(
            model.meta.observation.observation_id
        )
    assert all(len(v) == 1 for v in ids.values())
    assert len({next(iter(v)) for v in ids.values()}) == 3
    names = [m.meta.filename for m in models]
    assert names[:2] == [
        "r0000101001001001001_0001_wfi01_f158_cal.asdf",
        "r0000101001001001001_0001_wfi02_f158_cal.asdf",
    ]
    assert [m.meta.instrument.detector for m in models[:2]] == ["WFI01", "WFI02"]


def test_same_seed_same_arrays(noisy):
    again = make_image_models(**LAYOUT)
    for first, second in zip(noisy[0], again[0], strict=True):
        for name in ("data", "dq", "err", "var_poisson", "var_rnoise", "var_flat"):
            assert np.array_equal(getattr(first, name), getattr(second, name))
    other = make_image_models(**{**LAYOUT, "seed": 12})
    assert not np.array_equal(noisy[0][0].data, other[0][0].data)


# --- Pointing errors and the reference catalogue -----------------------------------------

# Noise-free stars on two exposures of a 2-detector instrument, with and without
# pointing errors: the second detector sits off the boresight, so the roll error
# moves it more than the first.
POINTED = {"n_exposures": 2, "n_detectors": 2, "size": 128, "seed": 21, "n_galaxies": 0,
           "n_stars": 15, "noise": False, "cosmic_ray_rate": 0.0, "distortion": True}
POINTING_ERROR, ROLL_ERROR = 0.3, 0.01


@pytest.fixture(scope="module")
def pointed():
    true = make_image_models(**POINTED)
    wrong = make_image_models(**POINTED, pointing_error=POINTING_ERROR, roll_error=ROLL_ERROR)
    return true, wrong


def _rotate(angle_deg, xi, eta):
    """Turn tangent-plane offsets by a position-angle change (north through east)."""
    a = np.deg2rad(angle_deg)
    return np.cos(a) * xi + np.sin(a) * eta, -np.sin(a) * xi + np.cos(a) * eta


def test_pointing_error_changes_no_array(pointed):
    (true_models, true_sources, _, _), (models, sources, _, _) = pointed
    assert np.array_equal(np.asarray(true_sources["ra"]), np.asarray(sources["ra"]))
    for true, model in zip(true_models, models, strict=True):
        for name in ("data", "dq", "err", "var_poisson", "var_rnoise", "var_flat"):
            assert np.array_equal(getattr(true, name), getattr(model, name))


def test_zero_pointing_error_gives_identical_images(noisy):
    again = make_image_models(**LAYOUT, pointing_error=0.0, roll_error=0.0)
    for first, second in zip(noisy[0], again[0], strict=True):
        for name in ("data", "dq", "err", "var_poisson", "var_rnoise", "var_flat"):
            assert np.array_equal(getattr(first, name), getattr(second, name))
        assert first.meta.wcsinfo == second.meta.wcsinfo
        x, y = np.array([0.0, 80.0, 159.0]), np.array([3.0, 90.0, 159.0])
        assert np.array_equal(first.meta.wcs(x, y), second.meta.wcs(x, y))
    images = noisy[2]
    for name in ("pointing_error_ra", "pointing_error_dec", "roll_error"):
        assert np.all(images[name] == 0.0)


def test_pointing_error_truth_is_per_exposure(pointed):
    images = pointed[1][2]
    assert images["pointing_error_ra"].unit == "arcsec"
    assert images["roll_error"].unit == "deg"
    error = np.hypot(images["pointing_error_ra"], images["pointing_error_dec"])
    assert np.allclose(error, POINTING_ERROR, rtol=0, atol=1e-12)
    assert np.allclose(np.abs(images["roll_error"]), ROLL_ERROR, rtol=0, atol=1e-15)
    for name in ("pointing_error_ra", "pointing_error_dec", "roll_error"):
        by_exposure = np.asarray(images[name]).reshape(2, 2)
        assert np.all(by_exposure[:, 0] == by_exposure[:, 1])  # detectors move together
    assert images["pointing_error_ra"][0] != images["pointing_error_ra"][2]


def test_recorded_wcs_is_off_by_the_stated_error(pointed):
    (true_models, _, _, _), (models, _, images, _) = pointed
    x, y = (a.ravel().astype(float) for a in np.meshgrid([0, 40, 127], [0, 90, 127]))
    for true, model, row in zip(true_models, models, images, strict=True):
        true_v1 = (true.meta.pointing.ra_v1, true.meta.pointing.dec_v1)
        wrong_v1 = (model.meta.pointing.ra_v1, model.meta.pointing.dec_v1)
        # The recorded boresight is displaced by the stated error...
        east, north = to_tangent_plane(*wrong_v1, *true_v1)
        assert east == pytest.approx(row["pointing_error_ra"], abs=1e-7)
        assert north == pytest.approx(row["pointing_error_dec"], abs=1e-7)
        assert model.meta.pointing.pa_v3 == pytest.approx(
            (true.meta.pointing.pa_v3 + row["roll_error"]) % 360, abs=1e-9)
        # ...and every pixel keeps its place on the focal plane, turned by the roll
        # error about the boresight: exact, including the distortion.
        xi, eta = to_tangent_plane(*true.meta.wcs(x, y), *true_v1)
        xi_r, eta_r = to_tangent_plane(*model.meta.wcs(x, y), *wrong_v1)
        expected = _rotate(row["roll_error"], xi, eta)
        assert np.allclose(xi_r, expected[0], rtol=0, atol=1e-6)
        assert np.allclose(eta_r, expected[1], rtol=0, atol=1e-6)
        # On the boresight detector the shift is the pointing error itself.
        if model.meta.instrument.detector == "WFI01":
            ra0, dec0 = true.meta.wcs(63.5, 63.5)
            ra1, dec1 = model.meta.wcs(63.5, 63.5)
            shift = np.hypot((ra1 - ra0) * np.cos(np.deg2rad(dec0)), dec1 - dec0) * 3600
            assert shift == pytest.approx(POINTING_ERROR, abs=1e-3)
        assert model.meta.wcsinfo.s_region != true.meta.wcsinfo.s_region


def _centroid(data, x, y, r=4):
    xc, yc = int(round(x)), int(round(y))
    box = data[yc - r:yc + r + 1, xc - r:xc + r + 1].astype(np.float64)
    box = box - np.median(data)
    yy, xx = np.mgrid[yc - r:yc + r + 1, xc - r:xc + r + 1]
    return (box * xx).sum() / box.sum(), (box * yy).sum() / box.sum()


def test_stars_land_where_the_true_wcs_says(pointed):
    (true_models, _, _, _), (models, sources, _, _) = pointed
    bright = sources[(sources["kind"] == "star") & sources["isolated"]
                     & (sources["mag_ab"] < 21.0)]
    checked = 0
    for true, model in zip(true_models, models, strict=True):
        for star in bright:
            x, y = _pixel(true, star["ra"], star["dec"])
            if not (8 <= x <= 119 and 8 <= y <= 119) or model.dq[
                    int(y) - 5:int(y) + 6, int(x) - 5:int(x) + 6].any():
                continue
            xc, yc = _centroid(model.data, x, y)
            assert np.hypot(xc - x, yc - y) < 0.05
            # Where the recorded WCS puts the star is off by about the error.
            xw, yw = _pixel(model, star["ra"], star["dec"])
            assert np.hypot(xc - xw, yc - yw) * 0.11 > 0.6 * POINTING_ERROR
            checked += 1
    assert checked >= 2


def test_refcat_is_written_and_reads_back(written):
    assert written.refcat_path.name == "sim_f158_refcat.ecsv"
    refcat = Table.read(written.refcat_path)  # format from the extension
    stars = written.sources[written.sources["kind"] == "star"]
    assert len(refcat) == len(stars) > 0
    assert {"ra", "dec", "mag", "flux"} <= set(refcat.colnames)
    assert str(refcat["ra"].unit) == "deg" and str(refcat["dec"].unit) == "deg"
    assert np.array_equal(refcat["ra"], stars["ra"])
    assert np.array_equal(refcat["dec"], stars["dec"])
    assert np.array_equal(refcat["mag"], stars["mag_ab"])
    images = Table.read(written.truth_images_path)
    assert {"pointing_error_ra", "pointing_error_dec", "roll_error"} <= set(images.colnames)


def test_cli_pointing_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="romosaic")
    add_cli_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["simulate", str(tmp_path), "--n-exposures", "2", "--size", "64", "--seed", "2",
         "--pointing-error", "0.5", "--roll-error", "0.02", "--no-noise"]
    )
    assert (args.pointing_error, args.roll_error) == (0.5, 0.02)
    assert args.run(args) == 0
    images = Table.read(tmp_path / "sim_f158_truth_images.ecsv")
    assert np.allclose(np.hypot(images["pointing_error_ra"], images["pointing_error_dec"]), 0.5)
    assert np.allclose(np.abs(images["roll_error"]), 0.02)
    assert (tmp_path / "sim_f158_refcat.ecsv").is_file()


@pytest.mark.parametrize("option", ["pointing_error", "roll_error"])
def test_negative_pointing_errors_are_input_errors(option):
    with pytest.raises(RomosaicInputError, match=option):
        make_image_models(n_exposures=1, size=64, **{option: -0.1})


# -- the diffraction PSF (rings and spikes) -----------------------------------------------------


def test_airy_psf_has_roman_like_core_rings_and_spikes():
    from romosaic.simulate.psf import airy_psf

    psf = airy_psf(0.11)
    assert 0.13 <= psf.fwhm <= 0.16
    # Pixel-integrated fractions over a pixel grid hold all the light.
    centre = psf.table.shape[0] // 2
    phase = centre % psf.oversampling
    assert psf.table[phase::psf.oversampling, phase::psf.oversampling].sum() == \
        pytest.approx(1.0, abs=0.01)
    # Pixels of 0.044": the rings resolved at a quarter of the cost of 0.022".
    fine = airy_psf(0.044)
    radii = np.arange(0, 30) / 2.0
    across = fine.sample(radii * np.cos(np.pi / 12), radii * np.sin(np.pi / 12))
    # A dark ring, then a bright one, away from the spikes.
    first_dark = int(np.argmin(across[3:13])) + 3
    assert across[first_dark + 1:first_dark + 10].max() > 2 * across[first_dark]
    # The spikes (perpendicular to the struts, along x) are brighter than
    # the rings between them, 1-2" out.
    far = np.arange(45, 90) / 2.0
    assert fine.sample(far, 0 * far).mean() > 2 * fine.sample(far * np.cos(np.pi / 12),
                                                             far * np.sin(np.pi / 12)).mean()


def test_airy_scene_stars_keep_their_flux_and_have_wings():
    models, sources, _, _ = make_image_models(n_exposures=1, size=128, seed=4, psf="airy",
                                              noise=False, cosmic_ray_rate=0.0)
    gaussian, _, _, _ = make_image_models(n_exposures=1, size=128, seed=4, noise=False,
                                          cosmic_ray_rate=0.0)
    airy_total = float(np.sum(models[0].data)) - 0.0
    gauss_total = float(np.sum(gaussian[0].data))
    # The same sources and sky: the totals agree to the light beyond the edges.
    assert airy_total == pytest.approx(gauss_total, rel=0.02)
    # The brightest star's wings: light 1" away is far above the Gaussian's.
    stars = sources[sources["kind"] == "star"]
    brightest = stars[np.argmax(stars["flux_njy"])]
    x, y = models[0].meta.wcs.invert(brightest["ra"], brightest["dec"])
    ix, iy = int(round(float(x))), int(round(float(y)))
    ring = (slice(iy - 12, iy + 13), slice(ix - 12, ix + 13))
    sky = np.median(models[0].data)
    assert np.sum(models[0].data[ring] - sky) > 0
    yy, xx = np.mgrid[ring]
    outer = np.hypot(yy - y, xx - x) > 8
    assert np.sum((models[0].data[ring] - sky)[outer]) > \
        5 * abs(np.sum((gaussian[0].data[ring] - np.median(gaussian[0].data))[outer]))


def test_star_magnitude_range_and_bad_psf():
    _, sources, _, _ = make_image_models(n_exposures=1, size=128, seed=1,
                                         star_mag_range=(26.0, 27.0))
    stars = sources[sources["kind"] == "star"]
    faint = stars["mag_ab"] >= 26.0
    assert faint.sum() >= len(stars) - max(3, int(round(0.1 * len(stars))))
    assert np.all(stars["mag_ab"][faint] <= 27.0)
    with pytest.raises(RomosaicInputError, match="unknown psf") as error:
        make_image_models(n_exposures=1, size=64, psf="moffat")
    assert "\n" not in str(error.value)
    with pytest.raises(RomosaicInputError, match="star_mag_range"):
        make_image_models(n_exposures=1, size=64, star_mag_range=(25.0, 20.0))


def test_cli_airy_psf_and_star_magnitudes(tmp_path):
    parser = argparse.ArgumentParser(prog="romosaic")
    add_cli_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["simulate", str(tmp_path), "--n-exposures", "1", "--size", "64", "--psf", "airy",
         "--star-mags", "20", "22", "--output-pixel-scale", "0.055"])
    assert args.psf == "airy" and args.star_mags == [20.0, 22.0]
    assert args.run(args) == 0
    sources = Table.read(tmp_path / "sim_f158_truth_sources.ecsv")
    stars = sources[sources["kind"] == "star"]
    assert np.all((stars["mag_ab"] >= 18.0) & (stars["mag_ab"] <= 22.0))
    pars = tmp_path / "sim_f158_roman_mos_pars.asdf"
    import asdf

    with asdf.open(pars) as af:
        steps = {step["name"]: step["parameters"] for step in af["steps"]}
        assert steps["resample"]["pixel_scale"] == 0.055
