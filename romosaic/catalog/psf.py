"""PSF-fit photometry without reference files.

The reference pipeline fits a PSF model built from a downloaded ePSF
reference file. romosaic fits one of two models, both photutils PSF models
in the mosaic's pixels:

* a **PSF file** the user gives (`read_psf_file`), described below;
* an **empirical PSF** built from the mosaic's own bright, isolated point
  sources (`build_empirical_psf`, photutils' ePSF builder), when no file is
  given.

Every source with a defined centroid is fitted (as in the reference, also
extended ones: ``is_extended`` says which fluxes mean something), its
flux and position free, starting from its moment centroid, on the
background-subtracted mosaic (`fit_psf_photometry`). Sources whose fit
boxes overlap are fitted together. The fits are weighted by the sky's
noise, not by ``err`` (`sky_error_map` says why).

Uncertainties. A drizzled mosaic's noise is correlated between pixels, so the
fitter's covariance, which treats pixels as independent (and scales by the
reduced χ²), is not used. The covariance of the weighted least-squares
parameters is computed instead from the model's derivatives ``J`` at the
fitted values, the weights ``W`` and the pixel covariance ``C = err ρ err``
of `romosaic.resample.noise_correlation`: ``(JᵀWJ)⁻¹ JᵀWCWJ (JᵀWJ)⁻¹``.
Without a recorded correlation the errors are scaled by the empty-aperture
factor of the PSF's noise-equivalent area (`romosaic.catalog.noise`). The
PSF model's own relative error, measured on the PSF stars
(`_model_error`) and scaled up where fewer inputs cover a source than
cover the PSF stars (`model_error_scale`), is added to the flux errors in
quadrature.

PSF file format
---------------
An ASDF file (``.asdf``) with, at the top of its tree:

``psf``
    float array, the ePSF sampled ``oversampling`` times finer than the
    mosaic's pixels, already integrated over a mosaic pixel (an *effective*
    PSF, as photutils' `~photutils.psf.ImagePSF` expects), its centre at the
    array's centre. 2-D, or 3-D ``(n, ny, nx)`` for a PSF that varies over the
    mosaic (then ``grid_xypos`` is required). Normalised on reading so that
    each PSF sums to ``oversampling²``: a fitted flux is the flux the PSF
    array describes, its total if the array holds the whole PSF.
``oversampling``
    positive integer.
``grid_xypos`` (3-D ``psf`` only)
    ``(n, 2)`` mosaic pixel positions (x, y) of the PSFs (a photutils
    `~photutils.psf.GriddedPSFModel`).
``pixel_scale`` (optional)
    arcsec: the mosaic pixel the PSF was made for; if given, it must match
    the mosaic's within 1%.

A FITS file (``.fits``) holds the same: ``psf`` as the primary image,
``OVERSAMP`` and optionally ``PIXSCALE`` (arcsec) in its header.
`write_psf_file` writes the ASDF form (for instance the empirical PSF of one
mosaic, to reuse it on another).
"""

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.nddata import NDData
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from photutils.psf import (
    EPSFBuilder,
    GriddedPSFModel,
    ImagePSF,
    PSFPhotometry,
    SourceGrouper,
    extract_stars,
)
from scipy.ndimage import correlate, shift

from ..errors import RomosaicInputError
from .geometry import local_geometry

__all__ = [
    "COVERAGE_MISMATCH",
    "MIN_PSF_STARS",
    "NO_POSITION",
    "NO_PSF_MODEL",
    "PSF_COLUMNS",
    "PSF_FLAG_DESCRIPTIONS",
    "PSFFitPlan",
    "PSFModel",
    "PSFPhotometryResult",
    "box_coverage",
    "build_empirical_psf",
    "coverage_mismatch",
    "fit_psf_photometry",
    "model_error_scale",
    "prepare_psf_fits",
    "psf_fwhm_pix",
    "read_psf_file",
    "run_psf_fits",
    "select_psf_stars",
    "sky_error_map",
    "write_psf_file",
]

log = logging.getLogger(__name__)

#: Fewer usable stars than this and no empirical PSF is built.
MIN_PSF_STARS = 5
#: At most this many (the brightest) stars build it.
MAX_PSF_STARS = 200
#: A PSF star's 0.4″ aperture flux has at least this S/N ...
PSF_STAR_MIN_SNR = 30.0
#: ... and its stamp reaches this far (arcsec; at least 5 pixels).
PSF_STAMP_RADIUS_ARCSEC = 0.5
#: Stars at least this wide (FWHM, pixels) are well sampled: their stamps,
#: shifted to a common centre by spline interpolation, are median-stacked
#: on the mosaic's own pixels. On simulated 0.055″ mosaics this places
#: bright stars within 1 mas of the truth (median), where photutils' ePSF
#: builder (oversampled, smoothed, its own recentring) left 1.5-8 mas.
WELL_SAMPLED_FWHM = 2.5
#: Narrower (undersampled) stars go through photutils' ePSF builder with
#: this oversampling: shifting an undersampled image cannot be done exactly.
EPSF_OVERSAMPLING = 4
#: Block size (pixels) of the smooth sky-noise map that weights the fits.
WEIGHT_BLOCK = 32
#: The PSF file's pixel scale must match the mosaic's to this fraction.
SCALE_TOLERANCE = 0.01
#: Step of the numerical derivatives of the model, pixels.
_DERIVATIVE_STEP = 0.01

