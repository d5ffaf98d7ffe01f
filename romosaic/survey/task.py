"""One survey task, as run on a worker: the pipeline in a child process.

`execute_task` is what the client submits to a Dask worker (or to a
process-pool worker with ``--scheduler processes``). It receives file paths
and options only, never arrays, and returns a small record.

Why a child process per task
----------------------------
The worker starts a fresh Python interpreter (``python -m
romosaic.survey._child``) for every task and supervises it:

* **Memory is returned.** A long-lived worker that ran a 5000 × 5000 mosaic
  keeps a fragmented heap; a process that exits gives everything back, so
  one large task cannot leave the next one short.
* **Peak memory is per task.** The child reports the high-water mark of its
  own resident set (``VmHWM`` from ``/proc/self/status``). ``ru_maxrss`` is
  not used: Linux carries it across ``exec`` from the (v)forking parent, so
  a child of a large worker would report the worker's size. While the child
  runs, the worker samples its resident size, which also bounds the peak of a
  child that was killed before it could report.
* **A memory limit is enforced on the task.** Dask's nanny watches the
  worker process only; the worker here kills a child whose resident size
  exceeds the limit (``--memory-limit``, else the Dask worker's own limit)
  and reports that, instead of letting the kernel's OOM killer pick a victim.
* **Logging is isolated.** The child's standard output and error, and so
  stpipe's log, go to ``logs/<task>.log`` in the plan directory, and
  nothing it configures leaks into the worker or into other tasks.
* **The command line is strun's.** The child runs
  ``Step.from_cmdline`` exactly as ``strun roman_mos`` does, so pipeline
  options mean the same.

The cost is one interpreter start-up and import per task (seconds), small
next to a skycell mosaic (minutes). A child whose worker dies notices that
its pipe from the worker has closed and exits, so no orphan keeps writing.

Atomic products
---------------
The child writes into a staging directory of its own
(``work/<task>/<attempt>/``). Only after the pipeline succeeded does the
worker checksum the products, delete any old receipt, move each product
into the products directory with an atomic rename and then write the
task's receipt (atomically). A task killed at any point leaves at most a
staging directory, which the next run removes, and never a receipt without
its products.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .._atomic import atomic_output, fsync_directory
from ..errors import INPUT_ERROR_EXIT_STATUS, OUTPUT_ERROR_EXIT_STATUS
from ..parallel import WORKERS_VARIABLE
from .manifest import file_sha256, format_bytes, receipt_path, utc_now, write_receipt

__all__ = ["EVENT_TOPIC", "LOGS_DIR", "WORK_DIR", "execute_task"]

#: Dask event topic on which a worker announces that a task started.
EVENT_TOPIC = "romosaic-survey"
WORK_DIR = "work"
LOGS_DIR = "logs"
CONTROL_DIR = ".survey"
SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"

# Sampling the child's memory: often at first (short tasks), then every second.
_FIRST_POLL = 0.05
_MAX_POLL = 1.0


def execute_task(spec):
    """Run one task's pipeline in a child process and move its products into place.

    Parameters
    ----------
    spec : dict
        ``task`` (name), ``plan_dir``, ``association`` and ``products_dir``
        (absolute paths), ``options`` (pipeline options), ``fingerprint``,
        ``run_id``, ``attempt`` (count, this one included), ``memory_limit``
        (bytes or None) and ``submitted`` (ISO time).

    Returns
    -------
    dict
        The task's record: ``status`` ("done" or "failed"), ``failure``
        (None, "input", "output", "memory" or "crash"), ``error``, ``exit_status``,
        ``attempts``, ``run``, ``fingerprint``, ``host``, ``worker``,
        ``submitted``, ``started``, ``finished``, ``wall_seconds`` (of the
        child process), ``pipeline_seconds`` (of the pipeline in it),
        ``cpu_seconds``, ``peak_memory_bytes``,
        ``products`` (file name → size and SHA-256) and ``log``.
    """
    name = spec["task"]
    plan_dir = Path(spec["plan_dir"])
    worker = _announce_start(name)
    record = {
        "task": name, "status": "failed", "failure": None, "error": None, "exit_status": None,
        "attempts": spec["attempt"], "run": spec["run_id"], "fingerprint": spec["fingerprint"],
        "host": socket.gethostname(), "worker": worker, "submitted": spec.get("submitted"),
        "started": utc_now(), "finished": None, "wall_seconds": None, "cpu_seconds": None,
        "peak_memory_bytes": None, "products": {},
        "log": f"{LOGS_DIR}/{name}.log",
    }
    task_work = plan_dir / WORK_DIR / name
    staging = task_work / f"{spec['run_id']}-{spec['attempt']}-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    try:
        _remove_stale_attempts(task_work)
        (staging / CONTROL_DIR).mkdir(parents=True)
        spec_path = staging / CONTROL_DIR / SPEC_FILE
        spec_path.write_text(json.dumps(spec))
        log_path = plan_dir / record["log"]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        limit = spec.get("memory_limit") or _worker_memory_limit()
        outcome = _run_child(spec_path, staging, log_path, name, spec["attempt"], limit)
        record.update(outcome)
        if outcome["exit_status"] == 0:
            record["products"] = _publish(staging, Path(spec["products_dir"]),
                                          receipt_path(plan_dir, name))
            record["status"] = "done"
    except Exception as error:  # any failure here belongs to this task only
        record.update(status="failed", failure="crash",
                      error=f"survey worker: {type(error).__name__}: {error}")
    finally:
        record["finished"] = utc_now()
        if record["wall_seconds"] is None:
            record["wall_seconds"] = round(time.monotonic() - start, 3)
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(task_work)
    if record["status"] == "done":
        try:
            write_receipt(receipt_path(plan_dir, name), record)
        except OSError as error:
            record.update(status="failed", failure="crash",
                          error=f"survey worker: cannot write the receipt ({error})")
    return record


def _announce_start(name):
    """Tell the client (through a Dask event) that the task started; the worker's address."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    worker.log_event(EVENT_TOPIC, {"task": name, "event": "started"})
    return worker.address


