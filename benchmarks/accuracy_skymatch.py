"""Sky matching accuracy on simulated data: steps between coverage regions of the coadd.

Every simulated detector has a sky of its own (the simulator's default). The
script makes three coadds of the same images, unmatched, matched one offset
per exposure group, and matched one offset per image (the default), through
flux, skymatch, outlier detection and resample (the unmatched one through
flux and resample only), and prints for each:

- the spread (max - min) of the source-free background medians of all
  coverage regions (pixels with the same contributing inputs) of at least
  ``--min-pixels`` pixels, and that spread as a fraction of the unmatched one;
- the rms of those medians about their mean in units of each median's noise
  (about 1 when what is left is noise, not mismatched skies);
- the largest difference between touching regions, in units of the pair's
  noise (the standard error of the two medians, allowing for the correlation
  of neighbouring coadd pixels), and where it is.

    python benchmarks/accuracy_skymatch.py --exposures 8 --detectors 2 --size 1024
    python benchmarks/accuracy_skymatch.py --exposures 16 --detectors 4 --size 512
"""

import argparse
import logging
import time

import numpy as np

from romosaic.library import ModelLibrary
from romosaic.simulate import make_image_models
from romosaic.simulate.checks import coverage_regions, source_mask
from romosaic.steps import FluxStep, OutlierDetectionStep, ResampleStep, SkyMatchStep


def region_summary(mosaic, mask, min_pixels):
    """Spread of large regions' medians, and the worst neighbour step in sigma."""
    regions = coverage_regions(mosaic, mask)
    large = regions.large(min_pixels)
    spread = float(np.ptp(regions.median[large]))
    a, b = regions.neighbours.T
    both = (regions.npix[a] >= min_pixels) & (regions.npix[b] >= min_pixels)
    a, b = a[both], b[both]
    step = np.abs(regions.median[a] - regions.median[b])
    sigma = step / np.hypot(regions.noise[a], regions.noise[b])
    worst = int(np.argmax(sigma)) if sigma.size else None
    return regions, large, spread, sigma, (a[worst], b[worst]) if worst is not None else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=8)
    parser.add_argument("--detectors", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--exposure-time", type=float, default=None,
                        help="seconds (the simulator's default when not given)")
    parser.add_argument("--min-pixels", type=int, default=300)
    parser.add_argument("--skymethod", default="match")
    args = parser.parse_args()
    logging.disable(logging.INFO)

    options = {} if args.exposure_time is None else {"exposure_time": args.exposure_time}

    def simulated():
        # Steps change their models in place: each coadd starts from new ones.
        return make_image_models(n_exposures=args.exposures, n_detectors=args.detectors,
                                 size=args.size, seed=args.seed, **options)

    models, sources, images, _ = simulated()
    sky = np.asarray(images["sky_mjysr"])
    print(f"{args.exposures}x{args.detectors}x{args.size}: image skies "
          f"{sky.min():.4f}-{sky.max():.4f} MJy/sr")
    # Unmatched skies would make outlier detection flag whole images.
    unmatched = ResampleStep.call(FluxStep.call(ModelLibrary(models)))
    mask = source_mask(unmatched, sources)
    _, _, spread_unmatched, _, _ = region_summary(unmatched, mask, args.min_pixels)
    print(f"  unmatched:          spread {spread_unmatched:.5f} MJy/sr")
    for label, per_group in (("true levels", None), ("per exposure group", True),
                             ("per image", False)):
        start = time.perf_counter()
        if per_group is None:
            # Perfect matching: what is left is the noise of the region medians.
            matched = FluxStep.call(ModelLibrary(simulated()[0]))
            for index, model in matched.iter_models(modify=True):
                model.meta["background"] = {"level": float(sky[index]), "subtracted": False,
                                            "method": "local"}
        else:
            matched = SkyMatchStep.call(FluxStep.call(ModelLibrary(simulated()[0])),
                                        skymethod=args.skymethod,
                                        per_exposure_group=per_group)
        elapsed = time.perf_counter() - start
        coadd = ResampleStep.call(OutlierDetectionStep.call(matched))
        regions, large, spread, sigma, worst = region_summary(coadd, mask, args.min_pixels)
        medians, noise = regions.median[large], regions.noise[large]
        mean = np.average(medians, weights=noise**-2.0)
        scatter = np.sqrt(np.mean(((medians - mean) / noise) ** 2))
        line = (f"  {label + ':':19s} spread {spread:.5f} MJy/sr = "
                f"{spread / spread_unmatched:.4f} of unmatched ({large.size} regions >= "
                f"{args.min_pixels} px, rms {scatter:.2f} sigma about their mean); "
                f"skymatch {elapsed:.2f} s")
        if worst is not None:
            a, b = worst
            line += (f"; worst neighbour step {sigma.max():.1f} sigma "
                     f"({regions.n_inputs[a]} vs {regions.n_inputs[b]} inputs, "
                     f"{regions.median[a] - regions.median[b]:+.5f} MJy/sr)")
        print(line)


if __name__ == "__main__":
    main()