#: romosaic's psf_flags bits above photutils' own (1 ... 2048).
NO_PSF_MODEL = 4096
NO_POSITION = 8192
#: The fit box is not covered as the PSF model's stars were (see
#: `coverage_mismatch`): the drizzled star differs from the model.
COVERAGE_MISMATCH = 16384

#: Stored with the catalog: the meaning of every psf_flags bit.
PSF_FLAG_DESCRIPTIONS = {
    "psf_flags_1": "fewer pixels fitted than the fit box (edge or pixels without data)",
    "psf_flags_2": "fitted position outside the mosaic",
    "psf_flags_4": "fitted flux not positive",
    "psf_flags_8": "the fit may not have converged",
    "psf_flags_16": "the fitter returned no covariance",
    "psf_flags_32": "a fitted parameter is at its bound",
    "psf_flags_64": "fit box does not overlap the data",
    "psf_flags_128": "fit box entirely without data",
    "psf_flags_256": "too few pixels with data to fit",
    "psf_flags_512": "fitted position not finite",
    "psf_flags_1024": "fitted flux not finite",
    "psf_flags_4096": "not fitted: no PSF model (too few stars to build one, see notes)",
    "psf_flags_8192": "not fitted: the source has no centroid to start from",
    "psf_flags_16384": "fewer input images cover the fit box than covered the empirical PSF's "
                       "stars, or the number changes within the box: the drizzled PSF "
                       "differs from the model (position and flux less accurate)",
}

#: The catalog columns filled by PSF photometry.
PSF_COLUMNS = ("x_psf", "x_psf_err", "y_psf", "y_psf_err", "ra_psf", "dec_psf",
               "ra_psf_err", "dec_psf_err", "psf_flux", "psf_flux_err", "psf_flags",
               "psf_gof")


@dataclass
class PSFModel:
    """A PSF model in the mosaic's pixels and where it came from.

    Attributes
    ----------
    model : photutils.psf.ImagePSF or photutils.psf.GriddedPSFModel
        Normalised: flux 1 integrates to 1 over its array.
    source : str
        ``"empirical: N stars"`` or the file's path.
    oversampling : int
    fwhm_pix : float
        FWHM of the PSF, mosaic pixels (of the central PSF of a grid).
    n_stars : int
        Stars that built an empirical PSF (0 for a file).
    """

    model: object
    source: str
    oversampling: int
    fwhm_pix: float
    n_stars: int = 0


@dataclass
class PSFPhotometryResult:
    """PSF-fit columns and what to record about them.

    Attributes
    ----------
    values : dict
        The `PSF_COLUMNS`, one entry per source, in catalog units.
    meta : dict
        Catalog metadata (``psf_photometry``, ``psf_flags``, ...).
    notes : list of str
        Warnings (also logged).
    """

    values: dict
    meta: dict
    notes: list = field(default_factory=list)


@dataclass
class PSFFitPlan:
    """What `prepare_psf_fits` settled for `run_psf_fits`.

    Attributes
    ----------
    result : PSFPhotometryResult
        The columns so far (every one NaN, flags set where no fit can be
        made), metadata and notes; final when ``fit_error`` is None.
    stars : numpy.ndarray of int
        Indices of the sources chosen as PSF stars.
    psf_model : PSFModel or None
        The PSF to fit.
    half : int
        Half-width of the square fit box, pixels.
    start : numpy.ndarray of bool
        Sources with a position to start a fit from.
    fit_error : numpy.ndarray or None
        The fits' weights (`sky_error_map`); None when nothing is fitted.
    """

    result: PSFPhotometryResult
    stars: np.ndarray
    psf_model: PSFModel = None
    half: int = 0
    start: np.ndarray = None
    fit_error: np.ndarray = None


# -- PSF models ---------------------------------------------------------------------------


