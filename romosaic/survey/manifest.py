"""The survey manifest: what each task did, and which tasks are complete.

Two kinds of record live in a plan directory:

``receipts/<task>.json``
    Written by a task itself, atomically, after its products were moved into
    place: the products' names, sizes and SHA-256 checksums, the task's
    *fingerprint* (a hash of its association and pipeline options), timings
    and peak memory. A receipt exists only for a task whose products are all
    in place, so a task killed at any point has none.
``manifest.json``
    The run's view of every task (status, attempts, error, timings, peak
    memory, products), written atomically and only by the client process
    that runs the survey, so concurrent tasks never write the same file.

A task is *complete* when its receipt's fingerprint matches the current one
and its products still match the receipt (`verify_products`). `reconcile`
combines the two into the list of tasks to run. The pure functions here
(fingerprints, reconciling, retry decisions, ETA, summaries, tables) take
plain dictionaries so they can be tested without files.
"""

import hashlib
import json
import logging
import math
import re
from datetime import UTC, datetime
from pathlib import Path

from .._atomic import atomic_write_text
from ..errors import INPUT_ERROR_EXIT_STATUS, RomosaicInputError

__all__ = [
    "MANIFEST_FILE",
    "RECEIPTS_DIR",
    "VERIFY_MODES",
    "counts",
    "empty_manifest",
    "eta_seconds",
    "file_sha256",
    "format_bytes",
    "format_duration",
    "format_status_table",
    "load_manifest",
    "load_receipts",
    "parse_memory",
    "read_receipt",
    "reconcile",
    "save_manifest",
    "should_retry",
    "task_fingerprint",
    "verify_products",
    "write_receipt",
]

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "romosaic-survey-manifest"
RECEIPTS_DIR = "receipts"
VERIFY_MODES = ("size", "checksum")
STATUSES = ("done", "failed", "running", "pending")
# Failures that would happen again the same way.
_NOT_RETRIED = ("input", "memory")


