"""Outlier detection: time on a skycell vs a free grid, and peak memory with on_disk.

Each measurement runs in a fresh process (so peak RSS belongs to it alone)
on in-memory simulated exposures: the library is flux-converted and
sky-matched first, then only the outlier_detection step is timed.

    python benchmarks/bench_outlier.py                       # both measurements, small
    python benchmarks/bench_outlier.py --memory 8x1x4088     # the issue's memory case
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, sys, time, logging
logging.disable(logging.INFO)
from romosaic.library import ModelLibrary
from romosaic.simulate import simulate_association
from romosaic.steps import FluxStep, OutlierDetectionStep, SkyMatchStep
from romosaic.associations import make_association, write_association
from romosaic.skycell import get_tessellation

args = json.loads(sys.argv[1])
n, d, size = args["n"], args["d"], args["size"]
out = args["dir"]
cell = min(get_tessellation().skycells_touching([80.0], [-30.0]),
           key=lambda c: (c.ra_center - 80.0) ** 2 + (c.dec_center + 30.0) ** 2)
# Simulated once per case and reused (the marker is written last).
sim_dir = args["sim_dir"]
marker = os.path.join(sim_dir, "cal_paths.json")
if not os.path.exists(marker):
    sim = simulate_association(sim_dir, n_exposures=n, n_detectors=d, size=size, seed=3,
                               ra=cell.ra_center, dec=cell.dec_center)
    with open(marker, "w") as paths_file:
        json.dump([str(path) for path in sim.cal_paths], paths_file)
with open(marker) as paths_file:
    cal_paths = json.load(paths_file)
asn = make_association(cal_paths, product_name="bench", relative_to=sim_dir,
                       target=cell.name if args["skycell"] else None)
asn_path = write_association(f"{sim_dir}/bench_{int(args['skycell'])}_asn.json", asn)
library = ModelLibrary(asn_path, on_disk=args["on_disk"], temp_directory=out)
library = SkyMatchStep.call(FluxStep.call(library))
import gc
gc.collect()


def status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])


# Reset the kernel's high-water mark so the peak belongs to this step alone
# (flux and skymatch ran in this process first).
with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("5")
before = status_kib("VmRSS")
start = time.perf_counter()
OutlierDetectionStep.call(library)
elapsed = time.perf_counter() - start
peak = status_kib("VmHWM")
# The size of one resampled frame: the data window of the step's grid.
from romosaic.outlier.detect import data_window
from romosaic.resample import free_grid, skycell_grid_for_association
from romosaic.steps._survey import survey_inputs
geometry, _ = survey_inputs(library)
grid = (skycell_grid_for_association(target=library.target) if args["skycell"]
        else free_grid(geometry, pixel_scale_ratio=0.5))
window_ny, window_nx = data_window(grid, geometry).shape
frame_mib = 4 * window_ny * window_nx / 2**20
library.close()
print(json.dumps({"seconds": elapsed, "peak_mib": peak / 1024, "start_mib": before / 1024,
                  "frame_mib": frame_mib}))
"""


def _run(case, *, skycell, on_disk, directory):
    n, d, size = (int(v) for v in case.split("x"))
    sim_dir = os.path.join(os.path.dirname(directory), f"sim_{case}")
    os.makedirs(sim_dir, exist_ok=True)
    payload = json.dumps({"n": n, "d": d, "size": size, "skycell": skycell,
                          "on_disk": on_disk, "dir": directory, "sim_dir": sim_dir})
    out = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid-case", default="4x1x1024",
                        help="NxDxSIZE for the skycell-vs-free-grid timing")
    parser.add_argument("--memory", default="8x1x1024",
                        help="NxDxSIZE for the on_disk peak-memory measurement")
    parser.add_argument("--dir", default="benchmarks/_data/outlier", help="scratch directory")
    parser.add_argument("--memory-only", action="store_true",
                        help="skip the skycell-vs-free-grid timing")
    parser.add_argument("--on-disk-only", action="store_true",
                        help="measure memory with on_disk=True only")
    args = parser.parse_args()

    import shutil

    grid_cases = () if args.memory_only else (("free grid", False), ("skycell", True))
    for label, skycell in grid_cases:
        directory = os.path.join(args.dir, f"grid_{int(skycell)}")
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        result = _run(args.grid_case, skycell=skycell, on_disk=False, directory=directory)
        print(f"{args.grid_case} on a {label:9s}: outlier_detection {result['seconds']:6.2f} s, "
              f"peak RSS {result['peak_mib']:7.0f} MiB")
    n, d, size = (int(v) for v in args.memory.split("x"))
    for on_disk in (True,) if args.on_disk_only else (False, True):
        directory = os.path.join(args.dir, f"memory_{int(on_disk)}")
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        result = _run(args.memory, skycell=False, on_disk=on_disk, directory=directory)
        print(f"{args.memory} on_disk={on_disk!s:5s}: outlier_detection {result['seconds']:6.2f} s,"
              f" peak RSS {result['peak_mib']:7.0f} MiB, {result['start_mib']:.0f} MiB at the"
              f" step's start, so {result['peak_mib'] - result['start_mib']:.0f} MiB for the step;"
              f" one resampled frame is {result['frame_mib']:.0f} MiB"
              f" (3 frames: {3 * result['frame_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
