"""Running a survey plan: every pending task through Dask's distributed scheduler.

The client process (this module) decides what to run, submits one
`~romosaic.survey.task.execute_task` per pending task to an executor, and is
the only writer of ``manifest.json``. Executors:

* a `distributed.LocalCluster` of single-threaded worker processes (the
  default);
* an existing Dask scheduler, by address or scheduler file, e.g. one that
  dask-jobqueue started on Slurm or dask-kubernetes on Kubernetes;
* ``"processes"``: the standard library's `concurrent.futures` process pool,
  when Dask is not installed.

Tasks travel as file paths and options; each worker runs its task's pipeline
in a child process (see `romosaic.survey.task` for why). Failed tasks are
retried as `~romosaic.survey.manifest.should_retry` says; a task's failure
never stops the others.
"""

import contextlib
import logging
import multiprocessing
import os
import queue
import shutil
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..errors import RomosaicInputError
from ..pipeline.options import normalize_options, validate_options
from .manifest import (
    FINGERPRINT_CHANGED,
    VERIFY_MODES,
    eta_seconds,
    format_bytes,
    format_duration,
    load_manifest,
    load_receipts,
    parse_memory,
    reconcile,
    save_manifest,
    should_retry,
    task_fingerprint,
    utc_now,
    verify_products,
)
from .plan import load_plan
from .task import EVENT_TOPIC, WORK_DIR, execute_task

__all__ = ["PROCESSES", "SurveyRunSummary", "run_survey"]

log = logging.getLogger(__name__)

#: The ``--scheduler`` value that selects the standard library's process pool.
PROCESSES = "processes"
DASK_MISSING = ("survey run needs Dask's distributed scheduler: pip install 'romosaic[dask]' "
                "(or run with --scheduler processes)")
LOCK_FILE = ".lock"
# The manifest is rewritten at most this often while tasks finish (and at the end).
_SAVE_INTERVAL = 2.0


@dataclass
class SurveyRunSummary:
    """What one ``survey run`` did.

    Attributes
    ----------
    n_tasks : int
        Tasks in the plan.
    skipped : int
        Tasks already complete, not run again.
    succeeded, failed : list of str
        Tasks run in this run, by outcome.
    errors : dict
        Failed task → its error.
    wall_seconds : float
    peak_memory_bytes : int or None
        Largest peak of any task run.
    executor : str
        What ran the tasks.
    """

    n_tasks: int
    skipped: int = 0
    succeeded: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    executor: str = ""

    @property
    def exit_status(self):
        """0 when no task failed, else 1."""
        return 1 if self.failed else 0

    def lines(self):
        """The summary as text lines."""
        lines = [
            f"survey: {self.n_tasks} tasks: {len(self.succeeded)} done in this run, "
            f"{self.skipped} already complete, {len(self.failed)} failed; "
            f"wall {format_duration(self.wall_seconds)}"
            + (f", largest task peak {format_bytes(self.peak_memory_bytes)}"
               if self.peak_memory_bytes else "")
        ]
        lines += [f"  failed: {name}: {self.errors.get(name)}" for name in self.failed]
        return lines


