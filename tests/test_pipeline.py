"""The whole pipeline on simulated data: photometry, units, on_disk, the commands."""

import concurrent.futures
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas
import pytest
import roman_datamodels.datamodels as rdm
from astropy.table import Table

from romosaic.pipeline import MosaicPipeline
from romosaic.simulate import make_image_models, simulate_association

from .conftest import make_image_model

REPO = Path(__file__).resolve().parents[1]
STRUN = str(Path(sys.executable).parent / "strun")
ARRAYS = ("data", "err", "weight", "context", "var_rnoise", "var_poisson")


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def clean_sim(tmp_path_factory):
    """Noise-free exposures with one sky level: photometry is exact up to the algorithm."""
    out = tmp_path_factory.mktemp("clean")
    return simulate_association(out, n_exposures=3, n_detectors=1, size=384, seed=3,
                                noise=False, cosmic_ray_rate=0.0, sky_levels=[0.8] * 3)


@pytest.fixture(scope="module")
def noisy_sim(tmp_path_factory):
    """Default realism: noise, cosmic rays, hot pixels, different skies, two detectors."""
    out = tmp_path_factory.mktemp("noisy")
    return simulate_association(out, n_exposures=3, n_detectors=2, size=256, seed=5)


# For tests of the mosaic alone: the catalog (with its PSF fit) is tested
# elsewhere and would only add time.
NO_CATALOG = {"source_catalog": {"skip": True}}


def _run(asn_path, output_dir, **kwargs):
    mosaic, catalog, segmentation = MosaicPipeline.call(
        str(asn_path), save_results=True, output_dir=str(output_dir), **kwargs)
    return mosaic, catalog, segmentation


def _star_fluxes_njy(mosaic, sources, sky_mjysr, radius_arcsec=0.7):
    """Aperture sums of isolated stars fully inside the mosaic, in nJy."""
    scale_deg = mosaic.meta.wcsinfo.pixel_scale
    pixel_sr = (math.radians(scale_deg)) ** 2
    radius = radius_arcsec / (scale_deg * 3600)
    ny, nx = mosaic.data.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    measured, truth = [], []
    stars = sources[(sources["kind"] == "star") & sources["isolated"]]
    x, y = mosaic.meta.wcs.invert(np.asarray(stars["ra"]), np.asarray(stars["dec"]))
    for star, xc, yc in zip(stars, x, y, strict=True):
        if not (radius + 2 < xc < nx - radius - 3 and radius + 2 < yc < ny - radius - 3):
            continue
        box = (slice(int(yc - radius - 2), int(yc + radius + 3)),
               slice(int(xc - radius - 2), int(xc + radius + 3)))
        inside = (xx[box] - xc) ** 2 + (yy[box] - yc) ** 2 <= radius**2
        # Drizzling pieces a star together from differently pixelated images;
        # only where the same exposures cover all of it is its flux exact.
        context = mosaic.context[0][box][inside]
        if context[0] == 0 or np.any(context != context[0]):
            continue
        flux_mjy = np.sum(mosaic.data[box][inside] - sky_mjysr) * pixel_sr
        measured.append(flux_mjy * 1e15)
        truth.append(star["flux_njy"])
    return np.array(measured), np.array(truth)


def test_isolated_star_fluxes_match_truth(clean_sim, tmp_path):
    mosaic, catalog, segmentation = _run(clean_sim.asn_path, tmp_path)
    assert isinstance(catalog, rdm.MosaicSourceCatalogModel)
    assert isinstance(segmentation, rdm.MosaicSegmentationMapModel)
    sky = float(clean_sim.images["sky_mjysr"][0])
    measured, truth = _star_fluxes_njy(mosaic, clean_sim.sources, sky)
    assert len(measured) >= 10
    ratio = measured / truth
    # The aperture holds all but ~1e-4 of a 0.15" Gaussian: every star within 0.5%.
    assert np.all(np.abs(ratio - 1) < 0.005), ratio


