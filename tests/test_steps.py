"""The flux and resample steps as stpipe steps, and the parameter files."""

import asdf
import numpy as np
import pytest
import roman_datamodels.datamodels as rdm
from stpipe.step import Step

from romosaic.errors import RomosaicInputError
from romosaic.library import ModelLibrary
from romosaic.parameter_files import parameter_tree
from romosaic.pipeline import MosaicPipeline
from romosaic.resample import input_from_model
from romosaic.resample.weights import pixel_weights, weight_variances
from romosaic.steps import FluxStep, ResampleStep

from .conftest import make_image_model
from .test_pipeline import REPO


def test_a_run_keeps_the_collector_off_objects_older_than_the_run(monkeypatch):
    import gc
    import sys

    import stpipe.step

    frozen_at_collections = []
    collect = gc.collect

    def recording_collect(*args):
        if sys._getframe(1).f_globals["__name__"] == "stpipe.step":
            frozen_at_collections.append(gc.get_freeze_count())
        return collect(*args)

    monkeypatch.setattr(stpipe.step.gc, "collect", recording_collect)
    model = make_image_model(shape=(8, 8), data=np.full((8, 8), 3.0), conversion=0.5)
    FluxStep.call([model])
    # stpipe collects before the step runs; the objects that existed before
    # the run are frozen then, and handed back to the collector afterwards.
    assert frozen_at_collections and all(count > 10_000 for count in frozen_at_collections)
    assert gc.get_freeze_count() == 0


def test_garbage_of_an_earlier_run_is_freed_not_frozen(monkeypatch):
    import gc
    import sys
    import weakref

    import stpipe.step

    def image():
        return make_image_model(shape=(8, 8), data=np.full((8, 8), 3.0), conversion=0.5)

    FluxStep.call([image()])  # a run has frozen objects in this process

    class Node:
        pass

    seen = []
    collect = gc.collect

    def recording_collect(*args):
        if sys._getframe(1).f_globals["__name__"] == "stpipe.step":
            seen.append(alive() is not None)
        return collect(*args)

    monkeypatch.setattr(stpipe.step.gc, "collect", recording_collect)
    # No automatic collection may free the cycle: only the run's own can.
    gc.disable()
    try:
        cycle = Node()
        cycle.me = cycle  # garbage only a collection frees
        alive = weakref.ref(cycle)
        del cycle
        FluxStep.call([image()])
    finally:
        gc.enable()
    # Freed before the run froze the older objects, so not kept through it.
    assert seen == [False]


def test_a_run_has_asdf_read_in_large_pieces_in_every_thread(monkeypatch):
    import sys
    import threading

    import asdf
    import stpipe.step

    from romosaic.steps.base import ASDF_READ_BLOCK_BYTES

    seen = []
    collect = stpipe.step.gc.collect

    def recording_collect(*args):
        if sys._getframe(1).f_globals["__name__"] == "stpipe.step":
            # What a worker thread of the step would get.
            worker = threading.Thread(
                target=lambda: seen.append(asdf.get_config().io_block_size))
            worker.start()
            worker.join()
        return collect(*args)

    before = asdf.get_config().io_block_size
    monkeypatch.setattr(stpipe.step.gc, "collect", recording_collect)
    FluxStep.call([make_image_model(shape=(8, 8), data=np.full((8, 8), 3.0), conversion=0.5)])
    assert seen and all(size == ASDF_READ_BLOCK_BYTES for size in seen)
    assert asdf.get_config().io_block_size == before


def test_overlapping_runs_keep_the_settings_until_the_last_one_ends():
    # Two runs sharing a process (threads of one worker): the first to end
    # must not undo the settings under the other.
    import gc

    import asdf

    from romosaic.steps.base import (
        ASDF_READ_BLOCK_BYTES,
        _asdf_reads_in_large_blocks,
        _long_lived_objects_frozen,
    )

    before = asdf.get_config().io_block_size
    first, second = _asdf_reads_in_large_blocks(), _asdf_reads_in_large_blocks()
    frozen_first, frozen_second = _long_lived_objects_frozen(), _long_lived_objects_frozen()
    for context in (first, frozen_first, second, frozen_second):
        context.__enter__()
    first.__exit__(None, None, None)
    frozen_first.__exit__(None, None, None)
    assert asdf.get_config().io_block_size == ASDF_READ_BLOCK_BYTES
    assert gc.get_freeze_count() > 10_000
    second.__exit__(None, None, None)
    frozen_second.__exit__(None, None, None)
    assert asdf.get_config().io_block_size == before
    assert gc.get_freeze_count() == 0


