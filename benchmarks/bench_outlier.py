"""Outlier detection: time on a skycell vs a free grid, and peak memory with on_disk.

Each measurement runs in a fresh process (so peak RSS belongs to it alone)
on in-memory simulated exposures: the library is flux-converted and
sky-matched first, then only the outlier_detection step is timed.

    python benchmarks/bench_outlier.py                       # both measurements, small
    python benchmarks/bench_outlier.py --memory 8x1x4088     # the issue's memory case

``--flag`` times instead the flagging of one image against the median, as
the step does it (`flag_image`), and its parts, in this process: three
dithered 4088² exposures are simulated (cached under ``benchmarks/_data``),
flux-converted and sky-matched, their median is drizzled onto a grid of the
inputs' pixel size (a window about one image in size), and the first image
is flagged against it. ``--save-flags`` and ``--check-flags`` store and
compare the flags and blot bit for bit:

    python benchmarks/bench_outlier.py --flag --repeat 5
    python benchmarks/bench_outlier.py --flag --save-flags before.npz
    python benchmarks/bench_outlier.py --flag --check-flags before.npz
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
# The size of one resampled frame: the step's data window.
from romosaic.outlier import median_window
from romosaic.resample import skycell_grid_for_association
from romosaic.steps._survey import survey_inputs
geometry, _ = survey_inputs(library)
skycell = skycell_grid_for_association(target=library.target) if args["skycell"] else None
window_ny, window_nx = median_window(geometry, skycell=skycell).shape
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


def _flag_setup(size, ratio, data_dir):
    """The first image, the median's store and window, and one group's weights."""
    import logging
    import time
    from pathlib import Path

    from romosaic.library import ModelLibrary
    from romosaic.outlier.detect import median_of_group_drizzles
    from romosaic.resample import free_grid, input_from_model
    from romosaic.resample.engine import DrizzleEngine, data_window, prepare_image
    from romosaic.resample.planes import PlaneStore
    from romosaic.simulate import simulate_association
    from romosaic.steps import FluxStep, SkyMatchStep

    logging.disable(logging.INFO)
    sim_dir = Path(data_dir) / f"flag_3x{size}"
    marker = sim_dir / "asn_path.txt"
    if not marker.exists():
        start = time.perf_counter()
        sim = simulate_association(sim_dir, n_exposures=3, n_detectors=1, size=size, seed=7,
                                   distortion=True)
        marker.write_text(Path(sim.asn_path).name)
        print(f"simulated 3 x {size}² in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    library = SkyMatchStep.call(FluxStep.call(ModelLibrary(sim_dir / marker.read_text())))
    images = [input_from_model(model) for _, model in library.iter_models(modify=False)]
    geometry = [(image.wcs, image.shape) for image in images]
    grid = free_grid(geometry, pixel_scale_ratio=ratio)
    window = data_window(grid, geometry)
    store = PlaneStore(window.shape)
    groups = [(str(k), 1, iter([image])) for k, image in enumerate(images)]
    median = median_of_group_drizzles(groups, window, store, threads=1)
    # One exposure's weights, as `_typical_weight` sees a group's.
    with DrizzleEngine(window, store, strips=[(0, window.shape[0])], n_inputs=1,
                       with_context=False, prefix="w-") as engine:
        engine.add(prepare_image(images[0], grid))
    weights = store.read(engine.names["weight"])
    store.remove(engine.names["weight"])
    store.remove(engine.names["data"])
    print(f"median of 3 on a {window.shape[1]} x {window.shape[0]} window, and one group's "
          f"weights, in {time.perf_counter() - start:.1f} s")
    return images[0], store, median, window, weights


def _timed(function, repeat):
    """``function()``'s result and its median wall and CPU seconds over ``repeat`` calls."""
    import statistics
    import time

    walls, cpus = [], []
    result = None
    for _ in range(repeat):
        # The previous result is let go first, so calls find the same free memory.
        result = None
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, statistics.median(walls), statistics.median(cpus)


