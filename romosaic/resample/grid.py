"""Output grids: where a mosaic's pixels lie on the sky.

A grid is a gwcs plus an array shape. `free_grid` builds the "free" grid of the
reference pipeline: a TAN projection centred on the inputs' combined
footprint, at the inputs' pixel scale times ``pixel_scale_ratio`` (or an
absolute ``pixel_scale``), oriented as the first input's pointing metadata
records its aperture (else like its pixel axes) unless a ``rotation`` is
given, and just large enough to hold every input.
`grid_from_wcs_file` reads a user-supplied grid. `skycell_grid` is a
skycell's full 5000 × 5000 grid of the Roman sky tessellation, and
`skycell_grid_for_association` applies the reference pipeline's rule for
when an association asks for one. `region_window_grid` is any rectangle of
a projection region's pixel grid (optionally with pixels grouped in
blocks), the grid of custom mosaics.
"""

import logging
import math
from dataclasses import dataclass, field

import asdf
import numpy as np

from ..errors import RomosaicInputError
from ..wcs_utils import (
    affine_tan_wcs,
    cd_from_orientation,
    footprint,
    local_cd_matrix,
    orientation_and_parity,
    pixel_scale_arcsec,
    sky_to_unit_vectors,
    unit_vectors_to_sky,
)

__all__ = [
    "DEFAULT_MAX_OUTPUT_PIXELS",
    "OutputGrid",
    "check_grid_size",
    "estimate_mosaic_bytes",
    "free_grid",
    "grid_from_wcs_file",
    "native_pixel_scale",
    "region_window_grid",
    "require_overlap",
    "skycell_grid",
    "skycell_grid_for_association",
    "skycell_name_from_association",
]

log = logging.getLogger(__name__)

# Refuse grids beyond this many pixels: a typo in pixel_scale or an input far
# away on the sky would otherwise try to allocate terabytes.
MAX_OUTPUT_PIXELS = 2_000_000_000

#: Default of the resample step's ``max_output_pixels``: 20000 x 20000 pixels,
#: room for a custom mosaic of 3 x 3 skycells (about 14600² pixels) with
#: about 9 GiB of output arrays, while inputs scattered over the sky (a grid
#: of 10⁵ x 10⁵ pixels or more) are refused before anything is allocated.
DEFAULT_MAX_OUTPUT_PIXELS = 400_000_000


