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

    images = {}
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            images[model.meta.filename] = (model.dq.copy(), model.err.astype(np.float32),
                                           model.meta.wcs, model.meta.group_id,
                                           float(model.meta.photometry.conversion_megajanskys))
            library.shelve(model, index, modify=False)
    flagged_total = sum(int(np.count_nonzero(v[0] & 128)) for v in images.values())
    print(f"outlier_detection: {elapsed:.1f} s; {flagged_total} pixels flagged; "
          f"{len(cosmic_rays)} cosmic-ray pixels injected")
    if len(cosmic_rays):
        caught, eligible = _cosmic_rays(images, cosmic_rays, args.size)
        print(f"cosmic-ray pixels >5 sigma covered by >=2 groups: {caught}/{eligible} "
              f"= {caught / max(eligible, 1):.4f}")
    ratios = _star_ratios(sources, with_detection, without)
    print(f"brightest tenth of stars: {len(ratios)}; within 1%: "
          f"{np.mean(np.abs(ratios - 1) < 0.01):.3f}; worst {np.abs(ratios - 1).max():.4f}")


def _cosmic_rays(images, cosmic_rays, size):
    groups = {}
    for name, value in images.items():
        groups.setdefault(value[3], []).append(name)
    caught = eligible = 0
    for hit in cosmic_rays:
        dq, err, wcs, _, conversion = images[hit["filename"]]
        x, y = int(hit["x"]), int(hit["y"])
        if hit["value_dn_s"] * conversion <= 5 * err[y, x]:
            continue
        ra, dec = wcs(x, y)
        covering = 0
        for names in groups.values():
            for name in names:
                px, py = images[name][2].invert(ra, dec)
                if 1 <= px <= size - 2 and 1 <= py <= size - 2:
                    covering += 1
                    break
        if covering >= 2:
            eligible += 1
            caught += bool(dq[y, x] & 128)
    return caught, eligible


def _star_ratios(sources, with_detection, without):
    stars = sources[sources["kind"] == "star"]
    brightest = stars[np.argsort(stars["mag_ab"])][: max(1, len(stars) // 10)]
    ratios = []
    for star in brightest:
        a = _aperture(with_detection, star["ra"], star["dec"])
        b = _aperture(without, star["ra"], star["dec"])
        if np.isfinite(a) and np.isfinite(b) and b > 0:
            ratios.append(a / b)
    return np.array(ratios)


def _aperture(mosaic, ra, dec, radius_arcsec=0.5):
    x, y = mosaic.meta.wcs.invert(ra, dec)
    radius = radius_arcsec / (mosaic.meta.wcsinfo.pixel_scale * 3600)
    ny, nx = mosaic.data.shape
    if not (radius + 2 < x < nx - radius - 3 and radius + 2 < y < ny - radius - 3):
        return np.nan
    yy, xx = np.mgrid[int(y - radius - 2):int(y + radius + 3),
                      int(x - radius - 2):int(x + radius + 3)]
    inside = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    return float(np.nansum(mosaic.data[yy[inside], xx[inside]]))


if __name__ == "__main__":
    main()
