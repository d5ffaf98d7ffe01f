"""``romosaic skycell`` and ``romosaic skycell-asn`` commands."""

import json

__all__ = ["add_cli_parser"]


def add_cli_parser(subparsers):
    """Add ``skycell`` (info, find) and ``skycell-asn`` to the ``romosaic`` command."""
    skycell = subparsers.add_parser(
        "skycell",
        help="look up skycells of the Roman sky tessellation",
        description="Look up skycells of the Roman sky tessellation (computed offline, or "
        "read from the table SKYMAP_PATH names).",
    )
    actions = skycell.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="print one skycell's geometry as JSON")
    info.add_argument("name", help="skycell name, e.g. 270p65x70y49")
    info.set_defaults(run=_run_info)
    find = actions.add_parser(
        "find", help="list the skycells that Level-2 files or a sky position touch",
        description="List the skycells that each of FILES touches, or, with --ra and --dec, "
        "the skycells that hold a position (or, with --radius, touch a circle round it), "
        "with the position's pixel on each skycell's grid.")
    find.add_argument("files", nargs="*", metavar="FILES", help="Level-2 *_cal.asdf files")
    find.add_argument("--ra", type=float, metavar="DEG", help="right ascension, degrees")
    find.add_argument("--dec", type=float, metavar="DEG", help="declination, degrees")
    find.add_argument("--radius", type=float, default=0.0, metavar="ARCSEC",
                      help="also list skycells within this many arcsec (default 0)")
    find.set_defaults(run=_run_find)

    asn = subparsers.add_parser(
        "skycell-asn",
        help="write one association per (skycell, filter) touched by Level-2 files",
        description="Write one association per (skycell, filter) touched by FILES, named "
        "ROOT_<release>_<full|pPASS|vVISIT>_<skycell>_<filter>_asn.json, with the skycell "
        "as target so that `strun roman_mos` resamples onto its grid. Only metadata is "
        "read from each file.",
    )
    asn.add_argument("files", nargs="+", metavar="FILES", help="Level-2 *_cal.asdf files")
    asn.add_argument("-o", "--output-root", required=True, metavar="ROOT",
                     help="name root of the associations (may include a directory)")
    asn.add_argument("--product-type", choices=("visit", "pass", "full"), default="visit",
                     help="one association per visit, per pass, or for all files "
                     "(default: visit, as the reference)")
    asn.add_argument("--data-release-id", default="p", help="data release id (default p)")
    asn.set_defaults(run=_run_skycell_asn)


def _run_info(args):
    from . import get_tessellation

    print(json.dumps(get_tessellation().skycell(args.name).summary(), indent=2))
    return 0


def _run_find(args):
    from ..errors import RomosaicInputError
    from . import skycells_for_image
    from .skycell_asn import read_image_geometry

    if (args.ra is None) != (args.dec is None):
        raise RomosaicInputError("give both --ra and --dec")
    if args.ra is not None:
        if args.files:
            raise RomosaicInputError("give FILES or --ra/--dec, not both")
        return _find_position(args.ra, args.dec, args.radius)
    if not args.files:
        raise RomosaicInputError("give FILES or --ra and --dec")
    for path in args.files:
        image = read_image_geometry(path)
        names = [cell.name for cell in skycells_for_image(image.wcs, image.shape)]
        print(f"{path}: {' '.join(names) if names else '(none)'}")
    return 0


def _find_position(ra, dec, radius_arcsec):
    from ..errors import RomosaicInputError
    from . import find_skycells_near

    if not -90.0 <= dec <= 90.0:
        raise RomosaicInputError(f"--dec {dec} is not between -90 and 90 degrees")
    if not radius_arcsec >= 0.0:
        raise RomosaicInputError(f"--radius must be >= 0 arcsec, got {radius_arcsec}")
    for cell, (x, y), inside in find_skycells_near(ra, dec, radius_arcsec=radius_arcsec):
        where = "inside" if inside else "outside, within the radius"
        print(f"{cell.name}  x={x:.1f} y={y:.1f}  ({where}; centre {cell.ra_center:.6f} "
              f"{cell.dec_center:.6f})")
    return 0


def _run_skycell_asn(args):
    from .skycell_asn import write_skycell_associations

    for path in write_skycell_associations(args.files, root=args.output_root,
                                           product_type=args.product_type,
                                           data_release_id=args.data_release_id):
        print(path)
    return 0