def run_survey(plan_dir, *, scheduler=None, processes=None, memory_limit=None, retries=1,
               options=(), verify="size", progress=print, progress_interval=30.0):
    """Run every task of a plan that is not complete yet.

    Parameters
    ----------
    plan_dir : str or os.PathLike
        A directory written by ``romosaic survey plan``.
    scheduler : str, optional
        None for a new `distributed.LocalCluster`; a scheduler address
        (``tcp://host:8786``) or a scheduler file for an existing cluster;
        ``"processes"`` for the standard library's process pool.
    processes : int, optional
        Processes running tasks at once: the workers of a LocalCluster or of
        the process pool (default: the number of CPUs, at most the number of
        tasks to run).
    memory_limit : str or int, optional
        Memory per task (``"4GB"``); a task whose resident memory exceeds it
        is stopped and reported. Also the LocalCluster's worker limit.
    retries : int
        Further attempts for a task that crashed, was killed or lost its
        worker (failures caused by the input or the memory limit are not
        retried; see `romosaic.survey.manifest.should_retry`).
    options : sequence of str
        Pipeline options as for ``strun roman_mos`` (``--on_disk=true``).
    verify : {"size", "checksum"}
        How a finished task's products are checked before it is skipped.
    progress : callable or None
        Called with each progress line.
    progress_interval : float
        Seconds between progress lines while no task finishes.

    Returns
    -------
    SurveyRunSummary

    Raises
    ------
    RomosaicInputError
        For a bad plan or option, a missing Dask, or an unreachable scheduler.
    """
    plan_dir = Path(plan_dir).resolve()
    plan = load_plan(plan_dir)
    options = normalize_options(options)
    if verify not in VERIFY_MODES:
        raise RomosaicInputError(f"verify mode {verify!r} is not one of {', '.join(VERIFY_MODES)}")
    if retries < 0:
        raise RomosaicInputError(f"--retries must be 0 or more, not {retries}")
    if processes is not None and processes < 1:
        raise RomosaicInputError(f"--processes must be at least 1, not {processes}")
    limit = parse_memory(memory_limit) if memory_limit is not None else None
    if scheduler != PROCESSES:
        _require_dask()
    validate_options(options)
    say = progress or (lambda line: None)
    with _run_lock(plan_dir):
        return _Run(plan_dir, plan, options, limit, retries, verify, say,
                    progress_interval).execute(scheduler, processes)


def _require_dask():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise RomosaicInputError(DASK_MISSING) from None


@contextlib.contextmanager
def _run_lock(plan_dir):
    """Hold an exclusive lock on the plan for this run (released if the process dies)."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield
        return
    with open(plan_dir / LOCK_FILE, "a+") as stream:
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RomosaicInputError(
                f"{plan_dir}: another `romosaic survey run` is using this plan") from None
        try:
            yield
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)


def run_in_progress(plan_dir):
    """Whether a ``survey run`` currently holds the plan's lock."""
    try:
        import fcntl
    except ImportError:
        return False
    path = Path(plan_dir) / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+") as stream:
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(stream, fcntl.LOCK_UN)
    return False


