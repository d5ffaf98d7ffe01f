"""The drizzle co-add: accumulate images on an output grid.

`DrizzleCoadd` drives romosaic's compiled kernels
(`romosaic.resample.kernels.drizzle_add`, checked against the `drizzle`
package by the tests). For each input image it adds, in one pass,

* the data, as the weighted mean ``Σ a·w·d / Σ a·w`` (``a`` the kernel
  overlap, ``w`` the pixel weight), so surface brightness in is surface
  brightness out;
* each variance plane, as ``Σ (a·w)²·var / (Σ a·w)²``, the variance of that
  weighted mean for independent input pixels;
* the weight ``Σ a·w``;
* one context bit: bit ``i % 32`` of plane ``i // 32`` is set where input ``i``
  contributed with non-zero weight, for any number of inputs.

It works on arrays in memory with pixel maps given (the noise-correlation
estimate drizzles small "comb" images with it); images of a run go through
`romosaic.resample.engine`, which makes the same planes with the same
kernel, a strip at a time. `CoaddResult` holds either's finished planes, and
`exposure_time_map` turns the context into exposure time per output pixel.
"""

from dataclasses import dataclass

import numpy as np

from .kernels import CONTEXT_BITS, drizzle_add

__all__ = ["CoaddResult", "DrizzleCoadd", "context_planes", "exposure_time_map", "fill_value"]


