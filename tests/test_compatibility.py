"""Drop-in compatibility with the reference pipeline's parameters (docs/compatibility.rst).

The reference's parameter files (romancal 1.1.0, its defaults) are shared
golden fixtures: the tests that need them skip where they are absent, and
fail on CI.
"""

import logging
import re
import subprocess
import sys
from pathlib import Path

import asdf
import numpy as np
import pytest
import roman_datamodels.datamodels as rdm

from romosaic.cli import main as romosaic_main
from romosaic.errors import RomosaicInputError
from romosaic.library import ModelLibrary
from romosaic.pipeline import MosaicPipeline
from romosaic.reference_pars import convert_parameter_file, romosaic_class_for
from romosaic.resample.coadd import fill_value
from romosaic.simulate import simulate_association
from romosaic.steps import (
    FluxStep,
    OutlierDetectionStep,
    ResampleStep,
    SkyMatchStep,
    SourceCatalogStep,
)

from .conftest import require_shared_fixtures

REPO = Path(__file__).resolve().parents[1]
STRUN = str(Path(sys.executable).parent / "strun")
REFERENCE_VERSION = "1.1.0"
CLASSES = {
    "roman_mos": MosaicPipeline,
    "flux": FluxStep,
    "skymatch": SkyMatchStep,
    "outlier_detection": OutlierDetectionStep,
    "resample": ResampleStep,
    "source_catalog": SourceCatalogStep,
}
COMMON_SECTION = "Every step and the pipeline"


def _reference_file(name):
    return require_shared_fixtures(f"romancal-{REFERENCE_VERSION}-pars",
                                   f"romancal_{REFERENCE_VERSION}_{name}.asdf")


def _reference_parameters(name):
    with asdf.open(_reference_file(name)) as af:
        return dict(af["parameters"])


def _romosaic_defaults(name):
    pars = CLASSES[name]().get_pars()
    pars.pop("steps", None)
    return pars


def _documented_rows():
    """``{section: {parameter: status}}`` from the tables of docs/compatibility.rst."""
    lines = (REPO / "docs" / "compatibility.rst").read_text().splitlines()
    sections, section, row = {}, None, None
    for index, line in enumerate(lines):
        if index + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[index + 1]):
            section = line.strip().strip("`")
            sections[section] = {}
            continue
        start = re.match(r"   \* - ``(\w+)``$", line)
        if start:
            row = [start[1]]
            continue
        cell = re.match(r"     - (.*)$", line)
        if cell and row is not None:
            row.append(cell[1])
            if len(row) == 4:
                sections[section][row[0]] = row[3]
                row = None
    return sections


def _defaults_equal(parameter, reference, ours):
    if parameter == "fillval":
        reference_value, our_value = fill_value(reference), fill_value(ours)
        return str(reference_value) == str(our_value)
    return reference == ours


@pytest.mark.parametrize("name", CLASSES)
def test_every_reference_parameter_is_accepted(name):
    missing = sorted(set(_reference_parameters(name)) - set(_romosaic_defaults(name)))
    assert not missing, f"{CLASSES[name].__name__} lacks the reference's {missing}"


@pytest.mark.parametrize("name", CLASSES)
def test_defaults_are_the_references_or_documented_differences(name):
    rows = _documented_rows()
    own, common = rows.get(name, {}), rows[COMMON_SECTION]
    ours = _romosaic_defaults(name)
    for parameter, reference in _reference_parameters(name).items():
        status = own.get(parameter, common.get(parameter))
        assert status is not None, f"docs/compatibility.rst: {name}.{parameter} not listed"
        different = status.startswith("**Different**")
        same_value = _defaults_equal(parameter, reference, ours[parameter])
        if reference == ours[parameter]:
            assert not different, f"{name}.{parameter}: listed as different but is not"
        else:
            assert different, (f"{name}.{parameter}: default {ours[parameter]!r} differs from "
                               f"the reference's {reference!r} without being documented")
        if parameter == "fillval":
            assert same_value, f"{name}.fillval: {ours[parameter]!r} is not {reference!r}"


def test_fillval_spellings_are_one_value():
    assert np.isnan(fill_value("NAN")) and np.isnan(fill_value("NaN"))
    step = ResampleStep(fillval="NAN")
    step.check_parameters()


# -- the reference's files, run -------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("compat")
    return simulate_association(out, n_exposures=2, n_detectors=1, size=160, seed=11)


@pytest.fixture(scope="module")
def coadd_path(sim, tmp_path_factory):
    mosaic = ResampleStep.call(str(sim.asn_path))
    path = tmp_path_factory.mktemp("coadd") / "sim_f158_coadd.asdf"
    mosaic.save(path)
    return path


