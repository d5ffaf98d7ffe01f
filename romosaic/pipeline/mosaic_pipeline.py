"""``roman_mos``: the mosaic pipeline.

Runs tweakreg (skipped unless asked for) → flux → skymatch →
outlier_detection → resample → source_catalog over one association and
writes ``<product>_coadd.asdf``, ``<product>_cat.parquet`` and
``<product>_segm.asdf``, together and atomically (``coadd`` and ``cat`` are
the ``suffix`` of the pipeline and of its source_catalog step).

Before any step runs, the pipeline checks what can be checked cheaply, so that
a bad association fails in seconds rather than after hours of work, and
without leaving anything behind:

1. every step's parameters;
2. the output directory (created if missing, removed again if the run
   fails) accepts files, and stale temporary files of killed runs in it are
   removed (`romosaic.steps.base` does this for every top-level run);
3. every input image: readable arrays, a usable WCS, a positive exposure
   time (`~romosaic.models.inspect_image_model`). An image with no usable
   pixel at all is skipped with a warning naming it; if every image is like
   that, the run fails;
4. no product would overwrite an input file;
5. the output grid: the skycell exists and overlaps the inputs, the inputs
   share one filter, and the grid is within the resample step's
   ``max_output_pixels``.
"""

import logging
import os
import time
from pathlib import Path

from .._atomic import atomic_save_models
from ..errors import RomosaicInputError
from ..models import inspect_image_model
from ..parallel import resolve_workers
from ..skycell import SkycellNotFoundError
from ..steps import (
    FluxStep,
    OutlierDetectionStep,
    ResampleStep,
    SkyMatchStep,
    SourceCatalogStep,
    TweakRegStep,
)
from ..steps.base import RomosaicPipelineBase

__all__ = ["MosaicPipeline"]

log = logging.getLogger(__name__)

#: Skipped images named in the error when no image is usable.
_NAMED_IN_MESSAGE = 3