def estimate_mosaic_bytes(shape, n_inputs, *, include_var_flat=False):
    """Bytes of the arrays a mosaic of ``shape`` holds in memory at once.

    Data, weight, error and each variance plane are float32; the context has
    one uint32 plane per 32 inputs. Temporary copies made while finishing
    the mosaic come one array at a time and are not counted.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)``.
    n_inputs : int
    include_var_flat : bool, optional

    Returns
    -------
    int
    """
    ny, nx = (int(n) for n in shape)
    float_planes = 3 + 2 + (1 if include_var_flat else 0)
    context_planes = max(1, (int(n_inputs) + 31) // 32)
    return ny * nx * 4 * (float_planes + context_planes)


def check_grid_size(shape, *, n_inputs=1, max_pixels=DEFAULT_MAX_OUTPUT_PIXELS,
                    parameter="max_output_pixels", include_var_flat=False):
    """Refuse an output grid larger than ``max_pixels``, before anything is allocated.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)``.
    n_inputs : int, optional
        Number of inputs (sets the context planes of the memory estimate).
    max_pixels : int, optional
    parameter : str, optional
        How the user sets the limit, for the message.
    include_var_flat : bool, optional

    Raises
    ------
    RomosaicInputError
        Naming the grid size, its memory estimate and the parameter to raise.
    """
    ny, nx = (int(n) for n in shape)
    pixels = nx * ny
    if pixels <= max_pixels:
        return
    size = estimate_mosaic_bytes(shape, n_inputs, include_var_flat=include_var_flat)
    raise RomosaicInputError(
        f"output grid of {nx} x {ny} pixels ({_count(pixels)} pixels, about {_bytes(size)} "
        f"of mosaic arrays) exceeds {parameter}={int(max_pixels)}; check that the inputs "
        f"belong together and the grid parameters, or raise {parameter}")


def _significant(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _count(pixels):
    if pixels >= 1e9:
        return f"{_significant(pixels / 1e9)} billion"
    if pixels >= 1e6:
        return f"{_significant(pixels / 1e6)} million"
    return f"{pixels:,}"


def _bytes(size):
    if size >= 2**30:
        return f"{_significant(size / 2**30)} GiB"
    return f"{_significant(size / 2**20)} MiB"


@dataclass
class OutputGrid:
    """A mosaic's pixel grid.

    Attributes
    ----------
    wcs : gwcs.wcs.WCS
        Pixel ``(x, y)`` → ICRS degrees.
    shape : tuple of int
        Array shape ``(ny, nx)``.
    crval : tuple of float
        Tangent point (RA, Dec) in degrees.
    crpix : tuple of float
        0-based pixel ``(x, y)`` of the tangent point.
    pixel_scale : float
        Pixel size in arcseconds at the tangent point.
    skycell_name : str or None
        Name of the skycell the grid belongs to, if any.
    pixel_scale_ref : float or None
        Pixel scale (arcsec) of the projection region; equal to
        ``pixel_scale`` outside the sky tessellation.
    """

    wcs: object
    shape: tuple
    crval: tuple
    crpix: tuple
    pixel_scale: float
    skycell_name: str | None = None
    pixel_scale_ref: float | None = field(default=None)

    def __post_init__(self):
        if self.pixel_scale_ref is None:
            self.pixel_scale_ref = self.pixel_scale


def native_pixel_scale(wcs, shape):
    """Pixel scale in arcseconds at the centre of an image."""
    ny, nx = shape
    return pixel_scale_arcsec(local_cd_matrix(wcs, (nx - 1) / 2, (ny - 1) / 2))


def free_grid(
    input_wcs_and_shapes,
    *,
    pixel_scale_ratio=1.0,
    pixel_scale=None,
    rotation=None,
    crpix=None,
    crval=None,
    output_shape=None,
    max_pixels=None,
    max_pixels_parameter="max_output_pixels",
    orientation=None,
):
    """A TAN grid covering a set of images.

    Parameters
    ----------
    input_wcs_and_shapes : list of (gwcs.wcs.WCS, tuple)
        Each input's WCS and array shape ``(ny, nx)``. The first one sets the
        default pixel scale and orientation.
    pixel_scale_ratio : float, optional
        Output pixel size over the first input's, when ``pixel_scale`` is None.
    pixel_scale : float, optional
        Output pixel size in arcseconds.
    rotation : float, optional
        Position angle of the output +y axis east of north, in degrees. None
        orients the grid by ``orientation``, or else like the first input's
        pixel axes at its centre (with its parity).
    crpix : (float, float), optional
        0-based pixel of the tangent point. Default: where the grid just
        holds all inputs (or the centre of ``output_shape`` when given).
    crval : (float, float), optional
        Tangent point (RA, Dec) in degrees. Default: centre of the combined
        footprint.
    output_shape : (int, int), optional
        Output ``(nx, ny)`` (the reference pipeline's order). Default: just
        large enough for all inputs.
    max_pixels : int, optional
        Refuse a grid with more pixels (see `check_grid_size`); default
        `MAX_OUTPUT_PIXELS`.
    max_pixels_parameter : str, optional
        How the user sets ``max_pixels``, for the message.
    orientation : (float, int), optional
        Position angle of +y (degrees east of north) and parity (-1 for
        "east left") of the first input's aperture as its pointing metadata
        records it (`romosaic.models.recorded_orientation`), the reference
        pipeline's orientation for the grid when ``rotation`` is None. Its
        parity also applies to a ``rotation``; without it, "east left".

    Returns
    -------
    OutputGrid

    Raises
    ------
    RomosaicInputError
        For non-positive scales or a grid larger than ``max_pixels``.
    """
    if not input_wcs_and_shapes:
        raise RomosaicInputError("no input images to build an output grid from")
    first_wcs, first_shape = input_wcs_and_shapes[0]
    ny0, nx0 = first_shape
    first_cd = local_cd_matrix(first_wcs, (nx0 - 1) / 2, (ny0 - 1) / 2)

    if pixel_scale is not None:
        if not pixel_scale > 0:
            raise RomosaicInputError(f"pixel_scale must be > 0 arcsec, got {pixel_scale}")
        scale_arcsec = float(pixel_scale)
    else:
        if not pixel_scale_ratio > 0:
            raise RomosaicInputError(f"pixel_scale_ratio must be > 0, got {pixel_scale_ratio}")
        scale_arcsec = pixel_scale_arcsec(first_cd) * float(pixel_scale_ratio)

    if rotation is not None:
        angle, parity = float(rotation), (-1 if orientation is None else int(orientation[1]))
    elif orientation is not None:
        angle, parity = float(orientation[0]), int(orientation[1])
    else:
        angle, parity = orientation_and_parity(first_cd)
    cd = cd_from_orientation(scale_arcsec / 3600.0, angle, parity=parity)

    all_ra, all_dec = _combined_footprint(input_wcs_and_shapes)
    if crval is None:
        centre = sky_to_unit_vectors(all_ra, all_dec).mean(axis=0)
        ra0, dec0 = unit_vectors_to_sky(centre)
        crval = (float(ra0[0]), float(dec0[0]))
    else:
        crval = (float(crval[0]), float(crval[1]))

    # Where the inputs fall with the tangent point at pixel (0, 0).
    probe = affine_tan_wcs(crval=crval, crpix=(0.0, 0.0), cd=cd, shape=(1, 1))
    u, v = probe.invert(all_ra, all_dec, with_bounding_box=False)
    u = np.asarray(u)
    v = np.asarray(v)
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
        raise RomosaicInputError(
            "the inputs span too much of the sky for one tangent-plane mosaic"
        )

    if output_shape is not None:
        nx, ny = (int(n) for n in output_shape)
        if nx < 1 or ny < 1:
            raise RomosaicInputError(f"output_shape must be positive, got {list(output_shape)}")
        if crpix is None:
            crpix = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    else:
        # Pixel i covers [i - 0.5, i + 0.5); shift so the footprint starts at -0.5.
        nx = max(1, int(math.ceil(u.max() - u.min() - 1e-6)))
        ny = max(1, int(math.ceil(v.max() - v.min() - 1e-6)))
        if crpix is None:
            crpix = (-0.5 - float(u.min()), -0.5 - float(v.min()))
    crpix = (float(crpix[0]), float(crpix[1]))

    if max_pixels is not None:
        check_grid_size((ny, nx), n_inputs=len(input_wcs_and_shapes), max_pixels=max_pixels,
                        parameter=max_pixels_parameter)
    elif nx * ny > MAX_OUTPUT_PIXELS:
        raise RomosaicInputError(
            f"output grid of {nx} x {ny} pixels ({_count(nx * ny)} pixels) is too large "
            f"(at most {_count(MAX_OUTPUT_PIXELS)}); check pixel_scale and that the inputs "
            "belong together"
        )
    wcs = affine_tan_wcs(crval=crval, crpix=crpix, cd=cd, shape=(ny, nx))
    return OutputGrid(wcs=wcs, shape=(ny, nx), crval=crval, crpix=crpix,
                      pixel_scale=scale_arcsec)


def _combined_footprint(input_wcs_and_shapes):
    ras, decs = [], []
    for wcs, shape in input_wcs_and_shapes:
        ra, dec = footprint(wcs, shape)
        ras.append(ra)
        decs.append(dec)
    return np.concatenate(ras), np.concatenate(decs)


def grid_from_wcs_file(path, *, output_shape=None):
    """An output grid from an ASDF file holding a gwcs under the key ``wcs``.

    Parameters
    ----------
    path : str or os.PathLike
    output_shape : (int, int), optional
        ``(nx, ny)``; required when the WCS records no shape or bounding box.

    Returns
    -------
    OutputGrid
    """
    try:
        with asdf.open(path, lazy_load=False) as af:
            wcs = af.tree["wcs"]
    except FileNotFoundError:
        raise RomosaicInputError(f"{path}: output_wcs file not found") from None
    except KeyError:
        raise RomosaicInputError(f"{path}: output_wcs file has no 'wcs' entry") from None
    except Exception as error:
        raise RomosaicInputError(f"{path}: cannot read output_wcs file ({error})") from None

    if output_shape is not None:
        nx, ny = (int(n) for n in output_shape)
    elif getattr(wcs, "pixel_shape", None) is not None:
        nx, ny = (int(n) for n in wcs.pixel_shape)
    elif wcs.bounding_box is not None:
        (x0, x1), (y0, y1) = wcs.bounding_box.bounding_box(order="F")
        nx, ny = int(round(x1 - x0)), int(round(y1 - y0))
    else:
        raise RomosaicInputError(
            f"{path}: output_wcs has no shape or bounding box; give output_shape"
        )
    wcs.pixel_shape = (nx, ny)
    wcs.array_shape = (ny, nx)
    if wcs.bounding_box is None:
        wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra, dec = wcs(cx, cy, with_bounding_box=False)
    scale = pixel_scale_arcsec(local_cd_matrix(wcs, cx, cy))
    return OutputGrid(wcs=wcs, shape=(ny, nx), crval=(float(ra), float(dec)), crpix=(cx, cy),
                      pixel_scale=scale)


def skycell_grid(name):
    """The full 5000 × 5000, 0.055″ grid of a skycell.

    Raises
    ------
    romosaic.skycell.SkycellNotFoundError
        If no skycell has that name.
    """
    from ..skycell import get_tessellation

    cell = get_tessellation().skycell(name)
    return OutputGrid(
        wcs=cell.wcs,
        shape=cell.shape,
        crval=(cell.region.ra_tangent, cell.region.dec_tangent),
        crpix=(cell.x_tangent, cell.y_tangent),
        pixel_scale=cell.pixel_scale,
        skycell_name=cell.name,
        pixel_scale_ref=cell.pixel_scale,
    )


def region_window_grid(region, *, x0, y0, nx, ny, block=1):
    """A rectangle of a projection region's pixel grid, as an output grid.

    Parameters
    ----------
    region : romosaic.skycell.ProjectionRegion
    x0, y0 : int
        Region pixel of the window's first pixel, in units of ``block``
        region pixels: window pixel ``(i, j)`` covers region pixels
        ``block·(x0 + i) … block·(x0 + i) + block − 1`` along x (and so on y).
    nx, ny : int
        Window size in (block) pixels.
    block : int, optional
        Region pixels per window pixel along each axis; 1 gives the region's
        own 0.055″ pixels, 2 the native 0.11″ pixels made of 2 × 2 of them.

    Returns
    -------
    OutputGrid
        TAN at the region's tangent point, north up, pixel edges on region
        pixel edges; with ``block=1`` it differs from any skycell grid of the
        region by an integer pixel shift only.
    """
    from ..skycell.geometry import PIXEL_SCALE_ARCSEC

    block = int(block)
    if block < 1:
        raise ValueError(f"block must be a positive integer, got {block}")
    nx, ny = int(nx), int(ny)
    if nx < 1 or ny < 1:
        raise ValueError(f"window size must be positive, got {nx} x {ny}")
    if nx * ny > MAX_OUTPUT_PIXELS:
        raise RomosaicInputError(f"output grid of {nx} x {ny} pixels is too large")
    scale = PIXEL_SCALE_ARCSEC * block
    # Region pixel x is at window pixel (x + 0.5) / block - 0.5 - x0: the
    # centre of a block of `block` region pixels is half a region pixel
    # from its first pixel's centre when block = 2, and so on.
    crpix = ((region.x_tangent + 0.5) / block - 0.5 - int(x0),
             (region.y_tangent + 0.5) / block - 0.5 - int(y0))
    crval = (float(region.ra_tangent), float(region.dec_tangent))
    wcs = affine_tan_wcs(crval=crval, crpix=crpix, cd=np.eye(2) * (scale / 3600.0),
                         shape=(ny, nx))
    return OutputGrid(wcs=wcs, shape=(ny, nx), crval=crval, crpix=crpix, pixel_scale=scale,
                      pixel_scale_ref=scale)


def skycell_name_from_association(*, skycell_wcs_info=None, target=None):
    """The skycell an association asks for, by the reference pipeline's rule.

    ``skycell_wcs_info["name"]`` if present, else ``target``; a missing target
    and the strings "none"/"None" name nothing.

    Returns
    -------
    str or None
    """
    if isinstance(skycell_wcs_info, dict) or hasattr(skycell_wcs_info, "get"):
        name = skycell_wcs_info.get("name") if skycell_wcs_info else None
        if name:
            return str(name).strip()
    if isinstance(target, str) and target.strip() and target.strip().lower() != "none":
        return target.strip()
    return None


def skycell_grid_for_association(*, skycell_wcs_info=None, target=None):
    """The skycell grid an association names, or None for a free grid.

    A name with the form of a skycell name must exist (else
    `~romosaic.skycell.SkycellNotFoundError`); any other target, such as an
    object name, means a free grid, and an INFO line says so.
    """
    from ..skycell import looks_like_skycell_name

    name = skycell_name_from_association(skycell_wcs_info=skycell_wcs_info, target=target)
    if name is None:
        return None
    if not looks_like_skycell_name(name):
        log.info("association target %r is not a skycell name; using a free grid", name)
        return None
    grid = skycell_grid(name)
    log.info("using the grid of skycell %s", name)
    return grid


def require_overlap(grid, geometry):
    """Raise `RomosaicInputError` unless some input overlaps ``grid``.

    Parameters
    ----------
    grid : OutputGrid
    geometry : list of (wcs, shape)
    """
    ny, nx = grid.shape
    for wcs, shape in geometry:
        ra, dec = footprint(wcs, shape)
        x, y = grid.wcs.invert(ra, dec, with_bounding_box=False)
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        # A footprint on the far side of the tangent plane has no projection.
        finite = np.isfinite(x) & np.isfinite(y)
        if not finite.any():
            continue
        x, y = x[finite], y[finite]
        if x.max() >= -0.5 and x.min() <= nx - 0.5 and y.max() >= -0.5 and y.min() <= ny - 0.5:
            return
    where = f"skycell {grid.skycell_name}" if grid.skycell_name else "the output grid"
    raise RomosaicInputError(
        f"none of the inputs overlaps {where}; check the association's target, or set "
        "resample_on_skycell=false for a free grid")
