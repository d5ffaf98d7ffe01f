"""Quick-look PNG previews of mosaics (``romosaic preview``).

A preview shows a `~roman_datamodels.datamodels.MosaicModel`'s ``data`` in
grayscale with an asinh stretch between robust percentile limits, NaN pixels in
a distinct colour, RA/Dec axes drawn by WCSAxes from the mosaic's own gwcs, a
colour bar in the plane's unit and a compass pointing north and east. Other
planes can be shown instead (`PLANES`): the error, the weight, the number of
inputs contributing to each pixel, the exposure-time map, or the catalog's
segmentation map. Mosaics larger than ``max_pixels`` on a side are
block-averaged first, so that a full 5000 x 5000 skycell renders in a few
seconds and a modest amount of memory.

Drawing uses a bare `matplotlib.figure.Figure` on the Agg canvas, never pyplot,
so previews work without a display and do not touch global plotting state.
"""

import argparse
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._atomic import atomic_output
from .errors import ModelTypeError, RomosaicInputError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "NAN_COLOR",
    "PLANES",
    "PreviewImage",
    "add_cli_parser",
    "asinh_stretch",
    "block_reduce_nanmean",
    "prepare_preview",
    "write_preview",
]

log = logging.getLogger(__name__)

#: Default limit on the side length, in pixels, of the array that is drawn.
DEFAULT_MAX_PIXELS = 2000

#: Colour of NaN pixels; a muted blue stands out from any gray level without
#: dominating previews whose footprint leaves much of the skycell empty.
NAN_COLOR = "#3a6ea5"

_DEFAULT_DPI = 100

# Small mosaics are magnified to at least this many screen pixels on their
# long side, otherwise the image would be dwarfed by its own tick labels.
_MIN_DISPLAY_PIXELS = 600

# Figure margins in inches around the image, wide enough for sexagesimal tick
# labels and the two title lines; the saved PNG is cropped to its content.
_MARGINS = {"left": 1.3, "right": 0.6, "bottom": 0.9, "top": 1.0}

# Input pixels handled per pass of the block average: bounds the float64
# working copy (about 16 MB) whatever the size of the mosaic.
_CHUNK_PIXELS = 2_000_000

_AXIS_LABELS = {"pos.eq.ra": "RA", "pos.eq.dec": "Dec"}

#: Planes a preview can show: (colour-bar label, how values are stretched).
#: ``context`` is shown as the number of inputs contributing to each pixel;
#: ``segm`` is read from the segmentation map beside the mosaic
#: (``<product>_segm.asdf``), one colour per source.
PLANES = {
    "data": ("surface brightness [MJy/sr]", "asinh"),
    "err": ("uncertainty [MJy/sr]", "asinh"),
    "weight": ("drizzle weight", "linear"),
    "context": ("contributing inputs", "linear"),
    "exptime": ("exposure time [s]", "linear"),
    "segm": ("source label", "labels"),
}

# Space in inches right of the image for the colour bar and its label.
_COLORBAR_MARGIN = 1.3

# Stretch used by write_preview: asinh_stretch's defaults, named once so the
# caption printed on the preview cannot drift from what was applied.
_LOWER_PERCENTILE = 1.0
_UPPER_PERCENTILE = 99.5
_SOFTENING = 0.1


@dataclass(frozen=True)
class PreviewImage:
    """The array a preview draws and the WCS of its pixels.

    Attributes
    ----------
    data : numpy.ndarray
        Two-dimensional float32 image, block-averaged from the mosaic; NaN where
        a block held no finite pixel.
    wcs : gwcs.wcs.WCS or None
        WCS of ``data``'s pixels (not the mosaic's), or None if the mosaic has
        no usable WCS and the preview falls back to pixel axes.
    block : int
        Side length of the square blocks of mosaic pixels averaged into one
        pixel of ``data``; 1 means no reduction.
    mosaic_shape : tuple of int
        Shape ``(ny, nx)`` of the mosaic's ``data``.
    """

    data: np.ndarray
    wcs: object
    block: int
    mosaic_shape: tuple