def test_flux_step_scales_arrays_once():
    model = make_image_model(shape=(8, 8), data=np.full((8, 8), 3.0), conversion=0.5,
                             var_rnoise=0.04, var_poisson=0.08)
    library = FluxStep.call([model])
    with library:
        out = library.borrow(0)
        np.testing.assert_allclose(out.data, 1.5)
        np.testing.assert_allclose(out.var_rnoise.astype(float), 0.01, rtol=1e-3)
        np.testing.assert_allclose(out.var_poisson.astype(float), 0.02, rtol=1e-3)
        np.testing.assert_allclose(out.err.astype(float), np.sqrt(0.03), rtol=2e-3)
        assert out.err.dtype == np.float16 and out.data.dtype == np.float32
        assert out.meta.cal_step.flux == "COMPLETE"
        library.shelve(out, 0, modify=False)
    # A second run leaves converted data alone.
    again = FluxStep.call(library)
    with again:
        out = again.borrow(0)
        np.testing.assert_allclose(out.data, 1.5)
        again.shelve(out, 0, modify=False)


def test_flux_step_rescales_arrays_read_from_a_file_and_leaves_the_file_alone(tmp_path):
    # The scaling is recorded and applied when each array is read (in its own
    # memory: tests/test_streaming.py measures that).
    path = tmp_path / "image_cal.asdf"
    make_image_model(shape=(16, 16), data=np.full((16, 16), 3.0), conversion=0.5).save(path)
    library = ModelLibrary([str(path)])
    FluxStep.call(library)
    assert library.edits(0).flux_scale == 0.5
    with library:
        model = library.borrow(0)
        np.testing.assert_allclose(model.data, 1.5)
        np.testing.assert_allclose(model.var_rnoise, 0.25 * 1e-2, rtol=1e-3)
        assert model.meta.cal_step.flux == "COMPLETE"
        library.shelve(model, 0, modify=False)
    library.close()
    with rdm.open(path) as original:  # the file itself is untouched
        np.testing.assert_allclose(original.data, 3.0)
        assert original.meta.cal_step.flux == "INCOMPLETE"


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_flux_step_rejects_unusable_conversion(bad):
    model = make_image_model(shape=(8, 8), conversion=1.0, filename="bad_cal.asdf")
    model.meta.photometry.conversion_megajanskys = bad
    with pytest.raises(RomosaicInputError, match="bad_cal.asdf: has an invalid photometric"):
        FluxStep.call([model])


def test_pending_sky_level_is_removed_on_the_fly():
    model = make_image_model(shape=(8, 8), data=np.full((8, 8), 5.0))
    model.meta["background"] = {"level": 2.0, "subtracted": False, "method": "match"}
    assert float(input_from_model(model).data[0, 0]) == 3.0
    model.meta["background"] = {"level": 2.0, "subtracted": True, "method": "match"}
    assert float(input_from_model(model).data[0, 0]) == 5.0
    assert float(model.data[0, 0]) == 5.0  # the model itself is untouched


def test_input_from_model_reads_the_variances_asked_for():
    model = make_image_model(shape=(8, 8))
    assert {"var_rnoise", "var_poisson"} <= set(input_from_model(model).variances)
    only = input_from_model(model, variances=weight_variances("ivm"))
    assert list(only.variances) == ["var_rnoise"]
    assert list(input_from_model(model, variances=()).variances) == []


def test_zero_exposure_time_is_refused_only_by_exptime_weighting_and_named():
    model = make_image_model(shape=(8, 8), exptime=0.0, filename="zero_cal.asdf")
    image = input_from_model(model)
    assert np.isnan(image.exptime)
    with pytest.raises(RomosaicInputError,
                       match="^zero_cal.asdf: weight_type 'exptime' needs a positive"):
        pixel_weights("exptime", data=image.data, good=np.ones(image.shape, bool),
                      exptime=image.exptime, name=image.name)


def test_mixed_filters_are_refused():
    models = [make_image_model(shape=(16, 16), filename="a_cal.asdf", flux_complete=True),
              make_image_model(shape=(16, 16), filename="b_cal.asdf", filter_name="F062",
                               observation_id="obs2", flux_complete=True)]
    with pytest.raises(RomosaicInputError, match="different filters: F158 \\(a_cal.asdf\\), "
                                                 "F062 \\(b_cal.asdf\\)"):
        ResampleStep.call(ModelLibrary(models))


