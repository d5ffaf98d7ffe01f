"""PSF-fit photometry on simulated stellar fields: flux pulls and bright-star positions.

Each field is four dithered exposures (1024² by default, ``--size``) with
700 stars per 1024² of detector (``--n-stars`` for another number) and no
galaxies and a 40 DN/s sky (the field of ``tests/test_psf_photometry.py``
for seed 5), through flux → skymatch → resample onto 0.055″ pixels and the
catalog with its defaults (an empirical PSF). True stars flagged isolated by
the simulator are matched to the catalog within 0.2″; rows with PSF flags
other than 16384 (coverage unlike the PSF stars') or warning bits 1, 2, 4
are left out. S/N is the true flux over the 0.4″ aperture's error.

Printed per field: the robust σ (1.4826 × MAD) and median of
``(psf_flux − truth) / psf_flux_err`` for S/N 5-50, with the bootstrap
uncertainty of that σ (the standard deviation of the robust σ over
``--bootstrap`` resamplings of the field's stars), the catalog's
``sky_noise_over_err`` and ``psf_flux_model_error``; for S/N > 100, the
robust σ of the same pulls, the median ``psf_flux`` over the truth, and the
distance of ``ra_psf``/``dec_psf`` from the truth: all bright stars, and
those without flag 16384.

With more than one field, also: the pooled robust σ and its bootstrap
uncertainty, and the χ² of the fields' σ about the pooled one,
``Σ ((σ_i − σ_pooled) / δσ_i)²`` with ``δσ_i`` each field's bootstrap
uncertainty, on ``n − 1`` degrees of freedom, with the probability of a χ²
at least as large if the fields differed only by the sampling of their
stars; and the pooled robust σ with its uncertainty by the fewest input
images anywhere in the stars' fit boxes. ``--save`` writes every faint
star's figures (pull, S/N, position, coverage, distance to the nearest true
source, error terms) to a table.

Examples
--------
::

    python benchmarks/accuracy_psf.py --seed 5 --seed 6 --seed 7
    python benchmarks/accuracy_psf.py --size 2048 --seed 5 --seed 6   # σ to about ±0.04
"""

import argparse
import logging
import math
import tempfile

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table, vstack

#: Stars per field of four 1024² exposures (so that many are isolated).
STARS_PER_1024 = 700