def flag_benchmark(args):
    """Time `flag_image` and its parts on one full-size image; store or check its flags."""
    # One BLAS thread (as bench_kernels.py): OpenBLAS threads spinning after
    # the WCS's tiny matrix products would count as CPU time of the pixel map.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy as np

    from romosaic.dq import good_pixel_mask
    from romosaic.outlier import detect
    from romosaic.outlier.flagging import sky_level
    from romosaic.resample.pixmap import PixelMapper

    image, store, median, window, weights = _flag_setup(args.flag_size, args.flag_ratio,
                                                        args.data_dir)
    options = dict(snr=(5.0, 4.0), scale=(1.2, 0.7), backg=0.0, model_error=0.1,
                   good_bits="~DO_NOT_USE+NON_SCIENCE")
    pixels = image.data.size
    mapper = PixelMapper(image.wcs, window.grid.wcs, image.shape, stepsize=10)
    blot = detect.blot_median(store, median, mapper, window)
    parts = [
        ("PixelMapper", lambda: PixelMapper(image.wcs, window.grid.wcs, image.shape,
                                            stepsize=10), pixels),
        ("blot_median", lambda: detect.blot_median(store, median, mapper, window), pixels),
        ("sky_level", lambda: sky_level(blot), pixels),
        ("good_pixel_mask", lambda: good_pixel_mask(image.dq, options["good_bits"]), pixels),
        ("image_noise", lambda: detect.image_noise(image), pixels),
        ("masked_outliers", lambda: detect.masked_outliers(image, blot, **options), pixels),
        ("_typical_weight", lambda: detect._typical_weight(weights), weights.size),
        ("flag_image", lambda: detect.flag_image(image, store, median, window, **options),
         pixels),
    ]
    print(f"{'part':16s} {'wall s':>8s} {'CPU s':>8s} {'Mpix/s':>8s}   "
          f"(median of {args.repeat}; {image.shape[1]} x {image.shape[0]} image)")
    result = None
    for name, function, size in parts:
        if args.only and name not in args.only:
            continue
        value, wall, cpu = _timed(function, args.repeat)
        print(f"{name:16s} {wall:8.3f} {cpu:8.3f} {size / wall / 1e6:8.1f}", flush=True)
        if name == "flag_image":
            result = value
        del value
    if result is None and (args.save_flags or args.check_flags):
        result = detect.flag_image(image, store, median, window, **options)
    if result is not None:
        mask, flag_blot = result
        print(f"flagged {int(mask.sum())} pixels ({100 * mask.mean():.3f}%); "
              f"blot NaN at {int(np.isnan(flag_blot).sum())} pixels")
        weight_mean = detect._typical_weight(weights)
        if args.save_flags:
            np.savez_compressed(args.save_flags, mask=np.packbits(mask), shape=mask.shape,
                                blot=flag_blot, typical_weight=weight_mean)
            print(f"saved flags and blot to {args.save_flags}")
        if args.check_flags:
            saved = np.load(args.check_flags)
            same_mask = np.array_equal(np.unpackbits(saved["mask"])[:mask.size], mask.ravel())
            same_blot = np.array_equal(saved["blot"].view(np.uint32), flag_blot.view(np.uint32))
            same_weight = float(saved["typical_weight"]) == weight_mean
            print(f"flags identical: {same_mask}; blot bit-identical: {same_blot}; "
                  f"typical weight identical: {same_weight}")
            if not (same_mask and same_blot and same_weight):
                raise SystemExit(1)
    store.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flag", action="store_true",
                        help="time flag_image and its parts on one image instead")
    parser.add_argument("--flag-size", type=int, default=4088, help="image side for --flag")
    parser.add_argument("--flag-ratio", type=float, default=1.0,
                        help="grid pixel over input pixel for --flag's median")
    parser.add_argument("--repeat", type=int, default=3, help="calls timed per part (--flag)")
    parser.add_argument("--only", nargs="*", help="parts to time (--flag)")
    parser.add_argument("--save-flags", metavar="NPZ", help="store flag_image's output (--flag)")
    parser.add_argument("--check-flags", metavar="NPZ",
                        help="compare flag_image's output with a stored one (--flag)")
    parser.add_argument("--data-dir", default="benchmarks/_data",
                        help="cache of the simulation (--flag)")
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
    if args.flag:
        flag_benchmark(args)
        return

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
