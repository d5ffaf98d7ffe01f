"""Pipeline options passed through ``romosaic survey run`` to every task.

They are written as for ``strun roman_mos`` (``--on_disk=true``,
``--steps.resample.pixfrac=0.8``) and handed to each task's ``strun``-style
command line unchanged, so they mean exactly what they mean there. They are
checked once, before any task starts, so that a typo fails the run at once
rather than every task.
"""

import os
from pathlib import Path

from ..errors import RomosaicInputError

__all__ = ["PIPELINE_CLASS", "normalize_options", "options_to_config", "validate_options"]

#: The pipeline every task runs (a dotted class path, so that an alias
#: registered by another package cannot be picked up instead).
PIPELINE_CLASS = "romosaic.pipeline.MosaicPipeline"

# The survey decides where products go and always saves them.
_RESERVED = {"output_dir", "output_file", "save_results", "input_dir"}
# strun's own flags that are harmless in a task.
_LOGGING_FLAGS = {"verbose", "log-level"}


def normalize_options(arguments):
    """Check the form of pass-through options and return them as ``--key=value``.

    Parameters
    ----------
    arguments : sequence of str
        Command-line words, e.g. ``["--steps.resample.pixfrac=0.8"]``.

    Returns
    -------
    list of str
        The options, in the order given; option values naming an existing
        file relative to the current directory are made absolute, since a
        task runs elsewhere.

    Raises
    ------
    RomosaicInputError
        For a word that is not ``--key=value`` (``--verbose`` aside) or a key
        the survey sets itself.
    """
    normalized = []
    for word in arguments:
        if word in ("--verbose", "-v"):
            normalized.append("--verbose")
            continue
        if not word.startswith("--") or "=" not in word:
            raise RomosaicInputError(
                f"unexpected argument {word!r}: pipeline options take the form "
                "--name=value (e.g. --steps.resample.pixfrac=0.8)")
        key, value = word[2:].split("=", 1)
        if not key or key.startswith("-"):
            raise RomosaicInputError(f"option {word!r} has no name")
        if key in _RESERVED:
            raise RomosaicInputError(
                f"option --{key} is set by `romosaic survey run` itself and cannot be given")
        if value and not os.path.isabs(value) and Path(value).is_file():
            value = str(Path(value).resolve())
        normalized.append(f"--{key}={value}")
    return normalized


def options_to_config(options):
    """Nested parameter dictionary from ``--a.b.c=value`` options.

    Parameters
    ----------
    options : sequence of str
        As returned by `normalize_options`.

    Returns
    -------
    dict
        E.g. ``{"steps": {"resample": {"pixfrac": "0.8"}}}``; logging flags
        are left out.
    """
    config = {}
    for option in options:
        if option == "--verbose":
            continue
        key, value = option[2:].split("=", 1)
        if key in _LOGGING_FLAGS:
            continue
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RomosaicInputError(f"option --{key} conflicts with another option")
        node[leaf] = value
    return config


def _parse_value(value):
    """A command-line value read the way strun reads it (``1,2`` is a list)."""
    from configobj import ConfigObj, ConfigObjError

    try:
        return ConfigObj([f"value = {value}"])["value"]
    except (ConfigObjError, KeyError):
        return value


def validate_options(options):
    """Check pass-through options against the pipeline's parameters.

    Builds the pipeline with them as ``strun`` would (type conversion and
    allowed values from its spec) and runs each step's own parameter
    checks, without touching any data.

    Parameters
    ----------
    options : sequence of str
        As returned by `normalize_options`.

    Raises
    ------
    RomosaicInputError
        Naming the first bad option.
    """
    if not options:
        return
    from stpipe import config_parser

    from ..pipeline import MosaicPipeline

    def parse(node):
        return {key: parse(value) if isinstance(value, dict) else _parse_value(value)
                for key, value in node.items()}

    config = parse(options_to_config(options))
    try:
        parsed = config_parser.config_from_dict(
            config, spec=MosaicPipeline.load_spec_file(), root_dir=os.getcwd())
        pipeline = MosaicPipeline.from_config_section(parsed)
    except RomosaicInputError:
        raise
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise RomosaicInputError(f"pipeline option not accepted: {message}") from None
    for name in MosaicPipeline.step_defs:
        getattr(pipeline, name).check_parameters()
