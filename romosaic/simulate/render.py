"""Rendering the scene and the detector into arrays (pure numpy; no files, no WCS objects).

Sources arrive as pixel positions with the local affine WCS at each of them
(arcsec east/north per pixel), so rendering needs no WCS evaluation per pixel.

Surface brightness convention: a pixel's value in MJy/sr is the flux falling in
its footprint divided by its own solid angle, so that the sum over pixels of
value × pixel solid angle is the source flux, and a uniform sky stays uniform.

The point-spread function is a circular Gaussian in *detector* pixels (it is a
property of the optics and the focal plane, not of the sky), integrated exactly
over each pixel with error functions. Galaxies are truncated elliptical Sersic
profiles on the sky, evaluated on an oversampled grid, convolved with the PSF
and normalised so the rendered flux equals the truth flux.

Noise is drawn as a Gaussian with the variance of the expected (noise-free)
signal: with at least ~80 electrons of sky per pixel the Poisson distribution
is indistinguishable from it, and the stated variances are then exactly those
of the injected noise.
"""

from dataclasses import dataclass

import numpy as np
from roman_datamodels.dqflags import pixel as dq_flags
from scipy.ndimage import gaussian_filter
from scipy.special import erf, gammaincinv

from .instrument import ARCSEC_PER_RAD

__all__ = [
    "DetectorNoise",
    "add_cosmic_rays",
    "draw_detector",
    "expose",
    "render_galaxies",
    "render_stars",
    "render_stars_table",
]

SIGMA_PER_FWHM = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

# The Gaussian PSF is rendered out to this many sigma; the flux beyond is < 1e-8.
_PSF_EXTENT = 6.0

# Stars are rendered in chunks to bound the size of the stamp arrays.
_STAR_CHUNK = 20000


def _solid_angle(jac):
    """Pixel solid angles in sr from local Jacobians in arcsec per pixel."""
    return np.abs(np.linalg.det(jac)) / ARCSEC_PER_RAD**2


def _psf_sigma(jac, fwhm):
    """PSF sigma in pixels for a PSF of ``fwhm`` arcsec at the local mean pixel scale."""
    return fwhm * SIGMA_PER_FWHM / np.sqrt(np.abs(np.linalg.det(jac)))


def _add_stamps(image, rows, cols, values):
    """Add stamps at the given pixel indices, dropping what falls off the image."""
    ny, nx = image.shape
    rows, cols, values = np.broadcast_arrays(rows, cols, values)
    keep = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    np.add.at(image, (rows[keep], cols[keep]), values[keep])


def render_stars(image, x, y, flux, jac, fwhm):
    """Add point sources, exactly integrated over pixels, to an image in MJy/sr.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float array, modified in place.
    x, y : numpy.ndarray
        0-based pixel positions of the stars.
    flux : numpy.ndarray
        Fluxes in MJy.
    jac : numpy.ndarray
        Local Jacobians, shape (n, 2, 2), arcsec per pixel.
    fwhm : float
        PSF full width at half maximum in arcsec.
    """
    if len(x) == 0:
        return
    sigma = _psf_sigma(jac, fwhm)
    radius = int(np.ceil(_PSF_EXTENT * sigma.max())) + 1
    offsets = np.arange(-radius, radius + 1)
    for start in range(0, len(x), _STAR_CHUNK):
        chunk = slice(start, start + _STAR_CHUNK)
        xs, ys, s = x[chunk], y[chunk], sigma[chunk, None] * np.sqrt(2.0)
        cols = np.rint(xs).astype(np.int64)[:, None] + offsets
        rows = np.rint(ys).astype(np.int64)[:, None] + offsets
        frac_x = 0.5 * (erf((cols + 0.5 - xs[:, None]) / s) - erf((cols - 0.5 - xs[:, None]) / s))
        frac_y = 0.5 * (erf((rows + 0.5 - ys[:, None]) / s) - erf((rows - 0.5 - ys[:, None]) / s))
        brightness = flux[chunk] / _solid_angle(jac[chunk])
        stamps = brightness[:, None, None] * frac_y[:, :, None] * frac_x[:, None, :]
        _add_stamps(image, rows[:, :, None], cols[:, None, :], stamps)


