"""Forced photometry on a simulated two-band scene: is every source measured, are the errors right?

A scene is simulated in two filters through the same pointings
(`romosaic.simulate.simulate_association` with ``second_filter``: the same
sources with random colours, each band with its own noise and cosmic rays).
Both associations run through ``roman_mos`` onto the same free grid; the
first band's catalog and segmentation map are made as usual, and the second
band is measured in the first band's segments
(``source_catalog --forced_segmentation``). Printed:

* the number of detection-band sources and of forced rows, and the
  fraction of rows with a finite ``forced_aper04_flux`` and
  ``forced_kron_flux``;
* for isolated stars (no other true source within 1″) matched within 0.1″,
  with no warning flag other than NEIGHBOUR (a segment within 1.6″) and
  SINGLE_INPUT, and a true S/N of 5-100 in the 0.4″ aperture: the robust
  standard deviation (1.4826 × MAD) and the median of
  ``(forced_aper04_flux − true flux) / forced_aper04_flux_err``. The stars'
  PSF is the simulator's 0.15″ Gaussian, so a 0.4″ aperture holds all of
  their light and the true flux is the truth table's. The same figures for
  the detection band's own catalog (``aper04_flux``) are printed for
  comparison;
* the forced catalog's ``sky_noise_over_err`` (the sky's pixel scatter
  over its ``err``; see ``romosaic.catalog.noise.sky_noise_ratio``).

Pulls are pooled over the seeds.

Examples
--------
::

    python benchmarks/accuracy_forced.py                     # 4 scenes, 4 exposures of 1024²
    python benchmarks/accuracy_forced.py --pixel-scale 0.055 --size 512
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

#: Matching radius of a catalog entry and a true star, arcsec.
MATCH_RADIUS = 0.1
#: A star without another within this distance (arcsec) is isolated: the
#: 0.15" Gaussian PSF puts none of a neighbour's light into a 0.4" aperture.
ISOLATION = 1.0


def _tangent(ra, dec, ra0, dec0):
    """Offsets in arcsec on a local tangent plane (enough over a few arcminutes)."""
    x = (np.asarray(ra) - ra0) * np.cos(np.radians(dec0)) * 3600.0
    y = (np.asarray(dec) - dec0) * 3600.0
    return np.column_stack([x, y])


def evaluate(catalog, truth, band, prefix="forced_"):
    """Fraction measured and the pulls of isolated faint-to-moderate stars (a dict)."""
    flux = np.asarray(catalog[f"{prefix}aper04_flux"], dtype=float)
    error = np.asarray(catalog[f"{prefix}aper04_flux_err"], dtype=float)
    flags = np.asarray(catalog[f"{prefix}warning_flags"])
    ra0, dec0 = float(np.mean(truth["ra"])), float(np.mean(truth["dec"]))
    distance, index = cKDTree(_tangent(truth["ra"], truth["dec"], ra0, dec0)).query(
        _tangent(catalog["ra_centroid"], catalog["dec_centroid"], ra0, dec0))
    matched = truth[index]
    true_flux = np.asarray(matched[f"flux_njy_{band}"], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = true_flux / error
    use = ((distance < MATCH_RADIUS) & (matched["kind"] == "star")
           & (np.asarray(matched["nn_distance"]) > ISOLATION)
           & ((flags & ~(16 | 32)) == 0) & (snr >= 5) & (snr <= 100))
    pull = (flux[use] - true_flux[use]) / error[use]
    median = float(np.median(pull)) if pull.size else np.nan
    return {
        "rows": len(catalog),
        "measured_aper04": float(np.mean(np.isfinite(flux))),
        "measured_kron": float(np.mean(np.isfinite(np.asarray(catalog[f"{prefix}kron_flux"])))),
        "no_coverage": int(np.sum((flags & 64) != 0)),
        "n_pull": int(pull.size),
        "pulls": pull,
        "pull_sigma": float(1.4826 * np.median(np.abs(pull - median))) if pull.size else np.nan,
        "pull_median": median,
    }


def run(workdir, *, size, n_exposures, seed, pixel_scale, bands):
    """Simulate, mosaic both bands, force the second on the first; the evaluation dict."""
    from romosaic.pipeline import MosaicPipeline
    from romosaic.simulate import simulate_association
    from romosaic.steps import SourceCatalogStep

    sim = simulate_association(workdir, n_exposures=n_exposures, size=size, seed=seed,
                               filter_name=bands[0], second_filter=bands[1])
    steps = {"resample": {"pixel_scale": pixel_scale}} if pixel_scale else {}
    first, second = sim, sim.second_band
    start = time.perf_counter()
    MosaicPipeline.call(str(first.asn_path), save_results=True, output_dir=str(workdir),
                        resample_on_skycell=False,
                        steps={**steps, "source_catalog": {"fit_psf": False}})
    MosaicPipeline.call(str(second.asn_path), save_results=True, output_dir=str(workdir),
                        resample_on_skycell=False,
                        steps={**steps, "source_catalog": {"skip": True}})
    mosaics = time.perf_counter() - start
    start = time.perf_counter()
    catalog, _ = SourceCatalogStep.call(
        str(Path(workdir) / f"{second.product_name}_coadd.asdf"),
        forced_segmentation=str(Path(workdir) / f"{first.product_name}_segm.asdf"))
    forced = time.perf_counter() - start
    detection = Table.read(Path(workdir) / f"{first.product_name}_cat.parquet")
    result = evaluate(catalog.source_catalog, second.sources, bands[1].lower())
    own = evaluate(detection, first.sources, bands[0].lower(), prefix="")
    result.update({"detection_sources": len(detection), "mosaics_s": mosaics,
                   "forced_s": forced, "detection_pulls": own["pulls"],
                   "sky_noise_over_err": catalog.source_catalog.meta.get("sky_noise_over_err",
                                                                         np.nan)})
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="detector pixels on a side")
    parser.add_argument("--n-exposures", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4],
                        help="one scene per seed; the pulls are pooled")
    parser.add_argument("--pixel-scale", type=float, default=None,
                        help="output pixel size, arcsec (default: the inputs')")
    parser.add_argument("--bands", nargs=2, default=("F158", "F213"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pulls, own_pulls = [], []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as workdir:
            r = run(workdir, size=args.size, n_exposures=args.n_exposures, seed=seed,
                    pixel_scale=args.pixel_scale, bands=args.bands)
        pulls.append(r["pulls"])
        own_pulls.append(r["detection_pulls"])
        print(f"seed {seed}: detection-band sources {r['detection_sources']}, forced rows "
              f"{r['rows']}, with forced_aper04_flux {r['measured_aper04']:.3f}, with "
              f"forced_kron_flux {r['measured_kron']:.3f}, flagged without data "
              f"{r['no_coverage']}; pulls of {r['n_pull']} stars: robust sigma "
              f"{r['pull_sigma']:.3f}, median {r['pull_median']:+.3f}; sky_noise_over_err "
              f"{r['sky_noise_over_err']:.3f}; time: both mosaics "
              f"{r['mosaics_s']:.1f} s, forced catalog {r['forced_s']:.1f} s")
    pulls, own_pulls = np.concatenate(pulls), np.concatenate(own_pulls)
    print(f"all seeds: pulls of {pulls.size} isolated stars (S/N 5-100, 0.4\" aperture) in "
          f"the forced band: robust sigma {_robust_sigma(pulls):.3f}, median "
          f"{np.median(pulls):+.3f}")
    print(f"the same in the detection band's own catalog ({own_pulls.size} stars): robust "
          f"sigma {_robust_sigma(own_pulls):.3f}, median {np.median(own_pulls):+.3f}")


def _robust_sigma(values):
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


if __name__ == "__main__":
    main()
