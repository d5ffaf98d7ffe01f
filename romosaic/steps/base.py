"""The base class of romosaic's stpipe steps.

`RomosaicStep` is what makes every romosaic step behave the same way:

* it never contacts a network service: stpipe's default is to ask a
  reference-data service for step parameters (``pars-*`` files) unless an
  environment variable disables it; these overrides make that impossible,
  so ``strun roman_mos asn.json`` works with no environment set;
* it opens inputs with roman_datamodels through `~romosaic.library.ModelLibrary`
  and `~romosaic.models.open_image_model`, so bad input is a one-line error;
* ``output_ext`` defaults to ``.asdf`` (``strun`` fails without a default);
* it configures logging for romosaic's own loggers as well as stpipe's;
* it records ``meta.cal_step.<alias>`` on the models it processes;
* it accepts every parameter of the reference pipeline's step of the same
  name; one that romosaic does not need (``update_version``, for instance)
  is noted once in the log when it is set, never silently dropped (see
  `parameter_notes` and ``docs/compatibility.rst``);
* a parameter value the spec refuses (``--steps.resample.pixfrac=-1``) is a
  one-line `~romosaic.errors.RomosaicInputError` naming the parameter, not a
  traceback after a screenful of usage text;
* a top-level run checks its output directory before any work (created if
  missing and removed again if the run fails; stale temporary files of
  killed runs removed; a probe written), so that an unwritable directory is
  a one-line `~romosaic.errors.OutputError` at once;
* while a top-level step runs in the main thread, SIGTERM is turned into
  ``SystemExit(143)``, so that the run unwinds like after Ctrl-C and removes
  its temporary files before the process ends; an interrupted run says so in
  one line (and ``strun`` then exits with status 130, without a traceback);
* the log reads well: stpipe's dump of every parameter and its line for
  each step instance made are DEBUG messages for romosaic's steps, and a
  top-level run logs instead the parameters that differ from their
  defaults; every step logs its duration and peak memory when it is done
  (`StepRecord`), which the pipeline's closing summary lists.
"""

import contextlib
import errno
import gc
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import asdf
import asdf.schema
import roman_datamodels.datamodels as rdm
from roman_datamodels._stnode import L2CalStep, L3CalStep
from stpipe import Pipeline, Step
from stpipe.datamodel import AbstractDataModel
from stpipe.exceptions import ValidationError
from stpipe.library import AbstractModelLibrary

from .._atomic import atomic_save_model, prepare_output_directory, remove_empty_directories
from .._malloc import give_back_freed_memory
from .._process_memory import peak_resident_bytes, reset_peak_resident
from ..errors import OutputError, RomosaicError, RomosaicInputError
from ..library import MemberMetadata, ModelLibrary
from ..models import open_image_model

__all__ = [
    "STEP_COMPLETE",
    "STEP_SKIPPED",
    "RomosaicPipelineBase",
    "RomosaicStep",
    "StepRecord",
    "ensure_cal_step",
    "step_status",
]

log = logging.getLogger(__name__)

STEP_COMPLETE = "COMPLETE"
STEP_SKIPPED = "SKIPPED"

# File-name suffixes that earlier processing stages add; removed before a
# step appends its own, so ``x_cal.asdf`` becomes ``x_flux.asdf``, not
# ``x_cal_flux.asdf``.
_KNOWN_SUFFIXES = (
    "asn",
    "cal",
    "coadd",
    "flux",
    "skymatch",
    "outlier_detection",
    "resample",
    "cat",
    "segm",
    "i2d",
)


@dataclass(frozen=True)
class StepRecord:
    """How long one step ran and the most memory the process held meanwhile.

    Attributes
    ----------
    name : str
        The step's name (``flux``, ``resample``, ...).
    seconds : float
        Wall-clock time.
    peak_bytes : int or None
        Peak resident memory of the process while the step ran (since the
        step began where the system can reset the peak; otherwise since the
        process began). None when unknown.
    """

    name: str
    seconds: float
    peak_bytes: int | None


