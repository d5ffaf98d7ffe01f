"""Images that live in their files: edits applied on borrow, memory flat in the inputs."""

import gc
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest
import roman_datamodels.datamodels as rdm

import romosaic.library as library_module
from romosaic.associations import make_association, write_association
from romosaic.flux import scale_to_surface_brightness
from romosaic.library import DQFlags, ModelLibrary
from romosaic.simulate import simulate_association
from romosaic.steps import FluxStep

from .conftest import make_image_model

SHAPE = (32, 32)
CONVERSION = 0.37


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _models():
    rng = np.random.default_rng(4)
    models = []
    for exposure in (1, 2):
        name = f"e{exposure}_cal.asdf"
        model = make_image_model(shape=SHAPE, observation_id=f"obs{exposure}", filename=name,
                                 data=rng.normal(1.0, 0.3, SHAPE), conversion=CONVERSION)
        model.var_rnoise = rng.uniform(1e-3, 1e-2, SHAPE).astype(np.float16)
        models.append(model)
    return models


@pytest.fixture
def files(tmp_path):
    """Two small images in files, and their association."""
    paths = []
    for model in _models():
        path = tmp_path / str(model.meta.filename)
        model.save(path)
        paths.append(path)
    asn = write_association(tmp_path / "pair_asn.json",
                            make_association(paths, product_name="pair", relative_to=tmp_path))
    return asn, paths


def _record_everything(library):
    """One edit of each kind on member 0, as the steps record them."""
    with library:
        model = library.borrow(0)
        library.record_flux_scale(0, CONVERSION)
        library.record_sky_subtraction(0, 0.125)
        library.add_dq_flags(0, [0, 5, 1023], 16)
        library.update_meta(0, {"cal_step.flux": "COMPLETE",
                                "background": {"level": 0.125, "subtracted": True,
                                               "method": "match"}})
        library.shelve(model, 0, modify=False)


def _arrays(model):
    return {name: np.asarray(getattr(model, name)).copy()
            for name in ("data", "dq", "err", "var_rnoise", "var_poisson")}


def test_edits_give_the_model_that_changing_it_in_memory_gives(files):
    asn, paths = files
    before = [_digest(p) for p in paths]
    streamed = ModelLibrary(asn)
    in_memory = ModelLibrary([rdm.open(p) for p in paths])
    for library in (streamed, in_memory):
        _record_everything(library)
    with streamed, in_memory:
        ours, theirs = streamed.borrow(0), in_memory.borrow(0)
        for name, values in _arrays(theirs).items():
            assert np.array_equal(np.asarray(getattr(ours, name)), values, equal_nan=True), name
        assert ours.meta.cal_step.flux == theirs.meta.cal_step.flux == "COMPLETE"
        assert ours.meta.background.level == 0.125
        streamed.shelve(ours, 0, modify=False)
        in_memory.shelve(theirs, 0, modify=False)
    # The same numbers as the flux module's own conversion, then the sky.
    original = rdm.open(paths[0])
    expected = scale_to_surface_brightness({"data": np.asarray(original.data),
                                            "var_rnoise": np.asarray(original.var_rnoise)},
                                           CONVERSION)
    with streamed:
        model = streamed.borrow(0)
        assert np.array_equal(model.data, expected["data"] - np.float32(0.125))
        assert np.array_equal(model.var_rnoise, expected["var_rnoise"])
        assert model.dq.reshape(-1)[[0, 5, 1023]].tolist() == [16, 16, 16]
        assert int(model.dq.reshape(-1)[1]) == 0
        streamed.shelve(model, 0, modify=False)
    assert not streamed._loaded_models  # nothing held in memory
    assert streamed.edits(1).edits == []
    assert [_digest(p) for p in paths] == before


def test_a_borrow_reads_only_the_arrays_it_uses(files, monkeypatch):
    asn, _ = files
    library = ModelLibrary(asn)
    _record_everything(library)
    scaled = []
    real = library_module.scale_to_surface_brightness

    def counting(arrays, factor, **kwargs):
        scaled.extend(arrays)
        return real(arrays, factor, **kwargs)

    monkeypatch.setattr(library_module, "scale_to_surface_brightness", counting)
    with library:
        model = library.borrow(0)
        assert model.data.shape == SHAPE and model.meta.cal_step.flux == "COMPLETE"
        assert scaled == []
        np.asarray(model.err)
        np.asarray(model.err)
        assert scaled == ["err"]
        library.shelve(model, 0, modify=False)


