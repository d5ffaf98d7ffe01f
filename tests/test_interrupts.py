"""Interrupted runs: killed, terminated or interrupted ``strun roman_mos`` runs.

After any interruption the output directory holds either the previous
complete products or none: every product present opens, validates and equals
a reference run's. Temporary files of a killed run are only ever in private
``romosaic-tmp-*`` directories (hidden for product writes), and the next run
removes them. SIGTERM and SIGINT let the run remove its temporary files
itself.

The default suite runs four interruptions; the ``slow`` version runs ten
SIGKILLs at random points.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import roman_datamodels.datamodels as rdm

from romosaic._atomic import (
    FOREIGN_STALE_AGE,
    TEMP_PREFIX,
    make_private_dir,
    remove_stale_temporaries,
)
from romosaic.pipeline import MosaicPipeline
from romosaic.simulate import simulate_association

STRUN = str(Path(sys.executable).parent / "strun")
PRODUCT = "kill"
PRODUCTS = (f"{PRODUCT}_coadd.asdf", f"{PRODUCT}_cat.parquet", f"{PRODUCT}_segm.asdf")
MOSAIC_ARRAYS = ("data", "err", "weight", "context", "var_rnoise", "var_poisson")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small association and the products of an uninterrupted run."""
    root = tmp_path_factory.mktemp("interrupts")
    sim = simulate_association(root / "inputs", n_exposures=3, size=160, seed=31,
                               product_name=PRODUCT)
    reference = root / "reference"
    MosaicPipeline.call(str(sim.asn_path), save_results=True, output_dir=str(reference))
    return sim.asn_path, reference


def _same_array(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _check_products(out, reference):
    """Every product present opens, validates and equals the reference; returns their names."""
    present = [name for name in PRODUCTS if (out / name).exists()]
    for name in present:
        if name.endswith(".parquet"):
            table, expected = pq.read_table(out / name), pq.read_table(reference / name)
            assert table.column_names == expected.column_names, name
            for column in table.column_names:
                assert _same_array(table[column].to_numpy(), expected[column].to_numpy()), \
                    (name, column)
            continue
        with rdm.open(out / name) as model, rdm.open(reference / name) as expected:
            model.validate()
            assert type(model) is type(expected), name
            arrays = MOSAIC_ARRAYS if isinstance(model, rdm.MosaicModel) else ("data",)
            for array in arrays:
                assert _same_array(getattr(model, array), getattr(expected, array)), \
                    (name, array)
    return present


def _names(directory):
    directory = Path(directory)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _temporaries(directory):
    return [name for name in _names(directory) if name.lstrip(".").startswith(TEMP_PREFIX)]


def _strays(directory):
    """Entries that are neither products nor private temporary directories."""
    return [name for name in _names(directory)
            if name not in PRODUCTS and not name.lstrip(".").startswith(TEMP_PREFIX)]


def _default_sigint():
    # A shell without job control starts background commands with SIGINT
    # ignored, and Python then never installs its KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Run:
    """A ``strun roman_mos`` process whose stderr is read line by line."""

    def __init__(self, asn, out, env, *, on_disk=False):
        args = [STRUN, "roman_mos", str(asn), "--output_dir", str(out)]
        if on_disk:
            args.append("--on_disk=true")
        work = out.parent / "work"
        work.mkdir(exist_ok=True)
        self.process = subprocess.Popen(args, cwd=work, env=env, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        preexec_fn=_default_sigint)
        self.lines = []
        self.resampling = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)
            if "Step resample running" in line:
                self.resampling.set()

    def wait(self, timeout=600):
        status = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return status

    def signal(self, signum):
        if self.process.poll() is None:
            self.process.send_signal(signum)
            return True
        return False


