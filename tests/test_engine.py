"""The drizzle engine: strips, windows, plane stores and threads change nothing."""

import dataclasses
import threading

import numpy as np
import pytest

from romosaic.outlier.detect import drizzle_group, median_of_planes
from romosaic.parallel import prefetch
from romosaic.resample import drizzle_images, free_grid, input_from_model
from romosaic.resample.engine import (
    DataWindow,
    DrizzleEngine,
    data_window,
    plan_strips,
    prepare_image,
)
from romosaic.resample.planes import PlaneStore
from romosaic.simulate import make_image_models

from .conftest import linux_only, proc_status_mib


@pytest.fixture(scope="module")
def images():
    models, *_ = make_image_models(n_exposures=3, n_detectors=2, size=128, seed=4,
                                   distortion=True)
    return [input_from_model(m) for m in models]


def _geometry(images):
    return [(image.wcs, image.shape) for image in images]


def _assert_same(result, reference):
    assert result.exptimes == reference.exptimes
    np.testing.assert_array_equal(result.context, reference.context)
    np.testing.assert_array_equal(result.data, reference.data)  # NaN where empty in both
    np.testing.assert_array_equal(result.weight, reference.weight)
    assert result.variances.keys() == reference.variances.keys()
    for name, plane in reference.variances.items():
        np.testing.assert_array_equal(result.variances[name], plane)


def test_plan_strips_cover_the_rows_within_the_budget():
    for n_rows, n_cols, memory, threads in [(1000, 300, 2e6, 1), (5, 10, 1e9, 2),
                                            (4097, 4000, 64 * 2**20, 2), (900, 900, None, 2)]:
        strips = plan_strips(n_rows, n_cols, bytes_per_pixel=20, threads=threads, memory=memory)
        assert strips[0][0] == 0 and strips[-1][1] == n_rows
        assert all(a[1] == b[0] for a, b in zip(strips, strips[1:], strict=False))
        tallest = max(stop - start for start, stop in strips)
        if memory is not None:
            assert threads * 20 * n_cols * tallest <= max(memory, threads * 20 * n_cols * 64)
    # In memory: two strips a thread, so that threads share every input.
    assert len(plan_strips(900, 900, bytes_per_pixel=20, threads=2)) == 4
    assert len(plan_strips(900, 900, bytes_per_pixel=20, threads=1)) == 1


@pytest.mark.parametrize("kernel", ["square", "lanczos3", "point"])
def test_strips_windows_files_and_threads_equal_one_drizzle_of_the_grid(images, tmp_path,
                                                                         kernel):
    geometry = _geometry(images)
    fitted = free_grid(geometry, pixel_scale_ratio=0.5)
    # A grid larger than the inputs, as a skycell holding a few detectors.
    grid = free_grid(geometry, pixel_scale_ratio=0.5,
                     output_shape=(fitted.shape[1] + 157, fitted.shape[0] + 301))
    options = {"kernel": kernel, "pixfrac": 0.8}
    whole, scale = drizzle_images(iter(images), grid, len(images), **options)
    window = data_window(grid, geometry)
    assert window.fraction_of_grid < 0.8
    outside = np.ones(grid.shape, bool)
    outside[window.y0:window.y0 + window.shape[0], window.x0:window.x0 + window.shape[1]] = False
    assert not (whole.weight[outside] > 0).any()
    assert np.isnan(whole.data[outside]).all()

    windowed, _ = drizzle_images(iter(images), grid, len(images), window=window, **options)
    _assert_same(windowed, whole)
    threaded, threaded_scale = drizzle_images(iter(images), grid, len(images), window=window,
                                              threads=2, **options)
    assert threaded_scale == scale
    _assert_same(threaded, whole)
    # Planes in files, drizzled in strips of ~70 rows by two threads.
    store = PlaneStore(window.shape, directory=tmp_path)
    budget = 2 * 28 * window.shape[1] * 70
    in_files, _ = drizzle_images(iter(images), grid, len(images), window=window, store=store,
                                 threads=2, memory_budget=budget, **options)
    store.close()
    assert list(tmp_path.iterdir()) == []  # the arrays are mappings of unlinked files
    _assert_same(in_files, whole)


def test_mosaic_summaries_look_only_where_something_was_deposited(images):
    # The exposure-time map and statistics of a mosaic are taken over the
    # region the inputs reach; the same figures come from the whole grid.
    from romosaic.resample.mosaic_model import _coadd_info, _statistics, summarize_input

    models, *_ = make_image_models(n_exposures=3, n_detectors=2, size=128, seed=4,
                                   distortion=True)
    summaries = [summarize_input(m) for m in models]
    geometry = _geometry(images)
    fitted = free_grid(geometry, pixel_scale_ratio=0.5)
    grid = free_grid(geometry, pixel_scale_ratio=0.5,
                     output_shape=(fitted.shape[1] + 157, fitted.shape[0] + 301))
    window = data_window(grid, geometry)
    result, _ = drizzle_images(iter(images), grid, len(images), window=window)
    rows, cols = result.region
    assert (rows.stop - rows.start, cols.stop - cols.start) == window.shape
    whole = dataclasses.replace(result, region=(slice(None), slice(None)))
    assert _statistics(result) == _statistics(whole)
    assert _coadd_info(result, summaries) == _coadd_info(whole, summaries)
    assert _coadd_info(result, summaries)["max_exposure_time"] > 0


