"""Benchmark the ``skymatch`` step: wall time against the number of images.

Each case is simulated once and cached under ``--data-dir`` (default
``benchmarks/_data``, shared with ``bench_pipeline.py``: same case names,
seed and cache marker), then run in a fresh Python process: the flux step
first (not timed), then ``SkyMatchStep`` (timed). The child reports the
step's wall and CPU time (its workers' included), the part spent measuring
pixels (`romosaic.skymatch.measure_image_sky`, in forked workers) and
matching (`romosaic.skymatch.match_sky`); the peak memory is the larger of
the child's ``ru_maxrss`` and the sampled peak of it and its workers
(`_cases.TreeMemorySampler`). ``ROMOSAIC_WORKERS=1`` measures one process.

The default cases have 4, 16 and 64 images of 1024² pixels: 4 exposures of
one detector, 8 of two, 16 of four. The last column divides each case's time
per image by the first case's: near 1 means the cost grows linearly with the
number of images.

Examples
--------
::

    python benchmarks/bench_skymatch.py                      # 4, 16 and 64 images
    python benchmarks/bench_skymatch.py --case 4x1x4088      # full-size detectors
    python benchmarks/bench_skymatch.py --on-disk --repeat 3 --json skymatch.json
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cases import (
    DEFAULT_DATA_DIR,
    SEED,
    TreeMemorySampler,
    cpu_seconds_with_workers,
    ensure_data,
    parse_case,
)

DEFAULT_CASES = ("4x1x1024", "8x2x1024", "16x4x1024")


# --------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------


def run_case(case, asn, *, on_disk, python, data_dir):
    work = Path(tempfile.mkdtemp(prefix=f"skymatch-{case['name']}-", dir=data_dir))
    spec = {"asn": str(asn.resolve()), "on_disk": on_disk, "work": str(work)}
    command = [python, str(Path(__file__).resolve()), "_run", json.dumps(spec)]
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=work)
        with TreeMemorySampler(child.pid) as sampler:
            stdout, stderr = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"run of {case['name']} failed:\n{stderr[-4000:]}")
        result = json.loads(stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # The workers' memory is in the sampled process tree, not in ru_maxrss.
    result["peak_rss_mib"] = max(result["peak_rss_mib"], sampler.peak_mib or 0.0)
    result.update(case)
    result["on_disk"] = on_disk
    result["images"] = case["n_exposures"] * case["n_detectors"]
    result["input_mpix"] = result["images"] * case["size"] ** 2 / 1e6
    return result


def format_table(results):
    first = results[0]
    per_image_0 = first["step_seconds"] / first["images"]
    headers = ["case", "images", "on_disk", "Mpix", "skymatch s", "measure s", "match s",
               "s/image", "Mpix/s", "CPU s", "peak RSS MiB", "time ratio / image ratio"]
    rows = []
    for r in results:
        per_image = r["step_seconds"] / r["images"]
        rows.append([
            r["name"], str(r["images"]), "yes" if r["on_disk"] else "no",
            f"{r['input_mpix']:.1f}", f"{r['step_seconds']:.2f}", f"{r['measure_seconds']:.2f}",
            f"{r['match_seconds']:.3f}", f"{per_image:.3f}",
            f"{r['input_mpix'] / r['step_seconds']:.1f}", f"{r['cpu_seconds']:.2f}",
            f"{r['peak_rss_mib']:.0f}", f"{per_image / per_image_0:.2f}",
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Time the skymatch step against image count.")
    parser.add_argument("--case", action="append", metavar="NAME",
                        help="<exposures>x<detectors>x<size> (repeatable; default: "
                        f"{', '.join(DEFAULT_CASES)})")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="where simulated data are cached (default: %(default)s)")
    parser.add_argument("--on-disk", action="store_true", help="run with an on_disk library")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per case; the fastest is shown (default 1)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every measurement to this JSON file")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the child processes (default: this one)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cases = [parse_case(name) for name in (args.case or DEFAULT_CASES)]
    data_dir = args.data_dir.resolve()
    results = []
    for case in cases:
        asn, _ = ensure_data(case, data_dir, args.python)
        runs = []
        for index in range(max(1, args.repeat)):
            result = run_case(case, asn, on_disk=args.on_disk, python=args.python,
                              data_dir=data_dir)
            runs.append(result)
            print(f"[{case['name']} run {index + 1}] skymatch {result['step_seconds']:.2f} s",
                  flush=True)
        best = min(runs, key=lambda r: r["step_seconds"])
        best["all_step_seconds"] = [r["step_seconds"] for r in runs]
        results.append(best)
    print()
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps({"seed": SEED, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")


# --------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------


def child_run(spec_json):
    import logging
    import resource

    spec = json.loads(spec_json)
    logging.disable(logging.INFO)
    import romosaic.steps.skymatch_step as skymatch_step
    from romosaic.library import ModelLibrary
    from romosaic.steps import FluxStep

    # Images are measured in threads, so the measuring stage is timed around
    # the step's call of measure_image_sky for all of them (from the first
    # call's start to the last call's end would need a lock; the sum of the
    # calls' times is reported instead, as CPU-like seconds).
    timers = {"measure_image_sky": 0.0, "match_sky": 0.0}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timers[name] += time.perf_counter() - t0
        return wrapper

    # The step calls these through its module namespace.
    for name in timers:
        setattr(skymatch_step, name, timed(name, getattr(skymatch_step, name)))

    library = ModelLibrary(spec["asn"], on_disk=spec["on_disk"], temp_directory=spec["work"])
    try:
        library = FluxStep.call(library)
        cpu0 = cpu_seconds_with_workers()
        t0 = time.perf_counter()
        skymatch_step.SkyMatchStep.call(library)
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds_with_workers() - cpu0
        usage = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        library.close()
    print(json.dumps({
        "step_seconds": seconds,
        "cpu_seconds": cpu,
        "measure_seconds": timers["measure_image_sky"],
        "match_seconds": timers["match_sky"],
        "peak_rss_mib": usage.ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        child_run(sys.argv[2])
    else:
        main()
