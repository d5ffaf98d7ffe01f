"""What the drizzling steps say about the reference's ``pixmap_order``."""

import logging

__all__ = ["SPLINE_ORDER", "pixmap_order_notes"]

#: Order of the splines that interpolate romosaic's pixel maps between
#: exact WCS evaluations (`romosaic.resample.pixmap`).
SPLINE_ORDER = 3


def pixmap_order_notes(step):
    """The `~romosaic.steps.RomosaicStep.parameter_notes` entry for ``pixmap_order``.

    The reference interpolates its sparse pixel map with splines of this
    order; romosaic always uses bicubic ones, and evaluates the WCS at every
    pixel where they cannot be fitted, which keeps the map's error far below
    a thousandth of a pixel. Another order is noted, not followed.
    """
    if step.pixmap_order == SPLINE_ORDER:
        return []
    return [(logging.INFO,
             f"{step.name}: pixmap_order={step.pixmap_order} has no effect: romosaic "
             f"interpolates its pixel maps with order-{SPLINE_ORDER} splines "
             "(error far below 0.001 pixel) or evaluates the WCS exactly")]
