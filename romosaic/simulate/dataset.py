"""Simulating a whole dithered association: models in memory, or files on disk."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from .._atomic import atomic_save_model
from ..errors import RomosaicInputError
from . import psf as psf_module
from . import render
from .instrument import (
    COLOUR_SCATTER,
    CONVERSION_MEGAJANSKYS,
    COSMIC_RAY_RATE,
    DETECTOR_SKY_SCATTER,
    EXPOSURE_TIME,
    FLAT_ERROR,
    GAIN,
    HOT_PIXEL_FRACTION,
    PIXEL_SCALE,
    PSF_FWHM,
    READ_NOISE,
    SKY_RANGE,
)
from .scene import make_scene
from .wcs import ImageGeometry, draw_pointing_errors, plan_layout, recorded_placement
from .writer import (
    ExposureInfo,
    build_image_model,
    cal_filename,
    observation_id,
    write_association,
    write_table,
)

__all__ = ["SimulationResult", "make_image_models", "reference_catalog", "simulate_association"]

#: Smallest image that still holds the guaranteed isolated stars.
MIN_SIZE = 64
MAX_DETECTORS = 18

# A lower bound of the pixel scale (arcsec) anywhere, for generous stamp margins.
_MIN_SCALE = 0.9 * PIXEL_SCALE

# Independent random streams, so that e.g. changing the cosmic-ray rate does
# not move the sources, and one detector's hot pixels are the same in every exposure.
# New streams are appended, so that existing seeds keep giving identical files.
_LAYOUT, _SCENE, _SKY, _DETECTOR, _EXPOSURE, _POINTING, _COLOUR = range(7)


@dataclass
class SimulationResult:
    """Everything `simulate_association` wrote.

    Attributes
    ----------
    asn_path : pathlib.Path
        The association file.
    product_name : str
        Its product name.
    cal_paths : list of pathlib.Path
        Calibrated image files, in exposure-then-detector order.
    truth_sources_path, truth_images_path, truth_cosmic_rays_path : pathlib.Path
        ECSV truth tables.
    sources, images, cosmic_rays : astropy.table.Table
        The truth tables themselves.
    refcat_path : pathlib.Path
        The reference catalogue of true star positions (ECSV).
    refcat : astropy.table.Table
        Its contents (see `reference_catalog`).
    second_band : SimulationResult or None
        With ``second_filter``: the same scene in the second filter.
    """

    asn_path: Path
    product_name: str
    cal_paths: list
    truth_sources_path: Path
    truth_images_path: Path
    truth_cosmic_rays_path: Path
    sources: Table
    images: Table
    cosmic_rays: Table
    refcat_path: Path = None
    refcat: Table = None
    second_band: "SimulationResult" = None


def _rng(seed, *stream):
    return np.random.default_rng([seed, *stream])


def _check_options(n_exposures, n_detectors, size, dec, filter_name, sky_levels,
                   exposure_time, cosmic_ray_rate, detector_sky_scatter, pointing_error,
                   roll_error, psf="gaussian", star_mag_range=None):
    if n_exposures < 1:
        raise RomosaicInputError(f"n_exposures must be at least 1, not {n_exposures}")
    if not 1 <= n_detectors <= MAX_DETECTORS:
        raise RomosaicInputError(
            f"n_detectors must be between 1 and {MAX_DETECTORS}, not {n_detectors}"
        )
    if size < MIN_SIZE:
        raise RomosaicInputError(f"size must be at least {MIN_SIZE} pixels, not {size}")
    if not -89.0 <= dec <= 89.0:
        raise RomosaicInputError(f"dec must be between -89 and 89 degrees, not {dec}")
    if filter_name.upper() not in CONVERSION_MEGAJANSKYS:
        raise RomosaicInputError(
            f"unknown filter {filter_name!r}; use one of {', '.join(CONVERSION_MEGAJANSKYS)}"
        )
    if sky_levels is not None and len(sky_levels) not in (n_exposures,
                                                          n_exposures * n_detectors):
        raise RomosaicInputError(
            f"sky_levels has {len(sky_levels)} values for {n_exposures} exposures of "
            f"{n_detectors} detectors (give one per exposure or one per image)"
        )
    if not 0.0 <= detector_sky_scatter < 0.5:
        raise RomosaicInputError(
            f"detector_sky_scatter must be in [0, 0.5), not {detector_sky_scatter}"
        )
    if exposure_time <= 0:
        raise RomosaicInputError(f"exposure_time must be positive, not {exposure_time}")
    if cosmic_ray_rate < 0:
        raise RomosaicInputError(f"cosmic_ray_rate must not be negative, not {cosmic_ray_rate}")
    # Magnitudes: the directions and signs are drawn.
    if not pointing_error >= 0:
        raise RomosaicInputError(f"pointing_error must not be negative, not {pointing_error}")
    if not roll_error >= 0:
        raise RomosaicInputError(f"roll_error must not be negative, not {roll_error}")
    if psf not in psf_module.PSF_MODELS:
        raise RomosaicInputError(
            f"unknown psf {psf!r}; use one of {', '.join(psf_module.PSF_MODELS)}")
    if star_mag_range is not None and not (
            len(star_mag_range) == 2 and np.all(np.isfinite(star_mag_range))
            and star_mag_range[0] < star_mag_range[1]):
        raise RomosaicInputError(
            f"star_mag_range must be two increasing magnitudes, not {star_mag_range}")


def _source_arrays(sources, kind):
    """Columns of one kind of source as plain arrays, fluxes in MJy."""
    rows = sources[sources["kind"] == kind]
    columns = {name: np.asarray(rows[name], dtype=float) for name in
               ("ra", "dec", "flux_njy", "sersic_n", "r_eff", "axis_ratio", "position_angle",
                "truncation_radius")}
    columns["flux"] = columns.pop("flux_njy") * 1.0e-15
    return columns


def _image_sky_levels(rng, sky_levels, n_exposures, n_detectors, detector_sky_scatter):
    """Sky in DN/s of every image, in exposure-then-detector order.

    Drawn skies differ between exposures (zodiacal light changes with the
    pointing and date) and, by ``detector_sky_scatter``, between the
    detectors of one exposure: real WFI detectors keep residual bias, dark
    and flat-field differences, so no two images share a background exactly.
    Given skies are used as they are.
    """
    if sky_levels is None:
        # Exposure skies first, so they do not depend on the number of detectors.
        exposure_sky = rng.uniform(*SKY_RANGE, n_exposures)
        relative = np.clip(rng.standard_normal((n_exposures, n_detectors)), -2.5, 2.5)
        return (exposure_sky[:, None] * (1.0 + detector_sky_scatter * relative)).ravel()
    levels = np.asarray(sky_levels, dtype=float)
    if levels.size == n_exposures:
        levels = np.repeat(levels, n_detectors)
    return levels


def _render_scene(geometry, stars, galaxies, psf_fwhm, table_psf=None):
    """Noise-free image of the scene in MJy/sr (stars with ``table_psf`` when given)."""
    ny, nx = geometry.shape
    image = np.zeros((ny, nx))
    # Only sources whose light can reach the image are rendered.
    for columns, kind in ((stars, "star"), (galaxies, "galaxy")):
        if len(columns["ra"]) == 0:
            continue
        x, y = geometry.world_to_pixel(columns["ra"], columns["dec"])
        extent = np.nan_to_num(columns["truncation_radius"]) + 5.0 * psf_fwhm
        if table_psf is not None and kind == "star":
            extent = extent + psf_module.PSF_RADIUS
        reach = extent / _MIN_SCALE + 2.0
        near = (
            (x > -0.5 - reach) & (x < nx - 0.5 + reach)
            & (y > -0.5 - reach) & (y < ny - 0.5 + reach)
        )
        if not near.any():
            continue
        x, y = x[near], y[near]
        jac = geometry.jacobian(x, y)
        if kind == "star" and table_psf is not None:
            render.render_stars_table(image, x, y, columns["flux"][near], jac, table_psf)
        elif kind == "star":
            render.render_stars(image, x, y, columns["flux"][near], jac, psf_fwhm)
        else:
            render.render_galaxies(
                image, x, y, columns["flux"][near], jac, psf_fwhm,
                columns["sersic_n"][near], columns["r_eff"][near], columns["axis_ratio"][near],
                columns["position_angle"][near], columns["truncation_radius"][near],
            )
    return image


def _simulate(*, n_exposures=4, n_detectors=1, size=512, seed=0, ra=80.0, dec=-30.0,
              filter_name="F158", n_stars=None, n_galaxies=None,
              cosmic_ray_rate=COSMIC_RAY_RATE, distortion=False, sky_levels=None,
              exposure_time=EXPOSURE_TIME, noise=True, roll=None, n_hot_pixels=None,
              psf_fwhm=PSF_FWHM, detector_sky_scatter=DETECTOR_SKY_SCATTER,
              pointing_error=0.0, roll_error=0.0, psf="gaussian", star_mag_range=None,
              colour_scatter=COLOUR_SCATTER, second_band=False):
    """Yield the truth tables first, then (model, cosmic-ray table) per image.

    A generator, so that writing files can drop each model before the next is made.
    With ``second_band`` the scene is seen through another filter: every
    source is fainter by its colour (``colour_scatter`` mag; drawn once per
    seed, see `band_colours`) and the noise and cosmic rays are drawn anew.
    """
    _check_options(n_exposures, n_detectors, size, dec, filter_name, sky_levels,
                   exposure_time, cosmic_ray_rate, detector_sky_scatter, pointing_error,
                   roll_error, psf, star_mag_range)
    filter_name = filter_name.upper()
    # A diffraction PSF is tabulated once for all images (at the nominal pixel scale).
    table_psf = psf_module.airy_psf(PIXEL_SCALE, filter_name) if psf == "airy" else None
    if table_psf is not None:
        # Galaxies are blurred by a Gaussian of the diffraction PSF's width.
        psf_fwhm = table_psf.fwhm
    conversion = CONVERSION_MEGAJANSKYS[filter_name]
    placements = plan_layout(
        _rng(seed, _LAYOUT), ra=ra, dec=dec, n_exposures=n_exposures,
        n_detectors=n_detectors, size=size, roll=roll, distortion=distortion,
    )
    geometries = [ImageGeometry(p) for p in placements]
    # One error per exposure: all detectors of an exposure move together.
    errors = draw_pointing_errors(_rng(seed, _POINTING), n_exposures, pointing_error, roll_error)
    image_errors = [errors[p.exposure - 1] for p in placements]
    sources = make_scene(geometries, _rng(seed, _SCENE), ra=ra, dec=dec,
                         n_stars=n_stars, n_galaxies=n_galaxies, star_mag_range=star_mag_range)
    band = ()
    if second_band:
        _apply_colours(sources, band_colours(seed, len(sources), colour_scatter))
        # Another exposure through another filter: its own noise and cosmic rays.
        band = (_COLOUR,)
    image_skies = _image_sky_levels(_rng(seed, _SKY), sky_levels, n_exposures, n_detectors,
                                    detector_sky_scatter)
    if n_hot_pixels is None:
        n_hot_pixels = max(3, int(round(HOT_PIXEL_FRACTION * size * size)))

    images = Table(
        {
            "filename": [cal_filename(p.exposure, p.detector, filter_name) for p in placements],
            "exposure": [p.exposure for p in placements],
            "detector": [p.detector for p in placements],
            "observation_id": [observation_id(p.exposure) for p in placements],
            "sky_dn_s": image_skies,
            "sky_mjysr": image_skies * conversion,
            "exposure_time": [float(exposure_time)] * len(placements),
            "conversion_megajanskys": [conversion] * len(placements),
            "pointing_error_ra": [e.east for e in image_errors],
            "pointing_error_dec": [e.north for e in image_errors],
            "roll_error": [e.roll for e in image_errors],
        }
    )
    images["sky_dn_s"].unit = "DN / s"
    images["sky_mjysr"].unit = "MJy / sr"
    images["exposure_time"].unit = "s"
    images["pointing_error_ra"].unit = "arcsec"
    images["pointing_error_dec"].unit = "arcsec"
    images["roll_error"].unit = "deg"
    yield sources, images

    stars, galaxies = _source_arrays(sources, "star"), _source_arrays(sources, "galaxy")
    for geometry, sky, error in zip(geometries, image_skies, image_errors, strict=True):
        p = geometry.placement
        # A detector's read noise and hot pixels are redrawn from its own stream
        # for each exposure (identical every time) rather than kept: 18 full-size
        # read-noise maps would take over a gigabyte.
        detector = render.draw_detector(
            _rng(seed, _DETECTOR, p.detector), (size, size), read_noise=READ_NOISE,
            n_hot=n_hot_pixels,
        )
        scene = _render_scene(geometry, stars, galaxies, psf_fwhm, table_psf)
        arrays, (rows, cols, values) = render.expose(
            scene, conversion=conversion, sky=float(sky),
            detector=detector, exposure_time=exposure_time, gain=GAIN,
            flat_error=FLAT_ERROR, rng=_rng(seed, _EXPOSURE, p.exposure, p.detector, *band),
            noise=noise, cosmic_ray_rate=cosmic_ray_rate,
        )
        del scene, detector
        info = ExposureInfo(
            exposure=p.exposure, detector=p.detector, n_exposures=n_exposures,
            filter_name=filter_name, exposure_time=float(exposure_time), conversion=conversion,
            ra_target=float(ra), dec_target=float(dec),
        )
        # The scene was rendered with the true geometry; the file records the
        # wrong one, as a pointing error would leave it.
        recorded = ImageGeometry(recorded_placement(p, error)) if error else geometry
        model = build_image_model(arrays, recorded, info)
        cosmic_rays = Table(
            {
                "filename": np.full(len(rows), model.meta.filename, dtype="U64"),
                "x": cols.astype(np.int64),
                "y": rows.astype(np.int64),
                "value_dn_s": values,
            }
        )
        yield model, cosmic_rays
        # Let the caller's reference be the last one, so a written model is freed.
        del model, arrays


def _options(arguments):
    """The simulation options among a public function's arguments."""
    return {k: v for k, v in arguments.items()
            if k not in ("outdir", "product_name", "second_filter")}


