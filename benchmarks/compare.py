"""Run romosaic and the reference pipeline side by side and print the ratios.

The reference is romancal's ``MosaicPipeline`` (alias ``roman_mos``),
installed in a virtual environment of its own that romosaic never depends
on. Name its interpreter in ``ROMOSAIC_REFERENCE_PYTHON`` (or pass
``--reference-python``); without it only romosaic runs, and the table says
that the reference was not configured.

Like with like
    Both pipelines get the same simulated association (see ``_cases.py``),
    run in memory (``--on-disk`` switches both), with their default free
    output grid or the skycell the association names, write their products
    into a fresh directory, and skip the source catalog: the reference's
    needs online reference data, so neither pipeline runs it here. After
    the runs the two mosaics are compared pixel by pixel (median
    ``|romosaic - reference| / err``, ratio of summed flux over the pixels
    both cover) to show that the two did comparable work.

Offline
    Every child process gets ``STPIPE_DISABLE_CRDS_STEPPARS=true``,
    ``CRDS_MODE=local`` and a ``CRDS_SERVER_URL`` under the reserved
    ``.invalid`` domain, so neither pipeline can reach a reference-data
    server. For skycell cases the reference reads the skycell grid from the
    file named by ``SKYMAP_PATH``; this script writes one holding the
    projection regions and the one region's skycells, computed by romosaic's
    tessellation, so the reference never downloads the sky map either.

Inputs for the reference
    The simulated files are written with romosaic's roman_datamodels. When
    the reference's older roman_datamodels does not know their schema tag,
    a copy is made with the tag (and the extension URI recorded in the file's
    history) rewritten to the newest version the reference knows. Only the
    ASDF header changes, the arrays are byte-identical; each copy is opened
    with the reference's roman_datamodels to prove it reads. The copies are
    cached in ``<case>/reference_inputs``.

Measurements
    Each run is a fresh Python process. Its peak memory is the larger of
    the ``ru_maxrss`` that ``os.wait4`` returns for that process and the
    peak, sampled every 0.1 s, of the summed proportional set size of the
    process and the worker processes it forks (`_cases.TreeMemorySampler`),
    so it includes the interpreter, the imports and every worker. CPU time
    includes the workers. "run" is the wall time of the
    ``MosaicPipeline.call`` inside the child (the time the pipeline itself
    takes); "process" is the wall time of the whole child, start-up and
    imports included. Per-step times come from timing ``stpipe.Step.run``
    of each step named in the pipeline's ``step_defs`` (both pipelines are
    stpipe pipelines with the same step names). Ratios are romosaic divided
    by the reference: below 1 means romosaic is faster or smaller.

Examples
--------
::

    export ROMOSAIC_REFERENCE_PYTHON=/path/to/refenv/bin/python
    python benchmarks/compare.py                         # the four cases of issue #9
    python benchmarks/compare.py --case 4x1x1024 --case 8x2x1024
    python benchmarks/compare.py --case 4x1x1024-skycell --keep-output
    python benchmarks/compare.py --on-disk-series        # romosaic only, 8/16/32 x 4088²
    python benchmarks/compare.py --on-disk-series --series-size 2048 --series-modes default

A case is ``<exposures>x<detectors>x<size>`` (a free grid) or the same with
``-skycell`` (simulated at the centre of the skycell nearest RA 80°,
Dec -30° and resampled onto it).
"""

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cases import (
    DEFAULT_DATA_DIR,
    SEED,
    TreeMemorySampler,
    cpu_seconds_with_workers,
    ensure_data,
    machine_info,
    parse_case,
)

#: Environment variable naming the reference environment's Python interpreter.
REFERENCE_PYTHON_VARIABLE = "ROMOSAIC_REFERENCE_PYTHON"

ROMOSAIC_PIPELINE = "romosaic.pipeline.MosaicPipeline"
REFERENCE_PIPELINE = "romancal.pipeline.MosaicPipeline"

#: The rows of issue #9's table, run when no ``--case`` is given.
CASES = ("4x1x1024", "8x2x1024", "4x1x4088", "4x1x1024-skycell")

#: Issue #9's figures for the reference (wall s, peak MiB). They include the
#: source catalog and come from another machine: context only.
ISSUE_FIGURES = {
    "4x1x1024": (8.8, 430.0),
    "8x2x1024": (35.5, 700.0),
    "4x1x4088": (110.0, 3.24 * 1024),
    "4x1x1024-skycell": (44.0, 1.8 * 1024),
}

#: Exposures of the memory series, their size, and the library modes run.
SERIES_COUNTS = (8, 16, 32)
SERIES_SIZE = 4088
SERIES_MODES = ("default", "on_disk")

#: Skycell cases use the skycell whose centre is nearest this position,
#: the simulator's default pointing.
SKYCELL_NEAR = (80.0, -30.0)

_SKYCELL_CASE_RE = re.compile(r"^(\d+x\d+x\d+)-skycell$")
_SKYCELL_MARKER = "simulation.json"
_REFERENCE_MARKER = "reference_inputs.json"
_ROMAN_TAG_RE = re.compile(rb"asdf://stsci\.edu/datamodels/roman/tags/([a-z0-9_/]+)-(\d+\.\d+\.\d+)")
_ROMAN_EXTENSION_RE = re.compile(
    rb"asdf://stsci\.edu/datamodels/roman/extensions/datamodels-(\d+\.\d+\.\d+)")
_YAML_END = b"\n...\n"


# --------------------------------------------------------------------------
# Parent side. It never imports romosaic or romancal, so it adds nothing to
# the children's memory and runs under either interpreter.
# --------------------------------------------------------------------------