def _kill_when(run, trigger, signum, out, rng, earlier=()):
    """Send ``signum`` at the chosen point; True if it arrived before the run ended.

    ``earlier`` are private directories that were there before the run.
    """
    if trigger in ("resample", "resample-start"):
        # As the resample step starts, or a random moment early in it: the
        # model library (and its on_disk directory) is still open.
        while not run.resampling.wait(0.02):
            if run.process.poll() is not None:
                return False
        if trigger == "resample":
            time.sleep(rng.uniform(0.0, 0.2))
    elif trigger == "writing":
        # The instant the products' private directory appears.
        while not any("_write-" in name and name not in earlier
                      for name in _temporaries(out)):
            if run.process.poll() is not None:
                return False
            time.sleep(0.002)
    else:
        time.sleep(trigger)
    return run.signal(signum)


def _trial(asn, out, reference, env, *, signum, trigger, rng, on_disk=False):
    earlier = set(_temporaries(out))
    run = _Run(asn, out, env, on_disk=on_disk)
    delivered = _kill_when(run, trigger, signum, out, rng, earlier)
    status = run.wait()
    if not delivered:
        assert status == 0, "".join(run.lines[-30:])
    present = _check_products(out, reference)
    assert present in ([], list(PRODUCTS)), present  # never a mixture or a part
    assert _strays(out) == [], _strays(out)
    assert list((out.parent / "work").iterdir()) == [], "files left in the working directory"
    return delivered, status, run


def _rerun_cleans_up(asn, out, reference, env, stale):
    run = _Run(asn, out, env)
    assert run.wait() == 0, "".join(run.lines[-30:])
    assert _check_products(out, reference) == list(PRODUCTS)
    assert sorted(p.name for p in out.iterdir()) == sorted(PRODUCTS)
    removed = [line for line in run.lines if "left by an interrupted run" in line]
    assert len(removed) == len(stale), (stale, removed)


@pytest.fixture
def run_env(tmp_path, clean_env):
    env = dict(clean_env, TMPDIR=str(tmp_path / "systemp"))
    (tmp_path / "systemp").mkdir()
    return env


def test_sigterm_and_sigint_clean_up_and_keep_previous_products(dataset, tmp_path, run_env):
    asn, reference = dataset
    out = tmp_path / "out"
    rng = random.Random(1)
    # Interrupted before it wrote anything, a run leaves nothing behind: not
    # even the output directory it created.
    delivered, status, run = _trial(asn, out, reference, run_env, signum=signal.SIGINT,
                                    trigger="resample", rng=rng)
    assert delivered, "the run ended before the signal"
    assert status == 130, (status, "".join(run.lines[-20:]))
    # One line says so; no traceback.
    assert any("interrupted: stopped before finishing" in line for line in run.lines)
    assert not any("Traceback" in line for line in run.lines), "".join(run.lines[-20:])
    assert _names(out) == []
    # With earlier products in place, a run terminated while writing its own
    # keeps the earlier ones whole and removes its temporary files.
    out.mkdir()
    for name in PRODUCTS:
        (out / name).write_bytes((reference / name).read_bytes())
    delivered, status, run = _trial(asn, out, reference, run_env, signum=signal.SIGTERM,
                                    trigger="writing", rng=rng)
    assert delivered, "the run ended before the signal"
    assert status == 143, (status, "".join(run.lines[-20:]))
    assert any("terminated by signal 15" in line for line in run.lines)
    assert _check_products(out, reference) == list(PRODUCTS)
    assert _names(out) == sorted(PRODUCTS)
    assert _names(tmp_path / "systemp") == []


def _sigkill_trials(dataset, tmp_path, env, plan):
    asn, reference = dataset
    out = tmp_path / "out"
    out.mkdir()
    rng = random.Random(2024)
    outcomes = []
    for trigger, on_disk in plan:
        before = set(_temporaries(out))
        delivered, status, run = _trial(asn, out, reference, env, signum=signal.SIGKILL,
                                        trigger=trigger, rng=rng, on_disk=on_disk)
        if delivered:
            assert status == -signal.SIGKILL
        stale = _temporaries(out)
        if any("running with args" in line for line in run.lines):
            # The run got as far as starting the pipeline, which sweeps the
            # output directory first: what earlier runs left is gone.
            assert not before & set(stale), (before, stale)
        outcomes.append((trigger, on_disk, delivered, stale))
    _rerun_cleans_up(asn, out, reference, env, outcomes[-1][3])
    for trigger, on_disk, delivered, stale in outcomes:
        print(f"SIGKILL at {trigger!r} (on_disk={on_disk}): "
              f"{'killed' if delivered else 'finished first'}; left {stale}")
    return outcomes