def asinh_stretch(
    data,
    *,
    lower_percentile=_LOWER_PERCENTILE,
    upper_percentile=_UPPER_PERCENTILE,
    softening=_SOFTENING,
):
    """Map finite pixel values to [0, 1] with an asinh stretch.

    Values are first scaled linearly so that the ``lower_percentile`` and
    ``upper_percentile`` of the finite pixels map to 0 and 1 (and clipped to
    that range), then ``y = asinh(x / softening) / asinh(1 / softening)``,
    which is nearly linear for ``x << softening`` and logarithmic above it.

    Parameters
    ----------
    data : array_like
        Image values; NaN and infinite values are ignored when computing the
        limits.
    lower_percentile, upper_percentile : float, optional
        Percentiles of the finite values mapped to 0 and 1;
        ``0 <= lower_percentile < upper_percentile <= 100``.
    softening : float, optional
        Positive asinh softening parameter, as a fraction of the range between
        the limits; smaller values compress the bright end more.

    Returns
    -------
    numpy.ndarray
        Float64 array of ``data``'s shape with values in [0, 1], and NaN
        wherever ``data`` is not finite. If no value is finite the result is
        all NaN; if the two limits coincide (a constant image, or one that is
        nearly so) every finite value maps to 0. Neither case raises; callers
        that care should check (see `write_preview`).

    Raises
    ------
    ValueError
        If the percentiles or the softening are out of range.
    """
    stretched, _ = _asinh_stretch_with_limits(
        data,
        lower_percentile=lower_percentile,
        upper_percentile=upper_percentile,
        softening=softening,
    )
    return stretched


def _asinh_stretch_with_limits(data, *, lower_percentile, upper_percentile, softening):
    """Apply `asinh_stretch` and also return the limits it used.

    Returns
    -------
    stretched : numpy.ndarray
        As returned by `asinh_stretch`.
    limits : tuple of float or None
        Data values mapped to 0 and 1, or None if no value is finite.
    """
    if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
        raise ValueError(
            "percentiles must satisfy 0 <= lower < upper <= 100, got "
            f"lower={lower_percentile}, upper={upper_percentile}"
        )
    if not (np.isfinite(softening) and softening > 0):
        raise ValueError(f"softening must be a positive number, got {softening}")

    values = np.asarray(data, dtype=np.float64)
    stretched = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    if not finite.any():
        return stretched, None

    good = values[finite]
    low, high = (float(v) for v in np.percentile(good, [lower_percentile, upper_percentile]))
    if not high > low:
        # Nothing to stretch between equal limits; black is as good as any.
        stretched[finite] = 0.0
        return stretched, (low, high)

    scaled = np.clip((good - low) / (high - low), 0.0, 1.0)
    stretched[finite] = np.arcsinh(scaled / softening) / np.arcsinh(1.0 / softening)
    return stretched, (low, high)


