"""Outlier detection on arrays: median of group drizzles, blot, flags.

Modules: `median` (fast per-pixel median of small stacks), `flagging` (the
disagreement tests), `detect` (group drizzles on the drizzle engine,
sectioned median, blot and per-image flags).
"""

from .detect import (
    blot_median,
    drizzle_group,
    flag_image,
    masked_outliers,
    median_of_group_drizzles,
    median_of_planes,
    median_window,
)
from .flagging import blot_derivative, outlier_mask, parse_pair
from .median import nanmedian_stack

__all__ = [
    "blot_derivative",
    "blot_median",
    "drizzle_group",
    "flag_image",
    "masked_outliers",
    "median_of_group_drizzles",
    "median_of_planes",
    "median_window",
    "nanmedian_stack",
    "outlier_mask",
    "parse_pair",
]
