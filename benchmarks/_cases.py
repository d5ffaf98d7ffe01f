"""Benchmark cases shared by the benchmark scripts: names, simulated data, its cache.

A case ``"NxDxS"`` is N exposures of D detectors of S × S pixels, simulated
with a fixed seed (so every machine benchmarks the same data) and cached under
``benchmarks/_data/<case>`` (git-ignored). The simulation runs in a child
process so the benchmark's own process stays small:

    python benchmarks/_cases.py simulate OUTDIR OPTIONS_JSON
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = HERE / "_data"

#: Seed of every simulated case: the same data on every machine.
SEED = 2024

_CASE_RE = re.compile(r"^(\d+)x(\d+)x(\d+)$")
_SIM_MARKER = "simulation.json"


def parse_case(name):
    """``"8x2x1024"`` → ``{"name": ..., "n_exposures": 8, "n_detectors": 2, "size": 1024}``."""
    match = _CASE_RE.match(name)
    if not match:
        raise SystemExit(f"bad case {name!r}: expected <exposures>x<detectors>x<size>")
    n_exposures, n_detectors, size = (int(g) for g in match.groups())
    return {"name": name, "n_exposures": n_exposures, "n_detectors": n_detectors, "size": size}


def simulation_options(case):
    """The simulator's keyword arguments for a case."""
    return {
        "n_exposures": case["n_exposures"],
        "n_detectors": case["n_detectors"],
        "size": case["size"],
        "seed": SEED,
    }


def ensure_data(case, data_dir, python):
    """The association file of ``case``, simulating it first unless cached.

    A case directory counts as cached only when its marker file records the
    same simulation options; it is written last, after every file.

    Returns
    -------
    asn : pathlib.Path
    seconds : float or None
        Simulation time, or None when the cache was used.
    """
    case_dir = data_dir / case["name"]
    options = simulation_options(case)
    marker = case_dir / _SIM_MARKER
    if marker.exists():
        recorded = json.loads(marker.read_text())
        asn = case_dir / recorded.get("asn", "")
        if recorded.get("options") == options and asn.is_file():
            return asn, None
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{case['name']}-", dir=data_dir))
    print(f"[{case['name']}] simulating {options} ...", flush=True)
    start = time.perf_counter()
    command = [python, str(Path(__file__).resolve()), "simulate", str(staging),
               json.dumps(options)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise SystemExit(f"simulation of {case['name']} failed:\n{done.stderr[-4000:]}")
    seconds = time.perf_counter() - start
    if case_dir.exists():
        shutil.rmtree(case_dir)
    staging.rename(case_dir)
    recorded = json.loads((case_dir / _SIM_MARKER).read_text())
    print(f"[{case['name']}] simulated in {seconds:.1f} s", flush=True)
    return case_dir / recorded["asn"], seconds


def machine_info():
    """CPU model, core count, Python and platform, recorded with benchmark results."""
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def cpu_seconds_with_workers():
    """User and system CPU seconds of this process and the children it has waited for."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class TreeMemorySampler:
    """Peak memory of a process and all its descendants, sampled every ``interval`` s.

    romosaic's steps fork worker processes, whose memory ``ru_maxrss`` of
    the main process does not include. Each sample sums the proportional
    set size (``Pss`` in ``/proc/<pid>/smaps_rollup``) of the process and
    every descendant: pages shared between them (a forked worker's view of
    its parent's arrays, shared frames) are counted once in total, so the
    sum is the memory the run takes from the machine. Sampling can miss a
    spike shorter than the interval; reports therefore also show the main
    process's exact ``ru_maxrss``. Reading ``smaps_rollup`` makes the kernel
    walk the process's page tables, so samples are 0.1 s apart: the sampler
    then takes a few per cent of one core. Linux only (elsewhere the peak is None).

    Examples
    --------
    ::

        with TreeMemorySampler(process.pid) as sampler:
            process.wait()
        print(sampler.peak_mib)
    """

    def __init__(self, pid, interval=0.1):
        self.pid = pid
        self.interval = interval
        self.peak_mib = None
        self._stop = None
        self._thread = None

    def __enter__(self):
        import threading

        if not Path("/proc/self/smaps_rollup").exists():
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            total = sum(_pss_kib(pid) for pid in _process_tree(self.pid))
            if total:
                mib = total / 1024
                self.peak_mib = mib if self.peak_mib is None else max(self.peak_mib, mib)
            self._stop.wait(self.interval)


def _process_tree(root):
    """``root`` and its living descendants (read from ``/proc/<pid>/task/*/children``)."""
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    pending.extend(int(child) for child in handle.read().split())
            except (OSError, ValueError):
                continue
    return tree


def _pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _simulate(outdir, options_json):
    from romosaic.simulate import simulate_association

    options = json.loads(options_json)
    result = simulate_association(outdir, **options)
    marker = {"options": options, "asn": result.asn_path.name}
    (Path(outdir) / _SIM_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "simulate":
        _simulate(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
