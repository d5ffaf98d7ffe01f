"""Benchmark of the flux scaling of one image's planes, in place, in memory.

Times `romosaic.flux.scale_to_surface_brightness` with ``in_place=True`` —
what `romosaic.library.FluxScale` does every time an image's array is read —
on one full-size plane (4088² by default) of each kind a Level-2 image has:

* ``data``: float32, times the conversion factor;
* ``err``: float16, times the factor, all results normal float16 numbers;
* ``var_rnoise``: float16, times the factor squared, with values such that
  about a third of the results are float16 subnormals (variances in
  MJy²/sr² of the simulator's images are of that size).

Each figure is the best and the median of ``--repeat`` runs on one thread;
the plane is restored from a copy before each run, outside the timing.
Prints wall seconds and megapixels per second.

Examples
--------
::

    python benchmarks/bench_flux.py                    # 4088², best of 5
    python benchmarks/bench_flux.py --size 1024 --repeat 20
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

from romosaic.flux import scale_to_surface_brightness

#: MJy/sr per DN/s of the simulator's F158 images.
FACTOR = 0.40


def make_planes(size, seed=1):
    rng = np.random.default_rng(seed)
    shape = (size, size)
    return {
        "data": rng.normal(1.0, 0.1, shape).astype(np.float32),
        "err": rng.uniform(0.02, 0.2, shape).astype(np.float16),
        # Times 0.16: 1.6e-6 to 1.6e-4, float16 subnormals below 6.1e-5.
        "var_rnoise": rng.uniform(1e-5, 1e-3, shape).astype(np.float16),
    }


def time_in_place(name, plane, repeat):
    work = np.empty_like(plane)
    times = []
    for _ in range(repeat):
        np.copyto(work, plane)
        start = time.perf_counter()
        out = scale_to_surface_brightness({name: work}, FACTOR, in_place=True)[name]
        times.append(time.perf_counter() - start)
        if out is not work:
            raise RuntimeError(f"{name} was not scaled in place")
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4088)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    planes = make_planes(args.size)
    mpix = args.size**2 / 1e6
    scale = FACTOR * FACTOR
    subnormal = np.abs(planes["var_rnoise"].astype(np.float32) * np.float32(scale)) < 2.0**-14
    print(f"one {args.size}x{args.size} plane ({mpix:.1f} Mpix) of each kind, in place, "
          f"best and median of {args.repeat}; var_rnoise {subnormal.mean():.0%} subnormal "
          f"after scaling; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'plane':<12} {'dtype':<8} {'best s':>8} {'median s':>9} {'Mpix/s':>8}")
    for name, plane in planes.items():
        times = time_in_place(name, plane, args.repeat)
        best = min(times)
        print(f"{name:<12} {plane.dtype.name:<8} {best:8.4f} {statistics.median(times):9.4f} "
              f"{mpix / best:8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