def offline_environment(data_dir, skymap=None):
    """The environment of a child: this one, with every CRDS route closed.

    Parameters
    ----------
    data_dir : pathlib.Path
        Holds the empty CRDS cache directory.
    skymap : pathlib.Path, optional
        Skycells file for the reference (``SKYMAP_PATH``).
    """
    env = dict(os.environ)
    cache = data_dir / ".crds_offline"
    cache.mkdir(parents=True, exist_ok=True)
    env.update({
        # stpipe only honours the string "true" here.
        "STPIPE_DISABLE_CRDS_STEPPARS": "true",
        "CRDS_MODE": "local",
        # .invalid never resolves (RFC 2606), so a stray request fails at once.
        "CRDS_SERVER_URL": "https://crds.invalid",
        "CRDS_PATH": str(cache),
    })
    if skymap is not None:
        env["SKYMAP_PATH"] = str(skymap)
    return env


def run_process(command, *, env, cwd, log_path):
    """Run a child to completion; its exit code, wall seconds and peak RSS.

    ``os.wait4`` reports the resource usage of that one child, unlike
    ``getrusage(RUSAGE_CHILDREN)``, which keeps the maximum over every child
    this process has waited for.

    Returns
    -------
    returncode : int
    seconds : float
    peak_mib : float
        The larger of the child's ``ru_maxrss`` and the sampled peak of the
        summed PSS of the child and its worker processes.
    cpu_seconds : float
        User and system time of the child and the workers it waited for.
    """
    with open(log_path, "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=cwd)
        with TreeMemorySampler(process.pid) as sampler:
            _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    # Linux reports kilobytes (KiB); macOS reports bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    main_peak = usage.ru_maxrss * scale / 2**20
    # With worker processes the sampled sum over the process tree is the
    # larger, honest figure; alone, the main process's exact peak is.
    peak = max(main_peak, sampler.peak_mib or 0.0)
    return process.returncode, seconds, peak, usage.ru_utime + usage.ru_stime


def _check_output(command, *, env=None, what):
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def _this_script():
    return str(Path(__file__).resolve())


def parse_compare_case(name):
    """A case dictionary for a free-grid or ``-skycell`` case name."""
    match = _SKYCELL_CASE_RE.match(name)
    if match:
        case = parse_case(match.group(1))
        case.update(name=name, skycell=True)
        return case
    case = parse_case(name)
    case["skycell"] = False
    return case


def ensure_skycell_data(case, data_dir, python):
    """The association of a ``-skycell`` case, simulating it unless cached.

    The data are simulated at the centre of the skycell nearest
    `SKYCELL_NEAR`, and the association names that skycell in ``target`` and
    ``skycell_wcs_info``. The skycell rows the reference needs are kept next
    to it in ``skymap_rows.npz``.

    Returns
    -------
    asn : pathlib.Path
    """
    case_dir = data_dir / case["name"]
    options = {
        "n_exposures": case["n_exposures"],
        "n_detectors": case["n_detectors"],
        "size": case["size"],
        "seed": SEED,
        "near": list(SKYCELL_NEAR),
    }
    marker = case_dir / _SKYCELL_MARKER
    if marker.exists():
        recorded = json.loads(marker.read_text())
        asn = case_dir / recorded.get("asn", "")
        if recorded.get("options") == options and asn.is_file():
            return asn
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{case['name']}-", dir=data_dir))
    print(f"[{case['name']}] simulating {options} at a skycell centre ...", flush=True)
    start = time.perf_counter()
    try:
        _check_output([python, _this_script(), "_prepare_skycell", str(staging),
                       json.dumps(options)], what=f"simulation of {case['name']}")
    except SystemExit:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if case_dir.exists():
        shutil.rmtree(case_dir)
    staging.rename(case_dir)
    recorded = json.loads(marker.read_text())
    print(f"[{case['name']}] simulated onto skycell {recorded['skycell']} in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    return case_dir / recorded["asn"]


def _fingerprint(paths):
    return {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}


def ensure_reference_inputs(asn, reference_python):
    """The association the reference should read, converting inputs if needed.

    Returns
    -------
    asn : pathlib.Path
        ``asn`` itself when the reference reads the files as they are,
        else the association of the converted copies.
    skymap : pathlib.Path or None
        The skycells file for ``SKYMAP_PATH`` (skycell cases only).
    """
    case_dir = asn.parent
    out_dir = case_dir / "reference_inputs"
    members = [case_dir / m["expname"]
               for m in json.loads(asn.read_text())["products"][0]["members"]]
    rows = case_dir / "skymap_rows.npz"
    sources = [asn, *members] + ([rows] if rows.exists() else [])
    expected = {"python": reference_python, "sources": _fingerprint(sources)}
    marker = out_dir / _REFERENCE_MARKER
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if {k: recorded.get(k) for k in expected} == expected:
            return _reference_paths(out_dir, recorded)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".reference_inputs-", dir=case_dir))
    spec = {"asn": str(asn), "outdir": str(staging),
            "skymap_rows": str(rows) if rows.exists() else None}
    print(f"[{case_dir.name}] preparing the reference's inputs ...", flush=True)
    try:
        report = json.loads(_check_output(
            [reference_python, _this_script(), "_convert", json.dumps(spec)],
            env=offline_environment(case_dir.parent),
            what=f"preparing the reference's inputs for {case_dir.name}",
        ).strip().splitlines()[-1])
    except SystemExit:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.update(expected)
    (staging / _REFERENCE_MARKER).write_text(json.dumps(report, indent=2) + "\n")
    staging.rename(out_dir)
    for line in report["notes"]:
        print(f"[{case_dir.name}] {line}", flush=True)
    return _reference_paths(out_dir, report)


def _reference_paths(out_dir, report):
    asn = out_dir / report["asn"] if report["converted"] else Path(report["asn"])
    skymap = out_dir / report["skymap"] if report.get("skymap") else None
    return asn, skymap


