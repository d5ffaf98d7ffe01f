"""Survey runs: plans of per-skycell tasks on a Dask LocalCluster or a process pool."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import roman_datamodels.datamodels as rdm

from romosaic.cli import main as romosaic_main
from romosaic.errors import RomosaicInputError
from romosaic.pipeline.options import normalize_options, options_to_config, validate_options
from romosaic.simulate import simulate_association
from romosaic.simulate.writer import cal_filename, observation_id
from romosaic.skycell import get_tessellation
from romosaic.survey.manifest import (
    eta_seconds,
    format_status_table,
    parse_memory,
    reconcile,
    should_retry,
    task_fingerprint,
    verify_products,
)
from romosaic.survey.plan import covered_pixels, estimate_task_cost, load_plan
from romosaic.survey.status import merge_status

ROMOSAIC = str(Path(sys.executable).parent / "romosaic")
# A free grid keeps each task small (the full 5000 x 5000 skycell grid is what a
# real survey uses); the pixfrac shows that options reach every task.
OPTIONS = ["--resample_on_skycell=false", "--steps.resample.pixfrac=0.8"]
MOSAIC_ARRAYS = ("data", "err", "weight", "context", "var_poisson", "var_rnoise")


# --------------------------------------------------------------------------
# Simulated survey: four skycells around one corner, plus a task that fails


def _cell_near(ra, dec):
    cells = get_tessellation().skycells_touching([ra], [dec])
    return min(cells, key=lambda c: (c.ra_center - ra) ** 2 + (c.dec_center - dec) ** 2)


def _simulate_exposure(directory, exposure, ra, dec, seed):
    """One 128 x 128 detector at (ra, dec), labelled as exposure ``exposure``."""
    sim = simulate_association(directory, n_exposures=1, size=128, seed=seed, ra=ra, dec=dec,
                               cosmic_ray_rate=0.0)
    path = sim.cal_paths[0]
    name = cal_filename(exposure, 1, "F158")
    if path.name == name:
        return path
    with rdm.open(path) as model:
        model.meta.filename = name
        model.meta.observation.observation_id = observation_id(exposure)
        model.save(directory / name)
    path.unlink()
    return directory / name


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """Exposures such that four skycells get different sets of inputs.

    E1 sits on the corner P shared by cells (r, c), (r, c+1), (r+1, c) and
    (r+1, c+1). E2 and E3 sit 300 skycell pixels from P inside (r, c) and
    (r, c+1) only (cells overlap by 100 pixels on each side of P), E4 inside
    (r, c-1).
    """
    root = tmp_path_factory.mktemp("survey")
    cell = _cell_near(80.0, -30.0)
    region = cell.region

    def sky(dx, dy):
        x = region.x_tangent + 4800 * cell.col + 2400 + dx
        y = region.y_tangent + 4800 * cell.row + 2400 + dy
        return (float(v) for v in region.pixel_to_sky(x, y))

    data = root / "data"
    data.mkdir()
    paths = [
        _simulate_exposure(data / "e1", 1, *sky(0, 0), seed=1),
        _simulate_exposure(data / "e2", 2, *sky(-300, -300), seed=2),
        _simulate_exposure(data / "e3", 3, *sky(300, -300), seed=3),
        _simulate_exposure(data / "e4", 4, *sky(-7200, -2400), seed=4),
    ]
    return root, paths


def _name(cell_name):
    return f"field_p_full_{cell_name}_f158"


@pytest.fixture(scope="module")
def planned(field):
    root, paths = field
    plan_dir = root / "plan"
    listing = root / "inputs.txt"
    listing.write_text("# survey inputs\n" + "\n".join(
        os.path.relpath(p, root) for p in paths) + "\n")
    assert romosaic_main(["survey", "plan", "-o", str(plan_dir), "--product-type", "full",
                          "--root", "field", "--from-list", str(listing)]) == 0
    plan = load_plan(plan_dir)
    by_members = {t["name"]: {Path(i).name for i in t["inputs"]} for t in plan["tasks"]}
    e1, e2, e3, e4 = (p.name for p in paths)
    failing = next(name for name, members in by_members.items() if members == {e4})
    good = sorted(set(by_members) - {failing})
    assert sorted(map(frozenset, (by_members[n] for n in good))) == sorted(
        map(frozenset, ({e1, e2}, {e1, e3}, {e1}, {e1})))
    # The input of one task becomes unreadable after planning.
    paths[3].write_bytes(paths[3].read_bytes()[:2000])
    return plan_dir, plan, good, failing


def _survey_env(home):
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}


@pytest.fixture(scope="module")
def killed_then_rerun(planned, tmp_path_factory):
    """`survey run` killed (client, cluster and all) part-way, then run again.

    The killed run has one worker, so it is stopped just after its first task
    finished, with the next one under way; the second run has two.
    """
    pytest.importorskip("distributed")
    plan_dir, plan, good, failing = planned
    home = tmp_path_factory.mktemp("home")
    log_path = home / "killed_run.log"
    with open(log_path, "w") as log:
        client = subprocess.Popen(
            [ROMOSAIC, "survey", "run", str(plan_dir), "--processes", "1", *OPTIONS],
            stdout=log, stderr=subprocess.STDOUT, env=_survey_env(home),
            start_new_session=True)
    receipts = plan_dir / "receipts"
    deadline = time.monotonic() + 300
    try:
        while not any(receipts.glob("*.json")):
            assert client.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no task finished in time"
            time.sleep(0.1)
    finally:
        os.killpg(client.pid, signal.SIGKILL)
        client.wait()
    done_before = {p.stem for p in receipts.glob("*.json")}
    stat_before = {
        path.name: (path.stat().st_ino, path.stat().st_mtime_ns)
        for name in done_before for path in (plan_dir / "products").glob(f"{name}_*")
    }
    lines = []
    from romosaic.survey import run_survey

    summary = run_survey(plan_dir, processes=2, options=OPTIONS, retries=1,
                         progress=lines.append, progress_interval=5)
    return summary, done_before, stat_before, lines


# --------------------------------------------------------------------------
# The outcomes


def test_plan_lists_tasks_with_costs(planned):
    plan_dir, plan, good, failing = planned
    assert plan["n_tasks"] == 5
    for task in plan["tasks"]:
        asn = json.loads((plan_dir / task["association"]).read_text())
        assert asn["target"] == task["skycell"] == asn["skycell_wcs_info"]["name"]
        assert asn["products"][0]["name"] == task["name"]
        members = [m["expname"] for m in asn["products"][0]["members"]]
        assert len(members) == task["cost"]["n_inputs"] == len(task["inputs"])
        assert task["cost"]["input_pixels"] == 128 * 128 * len(members)
        assert task["cost"]["output_pixels"] == 5000 * 5000
        assert task["cost"]["memory_bytes"] > 1e9  # a 5000^2 skycell mosaic
    # The inputs are listed relative to the plan directory.
    assert all((plan_dir / i).is_file() for t in plan["tasks"] for i in t["inputs"])


def test_killed_run_resumes_with_only_the_remaining_tasks(planned, killed_then_rerun):
    plan_dir, plan, good, failing = planned
    summary, done_before, stat_before, lines = killed_then_rerun
    # The kill came part-way: some tasks were complete, some not.
    assert 1 <= len(done_before) < len(good)
    assert summary.skipped == len(done_before)
    assert sorted(summary.succeeded) == sorted(set(good) - done_before)
    assert summary.failed == [failing]
    # Complete tasks were not run again: their files are the same files.
    for path in (plan_dir / "products").iterdir():
        if path.name in stat_before:
            assert (path.stat().st_ino, path.stat().st_mtime_ns) == stat_before[path.name]
    # Every task's products are there exactly once, whole and valid, and
    # nothing half-written is left anywhere.
    products = sorted(p.name for p in (plan_dir / "products").iterdir())
    assert products == sorted(f"{name}_{suffix}" for name in good
                              for suffix in ("cat.parquet", "coadd.asdf", "segm.asdf"))
    work = plan_dir / "work"
    assert not work.exists() or not any(work.iterdir())
    assert sorted(p.name for p in (plan_dir / "receipts").iterdir()) == sorted(
        f"{name}.json" for name in good)
    manifest = json.loads((plan_dir / "manifest.json").read_text())
    for name in good:
        record = manifest["tasks"][name]
        assert record["status"] == "done"
        ok, reason = verify_products(plan_dir / "products", record["products"], "checksum")
        assert ok, reason
        assert record["peak_memory_bytes"] > 50e6
        assert record["wall_seconds"] > 0
        with rdm.open(plan_dir / "products" / f"{name}_coadd.asdf") as mosaic:
            assert isinstance(mosaic, rdm.MosaicModel)
    assert [run["status"] for run in manifest["runs"]] == ["killed", "finished"]
    assert any("ETA" in line for line in lines)


def test_survey_products_equal_direct_pipeline_runs(planned, killed_then_rerun, tmp_path):
    from romosaic.pipeline import MosaicPipeline

    plan_dir, plan, good, failing = planned
    tasks = {t["name"]: t for t in plan["tasks"]}
    shapes = set()
    for name in good:
        reference = tmp_path / name
        MosaicPipeline.call(str(plan_dir / tasks[name]["association"]), save_results=True,
                            output_dir=str(reference), resample_on_skycell=False,
                            steps={"resample": {"pixfrac": 0.8}})
        products = plan_dir / "products"
        with rdm.open(products / f"{name}_coadd.asdf") as got, \
                rdm.open(reference / f"{name}_coadd.asdf") as want:
            assert got.meta.resample.pixfrac == 0.8
            shapes.add(got.data.shape)
            for array in MOSAIC_ARRAYS:
                np.testing.assert_array_equal(getattr(got, array), getattr(want, array),
                                              err_msg=f"{name} {array}")
        with rdm.open(products / f"{name}_segm.asdf") as got, \
                rdm.open(reference / f"{name}_segm.asdf") as want:
            np.testing.assert_array_equal(got.data, want.data)
        got = pq.read_table(products / f"{name}_cat.parquet")
        want = pq.read_table(reference / f"{name}_cat.parquet")
        assert got.num_rows == want.num_rows > 0
        assert got.column_names == want.column_names
        for column in want.column_names:
            np.testing.assert_array_equal(got[column].to_numpy(), want[column].to_numpy(),
                                          err_msg=f"{name} {column}")
    # The tasks made different mosaics (different inputs), not one mosaic four times.
    assert len(shapes) >= 3
    assert (5000, 5000) not in shapes


def test_failed_task_is_reported_and_does_not_stop_the_others(planned, killed_then_rerun,
                                                             capsys):
    plan_dir, plan, good, failing = planned
    summary, *_ = killed_then_rerun
    assert summary.exit_status == 1
    record = json.loads((plan_dir / "manifest.json").read_text())["tasks"][failing]
    assert record["status"] == "failed"
    assert "r0000101001001001001_0004_wfi01_f158_cal.asdf" in record["error"]
    assert record["failure"] == "input"
    assert record["attempts"] == 1  # an input error is not retried
    assert "r0000101001001001001_0004" in (plan_dir / record["log"]).read_text()
    assert not (plan_dir / "receipts" / f"{failing}.json").exists()
    # The table shows it, with its error.
    assert romosaic_main(["survey", "status", str(plan_dir)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith(failing))
    assert "failed" in row and "0004_wfi01_f158_cal.asdf" in row
    assert sum(line.split()[1] == "done" for line in table.splitlines()
               if line.startswith("field_")) == len(good)


def test_processes_fallback_reruns_only_the_failed_task(planned, killed_then_rerun, capsys):
    plan_dir, plan, good, failing = planned
    before = {p.name: p.stat().st_mtime_ns for p in (plan_dir / "products").iterdir()}
    status = romosaic_main(["survey", "run", str(plan_dir), "--scheduler", "processes",
                            "--processes", "1", "--verify", "checksum", *OPTIONS])
    out = capsys.readouterr().out
    assert status == 1
    assert f"{len(good)} already complete, 1 to run on a process pool of 1 worker" in out
    assert f"failed: {failing}:" in out
    assert {p.name: p.stat().st_mtime_ns for p in (plan_dir / "products").iterdir()} == before
    record = json.loads((plan_dir / "manifest.json").read_text())["tasks"][failing]
    assert record["attempts"] == 2 and record["status"] == "failed"


def test_memory_limit_stops_a_task(planned, tmp_path, capsys):
    plan_dir, plan, good, failing = planned
    # A copy of the plan holding one good task, so the real plan is left alone.
    copy = tmp_path / "plan"
    copy.mkdir()
    (copy / "asn").symlink_to(plan_dir / "asn")
    one = dict(plan, tasks=[t for t in plan["tasks"] if t["name"] == good[0]])
    (copy / "plan.json").write_text(json.dumps(one))
    from romosaic.survey import run_survey

    summary = run_survey(copy, scheduler="processes", processes=1, memory_limit="40MB",
                         retries=2, options=OPTIONS, progress=None)
    assert summary.failed == [good[0]]
    record = json.loads((copy / "manifest.json").read_text())["tasks"][good[0]]
    assert "exceeded the memory limit of 40.0 MB" in record["error"]
    assert record["attempts"] == 1  # the same limit would stop it again
    assert not (copy / "products").exists() or not any((copy / "products").iterdir())


# --------------------------------------------------------------------------
# Errors, options and the pure logic


def test_survey_run_without_dask_says_how_to_install(planned, monkeypatch, capsys):
    plan_dir, *_ = planned
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert romosaic_main(["survey", "run", str(plan_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'romosaic[dask]'" in err and "--scheduler processes" in err


def test_plan_errors_are_one_line_and_write_nothing(field, tmp_path, capsys):
    root, paths = field
    missing = tmp_path / "nowhere_cal.asdf"
    plan_dir = tmp_path / "plan"
    assert romosaic_main(["survey", "plan", "-o", str(plan_dir), str(paths[0]),
                          str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err
    assert not plan_dir.exists()
    assert romosaic_main(["survey", "run", str(tmp_path)]) == 2
    assert "not a survey plan directory" in capsys.readouterr().err


def test_existing_plan_needs_force(planned, capsys):
    plan_dir, plan, *_ = planned
    text = (plan_dir / "plan.json").read_text()
    assert romosaic_main(["survey", "plan", "-o", str(plan_dir), "whatever_cal.asdf"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (plan_dir / "plan.json").read_text() == text


def test_a_plan_in_use_is_not_replaced_or_run_twice(planned, capsys):
    import fcntl

    plan_dir, *_ = planned
    with open(plan_dir / ".lock", "a+") as lock:  # as a running `survey run` holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = {p.name: p.stat().st_mtime_ns for p in plan_dir.rglob("*") if p.is_file()}
        assert romosaic_main(["survey", "plan", "-o", str(plan_dir), "--force",
                              str(plan_dir / "plan.json")]) == 2
        assert "a `romosaic survey run` is using this plan" in capsys.readouterr().err
        assert romosaic_main(["survey", "run", str(plan_dir), "--scheduler", "processes"]) == 2
        assert "another `romosaic survey run` is using this plan" in capsys.readouterr().err
        assert romosaic_main(["survey", "status", str(plan_dir)]) == 0
        assert "(a survey run is in progress)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in plan_dir.rglob("*") if p.is_file()} == before


def test_pipeline_options_are_checked_before_running(planned, capsys):
    plan_dir, *_ = planned
    for bad, message in [
        ("--steps.resample.pixfrc=0.8", "pixfrc"),
        ("--steps.resample.pixfrac=abc", "pixfrac"),
        ("--output_dir=elsewhere", "set by `romosaic survey run`"),
    ]:
        assert romosaic_main(["survey", "run", str(plan_dir), bad]) == 2, bad
        assert message in capsys.readouterr().err, bad
    with pytest.raises(SystemExit):
        romosaic_main(["survey", "run", str(plan_dir), "--steps.resample.pixfrac", "0.8"])
    assert "--name=value" in capsys.readouterr().err


def test_option_helpers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.asdf").write_text("x")
    options = normalize_options(["--on_disk=true", "--steps.resample.output_wcs=grid.asdf",
                                 "-v"])
    assert options == ["--on_disk=true",
                       f"--steps.resample.output_wcs={tmp_path / 'grid.asdf'}", "--verbose"]
    assert options_to_config(options) == {
        "on_disk": "true", "steps": {"resample": {"output_wcs": str(tmp_path / "grid.asdf")}}}
    with pytest.raises(RomosaicInputError, match="kernel"):
        validate_options(["--steps.resample.kernel=nonsense"])
    # Values are read as strun reads them: "1,2" is a list.
    validate_options(["--steps.resample.output_shape=300,200", "--on_disk=true"])
    with pytest.raises(RomosaicInputError, match="unexpected argument"):
        normalize_options(["stray"])


def test_product_size_follows_the_pixels_the_inputs_reach(field, tmp_path):
    # The products are stored compressed: their size follows the pixels with
    # data, which the plan counts from the inputs' outlines on the skycell.
    _, paths = field
    with rdm.open(paths[1]) as model:  # E2: inside one cell, off its edges
        wcs, shape = model.meta.wcs, model.data.shape
    cell = _cell_near(80.0, -30.0)
    estimated = covered_pixels([(wcs, shape)], cell.wcs, cell.shape)
    # A 128 x 128 detector of 0.11" pixels covers about 256 x 256 skycell pixels.
    assert estimated == pytest.approx(256 * 256, rel=0.1)
    cost = estimate_task_cost([shape], cell.shape, covered=estimated)
    assert cost["output_bytes"] < 0.01 * estimate_task_cost([shape], cell.shape)["output_bytes"]


def test_cost_estimate():
    small = estimate_task_cost([(256, 256)] * 2, (5000, 5000))
    large = estimate_task_cost([(4088, 4088)] * 40, (5000, 5000))
    assert small["n_inputs"] == 2 and small["input_pixels"] == 2 * 256**2
    assert small["output_pixels"] == 25_000_000
    # Within 10% of the measured peak of `strun roman_mos` (1.50 GB) for this case.
    assert small["memory_bytes"] == pytest.approx(1.50e9, rel=0.1)
    # More than 32 inputs need a second context plane.
    assert large["output_bytes"] - small["output_bytes"] == 4 * 25_000_000
    assert large["memory_bytes"] > small["memory_bytes"] + 40 * 4088**2 * 40
    on_disk = estimate_task_cost([(4088, 4088)] * 40, (5000, 5000), on_disk=True)
    assert on_disk["memory_bytes"] < large["memory_bytes"]
    assert large["work"] == large["input_pixels"] + large["output_pixels"]


def _receipt(fingerprint, size=10):
    return {"fingerprint": fingerprint, "products": {"a_coadd.asdf": {"size": size,
                                                                      "sha256": "0" * 64}}}


def test_reconcile_and_status_merge():
    names = ["a", "b", "c", "d"]
    fingerprints = dict.fromkeys(names, "F")
    receipts = {"a": _receipt("F"), "b": _receipt("OLD"), "c": _receipt("F", size=11)}
    manifest = {"d": {"status": "failed", "attempts": 2, "error": "boom"}}

    def products_ok(receipt):
        size = receipt["products"]["a_coadd.asdf"]["size"]
        return (size == 10, None if size == 10 else "product a_coadd.asdf has 11 bytes")

    records, to_run = reconcile(names, manifest, receipts, fingerprints, products_ok)
    assert to_run == ["b", "c", "d"]
    assert records["a"]["status"] == "done"
    assert "options changed" in records["b"]["note"]
    assert records["c"]["note"] == "product a_coadd.asdf has 11 bytes"
    assert records["d"] == {"status": "pending", "attempts": 2, "error": "boom",
                            "fingerprint": "F"}

    # status: the receipt wins, unless a later attempt under other options failed.
    merged = merge_status(
        names, {"b": {"status": "failed", "fingerprint": "F", "error": "x"},
                "d": {"status": "running"}}, receipts, products_ok, run_active=False)
    assert [merged[n]["status"] for n in names] == ["done", "failed", "pending", "pending"]
    assert merged["d"]["note"] == "interrupted"
    table = format_status_table([{"name": n, "cost": {}} for n in names], merged)
    assert "4 tasks: 1 done, 1 failed, 0 running, 2 pending" in table


def test_retry_eta_memory_fingerprint():
    crash = {"status": "failed", "failure": "crash"}
    assert should_retry(crash, 1, 1) and not should_retry(crash, 2, 1)
    assert not should_retry({"status": "failed", "failure": "input"}, 1, 5)
    assert not should_retry({"status": "failed", "failure": "memory"}, 1, 5)
    assert not should_retry({"status": "done"}, 1, 5)
    assert eta_seconds(10.0, 0, 100) is None
    assert eta_seconds(10.0, 25, 75) == pytest.approx(30.0)
    assert parse_memory("4GB") == 4_000_000_000
    assert parse_memory("1.5GiB") == int(1.5 * 2**30)
    assert parse_memory("800 MB") == 800_000_000
    for bad in ("lots", "-1GB", "0"):
        with pytest.raises(RomosaicInputError, match="memory size"):
            parse_memory(bad)
    assert task_fingerprint("asn", ["--a=1"]) != task_fingerprint("asn", ["--a=2"])
    assert task_fingerprint("asn", []) == task_fingerprint(b"asn", [])


def test_verify_products_detects_changes(tmp_path):
    from romosaic.survey.manifest import file_sha256

    path = tmp_path / "x_coadd.asdf"
    path.write_bytes(b"0123456789")
    products = {path.name: {"size": 10, "sha256": file_sha256(path)}}
    assert verify_products(tmp_path, products, "checksum") == (True, None)
    path.write_bytes(b"0123456780")  # same size, other content
    assert verify_products(tmp_path, products, "size") == (True, None)
    ok, reason = verify_products(tmp_path, products, "checksum")
    assert not ok and "checksum" in reason
    path.unlink()
    assert verify_products(tmp_path, products, "size") == (False, "product x_coadd.asdf is missing")


def test_publish_moves_products_and_drops_the_old_receipt(tmp_path, monkeypatch):
    import errno

    from romosaic.survey import task as task_module
    from romosaic.survey.manifest import file_sha256

    staging = tmp_path / "work" / "t" / "attempt"
    (staging / ".survey").mkdir(parents=True)
    (staging / ".survey" / "spec.json").write_text("{}")
    (staging / "t_coadd.asdf").write_bytes(b"mosaic")
    (staging / "t_cat.parquet").write_bytes(b"catalog")
    products = tmp_path / "products"
    products.mkdir()
    (products / "t_coadd.asdf").write_bytes(b"old mosaic")
    receipt = tmp_path / "receipts" / "t.json"
    receipt.parent.mkdir()
    receipt.write_text("{}")
    # products/ on another file system: a plain rename out of staging fails.
    real_replace = os.replace

    def replace(source, destination):
        if Path(source).parent == staging:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(source, destination)

    monkeypatch.setattr(task_module.os, "replace", replace)
    recorded = task_module._publish(staging, products, receipt)
    assert sorted(recorded) == ["t_cat.parquet", "t_coadd.asdf"]
    assert (products / "t_coadd.asdf").read_bytes() == b"mosaic"
    assert recorded["t_coadd.asdf"] == {"size": 6,
                                        "sha256": file_sha256(products / "t_coadd.asdf")}
    assert not receipt.exists()  # until the new one is written
    assert sorted(p.name for p in products.iterdir()) == ["t_cat.parquet", "t_coadd.asdf"]


def test_status_json(planned, killed_then_rerun, capsys):
    plan_dir, plan, good, failing = planned
    assert romosaic_main(["survey", "status", str(plan_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run_in_progress"] is False
    statuses = {name: record["status"] for name, record in report["tasks"].items()}
    assert statuses == {**dict.fromkeys(good, "done"), failing: "failed"}


@pytest.mark.slow
def test_full_skycell_mosaics_and_memory_estimate(field, tmp_path):
    """Four tasks on their real 5000 x 5000 skycell grids, on a 2-worker LocalCluster."""
    pytest.importorskip("distributed")
    from romosaic.pipeline import MosaicPipeline
    from romosaic.survey import run_survey

    root, paths = field
    plan_dir = tmp_path / "plan"
    assert romosaic_main(["survey", "plan", "-o", str(plan_dir), "--product-type", "full",
                          *map(str, paths[:3])]) == 0
    plan = load_plan(plan_dir)
    assert plan["n_tasks"] == 4
    summary = run_survey(plan_dir, processes=2, progress=None)
    assert summary.exit_status == 0 and len(summary.succeeded) == 4
    manifest = json.loads((plan_dir / "manifest.json").read_text())
    for task in plan["tasks"]:
        record = manifest["tasks"][task["name"]]
        # The cost model is meant for sizing workers: within 30% of the measured peak.
        assert record["peak_memory_bytes"] == pytest.approx(task["cost"]["memory_bytes"],
                                                            rel=0.3)
    task = plan["tasks"][0]
    reference = tmp_path / "reference"
    MosaicPipeline.call(str(plan_dir / task["association"]), save_results=True,
                        output_dir=str(reference))
    with rdm.open(plan_dir / "products" / f"{task['name']}_coadd.asdf") as got, \
            rdm.open(reference / f"{task['name']}_coadd.asdf") as want:
        assert got.data.shape == (5000, 5000)
        assert got.meta.wcsinfo.skycell_name == task["skycell"]
        for array in MOSAIC_ARRAYS:
            np.testing.assert_array_equal(getattr(got, array), getattr(want, array))


def test_a_rerun_with_other_options_says_why_tasks_run_again(tmp_path):
    from romosaic.survey.manifest import FINGERPRINT_CHANGED
    from romosaic.survey.runner import _Run

    said = []
    run = object.__new__(_Run)
    run.records = {"a": {"status": "pending", "note": FINGERPRINT_CHANGED},
                   "b": {"status": "pending"}}
    run.manifest = {"runs": [{"options": ["--steps.resample.pixfrac=0.8"], "succeeded": 2}]}
    run.options = ["--steps.resample.pixfrac=1.0"]
    run.products_dir = tmp_path / "products"
    run.say = said.append
    run._explain_changed(["a", "b"])
    assert len(said) == 1
    message = said[0]
    assert "1 complete task(s) run again" in message and "options changed" in message
    assert "--steps.resample.pixfrac=0.8" in message and "pixfrac=1.0" in message
    assert "To keep them" in message and str(run.products_dir) in message
    # Nothing to explain when no complete task runs again.
    said.clear()
    run._explain_changed(["b"])
    assert said == []
