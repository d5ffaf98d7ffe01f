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
    find = actions.add_parser("find", help="list the skycells that Level-2 files touch")
    find.add_argument("files", nargs="+", metavar="FILES", help="Level-2 *_cal.asdf files")
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
    from . import skycells_for_image
    from .skycell_asn import read_image_geometry

    for path in args.files:
        image = read_image_geometry(path)
        names = [cell.name for cell in skycells_for_image(image.wcs, image.shape)]
        print(f"{path}: {' '.join(names) if names else '(none)'}")
    return 0


def _run_skycell_asn(args):
    from .skycell_asn import write_skycell_associations

    for path in write_skycell_associations(args.files, root=args.output_root,
                                           product_type=args.product_type,
                                           data_release_id=args.data_release_id):
        print(path)
    return 0