def test_output_wcs_file_and_explicit_grid(tmp_path):
    source = make_image_model(shape=(40, 40), flux_complete=True)
    target = make_image_model(shape=(30, 50), orientation=45.0, scale_arcsec=0.05,
                              crval=(80.0001, -30.0001))
    wcs_path = tmp_path / "grid.asdf"
    asdf.AsdfFile({"wcs": target.meta.wcs}).write_to(wcs_path)
    mosaic = ResampleStep.call(ModelLibrary([source]), output_wcs=str(wcs_path))
    assert mosaic.data.shape == (30, 50)
    assert mosaic.meta.wcsinfo.image_shape == [50, 30]
    assert mosaic.meta.wcsinfo.pixel_scale * 3600 == pytest.approx(0.05, rel=1e-6)
    assert mosaic.meta.wcsinfo.orientation == pytest.approx(45.0, abs=1e-6)

    mosaic = ResampleStep.call(ModelLibrary([source]), output_shape=[21, 11], crpix=[10, 5],
                               crval=[80.0, -30.0], pixel_scale=0.2, rotation=0.0)
    assert mosaic.data.shape == (11, 21)
    ra, dec = mosaic.meta.wcs(10, 5)
    assert (float(ra), float(dec)) == pytest.approx((80.0, -30.0), abs=1e-9)

    with pytest.raises(RomosaicInputError, match="output_wcs file not found"):
        ResampleStep.call(ModelLibrary([source]), output_wcs=str(tmp_path / "none.asdf"))


def test_parameter_file_in_step_with_specs():
    with asdf.open(REPO / "config" / "roman_mos.asdf") as af:
        on_disk = {"class": af["class"], "name": af["name"],
                   "parameters": dict(af["parameters"]),
                   "steps": [{"class": s["class"], "name": s["name"],
                              "parameters": dict(s["parameters"])} for s in af["steps"]]}
    expected = parameter_tree()
    assert on_disk == expected, "regenerate with: python -m romosaic.parameter_files config"
    assert [s["name"] for s in expected["steps"]] == list(MosaicPipeline.step_defs)


def test_save_parameters_round_trip(tmp_path):
    pipeline = MosaicPipeline(steps={"resample": {"pixfrac": 0.6, "kernel": "point"}},
                              on_disk=True)
    path = tmp_path / "pars.asdf"
    pipeline.export_config(path)
    loaded = Step.from_config_file(str(path))
    assert isinstance(loaded, MosaicPipeline)
    assert loaded.on_disk is True
    assert loaded.resample.pixfrac == 0.6
    assert loaded.resample.kernel == "point"


def test_resample_step_standalone_on_an_association(tmp_path):
    paths = []
    for index in range(2):
        model = make_image_model(shape=(32, 32), observation_id=f"o{index}",
                                 filename=f"i{index}_cal.asdf", crval=(80 + index * 1e-4, -30),
                                 flux_complete=True)
        model.save(tmp_path / model.meta.filename)
        paths.append(tmp_path / model.meta.filename)
    mosaic = ResampleStep.call([str(p) for p in paths])
    assert isinstance(mosaic, rdm.MosaicModel)
    assert mosaic.meta.resample.members == ["i0_cal.asdf", "i1_cal.asdf"]
    assert mosaic.meta.cal_step.flux == "COMPLETE"


def test_float16_widening_matches_numpy_bit_for_bit():
    # Every float16 bit pattern (subnormals, signed zeros, infinities, NaN
    # payloads, signalling ones included), as a plane and as a strided view.
    from romosaic.half import as_float32

    patterns = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    for values in (patterns, patterns[::2, 1::3]):
        with np.errstate(invalid="ignore"):
            expected = values.astype(np.float32).view(np.uint32)
        got = as_float32(values)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got.view(np.uint32), expected)
    already = np.ones((3, 4), np.float32)
    assert as_float32(already) is already
    np.testing.assert_array_equal(as_float32(np.arange(4)), np.arange(4, dtype=np.float32))


