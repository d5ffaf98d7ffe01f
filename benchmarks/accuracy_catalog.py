"""Catalog purity and completeness on simulated scenes: spurious entries and what causes them.

Each scene is simulated in memory (`romosaic.simulate.make_image_models`), run
through flux → skymatch → outlier_detection → resample → source_catalog with
the steps' defaults (free grid), and the catalog is compared with the
simulator's truth:

* an entry *matches* a star within 0.1″, or a galaxy within
  ``max(0.1″, r_eff)`` of its centre (``r_eff``, the semi-major half-light
  radius: a galaxy's measured centroid wanders within its light; a second
  entry further out is a fragment of it);
* an entry matching none of them is a *blend* when its segment holds two or
  more true sources and it lies within 0.1″ of their flux-weighted centre:
  the catalog then reports the light of several sources as one (with
  ``deblend`` off, the reference's default, close pairs stay merged). Blends
  are real light, not spurious; they are counted apart, and the strict
  figure (no true source within the radius) is printed too;
* any other entry is *spurious*, and is given the first cause that
  fits: ``cosmic ray`` (within 0.25″ of an injected cosmic-ray pixel),
  ``bright star`` (within 3″ of a star brighter than 19 mag),
  ``galaxy fragment`` (inside three half-light radii of a galaxy),
  ``blend`` (within 0.5″ of a true source: a centroid between neighbours),
  else ``noise``. Each is also marked ``low coverage`` when a single input
  image contributes to its centroid pixel, and ``edge`` when it lies within
  5 pixels of a pixel without data;
* completeness is the fraction of true sources on pixels with data (at least
  5 pixels from the edge of the coverage) that some entry matches, per
  magnitude bin.

Scenes (512² detectors, seed fixed):

``default``   4 exposures × 2 detectors, the simulator's densities
``crowded``   4 × 1, four times the stars and three times the galaxies
``bright``    4 × 1, plus six 13.5-15.5 mag stars with Moffat wings whose cores
              are saturated (flagged DO_NOT_USE, a hole in the mosaic)
``edges``     2 × 2 with five times the cosmic rays: wide single-coverage
              margins where outlier detection cannot reject cosmic rays
``empty``     3 × 1 without sources: every entry is spurious

Examples
--------
::

    python benchmarks/accuracy_catalog.py                       # every scene, native scale
    python benchmarks/accuracy_catalog.py --scene edges --pixel-scale-ratio 0.5
    python benchmarks/accuracy_catalog.py --npixels 6 --verbose  # list the spurious entries
"""

import argparse
import logging
import time
from dataclasses import dataclass

import numpy as np
from roman_datamodels.dqflags import pixel as dq_flags
from scipy.spatial import cKDTree

#: Stars match within this radius (arcsec); galaxies within max(this, r_eff).
MATCH_RADIUS = 0.1
MAG_BINS = np.arange(20.0, 26.5, 1.0)
BRIGHT_STAR_MAG = 19.0
BRIGHT_STAR_RADIUS = 3.0
COSMIC_RAY_RADIUS = 0.25
GALAXY_EXTENT = 3.0
BLEND_RADIUS = 0.5
EDGE_PIXELS = 5

SCENES = {
    "default": {"n_exposures": 4, "n_detectors": 2, "size": 512, "seed": 5},
    "crowded": {"n_exposures": 4, "n_detectors": 1, "size": 512, "seed": 6,
                "density": (4.0, 3.0)},
    "bright": {"n_exposures": 4, "n_detectors": 1, "size": 512, "seed": 7,
               "saturated_stars": 6},
    "edges": {"n_exposures": 2, "n_detectors": 2, "size": 512, "seed": 8,
              "cosmic_ray_rate": 5e-4},
    "empty": {"n_exposures": 3, "n_detectors": 1, "size": 512, "seed": 9,
              "n_stars": 0, "n_galaxies": 0},
}

CAUSES = ("cosmic ray", "bright star", "galaxy fragment", "blend", "noise")


@dataclass
class SceneResult:
    """What one scene gave: counts, causes and completeness."""

    name: str
    n_entries: int
    n_spurious: int
    n_strict: int
    n_blends: int
    causes: dict
    low_coverage: int
    edge: int
    completeness: list
    spurious_rows: list
    seconds: float

    @property
    def spurious_fraction(self):
        return self.n_spurious / self.n_entries if self.n_entries else 0.0