def test_sigkill_leaves_whole_products_and_a_rerun_cleans_up(dataset, tmp_path, run_env):
    outcomes = _sigkill_trials(dataset, tmp_path, run_env,
                               [("writing", False), ("resample-start", True)])
    assert all(delivered for _, _, delivered, _ in outcomes), outcomes
    # Killed while writing, a run leaves its hidden private directory behind;
    # killed with on_disk, its model library's too. The next run removes them.
    assert any("_write-" in name and name.startswith(".") for name in outcomes[0][3]), outcomes
    assert any("_library-" in name for name in outcomes[1][3]), outcomes


@pytest.mark.slow
def test_ten_sigkills_at_random_points(dataset, tmp_path, run_env):
    rng = random.Random(7)
    # In turn: a random moment of resample, the instant of writing, and a
    # random time from the start (imports, checks, any step).
    triggers = [("resample", "writing", rng.uniform(0.5, 10.0))[i % 3] for i in range(10)]
    # Every third run with on_disk: its library and outlier frames are in
    # private directories that the next run must remove.
    plan = [(trigger, i % 3 == 0) for i, trigger in enumerate(triggers)]
    outcomes = _sigkill_trials(dataset, tmp_path, run_env, plan)
    assert sum(delivered for _, _, delivered, _ in outcomes) >= 8, outcomes


# -- stale temporary directories ----------------------------------------------------------


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_stale_private_directories_are_removed(tmp_path):
    host = socket.gethostname().replace(".", "-").replace("_", "-")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = make_private_dir(tmp_path, "write")
        entries = {
            "dead": f".{TEMP_PREFIX}{host}_{_dead_pid()}_0_write-a",
            "dead_library": f"{TEMP_PREFIX}{host}_{_dead_pid()}_0_library-b",
            "alive": f".{TEMP_PREFIX}{host}_{sleeper.pid}_0_write-c",
            "recycled": f".{TEMP_PREFIX}{host}_{sleeper.pid}_1_write-d",
            "foreign_new": f".{TEMP_PREFIX}otherhost_{os.getpid()}_0_write-e",
            "foreign_old": f".{TEMP_PREFIX}otherhost_{os.getpid()}_0_write-f",
            "unrelated": f".{TEMP_PREFIX}notours",
        }
        for name in entries.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "part.asdf").write_bytes(b"x")
        old = time.time() - FOREIGN_STALE_AGE - 60
        os.utime(tmp_path / entries["foreign_old"], (old, old))
        # Linux records each process's start time: an id reused by another
        # process does not keep a dead run's directory alive.
        recycled_stale = Path(f"/proc/{sleeper.pid}/stat").exists()
        removed = {p.name for p in remove_stale_temporaries(tmp_path)}
    finally:
        sleeper.kill()
        sleeper.wait()
    expected = {entries["dead"], entries["dead_library"], entries["foreign_old"]}
    if recycled_stale:
        expected.add(entries["recycled"])
    assert removed == expected
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(entries.values()) - expected | {mine.name}


def _working_directory_of(kind, directory):
    # What the steps do when their planes go to files: a scratch directory
    # (held open here, as by a step killed in the middle of its work).
    from romosaic._atomic import scratch_directory
    from romosaic.resample.planes import PlaneStore

    scratch = scratch_directory(directory, kind)
    store = PlaneStore((4, 4), directory=scratch.__enter__())
    store.new_plane("data", fill=float("nan"))
    return scratch, store


@pytest.mark.parametrize("kind", ["median", "planes"])
def test_working_directories_of_a_killed_run_are_removed_by_the_next(kind, tmp_path):
    # Made in a child that is then killed, as by SIGKILL in the middle of a step.
    code = ("import os, sys, signal\n"
            "sys.path.insert(0, os.getcwd())\n"
            "from tests.test_interrupts import _working_directory_of as make\n"
            f"store = make({kind!r}, {str(tmp_path)!r})\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    child = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1, left
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