def test_float16_rounding_matches_numpy_bit_for_bit():
    # The flux step's fast float16 rounding must equal numpy's cast, including
    # subnormals (variances in MJy^2/sr^2), signed zeros, NaN and infinities,
    # and random bit patterns: NaN payloads, signalling NaNs among them.
    from romosaic.half import to_float16

    rng = np.random.default_rng(0)
    values = rng.normal(size=200_000) * 10.0 ** rng.uniform(-12, 4.5, 200_000)
    edges = [np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0**-25, 3 * 2.0**-25, 1.5 * 2.0**-24,
             2.5 * 2.0**-24, 2.0**-14 * (1 - 2.0**-12), -(2.0**-14)]
    patterns = rng.integers(0, 2**32, 200_000, dtype=np.uint32).view(np.float32)
    values = np.concatenate([values.astype(np.float32), np.float32(edges), patterns])
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
        got = to_float16(values).view(np.uint16)
    assert np.count_nonzero(np.abs(values) < 2.0**-14) > 1000  # subnormals tested
    signalling = (patterns.view(np.uint32) & 0x7fc00000) == 0x7f800000
    assert np.count_nonzero(signalling & np.isnan(patterns)) > 100
    np.testing.assert_array_equal(got, expected)
    # Every float16 through float32 and back is itself.
    halves = np.arange(2**16, dtype=np.uint16).view(np.float16)
    np.testing.assert_array_equal(to_float16(halves.astype(np.float32)).view(np.uint16),
                                  halves.view(np.uint16))


# Factors of the flux scaling: a conversion, its square (variances), 1, one
# that makes most float16 results subnormal and one that makes many overflow.
SCALE_FACTORS = (0.37, 0.37**2, 1.0, 1e-6, 3e4)


def _values_of_every_kind(dtype):
    """Normal numbers of every size, subnormals, ±0, overflow, ±inf and NaNs."""
    rng = np.random.default_rng(7)
    if dtype == np.float16:
        # Every float16 there is, twice, in random order.
        return rng.permutation(np.tile(np.arange(2**16, dtype=np.uint16), 2)).view(np.float16)
    values = rng.normal(size=100_000) * 10.0 ** rng.uniform(-14, 8, 100_000)
    edges = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0,
             2.0**-24, 2.0**-25, 3 * 2.0**-25, 1.5 * 2.0**-24, 2.5 * 2.0**-24, 2.0**-14,
             -(2.0**-14) * (1 - 2.0**-12), 2.0**-149, 2.0**-126, -65536.0]
    patterns = rng.integers(0, 2**32, 100_000, dtype=np.uint32).view(np.float32)
    return np.concatenate([values.astype(np.float32), np.float32(edges), patterns])


def _numpy_scaled(values, factor, dtype):
    with np.errstate(over="ignore", invalid="ignore"):
        return (values.astype(np.float32) * np.float32(factor)).astype(dtype)


def _bits(array):
    return array.view(np.uint16 if array.dtype == np.float16 else np.uint32)


@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("in_dtype", [np.float32, np.float16])
def test_scale_kernel_equals_numpy_bit_for_bit(in_dtype, out_dtype):
    from romosaic import _scale

    values = _values_of_every_kind(in_dtype).reshape(4, -1)
    magnitudes = np.abs(values.astype(np.float32))
    kinds = {"zero": magnitudes == 0, "negative zero": (values == 0) & np.signbit(values),
             "float16 subnormal": (magnitudes > 0) & (magnitudes < 2.0**-14),
             "beyond float16": np.isfinite(magnitudes) & (magnitudes > 65504),
             "infinity": np.isinf(values), "NaN": np.isnan(values)}
    for kind, present in kinds.items():
        if kind != "beyond float16" or in_dtype == np.float32:
            assert present.any(), kind
    before = values.copy()
    for factor in SCALE_FACTORS:
        expected = _numpy_scaled(values, factor, out_dtype)
        out = np.full(values.shape, 7, out_dtype)
        _scale.scale(values, out, factor)
        np.testing.assert_array_equal(_bits(out), _bits(expected), err_msg=f"factor {factor}")
        np.testing.assert_array_equal(_bits(values), _bits(before))  # input untouched
        if in_dtype == out_dtype:
            in_place = values.copy()
            _scale.scale(in_place, in_place, factor)
            np.testing.assert_array_equal(_bits(in_place), _bits(expected),
                                          err_msg=f"in place, factor {factor}")
    # Without a factor: numpy's astype, signalling NaNs kept as they are.
    out = np.full(values.shape, 7, out_dtype)
    _scale.scale(values, out)
    with np.errstate(over="ignore", invalid="ignore"):
        np.testing.assert_array_equal(_bits(out), _bits(values.astype(out_dtype)))