def test_surface_brightness_is_preserved(clean_sim, tmp_path):
    mosaic, _, _ = _run(clean_sim.asn_path, tmp_path, steps=NO_CATALOG)
    sky = float(clean_sim.images["sky_mjysr"][0])
    covered = mosaic.weight > 0
    # Most pixels are empty sky, so the median is the sky level in MJy/sr.
    assert np.median(mosaic.data[covered]) == pytest.approx(sky, rel=2e-4)
    assert mosaic.meta.cal_step.flux == "COMPLETE"
    assert mosaic.meta.cal_step.resample == "COMPLETE"


@pytest.mark.parametrize(("pixfrac", "ratio"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.5), (0.7, 0.5)])
def test_flux_conserved_for_pixfrac_and_scale(clean_sim, tmp_path, pixfrac, ratio):
    mosaic, _, _ = _run(clean_sim.asn_path, tmp_path, steps={
        "resample": {"pixfrac": pixfrac, "pixel_scale_ratio": ratio}, **NO_CATALOG})
    assert mosaic.meta.resample.pixfrac == pixfrac
    assert mosaic.meta.resample.pixel_scale_ratio == pytest.approx(ratio, rel=1e-6)
    sky = float(clean_sim.images["sky_mjysr"][0])
    measured, truth = _star_fluxes_njy(mosaic, clean_sim.sources, sky)
    assert len(measured) >= 10
    assert np.median(measured / truth) == pytest.approx(1.0, abs=0.003)
    assert np.all(np.abs(measured / truth - 1) < 0.01)


def test_product_validates_and_inputs_untouched(noisy_sim, tmp_path):
    before = {p: _digest(p) for p in noisy_sim.cal_paths}
    _run(noisy_sim.asn_path, tmp_path)
    path = tmp_path / f"{noisy_sim.product_name}_coadd.asdf"
    with rdm.open(path) as model:
        assert isinstance(model, rdm.MosaicModel)
        model.validate()
        assert model.meta.filename == path.name
        assert model.context.shape[0] == 1
        assert model.meta.resample.pointings == 3
        assert len(model.meta.resample.members) == 6
        assert model.meta.coadd_info.exposure_time > 0
        assert model.meta.instrument.optical_element == "F158"
        assert model.data.dtype == np.float32 and model.err.dtype == np.float32
    assert {p: _digest(p) for p in noisy_sim.cal_paths} == before
    stem = noisy_sim.product_name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, f"{stem}_cat.parquet", f"{stem}_segm.asdf"])
    # The catalog opens in the usual tools, units and descriptions intact.
    catalog = Table.read(tmp_path / f"{stem}_cat.parquet")
    assert len(catalog) > 0
    assert catalog["kron_flux"].unit == "nJy" and catalog["ra_centroid"].unit == "deg"
    assert "Kron" in catalog["kron_flux"].description
    frame = pandas.read_parquet(tmp_path / f"{stem}_cat.parquet")
    assert len(frame) == len(catalog)
    np.testing.assert_array_equal(frame["kron_flux"].to_numpy(), np.asarray(catalog["kron_flux"]))


def test_on_disk_gives_identical_arrays(noisy_sim, tmp_path):
    in_memory, _, _ = _run(noisy_sim.asn_path, tmp_path / "memory", steps=NO_CATALOG)
    on_disk, _, _ = _run(noisy_sim.asn_path, tmp_path / "disk", on_disk=True,
                         steps=NO_CATALOG)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(in_memory, name), getattr(on_disk, name),
                                      err_msg=name)
    # The temporary directory is gone.
    assert not list((tmp_path / "disk").glob("romosaic-tmp-*"))


# -- the command line ---------------------------------------------------------------