def run_pipeline(label, python, pipeline, asn, *, work_root, on_disk, env, skip_catalog=True,
                 step_options=None):
    """Run one pipeline once in a fresh process; its measurements as a dict.

    ``step_options`` (``{step: {parameter: value}}``) are passed to the
    pipeline's ``call`` as ``steps``.
    """
    work = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=work_root))
    result_path = work / "result.json"
    spec = {
        "pipeline": pipeline,
        "asn": str(asn.resolve()),
        "output_dir": str(work / "products"),
        "on_disk": on_disk,
        "skip_catalog": skip_catalog,
        "step_options": step_options or {},
        "result": str(result_path),
    }
    log_path = work / "pipeline.log"
    command = [python, _this_script(), "_run", json.dumps(spec)]
    returncode, seconds, peak, cpu = run_process(command, env=env, cwd=work, log_path=log_path)
    if returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        print(f"[{label}] FAILED (exit {returncode}; log {log_path}):\n{tail}", flush=True)
        return {"failed": True, "work": str(work), "log": str(log_path)}
    result = json.loads(result_path.read_text())
    result.update(work=str(work), process_seconds=seconds, peak_rss_mib=peak,
                  process_cpu_seconds=cpu, failed=False)
    return result


def compare_products(python, ours, theirs, *, work_root):
    """Pixel statistics of two mosaics, computed in a child process."""
    spec = {"romosaic": ours, "reference": theirs}
    handle, name = tempfile.mkstemp(prefix="compare-", suffix=".log", dir=work_root)
    os.close(handle)
    log_path = Path(name)
    command = [python, _this_script(), "_compare", json.dumps(spec)]
    returncode, _, _, _ = run_process(command, env=dict(os.environ), cwd=work_root,
                                      log_path=log_path)
    text = log_path.read_text()
    log_path.unlink()
    # The log also holds the child's warnings; the result is its JSON line.
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if returncode != 0 or not lines:
        print(f"mosaic comparison failed:\n{text[-3000:]}", flush=True)
        return None
    return json.loads(lines[-1])


def _best(runs):
    """The fastest successful run, with the spread of all of them."""
    good = [r for r in runs if not r["failed"]]
    if not good:
        return runs[-1]
    best = dict(min(good, key=lambda r: r["run_seconds"]))
    best["all_run_seconds"] = [r["run_seconds"] for r in good]
    best["max_peak_rss_mib"] = max(r["peak_rss_mib"] for r in good)
    return best