def band_colours(seed, n_sources, scatter=COLOUR_SCATTER):
    """Colours (second band minus first, AB mag) of a simulated scene's sources.

    Parameters
    ----------
    seed : int
        The simulation's seed: the same seed gives the same colours.
    n_sources : int
        Rows of the sources truth table.
    scatter : float
        Standard deviation of the colours (mag), centred on 0.

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> bool(np.all(band_colours(1, 5) == band_colours(1, 5)))
    True
    """
    return _rng(seed, _COLOUR).normal(0.0, scatter, n_sources)


def _apply_colours(sources, colours):
    """Make a truth table's sources fainter by ``colours`` magnitudes (in place)."""
    factor = 10.0 ** (-0.4 * colours)
    sources["mag_ab"] += colours
    sources["flux_njy"] *= factor
    sources["flux_mjysr_pix"] *= factor


def _empty_cosmic_rays():
    return Table(
        {
            "filename": np.array([], dtype="U64"),
            "x": np.array([], dtype=np.int64),
            "y": np.array([], dtype=np.int64),
            "value_dn_s": np.array([], dtype=float),
        }
    )


def _stack_cosmic_rays(tables):
    table = vstack(tables) if tables else _empty_cosmic_rays()
    table["value_dn_s"].unit = "DN / s"
    return table