def read_psf_file(path, *, pixel_scale_arcsec=None):
    """Read a PSF file (format in the module notes).

    Parameters
    ----------
    path : str or os.PathLike
        ``.asdf`` or ``.fits`` file.
    pixel_scale_arcsec : float, optional
        The mosaic's pixel size; checked against the file's ``pixel_scale``
        when both are known.

    Returns
    -------
    PSFModel

    Raises
    ------
    RomosaicInputError
        One line naming the file, for a missing, unreadable or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise RomosaicInputError(f"{path}: PSF file not found")
    suffix = path.suffix.lower()
    if suffix == ".asdf":
        psf, oversampling, grid, scale = _read_asdf_psf(path)
    elif suffix in (".fits", ".fit"):
        psf, oversampling, grid, scale = _read_fits_psf(path)
    else:
        raise RomosaicInputError(f"{path}: a PSF file must be .asdf or .fits")

    def bad(reason):
        return RomosaicInputError(f"{path}: not a usable PSF file ({reason})")

    try:
        oversampling = int(oversampling)
    except (TypeError, ValueError):
        raise bad(f"oversampling must be a positive integer, got {oversampling!r}") from None
    if oversampling < 1:
        raise bad(f"oversampling must be a positive integer, got {oversampling}")
    try:
        psf = np.asarray(psf, dtype=float)
    except (TypeError, ValueError):
        raise bad("psf is not a numeric array") from None
    if psf.ndim not in (2, 3) or min(psf.shape[-2:]) < 3:
        raise bad(f"psf must be a 2-D (or 3-D gridded) array of at least 3x3, "
                  f"got shape {psf.shape}")
    if not np.all(np.isfinite(psf)):
        raise bad("psf has non-finite values")
    sums = psf.sum(axis=(-2, -1))
    if not np.all(sums > 0):
        raise bad("psf does not sum to a positive value")
    psf = psf * (oversampling**2 / np.asarray(sums)[..., None, None])
    if scale is not None:
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise bad(f"pixel_scale must be a number, got {scale!r}") from None
        if pixel_scale_arcsec is not None and \
                abs(scale / pixel_scale_arcsec - 1.0) > SCALE_TOLERANCE:
            raise bad(f"made for {scale:.4g}\" pixels, the mosaic has "
                      f"{pixel_scale_arcsec:.4g}\" pixels")
    if psf.ndim == 3:
        if grid is None:
            raise bad("a 3-D psf needs grid_xypos (the PSFs' pixel positions)")
        grid = np.asarray(grid, dtype=float)
        if grid.shape != (psf.shape[0], 2):
            raise bad(f"grid_xypos has shape {grid.shape}, expected ({psf.shape[0]}, 2)")
        try:
            model = GriddedPSFModel(NDData(psf, meta={"grid_xypos": grid,
                                                      "oversampling": oversampling}))
        except (ValueError, TypeError) as error:
            raise bad(f"grid not usable: {error}") from None
        central = psf[int(np.argmin(np.hypot(*(grid - grid.mean(axis=0)).T)))]
    else:
        model = _image_psf(psf, oversampling)
        central = psf
    return PSFModel(model=model, source=str(path), oversampling=oversampling,
                    fwhm_pix=psf_fwhm_pix(central, oversampling))


def _read_asdf_psf(path):
    import asdf

    try:
        with asdf.open(path, lazy_load=False, memmap=False) as af:
            tree = af.tree
            if "psf" not in tree or "oversampling" not in tree:
                raise RomosaicInputError(
                    f"{path}: not a usable PSF file (needs 'psf' and 'oversampling' at the "
                    f"top of its tree)")
            psf = np.array(tree["psf"])
            grid = tree.get("grid_xypos")
            grid = None if grid is None else np.array(grid)
            scale = tree.get("pixel_scale")
            scale = getattr(scale, "value", scale)
            return psf, tree["oversampling"], grid, scale
    except RomosaicInputError:
        raise
    except Exception as error:  # asdf, yaml, zlib errors alike
        raise RomosaicInputError(
            f"{path}: not a readable ASDF file ({_one_line(error)})") from None


def _read_fits_psf(path):
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            psf = None if hdul[0].data is None else np.array(hdul[0].data)
            header = hdul[0].header
            oversampling = header.get("OVERSAMP")
            scale = header.get("PIXSCALE")
    except Exception as error:  # astropy raises OSError, ValueError, ...
        raise RomosaicInputError(
            f"{path}: not a readable FITS file ({_one_line(error)})") from None
    if psf is None or oversampling is None:
        raise RomosaicInputError(f"{path}: not a usable PSF file (needs the PSF as primary "
                                 f"image and OVERSAMP in its header)")
    return psf, oversampling, None, scale


def _one_line(error):
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__


def write_psf_file(path, psf, *, oversampling, pixel_scale_arcsec=None):
    """Write a PSF in romosaic's ASDF PSF-file format.

    Parameters
    ----------
    path : str or os.PathLike
    psf : numpy.ndarray or PSFModel
        The oversampled ePSF array, or a 2-D `PSFModel` (its array is written).
    oversampling : int
    pixel_scale_arcsec : float, optional
        The mosaic pixel it was made for.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> y, x = np.mgrid[-10:11, -10:11]
    >>> path = os.path.join(tempfile.mkdtemp(), "psf.asdf")
    >>> write_psf_file(path, np.exp(-(x**2 + y**2) / 20.0), oversampling=4)
    >>> read_psf_file(path).oversampling
    4
    """
    import asdf

    if isinstance(psf, PSFModel):
        psf = psf.model.data
    tree = {"psf": np.asarray(psf, dtype=np.float32), "oversampling": int(oversampling)}
    if pixel_scale_arcsec is not None:
        tree["pixel_scale"] = float(pixel_scale_arcsec)
    asdf.AsdfFile(tree).write_to(path)


def _image_psf(psf, oversampling):
    ny, nx = psf.shape
    return ImagePSF(psf, x_0=0.0, y_0=0.0, oversampling=oversampling,
                    origin=((nx - 1) / 2.0, (ny - 1) / 2.0))


def psf_fwhm_pix(psf, oversampling):
    """FWHM of an oversampled PSF array in image pixels (from the area above half peak).

    The area is counted in whole sub-pixels, so the result is approximate; it
    only sizes the fit box.

    Examples
    --------
    A Gaussian of σ = 1.5 pixels (FWHM 3.53):

    >>> import numpy as np
    >>> y, x = np.mgrid[-40:41, -40:41] / 4.0
    >>> round(psf_fwhm_pix(np.exp(-(x**2 + y**2) / (2 * 1.5**2)), 4), 1)
    3.4
    """
    psf = np.asarray(psf, dtype=float)
    area = np.count_nonzero(psf >= 0.5 * psf.max()) / oversampling**2
    return float(2.0 * np.sqrt(area / np.pi))


def select_psf_stars(data, segmentation, no_data, values, *, stamp_size, min_snr=PSF_STAR_MIN_SNR,
                     max_stars=MAX_PSF_STARS):
    """Bright, isolated, clean point sources to build an empirical PSF from.

    A PSF star is a point source (``is_extended`` false) without warning
    flags, its 0.4″ aperture flux at least ``min_snr`` times its error, and
    its whole stamp on pixels with data and no other source's segment.
    Saturated stars are not recognisable in a mosaic; they are unlikely
    among the stars chosen, which are the brightest but must look like the
    others' PSF to survive the ePSF builder's clipping.

    Parameters
    ----------
    data : numpy.ndarray
        Background-subtracted mosaic.
    segmentation : numpy.ndarray
        Label image.
    no_data : numpy.ndarray of bool
    values : dict
        Catalog columns (``label``, ``x_centroid``, ``y_centroid``,
        ``is_extended``, ``warning_flags``, ``aper04_flux`` and its error).
    stamp_size : int
        Odd stamp side, pixels.
    min_snr : float
    max_stars : int

    Returns
    -------
    numpy.ndarray of int
        Row indices of the chosen sources, brightest first.
    """
    x = np.asarray(values["x_centroid"], dtype=float)
    y = np.asarray(values["y_centroid"], dtype=float)
    flux = np.asarray(values["aper04_flux"], dtype=float)
    flux_err = np.asarray(values["aper04_flux_err"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        candidate = ((np.asarray(values["warning_flags"]) == 0)
                     & ~np.asarray(values["is_extended"], dtype=bool)
                     & np.isfinite(x) & np.isfinite(y) & (flux > min_snr * flux_err))
    half = stamp_size // 2
    ny, nx = data.shape
    chosen = []
    for index in np.nonzero(candidate)[0][np.argsort(-flux[candidate])]:
        ix, iy = int(round(x[index])), int(round(y[index]))
        if not (half <= ix < nx - half and half <= iy < ny - half):
            continue
        box = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
        labels = segmentation[box]
        if no_data[box].any() or np.any((labels != 0) & (labels != values["label"][index])):
            continue
        chosen.append(index)
        if len(chosen) == max_stars:
            break
    return np.asarray(chosen, dtype=int)


def build_empirical_psf(data, segmentation, no_data, values, *, pixel_scale_arcsec,
                        min_stars=MIN_PSF_STARS, stars=None):
    """Build an ePSF from the mosaic's own bright isolated point sources.

    Parameters
    ----------
    data, segmentation, no_data, values
        As for `select_psf_stars`.
    pixel_scale_arcsec : float
        Sets the stamp: `PSF_STAMP_RADIUS_ARCSEC`, at least 5 pixels.
    min_stars : int
    stars : numpy.ndarray of int, optional
        Rows of the PSF stars, if already chosen (`select_psf_stars`).

    Returns
    -------
    model : PSFModel or None
        None when fewer than ``min_stars`` stars qualify.
    n_stars : int
        The stars found.
    """
    half = _stamp_half(pixel_scale_arcsec)
    size = 2 * half + 1
    chosen = stars if stars is not None else select_psf_stars(
        data, segmentation, no_data, values, stamp_size=size)
    if chosen.size < min_stars:
        return None, int(chosen.size)
    x = np.asarray(values["x_centroid"], dtype=float)[chosen]
    y = np.asarray(values["y_centroid"], dtype=float)[chosen]
    fwhm = float(np.median(np.asarray(values["fwhm"])[chosen])) / pixel_scale_arcsec
    if fwhm >= WELL_SAMPLED_FWHM:
        oversampling = 1
        psf = _stack_stars(data, x, y, half)
    else:
        oversampling = EPSF_OVERSAMPLING
        fit = 2 * max(2, int(np.ceil(fwhm))) + 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            stars = _extract_stars(data, x, y, size)
            builder = EPSFBuilder(oversampling=oversampling, maxiters=20, progress_bar=False,
                                  fit_shape=fit, recentering_boxsize=(fit, fit))
            epsf, _ = builder(stars)
        psf = np.asarray(epsf.data, dtype=float)
    psf = psf * (oversampling**2 / psf.sum())
    return PSFModel(model=_image_psf(psf, oversampling),
                    source=f"empirical: {chosen.size} stars of the mosaic",
                    oversampling=oversampling, fwhm_pix=psf_fwhm_pix(psf, oversampling),
                    n_stars=int(chosen.size)), int(chosen.size)


def _extract_stars(data, x, y, size):
    """photutils' ``extract_stars`` of ``size`` × ``size`` stamps, in float64.

    Each star is extracted from a float64 copy of a small region around it,
    not from a float64 copy of the whole mosaic (600 MB at 75 Mpix). The
    regions start at whole pixels, so every stamp, its centre and its
    rejection at the mosaic's edges are those of the whole mosaic.
    """
    reach = size // 2 + 2
    ny, nx = data.shape
    images, tables = [], []
    for xk, yk in zip(x, y, strict=True):
        x0, y0 = max(0, int(np.floor(xk)) - reach), max(0, int(np.floor(yk)) - reach)
        x1, y1 = min(nx, int(np.floor(xk)) + reach + 1), min(ny, int(np.floor(yk)) + reach + 1)
        images.append(NDData(np.asarray(data[y0:y1, x0:x1], dtype=float)))
        tables.append(Table({"x": [xk - x0], "y": [yk - y0]}))
    return extract_stars(images, tables, size=(size, size))


def _stamp_half(pixel_scale_arcsec):
    return max(5, int(np.ceil(PSF_STAMP_RADIUS_ARCSEC / pixel_scale_arcsec)))


def _stack_stars(data, x, y, half):
    """Median of the stars' stamps, each centred on its centroid and normalised to 1.

    Moment centroids are unbiased on pixel-integrated light, so the stack's
    centre is the stars' centroid: PSF positions agree with the centroids on
    average. Each stamp's border median (residual background) is removed.
    """
    margin = 3
    stamps = []
    for xk, yk in zip(x, y, strict=True):
        ix, iy = int(round(xk)), int(round(yk))
        cut = np.asarray(data[iy - half - margin:iy + half + margin + 1,
                              ix - half - margin:ix + half + margin + 1], dtype=float)
        moved = shift(cut, (iy - yk, ix - xk), order=3, mode="nearest")
        stamp = moved[margin:-margin, margin:-margin]
        border = np.concatenate([stamp[0], stamp[-1], stamp[1:-1, 0], stamp[1:-1, -1]])
        stamp = stamp - np.median(border)
        total = stamp.sum()
        if total > 0:
            stamps.append(stamp / total)
    return np.median(stamps, axis=0)


def sky_error_map(error, segmentation, no_data, block=WEIGHT_BLOCK):
    """A smooth map of the sky's per-pixel noise, to weight the fits.

    Weighting by ``err``, which includes each source's own Poisson noise
    estimated from the noisy pixels, biases the fitted fluxes low (by 3% on
    bright simulated stars): pixels that fluctuated up get less weight. The
    median ``err`` of the sky pixels (no data, no source) in blocks of
    ``block`` pixels has no such link to the source's pixels. The fit's
    uncertainty is computed for these weights (`_parameter_covariance`),
    so only the fit's optimality, not its errors, depends on them.
    """
    ny, nx = error.shape
    by, bx = -(-ny // block), -(-nx // block)
    levels = np.empty((by, bx), np.float32)
    # One row of blocks at a time: the whole image's sky, padded and
    # regrouped by block, was three image-sized temporaries.
    sky = np.full((block, bx * block), np.nan, dtype=np.float32)
    for row in range(by):
        rows = slice(row * block, min(ny, (row + 1) * block))
        height = rows.stop - rows.start
        sky[:] = np.nan
        sky[:height, :nx] = np.where(no_data[rows] | (segmentation[rows] > 0), np.nan,
                                     error[rows])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # blocks without sky
            levels[row] = np.nanmedian(sky.reshape(block, bx, block).transpose(1, 0, 2)
                                       .reshape(bx, block * block), axis=1)
    del sky
    fallback = np.nanmedian(levels) if np.isfinite(levels).any() else 1.0
    levels = np.where(np.isfinite(levels) & (levels > 0), levels, fallback)
    return np.repeat(np.repeat(levels, block, axis=0), block, axis=1)[:ny, :nx]


# -- fitting ------------------------------------------------------------------------------


def fit_psf_photometry(data, error, no_data, segmentation, wcs, values, *, psf_model=None,
                       pixel_scale_arcsec, correlation=None, noise=None, coverage=None):
    """Fit a PSF to every source of a catalog: the ``psf_*`` columns.

    Parameters
    ----------
    data : numpy.ndarray
        Background-subtracted mosaic, MJy/sr, 0 where ``no_data``.
    error : numpy.ndarray
        Per-pixel uncertainty, 0 where ``no_data``.
    no_data : numpy.ndarray of bool
    segmentation : numpy.ndarray
        Label image (for choosing PSF stars).
    wcs : gwcs.wcs.WCS
    values : dict
        The catalog's other columns (centroids start the fits; the empirical
        PSF's stars are chosen with them).
    psf_model : PSFModel, optional
        From `read_psf_file`; None builds an empirical one
        (`build_empirical_psf`).
    pixel_scale_arcsec : float
    correlation : numpy.ndarray, optional
        The drizzle's noise-correlation kernel ρ.
    noise : romosaic.catalog.noise.NoiseCalibration, optional
        Empty-aperture factors, used when there is no ``correlation``.
    coverage : numpy.ndarray, optional
        Number of input images contributing to each pixel; sets
        `COVERAGE_MISMATCH` (`coverage_mismatch`).

    Returns
    -------
    PSFPhotometryResult
        With too few stars for an empirical PSF, every column NaN,
        ``psf_flags`` = `NO_PSF_MODEL` and a note saying so.

    Notes
    -----
    `prepare_psf_fits` followed by `run_psf_fits`: only the first reads
    ``segmentation``, which a caller may hold more cheaply in between.
    """
    plan = prepare_psf_fits(data, error, no_data, segmentation, values, psf_model=psf_model,
                            pixel_scale_arcsec=pixel_scale_arcsec)
    return run_psf_fits(plan, data, error, no_data, wcs, values, correlation=correlation,
                        noise=noise, coverage=coverage)


def prepare_psf_fits(data, error, no_data, segmentation, values, *, psf_model=None,
                     pixel_scale_arcsec):
    """Choose the PSF stars, build or take the PSF, and make the fits' weights.

    The parameters are those of `fit_psf_photometry`.

    Returns
    -------
    PSFFitPlan
    """
    n = len(values["label"])
    out = _empty_columns(n)
    stars = select_psf_stars(data, segmentation, no_data, values,
                             stamp_size=2 * _stamp_half(pixel_scale_arcsec) + 1)
    meta = {"psf_flags": dict(PSF_FLAG_DESCRIPTIONS)}
    notes = []
    if psf_model is None:
        psf_model, found = build_empirical_psf(data, segmentation, no_data, values,
                                               pixel_scale_arcsec=pixel_scale_arcsec,
                                               stars=stars)
        if psf_model is None:
            note = (f"PSF photometry not performed: {found} bright isolated point "
                    f"source{'' if found == 1 else 's'} in the mosaic, {MIN_PSF_STARS} needed "
                    f"to build an empirical PSF; give a PSF file (psf_file) instead")
            log.warning("%s", note)
            notes.append(note)
            out["psf_flags"][:] = NO_PSF_MODEL
            meta["psf_photometry"] = note
            return PSFFitPlan(PSFPhotometryResult(out, meta, notes), stars)
    x0 = np.asarray(values["x_centroid"], dtype=float)
    y0 = np.asarray(values["y_centroid"], dtype=float)
    start = np.isfinite(x0) & np.isfinite(y0)
    out["psf_flags"][~start] = NO_POSITION
    half = max(2, int(np.ceil(psf_model.fwhm_pix)))
    fit_size = 2 * half + 1
    meta.update({
        "psf_photometry": f"performed: {psf_model.source}",
        "psf_model": psf_model.source,
        "psf_fwhm_pix": float(psf_model.fwhm_pix),
        "psf_fit_shape": [fit_size, fit_size],
        "psf_gof": "reduced chi-square of the residuals in the fit box with the err array "
                   "(pixels taken as independent; neighbours fitted together are not "
                   "subtracted)",
    })
    log.info("PSF photometry: %s, FWHM %.2f px, %dx%d fit box, %d sources",
             psf_model.source, psf_model.fwhm_pix, fit_size, fit_size, int(start.sum()))
    plan = PSFFitPlan(PSFPhotometryResult(out, meta, notes), stars, psf_model, half, start)
    if start.any():
        plan.fit_error = sky_error_map(error, segmentation, no_data)
    return plan


def run_psf_fits(plan, data, error, no_data, wcs, values, *, correlation=None, noise=None,
                 coverage=None):
    """Fit the PSF to every source as `prepare_psf_fits` planned.

    ``plan`` is `PSFFitPlan`, the other parameters are those of
    `fit_psf_photometry`; ``plan.fit_error`` is released.

    Returns
    -------
    PSFPhotometryResult
    """
    result = plan.result
    if plan.fit_error is None:
        return result
    out, meta, notes = result.values, result.meta, result.notes
    stars, psf_model, half, start = plan.stars, plan.psf_model, plan.half, plan.start
    fit_error, plan.fit_error = plan.fit_error, None
    n = len(values["label"])
    fit_size = 2 * half + 1
    x0 = np.asarray(values["x_centroid"], dtype=float)
    y0 = np.asarray(values["y_centroid"], dtype=float)
    init = Table({"id": np.nonzero(start)[0] + 1, "x_init": x0[start], "y_init": y0[start]})
    photometry = PSFPhotometry(psf_model.model, (fit_size, fit_size),
                               grouper=SourceGrouper(min_separation=fit_size),
                               aperture_radius=half, progress_bar=False)
    with warnings.catch_warnings():
        # Non-converged and partial fits are flagged in the table.
        warnings.simplefilter("ignore", AstropyUserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        # The image as it is: photutils fits cutouts, and a float64 copy of a
        # 75-Mpix mosaic is 600 MB.
        results = photometry(np.asarray(data), mask=no_data, error=fit_error,
                             init_params=init)
    index = np.asarray(results["id"], dtype=int) - 1
    x = np.asarray(results["x_fit"], dtype=float)
    y = np.asarray(results["y_fit"], dtype=float)
    flux = np.asarray(results["flux_fit"], dtype=float)
    covariance, gof = _parameter_covariance(psf_model.model, flux, x, y, data, error,
                                            fit_error, no_data, half, correlation)
    del fit_error
    sigma = np.sqrt(np.maximum(np.diagonal(covariance, axis1=1, axis2=2), 0.0))
    if correlation is None and noise is not None:
        # Formal errors treat pixels as independent: scale them as the empty
        # apertures of the PSF's noise-equivalent area say.
        sigma = sigma * noise.at_area(_noise_area(psf_model))
    geometry = local_geometry(wcs, np.where(np.isfinite(x), x, x0[index]),
                              np.where(np.isfinite(y), y, y0[index]))
    to_njy = geometry.pixel_area_sr * 1.0e15
    ra, dec = wcs(x, y, with_bounding_box=False)
    cd = geometry.cd
    out["x_psf"][index], out["y_psf"][index] = x, y
    out["x_psf_err"][index], out["y_psf_err"][index] = sigma[:, 1], sigma[:, 2]
    out["ra_psf"][index] = np.asarray(ra, dtype=float) % 360.0
    out["dec_psf"][index] = np.asarray(dec, dtype=float)
    out["ra_psf_err"][index] = np.hypot(cd[:, 0, 0] * sigma[:, 1], cd[:, 0, 1] * sigma[:, 2])
    out["dec_psf_err"][index] = np.hypot(cd[:, 1, 0] * sigma[:, 1], cd[:, 1, 1] * sigma[:, 2])
    out["psf_flux"][index] = flux * to_njy
    out["psf_flux_err"][index] = sigma[:, 0] * to_njy
    out["psf_gof"][index] = gof
    out["psf_flags"][index] = np.asarray(results["flags"], dtype=np.int32)
    # The model error applies as measured where a fit box is covered as its
    # stars are; fewer inputs scale it up (`model_error_scale`).
    scale = np.ones(n)
    star_coverage = None
    if coverage is not None:
        coverage = np.asarray(coverage)
        if stars.size:
            star_coverage = int(np.median(coverage[np.round(y0[stars]).astype(int),
                                                   np.round(x0[stars]).astype(int)]))
        model_coverage = star_coverage if psf_model.n_stars else None
        fewest, most = box_coverage(coverage, x, y, half)
        mismatch = _mismatch(fewest, most, model_coverage)
        out["psf_flags"][index[mismatch]] |= COVERAGE_MISMATCH
        meta["psf_model_coverage"] = model_coverage
        if star_coverage:
            scale[index] = model_error_scale(fewest, star_coverage)
    systematic = _model_error(out, values, stars)
    if systematic is not None:
        out["psf_flux_err"] = np.hypot(out["psf_flux_err"],
                                       systematic * scale * out["psf_flux"])
        meta["psf_flux_model_error"] = systematic
        meta["psf_flux_err"] = ("fit covariance with the noise correlation, plus "
                                "psf_flux_model_error times psf_flux in quadrature")
        if star_coverage:
            meta["psf_flux_model_error_coverage"] = star_coverage
            meta["psf_flux_err"] += (
                "; where the fewest inputs in the fit box, n, are fewer than "
                "psf_flux_model_error_coverage (the PSF stars' typical number), the model "
                "error times sqrt(psf_flux_model_error_coverage / n)")
    return PSFPhotometryResult(out, meta, notes)


def model_error_scale(fewest, star_coverage):
    """Factor on the PSF model's relative error for fit boxes with fewer inputs.

    A drizzled star is the mean of its images in the ``n`` inputs that
    cover it, each blurred by its own input pixels at its own sub-pixel
    phase; the model is the mean over many stars. If each input's phase
    blur departs from the average independently, a star's departure from
    the model has a variance ``∝ 1/n``: the model error measured on stars
    under ``star_coverage`` inputs grows by ``sqrt(star_coverage / n)``. On
    simulated 0.055″ mosaics of four dithered exposures (eleven fields) the
    bright stars' excess ``psf_flux / aper04_flux`` scatter is 0.94, 0.99,
    1.34 and 1.96% where the fit box's fewest inputs are 4, 3, 2 and 1;
    ``1/sqrt(n)`` predicts 1.09, 1.33 and 1.88% from the first. Boxes with
    more inputs than the stars keep the measured error.

    Parameters
    ----------
    fewest : numpy.ndarray
        Fewest inputs anywhere in each fit box (`box_coverage`); below 1
        (a box partly without data) counts as 1.
    star_coverage : int
        Typical number of inputs under the stars the model error was
        measured on.

    Returns
    -------
    numpy.ndarray of float

    Examples
    --------
    >>> import numpy as np
    >>> model_error_scale(np.array([4, 1, 2, 0, 6]), 4).tolist()
    [1.0, 2.0, 1.4142135623730951, 2.0, 1.0]
    """
    n = np.clip(np.asarray(fewest, dtype=float), 1.0, float(star_coverage))
    return np.sqrt(star_coverage / n)


def coverage_mismatch(coverage, x, y, half, model_coverage=None):
    """Whether each fit box is covered otherwise than the PSF model's stars were.

    A drizzled star is the mean of its images in the inputs that cover it,
    each blurred by its own input pixels at its own sub-pixel phase. Where
    fewer inputs overlap, less of that blur averages out, and where an
    input's edge crosses a star, one side of it comes from other inputs
    than the other: either way the star's image is not the PSF of the
    stars that built the model, and the fit's position and flux are biased
    by it. On simulated 0.055″ mosaics of four dithered exposures the
    bright stars' PSF positions are 1.5 mas from the truth (median, at
    most 4.3 mas) under four inputs, 2.3 mas (up to 7 mas) under two, 3.6
    mas (up to 7 mas) under one, and up to 9 mas across an input's edge.

    Parameters
    ----------
    coverage : numpy.ndarray
        Input images contributing to each pixel.
    x, y : numpy.ndarray
        Fitted positions (pixels); NaN gives False.
    half : int
        Half-size of the fit box.
    model_coverage : int, optional
        Typical coverage of the PSF stars (an empirical PSF); None (a PSF
        file) tests only for coverage changes within the box.

    Returns
    -------
    numpy.ndarray of bool
        True where the box holds fewer than ``model_coverage`` inputs
        somewhere, or different numbers of inputs.

    Examples
    --------
    >>> import numpy as np
    >>> coverage = np.full((20, 20), 4)
    >>> coverage[:, 12:] = 3
    >>> coverage_mismatch(coverage, np.array([5.0, 11.0, 16.0]), np.array([8.0] * 3), 2,
    ...                   model_coverage=4).tolist()
    [False, True, True]
    """
    return _mismatch(*box_coverage(coverage, x, y, half), model_coverage)


def box_coverage(coverage, x, y, half):
    """Fewest and most inputs in the fit box around each position.

    Parameters
    ----------
    coverage : numpy.ndarray
        Input images contributing to each pixel.
    x, y : numpy.ndarray
        Positions (pixels).
    half : int
        Half-size of the fit box.

    Returns
    -------
    fewest, most : numpy.ndarray of int
        -1 for a position that is not finite or whose box misses the array.

    Examples
    --------
    >>> import numpy as np
    >>> coverage = np.full((20, 20), 4)
    >>> coverage[:, 12:] = 1
    >>> [a.tolist() for a in box_coverage(coverage, np.array([5.0, 11.0]), np.array([8.0] * 2), 2)]
    [[4, 1], [4, 4]]
    """
    fewest = np.full(np.size(x), -1)
    most = np.full(np.size(x), -1)
    for k, (xk, yk) in enumerate(zip(x, y, strict=True)):
        if not (np.isfinite(xk) and np.isfinite(yk)):
            continue
        ix, iy = int(round(xk)), int(round(yk))
        box = coverage[max(iy - half, 0):max(iy + half + 1, 0),
                       max(ix - half, 0):max(ix + half + 1, 0)]
        if box.size:
            fewest[k], most[k] = int(box.min()), int(box.max())
    return fewest, most


def _mismatch(fewest, most, model_coverage):
    """`coverage_mismatch` from the boxes' fewest and most inputs (-1: no box)."""
    measured = fewest >= 0
    result = measured & (fewest != most)
    if model_coverage is not None:
        result |= measured & (fewest < model_coverage)
    return result