def run_case(case, args, reference_python, work_root):
    """Both pipelines (or romosaic alone) on one case; a result dict."""
    data_dir = args.data_dir
    if case["skycell"]:
        asn = ensure_skycell_data(case, data_dir, args.python)
    else:
        asn, _ = ensure_data(case, data_dir, args.python)
    entry = {"case": case, "asn": str(asn)}
    pipelines = [("romosaic", args.python, ROMOSAIC_PIPELINE, asn, None, args.romosaic_step)]
    if reference_python:
        ref_asn, skymap = ensure_reference_inputs(asn, reference_python)
        pipelines.append(("reference", reference_python, REFERENCE_PIPELINE, ref_asn, skymap,
                          {}))
    for label, python, pipeline, run_asn, skymap, step_options in pipelines:
        runs = []
        for index in range(max(1, args.repeat)):
            result = run_pipeline(f"{case['name']}-{label}", python, pipeline, run_asn,
                                  work_root=work_root, on_disk=args.on_disk,
                                  env=offline_environment(data_dir, skymap),
                                  step_options=step_options)
            runs.append(result)
            if not result["failed"]:
                print(f"[{case['name']} {label} run {index + 1}] "
                      f"run {result['run_seconds']:.2f} s, "
                      f"process {result['process_seconds']:.2f} s, "
                      f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
        entry[label] = _best(runs)
        entry[f"{label}_runs"] = runs
    ours, theirs = entry["romosaic"], entry.get("reference")
    if (not args.no_check and theirs and not ours["failed"] and not theirs["failed"]
            and ours.get("products") and theirs.get("products")):
        entry["check"] = compare_products(args.python, ours["products"][0],
                                          theirs["products"][0], work_root=work_root)
    if not args.keep_output:
        for label in ("romosaic", "reference"):
            for run in entry.get(f"{label}_runs", []):
                if not run["failed"]:
                    shutil.rmtree(run["work"], ignore_errors=True)
    return entry


def run_series(args, work_root):
    """romosaic alone, ever more exposures onto one skycell, in each mode asked for."""
    counts = sorted(args.series_counts)
    name = f"{counts[-1]}x1x{args.series_size}-skycell"
    case = parse_compare_case(name)
    asn = ensure_skycell_data(case, args.data_dir, args.python)
    full = json.loads(asn.read_text())
    members = full["products"][0]["members"]
    results = []
    for mode in args.series_modes:
        for count in counts:
            subset = dict(full)
            product = f"series_{count}"
            subset["products"] = [{"name": product, "members": members[:count]}]
            subset_asn = asn.parent / f"{product}_asn.json"
            subset_asn.write_text(json.dumps(subset, indent=2) + "\n")
            result = run_pipeline(f"series-{mode}-{count}", args.python, ROMOSAIC_PIPELINE,
                                  subset_asn, work_root=work_root, on_disk=mode == "on_disk",
                                  env=offline_environment(args.data_dir),
                                  step_options=args.romosaic_step)
            result["n_exposures"] = count
            result["size"] = args.series_size
            result["mode"] = mode
            results.append(result)
            if not result["failed"]:
                print(f"[series {count} x {args.series_size}² {mode}] "
                      f"run {result['run_seconds']:.1f} s, "
                      f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
                if not args.keep_output:
                    shutil.rmtree(result["work"], ignore_errors=True)
    return results


# -- printing ---------------------------------------------------------------


def _table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def _ratio(ours, theirs):
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def _value(result, key):
    if not result or result.get("failed"):
        return None
    return result.get(key)


def summary_table(entries):
    """The headline table: wall times, peak memory, and the mosaic check."""
    headers = ["case", "in Mpix", "output (ny, nx)", "romosaic s", "ref s", "ratio",
               "CPU ratio", "romosaic MiB", "ref MiB", "ratio", "med |d|/err", "flux ratio"]
    rows = []
    for entry in entries:
        case, ours, theirs = entry["case"], entry["romosaic"], entry.get("reference")
        check = entry.get("check") or {}
        shape = _value(ours, "output_shape")
        mpix = case["n_exposures"] * case["n_detectors"] * case["size"] ** 2 / 1e6
        rows.append([
            case["name"],
            f"{mpix:.1f}",
            "failed" if ours.get("failed") else f"({shape[0]}, {shape[1]})",
            _fmt(_value(ours, "run_seconds"), ".2f"),
            _fmt(_value(theirs, "run_seconds"), ".2f"),
            _fmt(_ratio(_value(ours, "run_seconds"), _value(theirs, "run_seconds")), ".2f"),
            _fmt(_ratio(_value(ours, "cpu_seconds"), _value(theirs, "cpu_seconds")), ".2f"),
            _fmt(_value(ours, "peak_rss_mib"), ".0f"),
            _fmt(_value(theirs, "peak_rss_mib"), ".0f"),
            _fmt(_ratio(_value(ours, "peak_rss_mib"), _value(theirs, "peak_rss_mib")), ".2f"),
            _fmt(check.get("median_abs_diff_over_err"), ".3f"),
            _fmt(check.get("flux_ratio"), ".4f"),
        ])
    return _table(headers, rows)


def step_table(entries):
    """Per-step wall times of every run shown in the summary."""
    steps = []
    for entry in entries:
        for label in ("romosaic", "reference"):
            for name in (entry.get(label) or {}).get("step_order", []):
                if name not in steps:
                    steps.append(name)
    headers = ["case", "pipeline", *steps, "other", "run", "process", "CPU s", "load"]
    rows = []
    for entry in entries:
        for label in ("romosaic", "reference"):
            result = entry.get(label)
            if not result or result.get("failed"):
                continue
            times = result["steps"]
            rows.append([
                entry["case"]["name"], label,
                *(_fmt(times.get(name), ".2f") for name in steps),
                f"{result['run_seconds'] - sum(times.values()):.2f}",
                f"{result['run_seconds']:.2f}",
                f"{result['process_seconds']:.2f}",
                f"{result['cpu_seconds']:.2f}",
                f"{result['load_average_1min_before']:.2f}",
            ])
    return _table(headers, rows) if rows else "(no successful runs)"


def check_table(entries):
    """What the mosaic comparison found, case by case."""
    headers = ["case", "grid offset (x, y) px ± spread", "interpolated", "common pixels",
               "romosaic-only", "ref-only", "med |d|/err", "p99 |d|/err", "flux ratio",
               "median ratio", "source flux ratio", "err ratio"]
    rows = []
    for entry in entries:
        check = entry.get("check")
        if not check:
            continue
        rows.append([
            entry["case"]["name"],
            "({:+.3f}, {:+.3f}) ± {:.3f}".format(*check["grid_offset_xy"],
                                                  check["grid_spread_px"]),
            "yes" if check["interpolated"] else "no",
            f"{check['common_pixels']}",
            f"{check['romosaic_only_pixels']}",
            f"{check['reference_only_pixels']}",
            _fmt(check.get("median_abs_diff_over_err"), ".3f"),
            _fmt(check.get("p99_abs_diff_over_err"), ".3f"),
            _fmt(check.get("flux_ratio"), ".4f"),
            _fmt(check.get("median_ratio"), ".4f"),
            _fmt(check.get("source_flux_ratio"), ".4f"),
            _fmt(check.get("err_median_ratio"), ".3f"),
        ])
    return _table(headers, rows) if rows else None


def series_table(results):
    headers = ["mode", "exposures", "size", "in Mpix", "run s", "process s", "peak RSS MiB",
               "output (ny, nx)"]
    rows = []
    for r in results:
        mpix = r["n_exposures"] * r["size"] ** 2 / 1e6
        mode = r.get("mode", "on_disk")
        if r["failed"]:
            rows.append([mode, str(r["n_exposures"]), str(r["size"]), f"{mpix:.0f}", "failed",
                         "", "", ""])
            continue
        shape = r["output_shape"]
        rows.append([mode, str(r["n_exposures"]), str(r["size"]), f"{mpix:.0f}",
                     f"{r['run_seconds']:.1f}", f"{r['process_seconds']:.1f}",
                     f"{r['peak_rss_mib']:.0f}", f"({shape[0]}, {shape[1]})"])
    return _table(headers, rows)


def _series_modes(text):
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(SERIES_MODES))
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"series modes are {', '.join(SERIES_MODES)}, "
                                         f"got {text!r}")
    return modes