def _strun(args, cwd, env):
    return subprocess.run([STRUN, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _strun_each(arg_lists, cwd, env):
    """`_strun` for each argument list, two at a time (each run mostly imports)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: _strun(args, cwd, env), arg_lists))


def test_strun_association_single_file_and_parameter_file(noisy_sim, tmp_path, clean_env):
    single = noisy_sim.cal_paths[0]
    runs = _strun_each([
        ["roman_mos", noisy_sim.asn_path, "--output_dir", tmp_path / "a"],
        ["roman_mos", single, "--output_dir", tmp_path / "b"],
        [REPO / "config" / "roman_mos.asdf", noisy_sim.asn_path, "--output_dir", tmp_path / "c",
         "--steps.resample.pixfrac=0.8"],
    ], tmp_path, clean_env)
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]

    assert isinstance(rdm.open(tmp_path / "a" / "sim_f158_coadd.asdf"), rdm.MosaicModel)
    expected = tmp_path / "b" / (single.name.replace("_cal.asdf", "_coadd.asdf"))
    assert isinstance(rdm.open(expected), rdm.MosaicModel)
    with rdm.open(tmp_path / "c" / "sim_f158_coadd.asdf") as model:
        assert model.meta.resample.pixfrac == 0.8


def test_config_file_through_python(noisy_sim, tmp_path, monkeypatch):
    import asdf

    # A user's copy of the shipped parameter file, with one value changed.
    with asdf.open(REPO / "config" / "roman_mos.asdf") as af:
        tree = {"class": af["class"], "name": af["name"],
                "parameters": dict(af["parameters"]),
                "steps": [{"class": step["class"], "name": step["name"],
                           "parameters": dict(step["parameters"])} for step in af["steps"]]}
    for step in tree["steps"]:
        if step["name"] == "resample":
            step["parameters"]["pixfrac"] = 0.6
    pars = tmp_path / "my_pars.asdf"
    asdf.AsdfFile(tree).write_to(pars)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    mosaic, _, _ = MosaicPipeline.call(str(noisy_sim.asn_path), config_file=str(pars))
    assert isinstance(mosaic, rdm.MosaicModel)
    assert mosaic.meta.resample.pixfrac == 0.6
    assert not list(work.iterdir())  # save_results is off by default in Python


def _bad_inputs(sim, directory):
    """(name, input path, expected message) for each kind of bad input."""
    first = sim.cal_paths[0]
    member = f"../{sim.asn_path.parent.name}/{first.name}"
    mosaic_path = directory / "wrong_cal.asdf"
    rdm.MosaicModel.create_fake_data(shape=(8, 8)).save(mosaic_path)
    def product(members, name="p"):
        return json.dumps({"products": [{"name": name, "members": members}]})

    cases = {
        "not_json": ("{oops", "not valid JSON"),
        "no_products": ('{"products": []}', "no products"),
        "no_science": (product([{"expname": member, "exptype": "background"}]),
                       "no science members"),
        "missing_member": (product([{"expname": "gone_cal.asdf"}]),
                           "member file not found: gone_cal.asdf"),
        "duplicate": (product([{"expname": member}, {"expname": member}]),
                      "listed more than once"),
        "bad_name": (product([{"expname": member}], name="../p"), "not a plain file name"),
    }
    inputs = []
    for name, (text, message) in cases.items():
        path = directory / f"{name}_asn.json"
        path.write_text(text)
        inputs.append((name, path, message))
    inputs.append(("wrong_type", mosaic_path, "MosaicModel"))
    return inputs


def test_bad_inputs_fail_cleanly_through_strun(noisy_sim, tmp_path, clean_env):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    out_dir = tmp_path / "out"
    cases = list(_bad_inputs(noisy_sim, bad_dir))
    runs = _strun_each([["roman_mos", path, "--output_dir", out_dir] for _, path, _ in cases],
                       tmp_path, clean_env)
    for (name, path, message), run in zip(cases, runs, strict=True):
        output = run.stdout + run.stderr
        assert run.returncode == 2, (name, output[-3000:])
        errors = [line for line in run.stderr.splitlines() if " - ERROR - " in line]
        assert len(errors) == 1, (name, errors)
        assert message in errors[0] and path.name in errors[0], (name, errors)
        assert "Traceback" not in output, (name, output[-3000:])
        assert not list(out_dir.glob("*coadd*")), name
        assert not list(out_dir.glob("romosaic-tmp-*")), name


def test_bad_inputs_raise_specific_errors_in_python(noisy_sim, tmp_path):
    from romosaic.errors import RomosaicInputError

    for name, path, message in _bad_inputs(noisy_sim, tmp_path):
        with pytest.raises(RomosaicInputError, match=message):
            _run(path, tmp_path / "out")
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir()), name


def test_context_of_a_33_image_association(tmp_path):
    models, _, _, _ = make_image_models(n_exposures=33, size=64, seed=11, cosmic_ray_rate=0.0)
    images = [(m.meta.wcs, m.dq.copy()) for m in models]
    # Outlier detection would (rightly) flag a few pixels; this test is about context.
    mosaic, _, _ = MosaicPipeline.call(models, steps={"outlier_detection": {"skip": True}})
    assert mosaic.context.shape[0] == 2
    ny, nx = mosaic.data.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = mosaic.meta.wcs(xx, yy)
    for index, (wcs, dq) in enumerate(images):
        bit = (mosaic.context[index // 32] >> (index % 32)) & 1
        x, y = wcs.invert(ra, dec, with_bounding_box=False)
        good = (dq & 1) == 0
        well_inside = (x > 1) & (x < 62) & (y > 1) & (y < 62)
        ix = np.clip(np.rint(x), 0, 63).astype(int)
        iy = np.clip(np.rint(y), 0, 63).astype(int)
        # Every output pixel well inside a good part of input i carries bit i;
        # none clearly outside input i does.
        assert np.all(bit[well_inside & good[iy, ix]] == 1), index
        outside = (x < -1.5) | (x > 64.5) | (y < -1.5) | (y > 64.5)
        assert np.all(bit[outside] == 0), index
        assert well_inside.sum() > 2000


def test_skipping_resample_is_refused_before_any_step_runs(noisy_sim, tmp_path):
    from romosaic.errors import RomosaicInputError

    before = [path.read_bytes() for path in noisy_sim.cal_paths]
    with pytest.raises(RomosaicInputError, match="steps.resample.skip=True leaves no mosaic"):
        MosaicPipeline.call(str(noisy_sim.asn_path), save_results=True,
                            output_dir=str(tmp_path), steps={"resample": {"skip": True}})
    assert not list(tmp_path.iterdir())
    assert [path.read_bytes() for path in noisy_sim.cal_paths] == before


def test_on_disk_temporary_directory_removed_after_an_error(noisy_sim, tmp_path):
    other = make_image_model(shape=(32, 32), filename="other_cal.asdf", filter_name="F062",
                             observation_id="elsewhere")
    other_path = noisy_sim.asn_path.parent / "other_cal.asdf"
    other.save(other_path)
    files = [str(noisy_sim.cal_paths[0]), str(other_path)]
    with pytest.raises(Exception, match="different filters"):
        MosaicPipeline.call(files, on_disk=True, save_results=True, output_dir=str(tmp_path))
    assert not list(tmp_path.glob("romosaic-tmp-*"))
    assert not list(tmp_path.glob("*coadd*"))
    other_path.unlink()


def test_no_network_access_during_a_run(noisy_sim, tmp_path, monkeypatch):
    import socket

    opened = []

    def refuse(*args, **kwargs):
        opened.append(args)
        raise OSError("romosaic must not open network connections")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("CRDS_SERVER_URL", raising=False)
    monkeypatch.delenv("STPIPE_DISABLE_CRDS_STEPPARS", raising=False)
    mosaic, catalog, segmentation = _run(noisy_sim.asn_path, tmp_path)
    assert opened == []
    assert len(catalog.source_catalog) > 10
    assert segmentation.data.max() > 0