class _Run:
    """The client's bookkeeping for one run."""

    def __init__(self, plan_dir, plan, options, memory_limit, retries, verify, say, interval):
        self.plan_dir = plan_dir
        self.tasks = {task["name"]: task for task in plan["tasks"]}
        self.products_dir = plan_dir / plan.get("products_dir", "products")
        self.options = options
        self.memory_limit = memory_limit
        self.retries = retries
        self.verify = verify
        self.say = say
        self.interval = interval
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.manifest = load_manifest(plan_dir)
        self._last_save = 0.0

    def execute(self, scheduler, workers):
        names = list(self.tasks)
        self.fingerprints = {
            name: task_fingerprint((self.plan_dir / task["association"]).read_bytes(),
                                   self.options)
            for name, task in self.tasks.items()
        }
        receipts = load_receipts(self.plan_dir, names)
        self.records, to_run = reconcile(
            names, self.manifest.get("tasks", {}), receipts, self.fingerprints,
            lambda receipt: verify_products(self.products_dir, receipt.get("products"),
                                            self.verify))
        summary = SurveyRunSummary(n_tasks=len(names), skipped=len(names) - len(to_run))
        self._explain_changed(to_run)
        # Connect before touching the manifest, so that an unreachable
        # scheduler leaves no trace of a run that never started.
        executor = (_make_executor(scheduler, workers, self.memory_limit, len(to_run))
                    if to_run else None)
        # Nothing else runs this plan (we hold its lock): any staging left
        # behind belongs to a run that was killed.
        shutil.rmtree(self.plan_dir / WORK_DIR, ignore_errors=True)
        self.manifest["tasks"] = self.records
        for entry in self.manifest["runs"]:
            if entry.get("status") == "running":  # it ended without saying so
                entry["status"] = "killed"
        self.run_entry = {
            "run": self.run_id, "started": utc_now(), "finished": None, "status": "running",
            "executor": executor.description if executor else None,
            "options": self.options, "verify": self.verify,
            "tasks": len(names), "skipped": summary.skipped, "succeeded": 0, "failed": 0,
        }
        self.manifest["runs"].append(self.run_entry)
        start = time.monotonic()
        if executor is None:
            self._save(force=True)
            self.say(f"survey: all {len(names)} tasks are complete; nothing to run")
        else:
            summary.executor = executor.description
            try:
                self._save(force=True)
                self._max_memory_warning(to_run)
                self.say(f"survey: {len(names)} tasks, {summary.skipped} already complete, "
                         f"{len(to_run)} to run on {executor.description}")
                self._run_tasks(executor, to_run, summary)
            except BaseException as error:
                executor.close(wait=False)
                self._finish(summary, start, status="interrupted"
                             if isinstance(error, KeyboardInterrupt) else "error")
                raise
            executor.close()
        self._finish(summary, start, status="finished")
        return summary

    def _explain_changed(self, to_run):
        """Say why complete tasks run again when their options or associations changed."""
        changed = [n for n in to_run if self.records[n].get("note") == FINGERPRINT_CHANGED]
        if not changed:
            return
        earlier = next((run.get("options") for run in reversed(self.manifest.get("runs", []))
                        if run.get("succeeded")), None)
        options = ""
        if earlier is not None and list(earlier) != list(self.options):
            options = (f" (the earlier run's options: {' '.join(earlier) or 'none'}; "
                       f"this run's: {' '.join(self.options) or 'none'})")
        self.say(f"survey: {len(changed)} complete task(s) run again because their "
                 f"association or pipeline options changed{options}; their products in "
                 f"{self.products_dir} will be replaced. To keep them, stop now (Ctrl-C) and "
                 "copy them elsewhere, or run again with the earlier options")

    def _max_memory_warning(self, to_run):
        if not self.memory_limit:
            return
        largest = max(to_run, key=lambda n: self._cost(n, "memory_bytes"))
        estimate = self._cost(largest, "memory_bytes")
        if estimate > self.memory_limit:
            log.warning("task %s is estimated to need %s, more than the memory limit %s",
                        largest, format_bytes(estimate), format_bytes(self.memory_limit))

    def _cost(self, name, key):
        return self.tasks[name].get("cost", {}).get(key, 0) or 0

    def _spec(self, name, attempt):
        task = self.tasks[name]
        return {
            "task": name,
            "plan_dir": str(self.plan_dir),
            "association": str((self.plan_dir / task["association"]).resolve()),
            "products_dir": str(self.products_dir),
            "options": list(self.options),
            "fingerprint": self.fingerprints[name],
            "run_id": self.run_id,
            "attempt": attempt,
            "memory_limit": self.memory_limit,
            "submitted": utc_now(),
        }

    def _run_tasks(self, executor, to_run, summary):
        # Largest first: the long tasks start early instead of trailing at the end.
        order = sorted(to_run, key=lambda n: (-self._cost(n, "work"), n))
        attempts_now = dict.fromkeys(order, 0)
        outstanding = set()

        def submit(name):
            attempts_now[name] += 1
            attempt = int(self.records[name].get("attempts", 0)) + 1
            executor.submit(name, self._spec(name, attempt), priority=self._cost(name, "work"))
            outstanding.add(name)

        for name in order:
            submit(name)
        total_work = sum(self._cost(n, "work") for n in order) or len(order)
        done_work = 0.0
        first_start = time.monotonic()
        last_line = first_start
        finished = 0
        while outstanding:
            for name, record in executor.completed(timeout=min(self.interval, 1.0)):
                outstanding.discard(name)
                executor.forget(name)
                if should_retry(record, attempts_now[name], self.retries):
                    self.records[name] = {**record, "status": "pending"}
                    self.say(f"  retrying {name} after: {record.get('error')}")
                    submit(name)
                    continue
                self.records[name] = record
                finished += 1
                done_work += self._cost(name, "work") or 1
                outcome = self._record_outcome(name, record, summary)
                remaining = total_work - done_work
                self.say(self._progress_line(finished, len(order), executor, outstanding,
                                             summary, first_start, done_work, remaining)
                         + f" | {outcome}")
                last_line = time.monotonic()
                self._save()
            for name in executor.started():
                if name in outstanding and self.records[name].get("status") == "pending":
                    self.records[name]["status"] = "running"
            self._save()
            if time.monotonic() - last_line >= self.interval:
                self.say(self._progress_line(finished, len(order), executor, outstanding,
                                             summary, first_start, done_work,
                                             total_work - done_work))
                last_line = time.monotonic()

    def _record_outcome(self, name, record, summary):
        if record.get("status") == "done":
            summary.succeeded.append(name)
            peak = record.get("peak_memory_bytes")
            if peak and (summary.peak_memory_bytes or 0) < peak:
                summary.peak_memory_bytes = peak
            return (f"{name} done in {format_duration(record.get('wall_seconds'))}, "
                    f"peak {format_bytes(peak)}")
        summary.failed.append(name)
        summary.errors[name] = record.get("error")
        return f"{name} FAILED: {record.get('error')}"

    def _progress_line(self, finished, total, executor, outstanding, summary, first_start,
                       done_work, remaining_work):
        eta = eta_seconds(time.monotonic() - first_start, done_work, remaining_work)
        running = executor.running_count(outstanding)
        return (f"[{finished}/{total}] done {len(summary.succeeded)}, running {running}, "
                f"failed {len(summary.failed)}, ETA {format_duration(eta)}")

    def _finish(self, summary, start, status):
        summary.wall_seconds = time.monotonic() - start
        for record in self.records.values():
            if record.get("status") == "running":
                record["status"] = "pending"
                record["note"] = "interrupted"
        self.run_entry.update(finished=utc_now(), status=status,
                              succeeded=len(summary.succeeded), failed=len(summary.failed))
        self._save(force=True)

    def _save(self, force=False):
        now = time.monotonic()
        if force or now - self._last_save >= _SAVE_INTERVAL:
            save_manifest(self.plan_dir, self.manifest)
            self._last_save = now


