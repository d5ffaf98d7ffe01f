"""PSF-fit photometry on simulated stellar fields: flux pulls and bright-star positions.

Each field is four dithered 1024² exposures with 700 stars and no galaxies
and a 40 DN/s sky (the field of ``tests/test_psf_photometry.py`` for seed 5),
through flux → skymatch → resample onto 0.055″ pixels and the catalog with
its defaults (an empirical PSF). True stars flagged isolated by the
simulator are matched to the catalog within 0.2″; rows with PSF flags other
than 16384 (coverage unlike the PSF stars') or warning bits 1, 2, 4 are
left out. S/N is the true flux over the 0.4″ aperture's error.

Printed per field: the robust σ (1.4826 × MAD) and median of
``(psf_flux − truth) / psf_flux_err`` for S/N 5-50, the catalog's
``sky_noise_over_err`` and ``psf_flux_model_error``, and the distance of
``ra_psf``/``dec_psf`` from the truth for S/N > 100: all bright stars, and
those without flag 16384.

Examples
--------
::

    python benchmarks/accuracy_psf.py --seed 5 --seed 6 --seed 7
"""

import argparse
import logging
import math
import tempfile

import numpy as np
from astropy.stats import mad_std


def run_field(seed):
    """Simulate, coadd and catalog one field; return the printed figures."""
    from romosaic.catalog.psf import COVERAGE_MISMATCH
    from romosaic.simulate import simulate_association
    from romosaic.simulate.checks import catalog_rows_of_isolated_truth
    from romosaic.steps import FluxStep, ResampleStep, SkyMatchStep
    from romosaic.steps.source_catalog_step import SourceCatalogStep

    with tempfile.TemporaryDirectory() as out:
        sim = simulate_association(out, n_exposures=4, size=1024, seed=seed,
                                   cosmic_ray_rate=0.0, n_stars=700, n_galaxies=0,
                                   sky_levels=[40.0] * 4)
        mosaic = ResampleStep.call(SkyMatchStep.call(FluxStep.call(str(sim.asn_path))),
                                   pixel_scale_ratio=0.5)
    catalog, _ = SourceCatalogStep.call(mosaic)
    rows, truth = catalog_rows_of_isolated_truth(
        catalog.source_catalog, sim.sources, mosaic.meta.wcs,
        pixel_scale_arcsec=mosaic.meta.wcsinfo.pixel_scale * 3600)
    flags = np.asarray(rows["psf_flags"])
    usable = ((flags & ~COVERAGE_MISMATCH) == 0) & ((np.asarray(rows["warning_flags"]) & 7) == 0)
    rows, truth, flags = rows[usable], truth[usable], flags[usable]
    flux = np.asarray(truth["flux_njy"])
    snr = flux / np.asarray(rows["aper04_flux_err"], dtype=float)
    faint = (snr > 5) & (snr < 50)
    pull = ((np.asarray(rows["psf_flux"]) - flux) / np.asarray(rows["psf_flux_err"]))[faint]
    dec0 = math.radians(float(np.median(truth["dec"])))
    offset = np.hypot((np.asarray(rows["ra_psf"]) - np.asarray(truth["ra"])) * math.cos(dec0),
                      np.asarray(rows["dec_psf"]) - np.asarray(truth["dec"])) * 3.6e6
    bright = snr > 100
    clean = bright & ((flags & COVERAGE_MISMATCH) == 0)
    return {
        "faint": (mad_std(pull), float(np.median(pull)), int(faint.sum())),
        "sky_noise_over_err": catalog.source_catalog.meta.get("sky_noise_over_err"),
        "model_error": catalog.source_catalog.meta.get("psf_flux_model_error"),
        "bright": (np.median(offset[bright]), np.percentile(offset[bright], 90),
                   offset[bright].max(), int(bright.sum())),
        "clean": (np.median(offset[clean]), np.percentile(offset[clean], 90),
                  offset[clean].max(), int(clean.sum())),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, action="append", help="field seed (repeatable)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    for seed in args.seed or [5, 6, 7]:
        r = run_field(seed)
        sigma, median, n = r["faint"]
        print(f"seed {seed}: faint pulls robust sigma {sigma:.3f}, median {median:+.2f} ({n} "
              f"stars); sky_noise_over_err {r['sky_noise_over_err']:.3f}; "
              f"psf_flux_model_error {r['model_error']:.4f}")
        for name in ("bright", "clean"):
            med, p90, top, k = r[name]
            label = "all bright" if name == "bright" else "without flag 16384"
            print(f"    positions, {label} ({k}): median {med:.2f}, 90% {p90:.2f}, "
                  f"largest {top:.2f} mas")


if __name__ == "__main__":
    main()
