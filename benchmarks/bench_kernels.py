"""Micro-benchmarks of the resampling kernels, on arrays in memory (no files).

Measured on one full-size WFI detector (4088² by default), dithered and
slightly rotated with respect to a free TAN output grid, as in the pipeline:

* ``romosaic.resample.compute_pixmap`` with ``stepsize=10`` (the default:
  exact WCS on a sparse grid of nodes plus bicubic splines) and
  ``stepsize=1`` (exact WCS at every pixel), for the simulator's TAN gwcs and
  for its distorted gwcs;
* ``romosaic.resample.weights.pixel_weights`` with ``ivm`` weighting;
* ``romosaic.resample.DrizzleCoadd.add`` with the square kernel and the two
  variance planes the pipeline propagates, with a precomputed pixel map and
  including ``compute_pixmap``;
* ``drizzle.resample.Drizzle.add_image`` itself, with and without the two
  extra planes, for comparison;
* romosaic's compiled kernels (``romosaic.resample.kernels.drizzle_add``)
  side by side with ``Drizzle.add_image`` on the same input, pixel map and
  grid, both depositing data, weight, the two variance planes and context:
  on one thread (pixel map given, and including the pixel map: romosaic's
  square kernel is given a ``PixelMapper`` and evaluates its splines as it
  goes, the package's kernel gets ``compute_pixmap``'s array; romosaic's
  kernel on that array too), and on
  two threads, each drizzling the input into its own output arrays (the
  package's kernel holds the interpreter lock, romosaic's does not);
  ``--kernels`` adds the other kernels (one thread, pixel map given);
  the square kernels are compared again, on one thread, on output grids
  finer than the input (``--fine-scales``, default 0.5: outlier detection's
  group drizzle, where a drop covers about 3 x 3 output pixels);
  ``--rotations`` compares them once more (one thread) on grids rotated by
  the given angles with respect to the input, at the output scale 1 and the
  fine scales: a skycell is north-up, so a detector at any roll angle lands
  on it rotated, and a drop is then a tilted square;
* outlier detection's median of 8 group frames (a quarter of a detector's
  rows on a grid as fine as the inputs: ``romosaic.outlier.nanmedian_stack``
  against ``numpy.nanmedian``), in median pixels per second, and its blot
  (``romosaic.outlier.blot_median``, pixel map included) of a median twice as
  fine as the input back onto the whole detector, in input pixels per second.

Every figure is the best of ``--repeat`` runs, with BLAS limited to one
thread (see below). "Mpix/s" is input pixels per
wall-clock second; "Mpix/CPU-s" is input pixels per second of CPU time of
this process (all threads), i.e. the throughput of one core when the kernel
runs on one thread. A CPU/wall ratio above 1 means the kernel used more than
one thread.

Example::

    python benchmarks/bench_kernels.py              # 4088², best of 3
    python benchmarks/bench_kernels.py --size 2048 --repeat 1 --json kernels.json
    python benchmarks/bench_kernels.py --compare-only --kernels all   # kernels only
    python benchmarks/bench_kernels.py --compare-only --fine-scales 0.5,0.7
    python benchmarks/bench_kernels.py --compare-only --size 2048 --rotations 0,20,45
"""

import argparse
import json
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path

# One BLAS thread, so that CPU time measures one core: the kernels are
# single-threaded, and otherwise idle OpenBLAS threads spinning after the
# tiny matrix products of the WCS evaluation get counted as CPU time. Set
# the variables in the environment to override (before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
from drizzle.resample import Drizzle

from romosaic.outlier import blot_median, nanmedian_stack
from romosaic.resample import DrizzleCoadd, compute_pixmap, free_grid
from romosaic.resample.engine import data_window
from romosaic.resample.kernels import KERNELS, drizzle_add
from romosaic.resample.pixmap import PixelMapper
from romosaic.resample.planes import PlaneStore
from romosaic.resample.weights import pixel_weights
from romosaic.simulate.wcs import build_gwcs, plan_layout
from romosaic.wcs_utils import affine_tan_wcs, cd_from_orientation

VARIANCE_NAMES = ("var_rnoise", "var_poisson")


def timed(function, repeat, setup=None):
    """Best wall time of ``repeat`` calls, with the CPU time of that call.

    ``setup`` (untimed) builds a fresh argument for each call.
    """
    best = None
    for _ in range(max(1, repeat)):
        argument = setup() if setup is not None else None
        wall0, cpu0 = time.perf_counter(), time.process_time()
        function(argument) if setup is not None else function()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        if best is None or wall < best[0]:
            best = (wall, cpu)
    return best