def make_image_models(*, n_exposures=4, n_detectors=1, size=512, seed=0, ra=80.0, dec=-30.0,
                      filter_name="F158", n_stars=None, n_galaxies=None,
                      cosmic_ray_rate=COSMIC_RAY_RATE, distortion=False, sky_levels=None,
                      exposure_time=EXPOSURE_TIME, noise=True, roll=None, n_hot_pixels=None,
                      psf_fwhm=PSF_FWHM, detector_sky_scatter=DETECTOR_SKY_SCATTER,
                      pointing_error=0.0, roll_error=0.0, psf="gaussian",
                      star_mag_range=None):
    """Simulate a dithered set of Level-2 images in memory.

    Parameters
    ----------
    n_exposures : int
        Dithered exposures (default 4).
    n_detectors : int
        Detectors per exposure, laid out on a grid with small gaps (default 1).
    size : int
        Pixels on a side of each detector (default 512; at least 64).
    seed : int
        Seed of every random choice; the same seed gives identical arrays.
    ra, dec : float
        Scene centre in degrees, covered by every exposure (default 80, -30).
    filter_name : str
        WFI imaging filter (default "F158").
    n_stars, n_galaxies : int or None
        Source counts; None scales them with the footprint area.
    cosmic_ray_rate : float
        Cosmic-ray hits per pixel per exposure (default 1e-4; 0 for none).
    distortion : bool or float
        Add a mild polynomial distortion (True), or one with this corner
        displacement in pixels.
    sky_levels : sequence of float or None
        Sky in DN/s, one value per exposure (shared by its detectors) or one
        per image (exposure-then-detector order), used as given. When None,
        each exposure's sky is drawn from 0.3-1.5 DN/s and each of its
        detectors differs from it by ``detector_sky_scatter``.
    exposure_time : float
        Seconds (default 139.8).
    noise : bool
        False renders without random noise (default True).
    roll : float or None
        Mean position angle of the detectors' +y axis, degrees east of
        north; random when None.
    n_hot_pixels : int or None
        Hot pixels per detector; None scales with the detector area.
    psf_fwhm : float
        FWHM of the Gaussian PSF in arcsec (default 0.15); with
        ``psf="airy"``, galaxies are blurred by a Gaussian of the diffraction
        PSF's own FWHM instead.
    detector_sky_scatter : float
        Relative standard deviation of a detector's sky about its exposure's
        when skies are drawn (default 0.1, clipped at 2.5 sigma; 0 gives one
        sky per exposure).
    pointing_error : float
        Error of each exposure's recorded pointing, arcsec (default 0): the
        recorded boresight is exactly this far from the true one, in a random
        direction drawn per exposure.
    roll_error : float
        Error of each exposure's recorded roll, degrees (default 0), with a
        random sign per exposure. The scene is always rendered with the true
        WCS; with either error, ``meta.wcs`` (and ``meta.wcsinfo``,
        ``meta.pointing``) record the wrong one, moving all detectors of an
        exposure together. The errors come from a random stream of their own,
        so every array is the same as without them.
    psf : {"gaussian", "airy"}
        Stars' PSF: a Gaussian of ``psf_fwhm`` (default), or the diffraction
        pattern of Roman's obscured aperture with rings and six diffraction
        spikes, averaged over the filter's band (FWHM about 0.14″ in F158;
        see `romosaic.simulate.psf`).
    star_mag_range : tuple of float, optional
        ``(bright, faint)`` AB magnitude limits of the stars other than the
        guaranteed bright ones (default 17-25); counts rise towards faint
        magnitudes.

    Returns
    -------
    models : list of roman_datamodels.datamodels.ImageModel
        In exposure-then-detector order.
    sources : astropy.table.Table
        Truth table of the scene (see `romosaic.simulate.scene.make_scene`).
    images : astropy.table.Table
        One row per image: filename, exposure, detector, observation_id,
        sky_dn_s, sky_mjysr, exposure_time, conversion_megajanskys, and the
        exposure's pointing_error_ra, pointing_error_dec (arcsec, recorded
        minus true boresight, east and north) and roll_error (deg, recorded
        minus true roll).
    cosmic_rays : astropy.table.Table
        Every pixel hit by a cosmic ray: filename, x, y, value_dn_s (added DN/s).

    Raises
    ------
    romosaic.errors.RomosaicInputError
        For impossible options.
    """
    stream = _simulate(**_options(locals()))
    sources, images = next(stream)
    models, cosmic_rays = [], []
    for model, hits in stream:
        models.append(model)
        cosmic_rays.append(hits)
    return models, sources, images, _stack_cosmic_rays(cosmic_rays)