class _OfflineMixin:
    """Class-level stpipe hooks shared by romosaic steps and pipelines."""

    # No reference files are ever fetched, so there is nothing to prefetch.
    prefetch_references = False

    @classmethod
    def get_config_from_reference(cls, dataset, disable=None, crds_observatory=None):
        # stpipe would ask a reference-data service for a ``pars-*`` file here.
        # romosaic's parameters come only from its spec, parameter files the
        # user names, and keyword/command-line arguments.
        return cls._empty_config()

    @classmethod
    def _get_config_from_parameters(cls, crds_parameters, crds_observatory):
        return cls._empty_config()

    @classmethod
    def _get_crds_parameters(cls, dataset):
        # stpipe opens the input to compute service parameters; nothing needs them.
        return {}, "roman"

    @staticmethod
    def get_stpipe_loggers():
        return ("stpipe", "romosaic", "py.warnings")

    @classmethod
    def _datamodels_open(cls, init, **kwargs):
        if isinstance(init, (AbstractModelLibrary,)):
            return init
        if isinstance(init, (str, Path)) and Path(init).suffix.lower() == ".json":
            return ModelLibrary(init, **kwargs)
        if isinstance(init, (str, Path)):
            return open_image_model(init, **kwargs)
        return init

    @staticmethod
    def remove_suffix(name):
        for suffix in _KNOWN_SUFFIXES:
            if name.endswith("_" + suffix):
                return name[: -len(suffix) - 1], "_"
        return name, "_"

    def default_suffix(self):
        return self.class_alias or self.name.lower()

    def parameter_notes(self):
        """Log messages about parameters whose value has no effect in romosaic.

        Subclasses add theirs to the list this returns. `run` logs each one
        once, before the step works, so that a value from a reference
        parameter file is never silently dropped.

        Returns
        -------
        list of (int, str)
            Logging level and message.
        """
        notes = []
        if getattr(self, "update_version", False):
            notes.append((logging.INFO,
                          f"{self.name}: update_version=True has no effect: romosaic reads "
                          "inputs with the installed roman_datamodels as they are"))
        return notes

    def _log_parameter_notes(self):
        for level, message in self.parameter_notes():
            log.log(level, "%s", message)

    def wants_models_on_disk(self):
        """Whether libraries this step opens keep their models in temporary files.

        True with ``on_disk`` (the pipeline's, or this step's) or with the
        reference's ``in_memory=False``, which asks for the same thing.
        """
        if self.search_attr("on_disk", default=False):
            return True
        return getattr(self, "in_memory", True) is False

    def check_parameters(self):
        """Raise `RomosaicInputError` for parameter values the step cannot use.

        Pipelines call this for every step before running any, so a bad
        value is reported before work (and output) is done.
        """

    def save_model(self, model, suffix=None, idx=None, output_file=None, force=False,
                   **components):
        if isinstance(model, ModelLibrary):
            return self._save_library(model, suffix=suffix, output_file=output_file,
                                      force=force, **components)
        if isinstance(model, AbstractModelLibrary) or not isinstance(model, AbstractDataModel):
            # stpipe iterates libraries and calls back here for each model.
            return super().save_model(model, suffix=suffix, idx=idx, output_file=output_file,
                                      force=force, **components)
        if not output_file:
            output_file = self.output_file
        if not force and not self.save_results and not output_file:
            return None
        if self.output_use_model or (output_file is None and not self.search_output_file):
            output_file = model.meta.filename
            idx = None
        path = self.make_output_path(basepath=output_file, suffix=suffix, idx=idx, **components)
        atomic_save_model(model, path)
        log.info("Saved model in %s", path)
        return str(path)

    def _save_library(self, library, *, suffix=None, output_file=None, force=False,
                      **components):
        """Save every model of a library, one at a time.

        stpipe's loop shelves each model with ``modify=True`` after saving
        it; reading the arrays to write them would then keep every model in
        memory. The only change saving makes, the model's new file name, is
        recorded as an edit instead.
        """
        if not force and not self.save_results and not output_file:
            return None
        paths = []
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                try:
                    paths.append(self.save_model(model, idx=index, suffix=suffix, force=force,
                                                 **components))
                    if paths[-1] is not None:
                        library.update_meta(index, {"filename": model.meta.filename})
                finally:
                    library.shelve(model, index, modify=False)
        return paths

    @classmethod
    def from_config_section(cls, config, parent=None, name=None, config_file=None):
        try:
            return super().from_config_section(config, parent=parent, name=name,
                                               config_file=config_file)
        except ValidationError as error:
            problem = RomosaicInputError(_parameter_message(cls, error))
            if parent is None:
                log.error("%s", problem)
            raise problem from None

    def run(self, *args):
        top_level = self.parent is None
        created = []
        started = time.perf_counter()
        reset_peak_resident()
        with (_sigterm_as_exit() if top_level else contextlib.nullcontext(),
              _releasing_schema_caches() if top_level else contextlib.nullcontext(),
              _long_lived_objects_frozen() if top_level else contextlib.nullcontext(),
              _asdf_reads_in_large_blocks() if top_level else contextlib.nullcontext()):
            try:
                if top_level and (self.output_dir or self.save_results or self.output_file):
                    # stpipe would create output_dir itself, with a traceback
                    # when it cannot; and a directory that takes no files
                    # should fail the run now, not after hours of work.
                    output_dir = os.path.expandvars(os.path.expanduser(self.output_dir or "."))
                    created = prepare_output_directory(output_dir)
                if top_level:
                    self._log_changed_parameters()
                if not self.skip:
                    self._log_parameter_notes()
                with self._skipping_library(args):
                    result = super().run(*args)
                if not self.skip:
                    self._record_step(started)
                return result
            except KeyboardInterrupt:
                remove_empty_directories(created)
                if not top_level:
                    raise
                log.error("%s interrupted: stopped before finishing; temporary files were "
                          "removed and no partial product was written", self.name)
                if _running_under_strun():
                    # The line above says it all: no traceback, the shell's status.
                    raise SystemExit(128 + signal.SIGINT) from None
                raise
            except RomosaicError as error:
                # strun prints errors word-wrapped in a banner; log the message
                # once, whole, on one line, where scripts and users look for it.
                if top_level:
                    log.error("%s", error)
                remove_empty_directories(created)
                raise
            except OSError as error:
                remove_empty_directories(created)
                if not (top_level and error.errno in _OUTPUT_ERRNOS):
                    raise
                # Disk full, quota, file-size limit or read-only file system
                # while writing a temporary file: the environment's fault,
                # reported like any other output problem.
                problem = OutputError(_os_error_message(error), error.errno)
                log.error("%s", problem)
                raise problem from None
            except BaseException:
                remove_empty_directories(created)
                raise
            finally:
                # The next step's peak starts from what this one leaves.
                give_back_freed_memory()

    def _log_changed_parameters(self):
        """Log, on one line, the parameters whose values differ from the defaults.

        stpipe's own dump of every parameter (a hundred lines for the
        pipeline) is a DEBUG message for romosaic's steps.
        """
        try:
            changed = _changed_parameters(self.get_pars(), type(self)().get_pars())
        except Exception:  # the dump is informative only; never fail a run over it
            return
        if changed:
            log.info("%s parameters differing from the defaults: %s", self.name,
                     ", ".join(f"{name}={value!r}" for name, value in changed))
        else:
            log.info("%s parameters: all at their defaults", self.name)

    def _record_step(self, started):
        """Log this step's duration and peak memory, and keep them for the run's summary."""
        peak = peak_resident_bytes()
        # A pipeline's peak is the largest of its steps' (each reset its own).
        peaks = [r.peak_bytes for r in getattr(self, "step_records", ()) if r.peak_bytes]
        if peak and peaks:
            peak = max(peak, *peaks)
        record = StepRecord(self.name, time.perf_counter() - started, peak)
        log.info("%s done in %.1f s%s", self.name, record.seconds,
                 f" (peak memory {peak / 2**20:.0f} MiB)" if peak else "")
        root = self
        while root.parent is not None:
            root = root.parent
        records = getattr(root, "step_records", None)
        if records is not None and root is not self:
            records.append(record)

    @contextlib.contextmanager
    def _skipping_library(self, args):
        """Record SKIPPED as a library edit when this step is skipped on a library.

        stpipe records it itself by changing every model and shelving it
        with ``modify=True``, after which the library must keep a copy of
        each image's metadata; it leaves the models alone for a step without
        an alias, which this step pretends to be while stpipe runs it.
        """
        library = args[0] if args else None
        # stpipe runs a skipped step anyway when it has no parent.
        if not (self.skip and self.parent is not None and self.class_alias
                and isinstance(library, ModelLibrary)):
            yield
            return
        for index, member in library.iter_metadata():
            self.record_status(member, STEP_SKIPPED, library=library, index=index)
        self.class_alias = None
        try:
            yield
        finally:
            del self.class_alias  # the class's alias again

    def open_library(self, input_data):
        """A `ModelLibrary` for this step's input.

        Parameters
        ----------
        input_data : AbstractModelLibrary, str, os.PathLike, dict, list or ImageModel
            Anything `ModelLibrary` accepts, or one open model.

        Returns
        -------
        ModelLibrary
            ``input_data`` itself if it is already a romosaic library; one
            borrowing from it if it is a library of another class (the
            reference pipeline's, for instance; see `step_result`). Libraries
            this method creates from files follow the parent pipeline's
            ``on_disk`` setting.
        """
        if isinstance(input_data, ModelLibrary):
            return input_data
        if isinstance(input_data, AbstractModelLibrary):
            return ModelLibrary(input_data)
        if not isinstance(input_data, (str, Path, dict, list, tuple)):
            input_data = [input_data]
        on_disk = self.wants_models_on_disk()
        if on_disk and isinstance(input_data, (list, tuple)) and not all(
            isinstance(item, (str, Path)) for item in input_data
        ):
            on_disk = False
        return ModelLibrary(
            input_data,
            on_disk=on_disk,
            temp_directory=self.search_attr("output_dir"),
            allow_external_members=bool(self.search_attr("allow_external_members",
                                                         default=True)),
        )

    def step_result(self, library, input_data, *, single_model=False):
        """What a step that changes images returns, given what it was called with.

        The rule, the reference pipeline's (see ``docs/compatibility.rst``):

        * a library of another class (the reference's ``ModelLibrary``)
          comes back itself, its models changed;
        * a romosaic `ModelLibrary` comes back itself;
        * with ``single_model`` (the flux step), one ``ImageModel`` or one
          image file gives back that image's model, changed;
        * anything else (an association, a list) gives the library made
          from it.

        Parameters
        ----------
        library : ModelLibrary
            The library the step worked on (from `open_library`).
        input_data : object
            What the step was called with.
        single_model : bool, optional
            Whether one image in gives one model out.

        Returns
        -------
        ModelLibrary, AbstractModelLibrary or ImageModel
        """
        if library.source_library is not None and library.source_library is input_data:
            library.write_back()
            library.close()
            return input_data
        if single_model and _is_single_image(input_data):
            with library:
                model = library.borrow(0)
                library.shelve(model, 0, modify=False)
            return model
        return library

    def record_status(self, model, status=STEP_COMPLETE, *, library=None, index=None):
        """Record ``status`` in ``model.meta.cal_step.<this step's alias>``.

        Parameters
        ----------
        model : roman_datamodels.datamodels.DataModel or MemberMetadata
            The model, or with ``library`` the member's model or metadata
            (`ModelLibrary.metadata`).
        status : str, optional
        library : ModelLibrary, optional
            Record the status as an edit of member ``index`` of this
            library (see `ModelLibrary.update_meta`), so that the model
            can be shelved with ``modify=False``.
        index : int, optional
            The member, with ``library``.
        """
        if library is None:
            ensure_cal_step(model)
            model.meta.cal_step[self.class_alias] = status
        elif model.meta.get("cal_step") is None:
            cal_step = {name: "INCOMPLETE" for name in _cal_step_names(model)}
            cal_step[self.class_alias] = status
            library.update_meta(index, {"cal_step": cal_step})
        else:
            library.update_meta(index, {f"cal_step.{self.class_alias}": status})