def render_stars_table(image, x, y, flux, jac, psf):
    """Add point sources with a tabulated, pixel-integrated PSF to an image in MJy/sr.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float array, modified in place.
    x, y : numpy.ndarray
        0-based pixel positions of the stars.
    flux : numpy.ndarray
        Fluxes in MJy.
    jac : numpy.ndarray
        Local Jacobians, shape (n, 2, 2), arcsec per pixel (for the solid angle).
    psf : romosaic.simulate.psf.PixelPSF
        The PSF integrated over this detector's pixels; it is fixed to the
        detector's axes, like the telescope's struts.
    """
    if len(x) == 0:
        return
    radius = int(np.ceil(psf.radius_pix))
    offsets = np.arange(-radius, radius + 1)
    # A few hundred stamps of ~3000 pixels at a time.
    chunk_size = max(1, _STAR_CHUNK // 100)
    for start in range(0, len(x), chunk_size):
        chunk = slice(start, start + chunk_size)
        xs, ys = x[chunk], y[chunk]
        cols = np.rint(xs).astype(np.int64)[:, None] + offsets
        rows = np.rint(ys).astype(np.int64)[:, None] + offsets
        dx = cols[:, None, :] - xs[:, None, None]
        dy = rows[:, :, None] - ys[:, None, None]
        brightness = flux[chunk] / _solid_angle(jac[chunk])
        stamps = brightness[:, None, None] * psf.sample(dx, dy)
        _add_stamps(image, rows[:, :, None], cols[:, None, :], stamps)


def _oversampling(r_eff_pix):
    """Odd sub-sampling factor fine enough to resolve a profile of this size."""
    factor = int(np.ceil(6.0 / max(r_eff_pix, 1e-3)))
    factor += 1 - factor % 2
    return int(np.clip(factor, 3, 9))


def render_galaxies(image, x, y, flux, jac, fwhm, sersic_n, r_eff, axis_ratio, position_angle,
                    truncation):
    """Add PSF-convolved, truncated Sersic galaxies to an image in MJy/sr.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float array, modified in place.
    x, y : numpy.ndarray
        0-based pixel positions of the galaxy centres.
    flux : numpy.ndarray
        Total fluxes in MJy (of the truncated profiles).
    jac : numpy.ndarray
        Local Jacobians, shape (n, 2, 2), arcsec per pixel.
    fwhm : float
        PSF full width at half maximum in arcsec.
    sersic_n, r_eff, axis_ratio, position_angle, truncation : numpy.ndarray
        Sersic index, semi-major half-light radius (arcsec), minor/major axis
        ratio, position angle of the major axis (degrees east of north), and
        semi-major truncation radius (arcsec).
    """
    ny, nx = image.shape
    sigma = _psf_sigma(jac, fwhm)
    b_n = gammaincinv(2.0 * sersic_n, 0.5)
    for i in range(len(x)):
        # Smallest pixel scale along any direction bounds the stamp's extent.
        min_scale = np.linalg.svd(jac[i], compute_uv=False).min()
        half = int(np.ceil(truncation[i] / min_scale + 4.0 * sigma[i] + 1.0))
        xc, yc = int(np.rint(x[i])), int(np.rint(y[i]))
        if xc + half < 0 or xc - half >= nx or yc + half < 0 or yc - half >= ny:
            continue
        k = _oversampling(r_eff[i] / min_scale)
        sub = (np.arange((2 * half + 1) * k) + 0.5) / k - 0.5 - half
        dx = (xc - x[i]) + sub[None, :]
        dy = (yc - y[i]) + sub[:, None]
        east = jac[i, 0, 0] * dx + jac[i, 0, 1] * dy
        north = jac[i, 1, 0] * dx + jac[i, 1, 1] * dy
        pa = np.deg2rad(position_angle[i])
        major = east * np.sin(pa) + north * np.cos(pa)
        minor = (east * np.cos(pa) - north * np.sin(pa)) / axis_ratio[i]
        radius = np.hypot(major, minor)
        profile = np.exp(-b_n[i] * (radius / r_eff[i]) ** (1.0 / sersic_n[i]))
        profile[radius > truncation[i]] = 0.0
        profile = gaussian_filter(profile, sigma[i] * k, mode="constant", truncate=4.0)
        pixels = profile.reshape(2 * half + 1, k, 2 * half + 1, k).sum(axis=(1, 3))
        total = pixels.sum()
        if total <= 0:
            continue
        brightness = flux[i] * pixels / total / _solid_angle(jac[i : i + 1])[0]
        y0, x0 = yc - half, xc - half
        ys0, xs0 = max(0, -y0), max(0, -x0)
        ys1 = min(2 * half + 1, ny - y0)
        xs1 = min(2 * half + 1, nx - x0)
        image[y0 + ys0 : y0 + ys1, x0 + xs0 : x0 + xs1] += brightness[ys0:ys1, xs0:xs1]


@dataclass
class DetectorNoise:
    """Per-pixel properties of one detector, shared by all its exposures.

    Attributes
    ----------
    read_noise : numpy.ndarray
        Effective read noise of a ramp fit per pixel, in electrons (float32).
    hot_rows, hot_cols : numpy.ndarray
        Positions of hot pixels.
    hot_rates : numpy.ndarray
        Their dark rates in DN/s.
    """

    read_noise: np.ndarray
    hot_rows: np.ndarray
    hot_cols: np.ndarray
    hot_rates: np.ndarray


def draw_detector(rng, shape, *, read_noise, n_hot):
    """Draw the fixed per-pixel properties of a detector.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the detector's properties.
    shape : tuple of int
        Image shape (ny, nx).
    read_noise : float
        Typical read noise in electrons; pixels scatter by ~10% around it.
    n_hot : int
        Number of hot pixels.

    Returns
    -------
    DetectorNoise
    """
    scatter = rng.standard_normal(shape, dtype=np.float32)
    noise_map = (read_noise * np.exp(np.float32(0.1) * scatter)).astype(np.float32)
    ny, nx = shape
    flat = rng.choice(ny * nx, size=min(n_hot, ny * nx), replace=False)
    rates = np.exp(rng.uniform(np.log(20.0), np.log(2000.0), flat.size))
    return DetectorNoise(noise_map, flat // nx, flat % nx, rates)


def add_cosmic_rays(data, sigma, rng, rate, exclude):
    """Add unflagged cosmic-ray hits (single pixels and short tracks) to data.

    Parameters
    ----------
    data : numpy.ndarray
        Image in DN/s, modified in place.
    sigma : numpy.ndarray
        Noise sigma per pixel in DN/s; hits are 20-500 times it.
    rng : numpy.random.Generator
        Source of the hits.
    rate : float
        Mean number of hits per pixel.
    exclude : numpy.ndarray
        Boolean mask of pixels not to hit (hot pixels, already masked anyway).

    Returns
    -------
    rows, cols, values : numpy.ndarray
        Every affected pixel once, with the total DN/s added there.
    """
    ny, nx = data.shape
    n_hits = int(rng.poisson(rate * ny * nx)) if rate > 0 else 0
    if n_hits == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    lengths = rng.choice([1, 2, 3, 4], size=n_hits, p=[0.4, 0.3, 0.2, 0.1])
    steps = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
    direction = steps[rng.integers(0, len(steps), n_hits)]
    amplitude = np.exp(rng.uniform(np.log(20.0), np.log(500.0), n_hits))
    hit = np.repeat(np.arange(n_hits), lengths)
    along = np.arange(hit.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = rng.integers(0, ny, n_hits)[hit] + along * direction[hit, 0]
    cols = rng.integers(0, nx, n_hits)[hit] + along * direction[hit, 1]
    # Deposits vary a little along a track; all stay at least 20 sigma.
    factor = np.maximum(amplitude[hit] * rng.uniform(0.8, 1.2, hit.size), 20.0)
    keep = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    rows, cols, factor = rows[keep], cols[keep], factor[keep]
    keep = ~exclude[rows, cols]
    rows, cols, factor = rows[keep], cols[keep], factor[keep]
    values = factor * sigma[rows, cols]
    pixel, inverse = np.unique(rows * nx + cols, return_inverse=True)
    values = np.bincount(inverse, weights=values)
    rows, cols = pixel // nx, pixel % nx
    data[rows, cols] += values.astype(data.dtype)
    return rows, cols, values


def expose(scene_mjysr, *, conversion, sky, detector, exposure_time, gain, flat_error,
           rng, noise=True, cosmic_ray_rate=0.0):
    """Turn a rendered scene into a calibrated rate image with its variances.

    Parameters
    ----------
    scene_mjysr : numpy.ndarray
        Noise-free sources in MJy/sr (float64 or float32).
    conversion : float
        MJy/sr per DN/s.
    sky : float
        Uniform sky level in DN/s.
    detector : DetectorNoise
        Read noise and hot pixels of the detector.
    exposure_time : float
        Seconds; sets the Poisson and read-noise variances of the rates.
    gain : float
        Electrons per DN.
    flat_error : float
        Relative flat-field uncertainty.
    rng : numpy.random.Generator
        Source of this exposure's noise and cosmic rays.
    noise : bool
        False leaves out the random noise (variances are still computed).
    cosmic_ray_rate : float
        Mean cosmic-ray hits per pixel.

    Returns
    -------
    arrays : dict
        ``data`` (float32, DN/s), ``dq`` (uint32), ``var_poisson``,
        ``var_rnoise``, ``var_flat`` and ``err`` (float32, DN/s units).
    cosmic_rays : tuple
        ``(rows, cols, values)`` of the cosmic-ray pixels, values in DN/s.
    """
    signal = (scene_mjysr / conversion).astype(np.float32)
    signal += np.float32(sky)
    hot = (detector.hot_rows, detector.hot_cols)
    signal[hot] += detector.hot_rates.astype(np.float32)

    electrons_per_rate = np.float32(gain * exposure_time)
    var_poisson = np.maximum(signal, 0) / electrons_per_rate
    var_rnoise = (detector.read_noise / electrons_per_rate) ** 2
    var_flat = (np.float32(flat_error) * signal) ** 2
    err = np.sqrt(var_poisson + var_rnoise + var_flat)

    data = signal
    if noise:
        data += rng.standard_normal(signal.shape, dtype=np.float32) * err

    dq = np.zeros(signal.shape, dtype=np.uint32)
    dq[hot] = np.uint32(dq_flags.HOT | dq_flags.DO_NOT_USE)
    exclude = dq != 0
    cosmic_rays = add_cosmic_rays(data, err, rng, cosmic_ray_rate, exclude)
    arrays = {
        "data": data,
        "dq": dq,
        "err": err,
        "var_poisson": var_poisson,
        "var_rnoise": var_rnoise,
        "var_flat": var_flat,
    }
    return arrays, cosmic_rays