def simulate_association(outdir, *, n_exposures=4, n_detectors=1, size=512, seed=0, ra=80.0,
                         dec=-30.0, filter_name="F158", product_name=None, n_stars=None,
                         n_galaxies=None, cosmic_ray_rate=COSMIC_RAY_RATE, distortion=False,
                         sky_levels=None, exposure_time=EXPOSURE_TIME, noise=True, roll=None,
                         n_hot_pixels=None, psf_fwhm=PSF_FWHM,
                         detector_sky_scatter=DETECTOR_SKY_SCATTER, pointing_error=0.0,
                         roll_error=0.0, psf="gaussian", star_mag_range=None,
                         second_filter=None, colour_scatter=COLOUR_SCATTER):
    """Simulate a dithered set of Level-2 images and write them with an association.

    Parameters
    ----------
    outdir : str or pathlib.Path
        Output directory, created if needed.
    product_name : str or None
        Association product name; default ``sim_<filter>`` (e.g. ``sim_f158``).
    n_exposures, n_detectors, size, seed, ra, dec, filter_name : optional
        As for `make_image_models`.
    n_stars, n_galaxies, cosmic_ray_rate, distortion, sky_levels : optional
        As for `make_image_models`.
    exposure_time, noise, roll, n_hot_pixels, psf_fwhm, detector_sky_scatter : optional
        As for `make_image_models`.
    pointing_error, roll_error : float, optional
        As for `make_image_models`: the files record a WCS wrong by this much.
    psf, star_mag_range : optional
        As for `make_image_models`.
    second_filter : str, optional
        Also simulate the same scene, through the same pointings, in this
        filter: each source is fainter there by a random colour (normal,
        ``colour_scatter`` mag; `band_colours`), with its own noise and
        cosmic rays. Both bands drizzle onto the same grid, so the second
        band can be measured in the first band's segments (forced
        photometry). The second product is ``sim_<second filter>`` (or
        ``<product_name>_<filter>`` for both when ``product_name`` is given).
    colour_scatter : float
        Standard deviation of the colours in magnitudes (default 0.3).

    Returns
    -------
    SimulationResult
        Paths of everything written, and the truth tables; with
        ``second_filter``, ``second_band`` is the second filter's.

    Notes
    -----
    Writes ``<product>_asn.json``, one ``*_cal.asdf`` file per image, and the
    truth tables ``<product>_truth_sources.ecsv``, ``<product>_truth_images.ecsv``
    and ``<product>_truth_cosmic_rays.ecsv``, and ``<product>_refcat.ecsv``, the
    true star positions (`reference_catalog`), always, so that alignment can be
    tried on any simulation (as ``abs_refcat`` of ``tweakreg``). With two
    bands, each band's files are written, and both sources truth tables
    carry every band's fluxes and magnitudes as ``flux_njy_<filter>`` and
    ``mag_ab_<filter>`` (``flux_njy`` and ``mag_ab`` are their own band's).
    Each model is written and released before the next is simulated, so
    memory stays at about one image's worth.
    """
    options = _options(locals())
    outdir = Path(outdir)
    if second_filter is None:
        if product_name is None:
            product_name = f"sim_{filter_name.lower()}"
        outdir.mkdir(parents=True, exist_ok=True)
        return _write_band(outdir, options, product_name)
    if second_filter.upper() == filter_name.upper():
        raise RomosaicInputError(f"second_filter must differ from filter {filter_name}")
    if not colour_scatter >= 0:
        raise RomosaicInputError(f"colour_scatter must not be negative, not {colour_scatter}")
    bands = (filter_name.upper(), second_filter.upper())
    names = [f"{product_name}_{band.lower()}" if product_name else f"sim_{band.lower()}"
             for band in bands]
    outdir.mkdir(parents=True, exist_ok=True)
    results = [
        _write_band(outdir, options, names[0]),
        _write_band(outdir, {**options, "filter_name": bands[1], "second_band": True},
                    names[1]),
    ]
    for result in results:
        for band, other in zip(bands, results, strict=True):
            result.sources[f"flux_njy_{band.lower()}"] = other.sources["flux_njy"]
            result.sources[f"mag_ab_{band.lower()}"] = other.sources["mag_ab"]
        write_table(result.sources, result.truth_sources_path)
    results[0].second_band = results[1]
    return results[0]


