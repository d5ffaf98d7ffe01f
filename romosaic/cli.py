"""The ``romosaic`` command: tools around the ``strun roman_mos`` pipeline.

Each sub-command lives next to the code it drives and contributes its own
argument parser through a ``add_cli_parser(subparsers)`` function; this module
only assembles them and keeps one convention for all of them:

* options are spelled with dashes (``--output-dir``); a command that runs the
  pipeline (``survey run``, ``custom-mosaic``) also takes every option of
  ``strun roman_mos`` as strun spells it (``--on_disk=true``,
  ``--steps.resample.pixfrac=0.8``): a sub-command that sets
  ``pipeline_options=[]`` as a default receives them there;
* ``-o`` names where the command writes: its output file, or the path
  prefix (or directory) of the files it writes;
* exit status 0 on success, 1 when the work failed (a task, a mosaic), 2 for
  bad input or usage, reported in one line as ``romosaic COMMAND: error:
  ...``, and 130 when interrupted.
"""

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import RomosaicInputError

__all__ = ["main"]

# Sub-command modules, imported lazily so that ``romosaic --help`` stays fast.
_SUBCOMMAND_MODULES = (
    "romosaic.simulate.cli",
    "romosaic.associations",
    "romosaic.preview",
    "romosaic.export_fits",
    "romosaic.skycell.cli",
    "romosaic.custom_mosaic.cli",
    "romosaic.survey.cli",
    "romosaic.transforms",
    "romosaic.reference_pars",
)


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="romosaic",
        description="Mosaics from Roman WFI Level-2 exposures. "
        "Run the pipeline itself with `strun roman_mos ASN.json`.",
    )
    parser.add_argument("--version", action="version", version=f"romosaic {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks for errors"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_cli_parser(subparsers)
    return parser


def main(argv=None):
    """Run the ``romosaic`` command line; returns the exit status."""
    parser = _build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        if getattr(args, "pipeline_options", None) is None:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        stray = [word for word in extras if not word.startswith("-")]
        if stray:
            parser.error(f"unexpected argument {stray[0]!r}: pipeline options take the "
                         "form --name=value (e.g. --steps.resample.pixfrac=0.8)")
        args.pipeline_options = [*args.pipeline_options, *extras]
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s - %(message)s")
    try:
        return args.run(args) or 0
    except RomosaicInputError as error:
        if args.debug:
            raise
        print(f"romosaic {args.command}: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(f"romosaic {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