class MosaicPipeline(RomosaicPipelineBase):
    """Make a mosaic from an association of Level-2 calibrated images.

    Runs flux, skymatch, outlier_detection, resample and source_catalog (and
    tweakreg when asked for) and returns the mosaic, the source catalog and
    the segmentation map. Each step's parameters are set as
    steps.STEP.PARAMETER, for example --steps.resample.pixfrac=0.8 on the
    command line.
    """

    class_alias = "roman_mos"

    spec = """
    on_disk = boolean(default=False)  # Changed models and outlier frames in temporary files
    resample_on_skycell = boolean(default=True)  # Use the skycell grid the association names
    allow_external_members = boolean(default=True)  # Accept members outside the asn's directory
    save_results = boolean(default=False)  # Write the products
    suffix = string(default='coadd')  # Suffix of the mosaic file
    """

    step_defs = {
        "tweakreg": TweakRegStep,
        "flux": FluxStep,
        "skymatch": SkyMatchStep,
        "outlier_detection": OutlierDetectionStep,
        "resample": ResampleStep,
        "source_catalog": SourceCatalogStep,
    }

    @classmethod
    def load_spec_file(cls, *args, **kwargs):
        spec = super().load_spec_file(*args, **kwargs)
        # Alignment is opt-in, so that the default run is the reference's
        # chain: --steps.tweakreg.skip=false turns it on.
        spec["steps"]["tweakreg"]["skip"] = "boolean(default=True)"
        return spec

    def wants_models_on_disk(self):
        # The reference's in_memory=False on a drizzling step asks for its
        # models on disk; here the pipeline opens the one library they share.
        return super().wants_models_on_disk() or any(
            not step.skip and not step.in_memory
            for step in (self.outlier_detection, self.resample))

    def process(self, input_data):
        started = time.perf_counter()
        self._check_step_parameters()
        self._written = {}
        self.step_records = []
        self._grid = None
        self._skipped_inputs = []
        output_dir = Path(self.output_dir or ".")
        self.outlier_detection.resample_on_skycell = self.resample_on_skycell
        self.resample.resample_on_skycell = self.resample_on_skycell
        library = self.open_library(input_data)
        owns_library = library is not input_data
        try:
            product_name = self._product_name(library)
            geometry = self._inspect_inputs(library)
            if self.save_results:
                self._refuse_to_overwrite_inputs(library, output_dir, product_name)
            self._check_output_grid(library, geometry)
            n_used = len(library)
            library = self.tweakreg.run(library)
            library = self.flux.run(library)
            library = self.skymatch.run(library)
            library = self.outlier_detection.run(library)
            mosaic = self.resample.run(library)
            # A caller's library of another class gets its models' changes,
            # as the reference pipeline's steps leave them.
            library.write_back()
        finally:
            if owns_library:
                library.close()
        # The catalog records the mosaic's file name, so name it first.
        mosaic.meta.filename = f"{product_name}_{self.suffix}.asdf"
        catalog = segmentation = None
        result = self.source_catalog.run(mosaic)
        if isinstance(result, tuple):  # a skipped step hands back its input
            catalog, segmentation = result
        if self.save_results:
            writing = time.perf_counter()
            self._save_products(output_dir, product_name, mosaic, catalog, segmentation)
            self._writing_seconds = time.perf_counter() - writing
        self._log_summary(time.perf_counter() - started, n_used, catalog)
        return mosaic, catalog, segmentation

    def _log_summary(self, seconds, n_used, catalog):
        """The closing lines of a run: what was made from what, how fast, and where."""
        lines = [f"{self.name} summary ({seconds:.1f} s):"]
        grid = self._grid
        if grid is not None:
            kind = f"skycell {grid.skycell_name}" if grid.skycell_name else "free TAN grid"
            lines.append(f"  grid: {grid.shape[1]} x {grid.shape[0]} pixels of "
                         f"{grid.pixel_scale:.4f} arcsec ({kind})")
        skipped = self._skipped_inputs
        lines.append(f"  inputs: {n_used} used, {len(skipped)} skipped"
                     + (f" ({', '.join(skipped)})" if skipped else ""))
        lines.append(f"  catalog: {len(catalog.source_catalog)} sources" if catalog is not None
                     else "  catalog: not made (source_catalog skipped)")
        for record in self.step_records:
            peak = (f", peak memory {record.peak_bytes / 2**20:.0f} MiB"
                    if record.peak_bytes else "")
            lines.append(f"  {record.name}: {record.seconds:.1f} s{peak}")
        if self._written:
            lines.append(f"  writing the products: {self._writing_seconds:.1f} s")
            lines.extend(f"  wrote {Path(path).resolve()}" for path in self._written.values())
        else:
            lines.append("  products not written (save_results is False)")
        log.info("%s", "\n".join(lines))

    # -- checks before any step runs ------------------------------------------

    def _check_step_parameters(self):
        if self.resample.skip:
            # Every later part of the run (catalog, products) is of the mosaic.
            raise RomosaicInputError(
                f"{self.name}: steps.resample.skip=True leaves no mosaic to make; run the "
                "steps wanted on their own (e.g. strun outlier_detection ASN) to keep their "
                "Level-2 results")
        for name in self.step_defs:
            step = getattr(self, name)
            if step.skip:
                continue
            try:
                step.check_parameters()
            except RomosaicInputError as error:
                message = str(error)
                if message.startswith(f"{name}:"):
                    raise
                raise type(error)(f"{name}: {message}") from None

    def _inspect_inputs(self, library):
        """Check every input; leave out, with a warning, those with no usable pixel.

        Returns
        -------
        list of (wcs, shape)
            The geometry of the images kept.
        """
        good_bits = self.resample.good_bits

        def inspect(index, model):
            name = str(model.meta.filename)
            reason = inspect_image_model(model, source=name, good_bits=good_bits)
            filter_name = model.meta.get("instrument", {}).get("optical_element")
            return name, reason, (model.meta.wcs, model.data.shape), str(filter_name)

        # Inspecting reads every array: in memory, where the arrays stay for
        # the steps, two cores read and decompress two files at once.
        reports = library.map_models(inspect, threads=resolve_workers(0))
        unusable = []
        geometry = []
        filters = {}
        for index, (name, reason, placement, filter_name) in enumerate(reports):
            if reason is not None:
                unusable.append((index, name, reason))
                continue
            geometry.append(placement)
            filters.setdefault(filter_name, name)
        if len(filters) > 1:
            listing = ", ".join(f"{f} ({name})" for f, name in filters.items())
            raise RomosaicInputError(f"inputs are in different filters: {listing}")
        if not unusable:
            return geometry
        if len(unusable) == len(library):
            listed = "; ".join(f"{name}: {reason}" for _, name, reason
                               in unusable[:_NAMED_IN_MESSAGE])
            more = (f"; and {len(unusable) - _NAMED_IN_MESSAGE} more"
                    if len(unusable) > _NAMED_IN_MESSAGE else "")
            raise RomosaicInputError(f"no usable input image ({listed}{more})")
        for _, name, reason in unusable:
            log.warning("%s: skipped: %s", name, reason)
        self._skipped_inputs = [name for _, name, _ in unusable]
        library.drop_members(index for index, _, _ in unusable)
        return geometry

    def _refuse_to_overwrite_inputs(self, library, output_dir, product_name):
        if library._asn_dir is None:
            return  # models given in memory: no input file to protect
        inputs = []
        for member in library.asn["products"][0]["members"]:
            path = library._member_to_filename(member)
            if os.path.exists(path):
                inputs.append(path)
        for product in self._product_paths(output_dir, product_name):
            if not product.exists():
                continue
            for path in inputs:
                if os.path.samefile(product, path):
                    raise RomosaicInputError(
                        f"{product}: writing this product would replace the input file "
                        f"{path}; choose another output_dir or product name")

    def _check_output_grid(self, library, geometry):
        if self.resample.skip:
            return
        source = library.asn.get("table_name") or library.product_name
        try:
            self._grid = self.resample.plan_grid(library, geometry)
        except SkycellNotFoundError as error:
            raise SkycellNotFoundError(
                f"{source}: {error}; check the association's target and "
                "skycell_wcs_info") from None
        except RomosaicInputError as error:
            if str(error).startswith(f"{source}:"):
                raise
            raise type(error)(f"{source}: {error}") from None

    # -- products -------------------------------------------------------------

    def _product_name(self, library):
        if self.output_file:
            stem = Path(self.output_file).name.split(".")[0]
            return self.remove_suffix(stem)[0]
        return library.product_name

    def _product_paths(self, output_dir, product_name):
        return [output_dir / f"{product_name}_{self.suffix}.asdf",
                output_dir / f"{product_name}_{self.source_catalog.catalog_suffix}.parquet",
                output_dir / f"{product_name}_segm.asdf"]

    def _save_products(self, output_dir, product_name, mosaic, catalog, segmentation):
        mosaic_path, catalog_path, segmentation_path = self._product_paths(output_dir,
                                                                           product_name)
        products = [(mosaic, mosaic_path)]
        if catalog is not None:
            products.append((catalog, catalog_path))
        if segmentation is not None:
            products.append((segmentation, segmentation_path))
        # Written side by side, then renamed one right after the other: an
        # interrupted run leaves the previous set of products, not a mixture.
        paths = atomic_save_models(products)
        for (model, _), path in zip(products, paths, strict=True):
            self._written[id(model)] = path
            log.info("Saved %s", path)

    def save_model(self, model, *args, **kwargs):
        # stpipe's Step.run saves each returned model under names built from
        # the input file; the products were already written atomically under
        # the association's product name in process().
        written = getattr(self, "_written", {})
        if id(model) in written:
            return str(written[id(model)])
        return super().save_model(model, *args, **kwargs)
