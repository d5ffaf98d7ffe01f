"""Plane stores: pages given back keep their values; arrays in memory are left alone."""

import mmap
import os

import asdf
import numpy as np
import pytest

from romosaic import _atomic
from romosaic._atomic import atomic_save_model
from romosaic.library import ModelLibrary
from romosaic.resample.planes import PlaneStore, release_pages
from romosaic.steps import FluxStep, ResampleStep

from .conftest import linux_only, proc_status_mib

ARRAYS = ("data", "err", "weight", "context", "var_rnoise", "var_poisson")

def _random_plane(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_released_pages_of_a_mapped_plane_read_back_equal(tmp_path):
    store = PlaneStore((512, 700), directory=tmp_path)
    store.new_plane("data", fill=np.nan)
    store.new_plane("context", np.uint32, depth=2)
    plane, context = store.array("data"), store.array("context")
    expected = _random_plane(plane.shape)
    plane[:300] = expected[:300]  # the rest is the fill, written through another mapping
    expected[300:] = np.nan
    context[1, 5:9] = 7
    # The files go; the mappings keep them (as a mosaic's planes are kept).
    store.close()
    assert list(tmp_path.iterdir()) == []

    # Whole planes, bands, column slices, strided views and buffers.
    for values in (plane, plane[10:20], plane[:, 3:5], plane[::7, ::3], memoryview(plane[40]),
                   context, context[1]):
        assert release_pages(values) > 0
        np.testing.assert_array_equal(plane, expected)
    assert (context[1, 5:9] == 7).all() and np.count_nonzero(context) == 4 * 700

    # Values written after a release are kept through the next one too.
    plane[100:110] = 5.0
    expected[100:110] = 5.0
    release_pages(plane[100:110])
    np.testing.assert_array_equal(plane, expected)
    assert release_pages(plane[:0]) == 0


def test_bands_of_a_store_on_disk_are_released_and_seen_by_every_mapping(tmp_path):
    store = PlaneStore((64, 1000), directory=tmp_path)
    store.new_plane("weight")
    whole = store.array("weight")
    with store.rows("weight", (8, 16)) as band:
        band[...] = 2.5
        assert release_pages(band) > 0
        assert (band == 2.5).all()
    assert (whole[8:16] == 2.5).all() and not whole[:8].any() and not whole[16:].any()
    np.testing.assert_array_equal(store.read("weight"), whole)
    store.close()


def test_a_removed_planes_file_becomes_the_next_plane_zeroed(tmp_path):
    store = PlaneStore((300, 200), directory=tmp_path)
    store.new_plane("weight")
    store.write("weight", 5.0)
    inode = next(tmp_path.iterdir()).stat().st_ino
    store.remove("weight")
    store.new_plane("next", fill=0)
    assert [p.stat().st_ino for p in tmp_path.iterdir()] == [inode]
    assert not store.read("next").any()
    store.new_plane("ones", fill=1.0)
    store.write("ones", 3.0, rows=(0, 1))
    store.remove("ones")
    store.new_plane("context", np.uint32, depth=2)  # another size: a file of its own
    assert store.read("context").shape == (2, 300, 200) and not store.read("context").any()
    store.new_plane("again", fill=2.0)  # the size of the spare: reused, and filled
    assert (store.read("again") == 2.0).all()
    assert len(list(tmp_path.iterdir())) == 3
    store.close()
    assert not list(tmp_path.iterdir())


def test_a_removed_plane_still_in_use_keeps_its_values(tmp_path):
    store = PlaneStore((40, 30), directory=tmp_path)
    store.new_plane("frame", fill=7.0)
    held = store.array("frame")
    store.remove("frame")
    store.new_plane("other")
    store.write("other", 1.0)
    assert (held == 7.0).all()
    del held
    store.close()
    assert not list(tmp_path.iterdir())


def test_release_leaves_arrays_that_are_not_plane_mappings_alone(tmp_path):
    # Dropping pages of anonymous or copy-on-write memory would lose what
    # was written there: for these, release_pages must do nothing.
    in_memory = PlaneStore((256, 256))
    in_memory.new_plane("data", fill=3.0)
    ordinary = np.arange(256 * 256, dtype=np.float64).reshape(256, 256)
    anonymous = mmap.mmap(-1, 2**20)
    from_anonymous = np.frombuffer(anonymous, np.uint8)
    from_anonymous[:] = 9
    path = tmp_path / "values.bin"
    _random_plane((256, 256)).tofile(path)
    private = np.memmap(path, np.float32, mode="c", shape=(256, 256))
    private[:] = -1.0  # copied on write: only in this process's memory
    shared = np.memmap(path, np.float32, mode="r+", shape=(256, 256))

    for values in (in_memory.array("data"), ordinary, from_anonymous, private, shared,
                   memoryview(ordinary), memoryview(anonymous), b"bytes", np.float32(1.0)):
        assert release_pages(values) == 0
    assert (in_memory.array("data") == 3.0).all()
    np.testing.assert_array_equal(ordinary.ravel(), np.arange(256 * 256))
    assert (from_anonymous == 9).all()
    assert (private == -1.0).all()
    del from_anonymous
    anonymous.close()


@linux_only
def test_released_pages_leave_the_resident_memory(tmp_path):
    store = PlaneStore((2048, 2048), directory=tmp_path)  # 16 MiB
    store.new_plane("data")
    plane = store.array("data")
    before = proc_status_mib("RssFile")
    plane[...] = 1.0
    assert proc_status_mib("RssFile") - before > 14
    release_pages(plane)
    assert proc_status_mib("RssFile") - before < 2
    assert float(plane.sum(dtype=np.float64)) == 2048 * 2048
    store.close()


def test_a_file_written_in_parts_holds_every_byte(tmp_path, monkeypatch):
    # Parts that do not fall on page or element boundaries, of an array
    # handed over as it is (as an uncompressed block is).
    monkeypatch.setattr(_atomic, "WRITE_CHUNK", 3 * 4096 + 5)
    store = PlaneStore((300, 301), directory=tmp_path)
    store.new_plane("data")
    plane = store.array("data")
    plane[...] = _random_plane(plane.shape)
    released = []

    def release(values):
        released.append(release_pages(values))

    path = tmp_path / "out.bin"
    with _atomic._SavingFile(path, [plane], release) as handle:
        assert os.fspath(handle) == str(path)
        assert handle.write(b"head") == 4
        assert handle.write(plane.data) == plane.nbytes
        assert handle.write(b"") == 0
    store.close()
    written = path.read_bytes()
    assert written[:4] == b"head" and written[4:] == plane.tobytes()
    assert sum(1 for n in released if n) > plane.nbytes // _atomic.WRITE_CHUNK


def _resampled(library, tmp_path, **options):
    return ResampleStep.call(library, output_shape=[260, 250], output_dir=str(tmp_path),
                             **options)


@pytest.fixture(scope="module")
def library():
    from romosaic.simulate import make_image_models

    models, *_ = make_image_models(n_exposures=2, n_detectors=1, size=96, seed=5)
    return FluxStep.call(ModelLibrary(models))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_mosaic_in_files_is_saved_with_the_arrays_made_in_memory(library, tmp_path,
                                                                   workers):
    # The planes of a grid mostly outside the inputs, in memory-mapped
    # files (in_memory=False) and in memory: the same arrays, in the models
    # and in the files written, whose pages are given back as they go.
    in_memory = _resampled(library, tmp_path / "memory", workers=workers)
    in_files = _resampled(library, tmp_path / "files", workers=workers, in_memory=False)
    assert not list((tmp_path / "files").glob(".romosaic-tmp-*"))
    for name in ARRAYS:
        assert release_pages(getattr(in_files, name)) > 0, name
        assert release_pages(getattr(in_memory, name)) == 0, name
    for mosaic, where in ((in_memory, "memory"), (in_files, "files")):
        path = atomic_save_model(mosaic, tmp_path / where / "mosaic_coadd.asdf")
        with asdf.open(path, lazy_load=False, memmap=False) as saved:
            for name in ARRAYS:
                np.testing.assert_array_equal(saved["roman"][name], getattr(in_memory, name),
                                              err_msg=f"{name}, saved from {where}")
                np.testing.assert_array_equal(getattr(mosaic, name),
                                              getattr(in_memory, name), err_msg=name)
            assert saved["roman"]["meta"]["filename"] == "mosaic_coadd.asdf"
    weight = np.asarray(in_memory.weight)
    assert 0.1 < (weight > 0).mean() < 0.5  # the window is a part of the grid


@linux_only
def test_saving_a_mosaic_in_files_keeps_its_planes_out_of_memory(library, tmp_path):
    mosaic = ResampleStep.call(library, output_shape=[2000, 2000], output_dir=str(tmp_path),
                               in_memory=False)  # six planes of 15 MiB
    before = proc_status_mib("RssFile")
    atomic_save_model(mosaic, tmp_path / "mosaic_coadd.asdf")
    assert proc_status_mib("RssFile") - before < 15
    for name in ARRAYS:
        assert release_pages(getattr(mosaic, name)) > 0, name
