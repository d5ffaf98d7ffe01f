"""Outlier detection accuracy on simulated data: cosmic rays caught, star fluxes kept.

Prints the fraction of cosmic-ray pixels more than 5σ above the noise (in
areas covered by at least two exposure groups) that are flagged, and the
fraction of the brightest tenth of the stars whose 0.5″ aperture flux in the
coadd with outlier detection is within 1% of the flux without it.

    python benchmarks/accuracy_outlier.py --exposures 8 --size 1024
    python benchmarks/accuracy_outlier.py --cosmic-ray-rate 0 --pixel-scale-ratio 1.0 \\
        --model-error 0   # the reference's configuration: watch the stars
"""

import argparse
import logging
import time

import numpy as np

from romosaic.library import ModelLibrary
from romosaic.simulate import make_image_models
from romosaic.simulate.checks import aperture_sum, cosmic_ray_recovery
from romosaic.steps import FluxStep, OutlierDetectionStep, ResampleStep, SkyMatchStep


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=4)
    parser.add_argument("--detectors", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--n-stars", type=int, default=None)
    parser.add_argument("--cosmic-ray-rate", type=float, default=1e-4)
    parser.add_argument("--model-error", type=float, default=0.1)
    parser.add_argument("--pixel-scale-ratio", type=float, default=0.5)
    args = parser.parse_args()
    logging.disable(logging.INFO)

    models, sources, _, cosmic_rays = make_image_models(
        n_exposures=args.exposures, n_detectors=args.detectors, size=args.size, seed=args.seed,
        n_stars=args.n_stars, cosmic_ray_rate=args.cosmic_ray_rate)
    library = SkyMatchStep.call(FluxStep.call(ModelLibrary(models)))
    without = ResampleStep.call(library)
    start = time.perf_counter()
    library = OutlierDetectionStep.call(library, model_error=args.model_error,
                                        pixel_scale_ratio=args.pixel_scale_ratio)
    elapsed = time.perf_counter() - start
    with_detection = ResampleStep.call(library)

    flagged_total = 0
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            flagged_total += int(np.count_nonzero(model.dq & 128))
            library.shelve(model, index, modify=False)
    print(f"outlier_detection: {elapsed:.1f} s; {flagged_total} pixels flagged; "
          f"{len(cosmic_rays)} cosmic-ray pixels injected")
    if len(cosmic_rays):
        caught, eligible = cosmic_ray_recovery(library, cosmic_rays)
        print(f"cosmic-ray pixels >5 sigma covered by >=2 groups: {caught}/{eligible} "
              f"= {caught / max(eligible, 1):.4f}")
    ratios = _star_ratios(sources, with_detection, without)
    print(f"brightest tenth of stars: {len(ratios)}; within 1%: "
          f"{np.mean(np.abs(ratios - 1) < 0.01):.3f}; worst {np.abs(ratios - 1).max():.4f}")


def _star_ratios(sources, with_detection, without):
    stars = sources[sources["kind"] == "star"]
    brightest = stars[np.argsort(stars["mag_ab"])][: max(1, len(stars) // 10)]
    ratios = []
    for star in brightest:
        a = aperture_sum(with_detection, star["ra"], star["dec"])
        b = aperture_sum(without, star["ra"], star["dec"])
        if np.isfinite(a) and np.isfinite(b) and b > 0:
            ratios.append(a / b)
    return np.array(ratios)


if __name__ == "__main__":
    main()