def _write_band(outdir, options, product_name):
    """Simulate one band and write its files; the `SimulationResult`."""
    stream = _simulate(**options)
    sources, images = next(stream)
    cal_paths, cosmic_rays = [], []
    for model, hits in stream:
        path = atomic_save_model(model, outdir / model.meta.filename)
        cal_paths.append(path)
        cosmic_rays.append(hits)
        del model
    cosmic_rays = _stack_cosmic_rays(cosmic_rays)

    asn_path = outdir / f"{product_name}_asn.json"
    write_association(asn_path, product_name, [p.name for p in cal_paths])
    paths = {
        kind: outdir / f"{product_name}_truth_{kind}.ecsv"
        for kind in ("sources", "images", "cosmic_rays")
    }
    write_table(sources, paths["sources"])
    write_table(images, paths["images"])
    write_table(cosmic_rays, paths["cosmic_rays"])
    refcat = reference_catalog(sources)
    refcat_path = outdir / f"{product_name}_refcat.ecsv"
    write_table(refcat, refcat_path)
    return SimulationResult(
        asn_path=asn_path,
        product_name=product_name,
        cal_paths=cal_paths,
        truth_sources_path=paths["sources"],
        truth_images_path=paths["images"],
        truth_cosmic_rays_path=paths["cosmic_rays"],
        sources=sources,
        images=images,
        cosmic_rays=cosmic_rays,
        refcat_path=refcat_path,
        refcat=refcat,
    )


