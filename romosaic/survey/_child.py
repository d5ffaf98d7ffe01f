"""The child process of a survey task: ``python -m romosaic.survey._child SPEC FD``.

Runs the mosaic pipeline with ``strun``'s command-line handling
(``Step.from_cmdline``) on the task's association, writing into the current
directory (the task's staging directory), and then writes ``result.json``
beside the spec: exit status, a one-line error, wall time and the peak of
its own resident memory. FD is the read end of a pipe that only the
supervising worker holds open: when the worker dies the pipe closes and this
process exits rather than running on unsupervised.
"""

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from .._atomic import atomic_write_text
from .._process_memory import peak_resident_bytes
from ..pipeline.options import PIPELINE_CLASS

# Exit status of a child whose supervising worker went away.
ORPHANED_EXIT_STATUS = 75


def _watch_supervisor(fd):
    def watch():
        try:
            while os.read(fd, 1024):
                pass
        except OSError:
            pass
        os._exit(ORPHANED_EXIT_STATUS)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _one_line(error):
    text = str(error).strip().splitlines()
    message = text[0] if text else type(error).__name__
    return message[:300]


def main(argv=None):
    """Run the task described by the spec file; returns the exit status."""
    spec_path, supervisor_fd = (argv if argv is not None else sys.argv[1:])[:2]
    _watch_supervisor(int(supervisor_fd))
    spec_path = Path(spec_path)
    spec = json.loads(spec_path.read_text())
    staging = spec_path.parent.parent
    start = time.monotonic()
    exit_status, error = 0, None
    try:
        from stpipe import Step

        Step.from_cmdline([PIPELINE_CLASS, spec["association"], *spec["options"],
                           f"--output_dir={staging}", "--disable-crds-steppars"])
    except SystemExit as exc:
        exit_status = exc.code if isinstance(exc.code, int) and exc.code else 1
        if exit_status == 128 + signal.SIGTERM:  # the pipeline's own SIGTERM exit
            error = "terminated by SIGTERM"
        else:  # stpipe's command-line parser gave up
            error = f"the pipeline's command line was rejected (exit status {exit_status})"
    except Exception as exc:
        status = getattr(exc, "exit_status", None)
        if isinstance(status, int) and status != 0:
            exit_status, error = status, _one_line(exc)
        else:
            traceback.print_exc()
            exit_status, error = 1, f"{type(exc).__name__}: {_one_line(exc)}"
    result = {
        "exit_status": exit_status,
        "error": error,
        "wall_seconds": round(time.monotonic() - start, 3),
        "peak_memory_bytes": peak_resident_bytes(),
    }
    atomic_write_text(spec_path.parent / "result.json", json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