def _model_error(out, values, stars):
    """Relative flux error of the PSF model itself, from the PSF stars.

    No single PSF matches every star of a drizzled mosaic: the drizzle
    blurs each star a little differently, depending on where it falls on
    the input pixels of each exposure. The bright PSF stars show this as a
    scatter of ``psf_flux / aper04_flux`` beyond their noise; its excess
    (robust) variance is the model's relative error, added to every flux
    error so that bright stars' errors describe their scatter too. None
    with fewer than `MIN_PSF_STARS` stars.

    Both fluxes come from the same pixels: for an efficient estimator ``T``
    and any other unbiased ``U``, ``Cov(T, U) = Var(T)``, so the noise of the
    ratio is ``σ_aper² − σ_psf²`` (relative), not their sum.
    """
    if stars.size < MIN_PSF_STARS:
        return None
    psf, psf_err = out["psf_flux"][stars], out["psf_flux_err"][stars]
    aper = np.asarray(values["aper04_flux"], dtype=float)[stars]
    aper_err = np.asarray(values["aper04_flux_err"], dtype=float)[stars]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = psf / aper
        noise = np.maximum((aper_err / aper) ** 2 - (psf_err / psf) ** 2, 0.0)
    good = np.isfinite(ratio) & np.isfinite(noise) & (ratio > 0)
    if good.sum() < MIN_PSF_STARS:
        return None
    ratio = ratio[good] / np.median(ratio[good])
    spread = (1.4826 * np.median(np.abs(ratio - 1.0))) ** 2
    return float(np.sqrt(max(spread - np.median(noise[good]), 0.0)))


