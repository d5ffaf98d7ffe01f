"""Detection depth at two output scales: completeness, spurious entries, 50% magnitude.

Each scene is simulated (`romosaic.simulate.make_image_models`: 4 dithered
exposures of 2 detectors of 768², every detector with its own sky, stars
from 16 to 27 mag), drizzled through flux → skymatch → outlier_detection →
resample onto 0.11″ and 0.055″ pixels, and the mosaics are cached under
``--data-dir``. The source_catalog step then runs in a child process of the
chosen interpreter (``--python``: another checkout's, to measure its code on
the same mosaics) with its defaults unless options are given, and the
catalog is compared with the truth:

* **completeness** of isolated stars (no other source within 2″) with
  expected S/N ≥ 10 in a 0.3″-diameter aperture: the expected flux in the
  aperture is the true flux times the encircled energy measured on the
  mosaic's bright isolated stars, and its noise is ``sqrt(Σ err²)`` in the
  aperture times the scatter of empty-aperture sums over that (which holds
  the drizzle's noise correlation);
* **spurious** entries as `accuracy_catalog.evaluate` counts them (no true
  star within 0.1″, no galaxy within its half-light radius, not a blend of
  several true sources); ``strict`` counts blends too; ``bright`` is the
  number within 3″ of a star brighter than 19 mag (rings and spikes);
* the **50%-completeness magnitude** of isolated stars, interpolated between
  0.25-mag bins.

Scenes: ``gaussian`` (the simulator's 0.15″ Gaussian PSF) and ``airy``
(Roman's obscured-aperture diffraction pattern with rings and six spikes,
`romosaic.simulate.psf`).

Examples
--------
::

    python benchmarks/accuracy_depth.py                               # this checkout
    python benchmarks/accuracy_depth.py --python ../main/.venv/bin/python
    python benchmarks/accuracy_depth.py --scene airy --catalog npixels=6
"""

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT_DATA_DIR = HERE / "_data" / "depth"
SCALES = (0.11, 0.055)
SCENE_OPTIONS = {"n_exposures": 4, "n_detectors": 2, "size": 768, "n_stars": 700,
                 "star_mag_range": (16.0, 28.5)}
SCENES = {"gaussian": {"psf": "gaussian", "seed": 31}, "airy": {"psf": "airy", "seed": 32}}
#: Expected S/N threshold and the aperture's radius (arcsec) it is measured in.
MIN_SNR = 10.0
SNR_RADIUS = 0.15
MATCH_RADIUS = 0.1
MAG_STEP = 0.25


def build(scene, scale, data_dir):
    """Simulate a scene, coadd it at ``scale`` and cache the mosaic and truth."""
    from accuracy_catalog import cosmic_ray_positions, make_mosaic, simulate_scene

    stem = data_dir / f"{scene}_{scale:g}"
    mosaic_path = stem.with_name(stem.name + "_coadd.asdf")
    truth_path = stem.with_name(stem.name + "_truth.ecsv")
    if mosaic_path.is_file() and truth_path.is_file():
        return mosaic_path, truth_path
    data_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    options = {**SCENE_OPTIONS, **SCENES[scene]}
    models, sources, cosmic_rays = simulate_scene(options)
    cr_ra, cr_dec = cosmic_ray_positions(models, cosmic_rays)
    mosaic = make_mosaic(models, pixel_scale_ratio=scale / 0.11)
    mosaic.meta.filename = mosaic_path.name
    mosaic.save(mosaic_path)
    np.save(stem.with_name(stem.name + "_cosmic_rays.npy"), np.stack([cr_ra, cr_dec]))
    sources.write(truth_path, overwrite=True)
    print(f"[{scene} {scale:g}\"] built in {time.perf_counter() - start:.0f} s", flush=True)
    return mosaic_path, truth_path


def run_catalog(mosaic_path, out_path, options):
    """Child side: run the step on a mosaic; save the table and the segmentation."""
    import roman_datamodels.datamodels as rdm

    from romosaic.steps import SourceCatalogStep

    logging.disable(logging.WARNING)
    with rdm.open(mosaic_path) as mosaic:
        start = time.perf_counter()
        catalog, segmentation = SourceCatalogStep.call(mosaic, **options)
        seconds = time.perf_counter() - start
    table = catalog.source_catalog
    keep = ["label", "x_centroid", "y_centroid", "ra_centroid", "dec_centroid",
            "segment_area", "segment_flux", "segment_flux_err", "warning_flags"]
    table[keep].write(out_path, overwrite=True, format="ascii.ecsv")
    np.save(str(out_path) + ".segm.npy", np.asarray(segmentation.data))
    print(json.dumps({"seconds": seconds,
                      "notes": [str(n) for n in table.meta.get("notes", [])]}))