def _is_single_image(input_data):
    """Whether a step's input is one image: an open model, or one ``.asdf`` file."""
    if isinstance(input_data, AbstractDataModel):
        return True
    return (isinstance(input_data, (str, Path))
            and Path(input_data).suffix.lower() != ".json")


def _running_under_strun():
    return Path(sys.argv[0] if sys.argv else "").name == "strun"


def _changed_parameters(values, defaults, prefix=""):
    """``(dotted name, value)`` of every entry of ``values`` that differs from ``defaults``."""
    changed = []
    for name, value in values.items():
        default = defaults.get(name)
        if isinstance(value, dict) and isinstance(default, dict):
            changed.extend(_changed_parameters(value, default, f"{prefix}{name}."))
        elif value != default and name not in _NOT_PARAMETERS:
            changed.append((prefix + name, value))
    return changed


#: Entries of ``get_pars`` that describe the step rather than set it.
_NOT_PARAMETERS = {"class", "name", "config_file"}


class _DemoteStpipeChatter(logging.Filter):
    """Make stpipe's parameter dump and instance lines DEBUG messages for romosaic's steps."""

    _MESSAGES = ("Step %s parameters are:%s", "%s instance created.")

    def filter(self, record):
        if (record.levelno == logging.INFO and record.msg in self._MESSAGES and record.args
                and str(record.args[0]) in _ROMOSAIC_STEP_NAMES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


#: Class names and aliases of romosaic's steps and pipelines (filled as they are defined).
_ROMOSAIC_STEP_NAMES = set()

logging.getLogger("stpipe.step").addFilter(_DemoteStpipeChatter())


# System errors that mean "no room or no right to write", whatever the file.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _os_error_message(error):
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}cannot write ({error.strerror or error})"