def _empty_columns(n):
    columns = {name: np.full(n, np.nan) for name in PSF_COLUMNS}
    columns["psf_flags"] = np.zeros(n, dtype=np.int32)
    return columns


def _noise_area(psf_model):
    """Noise-equivalent area ``1 / Σ P²`` of the PSF in image pixels."""
    model = psf_model.model
    data = np.asarray(model.data, dtype=float)
    if data.ndim == 3:
        data = data[data.shape[0] // 2]
    p = data / psf_model.oversampling**2
    return 1.0 / (np.sum(p**2) * psf_model.oversampling**2)


def _parameter_covariance(model, flux, x, y, data, error, fit_error, no_data, half,
                          correlation):
    """Covariance of (flux, x, y) of each weighted least-squares PSF fit, and its χ²/dof.

    The sandwich ``A⁻¹ B A⁻¹`` with ``A = JᵀWJ`` and ``B = JᵀW C WJ``, on the
    fit box around the fitted position: ``W = 1/fit_error²`` are the fit's
    weights, ``C = err ρ err`` is the pixel covariance (``ρ`` = identity
    without a correlation). The goodness of fit is ``Σ (residual/err)² /
    (n − 3)`` over the box. NaN for a fit without finite values or usable
    pixels.
    """
    ny, nx = error.shape
    offsets = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    result = np.full((flux.size, 3, 3), np.nan)
    gof = np.full(flux.size, np.nan)
    h = _DERIVATIVE_STEP
    for k in range(flux.size):
        if not (np.isfinite(flux[k]) and np.isfinite(x[k]) and np.isfinite(y[k])):
            continue
        xx = dx + int(round(x[k]))
        yy = dy + int(round(y[k]))
        inside = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
        xc, yc = np.clip(xx, 0, nx - 1), np.clip(yy, 0, ny - 1)
        sigma = np.where(inside, error[yc, xc], 0.0)
        usable = inside & ~no_data[yc, xc] & (sigma > 0)
        if usable.sum() < 3:
            continue
        weight = np.zeros_like(sigma)
        weight[usable] = 1.0 / fit_error[yc, xc][usable] ** 2

        def psf(x0, y0, xx=xx, yy=yy):
            return model.evaluate(xx, yy, 1.0, x0, y0)

        centred = psf(x[k], y[k])
        if usable.sum() > 3:
            residual = data[yc, xc][usable] - flux[k] * centred[usable]
            gof[k] = np.sum((residual / sigma[usable]) ** 2) / (usable.sum() - 3)
        jacobian = np.stack([
            centred,
            flux[k] * (psf(x[k] + h, y[k]) - psf(x[k] - h, y[k])) / (2 * h),
            flux[k] * (psf(x[k], y[k] + h) - psf(x[k], y[k] - h)) / (2 * h),
        ])
        weighted = jacobian * weight
        a = np.einsum("ipq,jpq->ij", weighted, jacobian)
        if correlation is None or correlation.shape == (1, 1):
            scale = 1.0 if correlation is None else float(correlation[0, 0])
            b = np.einsum("ipq,jpq->ij", weighted * sigma**2, weighted) * scale
        else:
            m = correlation.shape[0] // 2
            scaled = np.pad(weighted * sigma, ((0, 0), (m, m), (m, m)))
            spread = np.stack([correlate(s, correlation, mode="constant") for s in scaled])
            b = np.einsum("ipq,jpq->ij", scaled, spread)
        try:
            inverse = np.linalg.inv(a)
        except np.linalg.LinAlgError:
            continue
        result[k] = inverse @ b @ inverse
    return result, gof