def reference_catalog(sources):
    """An astrometric reference catalogue: the true positions of the stars.

    Galaxies are left out: their centroids depend on the filter and on how
    they are measured, which would bias an alignment.

    Parameters
    ----------
    sources : astropy.table.Table
        The sources truth table of a simulation.

    Returns
    -------
    astropy.table.Table
        One row per star: ``ra``, ``dec`` (deg), ``mag`` (AB), ``flux``
        (nJy) and ``source_id`` (the row's id in the sources table).

    Examples
    --------
    >>> from romosaic.simulate import make_image_models, reference_catalog
    >>> models, sources, images, hits = make_image_models(n_exposures=1, size=64)
    >>> reference_catalog(sources).colnames
    ['ra', 'dec', 'mag', 'flux', 'source_id']
    """
    stars = sources[sources["kind"] == "star"]
    table = Table(
        {
            "ra": np.asarray(stars["ra"], dtype=float),
            "dec": np.asarray(stars["dec"], dtype=float),
            "mag": np.asarray(stars["mag_ab"], dtype=float),
            "flux": np.asarray(stars["flux_njy"], dtype=float),
            "source_id": np.asarray(stars["source_id"]),
        }
    )
    table["ra"].unit = "deg"
    table["dec"].unit = "deg"
    table["mag"].unit = "mag"
    table["flux"].unit = "nJy"
    table.meta["comments"] = ["True positions of the simulated stars (ICRS)."]
    return table
