"""``romosaic survey plan|run|status``: survey-scale runs of the mosaic pipeline."""

import argparse
import json

__all__ = ["add_cli_parser"]


def add_cli_parser(subparsers):
    """Add ``survey`` (plan, run, status) to the ``romosaic`` command."""
    survey = subparsers.add_parser(
        "survey",
        help="plan and run mosaics of many skycells, on a laptop or a Dask cluster",
        description="Survey-scale runs: `plan` groups Level-2 files into one task per "
        "(skycell, filter); `run` runs the mosaic pipeline on every task through Dask "
        "(restartable: complete tasks are skipped); `status` shows the manifest.",
    )
    actions = survey.add_subparsers(dest="action", metavar="ACTION", required=True)

    plan = actions.add_parser(
        "plan", help="write one association per (skycell, filter) and the task plan",
        description="Read the metadata of FILES, write one association per (skycell, "
        "filter[, visit or pass]) into PLAN_DIR/asn/ and the list of tasks with their "
        "estimated cost into PLAN_DIR/plan.json.",
        allow_abbrev=False)
    plan.add_argument("files", nargs="*", metavar="FILES", help="Level-2 *_cal.asdf files")
    plan.add_argument("-o", "--output", required=True, metavar="PLAN_DIR",
                      help="plan directory to write")
    plan.add_argument("--from-list", metavar="F",
                      help="file listing input files, one per line (relative paths are "
                      "relative to F's directory)")
    plan.add_argument("--product-type", choices=("visit", "pass", "full"), default="visit",
                      help="one task per visit, per pass, or for all files (default: visit)")
    plan.add_argument("--data-release-id", default="p", help="data release id (default p)")
    plan.add_argument("--root", default="survey",
                      help="first part of the task and product names (default survey)")
    plan.add_argument("--force", action="store_true", help="replace an existing plan")
    plan.set_defaults(run=_run_plan)

    run = actions.add_parser(
        "run", help="run the mosaic pipeline on every task of a plan",
        description="Run `roman_mos` on every task of PLAN_DIR that is not complete, "
        "through Dask's distributed scheduler: a local cluster by default, or the "
        "existing cluster that --scheduler names. Any further --name=value options "
        "are pipeline options, as for strun (e.g. --steps.resample.pixfrac=0.8 "
        "--on_disk=true). Exit status 1 if any task failed.",
        allow_abbrev=False)
    run.add_argument("plan_dir", metavar="PLAN_DIR", help="directory written by `survey plan`")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="address (tcp://host:8786) or scheduler file of an existing Dask "
                     "scheduler; 'processes' for the standard library's process pool "
                     "(default: start a local Dask cluster)")
    run.add_argument("--processes", type=int, metavar="N",
                     help="processes running tasks at once: the workers of the local Dask "
                     "cluster or of the process pool (default: number of CPUs); each "
                     "task's steps use their own threads (--steps.<step>.workers)")
    # The name of earlier versions, refused with the new one (a step's
    # ``workers`` is its threads; one name, one meaning).
    run.add_argument("--workers", dest="old_workers", default=None, help=argparse.SUPPRESS)
    run.add_argument("--memory-limit", metavar="M",
                     help="memory per task, e.g. 8GB; a task exceeding it is stopped and "
                     "reported (default: the Dask worker's limit)")
    run.add_argument("--retries", type=int, default=1, metavar="K",
                     help="further attempts for a task that crashed or was killed "
                     "(default 1; input errors are not retried)")
    run.add_argument("--verify", choices=("size", "checksum"), default="size",
                     help="how finished tasks' products are checked before being skipped "
                     "(default size)")
    run.add_argument("--progress-interval", type=float, default=30.0, metavar="S",
                     help="seconds between progress lines while no task finishes")
    run.set_defaults(run=_run_run, pipeline_options=[])

    status = actions.add_parser(
        "status", help="print the manifest of a plan as a table",
        description="Print one line per task of PLAN_DIR: status, attempts, wall time, "
        "peak and estimated memory, and products or error.",
        allow_abbrev=False)
    status.add_argument("plan_dir", metavar="PLAN_DIR")
    status.add_argument("--json", action="store_true", help="print the records as JSON")
    status.set_defaults(run=_run_status)


def _run_plan(args):
    from pathlib import Path

    from ..errors import RomosaicInputError
    from .manifest import format_bytes
    from .plan import read_file_list, write_plan

    files = [Path(f) for f in args.files]
    if args.from_list:
        files += read_file_list(args.from_list)
    if not files:
        raise RomosaicInputError("no input files: give FILES or --from-list")
    plan = write_plan(args.output, files, product_type=args.product_type,
                      data_release_id=args.data_release_id, root=args.root, force=args.force)
    totals = plan["totals"]
    print(f"{Path(args.output) / 'plan.json'}: {plan['n_tasks']} tasks, "
          f"{totals['input_pixels'] / 1e6:.1f} Mpixel in, "
          f"{totals['output_pixels'] / 1e6:.1f} Mpixel out, "
          f"products about {format_bytes(totals['output_bytes'])}, "
          f"largest task about {format_bytes(totals['max_memory_bytes'])} of memory")
    return 0


def _run_run(args):
    from ..errors import RomosaicInputError
    from .runner import run_survey

    if args.old_workers is not None:
        raise RomosaicInputError("--workers was renamed --processes (processes running tasks "
                                 "at once); a step's threads are --steps.<step>.workers")
    summary = run_survey(
        args.plan_dir, scheduler=args.scheduler, processes=args.processes,
        memory_limit=args.memory_limit, retries=args.retries,
        options=args.pipeline_options, verify=args.verify,
        progress=lambda line: print(line, flush=True),
        progress_interval=args.progress_interval,
    )
    for line in summary.lines():
        print(line, flush=True)
    return summary.exit_status


def _run_status(args):
    from .manifest import format_status_table
    from .status import survey_status

    plan, records, active = survey_status(args.plan_dir)
    if args.json:
        print(json.dumps({"run_in_progress": active, "tasks": records}, indent=1))
        return 0
    print(format_status_table(plan["tasks"], records))
    if active:
        print("(a survey run is in progress)")
    return 0