class _WhileRunsLast:
    """A process-wide setting held while at least one run lasts.

    Runs may share a process (threads of a Dask worker, a notebook): the
    first run to start makes the setting, the last to end undoes it, so one
    run never undoes it under another.

    Parameters
    ----------
    make : callable
        ``make() -> state``, called by the first run.
    undo : callable
        ``undo(state)``, called by the last run.
    """

    def __init__(self, make, undo):
        self._make, self._undo = make, undo
        self._lock = threading.Lock()
        self._runs = 0
        self._state = None

    @contextlib.contextmanager
    def __call__(self):
        with self._lock:
            if self._runs == 0:
                self._state = self._make()
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0:
                    self._undo(self._state)
                    self._state = None


#: Bytes asdf reads at a time while a run lasts (`_asdf_reads_in_large_blocks`).
ASDF_READ_BLOCK_BYTES = 1 << 20


def _read_in_large_blocks():
    config = asdf.get_config()
    previous = config.io_block_size
    config.io_block_size = ASDF_READ_BLOCK_BYTES
    return config, previous


def _restore_block_size(state):
    config, previous = state
    config.io_block_size = previous


#: Have asdf read files in 1-MiB pieces rather than file-system blocks.
#:
#: asdf decompresses an array's lz4 chunks from pieces of its
#: ``io_block_size`` (by default the file system's 4 KiB block), with a few
#: Python operations per piece: reading a 4088² image's six arrays took
#: 0.24 s that way and 0.12 s with 1-MiB pieces, and every input is read by
#: several steps. The configuration in effect when the first run starts
#: (asdf's global one, which worker threads use, unless the caller opened an
#: ``asdf.config_context``) gets its setting back when the last run ends.
_asdf_reads_in_large_blocks = _WhileRunsLast(_read_in_large_blocks, _restore_block_size)


