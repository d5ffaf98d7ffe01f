"""Survey-scale runs: thousands of skycell mosaics on a laptop or a Dask cluster.

A survey run is a *plan* of independent tasks, one per (skycell, filter)
association (`romosaic.survey.plan`), executed by Dask's distributed
scheduler or a process pool (`romosaic.survey.runner`). Each task runs the
mosaic pipeline in a child process on a worker (`romosaic.survey.task`),
writes its products atomically and leaves a receipt; the client keeps the
manifest (`romosaic.survey.manifest`), so a run that was stopped can be run
again and does only what is left.

Commands: ``romosaic survey plan``, ``romosaic survey run``,
``romosaic survey status`` (`romosaic.survey.cli`).
"""

__all__ = ["load_plan", "run_survey", "survey_status", "write_plan"]


def __getattr__(name):
    # Loaded on first use so that ``romosaic --help`` does not import them.
    if name in ("load_plan", "write_plan"):
        from . import plan

        return getattr(plan, name)
    if name == "run_survey":
        from .runner import run_survey

        return run_survey
    if name == "survey_status":
        from .status import survey_status

        return survey_status
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
