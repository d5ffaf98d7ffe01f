"""Parameter files of the reference pipeline, made runnable with ``strun``.

A parameter file names the class that reads it, and ``strun FILE`` imports
that class: a file the reference (romancal) wrote would load the
reference's pipeline, which need not be installed. Python callers pass such
a file to romosaic's classes directly
(``MosaicPipeline.call(asn, config_file=FILE)``); on the command line,
``romosaic convert-pars FILE -o COPY`` writes a copy that names romosaic's
classes instead, with every parameter as it was, and ``strun COPY asn.json``
runs it. romosaic accepts every parameter of the reference's steps (see
``docs/compatibility.rst``), so nothing needs translating but the classes.
"""

from pathlib import Path

from ._stpipe_integration import get_steps
from .errors import RomosaicInputError

__all__ = ["convert_parameter_file", "romosaic_class_for"]

# The packages whose step classes have romosaic counterparts of the same name.
_KNOWN_PACKAGES = ("romancal", "romosaic")


def _romosaic_classes():
    return {dotted.rsplit(".", 1)[1]: dotted for dotted, _, _ in get_steps()}


def romosaic_class_for(class_name):
    """romosaic's class for the step or pipeline class a parameter file names.

    Parameters
    ----------
    class_name : str
        Dotted class name, e.g. ``romancal.resample.resample_step.ResampleStep``.

    Returns
    -------
    str
        The dotted name of romosaic's class of the same name.

    Raises
    ------
    RomosaicInputError
        When romosaic has no such class.
    """
    package = str(class_name).split(".", 1)[0]
    short = str(class_name).rsplit(".", 1)[-1]
    classes = _romosaic_classes()
    if package not in _KNOWN_PACKAGES or short not in classes:
        known = ", ".join(sorted(classes))
        raise RomosaicInputError(
            f"class {class_name!r} has no romosaic counterpart (romosaic has {known})")
    return classes[short]


def convert_parameter_file(source, destination):
    """Write a copy of a parameter file that names romosaic's classes.

    Parameters
    ----------
    source : str or os.PathLike
        An stpipe parameter file (ASDF) of the reference pipeline or one of
        its steps.
    destination : str or os.PathLike
        Where to write the copy; replaced if it exists.

    Returns
    -------
    pathlib.Path
        ``destination``.
    """
    import asdf

    from ._atomic import atomic_output

    source, destination = Path(source), Path(destination)
    if not source.is_file():
        raise RomosaicInputError(f"{source}: file not found")
    if destination.exists() and destination.resolve() == source.resolve():
        raise RomosaicInputError(f"{destination}: the copy would replace its source")
    try:
        with asdf.open(source, lazy_load=False) as af:
            tree = _plain(dict(af.tree))
    except Exception as error:  # not ASDF, not YAML, truncated: all one message
        raise RomosaicInputError(f"{source}: not an ASDF parameter file ({error})") from None
    if "class" not in tree or not isinstance(tree.get("parameters", {}), dict):
        raise RomosaicInputError(f"{source}: not a parameter file (no 'class' to replace)")
    converted = {"class": romosaic_class_for(tree["class"])}
    for key in ("name", "parameters"):
        if key in tree:
            converted[key] = tree[key]
    steps = tree.get("steps") or []
    if steps:
        converted["steps"] = [dict(step, **{"class": romosaic_class_for(step["class"])})
                              for step in steps]
    with atomic_output(destination) as temp_path:
        asdf.AsdfFile(converted).write_to(temp_path)
    return destination


def _plain(value):
    """Dictionaries and lists of the ASDF tree as plain Python containers."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def add_cli_parser(subparsers):
    """Add the ``convert-pars`` sub-command to the ``romosaic`` command line.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        As returned by `argparse.ArgumentParser.add_subparsers`.

    Returns
    -------
    argparse.ArgumentParser
        The sub-command's parser.
    """
    parser = subparsers.add_parser(
        "convert-pars",
        help="copy a reference (romancal) parameter file for use with strun",
        description="Write a copy of a romancal parameter file (roman_mos or one of its "
        "steps) that names romosaic's classes, so that `strun COPY INPUT` runs romosaic "
        "with the same parameters.",
    )
    parser.add_argument("input", metavar="PARS.asdf", help="parameter file to convert")
    parser.add_argument("-o", "--output", metavar="COPY.asdf", required=True,
                        help="parameter file to write")
    parser.set_defaults(run=_run)
    return parser


def _run(args):
    path = convert_parameter_file(args.input, args.output)
    print(path)
    return 0