def expected_snr(mosaic, sources, radius_arcsec):
    """Expected S/N of every truth source in a circular aperture, and the EE used."""
    from photutils.aperture import CircularAperture, aperture_photometry

    scale = float(mosaic.meta.wcsinfo.pixel_scale) * 3600.0
    radius = radius_arcsec / scale
    data = np.nan_to_num(np.asarray(mosaic.data, float))
    err = np.nan_to_num(np.asarray(mosaic.err, float))
    weight = np.asarray(mosaic.weight)
    ny, nx = data.shape
    x, y = mosaic.meta.wcs.invert(np.asarray(sources["ra"]), np.asarray(sources["dec"]))
    x, y = np.nan_to_num(x, nan=-1e6), np.nan_to_num(y, nan=-1e6)
    inside = (x > radius + 1) & (x < nx - radius - 2) & (y > radius + 1) & (y < ny - radius - 2)
    positions = np.column_stack([x, y])
    pixel_sr = (scale / 206264.806) ** 2
    flux = np.full(len(sources), np.nan)
    formal = np.full(len(sources), np.nan)
    aperture = CircularAperture(positions[inside], radius)
    flux[inside] = np.asarray(aperture_photometry(data, aperture)["aperture_sum"]) * pixel_sr * 1e15
    formal[inside] = np.sqrt(np.asarray(aperture_photometry(err**2, aperture)["aperture_sum"])) \
        * pixel_sr * 1e15
    # The local sky: the median of the mosaic, which has not been sky-subtracted.
    sky = float(np.median(data[weight > 0]))
    area = np.pi * radius**2
    flux -= sky * area * pixel_sr * 1e15
    truth = np.asarray(sources["flux_njy"], float)
    mags = np.asarray(sources["mag_ab"], float)
    star = np.asarray(sources["kind"]) == "star"
    isolated = np.asarray(sources["isolated"], bool)
    bright = inside & star & isolated & (mags > 18.0) & (mags < 21.0)
    ee = float(np.median(flux[bright] / truth[bright]))
    # Empty apertures: random places at least 2" from every true source.
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    candidates = np.column_stack([rng.uniform(radius + 2, nx - radius - 3, 20000),
                                  rng.uniform(radius + 2, ny - radius - 3, 20000)])
    tree = cKDTree(positions * scale)
    distance, _ = tree.query(candidates * scale)
    ok = distance > 2.0
    ok &= weight[candidates[:, 1].round().astype(int), candidates[:, 0].round().astype(int)] > 0
    empty = CircularAperture(candidates[ok][:2000], radius)
    sums = np.asarray(aperture_photometry(data, empty)["aperture_sum"]) - sky * area
    noise = np.sqrt(np.asarray(aperture_photometry(err**2, empty)["aperture_sum"]))
    good = noise > 0
    z = sums[good] / noise[good]
    factor = 1.4826 * float(np.median(np.abs(z - np.median(z))))
    snr = truth * ee / (formal * factor)
    return snr, ee, factor


