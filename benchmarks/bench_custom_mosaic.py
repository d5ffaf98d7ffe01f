"""Benchmark ``romosaic custom-mosaic`` on a field of several skycells.

The default case is the one custom mosaics are for: 9 exposures of a 2 × 2
block of full-size detectors (36 images of 4088²), north up, dithered over
about 3.5 × 3.5 skycells, so the 0.055″ mosaic is about 18000² pixels
(1.2 GB per float32 plane). It takes a long time (simulating the data alone
takes tens of minutes the first time; it is cached). ``--size`` and
``--exposures`` give quick small versions::

    python benchmarks/bench_custom_mosaic.py --size 1024            # ~1 min
    python benchmarks/bench_custom_mosaic.py                        # 36 x 4088², long
    python benchmarks/bench_custom_mosaic.py --size 2048 --coarse --json out.json

The data are simulated once (seed `_cases.SEED`) and cached under
``--data-dir``/``custom-<exposures>x<detectors>x<size>``. Each run happens in
a fresh Python process, whose figures are reported:

* wall time and CPU time of `romosaic.custom_mosaic.perform`;
* peak resident memory (``ru_maxrss``) — this includes pages of the
  memory-mapped mosaic files that happened to be resident, which the kernel
  can drop at any time;
* peak *anonymous* resident memory (``RssAnon`` of ``/proc/self/status``,
  sampled every 0.2 s), the memory that cannot be dropped and that decides
  whether a machine runs out.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _cases import DEFAULT_DATA_DIR, SEED

HERE = Path(__file__).resolve().parent
_SIM_MARKER = "simulation.json"


# --------------------------------------------------------------------------
# Parent side: data, running the child, the report.
# --------------------------------------------------------------------------


def case_options(n_exposures, n_detectors, size):
    """Simulator options: north up, near RA 80.2, Dec -30.3 (one projection region)."""
    return {"n_exposures": n_exposures, "n_detectors": n_detectors, "size": size,
            "seed": SEED, "roll": 0.0, "ra": 80.2, "dec": -30.3, "cosmic_ray_rate": 1e-4}


def ensure_data(name, options, data_dir, python):
    """The case's directory of ``*_cal.asdf`` files, simulating it unless cached."""
    case_dir = data_dir / name
    marker = case_dir / _SIM_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("options") == options:
        return case_dir, None
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=data_dir))
    print(f"[{name}] simulating {options} ...", flush=True)
    start = time.perf_counter()
    done = subprocess.run([python, str(HERE / "_cases.py"), "simulate", str(staging),
                           json.dumps(options)], capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise SystemExit(f"simulation failed:\n{done.stderr[-4000:]}")
    seconds = time.perf_counter() - start
    if case_dir.exists():
        shutil.rmtree(case_dir)
    staging.rename(case_dir)
    print(f"[{name}] simulated in {seconds:.0f} s", flush=True)
    return case_dir, seconds


def run_case(case_dir, args):
    work = Path(tempfile.mkdtemp(prefix="run-custom-", dir=args.data_dir))
    spec = {"pattern": str(case_dir / "*_cal.asdf"), "output_dir": str(work / "out"),
            "coarse": args.coarse, "on_disk": args.on_disk, "memory_budget": args.memory_budget,
            "result": str(work / "result.json")}
    log_path = work / "run.log"
    with open(log_path, "w") as log:
        done = subprocess.run([args.python, str(Path(__file__).resolve()), "_run",
                               json.dumps(spec)], stdout=subprocess.PIPE, stderr=log,
                              text=True, cwd=work)
    result_path = Path(spec["result"])
    if done.returncode != 0 or not result_path.exists():
        raise SystemExit(f"custom mosaic run failed (log {log_path}):\n"
                         f"{log_path.read_text()[-4000:]}")
    result = json.loads(result_path.read_text())
    if args.keep_output:
        result["output_dir"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return result


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exposures", type=int, default=9, help="exposures (default 9)")
    parser.add_argument("--detectors", type=int, default=4,
                        help="detectors per exposure, on a grid (default 4: 2 x 2)")
    parser.add_argument("--size", type=int, default=4088,
                        help="detector side in pixels (default 4088, full size)")
    parser.add_argument("--coarse", action="store_true", help="also make the 0.11\" set")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--on-disk", dest="on_disk", action="store_const", const=True,
                      default=None, help="force on_disk (default: automatic)")
    mode.add_argument("--in-memory", dest="on_disk", action="store_const", const=False)
    parser.add_argument("--memory-budget", type=float, default=None, metavar="MIB",
                        help="MiB of drizzle planes in memory (default: the steps')")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="where simulated data are cached (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    parser.add_argument("--keep-output", action="store_true",
                        help="keep the products and the log")
    parser.add_argument("--python", default=sys.executable)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    name = f"custom-{args.exposures}x{args.detectors}x{args.size}"
    options = case_options(args.exposures, args.detectors, args.size)
    case_dir, sim_seconds = ensure_data(name, options, args.data_dir, args.python)
    result = run_case(case_dir, args)
    result.update({"case": name, "simulation_seconds": sim_seconds,
                   "input_mpix": args.exposures * args.detectors * args.size**2 / 1e6})
    shape = result["mosaic_shape"]
    print(f"\ncase {name}: {args.exposures * args.detectors} inputs of {args.size}^2 "
          f"({result['input_mpix']:.0f} Mpix), mosaic {shape[1]} x {shape[0]} "
          f"({shape[0] * shape[1] / 1e6:.0f} Mpix), {result['skycells']} skycells touched")
    print(f"  on_disk {result['on_disk']}, {result['strips']} drizzle strip(s)"
          f"{', coarse too' if args.coarse else ''}")
    print(f"  wall {result['wall_seconds']:.1f} s, CPU {result['cpu_seconds']:.1f} s")
    print(f"  peak RSS {result['peak_rss_mib']:.0f} MiB "
          f"(anonymous {result['peak_anon_mib']:.0f} MiB; after imports "
          f"{result['rss_after_import_mib']:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


# --------------------------------------------------------------------------
# Child side: one run.
# --------------------------------------------------------------------------


def _rss_mib():
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _anon_mib():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class _AnonSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0.0
        self.running = True

    def run(self):
        while self.running:
            self.peak = max(self.peak, _anon_mib())
            time.sleep(0.2)


def child_run(spec_json):
    spec = json.loads(spec_json)
    from romosaic.custom_mosaic import perform

    rss_after_import = _rss_mib()
    sampler = _AnonSampler()
    sampler.start()
    usage0 = os.times()
    start = time.perf_counter()
    status = perform(spec["pattern"], output_dir=spec["output_dir"], coarse=spec["coarse"],
                     on_disk=spec["on_disk"],
                     memory_budget=spec["memory_budget"])
    wall = time.perf_counter() - start
    usage1 = os.times()
    sampler.running = False
    sampler.join()
    if status != 0:
        raise SystemExit("perform returned 1")
    out = Path(spec["output_dir"])
    log_text = next(out.glob("*.log")).read_text()
    import re

    import roman_datamodels.datamodels as rdm

    from romosaic.skycell import get_tessellation
    from romosaic.wcs_utils import footprint

    coadd = sorted(out.glob("*_f158_coadd.asdf"))[0]
    with rdm.open(coadd) as mosaic:
        shape = list(mosaic.data.shape)
        ra, dec = footprint(mosaic.meta.wcs, mosaic.data.shape)
    strips = re.search(r"in (\d+) strip\(s\)", log_text)
    result = {
        "wall_seconds": wall,
        "cpu_seconds": (usage1.user - usage0.user) + (usage1.system - usage0.system),
        "peak_rss_mib": _rss_mib(),
        "peak_anon_mib": max(sampler.peak, _anon_mib()),
        "rss_after_import_mib": rss_after_import,
        "mosaic_shape": shape,
        "skycells": _skycells_of_main_region(get_tessellation().skycells_touching(ra, dec)),
        "on_disk": "models kept in temporary files" in log_text,
        "strips": int(strips.group(1)) if strips else None,
        "products": sorted(p.name for p in out.iterdir()),
        "load_average_1min": os.getloadavg()[0],
    }
    Path(spec["result"]).write_text(json.dumps(result, indent=2) + "\n")


def _skycells_of_main_region(cells):
    """Skycells of the mosaic's region (the neighbours' overlapping cells left out)."""
    from collections import Counter

    if not cells:
        return 0
    region = Counter(cell.region.index for cell in cells).most_common(1)[0][0]
    return sum(cell.region.index == region for cell in cells)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        child_run(sys.argv[2])
    else:
        main()