def _root(array):
    """The array that owns ``array``'s memory."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _count_opened_files(monkeypatch):
    """The names of the files roman_datamodels opens from now on, in order."""
    opened = []
    real_open = rdm.open

    def counting_open(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rdm, "open", counting_open)
    return opened


def test_each_file_is_opened_once_and_every_borrow_gets_a_model_of_its_own(files, monkeypatch):
    # Converting a file's tree is the dear part of opening it: the library
    # opens each member's file once. Each borrow still gets the model a new
    # opening would give, with the edits recorded so far, arrays that it
    # alone owns (freed with it), and nothing of what an earlier borrow
    # changed without keeping it.
    asn, paths = files
    with rdm.open(paths[0]) as original:
        expected = _arrays(original)
    opened = _count_opened_files(monkeypatch)
    library = ModelLibrary(asn)
    library.record_flux_scale(0, CONVERSION)
    with library:
        for borrow in range(3):
            model = library.borrow(0)
            assert model.meta.filename == "e1_cal.asdf"
            # Scaled once, by this borrow's own arrays.
            np.testing.assert_array_equal(
                model.data, scale_to_surface_brightness({"data": expected["data"]},
                                                        CONVERSION)["data"])
            np.testing.assert_array_equal(model.dq, expected["dq"])
            owner = weakref.ref(_root(np.asarray(model.dq)))
            model.data[0, 0] = -1.0
            model.meta.filename = f"changed{borrow}.asdf"
            library.shelve(model, 0, modify=False)
            del model
            gc.collect()
            assert owner() is None
            if borrow == 1:
                library.add_dq_flags(0, [3], 8)
                expected["dq"].reshape(-1)[3] |= 8
    assert opened == ["e1_cal.asdf"]


def test_files_beyond_the_kept_number_are_opened_at_each_borrow(files, monkeypatch):
    asn, paths = files
    monkeypatch.setattr(library_module, "KEPT_FILES", 1)
    opened = _count_opened_files(monkeypatch)
    library = ModelLibrary(asn)
    for _ in range(2):
        for index, model in library.iter_models():
            assert model.meta.filename == paths[index].name
    assert opened == ["e1_cal.asdf", "e2_cal.asdf", "e2_cal.asdf"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_the_kept_files_follow_dropped_members_and_close_with_the_library(files):
    asn, paths = files

    def open_files():
        return len(os.listdir("/proc/self/fd"))

    before = open_files()
    library = ModelLibrary(asn)
    for _ in library.iter_models():
        pass
    assert open_files() == before + 2
    library.drop_members([0])
    assert open_files() == before + 1
    with library:
        model = library.borrow(0)
        assert model.meta.filename == "e2_cal.asdf"
        with rdm.open(paths[1]) as original:
            np.testing.assert_array_equal(model.data, original.data)
        library.shelve(model, 0, modify=False)
    library.close()
    assert open_files() == before


def test_outlier_flags_are_kept_compactly():
    size = 4088 * 4088
    few = DQFlags.from_indices(np.arange(0, 1000, 7), 24, size)
    assert few.indices is not None and few.nbytes == few.indices.size * 4
    many = DQFlags.from_indices(np.arange(0, size, 3), 24, size)
    assert many.packed is not None and many.nbytes == (size + 7) // 8
    dq = np.zeros(size, np.uint32)
    dq[1] = 1
    flagged = many.apply_to("dq", dq)
    assert flagged is dq  # in place
    assert dq[:4].tolist() == [24, 1, 0, 24]
    with pytest.raises(ValueError, match="outside an image"):
        DQFlags.from_indices([size], 24, size)


def test_a_change_made_outside_the_edits_is_never_lost(files, tmp_path):
    asn, paths = files
    before = [_digest(p) for p in paths]
    for on_disk in (False, True):
        library = ModelLibrary(asn, on_disk=on_disk, temp_directory=tmp_path)
        _record_everything(library)
        with library:
            model = library.borrow(0)
            model.data[0, 0] = 42.0  # in place, unknown to the library
            library.shelve(model, 0)
        assert (0 in library._loaded_models) is not on_disk
        with rdm.open(paths[0]) as original:
            pixel = float(original.data[1, 1])
        with library:
            model = library.borrow(0)
            assert float(model.data[0, 0]) == 42.0
            assert float(model.data[1, 1]) == pytest.approx(pixel * CONVERSION - 0.125,
                                                             rel=1e-6)
            assert model.meta.background.level == 0.125
            library.shelve(model, 0, modify=False)
        # Edits recorded later apply over the kept model.
        library.add_dq_flags(0, [2], 4)
        with library:
            model = library.borrow(0)
            assert float(model.data[0, 0]) == 42.0
            assert int(model.dq.reshape(-1)[2]) == 4
            library.shelve(model, 0, modify=False)
        library.close()
    assert [_digest(p) for p in paths] == before


def test_a_metadata_change_outside_the_edits_is_kept_without_the_model(files):
    # stpipe's handling of a skipped step changes meta.cal_step and shelves
    # with modify=True: only the metadata need be kept.
    asn, _ = files
    library = ModelLibrary(asn)
    FluxStep.call(library)
    with library:
        model = library.borrow(1)
        model.meta.cal_step["outlier_detection"] = "SKIPPED"
        model.meta["group_id"] = "renamed"
        library.shelve(model, 1)
    assert not library._loaded_models
    with library:
        model = library.borrow(1)
        assert model.meta.cal_step.outlier_detection == "SKIPPED"
        assert model.meta.cal_step.flux == "COMPLETE"
        assert model.meta.group_id == "renamed"
        data = np.asarray(model.data)
        library.shelve(model, 1, modify=False)
    original = rdm.open(files[1][1])
    assert np.array_equal(data, scale_to_surface_brightness(
        {"data": np.asarray(original.data)}, CONVERSION)["data"])


def test_a_step_skipped_in_a_pipeline_records_only_its_status(files):
    from romosaic.library import MetaUpdate
    from romosaic.pipeline import MosaicPipeline

    asn, _ = files
    library = ModelLibrary(asn)
    pipeline = MosaicPipeline()
    assert pipeline.tweakreg.skip
    pipeline.tweakreg.run(library)
    assert pipeline.tweakreg.class_alias == "tweakreg"
    assert not library._loaded_models
    (edit,) = library.edits(0).edits
    assert edit == MetaUpdate(((("cal_step", "tweakreg"), "SKIPPED"),))


def test_memory_mapped_inputs_are_edited_in_copies(files):
    asn, paths = files
    before = [_digest(p) for p in paths]
    library = ModelLibrary(asn, memmap=True)
    _record_everything(library)
    with library:
        model = library.borrow(0)
        assert float(model.dq.reshape(-1)[5]) == 16
        np.asarray(model.data)
        library.shelve(model, 0, modify=False)
    assert [_digest(p) for p in paths] == before


def test_edits_can_be_recorded_without_borrowing(files):
    asn, _ = files
    library = ModelLibrary(asn)
    library.add_dq_flags(1, [3], 8)  # the library closed
    with library:
        library.add_dq_flags(1, [4], 8)  # open, the model not borrowed
        model = library.borrow(1)  # the library is still open
        assert model.dq.reshape(-1)[[3, 4]].tolist() == [8, 8]
        library.shelve(model, 1, modify=False)
    with pytest.raises(IndexError, match="no member 2"):
        library.update_meta(2, {"filename": "x"})


def test_map_models_in_threads_keeps_few_models_borrowed(tmp_path):
    paths = []
    for index in range(7):
        model = make_image_model(shape=(8, 8), filename=f"m{index}_cal.asdf",
                                 observation_id=f"obs{index}")
        model.save(tmp_path / f"m{index}_cal.asdf")
        paths.append(tmp_path / f"m{index}_cal.asdf")
    library = ModelLibrary([str(p) for p in paths])
    most = []

    def count(index, model):
        most.append(len(library._ledger))
        return index

    assert library.map_models(count, threads=2) == list(range(7))
    assert max(most) <= 3


# Peak traced memory of each run, in one process: the smaller run goes first,
# so what the first run leaves behind (caches) counts against the larger.
_PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, tracemalloc
    from romosaic.pipeline import MosaicPipeline
    tracemalloc.start()
    peaks = []
    for asn, output_dir in zip(sys.argv[1::2], sys.argv[2::2]):
        tracemalloc.reset_peak()
        MosaicPipeline.call(asn, output_dir=output_dir, save_results=True,
                            steps={"outlier_detection": {"memory_budget": 1.0},
                                   "source_catalog": {"skip": True}})
        peaks.append(tracemalloc.get_traced_memory()[1])
    print(json.dumps(peaks))
""")