def step_option(text):
    """``"step.parameter=value"`` as ``(step, parameter, value)``; value parsed as a literal."""
    name, sep, raw = text.partition("=")
    step, dot, parameter = name.strip().partition(".")
    if not sep or not dot or not step or not parameter:
        raise argparse.ArgumentTypeError(f"expected STEP.PARAMETER=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()  # a bare word: a string parameter
    return step, parameter, value


def parse_step_options(parsed):
    """``{step: {parameter: value}}`` from `step_option` results."""
    options = {}
    for step, parameter, value in parsed:
        options.setdefault(step, {})[parameter] = value
    return options


def print_report(entries, reference_python, on_disk, romosaic_steps=None):
    print()
    mode = "on_disk=True" if on_disk else "in memory"
    if romosaic_steps:
        listed = ", ".join(f"{step}.{name}={value!r}" for step, options in romosaic_steps.items()
                           for name, value in options.items())
        print(f"romosaic ran with {listed}; the reference with its defaults")
    if reference_python:
        print(f"romosaic vs the reference ({reference_python}), {mode}, source catalog "
              "skipped in both; ratio = romosaic / reference")
    else:
        print(f"romosaic only, {mode}: the reference pipeline was not configured "
              f"(set {REFERENCE_PYTHON_VARIABLE} to its environment's python)")
    print(summary_table(entries))
    print("\n'romosaic s' and 'ref s' time MosaicPipeline.call in the child; 'CPU ratio' "
          "compares the CPU time of those calls (steadier than wall time on a busy "
          "machine) and includes worker processes; peak memory is the larger of the "
          "child's ru_maxrss (os.wait4) and the sampled peak of the summed PSS of the "
          "child and its workers.")
    print("\nPer-step wall times (s); 'process' includes interpreter start-up and imports; "
          "'load' is the 1-minute load average before the run:")
    print(step_table(entries))
    checks = check_table(entries)
    if checks:
        print("\nMosaic check: romosaic's mosaic mapped onto the reference's grid "
              "(bilinear when the grids are offset by a fraction of a pixel), over pixels "
              "finite in both; err = the reference's err; ratios are romosaic / reference: "
              "flux = summed data, median = the sky, source flux = summed data above the "
              "sky where the reference is 5 err above it, err = median err:")
        print(checks)
    figures = [e["case"]["name"] for e in entries if e["case"]["name"] in ISSUE_FIGURES]
    if figures:
        print("\nFor context, issue #9's reference figures (all steps including the source "
              "catalog, measured on another machine):")
        for name in figures:
            wall, rss = ISSUE_FIGURES[name]
            print(f"  {name}: {wall:g} s, {rss:.0f} MiB")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run romosaic and the reference pipeline on the same simulated "
        "associations and print wall time and peak memory ratios.",
        epilog=f"Cases: {', '.join(CASES)} (the default). Any <exposures>x<detectors>x<size>"
        "[-skycell] works.",
    )
    parser.add_argument("--case", action="append", metavar="NAME",
                        help="case to run (repeatable); 'all' for the four of issue #9")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="where simulated data are cached (default: %(default)s)")
    parser.add_argument("--reference-python",
                        default=os.environ.get(REFERENCE_PYTHON_VARIABLE, ""),
                        help=f"the reference environment's python (default: "
                        f"${REFERENCE_PYTHON_VARIABLE})")
    parser.add_argument("--no-reference", action="store_true",
                        help="run romosaic only, even if the reference is configured")
    parser.add_argument("--on-disk", action="store_true",
                        help="run both pipelines with on_disk=True")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per case and pipeline; the fastest is shown (default 1)")
    parser.add_argument("--no-check", action="store_true",
                        help="do not compare the two mosaics pixel by pixel")
    parser.add_argument("--keep-output", action="store_true",
                        help="keep each run's directory (products, log, result.json)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every measurement to this JSON file")
    parser.add_argument("--romosaic-step", action="append", type=step_option, default=[],
                        metavar="STEP.PARAMETER=VALUE",
                        help="a step parameter for romosaic's runs only (repeatable), e.g. "
                             "outlier_detection.pixel_scale_ratio=1; the reference keeps its "
                             "defaults, so the comparison is then no longer like with like")
    parser.add_argument("--on-disk-series", action="store_true",
                        help="romosaic only: peak memory for ever more exposures onto one "
                        "skycell, in each of --series-modes (runs no cases unless --case "
                        "is given)")
    parser.add_argument("--series-modes", type=_series_modes, default=list(SERIES_MODES),
                        metavar="MODE,MODE",
                        help="library modes of the series: default (on_disk=False) and/or "
                        "on_disk (default: %(default)s)")
    parser.add_argument("--series-counts", type=lambda s: [int(v) for v in s.split(",")],
                        default=list(SERIES_COUNTS), metavar="N,N,...",
                        help="exposure counts of the series (default: %(default)s)")
    parser.add_argument("--series-size", type=int, default=SERIES_SIZE,
                        help="detector size of the series (default: %(default)s)")
    parser.add_argument("--python", default=sys.executable,
                        help="romosaic's interpreter for the children (default: this one)")
    args = parser.parse_args(argv)
    args.romosaic_step = parse_step_options(args.romosaic_step)
    return args


def main(argv=None):
    args = parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    names = args.case or ([] if args.on_disk_series else list(CASES))
    if "all" in names:
        names = list(CASES)
    cases = [parse_compare_case(name) for name in names]
    reference_python = "" if args.no_reference else args.reference_python.strip()
    if reference_python and not Path(reference_python).is_file():
        raise SystemExit(f"reference python {reference_python!r} does not exist")

    work_root = args.data_dir / "compare-runs"
    work_root.mkdir(parents=True, exist_ok=True)
    entries = [run_case(case, args, reference_python, work_root) for case in cases]
    series = run_series(args, work_root) if args.on_disk_series else []

    if entries:
        print_report(entries, reference_python, args.on_disk, args.romosaic_step)
    if series:
        print("\nromosaic onto one skycell (peak memory should not grow with the number "
              "of exposures, in either mode):")
        print(series_table(series))
    if args.json:
        payload = {"machine": machine_info(), "seed": SEED, "on_disk": args.on_disk,
                   "romosaic_steps": args.romosaic_step,
                   "reference_python": reference_python or None, "cases": entries,
                   "on_disk_series": series}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")


# --------------------------------------------------------------------------
# Child side. Each function runs in a fresh process under the interpreter
# that has the package it imports: romosaic's, or the reference's.
# --------------------------------------------------------------------------