def _freeze_long_lived_objects():
    if gc.get_freeze_count():
        return False  # the caller froze objects itself: left as they are
    if _frozen_before.is_set():
        gc.collect()
    _frozen_before.set()
    gc.freeze()
    return True


def _unfreeze(frozen):
    if frozen:
        gc.unfreeze()


#: Keep the garbage collector off the objects that exist before a run.
#:
#: stpipe runs a full collection before every step; with astropy, asdf and
#: gwcs imported that walks ~150 000 long-lived objects each time (80 ms of
#: CPU, 0.5 s per pipeline run). Frozen (`gc.freeze`), they are skipped;
#: they are handed back to the collector when the last run ends. From the
#: second run of a process on, one collection comes first, so that the
#: garbage of an earlier run (models held in reference cycles) is freed
#: rather than frozen; before the first there is no such garbage, and the
#: collection would only walk the imports' objects once more (90 ms).
_long_lived_objects_frozen = _WhileRunsLast(_freeze_long_lived_objects, _unfreeze)

#: Set by the first run that freezes objects in this process.
_frozen_before = threading.Event()


@contextlib.contextmanager
def _releasing_schema_caches():
    """Drop asdf's references to the schema resolvers of a run when it ends.

    asdf wraps two methods of its ``RefResolver`` in ``functools.lru_cache``,
    which keys on the resolver itself: the last 128 resolvers, each with every
    schema it parsed, stay alive (about 80 MiB after 25 pipeline runs). Every
    validation makes new resolvers, so those entries are never used again;
    clearing them after each run keeps a process that runs the pipeline all
    day at constant memory (``tests/test_soak.py``).
    """
    try:
        yield
    finally:
        try:
            from asdf._jsonschema.validators import RefResolver
        except ImportError:
            RefResolver = None
        for name in ("_get_subschemas_cache", "_find_in_subschemas"):
            cache_clear = getattr(getattr(RefResolver, name, None), "cache_clear", None)
            if cache_clear is not None:
                cache_clear()


