"""Outlier detection: time on a skycell vs a free grid, and peak memory with on_disk.

Each measurement runs in a fresh process (so peak RSS belongs to it alone)
on in-memory simulated exposures: the library is flux-converted and
sky-matched first, then only the outlier_detection step is timed.

    python benchmarks/bench_outlier.py                       # both measurements, small
    python benchmarks/bench_outlier.py --memory 8x1x4088     # the issue's memory case
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, logging
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
sim = simulate_association(out, n_exposures=n, n_detectors=d, size=size, seed=3,
                           ra=cell.ra_center, dec=cell.dec_center)
asn = make_association(sim.cal_paths, product_name="bench", relative_to=out,
                       target=cell.name if args["skycell"] else None)
asn_path = write_association(f"{out}/bench_asn.json", asn)
library = ModelLibrary(asn_path, on_disk=args["on_disk"], temp_directory=out)
library = SkyMatchStep.call(FluxStep.call(library))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
OutlierDetectionStep.call(library)
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
library.close()
print(json.dumps({"seconds": elapsed, "peak_mib": peak / 1024, "peak_before_mib": before / 1024}))
"""


def _run(case, *, skycell, on_disk, directory):
    n, d, size = (int(v) for v in case.split("x"))
    payload = json.dumps({"n": n, "d": d, "size": size, "skycell": skycell,
                          "on_disk": on_disk, "dir": directory})
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
    args = parser.parse_args()

    import os
    import shutil

    for label, skycell in (("free grid", False), ("skycell", True)):
        directory = os.path.join(args.dir, f"grid_{int(skycell)}")
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        result = _run(args.grid_case, skycell=skycell, on_disk=False, directory=directory)
        print(f"{args.grid_case} on a {label:9s}: outlier_detection {result['seconds']:6.2f} s, "
              f"peak RSS {result['peak_mib']:7.0f} MiB")
    n, d, size = (int(v) for v in args.memory.split("x"))
    for on_disk in (False, True):
        directory = os.path.join(args.dir, f"memory_{int(on_disk)}")
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        result = _run(args.memory, skycell=False, on_disk=on_disk, directory=directory)
        print(f"{args.memory} on_disk={on_disk!s:5s}: outlier_detection {result['seconds']:6.2f} s,"
              f" peak RSS {result['peak_mib']:7.0f} MiB (before the step "
              f"{result['peak_before_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
