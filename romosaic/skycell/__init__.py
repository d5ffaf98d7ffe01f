"""The Roman sky tessellation, computed offline (see `tessellation`)."""

from .tessellation import (
    ComputedTessellation,
    ProjectionRegion,
    Skycell,
    SkycellNotFoundError,
    Tessellation,
    looks_like_skycell_name,
    parse_skycell_name,
)

__all__ = [
    "ComputedTessellation",
    "ProjectionRegion",
    "Skycell",
    "SkycellNotFoundError",
    "Tessellation",
    "looks_like_skycell_name",
    "parse_skycell_name",
]
