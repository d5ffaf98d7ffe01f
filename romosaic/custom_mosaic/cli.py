"""``romosaic custom-mosaic``: one seamless mosaic of a projection region per filter."""

from pathlib import Path

__all__ = ["add_cli_parser"]


def add_cli_parser(subparsers):
    """Add ``custom-mosaic`` to the ``romosaic`` command."""
    parser = subparsers.add_parser(
        "custom-mosaic",
        help="one seamless mosaic per filter on a projection region's grid",
        description="Drizzle Level-2 images onto the pixel grid of the projection region "
        "whose tangent point is nearest their centre, cut to the rectangle they cover, "
        "aligning them first (tweakreg: relative, and absolute with --refcat) and "
        "running flux, skymatch, outlier_detection, resample and source_catalog. Writes "
        "PREFIX_<filter>_coadd.asdf, _cat.parquet and _segm.asdf per filter, and the log "
        "PREFIX.log. Any further --name=value options are pipeline options, as for strun "
        "(e.g. --steps.resample.pixfrac=0.8). Exit status 0 on success, 1 when the mosaic "
        "failed, 2 for bad input.",
    )
    parser.add_argument(
        "input", metavar="INPUT",
        help="a text file listing Level-2 *_cal.asdf files one per line (paths relative to "
        "the list's directory), or a glob pattern in quotes, e.g. 'data/*_cal.asdf'")
    parser.add_argument(
        "-l", "--log-level", default="info", metavar="LEVEL",
        help="debug, info, warning, error or critical, for the screen and the log file "
        "(default: info)")
    parser.add_argument(
        "-o", "--output-prefix", default=None, metavar="PREFIX",
        help="path prefix of the products: a name (e.g. field), or a directory and a name "
        "(out/field), relative to --output-dir (default name: "
        "skycell-p<pppp>-ra<DDD>d<dddd>-dec<n|s><DD>d<dddd> from the region)")
    parser.add_argument("--output-dir", default=".", metavar="DIR",
                        help="directory for the products and the log (default: .)")
    parser.add_argument("--coarse", action="store_true",
                        help="also make PREFIX_<filter>_coarse_* products at 0.11 arcsec, "
                        "each pixel a 2x2 block of the 0.055 arcsec grid")
    parser.add_argument("--memory-budget", type=float, default=None, metavar="MIB",
                        help="MiB of drizzle planes held in memory; beyond it they are "
                        "memory-mapped files (default: the steps' memory_budget, 64)")
    align = parser.add_mutually_exclusive_group()
    align.add_argument("--refcat", default=None, metavar="FILE",
                       help="also align to this reference catalogue: an ECSV, Parquet or FITS "
                       "table with RA/Dec columns in degrees (default: relative alignment only)")
    align.add_argument("-s", "--skip-alignment", action="store_true",
                       help="keep the inputs' WCS as recorded (no tweakreg)")
    disk = parser.add_mutually_exclusive_group()
    disk.add_argument("--on-disk", dest="on_disk", action="store_const", const=True,
                      default=None, help="keep models in temporary files (default: when the "
                      "inputs would take over a quarter of the memory)")
    disk.add_argument("--in-memory", dest="on_disk", action="store_const", const=False,
                      help="keep models in memory")
    parser.set_defaults(run=_run, pipeline_options=[])


def _run(args):
    from ..errors import RomosaicInputError
    from ..pipeline.options import normalize_options, parse_options, validate_options
    from .mosaic import perform

    if args.memory_budget is not None and not args.memory_budget >= 1:
        raise RomosaicInputError("--memory-budget must be >= 1 MiB")
    options = normalize_options(args.pipeline_options, command="romosaic custom-mosaic")
    validate_options(options)
    pipeline = parse_options(options)
    steps = pipeline.pop("steps", {})
    on_disk = args.on_disk
    if "on_disk" in pipeline:
        if on_disk is not None and on_disk != pipeline["on_disk"]:
            raise RomosaicInputError("--on_disk and --on-disk/--in-memory disagree")
        on_disk = pipeline.pop("on_disk")
    if pipeline:
        raise RomosaicInputError(
            f"pipeline option --{next(iter(pipeline))} is set by `romosaic custom-mosaic` "
            "itself; give step options as --steps.<step>.<parameter>=value")
    output_dir, prefix = Path(args.output_dir), args.output_prefix
    if prefix is not None and Path(prefix).name != prefix:
        output_dir, prefix = output_dir / Path(prefix).parent, Path(prefix).name
    return perform(args.input, log_level=args.log_level, output_file_prefix=prefix,
                   output_dir=output_dir, coarse=args.coarse, on_disk=on_disk,
                   memory_budget=args.memory_budget, align=not args.skip_alignment,
                   refcat=args.refcat, steps=steps)