def geometry(size, distortion, pixel_scale_ratio=1.0):
    """Two dithered exposures of one detector (simulator gwcs) and their free
    grid, of output pixels ``pixel_scale_ratio`` times the input's."""
    placements = plan_layout(np.random.default_rng(7), ra=80.0, dec=-30.0, n_exposures=2,
                             n_detectors=1, size=size, distortion=distortion)
    wcs_a, wcs_b = (build_gwcs(p) for p in placements)
    shape = (size, size)
    grid = free_grid([(wcs_a, shape), (wcs_b, shape)], pixel_scale_ratio=pixel_scale_ratio)
    # The second exposure is dithered and rotated with respect to the grid.
    return wcs_b, grid


def rotated_geometry(size, rotation, pixel_scale_ratio):
    """A detector with a plain TAN WCS and a grid covering it whose +y axis is
    ``rotation`` degrees from the detector's, of output pixels
    ``pixel_scale_ratio`` times the input's."""
    wcs_in = affine_tan_wcs(crval=(80.0, -30.0), crpix=((size - 1) / 2, (size - 1) / 2),
                            cd=cd_from_orientation(0.11 / 3600, 0.0), shape=(size, size))
    grid = free_grid([(wcs_in, (size, size))], pixel_scale_ratio=pixel_scale_ratio,
                     rotation=rotation)
    return wcs_in, grid


def input_arrays(size):
    rng = np.random.default_rng(1)
    data = rng.normal(1.0, 0.1, (size, size)).astype(np.float32)
    good = rng.random((size, size)) > 0.01
    var_rnoise = rng.uniform(0.8e-4, 1.2e-4, (size, size)).astype(np.float32)
    var_poisson = rng.uniform(0.5e-4, 1.5e-4, (size, size)).astype(np.float32)
    return data, good, {"var_rnoise": var_rnoise, "var_poisson": var_poisson}


