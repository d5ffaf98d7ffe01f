"""Association files: reading, validating and writing them.

An association (REFERENCE §2 of the developer notes; the format written by the
reference tool ``asn_from_list``) is a JSON object whose only required key is
``products``: a list holding one product with a ``name`` and a list of
``members``, each with an ``expname`` (relative to the association file's
directory) and an ``exptype``. romosaic processes the members whose exptype is
``science``.

Everything that can be wrong with an association is reported as an
`~romosaic.errors.AssociationError` whose message names the file and the
problem, before any image is opened.
"""

import json
import os
from pathlib import Path

from .errors import AssociationError

__all__ = [
    "SCIENCE_EXPTYPE",
    "load_association",
    "make_association",
    "product_name_from_filename",
    "science_member_paths",
    "validate_association",
    "write_association",
]

SCIENCE_EXPTYPE = "science"

# Suffixes stripped from an input file name to make a product name from it.
_LEVEL2_SUFFIXES = ("_cal", "_asn")


def load_association(path):
    """Read and validate an association file.

    Parameters
    ----------
    path : str or os.PathLike
        The association JSON file.

    Returns
    -------
    asn : dict
        The validated association, with ``table_name`` set to the file name.

    Raises
    ------
    AssociationError
        If the file is missing, is not JSON, or fails `validate_association`.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AssociationError(f"{path}: association file not found") from None
    except IsADirectoryError:
        raise AssociationError(f"{path}: is a directory, not an association file") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise AssociationError(f"{path}: cannot read association file ({reason})") from None
    if not text.strip():
        raise AssociationError(f"{path}: association file is empty")
    try:
        asn = json.loads(text)
    except json.JSONDecodeError as error:
        raise AssociationError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    validate_association(asn, base_dir=path.parent, source=str(path))
    asn["table_name"] = path.name
    return asn


def validate_association(asn, *, base_dir=None, source="association"):
    """Check an association dictionary, raising on the first problem found.

    Checks: it is a JSON object; ``products`` is a list of exactly one product;
    the product's name, if present, is a plain file name; ``members`` is a
    non-empty list of objects with a string ``expname`` that is a local path
    (not a URL); at least one member is a science member; no science member
    is listed twice, under any spelling of its path (when ``base_dir`` is
    given, paths are compared after following symbolic links); every science
    member's file exists (when ``base_dir`` is given).

    Parameters
    ----------
    asn : dict
        The association.
    base_dir : str or os.PathLike, optional
        Directory that member paths are relative to. If None, member files are
        not checked for existence.
    source : str, optional
        How to name the association in error messages (usually its path).

    Raises
    ------
    AssociationError
    """
    if not isinstance(asn, dict):
        raise AssociationError(f"{source}: an association must be a JSON object")
    products = asn.get("products")
    if not isinstance(products, list) or not products:
        raise AssociationError(f"{source}: association has no products")
    if len(products) > 1:
        raise AssociationError(
            f"{source}: association has {len(products)} products; "
            "romosaic makes one mosaic per association"
        )
    product = products[0]
    if not isinstance(product, dict):
        raise AssociationError(f"{source}: product must be a JSON object")
    if "name" in product:
        _check_product_name(product["name"], source)
    members = product.get("members")
    if not isinstance(members, list) or not members:
        raise AssociationError(f"{source}: product has no members")
    for index, member in enumerate(members):
        if not isinstance(member, dict) or not isinstance(member.get("expname"), str):
            raise AssociationError(f"{source}: member {index} has no 'expname' file name")
        if not member["expname"].strip():
            raise AssociationError(f"{source}: member {index} has an empty 'expname'")
        if "://" in member["expname"] or "\0" in member["expname"]:
            raise AssociationError(
                f"{source}: member {member['expname']!r} is not a local file path "
                "(romosaic reads only local files)")
        exptype = member.get("exptype", SCIENCE_EXPTYPE)
        if not isinstance(exptype, str):
            raise AssociationError(f"{source}: member {index} has a non-string 'exptype'")

    science = [m for m in members if _is_science(m)]
    if not science:
        raise AssociationError(f"{source}: association has no science members")

    seen = {}
    for member in science:
        key = os.path.normpath(member["expname"])
        if base_dir is not None:
            key = os.path.realpath(os.path.join(base_dir, member["expname"]))
        if key in seen:
            first = seen[key]["expname"]
            also = "" if first == member["expname"] else f" (also as {first})"
            raise AssociationError(
                f"{source}: member {member['expname']} is listed more than once{also}"
            )
        seen[key] = member

    if base_dir is not None:
        missing = [
            m["expname"] for m in science if not (Path(base_dir) / m["expname"]).is_file()
        ]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise AssociationError(f"{source}: member file not found: {missing[0]}{more}")


def _is_science(member):
    return str(member.get("exptype", SCIENCE_EXPTYPE)).lower() == SCIENCE_EXPTYPE


def _check_product_name(name, source):
    if not isinstance(name, str) or not name.strip():
        raise AssociationError(f"{source}: product name must be a non-empty string")
    if (
        "/" in name
        or "\\" in name
        or "\0" in name
        or name in (".", "..")
        or name != name.strip()
    ):
        raise AssociationError(
            f"{source}: product name {name!r} is not a plain file name"
        )


def science_member_paths(asn, base_dir):
    """Absolute paths of an association's science members, in order.

    Parameters
    ----------
    asn : dict
        A validated association.
    base_dir : str or os.PathLike
        Directory that member paths are relative to.

    Returns
    -------
    list of pathlib.Path
    """
    members = asn["products"][0]["members"]
    return [(Path(base_dir) / m["expname"]).resolve() for m in members if _is_science(m)]


def product_name_from_filename(filename):
    """A product name derived from an input file name.

    ``r0001_..._cal.asdf`` becomes ``r0001_...``; an association file
    ``field_asn.json`` becomes ``field``.

    Parameters
    ----------
    filename : str or os.PathLike

    Returns
    -------
    str
    """
    stem = Path(filename).name.split(".")[0]
    for suffix in _LEVEL2_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def make_association(
    files,
    *,
    product_name,
    target=None,
    relative_to=None,
    program="noprogram",
    data_release_id="p",
    asn_id="a3001",
    skycell_wcs_info=None,
):
    """Build an association dictionary for a list of Level-2 files.

    Parameters
    ----------
    files : list of str or os.PathLike
        The science members.
    product_name : str
        Name of the product; outputs are named ``<product_name>_<suffix>``.
    target : str, optional
        Target name; a skycell name makes the mosaic use that skycell's grid.
        Stored as the string "None" when not given, as the reference does.
    relative_to : str or os.PathLike, optional
        Write member paths relative to this directory (the association's).
    program, data_release_id, asn_id : str, optional
        Bookkeeping fields copied into the association.
    skycell_wcs_info : dict, optional
        The skycell's WCS numbers; stored as "none" when not given.

    Returns
    -------
    dict
    """
    _check_product_name(product_name, "product name")
    members = []
    for filename in files:
        path = Path(filename)
        if relative_to is not None:
            path = Path(os.path.relpath(path.resolve(), Path(relative_to).resolve()))
        members.append({"expname": path.as_posix(), "exptype": SCIENCE_EXPTYPE})
    return {
        "asn_type": "image",
        "asn_rule": "DMS_ELPP_Base",
        "version_id": None,
        "code_version": _romosaic_version(),
        "degraded_status": "No known degraded exposures in association.",
        "program": program,
        "constraints": "No constraints",
        "asn_id": asn_id,
        "target": target if target else "None",
        "asn_pool": "none",
        "data_release_id": data_release_id,
        "skycell_wcs_info": skycell_wcs_info if skycell_wcs_info else "none",
        "products": [{"name": product_name, "members": members}],
    }


def _romosaic_version():
    from . import __version__

    return __version__


def write_association(path, asn):
    """Write an association to a JSON file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    asn : dict
        The association.

    Returns
    -------
    pathlib.Path
    """
    from ._atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(asn, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------
# ``romosaic asn-from-list``


def add_cli_parser(subparsers):
    """Add the ``asn-from-list`` sub-command to the ``romosaic`` command."""
    parser = subparsers.add_parser(
        "asn-from-list",
        help="write an association for a list of Level-2 files",
        description="Write an image association (the format of the reference "
        "pipeline's asn_from_list) listing FILES as science members. Member "
        "paths are written relative to the association's directory.",
    )
    parser.add_argument("files", nargs="+", metavar="FILES", help="Level-2 *_cal.asdf files")
    parser.add_argument("-o", "--output", required=True, help="association file to write")
    parser.add_argument("--product-name", required=True, help="name of the output product")
    parser.add_argument("--target", default=None, help="target name, e.g. a skycell name")
    parser.add_argument("--data-release-id", default="p", help="data release id (default p)")
    parser.set_defaults(run=_run_asn_from_list)
    return parser


def _run_asn_from_list(args):
    output = Path(args.output)
    for filename in args.files:
        if not Path(filename).is_file():
            raise AssociationError(f"{filename}: file not found")
    asn = make_association(
        args.files,
        product_name=args.product_name,
        target=args.target,
        relative_to=output.parent,
        data_release_id=args.data_release_id,
    )
    write_association(output, asn)
    print(output)
    return 0