def block_reduce_nanmean(data, block, *, chunk_pixels=_CHUNK_PIXELS):
    """Average square blocks of pixels, ignoring non-finite values.

    Parameters
    ----------
    data : array_like
        Two-dimensional image; may be a memory-mapped or lazily loaded array,
        which is read a strip of block rows at a time.
    block : int
        Side length of the blocks, >= 1.
    chunk_pixels : int, optional
        Approximate number of input pixels processed per pass; bounds the
        temporary memory.

    Returns
    -------
    numpy.ndarray
        Float32 array of shape ``(ceil(ny / block), ceil(nx / block))``. Output
        pixel ``(j, i)`` is the mean of the finite values among input pixels
        ``[j*block:(j+1)*block, i*block:(i+1)*block]`` (blocks on the top and
        right edges may be partial), or NaN if there are none. Its centre is
        at input pixel coordinates ``block * (i, j) + (block - 1) / 2``.
    """
    block = int(block)
    if block < 1:
        raise ValueError(f"block must be a positive integer, got {block}")
    ny, nx = np.shape(data)
    out_ny, out_nx = -(-ny // block), -(-nx // block)
    reduced = np.empty((out_ny, out_nx), dtype=np.float32)
    block_rows_per_pass = max(1, chunk_pixels // (block * block * out_nx))

    for start in range(0, out_ny, block_rows_per_pass):
        stop = min(start + block_rows_per_pass, out_ny)
        strip = np.full(((stop - start) * block, out_nx * block), np.nan)
        source = np.asarray(data[start * block : stop * block])
        strip[: source.shape[0], :nx] = source
        finite = np.isfinite(strip)
        strip[~finite] = 0.0
        sums = strip.reshape(stop - start, block, out_nx, block).sum(axis=(1, 3))
        counts = finite.reshape(stop - start, block, out_nx, block).sum(axis=(1, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            # 0 / 0 gives the NaN wanted for blocks with no finite pixel.
            reduced[start:stop] = sums / counts
    return reduced


def prepare_preview(model, *, max_pixels=DEFAULT_MAX_PIXELS, plane="data", values=None):
    """Block-average a mosaic to preview size and derive the matching WCS.

    Parameters
    ----------
    model : roman_datamodels.datamodels.MosaicModel
        The mosaic.
    max_pixels : int, optional
        Largest allowed side of the returned image; the block size is the
        smallest integer that achieves it.
    plane : str, optional
        One of `PLANES`: what the blocks hold. Labels (``segm``) are sampled
        at each block's first pixel, not averaged.
    values : numpy.ndarray, optional
        The plane's array, when it is not the model's own (``context``
        counts, the exposure-time map, the segmentation map).

    Returns
    -------
    PreviewImage
        The reduced image, its WCS and the block size.
    """
    max_pixels = _check_max_pixels(max_pixels)
    data = getattr(model, plane) if values is None else values
    if np.ndim(data) != 2:
        raise RomosaicInputError(
            f"mosaic data must be two-dimensional, got shape {np.shape(data)} "
            f"in {_describe_model(model)}"
        )
    ny, nx = np.shape(data)
    block = max(1, math.ceil(max(ny, nx) / max_pixels))
    if block > 1:
        log.info("Averaging %d x %d pixel blocks for the preview", block, block)
    if PLANES.get(plane, ("", ""))[1] == "labels":
        reduced = np.asarray(data[::block, ::block], dtype=np.float32)
    else:
        reduced = block_reduce_nanmean(data, block)

    wcs = _model_wcs(model)
    if wcs is not None:
        wcs = _blocked_wcs(wcs, block, reduced.shape)
    return PreviewImage(data=reduced, wcs=wcs, block=block, mosaic_shape=(ny, nx))


def write_preview(
    mosaic, output_path, *, title=None, max_pixels=DEFAULT_MAX_PIXELS, dpi=_DEFAULT_DPI,
    plane="data",
):
    """Write a quick-look PNG of a mosaic.

    Parameters
    ----------
    mosaic : roman_datamodels.datamodels.MosaicModel or str or os.PathLike
        The mosaic, or the path of an ASDF file holding one.
    output_path : str or os.PathLike
        Where to write the PNG. Its directory must exist. The file is written
        under a temporary name and renamed into place, so readers never see a
        partial PNG and a failure leaves any previous file untouched.
    title : str, optional
        Title above the image. Defaults to the file name, the filter and the
        mosaic's shape. A second line describing the stretch is always added.
    max_pixels : int, optional
        Mosaics larger than this on either side are block-averaged (ignoring
        NaN) until they fit; the image is then drawn at one screen pixel per
        averaged pixel, small images being magnified.
    dpi : float, optional
        Resolution of the PNG; sets the size of text relative to the image.
    plane : str, optional
        What to show, one of `PLANES` (default ``data``). ``segm`` needs the
        mosaic as a file, with its segmentation map beside it.

    Returns
    -------
    pathlib.Path
        ``output_path``.

    Raises
    ------
    RomosaicInputError
        If the input file is missing or unreadable, the output directory does
        not exist, or ``max_pixels`` is not a positive integer.
    ModelTypeError
        If ``mosaic`` is not a MosaicModel.

    Notes
    -----
    An image with no finite pixel, or a constant one, is still written (blank
    or uniform) and a warning is logged.
    """
    output_path = Path(output_path)
    max_pixels = _check_max_pixels(max_pixels)
    if plane not in PLANES:
        raise RomosaicInputError(f"unknown plane {plane!r}; choose one of {', '.join(PLANES)}")
    if output_path.is_dir() or not output_path.parent.is_dir():
        raise RomosaicInputError(
            f"cannot write preview to {output_path}: "
            + ("it is a directory" if output_path.is_dir() else "directory does not exist")
        )
    if isinstance(mosaic, (str, os.PathLike)) and _same_file(mosaic, output_path):
        raise RomosaicInputError(f"preview output would overwrite the input file {mosaic}")

    label, stretch = PLANES[plane]
    with _open_mosaic(mosaic) as (model, source_name):
        values = _plane_values(model, plane, mosaic, source_name)
        image = prepare_preview(model, max_pixels=max_pixels, plane=plane, values=values)
        del values
        filter_name = _optional_meta(model, "instrument", "optical_element")

    if stretch == "asinh":
        stretched, limits = _asinh_stretch_with_limits(
            image.data,
            lower_percentile=_LOWER_PERCENTILE,
            upper_percentile=_UPPER_PERCENTILE,
            softening=_SOFTENING,
        )
    else:
        stretched, limits = _linear_stretch_with_limits(image.data)
    if limits is None:
        log.warning("%s has no finite pixels; the preview is blank", source_name)
    elif limits[0] == limits[1]:
        log.warning(
            "%s has the same value (%g) at the %g and %g percentiles; the preview is uniform",
            source_name,
            limits[0],
            _LOWER_PERCENTILE,
            _UPPER_PERCENTILE,
        )

    if title is None:
        title = _default_title(source_name, filter_name, image.mosaic_shape)
        if plane != "data":
            title += f"  \N{MIDDLE DOT}  {plane}"
    if stretch == "labels":
        rgba = _label_colors(image.data)
        colorbar = None
    else:
        rgba = _colorize(stretched, "gray" if stretch == "asinh" else "viridis")
        colorbar = _colorbar_mapping(stretch, limits, label)
    del stretched  # the float64 copy is the largest array left; free it before drawing
    figure = _draw(rgba, image.wcs, title,
                   _stretch_caption(limits, image.block, stretch, plane), dpi,
                   colorbar=colorbar)
    metadata = {"Title": title, "Software": f"romosaic {_version()}"}
    _save_png_atomically(figure, output_path, dpi=dpi, metadata=metadata)
    log.info("Wrote preview %s", output_path)
    return output_path


def add_cli_parser(subparsers):
    """Add the ``preview`` sub-command to the ``romosaic`` command line.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        As returned by `argparse.ArgumentParser.add_subparsers`.

    Returns
    -------
    argparse.ArgumentParser
        The sub-command's parser.
    """
    parser = subparsers.add_parser(
        "preview",
        help="write a quick-look PNG of a mosaic",
        description="Write a quick-look PNG of a mosaic: asinh-stretched grayscale "
        f"with RA/Dec axes, NaN pixels in blue ({NAN_COLOR}). Large mosaics are "
        "block-averaged to fit within --max-pixels.",
    )
    parser.add_argument("input", metavar="COADD.asdf", help="mosaic (MosaicModel) ASDF file")
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT.png",
        help="PNG to write (default: the input path with .png replacing .asdf)",
    )
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="block-average the mosaic to at most N pixels on a side "
        f"(default: {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument(
        "--plane",
        choices=tuple(PLANES),
        default="data",
        help="what to show: data (default), err, weight, context (number of contributing "
        "inputs), exptime (exposure-time map) or segm (the segmentation map beside the "
        "mosaic); the default output is then COADD_<plane>.png",
    )
    parser.set_defaults(run=_run)
    return parser


def _run(args):
    input_path = Path(args.input)
    default = input_path.with_suffix(".png") if args.plane == "data" else \
        input_path.with_name(f"{input_path.stem}_{args.plane}.png")
    output_path = Path(args.output) if args.output else default
    written = write_preview(input_path, output_path, max_pixels=args.max_pixels,
                            plane=args.plane)
    print(written)
    return 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _check_max_pixels(max_pixels):
    # Accept numpy integers and integral floats, but not fractions that would
    # silently round.
    try:
        valid = (
            not isinstance(max_pixels, bool) and float(max_pixels).is_integer() and max_pixels >= 1
        )
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid:
        raise RomosaicInputError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return int(max_pixels)


def _same_file(a, b):
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


@contextmanager
def _open_mosaic(mosaic):
    """Yield ``(model, name)``, opening and later closing a path."""
    from roman_datamodels import datamodels as rdm

    if isinstance(mosaic, rdm.DataModel):
        _require_mosaic(mosaic, _describe_model(mosaic))
        yield mosaic, _model_filename(mosaic)
        return

    from .models import open_mosaic_model

    path = Path(mosaic)
    # Memory-mapping lets the block average read a huge mosaic strip by strip.
    model = open_mosaic_model(path, memmap=True)
    try:
        yield model, path.name
    finally:
        model.close()


def _require_mosaic(model, description):
    from roman_datamodels import datamodels as rdm

    if not isinstance(model, rdm.MosaicModel):
        raise ModelTypeError(
            f"{description}: expected a MosaicModel (a roman_mos coadd), got {type(model).__name__}"
        )


def _model_filename(model):
    name = _optional_meta(model, "filename")
    # Unset string metadata in roman_datamodels fake/default models is "?".
    return str(name) if name not in (None, "", "?") else None


def _describe_model(model):
    name = _model_filename(model)
    return f"model {name}" if name else f"in-memory {type(model).__name__}"


def _optional_meta(model, *keys):
    node = model.meta
    try:
        for key in keys:
            node = getattr(node, key)
    except AttributeError:
        return None
    return node


def _model_wcs(model):
    wcs = _optional_meta(model, "wcs")
    if wcs is None:
        log.warning("%s has no WCS; the preview shows pixel coordinates", _describe_model(model))
    return wcs


def _blocked_wcs(wcs, block, shape):
    """Return the WCS of the block-averaged image's pixels.

    Reduced pixel ``p`` is centred on original pixel ``block * p +
    (block - 1) / 2``; prepending that mapping to the gwcs pipeline keeps the
    mosaic's own transform (including any distortion) exact, where a FITS
    approximation would not be. A bounding box is carried over, rescaled, so
    that the preview's WCS is undefined exactly where the mosaic's is.
    """
    if block == 1:
        return wcs
    import gwcs
    from astropy.modeling import models

    if not isinstance(wcs, gwcs.WCS):
        log.warning(
            "cannot rescale a %s for a block-averaged preview; showing pixel coordinates",
            type(wcs).__name__,
        )
        return None
    offset = (block - 1) / 2
    to_mosaic_pixels = models.Scale(block) & models.Scale(block) | (
        models.Shift(offset) & models.Shift(offset)
    )
    blocked = gwcs.WCS(
        forward_transform=to_mosaic_pixels | wcs.forward_transform,
        input_frame=wcs.input_frame,
        output_frame=wcs.output_frame,
        name=wcs.name,
    )
    if wcs.bounding_box is not None:
        blocked.bounding_box = tuple(
            ((low - offset) / block, (high - offset) / block)
            for low, high in wcs.bounding_box.bounding_box(order="F")
        )
    blocked.array_shape = shape
    return blocked


def _default_title(source_name, filter_name, shape):
    parts = [source_name or "mosaic"]
    if filter_name:
        parts.append(str(filter_name))
    # Written as a numpy shape, (ny, nx), to match what users see in Python.
    parts.append(f"shape ({shape[0]}, {shape[1]})")
    return "  \N{MIDDLE DOT}  ".join(parts)


def _stretch_caption(limits, block, stretch="asinh", plane="data"):
    if limits is None:
        text = "no finite pixels"
    elif stretch == "asinh":
        text = (
            f"asinh stretch, {_LOWER_PERCENTILE:g}\N{EN DASH}{_UPPER_PERCENTILE:g} percentile"
            f" = {limits[0]:.4g} to {limits[1]:.4g}"
        )
    elif stretch == "linear":
        text = f"linear, {limits[0]:.4g} to {limits[1]:.4g}"
    else:
        text = "one colour per source, background black"
    if block > 1:
        kind = "sampled every" if stretch == "labels" else "block mean of"
        text += f"; {kind} {block}\N{MULTIPLICATION SIGN}{block}"
    return text + "; NaN in blue"


def _plane_values(model, plane, mosaic, source_name):
    """The array a plane shows, when it is not one of the model's own arrays."""
    from .mosaic_planes import contributing_inputs, exposure_time_plane

    if plane in ("data", "err", "weight"):
        if getattr(model, plane, None) is None:
            raise RomosaicInputError(f"{source_name}: has no {plane} array")
        return None
    if plane == "context":
        context = getattr(model, "context", None)
        if context is None:
            raise RomosaicInputError(f"{source_name}: has no context array")
        return contributing_inputs(context).astype(np.float32)
    if plane == "exptime":
        exposure = exposure_time_plane(model)
        if exposure is None:
            raise RomosaicInputError(
                f"{source_name}: records no exposure time for its inputs "
                "(meta.individual_image_meta.exposure); no exposure-time map to show")
        return exposure
    return _segmentation_beside(model, mosaic, source_name)


def _segmentation_beside(model, mosaic, source_name):
    """The segmentation map written with a mosaic: ``<product>_segm.asdf`` beside it."""
    from roman_datamodels import datamodels as rdm

    if not isinstance(mosaic, (str, os.PathLike)):
        raise RomosaicInputError("--plane segm needs the mosaic as a file, with its "
                                 "segmentation map beside it")
    path = Path(mosaic)
    stem = path.name.removesuffix(".asdf")
    for suffix in ("_coadd", "_i2d"):
        stem = stem.removesuffix(suffix)
    segm_path = path.with_name(f"{stem}_segm.asdf")
    if not segm_path.is_file():
        raise RomosaicInputError(f"{source_name}: no segmentation map {segm_path} beside it")
    try:
        with rdm.open(segm_path) as segmentation:
            labels = np.array(segmentation.data)
    except Exception as error:
        raise RomosaicInputError(f"{segm_path}: cannot be read ({error})") from None
    if labels.shape != np.shape(model.data):
        raise RomosaicInputError(f"{segm_path}: shape {labels.shape} differs from the "
                                 f"mosaic's {np.shape(model.data)}")
    return labels


def _linear_stretch_with_limits(data):
    """Values scaled linearly from their minimum (0) to their maximum (1)."""
    values = np.asarray(data, dtype=np.float64)
    stretched = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    if not finite.any():
        return stretched, None
    low, high = float(values[finite].min()), float(values[finite].max())
    stretched[finite] = (values[finite] - low) / (high - low) if high > low else 0.0
    return stretched, (low, high)


def _colorize(stretched, colormap="gray"):
    """Map stretched values to 8-bit RGBA, NaN in `NAN_COLOR`."""
    import matplotlib as mpl

    cmap = mpl.colormaps[colormap].with_extremes(bad=NAN_COLOR)
    # Colouring here rather than letting imshow do it saves matplotlib's
    # float64 RGBA working copies, over a hundred MB for a 2000-pixel preview.
    return cmap(stretched, bytes=True)


def _label_colors(labels):
    """One fixed pseudo-random colour per label, background (0) black, NaN in `NAN_COLOR`."""
    import matplotlib as mpl

    finite = np.isfinite(labels)
    ids = np.where(finite, labels, 0).astype(np.int64)
    palette = np.random.default_rng(0).uniform(0.3, 1.0, (int(ids.max(initial=0)) + 1, 3))
    palette[0] = 0.0
    rgba = np.empty((*labels.shape, 4), np.uint8)
    rgba[..., :3] = (palette[ids] * 255).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[~finite] = (np.array(mpl.colors.to_rgba(NAN_COLOR)) * 255).astype(np.uint8)
    return rgba


def _colorbar_mapping(stretch, limits, label):
    """A colour-bar mapping of data values to the colours drawn, or None without limits."""
    import matplotlib as mpl

    if limits is None or not limits[1] > limits[0]:
        return None
    low, high = limits
    if stretch == "asinh":
        scale = np.arcsinh(1.0 / _SOFTENING)

        def forward(values):
            scaled = np.clip((np.asarray(values, float) - low) / (high - low), 0.0, 1.0)
            return np.arcsinh(scaled / _SOFTENING) / scale

        def inverse(values):
            return low + (high - low) * _SOFTENING * np.sinh(np.asarray(values, float) * scale)

        norm = mpl.colors.FuncNorm((forward, inverse), vmin=low, vmax=high)
        cmap = "gray"
    else:
        norm = mpl.colors.Normalize(vmin=low, vmax=high)
        cmap = "viridis"
    mapping = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
    mapping.label = label
    return mapping


def _draw(rgba, wcs, title, caption, dpi, *, colorbar=None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ny, nx = rgba.shape[:2]
    zoom = max(1.0, _MIN_DISPLAY_PIXELS / max(ny, nx))
    image_width, image_height = nx * zoom / dpi, ny * zoom / dpi
    right = _MARGINS["right"] + (_COLORBAR_MARGIN if colorbar is not None else 0.0)
    width = image_width + _MARGINS["left"] + right
    height = image_height + _MARGINS["bottom"] + _MARGINS["top"]

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    rect = [
        _MARGINS["left"] / width,
        _MARGINS["bottom"] / height,
        image_width / width,
        image_height / height,
    ]
    if wcs is not None:
        axes = figure.add_axes(rect, projection=wcs)
        _label_world_axes(axes, wcs)
    else:
        axes = figure.add_axes(rect)
        axes.set_xlabel("x [preview pixel]")
        axes.set_ylabel("y [preview pixel]")

    axes.imshow(rgba, origin="lower", interpolation="nearest")
    axes.set_title(f"{title}\n{caption}", fontsize="medium", pad=12)
    if colorbar is not None:
        left = (_MARGINS["left"] + image_width + 0.25) / width
        bar = figure.add_axes([left, rect[1], 0.18 / width, rect[3]])
        figure.colorbar(colorbar, cax=bar).set_label(colorbar.label)
    if wcs is not None:
        _draw_compass(axes, wcs, nx, ny)
    return figure


def _draw_compass(axes, wcs, nx, ny):
    """Arrows pointing north and east from near the image's top-left corner."""
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    try:
        ra, dec = (float(v) for v in wcs(xc, yc, with_bounding_box=False))
        step = 1.0 / 3600.0
        directions = {
            "N": wcs.invert(ra, dec + step, with_bounding_box=False),
            "E": wcs.invert(ra + step / max(np.cos(np.radians(dec)), 1e-6), dec,
                            with_bounding_box=False),
        }
    except Exception:  # a WCS that cannot be evaluated gets no compass
        return
    length = 0.09 * max(nx, ny)
    start = (0.2 * nx, 0.82 * ny)
    for name, (x, y) in directions.items():
        dx, dy = float(x) - xc, float(y) - yc
        norm = np.hypot(dx, dy)
        if not np.isfinite(norm) or norm == 0:
            continue
        end = (start[0] + length * dx / norm, start[1] + length * dy / norm)
        axes.annotate("", xy=end, xytext=start,
                      arrowprops={"arrowstyle": "->", "color": "#e8b930", "lw": 1.5})
        axes.text(start[0] + 1.3 * length * dx / norm, start[1] + 1.3 * length * dy / norm,
                  name, color="#e8b930", ha="center", va="center", fontweight="bold")


def _label_world_axes(axes, wcs):
    frame = getattr(getattr(wcs, "output_frame", None), "reference_frame", None)
    frame_name = getattr(frame, "name", "")
    for index, physical_type in enumerate(wcs.world_axis_physical_types):
        label = _AXIS_LABELS.get(physical_type)
        if label:
            axes.coords[index].set_axislabel(
                f"{label} ({frame_name.upper()})" if frame_name else label
            )


def _save_png_atomically(figure, output_path, *, dpi, metadata):
    with atomic_output(output_path) as temporary:
        figure.savefig(
            temporary,
            format="png",
            dpi=dpi,
            bbox_inches="tight",
            pad_inches=0.15,
            metadata=metadata,
        )


def _version():
    from . import __version__

    return __version__
