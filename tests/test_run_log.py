"""What a run tells its user: a short log, the reason of a failure last, a closing summary."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from romosaic.pipeline import MosaicPipeline
from romosaic.simulate import simulate_association
from romosaic.steps.base import _changed_parameters

STRUN = str(Path(sys.executable).parent / "strun")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_association(tmp_path_factory.mktemp("run_log"), n_exposures=2, size=160,
                                seed=41)


def test_a_failed_run_ends_with_its_reason(tmp_path, clean_env):
    asn = tmp_path / "bad_asn.json"
    asn.write_text('{"products": []}')
    run = subprocess.run([STRUN, "roman_mos", str(asn)], cwd=tmp_path, env=clean_env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip("- ")]
    # No screenful of parameters before it: the reason is the last thing said.
    assert len(lines) <= 8, "\n".join(lines)
    assert "association has no products" in lines[-1]
    assert str(asn.name) in lines[-1]
    assert not any("parameters are" in line for line in lines)


def test_the_run_ends_with_a_summary(sim, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        mosaic, catalog, _ = MosaicPipeline.call(str(sim.asn_path), save_results=True,
                                                 output_dir=str(tmp_path / "out"),
                                                 steps={"resample": {"pixfrac": 0.8}})
    messages = [record.getMessage() for record in caplog.records]
    changed = [m for m in messages if "parameters differing from the defaults" in m]
    assert len(changed) == 1 and "steps.resample.pixfrac=0.8" in changed[0]
    summary = [m for m in messages if " summary (" in m]
    assert len(summary) == 1
    text = summary[0]
    ny, nx = mosaic.data.shape
    assert f"grid: {nx} x {ny} pixels of 0.1100 arcsec (free TAN grid)" in text
    assert "inputs: 2 used, 0 skipped" in text
    assert f"catalog: {len(catalog.source_catalog)} sources" in text
    for step in ("flux", "skymatch", "outlier_detection", "resample", "source_catalog"):
        assert f"  {step}: " in text and "peak memory" in text
    assert "tweakreg" not in text  # skipped steps are not listed
    for suffix in ("coadd.asdf", "cat.parquet", "segm.asdf"):
        path = tmp_path / "out" / f"{sim.product_name}_{suffix}"
        assert f"wrote {path.resolve()}" in text
    # Every step's own line, with its duration.
    assert any(m.startswith("resample done in ") for m in messages)
    # stpipe's dump of every parameter is a DEBUG message only.
    assert not any("parameters are:" in r.getMessage() for r in caplog.records
                   if r.levelno >= logging.INFO)


def test_changed_parameters_are_listed_by_dotted_name():
    values = {"a": 1, "b": "x", "steps": {"s": {"p": 0.8, "q": True}}, "class": "C"}
    defaults = {"a": 1, "b": "y", "steps": {"s": {"p": 1.0, "q": True}}, "class": "D"}
    assert _changed_parameters(values, defaults) == [("b", "x"), ("steps.s.p", 0.8)]
