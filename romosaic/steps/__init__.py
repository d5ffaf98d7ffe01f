"""romosaic's stpipe steps: thin wrappers around the algorithm modules."""

from .base import RomosaicStep
from .flux_step import FluxStep
from .outlier_detection_step import OutlierDetectionStep
from .resample_step import ResampleStep
from .skymatch_step import SkyMatchStep
from .source_catalog_step import SourceCatalogStep
from .tweakreg_step import TweakRegStep

__all__ = [
    "FluxStep",
    "OutlierDetectionStep",
    "ResampleStep",
    "RomosaicStep",
    "SkyMatchStep",
    "SourceCatalogStep",
    "TweakRegStep",
]