def _worker_memory_limit():
    """The Dask worker's memory limit in bytes, if running on one that has it."""
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        return None
    return int(limit) if limit else None


def _remove_stale_attempts(task_work):
    # Staging left by an attempt that was killed holds nothing worth keeping.
    if task_work.is_dir():
        for entry in task_work.iterdir():
            shutil.rmtree(entry, ignore_errors=True)


def _remove_if_empty(path):
    try:
        path.rmdir()
    except OSError:
        pass


def _run_child(spec_path, staging, log_path, name, attempt, memory_limit):
    """Run the child and wait for it, sampling and limiting its memory."""
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, STPIPE_DISABLE_CRDS_STEPPARS="true")
    # The cluster already runs one task per core: a task's steps should not
    # run threads of their own unless the user asks (ROMOSAIC_WORKERS).
    env.setdefault(WORKERS_VARIABLE, "1")
    with open(log_path, "ab") as log_stream:
        log_stream.write(f"==== {utc_now()} task {name}, attempt {attempt}, host "
                         f"{socket.gethostname()}, pid {os.getpid()}\n".encode())
        log_stream.flush()
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "romosaic.survey._child", str(spec_path), str(read_fd)],
                stdin=subprocess.DEVNULL, stdout=log_stream, stderr=subprocess.STDOUT,
                cwd=staging, env=env, pass_fds=(read_fd,),
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
    start = time.monotonic()
    peak_sampled, over_limit = 0, None
    reaped = False
    poll = _FIRST_POLL
    try:
        while True:
            pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                reaped = True
                break
            rss = _resident_bytes(child.pid)
            if rss:
                peak_sampled = max(peak_sampled, rss)
                if memory_limit and rss > memory_limit and over_limit is None:
                    over_limit = rss
                    child.kill()
            time.sleep(poll)
            poll = min(poll * 2, _MAX_POLL)
    finally:
        if not reaped:  # interrupted while waiting: do not leave the child running
            child.kill()
            child.wait()
        os.close(write_fd)
    wall = time.monotonic() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    result = _read_json(staging / CONTROL_DIR / RESULT_FILE) or {}
    exit_status = child.returncode
    error = result.get("error")
    failure = None if exit_status == 0 else "crash"
    if over_limit is not None:
        error = (f"exceeded the memory limit of {format_bytes(memory_limit)} "
                 f"(resident {format_bytes(over_limit)}) and was stopped")
        exit_status, failure = exit_status or -signal.SIGKILL, "memory"
    elif exit_status < 0:
        error = f"killed by signal {_signal_name(-exit_status)}"
    else:
        if exit_status == INPUT_ERROR_EXIT_STATUS:
            failure = "input"
        elif exit_status == OUTPUT_ERROR_EXIT_STATUS:
            failure = "output"  # a product could not be written: retried
        if exit_status != 0 and not error:
            error = f"exited with status {exit_status}: {_last_line(log_path)}"
    peak = max(int(result.get("peak_memory_bytes") or 0), peak_sampled) or None
    return {
        "exit_status": exit_status,
        "failure": failure,
        "error": error if exit_status != 0 else None,
        "wall_seconds": round(wall, 3),
        "pipeline_seconds": result.get("wall_seconds"),
        "cpu_seconds": round(rusage.ru_utime + rusage.ru_stime, 3),
        "peak_memory_bytes": peak,
    }


def _publish(staging, products_dir, receipt):
    """Checksum the staged products and move them into ``products_dir``."""
    staged = sorted(p for p in staging.iterdir() if p.is_file() and not p.name.startswith("."))
    if not staged:
        raise RuntimeError("the pipeline wrote no products")
    products = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in staged}
    products_dir.mkdir(parents=True, exist_ok=True)
    # With the old receipt gone first, no receipt ever describes a mixture of
    # old and new files, whatever point a kill interrupts.
    receipt.unlink(missing_ok=True)
    for path in staged:
        _move_into_place(path, products_dir / path.name)
    # The renames must survive a crash of the machine, not just of the task,
    # before the receipt claims the products are there.
    fsync_directory(products_dir)
    return products


def _move_into_place(source, destination):
    """Rename ``source`` to ``destination`` atomically, copying across file systems."""
    try:
        os.replace(source, destination)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        # products/ may be a link to another disk: copy next to the
        # destination first, so that the final step is still a rename.
        with atomic_output(destination) as temporary:
            shutil.copyfile(source, temporary)


def _resident_bytes(pid):
    """Resident set size of a process in bytes, or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _last_line(log_path, size=4096):
    """The last non-empty line of a log, for a failure that left no message."""
    try:
        with open(log_path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - size))
            lines = stream.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1].strip()[:200] if lines else "(empty log)"
