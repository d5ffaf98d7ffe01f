"""romosaic's pipelines."""

from .mosaic_pipeline import MosaicPipeline

__all__ = ["MosaicPipeline"]
