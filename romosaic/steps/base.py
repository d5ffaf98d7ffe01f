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
* it records ``meta.cal_step.<alias>`` on the models it processes.
"""

import logging
from pathlib import Path

import asdf.schema
import roman_datamodels.datamodels as rdm
from roman_datamodels._stnode import L2CalStep, L3CalStep
from stpipe import Pipeline, Step
from stpipe.datamodel import AbstractDataModel
from stpipe.library import AbstractModelLibrary

from .._atomic import atomic_save_model
from ..errors import RomosaicInputError
from ..library import ModelLibrary
from ..models import open_image_model

__all__ = [
    "STEP_COMPLETE",
    "STEP_SKIPPED",
    "RomosaicPipelineBase",
    "RomosaicStep",
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

    def check_parameters(self):
        """Raise `RomosaicInputError` for parameter values the step cannot use.

        Pipelines call this for every step before running any, so a bad
        value is reported before work (and output) is done.
        """

    def save_model(self, model, suffix=None, idx=None, output_file=None, force=False,
                   **components):
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

    def run(self, *args):
        try:
            return super().run(*args)
        except RomosaicInputError as error:
            # strun prints errors word-wrapped in a banner; log the message
            # once, whole, on one line, where scripts and users look for it.
            if self.parent is None:
                log.error("%s", error)
            raise

    def open_library(self, input_data):
        """A `ModelLibrary` for this step's input.

        Parameters
        ----------
        input_data : ModelLibrary, str, os.PathLike, dict, list or ImageModel
            Anything `ModelLibrary` accepts, or one open model.

        Returns
        -------
        ModelLibrary
            ``input_data`` itself if it is already a library. Libraries this
            method creates follow the parent pipeline's ``on_disk`` setting.
        """
        if isinstance(input_data, ModelLibrary):
            return input_data
        if not isinstance(input_data, (str, Path, dict, list, tuple)):
            input_data = [input_data]
        on_disk = bool(self.search_attr("on_disk", default=False))
        if on_disk and isinstance(input_data, (list, tuple)) and not all(
            isinstance(item, (str, Path)) for item in input_data
        ):
            on_disk = False
        return ModelLibrary(
            input_data, on_disk=on_disk, temp_directory=self.search_attr("output_dir")
        )

    def record_status(self, model, status=STEP_COMPLETE):
        """Record ``status`` in ``model.meta.cal_step.<this step's alias>``."""
        ensure_cal_step(model)
        model.meta.cal_step[self.class_alias] = status


def step_status(model, name):
    """``model.meta.cal_step.<name>``, or None when not recorded."""
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
    fallback = L2CalStep if isinstance(model, rdm.ImageModel) else L3CalStep
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


class RomosaicStep(_OfflineMixin, Step):
    """Base class for romosaic steps (see the module docstring)."""

    spec = """
    output_ext = string(default='.asdf')  # Extension of output files
    """


class RomosaicPipelineBase(_OfflineMixin, Pipeline):
    """Base class for romosaic pipelines (see the module docstring)."""

    spec = """
    output_ext = string(default='.asdf')  # Extension of output files
    """