# --------------------------------------------------------------------------
# Executors: submit(name, spec, priority); completed(timeout) -> [(name, record)];
# started(); running_count(outstanding); forget(name); close(); description.


def _failure_record(name, spec, error):
    """The record of a task whose worker never returned one."""
    return {
        "task": name, "status": "failed", "failure": "lost", "exit_status": None,
        "error": f"worker lost: {type(error).__name__}: {error}".strip(),
        "attempts": spec["attempt"], "run": spec["run_id"], "fingerprint": spec["fingerprint"],
        "submitted": spec["submitted"], "finished": utc_now(), "products": {},
    }


class _QueueingExecutor:
    """Collects finished futures through done-callbacks (called from other threads)."""

    def __init__(self):
        self._done = queue.Queue()
        self._futures = {}
        self._specs = {}

    def _track(self, name, spec, future):
        self._futures[name] = future
        self._specs[name] = spec
        future.add_done_callback(lambda _future, name=name: self._done.put(name))

    def completed(self, timeout):
        names = []
        try:
            names.append(self._done.get(timeout=timeout))
            while True:
                names.append(self._done.get_nowait())
        except queue.Empty:
            pass
        results = []
        for name in names:
            future = self._futures.get(name)
            if future is None:
                continue
            try:
                record = future.result()
            except BaseException as error:  # noqa: B036 - a lost or cancelled task, not ours
                if isinstance(error, KeyboardInterrupt):
                    raise
                record = _failure_record(name, self._specs[name], error)
            results.append((name, record))
        return results

    def forget(self, name):
        self._futures.pop(name, None)
        self._specs.pop(name, None)

    def started(self):
        return set()