def run_field(seed, *, size=1024, n_stars=None):
    """Simulate, coadd and catalog one field; return the printed figures.

    The ``"stars"`` entry is a table of the faint (S/N 5-50) stars used.
    """
    from romosaic.catalog import coverage_from_context
    from romosaic.catalog.psf import COVERAGE_MISMATCH, box_coverage
    from romosaic.simulate import simulate_association
    from romosaic.simulate.checks import catalog_rows_of_isolated_truth
    from romosaic.steps import FluxStep, ResampleStep, SkyMatchStep
    from romosaic.steps.source_catalog_step import SourceCatalogStep

    if n_stars is None:
        n_stars = int(round(STARS_PER_1024 * (size / 1024) ** 2))
    with tempfile.TemporaryDirectory() as out:
        sim = simulate_association(out, n_exposures=4, size=size, seed=seed,
                                   cosmic_ray_rate=0.0, n_stars=n_stars, n_galaxies=0,
                                   sky_levels=[40.0] * 4)
        mosaic = ResampleStep.call(SkyMatchStep.call(FluxStep.call(str(sim.asn_path))),
                                   pixel_scale_ratio=0.5)
    catalog, _ = SourceCatalogStep.call(mosaic)
    meta = catalog.source_catalog.meta
    rows, truth = catalog_rows_of_isolated_truth(
        catalog.source_catalog, sim.sources, mosaic.meta.wcs,
        pixel_scale_arcsec=mosaic.meta.wcsinfo.pixel_scale * 3600)
    flags = np.asarray(rows["psf_flags"])
    usable = ((flags & ~COVERAGE_MISMATCH) == 0) & ((np.asarray(rows["warning_flags"]) & 7) == 0)
    rows, truth, flags = rows[usable], truth[usable], flags[usable]
    flux = np.asarray(truth["flux_njy"])
    snr = flux / np.asarray(rows["aper04_flux_err"], dtype=float)
    faint = (snr > 5) & (snr < 50)
    psf_flux = np.asarray(rows["psf_flux"], dtype=float)
    psf_err = np.asarray(rows["psf_flux_err"], dtype=float)
    pull = ((psf_flux - flux) / psf_err)[faint]
    model_error = meta.get("psf_flux_model_error") or 0.0
    x, y = np.asarray(rows["x_psf"], dtype=float), np.asarray(rows["y_psf"], dtype=float)
    coverage = coverage_from_context(np.asarray(mosaic.context), np.asarray(mosaic.weight))
    fewest, _ = box_coverage(coverage, x, y, meta["psf_fit_shape"][0] // 2)
    stars = Table({
        "seed": np.full(int(faint.sum()), seed),
        "pull": pull,
        "snr": snr[faint],
        "x_psf": x[faint],
        "y_psf": y[faint],
        "coverage": coverage[np.round(y[faint]).astype(int), np.round(x[faint]).astype(int)],
        "fewest_inputs": fewest[faint],
        "nn_distance": np.asarray(truth["nn_distance"], dtype=float)[faint],
        "coverage_mismatch": (flags[faint] & COVERAGE_MISMATCH) != 0,
        "model_share": ((model_error * psf_flux / psf_err) ** 2)[faint],
        "psf_gof": np.asarray(rows["psf_gof"], dtype=float)[faint],
    })
    dec0 = math.radians(float(np.median(truth["dec"])))
    offset = np.hypot((np.asarray(rows["ra_psf"]) - np.asarray(truth["ra"])) * math.cos(dec0),
                      np.asarray(rows["dec_psf"]) - np.asarray(truth["dec"])) * 3.6e6
    bright = snr > 100
    clean = bright & ((flags & COVERAGE_MISMATCH) == 0)
    return {
        "faint": (mad_std(pull), float(np.median(pull)), int(faint.sum())),
        "bright_flux": (mad_std(((psf_flux - flux) / psf_err)[bright]),
                        float(np.median((psf_flux / flux)[bright])), int(bright.sum())),
        "stars": stars,
        "sky_noise_over_err": meta.get("sky_noise_over_err"),
        "model_error": meta.get("psf_flux_model_error"),
        "bright": (np.median(offset[bright]), np.percentile(offset[bright], 90),
                   offset[bright].max(), int(bright.sum())),
        "clean": (np.median(offset[clean]), np.percentile(offset[clean], 90),
                  offset[clean].max(), int(clean.sum())),
    }


def bootstrap_sigma(values, n_resamples, seed=0):
    """Standard deviation of the robust σ of ``values`` over bootstrap resamplings."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=float)
    sigmas = [mad_std(values[rng.integers(0, values.size, values.size)])
              for _ in range(n_resamples)]
    return float(np.std(sigmas, ddof=1))


def spread_chi2(sigmas, errors, pooled):
    """χ² of the fields' σ about the pooled σ, its degrees of freedom and probability."""
    from scipy.stats import chi2

    sigmas, errors = np.asarray(sigmas, dtype=float), np.asarray(errors, dtype=float)
    value = float(np.sum(((sigmas - pooled) / errors) ** 2))
    dof = sigmas.size - 1
    return value, dof, float(chi2.sf(value, dof))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, action="append", help="field seed (repeatable)")
    parser.add_argument("--size", type=int, default=1024,
                        help="detector pixels on a side of each exposure (default 1024)")
    parser.add_argument("--n-stars", type=int, default=None,
                        help=f"stars per field (default {STARS_PER_1024} per 1024² of detector)")
    parser.add_argument("--bootstrap", type=int, default=2000,
                        help="bootstrap resamplings for the uncertainty of each σ")
    parser.add_argument("--save", metavar="PATH",
                        help="write the faint stars' figures of every field to this table")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    sigmas, errors, tables = [], [], []
    for seed in args.seed or [5, 6, 7]:
        r = run_field(seed, size=args.size, n_stars=args.n_stars)
        sigma, median, n = r["faint"]
        error = bootstrap_sigma(r["stars"]["pull"], args.bootstrap, seed)
        sigmas.append(sigma)
        errors.append(error)
        tables.append(r["stars"])
        print(f"seed {seed}: faint pulls robust sigma {sigma:.3f} ± {error:.3f}, median "
              f"{median:+.2f} ({n} stars); sky_noise_over_err {r['sky_noise_over_err']:.3f}; "
              f"psf_flux_model_error {r['model_error']:.4f}", flush=True)
        b_sigma, b_ratio, b_n = r["bright_flux"]
        print(f"    bright (S/N > 100, {b_n}): pulls robust sigma {b_sigma:.3f}, median "
              f"psf_flux / truth {b_ratio:.4f}", flush=True)
        for name in ("bright", "clean"):
            med, p90, top, k = r[name]
            label = "all bright" if name == "bright" else "without flag 16384"
            print(f"    positions, {label} ({k}): median {med:.2f}, 90% {p90:.2f}, "
                  f"largest {top:.2f} mas", flush=True)
    stars = vstack(tables)
    if args.save:
        stars.write(args.save, overwrite=True)
    if len(sigmas) > 1:
        pooled = mad_std(stars["pull"])
        value, dof, probability = spread_chi2(sigmas, errors, pooled)
        print(f"all fields: faint pulls robust sigma {pooled:.3f} ± "
              f"{bootstrap_sigma(stars['pull'], args.bootstrap):.3f} ({len(stars)} stars); "
              f"fields {min(sigmas):.3f}-{max(sigmas):.3f}, chi2 of their spread {value:.1f} "
              f"for {dof} degrees of freedom (probability {probability:.2f})")
    fewest = np.asarray(stars["fewest_inputs"])
    print("all fields, by the fewest inputs in the fit box: " + "; ".join(
        f"{n}: {mad_std(stars['pull'][fewest == n]):.3f} ± "
        f"{bootstrap_sigma(stars['pull'][fewest == n], args.bootstrap):.3f} "
        f"({int(np.sum(fewest == n))} stars)" for n in np.unique(fewest[fewest > 0])))


if __name__ == "__main__":
    main()
