"""Libraries of another class (the reference pipeline's ModelLibrary) in and out of the steps.

The reference pipeline is not a test dependency: `ReferenceStyleLibrary`
behaves as romancal 1.1.0's ``ModelLibrary`` does (an stpipe
``AbstractModelLibrary`` opening members with ``roman_datamodels.open``,
group ids from ``meta.observation.observation_id``, in memory or
``on_disk``), and counts how many of its models are borrowed at once.
"""

import hashlib
import json

import asdf
import numpy as np
import pytest
import roman_datamodels.datamodels as rdm
from stpipe.library import AbstractModelLibrary, NoGroupID

from romosaic.library import ModelLibrary
from romosaic.pipeline import MosaicPipeline
from romosaic.simulate import simulate_association
from romosaic.steps import FluxStep, OutlierDetectionStep, ResampleStep, SkyMatchStep
from romosaic.steps.outlier_detection_step import OUTLIER_FLAGS


class ReferenceStyleLibrary(AbstractModelLibrary):
    """An stpipe library of another class than romosaic's, as the reference has."""

    def __init__(self, *args, **kwargs):
        self.borrowed_now = 0
        self.most_borrowed = 0
        self.modified_shelves = 0
        super().__init__(*args, **kwargs)

    @property
    def crds_observatory(self):
        return "roman"

    def _datamodels_open(self, filename, **kwargs):
        return rdm.open(filename, **kwargs)

    @classmethod
    def _load_asn(cls, filename):
        with open(filename) as stream:
            return json.load(stream)

    def _filename_to_group_id(self, filename):
        with asdf.open(filename, lazy_load=True, lazy_tree=True) as af:
            observation = af["roman"]["meta"].get("observation", {})
            if observation.get("observation_id"):
                return str(observation["observation_id"])
        raise NoGroupID(filename)

    def _model_to_group_id(self, model):
        observation_id = model.meta.get("observation", {}).get("observation_id")
        if observation_id:
            return str(observation_id)
        raise NoGroupID(str(model.meta.filename))

    def _assign_member_to_model(self, model, member):
        # The reference records association attributes, not the group id.
        pass

    def borrow(self, index):
        model = super().borrow(index)
        self.borrowed_now += 1
        self.most_borrowed = max(self.most_borrowed, self.borrowed_now)
        return model

    def shelve(self, model, index=None, modify=True):
        super().shelve(model, index, modify)
        self.borrowed_now -= 1
        self.modified_shelves += bool(modify)

    def models(self):
        """Every model, borrowed and shelved unchanged (for checks)."""
        with self:
            for index in range(len(self)):
                model = self.borrow(index)
                self.shelve(model, index, modify=False)
                yield model


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_association(tmp_path_factory.mktemp("reference_library"), n_exposures=4,
                                size=160, seed=23, cosmic_ray_rate=3e-4)


def _library(sim, kind, tmp_path):
    if kind == "models":
        return ReferenceStyleLibrary([rdm.open(path) for path in sim.cal_paths])
    return ReferenceStyleLibrary(str(sim.asn_path), on_disk=(kind == "on_disk"),
                                 temp_directory=tmp_path if kind == "on_disk" else None)


@pytest.mark.parametrize("kind", ["in_memory", "on_disk", "models"])
def test_steps_return_the_callers_library_with_its_models_changed(sim, kind, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    digests = [_digest(path) for path in sim.cal_paths]
    originals = {}
    for path in sim.cal_paths:
        with rdm.open(path) as model:
            originals[str(model.meta.filename)] = (
                np.array(model.data), float(model.meta.photometry.conversion_megajanskys))
    library = _library(sim, kind, tmp_path)

    assert FluxStep.call(library) is library
    for model in library.models():
        data, conversion = originals[str(model.meta.filename)]
        assert model.meta.cal_step.flux == "COMPLETE"
        np.testing.assert_allclose(model.data, data * conversion, rtol=1e-6)

    assert SkyMatchStep.call(library) is library
    levels = [model.meta.background.level for model in library.models()]
    assert all(np.isfinite(level) for level in levels)
    assert len(set(levels)) > 1  # every image its own sky

    assert OutlierDetectionStep.call(library) is library
    flagged = {}
    for model in library.models():
        assert model.meta.cal_step.outlier_detection == "COMPLETE"
        flagged[str(model.meta.filename)] = (np.asarray(model.dq) & OUTLIER_FLAGS) != 0
    hits = [flagged[str(row["filename"])][row["y"], row["x"]] for row in sim.cosmic_rays
            if row["value_dn_s"] > 5]
    assert len(hits) > 10 and np.mean(hits) > 0.8

    mosaic = ResampleStep.call(library)
    assert isinstance(mosaic, rdm.MosaicModel)
    assert np.isfinite(mosaic.data).any() and (np.asarray(mosaic.weight) > 0).any()

    # Borrowed a few at a time, never the whole library at once.
    assert library.borrowed_now == 0
    assert library.most_borrowed < len(library)
    assert [_digest(path) for path in sim.cal_paths] == digests


def test_pipeline_on_a_library_of_another_class_matches_the_association(sim, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected, _, _ = MosaicPipeline.call(str(sim.asn_path), save_results=False)
    library = _library(sim, "on_disk", tmp_path)
    mosaic, catalog, segmentation = MosaicPipeline.call(library, save_results=False)
    np.testing.assert_array_equal(np.asarray(mosaic.data), np.asarray(expected.data))
    assert len(catalog.source_catalog) > 0
    assert isinstance(segmentation, rdm.MosaicSegmentationMapModel)
    # The caller's models carry the steps' changes, as the reference leaves them.
    for model in library.models():
        assert model.meta.cal_step.flux == "COMPLETE"
        assert model.meta.cal_step.outlier_detection == "COMPLETE"
    assert library.most_borrowed < len(library)


def test_flux_on_an_image_model_returns_that_model(sim):
    model = rdm.open(sim.cal_paths[0])
    data = np.array(model.data)
    conversion = float(model.meta.photometry.conversion_megajanskys)
    result = FluxStep.call(model)
    assert result is model
    assert result.meta.cal_step.flux == "COMPLETE"
    np.testing.assert_allclose(result.data, data * conversion, rtol=1e-6)


def test_flux_on_one_image_file_returns_its_model(sim):
    digest = _digest(sim.cal_paths[0])
    result = FluxStep.call(str(sim.cal_paths[0]))
    assert isinstance(result, rdm.ImageModel)
    assert result.meta.cal_step.flux == "COMPLETE"
    with rdm.open(sim.cal_paths[0]) as original:
        conversion = float(original.meta.photometry.conversion_megajanskys)
        np.testing.assert_allclose(result.data, np.asarray(original.data) * conversion,
                                   rtol=1e-6)
    assert _digest(sim.cal_paths[0]) == digest


def test_skymatch_on_an_association_or_list_returns_a_romosaic_library(sim):
    assert isinstance(SkyMatchStep.call(str(sim.asn_path)), ModelLibrary)
    assert isinstance(FluxStep.call([str(p) for p in sim.cal_paths]), ModelLibrary)