def test_more_than_one_thread_deposits_and_results_do_not_depend_on_strips(images):
    geometry = _geometry(images)
    grid = free_grid(geometry, pixel_scale_ratio=0.5)
    window = data_window(grid, geometry)
    prepared = [prepare_image(image, grid) for image in images]
    results = []
    for strips, threads in [([(0, window.shape[0])], 1),
                            (plan_strips(*window.shape, bytes_per_pixel=28, threads=2), 2),
                            ([(0, 37), (37, 38), (38, 200), (200, window.shape[0])], 2)]:
        store = PlaneStore(window.shape)
        with DrizzleEngine(window, store, strips=strips, n_inputs=len(prepared),
                           variance_names=["var_rnoise"], threads=threads) as engine:
            for image in prepared:
                engine.add(image)
            engine.finish()
        if threads > 1:
            assert len(engine.threads_used) >= 2
        results.append({name: store.read(name) for name in store.names()})
    for other in results[1:]:
        for name, plane in results[0].items():
            np.testing.assert_array_equal(other[name], plane)


def test_a_rotated_input_drizzled_in_pieces_equals_one_strip():
    # A detector at 45 degrees to the grid crosses each strip on a diagonal;
    # the engine drizzles only the pieces of it that reach the strip, and
    # every pixel still gets its contributions in the same order.
    from romosaic.resample.inputs import ResampleInput
    from romosaic.wcs_utils import affine_tan_wcs

    rng = np.random.default_rng(7)
    shape, scale, theta = (240, 260), 0.11 / 3600, np.radians(45.0)
    cd = scale * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    image = ResampleInput(
        name="rotated_cal.asdf", data=rng.normal(1.0, 0.1, shape).astype(np.float32),
        dq=np.zeros(shape, np.uint32), exptime=100.0,
        wcs=affine_tan_wcs(crval=(30.0, -20.0), crpix=(130, 120), cd=cd, shape=shape),
        variances={"var_rnoise": np.full(shape, 0.01, np.float16)})
    grid = free_grid([(image.wcs, image.shape)], pixel_scale_ratio=0.5, rotation=0.0)
    window = data_window(grid, [(image.wcs, image.shape)])
    prepared = prepare_image(image, grid)
    thin = [(start, min(window.shape[0], start + 40)) for start in range(0, window.shape[0], 40)]
    left, right = window.cols
    split = [prepared.mapper.input_pieces_for(
        (left - prepared.reach, right + prepared.reach),
        (window.y0 + a - prepared.reach, window.y0 + b + prepared.reach)) for a, b in thin]
    assert max(len(pieces) for pieces in split) > 2
    results = []
    for strips in ([(0, window.shape[0])], thin):
        store = PlaneStore(window.shape)
        with DrizzleEngine(window, store, strips=strips, n_inputs=1,
                           variance_names=["var_rnoise"], threads=2) as engine:
            engine.add(prepared)
            engine.finish()
        results.append({name: store.read(name) for name in store.names()})
    assert np.count_nonzero(results[0]["weight"]) > 0.4 * results[0]["weight"].size
    for name, plane in results[0].items():
        np.testing.assert_array_equal(results[1][name], plane)


def test_group_drizzle_and_median_do_not_depend_on_threads_or_files(images, tmp_path):
    geometry = _geometry(images)
    grid = free_grid(geometry, pixel_scale_ratio=0.5)
    window = data_window(grid, geometry)
    medians = []
    for threads, directory in [(1, None), (2, None), (2, tmp_path)]:
        store = PlaneStore(window.shape, directory=directory)
        strips = plan_strips(*window.shape, bytes_per_pixel=8, threads=threads,
                             memory=8 * window.shape[1] * 100 if directory else None)
        names = [drizzle_group(iter(images[k::3]), window, store, name=f"g{k}", n_images=2,
                               strips=strips, threads=threads) for k in range(3)]
        assert sorted(store.names()) == ["g0", "g1", "g2"]  # the weights are gone
        median_of_planes(store, names, "median", threads=threads, memory_budget=2e5)
        medians.append(store.read("median"))
        store.close()
    assert np.isfinite(medians[0]).mean() > 0.3
    for other in medians[1:]:
        np.testing.assert_array_equal(other, medians[0])