def utc_now():
    """The current time as an ISO 8601 UTC string (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------
# Pure logic


def task_fingerprint(association_text, options):
    """A hash of what determines a task's products.

    Parameters
    ----------
    association_text : str or bytes
        The association file's content.
    options : sequence of str
        The pipeline options (``--name=value``) in the order given.

    Returns
    -------
    str
        Hexadecimal SHA-256. Products made under another fingerprint are
        not reused.
    """
    digest = hashlib.sha256()
    if isinstance(association_text, str):
        association_text = association_text.encode()
    digest.update(association_text)
    for option in options:
        digest.update(b"\0" + option.encode())
    return digest.hexdigest()


#: A task's note when its products were made from another association or with
#: other pipeline options than the run's.
FINGERPRINT_CHANGED = "association or pipeline options changed since the products were made"


def reconcile(task_names, manifest_tasks, receipts, fingerprints, products_ok):
    """Decide which tasks are complete and which must run.

    Parameters
    ----------
    task_names : sequence of str
        The plan's tasks.
    manifest_tasks : dict
        Task name → record from the previous manifest (may be empty).
    receipts : dict
        Task name → receipt, for the tasks that have one.
    fingerprints : dict
        Task name → the fingerprint the task has now.
    products_ok : callable
        ``products_ok(receipt) -> (bool, reason)``: whether the products a
        receipt lists are still in place.

    Returns
    -------
    records : dict
        Task name → record: the receipt (status "done") for a complete task;
        otherwise the previous record, if any, with status "pending" and the
        fingerprint it will run under, or a new pending record. A stale
        receipt's reason is kept under ``note``.
    to_run : list of str
        The tasks to run, in plan order.
    """
    records, to_run = {}, []
    for name in task_names:
        receipt = receipts.get(name)
        note = None
        if receipt is not None:
            if receipt.get("fingerprint") != fingerprints[name]:
                note = FINGERPRINT_CHANGED
            else:
                ok, reason = products_ok(receipt)
                if ok:
                    records[name] = {**receipt, "status": "done"}
                    continue
                note = reason
        previous = dict(manifest_tasks.get(name) or {})
        previous.pop("products", None)
        record = {**previous, "status": "pending", "attempts": previous.get("attempts", 0),
                  "fingerprint": fingerprints[name]}
        if note:
            record["note"] = note
        records[name] = record
        to_run.append(name)
    return records, to_run


def should_retry(record, attempts_this_run, retries):
    """Whether a failed attempt is worth another.

    A failure the input caused (``failure`` "input": exit status 2, e.g. an
    unreadable file) or the task's memory limit ("memory") happens again
    the same way and is not retried; crashes, kills by a signal and lost
    workers ("crash", "lost") and failures to write a product ("output": exit
    status 3, e.g. a full disk) are.

    Parameters
    ----------
    record : dict
        The failed attempt's record (``status``, ``failure``).
    attempts_this_run : int
        Attempts made so far in this run, including the failed one.
    retries : int
        Further attempts allowed after the first.

    Returns
    -------
    bool
    """
    if record.get("status") != "failed":
        return False
    failure = record.get("failure")
    if failure is None and record.get("exit_status") == INPUT_ERROR_EXIT_STATUS:
        failure = "input"
    if failure in _NOT_RETRIED:
        return False
    return attempts_this_run <= retries


def eta_seconds(elapsed, done_work, remaining_work):
    """Estimated seconds until the remaining tasks finish.

    Assumes the rest proceeds at the rate seen so far, measured in the cost
    model's ``work`` units, so a few large tasks left count for more than
    many small ones.

    Parameters
    ----------
    elapsed : float
        Seconds since the first task of this run started.
    done_work : float
        Work of the tasks finished (successfully or not) in this run.
    remaining_work : float
        Work of the tasks not finished yet, running ones included.

    Returns
    -------
    float or None
        None until a task has finished.
    """
    if done_work <= 0 or elapsed <= 0:
        return None
    return elapsed * remaining_work / done_work


def counts(records):
    """How many tasks have each status.

    Parameters
    ----------
    records : dict
        Task name → record.

    Returns
    -------
    dict
        ``{"done": n, "failed": n, "running": n, "pending": n}``.
    """
    result = dict.fromkeys(STATUSES, 0)
    for record in records.values():
        status = record.get("status", "pending")
        result[status if status in result else "pending"] += 1
    return result


_MEMORY_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}


def parse_memory(text):
    """Bytes from a memory size such as ``4GB``, ``1.5GiB``, ``800MB`` or ``1e9``.

    Parameters
    ----------
    text : str or int

    Returns
    -------
    int

    Raises
    ------
    RomosaicInputError
        For text that is not a positive size.
    """
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*",
                             str(text))
        if not match or match.group(2).lower() not in _MEMORY_UNITS:
            raise RomosaicInputError(
                f"memory size {text!r} is not a size such as 4GB, 1.5GiB or 800MB")
        value, unit = float(match.group(1)), match.group(2).lower()
    size = int(value * _MEMORY_UNITS[unit])
    if size <= 0:
        raise RomosaicInputError(f"memory size {text!r} must be positive")
    return size


def format_bytes(size):
    """``1.5 GB``-style text for a byte count (None gives ``-``)."""
    if size is None:
        return "-"
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{int(size)} B"


def format_duration(seconds):
    """``H:MM:SS`` for a duration in seconds (None gives ``-``)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_status_table(plan_tasks, records):
    """The manifest as a text table, one row per task in plan order.

    Parameters
    ----------
    plan_tasks : list of dict
        The plan's tasks (``name``, ``cost``).
    records : dict
        Task name → record.

    Returns
    -------
    str
    """
    header = ("TASK", "STATUS", "ATTEMPTS", "WALL", "PEAK MEM", "EST MEM", "DETAIL")
    rows = []
    for task in plan_tasks:
        record = records.get(task["name"], {})
        status = record.get("status", "pending")
        if status == "done":
            products = record.get("products", {})
            detail = f"{len(products)} products, {format_bytes(_total_size(products))}"
        else:
            detail = record.get("error") or record.get("note") or ""
        rows.append((
            task["name"], status, str(record.get("attempts", 0)),
            format_duration(record.get("wall_seconds")),
            format_bytes(record.get("peak_memory_bytes")),
            format_bytes(task.get("cost", {}).get("memory_bytes")),
            detail,
        ))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    summary = counts({t["name"]: records.get(t["name"], {}) for t in plan_tasks})
    lines.append("")
    lines.append(f"{len(plan_tasks)} tasks: " + ", ".join(f"{n} {s}" for s, n in summary.items()))
    return "\n".join(lines)


