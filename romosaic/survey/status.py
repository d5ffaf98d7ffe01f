"""``romosaic survey status``: the manifest, brought up to date by the receipts."""

from pathlib import Path

from .manifest import load_manifest, load_receipts, verify_products
from .plan import load_plan

__all__ = ["merge_status", "survey_status"]


def merge_status(task_names, manifest_tasks, receipts, products_ok, run_active):
    """Each task's current record, from the manifest and the receipts.

    A task's receipt wins (status "done") when its products are in place,
    unless the manifest holds a later attempt under other options or
    inputs (a different fingerprint) that has not succeeded. A task the
    manifest says is running is shown as pending, noted "interrupted", when
    no run holds the plan.

    Parameters
    ----------
    task_names : sequence of str
    manifest_tasks : dict
        Task name → manifest record.
    receipts : dict
        Task name → receipt.
    products_ok : callable
        ``products_ok(receipt) -> (bool, reason)``.
    run_active : bool
        Whether a run currently holds the plan.

    Returns
    -------
    dict
        Task name → record.
    """
    records = {}
    for name in task_names:
        record = dict(manifest_tasks.get(name) or {"status": "pending", "attempts": 0})
        receipt = receipts.get(name)
        superseded = (receipt is not None and record.get("fingerprint") not in
                      (None, receipt.get("fingerprint")) and record.get("status") != "done")
        if receipt is not None and not superseded:
            ok, reason = products_ok(receipt)
            if ok:
                records[name] = {**receipt, "status": "done"}
                continue
            if record.get("status") == "done":
                record = {**record, "status": "pending", "note": reason}
        elif record.get("status") == "done":
            record = {**record, "status": "pending", "note": "no receipt for its products"}
        if record.get("status") == "running" and not run_active:
            record = {**record, "status": "pending", "note": "interrupted"}
        records[name] = record
    return records


def survey_status(plan_dir):
    """The plan, each task's current record, and whether a run is in progress.

    Parameters
    ----------
    plan_dir : str or os.PathLike

    Returns
    -------
    plan : dict
    records : dict
        Task name → record (see `merge_status`).
    run_active : bool
    """
    from .runner import run_in_progress

    plan_dir = Path(plan_dir)
    plan = load_plan(plan_dir)
    names = [task["name"] for task in plan["tasks"]]
    manifest = load_manifest(plan_dir)
    products_dir = plan_dir / plan.get("products_dir", "products")
    active = run_in_progress(plan_dir)
    records = merge_status(
        names, manifest.get("tasks", {}), load_receipts(plan_dir, names),
        lambda receipt: verify_products(products_dir, receipt.get("products"), "size"),
        active)
    return plan, records, active
