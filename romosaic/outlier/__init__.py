"""Outlier detection on arrays: median of group drizzles, blot, flags.

Modules: `median` (fast per-pixel median of small stacks), `flagging` (the
disagreement tests), `detect` (data window, tiled group drizzles, sectioned
median, blot and per-image flags).
"""

from .detect import (
    DataWindow,
    FrameStore,
    blot_median,
    data_window,
    drizzle_group,
    flag_image,
    masked_outliers,
    median_of_frames,
)
from .flagging import blot_derivative, outlier_mask, parse_pair
from .median import nanmedian_stack

__all__ = [
    "DataWindow",
    "FrameStore",
    "blot_derivative",
    "blot_median",
    "data_window",
    "drizzle_group",
    "flag_image",
    "masked_outliers",
    "median_of_frames",
    "nanmedian_stack",
    "outlier_mask",
    "parse_pair",
]