class _DaskExecutor(_QueueingExecutor):
    def __init__(self, scheduler, workers, memory_limit, n_tasks):
        super().__init__()
        from distributed import Client, LocalCluster

        self._cluster = None
        self._started = set()
        self._lock = threading.Lock()
        try:
            if scheduler is None:
                n_workers = workers or max(1, min(os.cpu_count() or 1, n_tasks))
                self._cluster = LocalCluster(
                    n_workers=n_workers, threads_per_worker=1, processes=True,
                    memory_limit=memory_limit if memory_limit else "auto",
                    host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR,
                )
                self._client = Client(self._cluster)
                self.description = (f"a Dask LocalCluster of {n_workers} worker"
                                    f"{'s' if n_workers != 1 else ''} "
                                    f"({self._cluster.scheduler_address})")
            elif Path(scheduler).is_file():
                self._client = Client(scheduler_file=scheduler, timeout="30s")
                self.description = (f"the Dask cluster of {scheduler} "
                                    f"({self._client.scheduler.address})")
            else:
                self._client = Client(scheduler, timeout="30s")
                self.description = f"the Dask cluster at {scheduler}"
        except (OSError, TimeoutError, ValueError) as error:
            self.close()
            raise RomosaicInputError(
                f"cannot reach the Dask scheduler {scheduler or '(local cluster)'}: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        self._client.subscribe_topic(EVENT_TOPIC, self._on_event)

    def _on_event(self, event):
        _, message = event
        if isinstance(message, dict) and message.get("event") == "started":
            with self._lock:
                self._started.add(message.get("task"))

    def submit(self, name, spec, priority=0):
        key = f"romosaic-survey-{name}-{spec['run_id']}-{spec['attempt']}"
        future = self._client.submit(execute_task, spec, key=key, pure=False,
                                     priority=int(priority))
        self._track(name, spec, future)

    def forget(self, name):
        super().forget(name)
        with self._lock:
            self._started.discard(name)

    def started(self):
        with self._lock:
            return set(self._started)

    def running_count(self, outstanding):
        with self._lock:
            announced = len(self._started & outstanding)
        # A task whose worker died stays announced while it waits to be
        # rescheduled; no more tasks run than there are worker threads.
        try:
            threads = sum(self._client.nthreads().values())
        except Exception:
            return announced
        return min(announced, threads)

    def close(self, wait=True):
        for closable in (getattr(self, "_client", None), self._cluster):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()


class _ProcessExecutor(_QueueingExecutor):
    def __init__(self, workers, n_tasks):
        super().__init__()
        self._workers = workers or max(1, min(os.cpu_count() or 1, n_tasks))
        self._pool = None
        self.description = (f"a process pool of {self._workers} worker"
                            f"{'s' if self._workers != 1 else ''}")

    def _ensure_pool(self):
        if self._pool is None:
            # spawn: a fork of the client would inherit its lock and threads.
            self._pool = ProcessPoolExecutor(max_workers=self._workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def submit(self, name, spec, priority=0):
        try:
            future = self._ensure_pool().submit(execute_task, spec)
        except BrokenProcessPool:
            # A pool worker died; its tasks failed and will be retried on a new pool.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            future = self._ensure_pool().submit(execute_task, spec)
        self._track(name, spec, future)

    def running_count(self, outstanding):
        # A process pool does not say which tasks run; at most one per worker does.
        return min(len(outstanding), self._workers)

    def close(self, wait=True):
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)


def _make_executor(scheduler, workers, memory_limit, n_tasks):
    if scheduler == PROCESSES:
        return _ProcessExecutor(workers, n_tasks)
    return _DaskExecutor(scheduler, workers, memory_limit, n_tasks)
