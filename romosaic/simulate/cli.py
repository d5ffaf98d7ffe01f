"""The ``romosaic simulate`` sub-command: write a simulated association to a directory."""

from .instrument import (
    COLOUR_SCATTER,
    CONVERSION_MEGAJANSKYS,
    COSMIC_RAY_RATE,
    DETECTOR_SKY_SCATTER,
    EXPOSURE_TIME,
)

__all__ = ["add_cli_parser"]


def add_cli_parser(subparsers):
    """Add the ``simulate`` sub-command to an argparse subparsers object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        As returned by ``ArgumentParser.add_subparsers``.

    Returns
    -------
    argparse.ArgumentParser
        The sub-command's parser, with ``run`` set as its default.
    """
    parser = subparsers.add_parser(
        "simulate",
        help="write simulated WFI Level-2 images, an association and truth tables",
        description="Simulate a dithered set of Roman WFI Level-2 calibrated images of a "
        "scene of stars and galaxies, with an image association, ECSV truth tables and a "
        "reference catalogue of the true star positions. "
        "Prints the association's path.",
    )
    parser.add_argument("outdir", help="output directory (created if needed)")
    parser.add_argument(
        "--n-exposures", type=int, default=4, metavar="N", help="dithered exposures (4)"
    )
    parser.add_argument(
        "--n-detectors", type=int, default=1, metavar="M", help="detectors per exposure (1)"
    )
    parser.add_argument(
        "--size", type=int, default=512, metavar="PIX", help="pixels on a side of a detector (512)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (0)")
    parser.add_argument("--ra", type=float, default=80.0, help="scene centre RA in deg (80)")
    parser.add_argument("--dec", type=float, default=-30.0, help="scene centre Dec in deg (-30)")
    parser.add_argument(
        "--filter", dest="filter_name", default="F158", type=str.upper, metavar="F",
        choices=sorted(CONVERSION_MEGAJANSKYS),
        help=f"WFI filter, one of {', '.join(sorted(CONVERSION_MEGAJANSKYS))} (F158)",
    )
    parser.add_argument(
        "--second-filter", default=None, type=str.upper, metavar="F",
        choices=sorted(CONVERSION_MEGAJANSKYS),
        help="also simulate the same scene and pointings in this filter, with random "
             "colours: a second association on the same grid, for forced photometry",
    )
    parser.add_argument(
        "--colour-scatter", type=float, default=COLOUR_SCATTER, metavar="MAG",
        help=f"standard deviation of the sources' colours with --second-filter "
             f"({COLOUR_SCATTER:g})",
    )
    parser.add_argument(
        "--product-name", default=None, metavar="NAME",
        help="association product name (sim_<filter>; with --second-filter, "
             "NAME_<filter> for each band)",
    )
    parser.add_argument(
        "--n-stars", type=int, default=None, metavar="N", help="stars (scaled with the area)"
    )
    parser.add_argument(
        "--n-galaxies", type=int, default=None, metavar="N",
        help="galaxies (scaled with the area)",
    )
    parser.add_argument(
        "--cosmic-ray-rate", type=float, default=COSMIC_RAY_RATE, metavar="RATE",
        help=f"cosmic-ray hits per pixel per exposure ({COSMIC_RAY_RATE:g})",
    )
    parser.add_argument(
        "--sky-levels", type=float, nargs="+", default=None, metavar="DN_S",
        help="sky level in DN/s of each exposure, or of each image (random: 0.3-1.5 per "
             "exposure, each detector differing by --detector-sky-scatter)",
    )
    parser.add_argument(
        "--detector-sky-scatter", type=float, default=DETECTOR_SKY_SCATTER, metavar="F",
        help="relative scatter of the detectors' skies about their exposure's, when skies are "
             f"drawn ({DETECTOR_SKY_SCATTER:g}; 0 for one sky per exposure)",
    )
    parser.add_argument(
        "--exposure-time", type=float, default=EXPOSURE_TIME, metavar="SEC",
        help=f"exposure time in seconds ({EXPOSURE_TIME:g})",
    )
    parser.add_argument(
        "--roll", type=float, default=None, metavar="DEG",
        help="position angle of the detectors' +y axis, deg east of north (random)",
    )
    parser.add_argument(
        "--distortion", action="store_true", help="add a mild polynomial distortion"
    )
    parser.add_argument(
        "--pointing-error", type=float, default=0.0, metavar="ARCSEC",
        help="record each exposure's pointing wrong by this much, in a random direction "
             "(0: the recorded WCS is the true one)",
    )
    parser.add_argument(
        "--roll-error", type=float, default=0.0, metavar="DEG",
        help="record each exposure's roll wrong by this much, with a random sign (0)",
    )
    parser.add_argument(
        "--psf", choices=("gaussian", "airy"), default="gaussian",
        help="stars' PSF: a 0.15\" Gaussian, or Roman's diffraction pattern with rings and "
             "spikes (gaussian)",
    )
    parser.add_argument(
        "--star-mags", type=float, nargs=2, default=None, metavar=("BRIGHT", "FAINT"),
        help="magnitude range of the stars (17 25)",
    )
    parser.add_argument(
        "--output-pixel-scale", type=float, default=None, metavar="ARCSEC",
        help="also write <product>_roman_mos_pars.asdf, a roman_mos parameter file that "
             "drizzles onto pixels of this size (strun it with the association)",
    )
    parser.add_argument(
        "--no-noise", dest="noise", action="store_false", help="render without random noise"
    )
    parser.set_defaults(run=_run)
    return parser


def _run(args):
    """Run the simulation for parsed arguments; returns the exit status."""
    # Imported here so that ``romosaic --help`` does not load the data models.
    from ..errors import RomosaicInputError
    from .dataset import simulate_association

    scale = args.output_pixel_scale
    if scale is not None and not scale > 0:
        raise RomosaicInputError(f"--output-pixel-scale must be positive, not {scale}")

    result = simulate_association(
        args.outdir,
        n_exposures=args.n_exposures,
        n_detectors=args.n_detectors,
        size=args.size,
        seed=args.seed,
        ra=args.ra,
        dec=args.dec,
        filter_name=args.filter_name,
        product_name=args.product_name,
        n_stars=args.n_stars,
        n_galaxies=args.n_galaxies,
        cosmic_ray_rate=args.cosmic_ray_rate,
        distortion=args.distortion,
        sky_levels=args.sky_levels,
        detector_sky_scatter=args.detector_sky_scatter,
        exposure_time=args.exposure_time,
        noise=args.noise,
        roll=args.roll,
        pointing_error=args.pointing_error,
        roll_error=args.roll_error,
        psf=args.psf,
        star_mag_range=args.star_mags,
        second_filter=args.second_filter,
        colour_scatter=args.colour_scatter,
    )
    bands = [result] if result.second_band is None else [result, result.second_band]
    for band in bands:
        if scale is not None:
            _write_pipeline_parameters(
                band.asn_path.with_name(f"{band.product_name}_roman_mos_pars.asdf"), scale)
        print(band.asn_path)
    return 0


def _write_pipeline_parameters(path, pixel_scale):
    """A roman_mos parameter file with the resample step's output pixel size."""
    from ..pipeline import MosaicPipeline

    # A free grid: a simulated association names no skycell.
    pipeline = MosaicPipeline(resample_on_skycell=False,
                              steps={"resample": {"pixel_scale": float(pixel_scale)}})
    pipeline.export_config(str(path))