@pytest.mark.parametrize("name", ["data", "err", "var_rnoise"])
@pytest.mark.parametrize("in_place", [False, True])
def test_flux_scaling_equals_numpy_bit_for_bit(name, in_place):
    from romosaic.flux import scale_to_surface_brightness

    dtype = np.float32 if name == "data" else np.float16
    values = _values_of_every_kind(dtype)
    factor = 0.37
    expected = _numpy_scaled(values, factor * factor if name == "var_rnoise" else factor, dtype)
    plane = values.copy()
    scaled = scale_to_surface_brightness({name: plane}, factor, in_place=in_place)[name]
    assert (scaled is plane) is in_place and scaled.dtype == dtype
    np.testing.assert_array_equal(_bits(scaled), _bits(expected))
    if not in_place:
        np.testing.assert_array_equal(_bits(plane), _bits(values))


def test_flux_scaling_of_other_dtypes_goes_through_float32():
    # float64, integers and byte-swapped arrays are not the kernel's: they
    # are scaled in float32 and stored in their own dtype, as before.
    from romosaic.flux import scale_to_surface_brightness

    rng = np.random.default_rng(3)
    arrays = {"data": rng.normal(size=(50, 40)) * 1e3,
              "err": rng.uniform(1e-6, 1e-3, (50, 40)).astype(">f2"),
              "var_flat": rng.integers(0, 1000, (50, 40))}
    for in_place in (False, True):
        given = {name: array.copy() for name, array in arrays.items()}
        scaled = scale_to_surface_brightness(given, 0.3, in_place=in_place)
        for name, values in arrays.items():
            factor = 0.09 if name == "var_flat" else 0.3
            expected = (values.astype(np.float32) * np.float32(factor)).astype(values.dtype)
            assert scaled[name].dtype == values.dtype
            np.testing.assert_array_equal(scaled[name], expected, err_msg=name)


def test_scale_kernel_rejects_what_it_cannot_scale():
    from romosaic import _scale

    values = np.ones(10, np.float32)
    with pytest.raises(TypeError, match="float32 or float16"):
        _scale.scale(values, np.empty(10, np.float64), 2.0)
    with pytest.raises(TypeError, match="float32 or float16"):
        _scale.scale(values.astype(">f4"), np.empty(10, np.float32), 2.0)
    with pytest.raises(ValueError, match="same shape"):
        _scale.scale(values, np.empty(9, np.float32), 2.0)
    with pytest.raises(ValueError, match="same shape"):
        _scale.scale(values, np.empty((2, 5), np.float32), 2.0)
    with pytest.raises(ValueError, match="overlaps"):
        _scale.scale(values[:8], values[2:], 2.0)
    with pytest.raises(ValueError, match="overlaps"):
        _scale.scale(values, values.view(np.float16)[:10], 2.0)
    with pytest.raises((BufferError, ValueError)):
        _scale.scale(np.ones(20, np.float32)[::2], np.empty(10, np.float32), 2.0)
    readonly = np.empty(10, np.float32)
    readonly.flags.writeable = False
    with pytest.raises((BufferError, ValueError)):
        _scale.scale(values, readonly, 2.0)
    assert values.tolist() == [1.0] * 10


def test_scale_kernel_releases_the_interpreter_lock():
    # While a thread is in the kernel, this thread runs: it sees the output
    # half written (first element done, last not yet), which is impossible
    # if the kernel holds the lock. A long switch interval makes the lock
    # change hands only where it is given up (thread.start() here, the
    # kernel there), whatever other threads earlier tests left. A call long
    # enough (2**25 values, tens of milliseconds) to span a scheduler time
    # slice, retried, in case this thread still gets no core during a whole
    # call on a busy machine.
    import sys
    import threading

    from romosaic import _scale

    values = np.ones(2**25, np.float16)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        for _ in range(20):
            out = np.zeros(values.shape, np.float32)
            thread = threading.Thread(target=_scale.scale, args=(values, out, 0.5))
            thread.start()
            while out[-1] == 0.0 and out[0] == 0.0:
                pass
            seen_half_written = bool(out[-1] == 0.0)
            thread.join()
            assert (out == 0.5).all()
            if seen_half_written:
                break
    finally:
        sys.setswitchinterval(interval)
    assert seen_half_written


