"""Benchmark the ``tweakreg`` step: wall time and peak memory of aligning an association.

Each case ``NxDxS`` (N exposures of D detectors of S² pixels) is simulated
once with 0.3″ pointing and 0.01° roll errors per exposure and cached under
``--data-dir`` (default ``benchmarks/_data/tweakreg-<case>``). The step then
runs in this process, relative and absolute (to the simulator's
``<product>_refcat.ecsv``), sources found in the pixels. Printed per case:
wall time of the whole step, of finding sources and of the fits, peak
resident memory, and the median distance of the detected stars from the
truth after alignment.

Examples
--------
::

    python benchmarks/bench_tweakreg.py                       # 32 x 1024² and 4 x 4088²
    python benchmarks/bench_tweakreg.py --case 8x2x1024
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CASES = ("32x1x1024", "4x1x4088")


def simulate(case, data_dir):
    from romosaic.simulate import simulate_association

    n_exposures, n_detectors, size = (int(v) for v in case.split("x"))
    out = data_dir / f"tweakreg-{case}"
    asn = out / "sim_f158_asn.json"
    if not asn.exists():
        simulate_association(out, n_exposures=n_exposures, n_detectors=n_detectors, size=size,
                             seed=2024, pointing_error=0.3, roll_error=0.01)
    return asn, out / "sim_f158_refcat.ecsv", out / "sim_f158_truth_sources.ecsv"


def run(case, data_dir):
    from astropy.table import Table
    from scipy.spatial import cKDTree

    import romosaic.steps.tweakreg_step as step_module
    from romosaic.align import sky_to_tangent
    from romosaic.steps import TweakRegStep

    asn, refcat, truth = simulate(case, data_dir)
    timings = {"detect": 0.0, "fit": 0.0}
    detect, align = step_module.detect_sources, step_module.align_images

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timings[name] += time.perf_counter() - start
        return wrapper

    step_module.detect_sources = timed("detect", detect)
    step_module.align_images = timed("fit", align)
    try:
        start = time.perf_counter()
        library = TweakRegStep.call(str(asn), abs_refcat=str(refcat))
        wall = time.perf_counter() - start
    finally:
        step_module.detect_sources, step_module.align_images = detect, align

    stars = Table.read(truth)
    stars = stars[stars["kind"] == "star"]
    sx, sy = sky_to_tangent(stars["ra"], stars["dec"], 80.0, -30.0)
    tree = cKDTree(np.c_[sx, sy])
    distances = []
    from romosaic.align import detect_sources
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            catalog = detect_sources(model.data)
            ra, dec = model.meta.wcs.forward_transform(catalog["x"], catalog["y"])
            d, _ = tree.query(np.c_[sky_to_tangent(ra, dec, 80.0, -30.0)])
            distances.append(d[d < 0.5])
            library.shelve(model, index, modify=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    offset = 1000 * np.median(np.concatenate(distances))
    print(f"{case:>12}  step {wall:7.2f} s  (sources {timings['detect']:6.2f} s thread "
          f"time, fits {timings['fit']:6.2f} s)  peak {peak:7.0f} MiB  "
          f"median star offset {offset:.2f} mas", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", help="NxDxS (repeatable)")
    parser.add_argument("--data-dir", type=Path, default=HERE / "_data")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    for case in args.case or DEFAULT_CASES:
        run(case, args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