def run(size, repeat, exact_repeat, kernels=("square",), compare_only=False,
        fine_scales=(0.5,), rotations=()):
    mpix = size * size / 1e6
    rows = []

    def record(kernel, variant, wall_cpu, note="", pixels=None):
        # Input pixels unless the kernel says otherwise (the median's output).
        mpix = size * size / 1e6 if pixels is None else pixels / 1e6
        wall, cpu = wall_cpu
        rows.append({
            "kernel": kernel,
            "variant": variant,
            "wall_s": wall,
            "cpu_s": cpu,
            "mpix": mpix,
            "mpix_per_s": mpix / wall,
            "mpix_per_cpu_s": mpix / cpu if cpu > 0 else float("nan"),
            "note": note,
        })
        print(f"  {kernel:<28} {variant:<38} {wall:7.3f} s  {mpix / wall:8.2f} Mpix/s",
              flush=True)

    shape = (size, size)
    print(f"input {size}x{size} = {mpix:.2f} Mpix; best of {repeat} "
          f"({exact_repeat} for exact pixmaps)", flush=True)

    pixmaps = {}
    grids = {}
    input_wcs = {}
    for label, distortion in (("TAN", False), ("TAN + distortion", True)):
        wcs_in, grid = geometry(size, distortion)
        grids[label] = grid
        input_wcs[label] = wcs_in
        pixmaps[label] = compute_pixmap(wcs_in, grid.wcs, shape, stepsize=10)
        for step in () if compare_only else (10, 1):
            n = repeat if step > 1 else exact_repeat
            record("compute_pixmap", f"{label}, stepsize={step}",
                   timed(lambda w=wcs_in, g=grid, s=step: compute_pixmap(w, g.wcs, shape,
                                                                         stepsize=s), n))

    grid = grids["TAN"]
    pixmap = pixmaps["TAN"]
    wcs_in = input_wcs["TAN"]
    out_mpix = grid.shape[0] * grid.shape[1] / 1e6
    print(f"output grid {grid.shape[1]}x{grid.shape[0]} = {out_mpix:.2f} Mpix", flush=True)

    data, good, variances = input_arrays(size)
    record("pixel_weights", "ivm",
           timed(lambda: pixel_weights("ivm", data=data, good=good,
                                       var_rnoise=variances["var_rnoise"]), repeat))
    weight = pixel_weights("ivm", data=data, good=good, var_rnoise=variances["var_rnoise"])

    def new_coadd():
        return DrizzleCoadd(grid.shape, 1, variance_names=VARIANCE_NAMES, kernel="square")

    record("DrizzleCoadd.add", "square, 2 var planes, pixmap given",
           timed(lambda c: c.add(data, pixmap, weight=weight, variances=variances,
                                 exptime=100.0), repeat, setup=new_coadd))
    record("DrizzleCoadd.add", "square, 2 var planes, + pixmap(10)",
           timed(lambda c: c.add(data, compute_pixmap(wcs_in, grid.wcs, shape, stepsize=10),
                                 weight=weight, variances=variances, exptime=100.0),
                 repeat, setup=new_coadd))

    def new_drizzle(planes):
        def make():
            out_img2 = [np.zeros(grid.shape, np.float32) for _ in range(planes)] or None
            return Drizzle(kernel="square", fillval="NaN", fillval2="NaN", out_shape=grid.shape,
                           out_img2=out_img2, begin_ctx_id=0, max_ctx_id=0)
        return make

    clean = np.where(weight > 0, data, 0.0).astype(np.float32)
    data2 = [np.where(weight > 0, variances[name], 0.0).astype(np.float32)
             for name in VARIANCE_NAMES]
    for planes in (0, 2):
        record("drizzle Drizzle.add_image", f"square, {planes} extra planes, pixmap given",
               timed(lambda d, p=planes: d.add_image(
                   clean, exptime=100.0, pixmap=pixmap, data2=data2[:p] or None,
                   weight_map=weight, pixfrac=1.0, in_units="cps"),
                   repeat, setup=new_drizzle(planes)))

    compare_kernels(record, kernels, data, weight, variances, pixmap, grid, wcs_in, shape,
                    scale_ratio=1.0, repeat=repeat)
    # Outlier detection drizzles each group onto a grid twice as fine, where
    # a drop covers about 3 x 3 output pixels (one thread only: the outputs
    # are four times larger).
    for ratio in fine_scales:
        fine_wcs, fine_grid = geometry(size, False, pixel_scale_ratio=ratio)
        print(f"output grid {fine_grid.shape[1]}x{fine_grid.shape[0]} "
              f"(output scale {ratio:g})", flush=True)
        compare_kernels(record, ("square",), data, weight, variances,
                        compute_pixmap(fine_wcs, fine_grid.wcs, shape, stepsize=10), fine_grid,
                        fine_wcs, shape, scale_ratio=ratio, repeat=repeat, threads=False,
                        label=f", output scale {ratio:g}")
    for rotation in rotations:
        for ratio in (1.0, *fine_scales):
            rot_wcs, rot_grid = rotated_geometry(size, rotation, ratio)
            compare_kernels(record, ("square",), data, weight, variances,
                            compute_pixmap(rot_wcs, rot_grid.wcs, shape, stepsize=10), rot_grid,
                            rot_wcs, shape, scale_ratio=ratio, repeat=repeat, threads=False,
                            label=f", grid rotated {rotation:g} deg, output scale {ratio:g}")
    if compare_only:
        return rows, grid.shape

    # Outlier detection: the median of the group frames ...
    rng = np.random.default_rng(3)
    frames = rng.normal(1.0, 0.1, (8, size // 4, size)).astype(np.float32)
    frames[rng.random(frames.shape) < 0.1] = np.nan  # pixels a group does not cover
    pixels = frames.shape[1] * frames.shape[2]
    record("median of 8 frames", "nanmedian_stack (low median)",
           timed(lambda f=frames: nanmedian_stack(f, low=True), repeat), pixels=pixels)
    record("median of 8 frames", "numpy.nanmedian",
           timed(lambda f=frames: np.nanmedian(f, axis=0), repeat), pixels=pixels)
    del frames
    # ... and its blot back onto a whole input, from a grid twice as fine.
    fine = free_grid([(wcs_in, shape)], pixel_scale_ratio=0.5)
    window = data_window(fine, [(wcs_in, shape)])
    median = rng.normal(1.0, 0.1, window.shape).astype(np.float32)
    median[:8], median[-8:], median[:, :8], median[:, -8:] = np.nan, np.nan, np.nan, np.nan
    store = PlaneStore(window.shape)
    store.new_plane("median")
    store.write("median", median)
    del median
    record("blot_median", f"median grid {window.shape[1]}x{window.shape[0]}, pixmap(10)",
           timed(lambda: blot_median(store, "median",
                                     PixelMapper(wcs_in, window.grid.wcs, shape), window),
                 repeat))
    store.close()
    return rows, grid.shape


def _two_threads(function, arguments):
    """Run ``function(argument)`` for both arguments at once on two threads."""
    threads = [threading.Thread(target=function, args=(a,)) for a in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def compare_kernels(record, kernels, data, weight, variances, pixmap, grid, wcs_in, shape, *,
                    scale_ratio, repeat, threads=True, label=""):
    """romosaic's compiled kernels against the ``drizzle`` package's, on the same
    input, pixel map and grid, both depositing data, weight, the two variance
    planes and context (the coadd's work for one input). ``threads``: also
    two threads at once; ``label`` ends each variant's name."""
    planes = [variances[name] for name in VARIANCE_NAMES]
    clean = np.where(weight > 0, data, 0.0).astype(np.float32)
    clean2 = [np.where(weight > 0, plane, 0.0).astype(np.float32) for plane in planes]

    # Output arrays are written before timing (np.full, not np.zeros, whose
    # pages would be zeroed on first touch inside the timed kernel), as in a
    # run that adds many inputs to the same arrays.
    def ours_outputs():
        return dict(data=np.full(grid.shape, np.nan, np.float32),
                    weight=np.full(grid.shape, 0.0, np.float32),
                    variances=[np.full(grid.shape, np.nan, np.float32) for _ in planes],
                    context=np.full((1, *grid.shape), 0, np.uint32))

    def ours(out, kernel="square", pmap=None):
        drizzle_add(data, pixmap if pmap is None else pmap, out["data"], out["weight"],
                    weight=weight, variances=planes, out_variances=out["variances"],
                    out_context=out["context"], kernel=kernel, pixfrac=1.0,
                    pixel_scale_ratio=scale_ratio)

    def theirs_outputs(kernel="square"):
        def make():
            return Drizzle(kernel=kernel, fillval="NaN", fillval2="NaN",
                           out_img=np.full(grid.shape, np.nan, np.float32),
                           out_wht=np.full(grid.shape, 0.0, np.float32),
                           out_ctx=np.full((1, *grid.shape), 0, np.int32),
                           out_img2=[np.full(grid.shape, np.nan, np.float32) for _ in planes],
                           begin_ctx_id=0, max_ctx_id=0)
        return make

    def theirs(driz, pmap=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "not a flux-conserving kernel"
            driz.add_image(clean, exptime=100.0, pixmap=pixmap if pmap is None else pmap,
                           data2=clean2, weight_map=weight, pixfrac=1.0,
                           pixel_scale_ratio=scale_ratio, in_units="cps")

    def with_pixmap(function):
        return lambda out: function(out, pmap=compute_pixmap(wcs_in, grid.wcs, shape,
                                                             stepsize=10))

    def with_mapper(function):
        # romosaic's square kernel takes the mapper and evaluates its splines
        # row by row: the whole-image pixel map is never made.
        return lambda out: function(out, pmap=PixelMapper(wcs_in, grid.wcs, shape,
                                                          stepsize=10))

    what = "data + 2 var planes + context"
    record("romosaic drizzle_add", f"square, {what}, pixmap given{label}",
           timed(ours, repeat, setup=ours_outputs))
    record("drizzle Drizzle.add_image", f"square, {what}, pixmap given{label}",
           timed(theirs, repeat, setup=theirs_outputs()))
    record("romosaic drizzle_add", f"square, {what}, + pixmap(10){label}",
           timed(with_mapper(ours), repeat, setup=ours_outputs),
           note="PixelMapper(stepsize=10) given to drizzle_add")
    record("romosaic drizzle_add", f"square, {what}, + compute_pixmap(10){label}",
           timed(with_pixmap(ours), repeat, setup=ours_outputs))
    record("drizzle Drizzle.add_image", f"square, {what}, + pixmap(10){label}",
           timed(with_pixmap(theirs), repeat, setup=theirs_outputs()))
    if not threads:
        return
    pixels = 2 * shape[0] * shape[1]
    record("romosaic drizzle_add", f"square, {what}, 2 threads x 1 input",
           timed(lambda outs: _two_threads(ours, outs), repeat,
                 setup=lambda: [ours_outputs(), ours_outputs()]), pixels=pixels)
    record("drizzle Drizzle.add_image", f"square, {what}, 2 threads x 1 input",
           timed(lambda outs: _two_threads(theirs, outs), repeat,
                 setup=lambda: [theirs_outputs()(), theirs_outputs()()]), pixels=pixels)
    for kernel in kernels:
        if kernel == "square":
            continue
        record("romosaic drizzle_add", f"{kernel}, {what}, pixmap given",
               timed(lambda out, k=kernel: ours(out, kernel=k), repeat, setup=ours_outputs))
        record("drizzle Drizzle.add_image", f"{kernel}, {what}, pixmap given",
               timed(theirs, repeat, setup=theirs_outputs(kernel)))


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(rows):
    headers = ("kernel", "variant", "wall s", "CPU s", "Mpix/s", "Mpix/CPU-s")
    table = [
        (r["kernel"], r["variant"], f"{r['wall_s']:.3f}", f"{r['cpu_s']:.3f}",
         f"{r['mpix_per_s']:.2f}", f"{r['mpix_per_cpu_s']:.2f}")
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    align = [str.ljust, str.ljust, str.rjust, str.rjust, str.rjust, str.rjust]
    print("  ".join(a(h, w) for a, h, w in zip(align, headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(a(v, w) for a, v, w in zip(align, row, widths, strict=True)))


def print_ratios(rows):
    """romosaic's kernels over the drizzle package's, per core and per wall second."""
    ours = {r["variant"]: r for r in rows if r["kernel"] == "romosaic drizzle_add"}
    theirs = {r["variant"]: r for r in rows if r["kernel"] == "drizzle Drizzle.add_image"}
    common = [v for v in ours if v in theirs]
    if not common:
        return
    print()
    print("romosaic / drizzle package, same work:")
    for variant in common:
        a, b = ours[variant], theirs[variant]
        load_a, load_b = a["cpu_s"] / a["wall_s"], b["cpu_s"] / b["wall_s"]
        print(f"  {variant:<58} per core x{a['mpix_per_cpu_s'] / b['mpix_per_cpu_s']:5.2f}"
              f"   per wall second x{a['mpix_per_s'] / b['mpix_per_s']:5.2f}"
              f"   (CPU/wall {load_a:.2f} against {load_b:.2f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Micro-benchmarks of the resampling kernels.")
    parser.add_argument("--size", type=int, default=4088,
                        help="input detector side in pixels (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per measurement, best shown (default %(default)s)")
    parser.add_argument("--exact-repeat", type=int, default=1,
                        help="runs of the slow stepsize=1 pixmaps (default %(default)s)")
    parser.add_argument("--kernels", default="square",
                        help="kernels to compare with the drizzle package: a comma-separated "
                             "list or 'all' (default %(default)s)")
    parser.add_argument("--compare-only", action="store_true",
                        help="only the comparison of the compiled kernels with the drizzle "
                             "package (and the rows it needs)")
    parser.add_argument("--fine-scales", default="0.5",
                        help="output over input pixel sizes below 1 at which the square "
                             "kernels are also compared, comma-separated, or 'none' "
                             "(default %(default)s)")
    parser.add_argument("--rotations", default="none",
                        help="angles (degrees) of grids rotated with respect to the input "
                             "on which the square kernels are also compared, comma-separated, "
                             "or 'none' (default %(default)s)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the measurements to this JSON file")
    args = parser.parse_args(argv)

    machine = {"cpu_model": cpu_model(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "numpy": np.__version__}
    print(f"{machine['cpu_model']}, {machine['cpus']} CPUs, Python {machine['python']}, "
          f"numpy {machine['numpy']}")
    kernels = KERNELS if args.kernels == "all" else tuple(args.kernels.split(","))
    unknown = set(kernels) - set(KERNELS)
    if unknown:
        parser.error(f"unknown kernels: {', '.join(sorted(unknown))}")
    fine_scales = () if args.fine_scales == "none" else tuple(
        float(v) for v in args.fine_scales.split(","))
    rotations = () if args.rotations == "none" else tuple(
        float(v) for v in args.rotations.split(","))
    rows, out_shape = run(args.size, args.repeat, args.exact_repeat, kernels=kernels,
                          compare_only=args.compare_only, fine_scales=fine_scales,
                          rotations=rotations)
    print()
    print_table(rows)
    print_ratios(rows)
    if args.json:
        payload = {"machine": machine, "size": args.size, "output_shape": list(out_shape),
                   "repeat": args.repeat, "results": rows}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
