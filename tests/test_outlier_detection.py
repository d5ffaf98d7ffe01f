"""Outlier detection: cosmic rays flagged, bright stars kept, on_disk, options."""

import warnings

import numpy as np
import pytest
from roman_datamodels.dqflags import pixel

from romosaic.errors import RomosaicInputError
from romosaic.library import ModelLibrary
from romosaic.outlier import nanmedian_stack, outlier_mask
from romosaic.outlier.median import sorting_network
from romosaic.simulate import make_image_models, simulate_association
from romosaic.simulate.checks import aperture_sum, cosmic_ray_recovery
from romosaic.steps import FluxStep, OutlierDetectionStep, ResampleStep, SkyMatchStep

OUTLIER = int(pixel.OUTLIER)


def _prepared(models):
    """Flux-converted, sky-matched library of in-memory models."""
    return SkyMatchStep.call(FluxStep.call(ModelLibrary(models)))


@pytest.mark.parametrize("n_exposures", [4, 8])
def test_cosmic_rays_are_flagged_and_absent_from_the_coadd(n_exposures):
    size = 384
    models, _, _, cosmic_rays = make_image_models(
        n_exposures=n_exposures, n_detectors=2, size=size, seed=11, cosmic_ray_rate=3e-4)
    library = OutlierDetectionStep.call(_prepared(models))
    flagged, eligible = cosmic_ray_recovery(library, cosmic_rays)
    assert eligible > 500
    assert flagged / eligible >= 0.995, (flagged, eligible)
    # Flagged pixels carry DO_NOT_USE too, so resample leaves them out: the
    # coadd holds no pixel far above its neighbours at a cosmic ray's place.
    with library:
        model = library.borrow(0)
        assert np.all((model.dq[model.dq & OUTLIER > 0] & pixel.DO_NOT_USE) > 0)
        assert model.meta.cal_step.outlier_detection == "COMPLETE"
        library.shelve(model, 0, modify=False)
    mosaic = ResampleStep.call(library)
    hits = cosmic_rays[cosmic_rays["value_dn_s"] > 5.0]
    first = hits[hits["filename"] == hits["filename"][0]]
    wcs = next(model.meta.wcs for _, model in library.iter_models()
               if model.meta.filename == first["filename"][0])
    sky_median = np.nanmedian(mosaic.data)
    sky_spread = np.nanpercentile(mosaic.data, 84) - sky_median
    sky = wcs(np.asarray(first["x"], float), np.asarray(first["y"], float))
    x, y = mosaic.meta.wcs.invert(*sky)
    values = mosaic.data[np.rint(y).astype(int), np.rint(x).astype(int)]
    # Some hits land on sources; most must read as ordinary sky.
    assert np.mean(values < sky_median + 5 * sky_spread) > 0.9