def test_every_input_keeps_its_context_bit_on_a_grid_covering_part_of_them(images):
    geometry = _geometry(images)
    grid = free_grid(geometry[:1])
    full = DataWindow(grid=grid, x0=0, y0=0, shape=tuple(grid.shape))
    assert full.covers_grid
    result, _ = drizzle_images(iter(images), grid, len(images))
    assert result.exptimes == [image.exptime for image in images]
    assert result.context.shape == (1, *grid.shape)
    for index, image in enumerate(images):
        reached = (result.context[0] & np.uint32(1 << index)) != 0
        alone, _ = drizzle_images(iter([image]), grid, 1)
        np.testing.assert_array_equal(reached, alone.weight > 0)


def test_a_window_within_another_grid_holds_only_what_lands_on_it(images):
    geometry = _geometry(images)
    grid = free_grid(geometry, pixel_scale_ratio=0.5)
    whole = data_window(grid, geometry)
    # A grid rotated by 30 degrees over the middle of the inputs only.
    x, y = grid.shape[1] / 2, grid.shape[0] / 2
    ra, dec = (float(v) for v in grid.wcs(x, y))
    small = free_grid(geometry[:1], pixel_scale=grid.pixel_scale, rotation=30.0,
                      crval=(ra, dec), crpix=(24.5, 19.5), output_shape=(40, 50))
    window = data_window(grid, geometry, within=small)
    assert window.grid is grid
    assert window.shape[0] < whole.shape[0] and window.shape[1] < whole.shape[1]
    assert whole.x0 <= window.x0 and window.x0 + window.shape[1] <= whole.x0 + whole.shape[1]
    assert whole.y0 <= window.y0 and window.y0 + window.shape[0] <= whole.y0 + whole.shape[0]
    # Every pixel of the small grid, edges included, lies inside the window.
    sx, sy = np.meshgrid(np.linspace(-0.5, 49.5, 21), np.linspace(-0.5, 39.5, 17))
    gx, gy = grid.wcs.invert(*small.wcs(sx, sy, with_bounding_box=False),
                             with_bounding_box=False)
    assert window.x0 - 0.5 <= gx.min() and gx.max() <= window.x0 + window.shape[1] - 0.5
    assert window.y0 - 0.5 <= gy.min() and gy.max() <= window.y0 + window.shape[0] - 0.5
    # ... with no more than the drops' reach around it.
    assert window.shape[1] <= gx.max() - gx.min() + 2 * 20
    assert window.shape[0] <= gy.max() - gy.min() + 2 * 20
    # A grid the inputs do not reach leaves no window.
    far = free_grid(geometry[:1], pixel_scale=grid.pixel_scale, crval=(ra + 1.0, dec),
                    output_shape=(40, 50))
    with pytest.raises(ValueError, match="do not overlap"):
        data_window(grid, geometry, within=far)


def test_prefetch_hands_on_errors_and_stops_its_producer():
    made = []

    def produce():
        for k in range(100):
            made.append(threading.current_thread().name)
            if k == 3:
                raise RuntimeError("bad item 3")
            yield k

    seen = []
    with pytest.raises(RuntimeError, match="bad item 3"):
        for item in prefetch(produce()):
            seen.append(item)
    assert seen == [0, 1, 2]
    assert set(made) == {"prefetch"}
    # A consumer that stops early leaves no producer running.
    stream = prefetch(iter(range(10**6)))
    assert next(stream) == 0
    stream.close()
    assert not any(t.name == "prefetch" for t in threading.enumerate())


def test_old_parameter_names_are_refused_naming_the_new_ones(tmp_path, capsys):
    from romosaic.cli import main as romosaic_main
    from romosaic.errors import RomosaicInputError
    from romosaic.pipeline import MosaicPipeline
    from romosaic.steps import ResampleStep

    with pytest.raises(RomosaicInputError, match="tile_memory was replaced by memory_budget"):
        ResampleStep.call(str(tmp_path / "x_asn.json"), tile_memory=2)
    with pytest.raises(RomosaicInputError,
                       match="steps.resample.tile_memory was replaced by memory_budget"):
        MosaicPipeline.call(str(tmp_path / "x_asn.json"), steps={"resample": {"tile_memory": 2}})
    status = romosaic_main(["survey", "run", str(tmp_path), "--workers", "2"])
    assert status != 0
    assert "--workers was renamed --processes" in capsys.readouterr().err


@linux_only
def test_zero_planes_in_memory_cost_nothing_where_nothing_is_written():
    # A skycell mostly outside the data keeps its weight and context planes
    # zero there; those parts must not take memory, even once read in full
    # (as when the mosaic is written).
    store = PlaneStore((4096, 4096))
    before = proc_status_mib("VmRSS")
    store.new_plane("weight", np.float32)
    store.write("weight", 1.0, rows=(0, 512))
    assert float(store.array("weight").sum()) == 512 * 4096
    grown = proc_status_mib("VmRSS") - before
    assert 6 < grown < 24, grown  # the written eighth (8 MiB), not the 64 MiB plane
    store.close()