def test_scale_kernel_in_two_threads_at_once_gives_numpy_bits():
    # Both threads run every pair of types, in and out of place, at the same
    # time but with different factors, so that anything the calls shared
    # would show.
    import threading

    from romosaic import _scale

    inputs = {dtype: np.tile(_values_of_every_kind(dtype)[:131_072], 8)
              for dtype in (np.float32, np.float16)}
    factors = (0.37**2, 0.37)
    cases = [(in_dtype, out_dtype, False) for in_dtype in inputs for out_dtype in inputs]
    cases += [(dtype, dtype, True) for dtype in inputs]
    barrier = threading.Barrier(2)
    results = [[], []]

    def work(index):
        for in_dtype, out_dtype, in_place in cases * 2:
            values = inputs[in_dtype]
            out = values.copy() if in_place else np.empty(values.shape, out_dtype)
            barrier.wait()
            _scale.scale(out if in_place else values, out, factors[index])
            results[index].append(out)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, factor in enumerate(factors):
        assert len(results[index]) == 2 * len(cases)
        for (in_dtype, out_dtype, in_place), out in zip(cases * 2, results[index], strict=True):
            expected = _numpy_scaled(inputs[in_dtype], factor, out_dtype)
            np.testing.assert_array_equal(
                _bits(out), _bits(expected),
                err_msg=f"{in_dtype.__name__} to {out_dtype.__name__}, in place: {in_place}")


def test_resample_onto_a_mostly_empty_grid_drizzles_the_window_with_any_workers(caplog):
    # Two 96² detectors on a grid about four times the area they cover: one
    # worker as well as two drizzle only the data window, and both give
    # the same mosaic, NaN and zero weight outside the window.
    from romosaic.simulate import make_image_models

    models, *_ = make_image_models(n_exposures=2, n_detectors=1, size=96, seed=5)
    library = FluxStep.call(ModelLibrary(models))
    mosaics = {}
    for workers in (1, 2):
        caplog.clear()
        with caplog.at_level("INFO", logger="romosaic.resample.tiled"):
            mosaics[workers] = ResampleStep.call(library, output_shape=[260, 250],
                                                 workers=workers)
        assert "of the grid's 260 x 250 pixels" in caplog.text
    one, two = mosaics[1], mosaics[2]
    for name in ("data", "weight", "context", "var_rnoise", "var_poisson", "err"):
        np.testing.assert_array_equal(np.asarray(getattr(one, name)),
                                      np.asarray(getattr(two, name)))
    weight = np.asarray(one.weight)
    assert 0.1 < (weight > 0).mean() < 0.5
    assert np.isnan(np.asarray(one.data)[weight == 0]).all()


def _flux_test_models():
    rng = np.random.default_rng(5)
    models = []
    for index in range(3):
        model = make_image_model(shape=(64, 64), conversion=0.37 + 0.1 * index,
                                 filename=f"f{index}_cal.asdf")
        data = rng.normal(10, 3, (64, 64)).astype(np.float32)
        data[3, 4] = np.nan
        model.data = data
        # Variances of every size, float16 subnormals after scaling among them.
        model.var_rnoise = rng.uniform(1e-7, 3e-4, (64, 64)).astype(np.float16)
        model.var_poisson = rng.uniform(0, 2, (64, 64)).astype(np.float16)
        models.append(model)
    return models


def test_flux_step_in_threads_equals_numpy_one_model_at_a_time():
    expected = []
    for model in _flux_test_models():
        factor = float(model.meta.photometry.conversion_megajanskys)
        expected.append({
            "data": model.data * np.float32(factor),
            "err": (model.err.astype(np.float32) * np.float32(factor)).astype(np.float16),
            "var_rnoise": (model.var_rnoise.astype(np.float32)
                           * np.float32(factor * factor)).astype(np.float16),
        })
    for workers in (1, 2):
        library = FluxStep.call(_flux_test_models(), workers=workers)
        for index, model in library.iter_models():
            for name, values in expected[index].items():
                np.testing.assert_array_equal(
                    np.asarray(getattr(model, name)).view(np.uint8), values.view(np.uint8),
                    err_msg=f"{name} of image {index} with {workers} workers")
            assert model.meta.cal_step.flux == "COMPLETE"


def test_flux_scaling_in_place_needs_no_new_plane():
    import tracemalloc

    from romosaic.flux import scale_to_surface_brightness

    plane = np.random.default_rng(1).uniform(0, 1e-3, (1024, 1024)).astype(np.float16)
    expected = scale_to_surface_brightness({"var_rnoise": plane}, 0.3)["var_rnoise"]
    tracemalloc.start()
    scaled = scale_to_surface_brightness({"var_rnoise": plane}, 0.3, in_place=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert scaled["var_rnoise"] is plane
    np.testing.assert_array_equal(plane.view(np.uint16), expected.view(np.uint16))
    # No temporary at all: not the plane (2 MiB), nor its float32 copy
    # (4 MiB), nor chunks of it.
    assert peak < 2**14