def _total_size(products):
    return sum(int(p.get("size", 0)) for p in products.values())


# --------------------------------------------------------------------------
# Files


def file_sha256(path, chunk_size=1 << 20):
    """SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_products(products_dir, products, mode="size"):
    """Whether the products a receipt lists are in place and unchanged.

    Parameters
    ----------
    products_dir : pathlib.Path
    products : dict
        File name → ``{"size": int, "sha256": str}``.
    mode : {"size", "checksum"}
        "size" compares sizes (cheap: products are written atomically, so a
        file of the right size is the complete one); "checksum" also
        recomputes each SHA-256.

    Returns
    -------
    ok : bool
    reason : str or None
        What is wrong, when not ok.
    """
    if mode not in VERIFY_MODES:
        raise RomosaicInputError(f"verify mode {mode!r} is not one of {', '.join(VERIFY_MODES)}")
    if not products:
        return False, "no products recorded"
    for name, expected in sorted(products.items()):
        path = Path(products_dir) / name
        try:
            size = path.stat().st_size
        except OSError:
            return False, f"product {name} is missing"
        if size != expected.get("size"):
            return False, f"product {name} has {size} bytes, not {expected.get('size')}"
        if mode == "checksum" and file_sha256(path) != expected.get("sha256"):
            return False, f"product {name} does not match its checksum"
    return True, None


def empty_manifest():
    """A manifest with no runs and no tasks."""
    return {"format": MANIFEST_FORMAT, "version": 1, "updated": None, "runs": [], "tasks": {}}


def load_manifest(plan_dir):
    """Read ``manifest.json``; an empty manifest when there is none.

    A manifest that cannot be read is set aside with a warning (the receipts
    still tell which tasks are complete) rather than stopping a restart.
    """
    path = Path(plan_dir) / MANIFEST_FILE
    if not path.exists():
        return empty_manifest()
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a romosaic survey manifest")
    except (OSError, ValueError) as error:
        log.warning("%s: cannot be read (%s); starting a new manifest", path, error)
        return empty_manifest()
    manifest.setdefault("runs", [])
    manifest.setdefault("tasks", {})
    return manifest


def save_manifest(plan_dir, manifest):
    """Write ``manifest.json`` atomically (only the client process calls this)."""
    manifest["updated"] = utc_now()
    atomic_write_text(Path(plan_dir) / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")


def receipt_path(plan_dir, name):
    """Where task ``name``'s receipt lives."""
    return Path(plan_dir) / RECEIPTS_DIR / f"{name}.json"


def read_receipt(path):
    """A receipt, or None if it is absent or unreadable."""
    try:
        receipt = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return receipt if isinstance(receipt, dict) else None


def write_receipt(path, record):
    """Write a receipt atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def load_receipts(plan_dir, names):
    """Task name → receipt for the tasks among ``names`` that have one."""
    receipts = {}
    for name in names:
        receipt = read_receipt(receipt_path(plan_dir, name))
        if receipt is not None:
            receipts[name] = receipt
    return receipts
