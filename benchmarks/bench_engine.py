"""Benchmark of the drizzle engine on arrays in memory (no files, no steps).

Drizzles ``--inputs`` dithered full-size detectors (4088² by default, the
simulator's gwcs) onto their free grid with `romosaic.resample.drizzle_images`
— data, weight, two variance planes and context, inputs prepared once
(weights, sparse WCS) and deposited strip by strip — with 1 and 2 threads,
and in files with a small memory budget. Prints, per configuration:

* wall and CPU seconds of the drizzle (CPU of every thread of the process),
  and CPU/wall: above 1.7 means both cores were kept busy;
* input Mpix per wall second and per CPU second;
* the growth of the process's peak resident memory;
* that every configuration gives the same planes, to the bit.

For scale, the ``drizzle`` package (`drizzle.resample.Drizzle`) drizzles the
same inputs, data plus the two variance planes (its ``data2``) and context,
with pixel maps from `romosaic.resample.compute_pixmap`, on one thread (it
holds the interpreter lock).

Examples
--------
::

    python benchmarks/bench_engine.py                   # 4 x 4088²
    python benchmarks/bench_engine.py --size 2048 --inputs 8 --json engine.json
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from drizzle.resample import Drizzle

from romosaic.resample import ResampleInput, compute_pixmap, drizzle_images, free_grid
from romosaic.resample.engine import data_window
from romosaic.resample.planes import PlaneStore
from romosaic.simulate.wcs import build_gwcs, plan_layout


def make_inputs(n_inputs, size):
    placements = plan_layout(np.random.default_rng(7), ra=80.0, dec=-30.0,
                             n_exposures=n_inputs, n_detectors=1, size=size, distortion=True)
    rng = np.random.default_rng(1)
    shape = (size, size)
    inputs = []
    for index, placement in enumerate(placements):
        dq = np.zeros(shape, np.uint32)
        dq[rng.random(shape) < 0.01] = 1
        inputs.append(ResampleInput(
            name=f"input{index}", data=rng.normal(1.0, 0.1, shape).astype(np.float32), dq=dq,
            wcs=build_gwcs(placement), exptime=100.0,
            variances={"var_rnoise": rng.uniform(0.8e-4, 1.2e-4, shape).astype(np.float16),
                       "var_poisson": rng.uniform(0.5e-4, 1.5e-4, shape).astype(np.float16)}))
    return inputs


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engine(inputs, grid, *, threads, directory=None, memory_budget=None):
    window = data_window(grid, [(image.wcs, image.shape) for image in inputs])
    store = PlaneStore(window.shape, directory=directory)
    rss0 = peak_rss_mib()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result, _ = drizzle_images(iter(inputs), grid, len(inputs), window=window, store=store,
                               threads=threads, memory_budget=memory_budget)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    store.close()
    return result, wall, cpu, peak_rss_mib() - rss0


def run_drizzle_package(inputs, grid):
    wall0, cpu0 = time.perf_counter(), time.process_time()
    driz = Drizzle(kernel="square", out_shape=grid.shape, fillval="NaN",
                   max_ctx_id=len(inputs), disable_ctx=False)
    for image in inputs:
        pixmap = compute_pixmap(image.wcs, grid.wcs, image.shape)
        weight = (image.dq == 0).astype(np.float32)
        variances = [np.asarray(v, np.float32) for v in image.variances.values()]
        driz.add_image(image.data, exptime=image.exptime, pixmap=pixmap, weight_map=weight,
                       pixfrac=1.0, data2=variances)
    return time.perf_counter() - wall0, time.process_time() - cpu0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4088)
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--no-drizzle-package", action="store_true",
                        help="skip the drizzle package's run")
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)

    inputs = make_inputs(args.inputs, args.size)
    grid = free_grid([(image.wcs, image.shape) for image in inputs])
    mpix = args.inputs * args.size**2 / 1e6
    print(f"{args.inputs} inputs of {args.size}x{args.size} ({mpix:.1f} Mpix) onto "
          f"{grid.shape[1]}x{grid.shape[0]}; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    reference = None
    with tempfile.TemporaryDirectory(dir=".") as scratch:
        for label, options in [
            ("engine, 1 thread", {"threads": 1}),
            ("engine, 2 threads", {"threads": 2}),
            ("engine, 2 threads, files, 64 MiB", {"threads": 2, "directory": scratch,
                                                 "memory_budget": 64 * 2**20}),
        ]:
            result, wall, cpu, rss = run_engine(inputs, grid, **options)
            same = None
            if reference is None:
                reference = result
            else:
                same = all(np.array_equal(a, b, equal_nan=True) for a, b in [
                    (result.data, reference.data), (result.weight, reference.weight),
                    (result.context, reference.context),
                    *[(result.variances[k], reference.variances[k])
                      for k in reference.variances]])
            rows.append({"case": label, "wall_s": wall, "cpu_s": cpu, "cpu_per_wall": cpu / wall,
                         "mpix_per_s": mpix / wall, "mpix_per_cpu_s": mpix / cpu,
                         "peak_rss_growth_mib": rss, "identical_to_first": same})
            del result
    if not args.no_drizzle_package:
        wall, cpu = run_drizzle_package(inputs, grid)
        rows.append({"case": "drizzle package, 1 thread", "wall_s": wall,
                     "cpu_s": cpu, "cpu_per_wall": cpu / wall, "mpix_per_s": mpix / wall,
                     "mpix_per_cpu_s": mpix / cpu, "peak_rss_growth_mib": None,
                     "identical_to_first": None})
    print(f"{'case':<40} {'wall s':>7} {'CPU s':>7} {'CPU/wall':>8} {'Mpix/s':>8} "
          f"{'Mpix/CPU-s':>10} {'peak +MiB':>9}  same")
    for row in rows:
        growth = row["peak_rss_growth_mib"]
        print(f"{row['case']:<40} {row['wall_s']:7.2f} {row['cpu_s']:7.2f} "
              f"{row['cpu_per_wall']:8.2f} {row['mpix_per_s']:8.2f} "
              f"{row['mpix_per_cpu_s']:10.2f} {'' if growth is None else f'{growth:9.0f}'}  "
              f"{'' if row['identical_to_first'] is None else row['identical_to_first']}")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "inputs": args.inputs,
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
