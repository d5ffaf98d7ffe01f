"""A diffraction point-spread function with rings and spikes, as a pixel-integrated table.

The simulator's default PSF is a Gaussian (`romosaic.simulate.render`), which
has no wings. Roman's real PSF is the diffraction pattern of a 2.36 m
aperture with a central obscuration and the shadows of the secondary
mirror's support struts: an Airy-like core, rings a few per cent as bright,
and thin diffraction spikes. Those rings and spikes are where a catalog finds
spurious sources around bright stars, so the simulator can render them.

`airy_psf` builds the pattern by Fourier optics: the intensity of the
Fourier transform of the pupil (a disc with a central hole and six struts),
averaged over several wavelengths across the filter so that the rings
broaden as they do in a wide band, and blurred by a small Gaussian for
pointing jitter and charge diffusion. It is sampled finer than the
detector's pixels and then integrated over a pixel (a box filter), so that
sampling it at any offset gives the fraction of a star's light that falls in
a pixel there. The pattern is fixed to the detector's axes (the struts do
not turn with the sky). Its numbers are plausible values for the Roman WFI,
not calibrated ones.
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates, uniform_filter

from ..errors import RomosaicInputError

__all__ = ["FILTER_WAVELENGTHS", "PSF_MODELS", "PixelPSF", "airy_psf"]

#: PSF models the simulator renders.
PSF_MODELS = ("gaussian", "airy")

#: Telescope aperture diameter (m) and linear central obscuration.
APERTURE_DIAMETER = 2.36
OBSCURATION = 0.32
#: Secondary-mirror struts: number, and width as a fraction of the diameter.
N_STRUTS = 6
STRUT_WIDTH = 0.012
#: Gaussian blur (sigma, arcsec) for pointing jitter and charge diffusion.
JITTER_SIGMA = 0.012
#: Band edges (micron) of the WFI filters (plausible values).
FILTER_WAVELENGTHS = {
    "F062": (0.48, 0.76),
    "F087": (0.76, 0.98),
    "F106": (0.93, 1.19),
    "F129": (1.13, 1.45),
    "F146": (0.93, 2.00),
    "F158": (1.38, 1.77),
    "F184": (1.68, 2.00),
    "F213": (1.95, 2.30),
}
#: Half-width of the tabulated PSF, arcsec: a ring there holds ~1e-6 of the
#: light per pixel, far below the noise of any star the simulator makes.
PSF_RADIUS = 3.0
#: Samples per detector pixel in the table (odd, so that pixel centres are samples).
OVERSAMPLING = 9
#: Pupil samples across the aperture diameter.
PUPIL_SAMPLES = 128
#: Wavelengths averaged across the band.
N_WAVELENGTHS = 5


@dataclass(frozen=True)
class PixelPSF:
    """A PSF integrated over square pixels of a given size, tabulated finely.

    Attributes
    ----------
    table : numpy.ndarray
        Fraction of the light falling in a pixel centred at each offset;
        offsets are ``(index - centre) / oversampling`` pixels.
    oversampling : int
        Table samples per pixel.
    pixel_scale : float
        Pixel size in arcsec the table was integrated for.
    fwhm : float
        FWHM of the optical PSF (before pixel integration), arcsec.
    """

    table: np.ndarray
    oversampling: int
    pixel_scale: float
    fwhm: float

    @property
    def radius_pix(self):
        """Half-width of the table in pixels."""
        return (self.table.shape[0] // 2) / self.oversampling

    def sample(self, dx, dy):
        """Fraction of a star's light in pixels at offsets ``(dx, dy)`` pixels from it.

        Parameters
        ----------
        dx, dy : numpy.ndarray
            Pixel-centre minus star position, in this table's pixels
            (broadcast together).

        Returns
        -------
        numpy.ndarray
            0 beyond the table.
        """
        centre = self.table.shape[0] // 2
        coords = np.stack(np.broadcast_arrays(np.asarray(dy) * self.oversampling + centre,
                                              np.asarray(dx) * self.oversampling + centre))
        shape = coords.shape[1:]
        values = map_coordinates(self.table, coords.reshape(2, -1), order=1, mode="constant",
                                 cval=0.0)
        return values.reshape(shape)


def _pupil(n):
    """Pupil transmission on an ``n`` × ``n`` grid spanning the aperture diameter."""
    coordinate = (np.arange(n) - (n - 1) / 2.0) / (n / 2.0)
    x, y = np.meshgrid(coordinate, coordinate)
    r = np.hypot(x, y)
    pupil = (r <= 1.0) & (r >= OBSCURATION)
    for k in range(N_STRUTS):
        angle = np.pi / 2.0 + k * 2.0 * np.pi / N_STRUTS
        # A strut runs outward from the obscuration along ``angle``.
        along = x * np.cos(angle) + y * np.sin(angle)
        across = -x * np.sin(angle) + y * np.cos(angle)
        pupil &= ~((along > 0) & (np.abs(across) < STRUT_WIDTH))
    return pupil.astype(float)


def _monochromatic(pupil, wavelength_um, sample_arcsec, n_out):
    """Intensity on an ``n_out`` grid of ``sample_arcsec`` spacing at one wavelength."""
    n_pupil = pupil.shape[0]
    # The FFT's output spacing is lambda / (grid size in metres) radians.
    lambda_over_d = wavelength_um * 1e-6 / APERTURE_DIAMETER * 180.0 / math.pi * 3600.0
    grid = int(round(n_pupil * lambda_over_d / sample_arcsec))
    padded = np.zeros((grid, grid))
    padded[:n_pupil, :n_pupil] = pupil
    intensity = np.abs(np.fft.fftshift(np.fft.fft2(padded))) ** 2
    # The rounding of ``grid`` changes the spacing by < 0.1%; rescale exactly.
    actual = lambda_over_d * n_pupil / grid
    centre = grid // 2
    offsets = (np.arange(n_out) - n_out // 2) * sample_arcsec / actual
    yy, xx = np.meshgrid(offsets + centre, offsets + centre, indexing="ij")
    return map_coordinates(intensity, [yy, xx], order=1, mode="constant", cval=0.0)


def _fwhm(image, sample_arcsec):
    """FWHM (arcsec) of a centred, peaked image: the diameter of the area above half peak."""
    area = np.count_nonzero(image >= 0.5 * image.max()) * sample_arcsec**2
    return 2.0 * math.sqrt(area / math.pi)


@lru_cache(maxsize=8)
def airy_psf(pixel_scale, filter_name="F158", *, spikes=True):
    """The obscured-aperture diffraction PSF of a filter, integrated over pixels.

    Parameters
    ----------
    pixel_scale : float
        Detector pixel size in arcsec (the table is for pixels of this size).
    filter_name : str
        WFI filter; its band sets the wavelengths.
    spikes : bool
        Include the secondary-mirror struts (diffraction spikes).

    Returns
    -------
    PixelPSF
        Normalised so that the table sums to ``oversampling²`` (the
        pixel-integrated fractions over a pixel grid sum to 1).

    Raises
    ------
    romosaic.errors.RomosaicInputError
        For an unknown filter.
    """
    band = FILTER_WAVELENGTHS.get(str(filter_name).upper())
    if band is None:
        raise RomosaicInputError(
            f"unknown filter {filter_name!r} for the airy PSF; use one of "
            f"{', '.join(FILTER_WAVELENGTHS)}")
    sample = pixel_scale / OVERSAMPLING
    half = int(math.ceil(PSF_RADIUS / sample))
    n_out = 2 * half + 1
    pupil = _pupil(PUPIL_SAMPLES)
    if not spikes:
        n = PUPIL_SAMPLES
        coordinate = (np.arange(n) - (n - 1) / 2.0) / (n / 2.0)
        r = np.hypot(*np.meshgrid(coordinate, coordinate))
        pupil = ((r <= 1.0) & (r >= OBSCURATION)).astype(float)
    optical = np.zeros((n_out, n_out))
    for wavelength in np.linspace(band[0], band[1], N_WAVELENGTHS):
        mono = _monochromatic(pupil, wavelength, sample, n_out)
        optical += mono / mono.sum()
    optical = gaussian_filter(optical, JITTER_SIGMA / sample, mode="constant")
    optical /= optical.sum()
    fwhm = _fwhm(optical, sample)
    # Integrating over a pixel: the mean of the samples within one pixel's width.
    integrated = uniform_filter(optical, OVERSAMPLING, mode="constant") * OVERSAMPLING**2
    return PixelPSF(table=integrated, oversampling=OVERSAMPLING, pixel_scale=float(pixel_scale),
                    fwhm=fwhm)
