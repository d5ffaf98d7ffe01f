"""Pipeline options on ``romosaic`` command lines.

``romosaic survey run`` and ``romosaic custom-mosaic`` accept every option of
``strun roman_mos``, written as there (``--on_disk=true``,
``--steps.resample.pixfrac=0.8``), so that they mean exactly what they mean
there: the survey hands them to each task's ``strun``-style command line
unchanged, the custom mosaic gives them to the pipeline it runs
(`parse_options`). They are checked once, before any work starts, so that a
typo fails the command at once rather than every task.
"""

import os
from pathlib import Path

from ..errors import RomosaicInputError

__all__ = ["PIPELINE_CLASS", "normalize_options", "options_to_config", "parse_options",
           "validate_options"]

#: The pipeline every task runs (a dotted class path, so that an alias
#: registered by another package cannot be picked up instead).
PIPELINE_CLASS = "romosaic.pipeline.MosaicPipeline"

# The commands decide where products go and always save them.
_RESERVED = {"output_dir", "output_file", "save_results", "input_dir"}
# strun's own flags that are harmless in a task.
_LOGGING_FLAGS = {"verbose", "log-level"}


def normalize_options(arguments, *, command="romosaic survey run"):
    """Check the form of pass-through options and return them as ``--key=value``.

    Parameters
    ----------
    arguments : sequence of str
        Command-line words, e.g. ``["--steps.resample.pixfrac=0.8"]``.
    command : str, optional
        The command they were given to, for messages.

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
                f"option --{key} is set by `{command}` itself and cannot be given")
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
    from .mosaic_pipeline import MosaicPipeline

    parsed = _parsed_config(options)
    try:
        pipeline = MosaicPipeline.from_config_section(parsed)
    except RomosaicInputError:
        raise
    except Exception as error:
        raise RomosaicInputError(f"pipeline option not accepted: {_first_line(error)}") from None
    for name in MosaicPipeline.step_defs:
        getattr(pipeline, name).check_parameters()


def parse_options(options):
    """The values of pipeline options, typed as the pipeline's spec types them.

    Parameters
    ----------
    options : sequence of str
        As returned by `normalize_options`.

    Returns
    -------
    dict
        Only the parameters given, nested as `options_to_config` nests them:
        ``{"on_disk": True, "steps": {"resample": {"pixfrac": 0.8}}}``.

    Raises
    ------
    RomosaicInputError
        Naming the first bad option.
    """
    if not options:
        return {}
    parsed = _parsed_config(options)

    def given(user, typed):
        return {key: given(value, typed[key]) if isinstance(value, dict) else typed[key]
                for key, value in user.items()}

    return given(options_to_config(options), parsed)


def _parsed_config(options):
    """Options checked and converted against the pipeline's spec (stpipe's config section)."""
    from stpipe import config_parser

    from .mosaic_pipeline import MosaicPipeline

    def parse(node):
        return {key: parse(value) if isinstance(value, dict) else _parse_value(value)
                for key, value in node.items()}

    try:
        return config_parser.config_from_dict(
            parse(options_to_config(options)), spec=MosaicPipeline.load_spec_file(),
            root_dir=os.getcwd())
    except RomosaicInputError:
        raise
    except Exception as error:
        raise RomosaicInputError(f"pipeline option not accepted: {_first_line(error)}") from None


def _first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