def context_planes(n_inputs):
    """Number of 32-bit context planes needed for ``n_inputs`` images."""
    return max(1, (int(n_inputs) + CONTEXT_BITS - 1) // CONTEXT_BITS)


def fill_value(fillval):
    """The float32 value of output pixels that receive nothing.

    ``fillval`` is a number, or ``"NaN"`` / ``"INDEF"`` (any case) for NaN,
    as the resample step's parameter of that name accepts.

    Examples
    --------
    >>> float(fill_value("0")), bool(np.isnan(fill_value("INDEF")))
    (0.0, True)
    """
    text = str(fillval).strip().lower()
    return np.float32(np.nan if text in ("nan", "indef") else float(text))


@dataclass
class CoaddResult:
    """Arrays of a finished co-add.

    Attributes
    ----------
    data, weight : numpy.ndarray of float32
    context : numpy.ndarray of uint32, shape ``(planes, ny, nx)``, or None
        None when the co-add was made ``with_context=False``.
    variances : dict of str to numpy.ndarray of float32
    exptimes : list of float
        Exposure time of each input, by context index.
    dq : numpy.ndarray of uint32, or None
        OR of the DQ flags of the input pixels deposited on each pixel; None
        unless DQ flags were propagated.
    region : (slice, slice)
        Rows and columns outside which nothing was deposited (weight 0,
        context 0): summaries of the co-add need look only there. The whole
        array by default.
    """

    data: np.ndarray
    weight: np.ndarray
    context: np.ndarray
    variances: dict
    exptimes: list
    dq: np.ndarray | None = None
    region: tuple = (slice(None), slice(None))


class DrizzleCoadd:
    """Accumulate input images onto one output grid with drizzle.

    Parameters
    ----------
    shape : (int, int)
        Output array shape ``(ny, nx)``.
    n_inputs : int
        Number of images that will be added (sets the context planes).
    variance_names : sequence of str
        Names of the variance planes to propagate, in order.
    kernel : str, optional
        Drizzle kernel: square, point, turbo, gaussian, lanczos2, lanczos3.
    pixfrac : float, optional
        Linear shrink factor of input pixels, in (0, 1].
    fillval : str or float, optional
        Value of output pixels that received no data.
    with_context : bool, optional
        Keep the context image (one uint32 plane per 32 inputs).

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.indices((3, 3), dtype=float)
    >>> coadd = DrizzleCoadd((3, 3), 1, variance_names=["var_rnoise"])
    >>> coadd.add(np.full((3, 3), 2.0), np.dstack([x, y]), weight=np.ones((3, 3)),
    ...           variances={"var_rnoise": np.full((3, 3), 0.5)}, exptime=10.0)
    >>> result = coadd.finish()
    >>> float(result.data[1, 1]), float(result.variances["var_rnoise"][1, 1])
    (2.0, 0.5)
    """

    def __init__(
        self, shape, n_inputs, *, variance_names=(), kernel="square", pixfrac=1.0, fillval="NaN",
        with_context=True,
    ):
        self.shape = tuple(int(n) for n in shape)
        self.n_inputs = int(n_inputs)
        self.variance_names = tuple(variance_names)
        self.kernel = str(kernel)
        self.pixfrac = float(pixfrac)
        self.with_context = bool(with_context)
        self._exptimes = []
        self._added = 0
        fill = fill_value(fillval)
        # The kernel keeps running means: pixels that never receive data keep
        # the fill value they start with.
        self._data = np.full(self.shape, fill, np.float32)
        self._weight = np.zeros(self.shape, np.float32)
        self._variances = [np.full(self.shape, fill, np.float32) for _ in self.variance_names]
        self._context = (np.zeros((context_planes(self.n_inputs), *self.shape), np.uint32)
                         if self.with_context else None)

    def add(self, data, pixmap, *, weight, variances=None, exptime, pixel_scale_ratio=1.0):
        """Add one image.

        Parameters
        ----------
        data : numpy.ndarray
            Input image; pixels with zero weight are ignored (NaN allowed there).
        pixmap : numpy.ndarray of shape (ny, nx, 2)
            Output ``(x, y)`` of each input pixel (see `compute_pixmap`).
        weight : numpy.ndarray
            Per-pixel weight (see `pixel_weights`).
        variances : dict of str to numpy.ndarray, optional
            Variance planes by name; missing names count as zero.
        exptime : float
            Exposure time in seconds (> 0).
        pixel_scale_ratio : float, optional
            Output over input pixel size; sets the size of the turbo, gaussian
            and lanczos kernels in output pixels.
        """
        if self._added >= self.n_inputs:
            raise ValueError(f"DrizzleCoadd was sized for {self.n_inputs} inputs")
        # Pixels with no usable weight, NaN data or no sky position are left
        # out by the kernel itself, so the inputs need no cleaned copies.
        variances = variances or {}
        drizzle_add(
            data, pixmap, self._data, self._weight,
            weight=weight,
            variances=[variances.get(name) for name in self.variance_names],
            out_variances=self._variances,
            out_context=self._context,
            context_index=self._added,
            kernel=self.kernel,
            pixfrac=self.pixfrac,
            pixel_scale_ratio=float(pixel_scale_ratio),
        )
        self._exptimes.append(float(exptime))
        self._added += 1

    def finish(self):
        """The co-added arrays (see `CoaddResult`)."""
        return CoaddResult(
            data=self._data,
            weight=self._weight,
            context=self._context,
            variances=dict(zip(self.variance_names, self._variances, strict=True)),
            exptimes=list(self._exptimes),
        )


def exposure_time_map(context, exptimes):
    """Total exposure time of the inputs that contributed to each output pixel.

    Parameters
    ----------
    context : numpy.ndarray of uint32, shape (planes, ny, nx)
    exptimes : sequence of float
        Exposure time of input ``i`` (context bit ``i``). Inputs whose time
        is not a positive number are left out: a made-up time (such as the
        -999999 of placeholder metadata) would make the map meaningless,
        while leaving the image out only undercounts where it contributed.

    Returns
    -------
    numpy.ndarray of float32, shape (ny, nx)

    Examples
    --------
    >>> context = np.array([[[1, 3]]], np.uint32)
    >>> exposure_time_map(context, [100.0, -999999.0]).tolist()
    [[100.0, 100.0]]
    """
    # Each byte of a context word names up to 8 inputs, so a 256-entry table
    # of summed times per byte turns the map into at most 4 lookups a word,
    # however many inputs there are (a pass per input cost 1.2 s on a
    # 5000 x 5000 skycell).
    tables = _byte_tables(exptimes)
    shape = context.shape[1:]
    total = np.zeros(shape, dtype=np.float32)
    band = max(1, _MAP_BAND_PIXELS // max(1, shape[-1]))
    for start in range(0, shape[0], band):
        rows = slice(start, start + band)
        summed = np.zeros(total[rows].shape)
        for (plane, shift), table in tables.items():
            byte = (context[plane, rows] >> np.uint32(shift)).astype(np.uint8)
            summed += table[byte]
        total[rows] = summed
    return total


# Pixels of the band of rows `exposure_time_map` works on at once.
_MAP_BAND_PIXELS = 1 << 20


def _byte_tables(exptimes):
    """``{(plane, shift): table}``: the summed time of the inputs each value of
    that context byte names, for the bytes naming an input with a usable time."""
    times = np.array([t if np.isfinite(t) and t > 0 else 0.0 for t in exptimes], dtype=float)
    values = np.arange(256)
    tables = {}
    for first in range(0, times.size, 8):
        group = times[first:first + 8]
        if not group.any():
            continue
        bits = (values[:, np.newaxis] >> np.arange(group.size)) & 1
        plane, bit = divmod(first, CONTEXT_BITS)
        tables[(plane, bit)] = bits @ group
    return tables