@pytest.mark.parametrize("n_exposures", [4, 8])
def test_bright_stars_keep_their_flux(n_exposures):
    # No cosmic rays: any flux change is outlier detection clipping a star.
    models, sources, _, _ = make_image_models(
        n_exposures=n_exposures, n_detectors=2, size=512, seed=5, cosmic_ray_rate=0.0,
        n_stars=400)
    library = _prepared(models)
    without = ResampleStep.call(library)
    library = OutlierDetectionStep.call(library)
    with_detection = ResampleStep.call(library)
    stars = sources[sources["kind"] == "star"]
    brightest = stars[np.argsort(stars["mag_ab"])][: len(stars) // 10]
    ratios = []
    for star in brightest:
        a = aperture_sum(with_detection, star["ra"], star["dec"])
        b = aperture_sum(without, star["ra"], star["dec"])
        if np.isfinite(a) and np.isfinite(b) and b > 0:
            ratios.append(a / b)
    ratios = np.array(ratios)
    assert len(ratios) >= 30
    kept = np.mean(np.abs(ratios - 1) < 0.01)
    assert kept >= 0.99, (kept, np.sort(np.abs(ratios - 1))[-5:])


def test_on_disk_flags_equal_in_memory_and_persist(tmp_path):
    sim = simulate_association(tmp_path / "data", n_exposures=3, size=192, seed=2,
                               cosmic_ray_rate=5e-4)
    flags = {}
    for on_disk in (False, True):
        library = ModelLibrary(sim.asn_path, on_disk=on_disk, temp_directory=tmp_path)
        library = OutlierDetectionStep.call(SkyMatchStep.call(FluxStep.call(library)))
        flags[on_disk] = [model.dq.copy() for _, model in library.iter_models()]
        library.close()
    assert sum(int((f & OUTLIER).astype(bool).sum()) for f in flags[False]) > 20
    for a, b in zip(flags[False], flags[True], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob("romosaic-*"))


def test_single_exposure_group_is_skipped(caplog):
    models, _, _, _ = make_image_models(n_exposures=1, n_detectors=2, size=96, seed=1)
    library = OutlierDetectionStep.call(FluxStep.call(ModelLibrary(models)))
    assert "at least two exposure groups" in caplog.text
    with library:
        for i in range(len(library)):
            model = library.borrow(i)
            assert model.meta.cal_step.outlier_detection == "SKIPPED"
            assert not np.any(model.dq & OUTLIER)
            library.shelve(model, i, modify=False)


def test_raw_comparison_without_resampling():
    # Three exposures on one pixel grid (no dithers): resample_data=false.
    rng = np.random.default_rng(4)
    models, _, _, _ = make_image_models(n_exposures=1, size=64, seed=3, cosmic_ray_rate=0.0)
    base = models[0]
    copies = []
    for index in range(3):
        model = base.copy()
        model.data = (base.data + rng.normal(0, 0.01, base.data.shape)).astype(np.float32)
        model.meta.observation.observation_id = f"same{index}"
        model.meta.filename = f"same{index}_cal.asdf"
        copies.append(model)
    copies[1].data[20, 30] += 50.0
    library = OutlierDetectionStep.call(FluxStep.call(ModelLibrary(copies)), resample_data=False)
    flagged = [np.argwhere(model.dq & OUTLIER) for _, model in library.iter_models()]
    assert [len(f) for f in flagged] == [0, 1, 0]
    assert flagged[1].tolist() == [[20, 30]]


def test_intermediate_results_and_bad_parameters(tmp_path):
    sim = simulate_association(tmp_path, n_exposures=2, size=96, seed=9)
    OutlierDetectionStep.call(FluxStep.call(ModelLibrary(sim.asn_path)),
                              save_intermediate_results=True, output_dir=str(tmp_path / "out"))
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert any(name.endswith("_median.asdf") for name in saved)
    assert sum(name.endswith("_blot.asdf") for name in saved) == 2
    with pytest.raises(RomosaicInputError, match="snr must be two numbers"):
        OutlierDetectionStep.call(ModelLibrary(sim.asn_path), snr="5.0")


def test_median_kernel_matches_numpy():
    rng = np.random.default_rng(0)
    for n in range(1, 12):
        stack = rng.normal(size=(n, 40, 30)).astype(np.float32)
        stack[rng.random(stack.shape) < 0.25] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
            expected = np.nanmedian(stack, axis=0)
        np.testing.assert_allclose(nanmedian_stack(stack), expected, equal_nan=True)
    # The network really sorts: every permutation of 5 distinct values.
    from itertools import permutations

    for perm in permutations(range(5)):
        values = np.array(perm, dtype=float)
        for a, b in sorting_network(5):
            values[a], values[b] = min(values[a], values[b]), max(values[a], values[b])
        assert values.tolist() == [0, 1, 2, 3, 4]


def test_outlier_mask_tests_and_growth():
    data = np.zeros((7, 7), np.float32)
    blot = np.zeros((7, 7), np.float32)
    noise = np.ones((7, 7), np.float32)
    data[3, 3] = 10.0  # above both thresholds
    data[3, 4] = 4.5  # only above the second, but next to a first-test pixel
    data[0, 0] = 4.5  # only above the second, alone
    mask = outlier_mask(data, blot, noise, snr=(5.0, 4.0), scale=(1.2, 0.7))
    assert np.argwhere(mask).tolist() == [[3, 3], [3, 4]]
    # A bright model raises the tolerance by model_error x its signal.
    blot[2:5, 2:5] = 20.0
    data[2:5, 2:5] = 20.0 + 0.5 * 20.0
    assert not outlier_mask(data, blot, noise, model_error=0.6)[3, 3]
