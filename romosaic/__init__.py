"""romosaic: science-ready mosaics from Roman WFI Level-2 exposures."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("romosaic")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
