"""ModelLibrary: input kinds, exposure groups, on_disk behaviour, bad files."""

import hashlib

import numpy as np
import pytest
import roman_datamodels.datamodels as rdm

from romosaic.associations import make_association, write_association
from romosaic.errors import AssociationError, ModelTypeError, RomosaicInputError
from romosaic.library import ModelLibrary

from .conftest import make_image_model


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def dataset(tmp_path):
    """Two exposures of two detectors each, and their association."""
    paths = []
    for exposure in (1, 2):
        for detector in (1, 2):
            name = f"e{exposure}_wfi{detector:02d}_cal.asdf"
            model = make_image_model(shape=(16, 16), observation_id=f"obs{exposure}",
                                     filename=name, data=np.full((16, 16), exposure))
            model.save(tmp_path / name)
            paths.append(tmp_path / name)
    asn_path = write_association(
        tmp_path / "set_asn.json",
        make_association(paths, product_name="set", relative_to=tmp_path),
    )
    return asn_path, paths


def test_association_groups_read_without_opening_models(dataset, monkeypatch):
    asn_path, _ = dataset

    def refuse(*args, **kwargs):
        raise AssertionError("a model was opened while building the library")

    monkeypatch.setattr(rdm, "open", refuse)
    library = ModelLibrary(asn_path)
    assert len(library) == 4
    assert library.product_name == "set"
    assert library.group_indices == {"obs1": [0, 1], "obs2": [2, 3]}


def test_a_recorded_group_id_outranks_the_observation_id(dataset):
    # Read from the file's tree alone (lazily converted): meta.group_id when
    # the file records one, else the exposure's observation_id.
    asn_path, paths = dataset
    with rdm.open(paths[3]) as model:
        model.meta["group_id"] = "visit7"
        model.save(paths[3].with_name("regrouped.asdf"))
    paths[3].with_name("regrouped.asdf").replace(paths[3])
    library = ModelLibrary(asn_path)
    assert library.group_indices == {"obs1": [0, 1], "obs2": [2], "visit7": [3]}


def test_metadata_is_read_once_per_file_and_follows_the_edits(dataset, monkeypatch):
    # The steps' metadata-only passes (grids, units, recorded states) read
    # each file once; what the steps record afterwards shows without a read.
    asn_path, _ = dataset
    library = ModelLibrary(asn_path)
    opened = []
    real_open = rdm.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rdm, "open", counting_open)
    first = dict(library.iter_metadata())
    assert len(opened) == 4
    assert [first[i].shape for i in range(4)] == [(16, 16)] * 4
    assert first[1].meta.cal_step.flux == "INCOMPLETE"

    library.update_meta(1, {"cal_step.flux": "COMPLETE"})
    again = dict(library.iter_metadata())
    assert len(opened) == 4
    assert again[1].meta.cal_step.flux == "COMPLETE"
    assert again[0].meta.cal_step.flux == "INCOMPLETE"
    with library:
        model = library.borrow(1)
        assert model.meta.cal_step.flux == "COMPLETE"
        library.shelve(model, 1, modify=False)

    # Metadata changed in a borrowed model and kept with it replaces what
    # was kept from the file.
    with library:
        model = library.borrow(2)
        model.meta.filename = "renamed_cal.asdf"
        library.shelve(model, 2, modify=True)
    assert library.metadata(2).meta.filename == "renamed_cal.asdf"
    assert library.metadata(3).meta.filename == "e2_wfi02_cal.asdf"


@pytest.mark.parametrize("kind", ["asn", "dict", "single", "names", "models"])
def test_every_input_kind(dataset, kind, monkeypatch):
    asn_path, paths = dataset
    monkeypatch.chdir(asn_path.parent)
    init = {
        "asn": asn_path,
        "dict": make_association([p.name for p in paths], product_name="d"),
        "single": paths[0],
        "names": [str(p) for p in paths],
        "models": [rdm.open(p) for p in paths],
    }[kind]
    library = ModelLibrary(init)
    expected = 1 if kind == "single" else 4
    assert len(library) == expected
    with library:
        model = library.borrow(0)
        assert isinstance(model, rdm.ImageModel)
        assert float(model.data[0, 0]) == 1.0
        library.shelve(model, 0, modify=False)
    if kind == "single":
        assert library.product_name == "e1_wfi01"
    else:
        assert sorted(library.group_indices) == ["obs1", "obs2"]


