"""Speed of skycell lookups: cold name lookup, footprint search, whole-sky totals.

Each measurement that claims "cold" runs in a fresh Python process, so module
imports and caches are included. Run:

    python benchmarks/bench_skycell.py            # lookups (a few seconds)
    python benchmarks/bench_skycell.py --totals   # also the whole sky (~40 s)
"""

import argparse
import subprocess
import sys
import time

COLD_LOOKUP = """
import time
t0 = time.perf_counter()
from romosaic.skycell import get_tessellation
t1 = time.perf_counter()
cell = get_tessellation().skycell("270p65x70y49")
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""

COLD_FOOTPRINT = """
import time
t0 = time.perf_counter()
from romosaic.skycell import get_tessellation, skycells_for_image
from romosaic.wcs_utils import affine_tan_wcs, cd_from_orientation
t1 = time.perf_counter()
shape = (4088, 4088)
wcs = affine_tan_wcs(crval=(80.02, -30.01), crpix=(2043.5, 2043.5),
                     cd=cd_from_orientation(0.11 / 3600, 33.0), shape=shape)
cells = skycells_for_image(wcs, shape)
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {len(cells)}")
"""


def _cold(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--totals", action="store_true", help="also count the whole sky")
    args = parser.parse_args()

    imports, lookup = _cold(COLD_LOOKUP)
    print(f"name lookup, cold process: import {imports} s, lookup {lookup} s")
    imports, search, count = _cold(COLD_FOOTPRINT)
    print(f"footprint search, one 4088x4088 detector, cold: import {imports} s, "
          f"search {search} s, {count} skycells")

    from romosaic.skycell import ComputedTessellation

    tessellation = ComputedTessellation()
    start = time.perf_counter()
    for index in range(0, 4058, 97):
        tessellation.region_cells(index)
    per_region = (time.perf_counter() - start) / len(range(0, 4058, 97))
    print(f"one region's skycell table: {per_region * 1000:.1f} ms")

    if args.totals:
        tessellation = ComputedTessellation(cache_regions=1)
        start = time.perf_counter()
        counts = [len(tessellation.region_cells(i)) for i in range(len(tessellation.regions))]
        print(f"whole sky: {len(counts)} regions, {sum(counts):,} skycells, "
              f"{min(counts)}-{max(counts)} per region, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
