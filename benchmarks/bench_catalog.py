"""Benchmark the ``source_catalog`` step on full-size mosaics.

Two cases by default:

* ``4088``: 4088 × 4088 pixels of 0.11″ (one WFI detector at its native scale);
* ``5000``: 5000 × 5000 pixels of 0.055″ (one skycell).

Each mosaic is synthetic: a TAN grid, stars and galaxies at the simulator's
default densities (55 and 37 per arcmin²) rendered with the simulator's
Gaussian PSF and Sersic profiles, the simulator's sky, Gaussian noise, a
strip of quarter weight (a dither gap: twice the noise, one input instead
of four in the context image) and an uncovered corner (no data, zero
weight). It is built once in a child process and cached under
``--data-dir`` with its truth table.

The step then runs in a fresh process that loads the mosaic first, so the
reported peak resident memory (``ru_maxrss``) is that of the mosaic plus the
step, and "step increment" is the peak minus the memory after loading.
Times exclude the interpreter start-up and imports. A short accuracy summary
against the injected truth is printed too.

Examples
--------
::

    python benchmarks/bench_catalog.py                  # both cases
    python benchmarks/bench_catalog.py --case 5000 --json results.json
    python benchmarks/bench_catalog.py --case 5000 --profile
    python benchmarks/bench_catalog.py --case 5000 --fit-psf false   # without PSF photometry
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = HERE / "_data" / "catalog"

#: name → (pixels on a side, pixel scale in arcsec)
CASES = {"4088": (4088, 0.11), "5000": (5000, 0.055)}
SEED = 2024
#: MJy/sr per DN/s in F158 and the sky and noise of a 4-exposure stack (simulator values).
CONVERSION = 0.40
SKY_DN_S = 0.8
EXPOSURE_TIME = 139.8 * 4
GAIN = 2.0
READ_NOISE_E = 5.0
PSF_FWHM = 0.15


# --------------------------------------------------------------------------
# Child side: building a mosaic, running the step.
# --------------------------------------------------------------------------


def build_mosaic(size, scale, path, truth_path):
    """Write a synthetic MosaicModel and its truth table."""
    import numpy as np
    import roman_datamodels.datamodels as rdm
    from astropy.table import Table

    from romosaic.catalog import local_geometry
    from romosaic.simulate import render
    from romosaic.simulate.instrument import abmag_to_njy
    from romosaic.wcs_utils import affine_tan_wcs, cd_from_orientation

    rng = np.random.default_rng(SEED)
    shape = (size, size)
    crpix = ((size - 1) / 2.0, (size - 1) / 2.0)
    wcs = affine_tan_wcs(crval=(80.0, -30.0), crpix=crpix,
                         cd=cd_from_orientation(scale / 3600.0, 0.0), shape=shape)
    area_arcmin2 = (size * scale / 60.0) ** 2
    n_stars, n_galaxies = int(55 * area_arcmin2), int(37 * area_arcmin2)
    n = n_stars + n_galaxies
    x = rng.uniform(-0.5, size - 0.5, n)
    y = rng.uniform(-0.5, size - 0.5, n)
    is_star = np.arange(n) < n_stars
    top = 10.0 ** (0.25 * (25.0 - 17.0)) - 1.0
    mags = 17.0 + np.log10(1.0 + rng.uniform(0, 1, n) * top) / 0.25
    flux_njy = abmag_to_njy(mags)
    jac = local_geometry(wcs, x, y).cd

    image = np.zeros(shape)
    render.render_stars(image, x[is_star], y[is_star], flux_njy[is_star] * 1e-15,
                        jac[is_star], PSF_FWHM)
    g = ~is_star
    n_gal = int(g.sum())
    r_eff = np.clip(10.0 ** (np.log10(0.55) - 0.1 * (mags[g] - 20.0)
                             + 0.15 * rng.standard_normal(n_gal)), 0.08, 1.2)
    sersic = np.where(rng.uniform(0, 1, n_gal) < 0.75, rng.uniform(0.7, 1.6, n_gal),
                      rng.uniform(2.0, 4.0, n_gal))
    render.render_galaxies(image, x[g], y[g], flux_njy[g] * 1e-15, jac[g], PSF_FWHM, sersic,
                           r_eff, rng.uniform(0.3, 1.0, n_gal), rng.uniform(0, 180, n_gal),
                           5.0 * r_eff)

    # Noise of a 4-exposure stack per native 0.11" pixel, scaled to this pixel size.
    sky = SKY_DN_S * CONVERSION
    sky_e = SKY_DN_S * EXPOSURE_TIME * GAIN
    sigma_native = np.sqrt(sky_e + 4 * READ_NOISE_E**2) / (EXPOSURE_TIME * GAIN) * CONVERSION
    weight = np.ones(shape, np.float32)
    weight[:, size // 3: size // 3 + size // 20] = 0.25
    sigma = sigma_native * (0.11 / scale) / np.sqrt(weight)
    data = (sky + image + rng.standard_normal(shape) * sigma).astype(np.float32)
    err = np.sqrt(sigma**2 + np.clip(image, 0, None) * sigma_native**2 / sky).astype(np.float32)
    yy, xx = np.ogrid[:size, :size]
    uncovered = xx + yy < size // 4
    data[uncovered] = np.nan
    weight[uncovered] = 0.0

    model = rdm.MosaicModel.create_fake_data(shape=shape)
    model.data = data
    model.err = err
    model.weight = weight
    # Four inputs everywhere, one in the dither gap, none in the uncovered corner.
    context = np.full((1, *shape), 0b1111, np.uint32)
    context[0][weight == 0.25] = 0b0001
    context[0][uncovered] = 0
    model.context = context
    for name in ("var_poisson", "var_rnoise"):
        setattr(model, name, (err.astype(np.float32) ** 2) / 2)
    model.meta.wcs = wcs
    model.meta.wcsinfo.pixel_scale = scale / 3600.0
    model.meta.instrument.optical_element = "F158"
    model.meta.filename = Path(path).name
    model.save(path)
    Table({"x": x, "y": y, "kind": np.where(is_star, "star", "galaxy"), "mag_ab": mags,
           "flux_njy": flux_njy}).write(truth_path, overwrite=True)


def run_step(path, truth_path, profile, fit_psf=None):
    """Run the step on a saved mosaic; print a JSON line of measurements."""
    import resource

    t0 = time.perf_counter()
    import numpy as np
    import roman_datamodels.datamodels as rdm
    from astropy.table import Table
    from scipy.spatial import cKDTree

    from romosaic.steps.source_catalog_step import SourceCatalogStep

    imports = time.perf_counter() - t0
    mosaic = rdm.open(path, lazy_load=False)
    loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step = SourceCatalogStep()
    if fit_psf is not None:
        step.fit_psf = fit_psf
    start = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    catalog, segmentation = step.run(mosaic)
    seconds = time.perf_counter() - start
    if profile:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    table = catalog.source_catalog
    truth = Table.read(truth_path)
    ok = np.asarray(table["warning_flags"]) == 0
    tree = cKDTree(np.column_stack([truth["x"], truth["y"]]))
    distance, index = tree.query(np.column_stack([table["x_centroid"], table["y_centroid"]]))
    scale = float(mosaic.meta.wcsinfo.pixel_scale) * 3600
    matched = distance * scale <= 0.2
    star = np.asarray(truth["kind"])[index] == "star"
    snr = np.asarray(table["kron_flux"]) / np.asarray(table["kron_flux_err"])
    ratio = np.asarray(table["kron_flux"]) / np.asarray(truth["flux_njy"])[index]
    bright_stars = matched & ok & star & (snr > 20)
    bright_galaxies = matched & ok & ~star & (snr > 20)
    print(json.dumps({
        "shape": list(mosaic.data.shape),
        "sources": len(table),
        "truth_sources": len(truth),
        "seconds": seconds,
        "imports_seconds": imports,
        "loaded_mb": loaded_mb,
        "peak_mb": peak_mb,
        "unmatched_fraction": float(np.mean(~matched)) if len(table) else 0.0,
        "kron_over_truth_stars": float(np.median(ratio[bright_stars])),
        "kron_over_truth_galaxies": float(np.median(ratio[bright_galaxies])),
        "stellar_locus": table.meta.get("stellar_locus_concentration"),
        "segmentation_labels": int(segmentation.data.max()),
        "fit_psf": bool(step.fit_psf),
    }))


# --------------------------------------------------------------------------
# Parent side.
# --------------------------------------------------------------------------


def ensure_mosaic(name, data_dir, python):
    size, scale = CASES[name]
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"bench_{name}_coadd.asdf"
    truth = data_dir / f"bench_{name}_truth.ecsv"
    if not (path.is_file() and truth.is_file()):
        print(f"[{name}] building a {size}x{size} mosaic of {scale}\" pixels ...", flush=True)
        start = time.perf_counter()
        subprocess.run([python, __file__, "_build", str(size), str(scale), str(path),
                        str(truth)], check=True)
        print(f"[{name}] built in {time.perf_counter() - start:.1f} s", flush=True)
    return path, truth


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_build":
        build_mosaic(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        run_step(sys.argv[2], sys.argv[3], sys.argv[4] == "1",
                 None if sys.argv[5] == "default" else sys.argv[5] == "true")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES),
                        help="case to run (repeatable; default: all)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--fit-psf", choices=("true", "false"),
                        help="set the step's fit_psf (default: the step's default)")
    args = parser.parse_args()
    python = sys.executable
    results = {}
    for name in args.case or sorted(CASES):
        path, truth = ensure_mosaic(name, args.data_dir, python)
        with tempfile.TemporaryDirectory():
            done = subprocess.run([python, __file__, "_run", str(path), str(truth),
                                   "1" if args.profile else "0", args.fit_psf or "default"],
                                  capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"[{name}] failed:\n{done.stderr[-4000:]}")
        if args.profile:
            print(done.stderr[-6000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results[name] = result
        ny, nx = result["shape"]
        print(f"[{name}] {nx}x{ny}: {result['sources']} sources "
              f"({result['truth_sources']} injected) in {result['seconds']:.1f} s; "
              f"peak RSS {result['peak_mb']:.0f} MB (mosaic loaded: {result['loaded_mb']:.0f} MB,"
              f" step increment {result['peak_mb'] - result['loaded_mb']:.0f} MB); "
              f"unmatched {100 * result['unmatched_fraction']:.2f}%, Kron/truth stars "
              f"{result['kron_over_truth_stars']:.4f}, galaxies "
              f"{result['kron_over_truth_galaxies']:.4f}; fit_psf {result['fit_psf']}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
