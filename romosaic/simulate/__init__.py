"""Realistic simulated Roman WFI Level-2 calibrated images, with their truth.

`simulate_association` writes a dithered set of ``*_cal.asdf`` files, an image
association listing them, and ECSV truth tables of the sources, the images and
the cosmic rays, and a reference catalogue of the true star positions;
`make_image_models` returns the same data in memory.

The modules read top to bottom: `instrument` (the numbers describing the
detector), `wcs` (dither layout and each image's gwcs), `scene` (stars and
galaxies on the sky), `render` (arrays: sources, sky, noise, cosmic rays, hot
pixels), `writer` (data models and files), `dataset` (putting it together) and
`cli` (the ``romosaic simulate`` command).
"""

__all__ = ["SimulationResult", "make_image_models", "reference_catalog", "simulate_association"]


def __getattr__(name):
    # The simulator pulls in roman_datamodels, gwcs and scipy; load them only on
    # first use so that ``romosaic --help`` (which imports the cli) stays quick.
    if name in __all__:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