def child_run(spec_json):
    """Run one pipeline (romosaic's or the reference's) and time its steps."""
    import importlib

    spec = json.loads(spec_json)
    start = time.perf_counter()
    from stpipe import Step

    module_name, class_name = spec["pipeline"].rsplit(".", 1)
    pipeline_class = getattr(importlib.import_module(module_name), class_name)
    import_seconds = time.perf_counter() - start

    step_order = list(pipeline_class.step_defs)
    step_seconds = {}
    original_run = Step.run

    def timed_run(self, *args, **kwargs):
        # Only the pipeline's own steps, by their step_defs name.
        if self.parent is None or self.name not in step_order:
            return original_run(self, *args, **kwargs)
        t0 = time.perf_counter()
        try:
            return original_run(self, *args, **kwargs)
        finally:
            step_seconds[self.name] = step_seconds.get(self.name, 0.0) + (
                time.perf_counter() - t0)

    Step.run = timed_run
    kwargs = {"save_results": True, "output_dir": spec["output_dir"], "on_disk": spec["on_disk"]}
    steps = {step: dict(options) for step, options in spec.get("step_options", {}).items()}
    if spec["skip_catalog"]:
        steps.setdefault("source_catalog", {})["skip"] = True
    if steps:
        kwargs["steps"] = steps
    load_average = os.getloadavg()[0]
    cpu0 = cpu_seconds_with_workers()
    t0 = time.perf_counter()
    output = pipeline_class.call(spec["asn"], **kwargs)
    run_seconds = time.perf_counter() - t0
    cpu = cpu_seconds_with_workers() - cpu0
    mosaic = output[0] if isinstance(output, tuple) else output
    products = sorted(str(p) for p in Path(spec["output_dir"]).glob("*_coadd.asdf"))
    result = {
        "pipeline": spec["pipeline"],
        "version": _package_version(module_name.split(".")[0]),
        "on_disk": spec["on_disk"],
        "steps": step_seconds,
        "step_order": [name for name in step_order if name in step_seconds],
        "run_seconds": run_seconds,
        "cpu_seconds": cpu,
        "import_seconds": import_seconds,
        "load_average_1min_before": load_average,
        "output_shape": [int(n) for n in mosaic.data.shape],
        "products": products,
    }
    Path(spec["result"]).write_text(json.dumps(result, indent=2) + "\n")


