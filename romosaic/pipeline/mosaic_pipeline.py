"""``roman_mos``: the mosaic pipeline.

Runs flux → skymatch → outlier_detection → resample → source_catalog over
one association and writes ``<product>_coadd.asdf``, ``<product>_cat.parquet``
and ``<product>_segm.asdf``, each atomically.
"""

import logging
from pathlib import Path

from .._atomic import atomic_save_model
from ..steps import (
    FluxStep,
    OutlierDetectionStep,
    ResampleStep,
    SkyMatchStep,
    SourceCatalogStep,
)
from ..steps.base import RomosaicPipelineBase

__all__ = ["MosaicPipeline"]

log = logging.getLogger(__name__)


class MosaicPipeline(RomosaicPipelineBase):
    """Make a mosaic from an association of Level-2 calibrated images.

    Parameters are those of the spec below plus each step's, addressed as
    ``steps.<step>.<parameter>`` (``--steps.resample.pixfrac=0.8`` on the
    command line).

    Returns
    -------
    tuple
        ``(mosaic, catalog, segmentation)``: the ``MosaicModel``, the
        ``MosaicSourceCatalogModel`` and the ``MosaicSegmentationMapModel``.
    """

    class_alias = "roman_mos"

    spec = """
    on_disk = boolean(default=False)  # Keep models in temporary files to bound memory
    resample_on_skycell = boolean(default=True)  # Use the skycell grid the association names
    save_results = boolean(default=False)  # Write the products
    suffix = string(default='coadd')  # Suffix of the mosaic file
    """

    step_defs = {
        "flux": FluxStep,
        "skymatch": SkyMatchStep,
        "outlier_detection": OutlierDetectionStep,
        "resample": ResampleStep,
        "source_catalog": SourceCatalogStep,
    }

    def process(self, input_data):
        for name in self.step_defs:
            getattr(self, name).check_parameters()
        library = self.open_library(input_data)
        owns_library = library is not input_data
        self._written = {}
        try:
            self.outlier_detection.resample_on_skycell = self.resample_on_skycell
            self.resample.resample_on_skycell = self.resample_on_skycell
            library = self.flux.run(library)
            library = self.skymatch.run(library)
            library = self.outlier_detection.run(library)
            mosaic = self.resample.run(library)
        finally:
            if owns_library:
                library.close()
        product_name = self._product_name(library)
        # The catalog records the mosaic's file name, so name it first.
        mosaic.meta.filename = f"{product_name}_{self.suffix}.asdf"
        catalog = segmentation = None
        result = self.source_catalog.run(mosaic)
        if isinstance(result, tuple):  # a skipped step hands back its input
            catalog, segmentation = result
        if self.save_results:
            self._save_products(product_name, mosaic, catalog, segmentation)
        return mosaic, catalog, segmentation

    def _product_name(self, library):
        if self.output_file:
            stem = Path(self.output_file).name.split(".")[0]
            return self.remove_suffix(stem)[0]
        return library.product_name

    def _save_products(self, product_name, mosaic, catalog, segmentation):
        output_dir = Path(self.output_dir or ".")
        output_dir.mkdir(parents=True, exist_ok=True)
        products = [(mosaic, f"{product_name}_{self.suffix}.asdf")]
        if catalog is not None:
            products.append((catalog, f"{product_name}_cat.parquet"))
        if segmentation is not None:
            products.append((segmentation, f"{product_name}_segm.asdf"))
        for model, name in products:
            path = atomic_save_model(model, output_dir / name)
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