def test_default_run_memory_is_flat_in_the_number_of_inputs(tmp_path):
    # Outlier detection's group frames are kept in files (memory_budget=1
    # MiB), as they are for large inputs anyway, and the catalog (of the
    # mosaic, after the inputs are done with) is skipped, so that the peaks
    # show what the library holds: per input, the opening of its file that
    # the borrows share (its converted metadata, about 0.2 MiB), not its
    # pixels. The peak grows by about 0.6 MiB per input here, against 3.7 MB
    # of planes per input.
    few, many = 3, 9
    sim = simulate_association(tmp_path / "data", n_exposures=many, size=512, seed=5)
    full = json.loads(sim.asn_path.read_text())
    arguments = []
    for count in (few, many):
        subset = dict(full)
        subset["products"] = [{"name": f"n{count}",
                               "members": full["products"][0]["members"][:count]}]
        asn = sim.asn_path.parent / f"n{count}_asn.json"
        asn.write_text(json.dumps(subset))
        (tmp_path / f"out{count}").mkdir()
        arguments += [str(asn), str(tmp_path / f"out{count}")]
    env = {**os.environ, "ROMOSAIC_WORKERS": "1", "STPIPE_DISABLE_CRDS_STEPPARS": "true"}
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, *arguments],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    peak_few, peak_many = json.loads(result.stdout.strip().splitlines()[-1])
    with rdm.open(sim.cal_paths[0]) as first:
        one_input = sum(np.asarray(getattr(first, name)).nbytes
                        for name in ("data", "dq", "err", "var_rnoise", "var_poisson"))
    # Holding every input would add (many - few) inputs' planes.
    assert peak_many - peak_few < 0.25 * (many - few) * one_input, (
        peak_few, peak_many, one_input)