def _package_version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def child_prepare_skycell(outdir, options_json):
    """Simulate a case at a skycell's centre and name the skycell in its association.

    Also writes ``skymap_rows.npz``: every projection region and the chosen
    region's skycells in the layout of the reference's skycells file, for
    `child_convert` to turn into a file the reference can read offline.
    """
    import numpy as np

    from romosaic.associations import make_association, write_association
    from romosaic.simulate import simulate_association
    from romosaic.skycell import ComputedTessellation

    options = json.loads(options_json)
    outdir = Path(outdir)
    tessellation = ComputedTessellation()
    ra, dec = options["near"]
    cell = min(tessellation.skycells_touching([ra], [dec]),
               key=lambda c: (c.ra_center - ra) ** 2 + (c.dec_center - dec) ** 2)
    sim = simulate_association(outdir, n_exposures=options["n_exposures"],
                               n_detectors=options["n_detectors"], size=options["size"],
                               seed=options["seed"], ra=cell.ra_center, dec=cell.dec_center)
    product = f"{sim.product_name}_{cell.name}"
    asn = make_association(sim.cal_paths, product_name=product, target=cell.name,
                           relative_to=outdir, skycell_wcs_info=cell.wcs_info())
    asn_path = write_association(outdir / f"{product}_asn.json", asn)
    regions, cells = _skymap_rows(np, tessellation, cell.region.index)
    np.savez(outdir / "skymap_rows.npz", projection_regions=regions, skycells=cells)
    marker = {"options": options, "asn": asn_path.name, "skycell": cell.name}
    (outdir / _SKYCELL_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _skymap_rows(np, tessellation, region_index):
    """Rows of the reference's skycells tables for one region's skycells.

    Every projection region is listed, so that a region's ``index`` is also
    its row (the reference indexes the table by it); all but the chosen
    region own an empty range of skycells.
    """
    region_dtype = [("index", "<i4"), ("ra_tangent", "<f8"), ("dec_tangent", "<f8"),
                    ("ra_min", "<f8"), ("ra_max", "<f8"), ("dec_min", "<f8"),
                    ("dec_max", "<f8"), ("orientat", "<f4"), ("x_tangent", "<f8"),
                    ("y_tangent", "<f8"), ("nx", "<i4"), ("ny", "<i4"),
                    ("skycell_start", "<i4"), ("skycell_end", "<i4")]
    cell_dtype = [("name", "<U16"), ("ra_center", "<f8"), ("dec_center", "<f8"),
                  ("orientat", "<f4"), ("x_tangent", "<f8"), ("y_tangent", "<f8")]
    cell_dtype += [(f"{axis}_corn{i}", "<f8") for i in range(1, 5) for axis in ("ra", "dec")]
    cells = tessellation.region_cells(region_index)
    regions = np.zeros(len(tessellation.regions), dtype=region_dtype)
    for i, region in enumerate(tessellation.regions):
        count = len(cells) if region.index == region_index else 0
        regions[i] = (region.index, region.ra_tangent, region.dec_tangent, region.ra_min,
                      region.ra_max, region.dec_min, region.dec_max, region.orientat,
                      region.x_tangent, region.y_tangent, region.nx, region.ny, 0, count)
    rows = np.zeros(len(cells), dtype=cell_dtype)
    for i in range(len(cells)):
        cell = cells.skycell(i)
        corners = [value for corner in cell.corners for value in corner]
        rows[i] = (cell.name, cell.ra_center, cell.dec_center, cell.orientat,
                   cell.x_tangent, cell.y_tangent, *corners)
    return regions, rows


def child_convert(spec_json):
    """Make the inputs readable by the reference's roman_datamodels (reference venv).

    Prints one JSON line: the association to use, whether files were
    converted, the skycells file, and notes for the user.
    """
    import asdf
    import roman_datamodels.datamodels as rdm

    spec = json.loads(spec_json)
    asn_path = Path(spec["asn"])
    outdir = Path(spec["outdir"])
    asn = json.loads(asn_path.read_text())
    members = asn["products"][0]["members"]
    known_tags, known_extensions = _known_roman_versions(asdf)
    notes = []
    plans = []
    for member in members:
        source = asn_path.parent / member["expname"]
        header = _asdf_header(source)
        replacements = _header_replacements(header, known_tags, known_extensions)
        plans.append((member, source, header, replacements))
    converted = any(replacements for *_, replacements in plans)
    report = {"converted": converted, "asn": str(asn_path), "skymap": None, "notes": notes,
              "roman_datamodels": _package_version("roman_datamodels")}
    if converted:
        names = [source.name for _, source, _, _ in plans]
        if len(set(names)) != len(names):
            raise SystemExit("members with the same file name in different directories")
        changes = sorted({f"{old.decode()} -> {new.decode()}"
                          for *_, replacements in plans for old, new in replacements})
        notes.append("reference reads copies with rewritten ASDF header tags: "
                     + "; ".join(changes))
        new_asn = json.loads(json.dumps(asn))
        for (_, source, header, replacements), new_member in zip(
                plans, new_asn["products"][0]["members"], strict=True):
            target = outdir / source.name
            _write_patched(source, target, header, replacements)
            new_member["expname"] = target.name
        (outdir / asn_path.name).write_text(json.dumps(new_asn, indent=2) + "\n")
        report["asn"] = asn_path.name
    else:
        notes.append("reference reads the simulated files as they are")
    # Prove that the reference's roman_datamodels reads every input.
    for member in json.loads((outdir / report["asn"] if converted else asn_path)
                             .read_text())["products"][0]["members"]:
        path = (outdir if converted else asn_path.parent) / member["expname"]
        with rdm.open(path) as model:
            if type(model).__name__ != "ImageModel":
                raise SystemExit(f"{path}: the reference opens it as {type(model).__name__}")
            model.validate()
    if spec.get("skymap_rows"):
        report["skymap"] = "skymap_subset.asdf"
        _write_skymap(Path(spec["skymap_rows"]), outdir / report["skymap"], rdm)
        notes.append(f"reference reads skycells from {report['skymap']} (SKYMAP_PATH), "
                     "computed by romosaic's tessellation")
    print(json.dumps(report))


def _known_roman_versions(asdf):
    """Roman tag versions and datamodels extension versions asdf knows here."""
    tags, extensions = {}, set()
    for extension in asdf.get_config().extensions:
        uri = extension.extension_uri or ""
        match = _ROMAN_EXTENSION_RE.fullmatch(uri.encode())
        if match:
            extensions.add(match.group(1).decode())
        for tag in extension.tags:
            match = _ROMAN_TAG_RE.fullmatch(tag.tag_uri.encode())
            if match:
                tags.setdefault(match.group(1).decode(), set()).add(match.group(2).decode())
    return tags, extensions


def _asdf_header(path):
    """The YAML header of an ASDF file (up to its ``...`` end marker)."""
    with open(path, "rb") as f:
        chunk = b""
        while True:
            more = f.read(1 << 16)
            chunk += more
            end = chunk.find(_YAML_END)
            if end >= 0:
                return chunk[:end]
            if not more:
                raise SystemExit(f"{path}: no end of the ASDF header found")


def _version_key(version):
    return tuple(int(v) for v in version.split("."))


def _newest_same_length(version, known):
    """The newest known version no newer than ``version`` with as many characters.

    Same length keeps every byte offset in the file valid.
    """
    candidates = [v for v in known
                  if len(v) == len(version) and _version_key(v) <= _version_key(version)]
    return max(candidates, key=_version_key) if candidates else None


def _header_replacements(header, known_tags, known_extensions):
    """``(old, new)`` byte strings turning unknown roman versions into known ones."""
    replacements = set()
    for match in _ROMAN_TAG_RE.finditer(header):
        name, version = match.group(1).decode(), match.group(2).decode()
        known = known_tags.get(name, set())
        if version in known:
            continue
        new = _newest_same_length(version, known)
        if new is None:
            raise SystemExit(f"the reference knows no version of tag {name} to use for "
                             f"{version} (it knows {sorted(known)})")
        replacements.add((match.group(0), match.group(0).replace(version.encode(),
                                                                 new.encode())))
    for match in _ROMAN_EXTENSION_RE.finditer(header):
        version = match.group(1).decode()
        if version in known_extensions:
            continue
        new = _newest_same_length(version, known_extensions)
        if new is None:
            raise SystemExit(f"the reference knows no datamodels extension to use for {version}")
        replacements.add((match.group(0), match.group(0).replace(version.encode(),
                                                                 new.encode())))
    return sorted(replacements)


def _write_patched(source, target, header, replacements):
    """Copy ``source`` to ``target`` with its header rewritten, byte lengths unchanged."""
    new_header = header
    for old, new in replacements:
        new_header = new_header.replace(old, new)
    if len(new_header) != len(header):
        raise SystemExit(f"{source}: rewriting the header changed its length")
    with open(source, "rb") as src, open(target, "wb") as dst:
        src.seek(len(header))
        dst.write(new_header)
        shutil.copyfileobj(src, dst, 1 << 24)


def _write_skymap(rows_path, target, rdm):
    import numpy as np
    from astropy.time import Time

    rows = np.load(rows_path)
    model = rdm.SkycellsRefModel.create_minimal()
    model.meta = {
        "author": "romosaic benchmarks/compare.py",
        "description": "One projection region's skycells, computed by romosaic's "
        "tessellation, for an offline benchmark",
        "instrument": {"name": "WFI"},
        "nxy_skycell": 5000,
        "origin": "STSCI",
        "pedigree": "GROUND",
        "pixel_scale": 0.055,
        "reftype": "SKYCELLS",
        "skycell_border_pixels": 100,
        "telescope": "ROMAN",
        "useafter": Time("2025-01-01T00:00:00"),
    }
    model.projection_regions = rows["projection_regions"]
    model.skycells = rows["skycells"]
    model.save(target)


def child_compare(spec_json):
    """Compare romosaic's mosaic with the reference's over the pixels both cover.

    Prints one JSON line. The two grids need not coincide (the free grids of
    the two pipelines differ by a sub-pixel shift), so romosaic's mosaic is
    first interpolated bilinearly onto the reference's grid. The pixel map
    between the grids is affine (both are TAN projections of the same
    scale); it is fitted to the WCS at a few dozen points and its largest
    residual is reported.
    """
    import asdf
    import numpy as np
    from scipy import ndimage

    spec = json.loads(spec_json)
    with asdf.open(spec["romosaic"], lazy_load=True, memmap=False) as ours, \
            asdf.open(spec["reference"], lazy_load=True, memmap=False) as theirs:
        a, b = ours.tree["roman"], theirs.tree["roman"]
        wcs_a, wcs_b = a["meta"]["wcs"], b["meta"]["wcs"]
        data_a = np.asarray(a["data"], dtype=np.float32)
        data_b = np.asarray(b["data"], dtype=np.float32)
        err_b = np.asarray(b["err"], dtype=np.float32)
        err_a_median = float(np.nanmedian(np.asarray(a["err"], dtype=np.float32)))

    # Reference pixel (x, y) -> romosaic pixel, fitted as an affine map.
    ny, nx = data_b.shape
    yb, xb = (v.ravel() for v in np.meshgrid(np.linspace(0, ny - 1, 9),
                                             np.linspace(0, nx - 1, 9), indexing="ij"))
    ra, dec = wcs_b(xb, yb, with_bounding_box=False)
    xa, ya = wcs_a.backward_transform(ra, dec)
    design = np.column_stack([xb, yb, np.ones_like(xb)])
    coef_x = np.linalg.lstsq(design, xa, rcond=None)[0]
    coef_y = np.linalg.lstsq(design, ya, rcond=None)[0]
    residual = float(np.max(np.hypot(design @ coef_x - xa, design @ coef_y - ya)))
    linear = np.array([[coef_x[0], coef_x[1]], [coef_y[0], coef_y[1]]])
    centre = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    shift = linear @ centre + np.array([coef_x[2], coef_y[2]]) - centre
    # How far scale or rotation differences move a corner beyond the shift.
    corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]]) - centre
    spread = float(np.max(np.hypot(*((linear - np.eye(2)) @ corners.T))))
    result = {
        "grid_offset_px": float(np.hypot(*shift)),
        "grid_offset_xy": [float(v) for v in shift],
        "grid_spread_px": spread,
        "affine_fit_residual_px": residual,
        "romosaic_shape": list(data_a.shape),
        "reference_shape": list(data_b.shape),
    }
    if np.allclose(shift, np.round(shift), atol=1e-3) and spread < 1e-3:
        # Whole-pixel shift: pick pixels, no interpolation.
        result["interpolated"] = False
        order = 0
    else:
        result["interpolated"] = True
        order = 1
    # scipy works in (row, column) order.
    on_b = ndimage.affine_transform(
        data_a, matrix=[[coef_y[1], coef_y[0]], [coef_x[1], coef_x[0]]],
        offset=[coef_y[2], coef_x[2]], output_shape=data_b.shape, order=order,
        mode="constant", cval=np.nan, prefilter=False)

    valid_a = np.isfinite(on_b)
    valid_b = np.isfinite(data_b) & np.isfinite(err_b) & (err_b > 0)
    common = valid_a & valid_b
    n_common = int(common.sum())
    result.update(common_pixels=n_common,
                  romosaic_only_pixels=int(valid_a.sum()) - n_common,
                  reference_only_pixels=int(valid_b.sum()) - n_common)
    if n_common:
        ours_common = on_b[common].astype(np.float64)
        theirs_common = data_b[common].astype(np.float64)
        err_common = err_b[common].astype(np.float64)
        diff = np.abs(ours_common - theirs_common) / err_common
        # Source pixels: 5 sigma above the reference's median (the sky).
        sky_ours, sky_theirs = np.median(ours_common), np.median(theirs_common)
        source = theirs_common > sky_theirs + 5 * err_common
        result.update(
            median_abs_diff_over_err=float(np.median(diff)),
            p99_abs_diff_over_err=float(np.percentile(diff, 99)),
            flux_ratio=float(ours_common.sum() / theirs_common.sum()),
            median_ratio=float(sky_ours / sky_theirs),
            source_pixels=int(source.sum()),
            source_flux_ratio=float((ours_common[source] - sky_ours).sum()
                                    / (theirs_common[source] - sky_theirs).sum())
            if source.any() else None,
            err_median_ratio=err_a_median / float(np.median(err_common)),
        )
    print(json.dumps(result))


_CHILDREN = {
    "_run": (child_run, 1),
    "_prepare_skycell": (child_prepare_skycell, 2),
    "_convert": (child_convert, 1),
    "_compare": (child_compare, 1),
}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in _CHILDREN:
        function, n_args = _CHILDREN[sys.argv[1]]
        function(*sys.argv[2:2 + n_args])
    else:
        main()