def test_on_disk_keeps_changes_in_temp_files_and_cleans_up(dataset, tmp_path):
    asn_path, paths = dataset
    before = [_digest(p) for p in paths]
    work = tmp_path / "work"
    work.mkdir()
    library = ModelLibrary(asn_path, on_disk=True, temp_directory=work)
    temp_dirs = list(work.glob("romosaic-tmp-*"))
    assert len(temp_dirs) == 1
    for _, model in library.iter_models(modify=True):
        model.data = model.data * 10
    for index, model in library.iter_models():
        assert float(model.data[0, 0]) == 10.0 * (1 + index // 2)
    assert any(temp_dirs[0].rglob("*.asdf"))
    library.close()
    assert not temp_dirs[0].exists()
    assert [_digest(p) for p in paths] == before


def test_wrong_model_type_is_a_one_line_error(tmp_path):
    mosaic = rdm.MosaicModel.create_fake_data(shape=(8, 8))
    path = tmp_path / "mosaic_cal.asdf"
    mosaic.save(path)
    library = ModelLibrary(path)
    with library, pytest.raises(ModelTypeError) as info:
        library.borrow(0)
    assert str(path) in str(info.value)
    assert "MosaicModel" in str(info.value)


def test_corrupt_and_missing_files(tmp_path):
    corrupt = tmp_path / "broken_cal.asdf"
    corrupt.write_bytes(b"#ASDF 1.0.0\n%YAML 1.1\n--- !garbage {\n")
    with pytest.raises(RomosaicInputError, match="broken_cal.asdf: not a readable"):
        with ModelLibrary(corrupt) as library:
            library.borrow(0)
    with pytest.raises(AssociationError, match="missing_cal.asdf: file not found"):
        ModelLibrary(tmp_path / "missing_cal.asdf")
    with pytest.raises(AssociationError, match="empty list"):
        ModelLibrary([])


@pytest.mark.parametrize("on_disk", [False, True])
def test_map_models_in_threads_gives_results_in_order_and_the_first_error(dataset, on_disk,
                                                                         tmp_path):
    asn_path, _ = dataset
    library = ModelLibrary(asn_path, on_disk=on_disk, temp_directory=tmp_path)

    def describe(index, model):
        return index, str(model.meta.filename), float(np.asarray(model.data).sum())

    one_at_a_time = library.map_models(describe, threads=1)
    assert [name for _, name, _ in one_at_a_time] == [
        "e1_wfi01_cal.asdf", "e1_wfi02_cal.asdf", "e2_wfi01_cal.asdf", "e2_wfi02_cal.asdf"]
    assert library.map_models(describe, threads=2) == one_at_a_time

    def fail_on_odd(index, model):
        if index % 2:
            raise RomosaicInputError(f"{model.meta.filename}: bad {index}")
        return index

    with pytest.raises(RomosaicInputError, match="e1_wfi02_cal.asdf: bad 1"):
        library.map_models(fail_on_odd, threads=2)
    # Every model was shelved again: the library is as usable as before.
    assert library.map_models(lambda index, model: index, threads=2) == [0, 1, 2, 3]
    library.close()


def test_map_models_keeps_changes_made_in_threads(dataset):
    asn_path, paths = dataset
    before = [_digest(p) for p in paths]
    library = ModelLibrary(asn_path)

    def triple(index, model):
        model.data = np.asarray(model.data) * 3

    library.map_models(triple, modify=True, threads=2)
    for index, model in library.iter_models():
        assert float(model.data[0, 0]) == 3.0 * (1 + index // 2)
    library.close()
    assert [_digest(p) for p in paths] == before