def fifty_percent_magnitude(mags, found, lo=20.0, hi=28.5):
    """Magnitude at which the completeness of the given sources falls through 50%."""
    edges = np.arange(lo, hi + MAG_STEP / 2, MAG_STEP)
    centres, fractions = [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        sel = (mags >= a) & (mags < b)
        if sel.sum() >= 3:
            centres.append(0.5 * (a + b))
            fractions.append(found[sel].mean())
    for i in range(1, len(fractions)):
        if fractions[i] < 0.5 <= fractions[i - 1]:
            f0, f1 = fractions[i - 1], fractions[i]
            return centres[i - 1] + (f0 - 0.5) / (f0 - f1) * (centres[i] - centres[i - 1])
    return float("nan")


def evaluate_scene(scene, scale, mosaic_path, truth_path, table_path):
    """Figures of one catalog against the truth."""
    import roman_datamodels.datamodels as rdm
    from accuracy_catalog import evaluate
    from astropy.table import Table

    sources = Table.read(truth_path)
    table = Table.read(table_path)
    segmentation = np.load(str(table_path) + ".segm.npy")
    cr = np.load(str(mosaic_path).replace("_coadd.asdf", "_cosmic_rays.npy"))
    with rdm.open(mosaic_path) as mosaic:
        result = evaluate(table, mosaic, sources, cr[0], cr[1], segmentation=segmentation)
        snr, ee, factor = expected_snr(mosaic, sources, SNR_RADIUS)
        found = _found(table, sources)
    mags = np.asarray(sources["mag_ab"], float)
    star = np.asarray(sources["kind"]) == "star"
    isolated = np.asarray(sources["isolated"], bool) & star & np.isfinite(snr)
    target = isolated & (snr >= MIN_SNR)
    n = result["n_entries"]
    spurious = result["spurious"]
    return {
        "scene": scene, "scale": scale, "entries": n,
        "complete": int(found[target].sum()), "targets": int(target.sum()),
        "spurious": int(spurious.sum()), "strict": int(result["strict_spurious"].sum()),
        "bright": int(np.sum(spurious & (result["cause"] == "bright star"))),
        "causes": {c: int(np.sum(spurious & (result["cause"] == c)))
                   for c in set(result["cause"][spurious])},
        "m50": fifty_percent_magnitude(mags[isolated], found[isolated]),
        "snr10_mag": float(np.interp(MIN_SNR, snr[isolated][np.argsort(snr[isolated])],
                                     mags[isolated][np.argsort(snr[isolated])])),
        "ee": ee, "noise_factor": factor,
    }


def _found(table, sources):
    """Whether some catalog entry lies within `MATCH_RADIUS` of each true source."""
    from scipy.spatial import cKDTree

    if len(table) == 0:
        return np.zeros(len(sources), bool)
    dec0 = float(np.mean(sources["dec"]))
    cos = np.cos(np.radians(dec0))

    def xy(ra, dec):
        return np.column_stack([np.asarray(ra) * cos * 3600.0, np.asarray(dec) * 3600.0])

    tree = cKDTree(xy(table["ra_centroid"], table["dec_centroid"]))
    distance, _ = tree.query(xy(sources["ra"], sources["dec"]))
    return distance <= MATCH_RADIUS


def _parse_options(items):
    options = {}
    for item in items or []:
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value not in ("",) else None
    return options


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_catalog":
        run_catalog(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", action="append", choices=sorted(SCENES))
    parser.add_argument("--scale", action="append", type=float, choices=SCALES)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter whose romosaic runs the catalog step")
    parser.add_argument("--catalog", action="append", metavar="NAME=JSON",
                        help="a source_catalog option, e.g. npixels=6 (repeatable)")
    parser.add_argument("--label", default="", help="tag of the printed lines")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    options = _parse_options(args.catalog)
    for scene in args.scene or list(SCENES):
        for scale in args.scale or SCALES:
            mosaic_path, truth_path = build(scene, scale, args.data_dir)
            out = args.data_dir / f"{scene}_{scale:g}_cat.ecsv"
            done = subprocess.run([args.python, __file__, "_catalog", str(mosaic_path),
                                   str(out), json.dumps(options)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"catalog failed:\n{done.stderr[-3000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            r = evaluate_scene(scene, scale, mosaic_path, truth_path, out)
            frac = r["spurious"] / r["entries"] if r["entries"] else 0.0
            strict = r["strict"] / r["entries"] if r["entries"] else 0.0
            print(f"{args.label}[{scene} {scale:g}\"] completeness (isolated, S/N>=10 in "
                  f"0.3\" diam.) {r['complete']}/{r['targets']} = "
                  f"{100 * r['complete'] / max(r['targets'], 1):.1f} %; spurious "
                  f"{r['spurious']}/{r['entries']} = {100 * frac:.2f} % (near bright stars "
                  f"{r['bright']}; strict {100 * strict:.2f} %); m50 = {r['m50']:.2f}; "
                  f"S/N=10 at {r['snr10_mag']:.2f} mag; {run['seconds']:.1f} s", flush=True)
            if r["causes"]:
                print(f"    causes {r['causes']}; EE(0.15\") {r['ee']:.3f}, "
                      f"noise factor {r['noise_factor']:.2f}")
            if run["notes"]:
                print(f"    notes: {run['notes']}")


if __name__ == "__main__":
    main()