#: Exit status of a run ended by SIGTERM (the shell's convention, 128 + 15).
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


@contextlib.contextmanager
def _sigterm_as_exit():
    """Raise SystemExit on SIGTERM while the block runs, then restore the handler.

    Only when the default handler is in place (an application's own handler
    is left alone) and in the main thread (the only one that may set one).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def handler(signum, frame):
        log.error("terminated by signal %d; removing temporary files", signum)
        raise SystemExit(SIGTERM_EXIT_STATUS)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


#: Parameters of earlier romosaic versions that another one replaced: a file
#: or command line still naming them gets a message naming the new one.
REPLACED_PARAMETERS = {
    "tile_memory": "memory_budget (MiB of drizzle planes held in memory; beyond it they "
                   "are memory-mapped files)",
}

_EXTRA_VALUE = re.compile(r"Extra value '(?P<name>[^']*)' in (?P<where>\S+)")

_CONFIG_PROBLEM = re.compile(r"Config parameter '(?P<path>[^']*)': (?P<problem>.*)", re.S)


def _parameter_message(step_class, error):
    """One line for a parameter value the spec refuses, with what it accepts."""
    text = " ".join(str(error).split())
    extra = _EXTRA_VALUE.search(text)
    if extra and extra["name"] in REPLACED_PARAMETERS:
        where = "" if extra["where"] == "root" else extra["where"].replace("/", ".") + "."
        return (f"parameter {where}{extra['name']} was replaced by "
                f"{REPLACED_PARAMETERS[extra['name']]}")
    match = _CONFIG_PROBLEM.match(text)
    if match is None:
        return f"invalid parameter: {text}"
    path = match["path"].split("/")
    problem = match["problem"].rstrip(".")
    accepted = _accepted_values(step_class, path)
    return f"parameter {'.'.join(path)}: {problem}{accepted}"


def _accepted_values(step_class, path):
    try:
        spec = step_class.load_spec_file()
        for key in path:
            spec = spec[key]
    except (KeyError, TypeError, AttributeError, OSError):
        return ""
    if not isinstance(spec, str):
        return ""
    options = re.match(r"\s*option\((.*)\)", spec)
    if options:
        names = re.findall(r"'([^']*)'", options[1].split("default=")[0])
        return f" (choose one of: {', '.join(names)})" if names else ""
    low = re.search(r"\bmin=([-+0-9.eE]+)", spec)
    high = re.search(r"\bmax=([-+0-9.eE]+)", spec)
    kind = spec.split("(")[0].strip()
    limits = []
    if low:
        limits.append(f">= {low[1]}")
    if high:
        limits.append(f"<= {high[1]}")
    if limits and kind in ("float", "integer"):
        return f" (must be {' and '.join(limits)})"
    if kind in ("float", "integer", "boolean", "int_list", "float_list"):
        return f" (expected {kind.replace('_', ' ')})"
    return ""


def step_status(model, name):
    """``model.meta.cal_step.<name>``, or None when not recorded.

    ``model``: an open model, or a library's `~romosaic.library.MemberMetadata`.
    """
    cal_step = model.meta.get("cal_step")
    return None if cal_step is None else cal_step.get(name)


def ensure_cal_step(model):
    """Give a model without ``meta.cal_step`` one with every step INCOMPLETE.

    Level-2 files always carry it; models built in memory may not, and the
    schema requires the full set of step names once it exists.
    """
    if model.meta.get("cal_step") is None:
        model.meta["cal_step"] = {name: "INCOMPLETE" for name in _cal_step_names(model)}


def _cal_step_names(model):
    # A library's members are Level-2 images.
    fallback = L2CalStep if isinstance(model, (rdm.ImageModel, MemberMetadata)) else L3CalStep
    try:
        meta_schema = model._instance.get_schema()["properties"]["meta"]
        for part in meta_schema.get("allOf", [meta_schema]):
            schema = part.get("properties", {}).get("cal_step")
            if schema:
                # Depending on the roman_datamodels version the reference is
                # already resolved or still a $ref.
                if "$ref" in schema:
                    schema = asdf.schema.load_schema(schema["$ref"])
                return list(schema["required"])
    except (AttributeError, KeyError, TypeError):
        pass
    return list(fallback.create_fake_data().keys())


# Accepted so that the reference's parameter files load; romosaic reads
# every input as it is, so the value changes nothing (a True is logged).
_COMMON_SPEC = """
    output_ext = string(default='.asdf')  # Extension of output files
    update_version = boolean(default=False)  # Reference parameter; no effect in romosaic
    """


class RomosaicStep(_OfflineMixin, Step):
    """Base class for romosaic steps (see the module docstring)."""

    spec = _COMMON_SPEC

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _ROMOSAIC_STEP_NAMES.update({cls.__name__, cls.class_alias or cls.__name__})


class RomosaicPipelineBase(_OfflineMixin, Pipeline):
    """Base class for romosaic pipelines (see the module docstring).

    ``step_records`` lists a `StepRecord` for each of its steps that ran, in
    order, for the run's summary.
    """

    spec = _COMMON_SPEC

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _ROMOSAIC_STEP_NAMES.update({cls.__name__, cls.class_alias or cls.__name__})
