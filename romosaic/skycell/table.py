"""The tessellation read from a skycells reference file (``SKYMAP_PATH``).

Users who hold the reference pipeline's skycells file (an ASDF file with the
tables ``roman.projection_regions`` and ``roman.skycells``) can point
``SKYMAP_PATH`` at it; `TableTessellation` then answers every lookup from
that table, through the same interface as the computed tessellation. The
8-million-row table is memory-mapped, and only the rows of the regions a
lookup touches are read.
"""

from functools import lru_cache

import asdf
import numpy as np

from ..errors import RomosaicInputError
from .tessellation import ProjectionRegion, RegionCells, Tessellation

__all__ = ["TableTessellation"]


class TableTessellation(Tessellation):
    """A `Tessellation` backed by a skycells reference table.

    Parameters
    ----------
    path : str or os.PathLike
        The skycells ASDF file.
    cache_regions : int, optional
        How many regions' skycell rows to keep decoded in memory.
    """

    def __init__(self, path, cache_regions=256):
        self.path = str(path)
        try:
            self._file = asdf.open(self.path, lazy_load=True, memmap=True)
            roman = self._file.tree["roman"]
            self._region_table = np.asarray(roman["projection_regions"])
            self._skycell_table = roman["skycells"]
        except FileNotFoundError:
            raise RomosaicInputError(f"{self.path}: skycells file not found") from None
        except (KeyError, ValueError, OSError) as error:
            raise RomosaicInputError(
                f"{self.path}: not a skycells reference file ({error})") from None
        self.region_cells = lru_cache(maxsize=cache_regions)(self._read_region_cells)
        self._regions = [self._region(row) for row in self._region_table]
        self._region_position = {region.index: i for i, region in enumerate(self._regions)}

    @property
    def regions(self):
        return self._regions

    def region(self, index):
        return self.regions[self._region_position[int(index)]]

    def skycell_range(self, index):
        row = self._region_table[self._region_position[int(index)]]
        return int(row["skycell_start"]), int(row["skycell_end"])

    @staticmethod
    def _region(row):
        ra_min, ra_max = float(row["ra_min"]), float(row["ra_max"])
        span = (ra_max - ra_min) % 360.0 or 360.0
        ring_size = max(1, round(360.0 / span))
        return ProjectionRegion(
            index=int(row["index"]),
            ra_tangent=float(row["ra_tangent"]),
            dec_tangent=float(row["dec_tangent"]),
            ra_min=ra_min,
            ra_max=ra_max,
            dec_min=float(row["dec_min"]),
            dec_max=float(row["dec_max"]),
            nx=int(row["nx"]),
            ny=int(row["ny"]),
            # Regions of a ring share their tangent declination.
            ring=round(float(row["dec_tangent"]), 9),
            ring_size=ring_size,
            orientat=float(row["orientat"]),
        )

    def _read_region_cells(self, index):
        region = self.region(index)
        start, end = self.skycell_range(index)
        rows = np.asarray(self._skycell_table[start:end])
        names = rows["name"].astype(str)
        return RegionCells(
            region=region,
            names=names,
            rows=np.array([int(n[7:9]) - 50 for n in names]),
            cols=np.array([int(n[10:12]) - 50 for n in names]),
            ra_center=rows["ra_center"].astype(float),
            dec_center=rows["dec_center"].astype(float),
            corners=np.stack(
                [np.column_stack([rows[f"ra_corn{i}"], rows[f"dec_corn{i}"]]) for i in range(1, 5)],
                axis=1,
            ).astype(float),
        )
