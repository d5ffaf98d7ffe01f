"""romosaic's stpipe steps: thin wrappers around the algorithm modules."""

from .base import RomosaicStep
from .flux_step import FluxStep
from .resample_step import ResampleStep

__all__ = ["FluxStep", "ResampleStep", "RomosaicStep"]