@pytest.mark.parametrize("name", ["flux", "skymatch", "outlier_detection", "resample"])
def test_reference_step_file_runs_on_an_association(name, sim, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CLASSES[name].call(str(sim.asn_path), config_file=str(_reference_file(name)))
    if name == "resample":
        assert isinstance(result, rdm.MosaicModel)
        # The file's value, not romosaic's default, was used.
        assert result.meta.resample.good_bits == "~DO_NOT_USE"
        assert np.isfinite(result.data).any()
        return
    assert isinstance(result, ModelLibrary)
    with result:
        statuses = [model.meta.cal_step[name] for _, model in result.iter_models(modify=False)]
    assert statuses and all(status == "COMPLETE" for status in statuses)


def test_reference_source_catalog_file_runs_on_a_mosaic(coadd_path, tmp_path, monkeypatch,
                                                        caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="romosaic"):
        catalog, segmentation = SourceCatalogStep.call(
            str(coadd_path), config_file=str(_reference_file("source_catalog")))
    assert isinstance(catalog, rdm.MosaicSourceCatalogModel)
    assert isinstance(segmentation, rdm.MosaicSegmentationMapModel)
    # The file asks for PSF photometry: done, or said why not, never silently dropped.
    table = catalog.source_catalog
    assert "psf_flux" in table.colnames
    note = table.meta["psf_photometry"]
    assert note.startswith("performed") or any(
        note in record.getMessage() for record in caplog.records)


def test_reference_pipeline_file_runs(sim, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mosaic, catalog, segmentation = MosaicPipeline.call(
        str(sim.asn_path), config_file=str(_reference_file("roman_mos")))
    assert isinstance(mosaic, rdm.MosaicModel)
    assert mosaic.meta.resample.good_bits == "~DO_NOT_USE"
    assert isinstance(catalog, rdm.MosaicSourceCatalogModel)
    assert not list(tmp_path.iterdir())  # save_results is off in the file


def _romosaic(args):
    return subprocess.run([sys.executable, "-m", "romosaic.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_convert_pars_then_strun(sim, tmp_path, clean_env):
    copy = tmp_path / "roman_mos_pars.asdf"
    run = _romosaic(["convert-pars", _reference_file("roman_mos"), "-o", copy])
    assert run.returncode == 0, run.stderr
    with asdf.open(copy) as af:
        assert af["class"] == "romosaic.pipeline.MosaicPipeline"
        assert {step["class"].split(".")[0] for step in af["steps"]} == {"romosaic"}
        assert af["parameters"]["update_version"] is False
    run = subprocess.run([STRUN, str(copy), str(sim.asn_path), "--output_dir",
                          str(tmp_path / "out"), "--steps.source_catalog.suffix=sources"],
                         cwd=tmp_path, env=clean_env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    with rdm.open(tmp_path / "out" / "sim_f158_coadd.asdf") as mosaic:
        assert mosaic.meta.resample.good_bits == "~DO_NOT_USE"
    # The catalog's suffix is source_catalog's, in the pipeline too.
    assert (tmp_path / "out" / "sim_f158_sources.parquet").is_file()
    assert (tmp_path / "out" / "sim_f158_segm.asdf").is_file()


@pytest.mark.parametrize("name", ["flux", "skymatch", "outlier_detection", "resample",
                                  "source_catalog"])
def test_convert_pars_names_romosaics_step(name, tmp_path):
    copy = convert_parameter_file(_reference_file(name), tmp_path / "pars.asdf")
    with asdf.open(copy) as af:
        assert af["class"] == f"romosaic.steps.{CLASSES[name].__name__}"
        assert dict(af["parameters"]) == _reference_parameters(name)
    from stpipe import Step

    assert isinstance(Step.from_config_file(str(copy)), CLASSES[name])


def test_convert_pars_refuses_unknown_classes(tmp_path, capsys):
    source = tmp_path / "other.asdf"
    asdf.AsdfFile({"class": "jwst.resample.ResampleStep", "parameters": {}}).write_to(source)
    assert romosaic_main(["convert-pars", str(source), "-o", str(tmp_path / "x.asdf")]) == 2
    assert "has no romosaic counterpart" in capsys.readouterr().err
    with pytest.raises(RomosaicInputError, match="no romosaic counterpart"):
        romosaic_class_for("romancal.jump.JumpStep")
    assert not (tmp_path / "x.asdf").exists()


# -- what each reference parameter does -------------------------------------------------


def _notes(caplog, text):
    return [r for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("step_class, parameters, text, level", [
    (FluxStep, {"update_version": True}, "update_version=True has no effect", logging.INFO),
    (SkyMatchStep, {"stepsize": 5}, "stepsize=5 has no effect", logging.INFO),
    (ResampleStep, {"pixmap_order": 1}, "pixmap_order=1 has no effect", logging.INFO),
    (OutlierDetectionStep, {"pixmap_order": 2}, "pixmap_order=2 has no effect", logging.INFO),
])
def test_moot_reference_parameters_are_noted_once(step_class, parameters, text, level, sim,
                                                  caplog):
    with caplog.at_level(logging.INFO, logger="romosaic"):
        step_class.call(str(sim.asn_path))
    assert not _notes(caplog, text.split("=")[0] + "=")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="romosaic"):
        step_class.call(str(sim.asn_path), **parameters)
    notes = _notes(caplog, text)
    assert len(notes) == 1
    assert notes[0].levelno == level


def test_pipeline_notes_update_version(sim, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="romosaic"):
        MosaicPipeline.call(str(sim.asn_path), update_version=True,
                            steps={"outlier_detection": {"skip": True},
                                   "source_catalog": {"skip": True}})
    assert len(_notes(caplog, "update_version=True has no effect")) == 1


@pytest.mark.parametrize("step_class", [OutlierDetectionStep, ResampleStep])
def test_in_memory_false_keeps_models_and_planes_on_disk(step_class, sim, caplog):
    assert step_class().open_library(str(sim.asn_path)).on_disk is False
    library = step_class(in_memory=False).open_library(str(sim.asn_path))
    assert library.on_disk is True
    with caplog.at_level(logging.INFO, logger="romosaic"):
        step_class.call(str(sim.asn_path), in_memory=False)
    assert _notes(caplog, "kept in memory-mapped files")


def test_in_memory_false_in_the_pipeline_is_on_disk():
    assert MosaicPipeline().wants_models_on_disk() is False
    assert MosaicPipeline(on_disk=True).wants_models_on_disk() is True
    for step in ("outlier_detection", "resample"):
        pipeline = MosaicPipeline(steps={step: {"in_memory": False}})
        assert pipeline.wants_models_on_disk() is True


def test_forced_segmentation_reaches_the_step(coadd_path, sim, tmp_path):
    # Forced photometry itself: tests/test_forced_photometry.py.
    segmentation = tmp_path / "segm.asdf"
    with pytest.raises(RomosaicInputError, match="segm.asdf: forced_segmentation file not found"):
        SourceCatalogStep.call(str(coadd_path), forced_segmentation=str(segmentation))
    with pytest.raises(RomosaicInputError, match="x.asdf: forced_segmentation file not found"):
        MosaicPipeline.call(str(sim.asn_path),
                            steps={"source_catalog": {"forced_segmentation": "x.asdf"}})


def test_source_catalog_suffix_names_the_catalog(coadd_path, tmp_path):
    # File naming only: the PSF fit (tested on its own) is left out.
    SourceCatalogStep.call(str(coadd_path), save_results=True, output_dir=str(tmp_path),
                           fit_psf=False)
    assert (tmp_path / "sim_f158_cat.parquet").is_file()
    SourceCatalogStep.call(str(coadd_path), save_results=True, output_dir=str(tmp_path),
                           suffix="sources", fit_psf=False)
    assert (tmp_path / "sim_f158_sources.parquet").is_file()


def test_propagate_dq_gives_the_mosaic_the_flags_of_the_drizzled_pixels(sim, tmp_path):
    from roman_datamodels.dqflags import pixel

    models = [rdm.open(path) for path in sim.cal_paths]
    for model in models:
        model.dq = np.asarray(model.dq) & ~np.uint32(pixel.JUMP_DET)
    # An acceptable flag on a 3 x 3 block of the first image; a flag that
    # good_bits refuses on another block (those pixels are not drizzled).
    dq = np.array(models[0].dq)
    dq[60:63, 70:73] |= pixel.JUMP_DET
    dq[100:103, 40:43] |= pixel.DO_NOT_USE | pixel.JUMP_DET
    models[0].dq = dq
    mosaic = ResampleStep.call(models, propagate_dq=True)
    assert mosaic.dq.dtype == np.uint32 and mosaic.dq.shape == mosaic.data.shape

    jump = (mosaic.dq & pixel.JUMP_DET) != 0
    ra, dec = models[0].meta.wcs(71, 61)
    x, y = mosaic.meta.wcs.invert(ra, dec)
    assert jump[round(float(y)), round(float(x))]
    # The block's drops reach at most a pixel beyond it on the same scale.
    assert 9 <= jump.sum() <= 25
    assert not ((mosaic.dq & pixel.DO_NOT_USE) != 0).any()
    # No flag without a deposit.
    assert not mosaic.dq[np.asarray(mosaic.weight) <= 0].any()

    path = tmp_path / "dq_coadd.asdf"
    mosaic.save(path)
    with rdm.open(path) as reopened:
        np.testing.assert_array_equal(reopened.dq, mosaic.dq)
    assert "dq" not in ResampleStep.call(models)._instance