def simulate_scene(options):
    """Models, truth sources and cosmic-ray truth of a scene (see `SCENES`)."""
    from romosaic.simulate import make_image_models
    from romosaic.simulate.scene import default_counts

    options = dict(options)
    density = options.pop("density", None)
    saturated = options.pop("saturated_stars", 0)
    if density is not None:
        # Footprint of n exposures of one detector, about one detector's area.
        area = (options["size"] * 0.11 / 60.0) ** 2
        n_stars, n_galaxies = default_counts(area)
        options["n_stars"] = int(density[0] * n_stars)
        options["n_galaxies"] = int(density[1] * n_galaxies)
    models, sources, _, cosmic_rays = make_image_models(**options)
    if saturated:
        sources = add_saturated_stars(models, sources, saturated, seed=options["seed"])
    return models, sources, cosmic_rays


def add_saturated_stars(models, sources, n, *, seed, mag_range=(13.5, 15.5), beta=2.5,
                        saturation_dn_s=2000.0):
    """Add bright stars with Moffat wings; their saturated cores are flagged.

    The simulator's PSF is a Gaussian, which has no wings. A real bright star
    has extended wings and a core that saturates: the calibrated image flags
    those pixels DO_NOT_USE and SATURATED, and the mosaic has a hole there.
    The stars are placed at least 40 pixels inside the first image and given
    ``kind = "star"`` rows in the returned truth table.
    """
    from astropy.table import Table, vstack

    from romosaic.simulate.instrument import PSF_FWHM, abmag_to_njy

    rng = np.random.default_rng([seed, 99])
    first = models[0]
    ny, nx = first.data.shape
    x0 = rng.uniform(40, nx - 40, n)
    y0 = rng.uniform(40, ny - 40, n)
    ra, dec = first.meta.wcs(x0, y0)
    mags = rng.uniform(*mag_range, n)
    flux_njy = abmag_to_njy(mags)
    alpha = PSF_FWHM / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    for model in models:
        conversion = float(model.meta.photometry.conversion_megajanskys)
        area = float(model.meta.photometry.pixel_area)
        scale = np.sqrt(area) * 206264.806
        x, y = model.meta.wcs.invert(ra, dec)
        yy, xx = np.mgrid[:ny, :nx]
        added = np.zeros((ny, nx))
        for xs, ys, f in zip(x, y, flux_njy, strict=True):
            if not (-60 < xs < nx + 60 and -60 < ys < ny + 60):
                continue
            r2 = ((xx - xs) ** 2 + (yy - ys) ** 2) * scale**2
            profile = (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** (-beta)
            # nJy per arcsec² → MJy/sr → DN/s per pixel.
            added += f * 1e-15 * profile * scale**2 / area / conversion
        model.data = (model.data + added).astype(np.float32)
        saturated = added > saturation_dn_s
        model.dq = model.dq | np.where(saturated, dq_flags.SATURATED | dq_flags.DO_NOT_USE,
                                       0).astype(np.uint32)
    rows = Table({"source_id": np.arange(n) + int(np.max(sources["source_id"], initial=0)) + 1,
                  "kind": ["star"] * n, "ra": ra, "dec": dec, "mag_ab": mags,
                  "flux_njy": flux_njy})
    for name in sources.colnames:
        if name not in rows.colnames:
            rows[name] = np.full(n, np.nan) if sources[name].dtype.kind == "f" else \
                np.zeros(n, sources[name].dtype)
    for name in rows.colnames:
        if sources[name].unit is not None:
            rows[name].unit = sources[name].unit
    return vstack([sources, rows[sources.colnames]])


def make_mosaic(models, *, pixel_scale_ratio=1.0):
    """The coadd of a list of Level-2 models, through the first four steps."""
    from romosaic.library import ModelLibrary
    from romosaic.steps import FluxStep, OutlierDetectionStep, ResampleStep, SkyMatchStep

    library = SkyMatchStep.call(FluxStep.call(ModelLibrary(models)))
    library = OutlierDetectionStep.call(library)
    return ResampleStep.call(library, pixel_scale_ratio=pixel_scale_ratio)


def cosmic_ray_positions(models, cosmic_rays):
    """Sky positions (degrees) of the injected cosmic-ray pixels."""
    ra = np.empty(len(cosmic_rays))
    dec = np.empty(len(cosmic_rays))
    names = np.asarray(cosmic_rays["filename"])
    for model in models:
        mine = names == model.meta.filename
        if mine.any():
            ra[mine], dec[mine] = model.meta.wcs(np.asarray(cosmic_rays["x"], float)[mine],
                                                 np.asarray(cosmic_rays["y"], float)[mine])
    return ra, dec


def coverage_counts(context):
    """Number of input images contributing to each pixel, from the context planes."""
    counts = np.zeros(context.shape[1:], np.int32)
    for plane in np.asarray(context):
        bits = plane.copy()
        while np.any(bits):
            counts += (bits & 1).astype(np.int32)
            bits >>= 1
    return counts


def _tangent(ra, dec, ra0, dec0):
    """Arcsec offsets of positions from (ra0, dec0), adequate over a few arcminutes."""
    x = (np.asarray(ra) - ra0) * np.cos(np.radians(dec0)) * 3600.0
    y = (np.asarray(dec) - dec0) * 3600.0
    return np.column_stack([x, y])


def evaluate(table, mosaic, sources, cr_ra=None, cr_dec=None, segmentation=None):
    """Match a catalog to the truth; spurious entries, their causes, completeness.

    Parameters
    ----------
    table : astropy.table.Table
        The catalog (``ra_centroid``, ``dec_centroid``, ``x_centroid``, ``y_centroid``).
    mosaic : roman_datamodels.datamodels.MosaicModel
        The mosaic it was measured on (WCS, weight, context).
    sources : astropy.table.Table
        The simulator's truth table.
    cr_ra, cr_dec : numpy.ndarray, optional
        Sky positions of injected cosmic-ray pixels.
    segmentation : numpy.ndarray, optional
        The catalog's label image; without it no entry counts as a blend.

    Returns
    -------
    dict
        ``n_entries``, ``spurious`` and ``blend`` (bool per entry, the
        latter for blends of several true sources), ``strict_spurious``
        (bool per entry: no true source within its radius), ``cause`` (str
        per entry, "" when not spurious), ``low_coverage``, ``edge`` (bool per entry)
        and ``completeness`` (list of (lo, hi, found, total)).
    """
    from scipy.ndimage import binary_dilation

    ra0, dec0 = float(np.mean(sources["ra"])) if len(sources) else 80.0, \
        float(np.mean(sources["dec"])) if len(sources) else -30.0
    n = len(table)
    entries = _tangent(table["ra_centroid"], table["dec_centroid"], ra0, dec0) if n else \
        np.empty((0, 2))
    truth = _tangent(sources["ra"], sources["dec"], ra0, dec0)
    is_star = np.asarray(sources["kind"]) == "star"
    r_eff = np.nan_to_num(np.asarray(sources["r_eff"], float), nan=0.0)
    radius = np.where(is_star, MATCH_RADIUS, np.maximum(MATCH_RADIUS, r_eff))
    mags = np.asarray(sources["mag_ab"], float)

    matched = np.zeros(n, bool)
    found = np.zeros(len(sources), bool)
    near_truth = np.full(n, np.inf)
    if n and len(sources):
        tree = cKDTree(truth)
        reach = max(float(radius.max()), BRIGHT_STAR_RADIUS, GALAXY_EXTENT * float(r_eff.max()))
        candidates = tree.query_ball_point(entries, reach)
        cause = np.full(n, "", dtype="U16")
        for i, near in enumerate(candidates):
            if not near:
                continue
            near = np.asarray(near)
            d = np.hypot(*(truth[near] - entries[i]).T)
            near_truth[i] = d.min()
            hit = d <= radius[near]
            if hit.any():
                matched[i] = True
                found[near[hit]] = True
                continue
            if np.any((d <= BRIGHT_STAR_RADIUS) & is_star[near] & (mags[near] < BRIGHT_STAR_MAG)):
                cause[i] = "bright star"
            elif np.any(~is_star[near] & (d <= GALAXY_EXTENT * r_eff[near])):
                cause[i] = "galaxy fragment"
            elif d.min() <= BLEND_RADIUS:
                cause[i] = "blend"
    else:
        cause = np.full(n, "", dtype="U16")
    strict_spurious = ~matched
    blend = np.zeros(n, bool)
    if segmentation is not None and n and len(sources):
        blend = _blends(table, mosaic, sources, segmentation, ~matched)
    spurious = ~matched & ~blend
    cause[~spurious] = ""
    if n and cr_ra is not None and len(cr_ra):
        crs = cKDTree(_tangent(cr_ra, cr_dec, ra0, dec0))
        d_cr, _ = crs.query(entries)
        on_cr = spurious & (d_cr <= COSMIC_RAY_RADIUS)
        cause[on_cr] = "cosmic ray"
    cause[spurious & (cause == "")] = "noise"

    no_data = ~(np.asarray(mosaic.weight) > 0) | ~np.isfinite(np.asarray(mosaic.data))
    near_edge = binary_dilation(no_data, iterations=EDGE_PIXELS)
    counts = coverage_counts(mosaic.context)
    ny, nx = no_data.shape
    ix = np.clip(np.round(np.asarray(table["x_centroid"], float)).astype(int), 0, nx - 1) \
        if n else np.empty(0, int)
    iy = np.clip(np.round(np.asarray(table["y_centroid"], float)).astype(int), 0, ny - 1) \
        if n else np.empty(0, int)
    low_coverage = counts[iy, ix] <= 1
    edge = near_edge[iy, ix]

    completeness = []
    if len(sources):
        tx, ty = mosaic.meta.wcs.invert(np.asarray(sources["ra"]), np.asarray(sources["dec"]))
        inside = np.isfinite(tx) & np.isfinite(ty)
        jx = np.clip(np.round(np.nan_to_num(tx)).astype(int), 0, nx - 1)
        jy = np.clip(np.round(np.nan_to_num(ty)).astype(int), 0, ny - 1)
        inside &= (tx > -0.5) & (tx < nx - 0.5) & (ty > -0.5) & (ty < ny - 0.5)
        inside &= ~near_edge[jy, jx]
        for lo, hi in zip(MAG_BINS[:-1], MAG_BINS[1:], strict=True):
            sel = inside & (mags >= lo) & (mags < hi)
            completeness.append((float(lo), float(hi), int(found[sel].sum()), int(sel.sum())))
    return {"n_entries": n, "spurious": spurious, "strict_spurious": strict_spurious,
            "blend": blend, "cause": cause, "low_coverage": low_coverage,
            "edge": edge, "completeness": completeness, "nearest_truth": near_truth}


def _blends(table, mosaic, sources, segmentation, candidates):
    """Entries at the flux-weighted centre of the two or more true sources in their segment."""
    ny, nx = segmentation.shape
    tx, ty = mosaic.meta.wcs.invert(np.asarray(sources["ra"]), np.asarray(sources["dec"]))
    tx, ty = np.asarray(tx, float), np.asarray(ty, float)
    inside = np.isfinite(tx) & np.isfinite(ty) & (tx > -0.5) & (tx < nx - 0.5) & \
        (ty > -0.5) & (ty < ny - 0.5)
    label_of = np.zeros(len(sources), np.int64)
    label_of[inside] = segmentation[np.round(ty[inside]).astype(int),
                                    np.round(tx[inside]).astype(int)]
    flux = np.asarray(sources["flux_njy"], float)
    scale = float(mosaic.meta.wcsinfo.pixel_scale) * 3600.0
    blend = np.zeros(len(table), bool)
    for i in np.flatnonzero(candidates):
        members = np.flatnonzero(label_of == int(table["label"][i]))
        if members.size < 2:
            continue
        w = flux[members] / flux[members].sum()
        cx, cy = float(np.sum(w * tx[members])), float(np.sum(w * ty[members]))
        offset = np.hypot(cx - float(table["x_centroid"][i]), cy - float(table["y_centroid"][i]))
        blend[i] = offset * scale <= MATCH_RADIUS
    return blend


def run_scene(name, options, *, pixel_scale_ratio=1.0, catalog_options=None):
    """Simulate, coadd and catalog one scene; return a `SceneResult` and the catalog."""
    from romosaic.steps import SourceCatalogStep

    start = time.perf_counter()
    models, sources, cosmic_rays = simulate_scene(options)
    cr_ra, cr_dec = cosmic_ray_positions(models, cosmic_rays)
    mosaic = make_mosaic(models, pixel_scale_ratio=pixel_scale_ratio)
    del models
    catalog, segmentation = SourceCatalogStep.call(mosaic, **(catalog_options or {}))
    table = catalog.source_catalog
    result = evaluate(table, mosaic, sources, cr_ra, cr_dec,
                      segmentation=np.asarray(segmentation.data))
    spurious = result["spurious"]
    causes = {c: int(np.sum(spurious & (result["cause"] == c))) for c in CAUSES}
    rows = []
    for i in np.flatnonzero(spurious):
        rows.append({
            "label": int(table["label"][i]), "x": float(table["x_centroid"][i]),
            "y": float(table["y_centroid"][i]), "cause": str(result["cause"][i]),
            "low_coverage": bool(result["low_coverage"][i]), "edge": bool(result["edge"][i]),
            "area": float(table["segment_area"][i]),
            "snr": float(table["segment_flux"][i] / table["segment_flux_err"][i]),
            "flags": int(table["warning_flags"][i]),
            "nearest_truth": float(result["nearest_truth"][i]),
        })
    return SceneResult(
        name=name, n_entries=result["n_entries"], n_spurious=int(spurious.sum()),
        n_strict=int(result["strict_spurious"].sum()), n_blends=int(result["blend"].sum()),
        causes=causes,
        low_coverage=int(np.sum(spurious & result["low_coverage"])),
        edge=int(np.sum(spurious & result["edge"])), completeness=result["completeness"],
        spurious_rows=rows, seconds=time.perf_counter() - start), table


def report(result, verbose=False):
    """Print one scene's figures."""
    strict = result.n_strict / result.n_entries if result.n_entries else 0.0
    print(f"[{result.name}] {result.n_entries} entries, {result.n_spurious} spurious "
          f"({100 * result.spurious_fraction:.2f} %), {result.n_blends} blends; strict "
          f"{result.n_strict} ({100 * strict:.2f} %); {result.seconds:.0f} s")
    if result.n_spurious:
        causes = ", ".join(f"{c} {k}" for c, k in result.causes.items() if k)
        print(f"    causes: {causes}; at low coverage {result.low_coverage}, "
              f"near the edge {result.edge}")
    if result.completeness:
        cells = "  ".join(f"{lo:.0f}-{hi:.0f}: {f}/{t}" + (f" {f / t:.2f}" if t else "")
                          for lo, hi, f, t in result.completeness)
        print(f"    completeness  {cells}")
    if verbose:
        for row in result.spurious_rows:
            print("      " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", action="append", choices=sorted(SCENES),
                        help="scene to run (repeatable; default: all)")
    parser.add_argument("--pixel-scale-ratio", type=float, default=1.0)
    parser.add_argument("--npixels", type=int, default=None)
    parser.add_argument("--snr-threshold", type=float, default=None)
    parser.add_argument("--deblend", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="list every spurious entry")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    catalog_options = {}
    if args.npixels is not None:
        catalog_options["npixels"] = args.npixels
    if args.snr_threshold is not None:
        catalog_options["snr_threshold"] = args.snr_threshold
    if args.deblend:
        catalog_options["deblend"] = True
    total = spurious = strict = 0
    for name in args.scene or list(SCENES):
        result, _ = run_scene(name, SCENES[name], pixel_scale_ratio=args.pixel_scale_ratio,
                              catalog_options=catalog_options)
        report(result, verbose=args.verbose)
        total += result.n_entries
        spurious += result.n_spurious
        strict += result.n_strict
    if total:
        print(f"all scenes: {spurious}/{total} spurious ({100 * spurious / total:.2f} %); "
              f"strict {strict}/{total} ({100 * strict / total:.2f} %)")


if __name__ == "__main__":
    main()
