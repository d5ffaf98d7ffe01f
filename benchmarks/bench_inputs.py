"""Benchmark the start of a run: opening an association, checking its images, flux.

These are the parts of ``roman_mos`` before skymatch that read the input
files: building the `~romosaic.library.ModelLibrary` (which reads each
file's exposure group), the pipeline's check of every input (which reads
every array), and the flux step. Each run is a fresh Python process, so that
file reading and asdf's one-time set-up are measured as a pipeline run meets
them. Cases are simulated and cached as for ``bench_pipeline.py``.

``ROMOSAIC_WORKERS=1`` measures one thread at a time (in memory the check
and the flux step use one thread per usable core).

Examples
--------
::

    python benchmarks/bench_inputs.py --case 4x1x4088 --repeat 3
    ROMOSAIC_WORKERS=1 python benchmarks/bench_inputs.py --case 4x1x4088
    python benchmarks/bench_inputs.py --case 8x2x1024 --on-disk
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _cases import DEFAULT_DATA_DIR, ensure_data, parse_case


def run_child(asn, *, on_disk, python):
    spec = json.dumps({"asn": str(asn.resolve()), "on_disk": on_disk})
    command = [python, str(Path(__file__).resolve()), "_run", spec]
    done = subprocess.run(command, capture_output=True, text=True, cwd=asn.parent)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(spec):
    import logging

    logging.disable(logging.INFO)
    import tempfile

    from romosaic.library import ModelLibrary
    from romosaic.pipeline import MosaicPipeline
    from romosaic.steps import FluxStep

    spec = json.loads(spec)
    with tempfile.TemporaryDirectory(dir=".") as work:
        start = time.perf_counter()
        library = ModelLibrary(spec["asn"], on_disk=spec["on_disk"], temp_directory=work)
        opened = time.perf_counter()
        MosaicPipeline(on_disk=spec["on_disk"])._inspect_inputs(library)
        checked = time.perf_counter()
        FluxStep().run(library)
        scaled = time.perf_counter()
        library.close()
    print(json.dumps({
        "open": opened - start, "check": checked - opened, "flux": scaled - checked,
        "total": scaled - start,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", default=None,
                        help="<exposures>x<detectors>x<size> (repeatable; default 4x1x4088)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--on-disk", action="store_true", help="an on_disk library")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (all shown)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the child processes (default: this one)")
    args = parser.parse_args(argv)
    print(f"{'case':>12}  {'run':>3}  {'open s':>6}  {'check s':>7}  {'flux s':>6}  "
          f"{'total s':>7}  {'in Mpix/s':>9}  {'peak MiB':>8}")
    for name in args.case or ["4x1x4088"]:
        case = parse_case(name)
        asn, _ = ensure_data(case, args.data_dir, args.python)
        mpix = case["n_exposures"] * case["n_detectors"] * case["size"] ** 2 / 1e6
        for run in range(1, args.repeat + 1):
            result = run_child(asn, on_disk=args.on_disk, python=args.python)
            print(f"{name:>12}  {run:>3}  {result['open']:>6.2f}  {result['check']:>7.2f}  "
                  f"{result['flux']:>6.2f}  {result['total']:>7.2f}  "
                  f"{mpix / result['total']:>9.1f}  {result['peak_mib']:>8.0f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_run":
        child_main(sys.argv[2])
    else:
        main()
