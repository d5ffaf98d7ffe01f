"""Custom mosaics: one seamless mosaic of many skycells on a projection region's grid.

A skycell mosaic covers 4.6′; a field spanning several skycells would give
several overlapping products cut at skycell edges. A custom mosaic instead
drizzles all the inputs onto the pixel grid of one projection region of the
Roman sky tessellation, cut to the rectangle the inputs need, so that it
lines up pixel for pixel with every skycell of that region.

`perform` is the Python entry point (the ``romosaic custom-mosaic`` command
calls it); `plan_custom_mosaic` and `make_custom_mosaic` are its two halves,
and `romosaic.custom_mosaic.grid` holds the grid arithmetic as plain
functions. See the user guide page "Custom mosaics".

Examples
--------
>>> from romosaic.custom_mosaic import perform
>>> perform("data/*_cal.asdf", output_dir="mosaics", coarse=True)  # doctest: +SKIP
0
"""

__all__ = [
    "COARSE_BLOCK",
    "CustomMosaicPlan",
    "InputImage",
    "Window",
    "bounding_window",
    "choose_on_disk",
    "coarse_window",
    "default_prefix",
    "expand_input_source",
    "footprint_centre",
    "make_custom_mosaic",
    "nearest_region",
    "perform",
    "plan_custom_mosaic",
    "read_inputs",
]

_HOMES = {
    "grid": ("COARSE_BLOCK", "Window", "bounding_window", "coarse_window", "default_prefix",
             "footprint_centre", "nearest_region"),
    "inputs": ("InputImage", "expand_input_source", "read_inputs"),
    "mosaic": ("CustomMosaicPlan", "choose_on_disk",
               "make_custom_mosaic", "perform", "plan_custom_mosaic"),
}


def __getattr__(name):
    # gwcs and the pipeline are slow to import; load them on first use so that
    # ``romosaic --help`` (which imports the cli module) stays quick.
    for module, names in _HOMES.items():
        if name in names:
            from importlib import import_module

            return getattr(import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
