"""The simulated instrument: the numbers that describe one WFI detector and exposure.

These are plausible values for the Roman Wide Field Instrument, chosen so that
simulated images look and behave like real Level-2 calibrated exposures. They
are not calibrated reference values and nothing should depend on them being so.
"""

import numpy as np

__all__ = [
    "ARCSEC_PER_RAD",
    "CONVERSION_MEGAJANSKYS",
    "DETECTOR_SKY_SCATTER",
    "COSMIC_RAY_RATE",
    "DETECTOR_SIZE",
    "EXPOSURE_TIME",
    "FLAT_ERROR",
    "GAIN",
    "GALAXY_DENSITY",
    "HOT_PIXEL_FRACTION",
    "PIXEL_AREA",
    "PIXEL_SCALE",
    "PSF_FWHM",
    "READ_NOISE",
    "SKY_RANGE",
    "STAR_DENSITY",
    "abmag_to_njy",
    "conversion_for",
]

ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi

#: Nominal pixel scale in arcsec per pixel.
PIXEL_SCALE = 0.11

#: Nominal pixel solid angle in steradians, as written to ``meta.photometry.pixel_area``.
PIXEL_AREA = (PIXEL_SCALE / ARCSEC_PER_RAD) ** 2

#: Science pixels on a side of a real WFI detector.
DETECTOR_SIZE = 4088

#: Electrons per DN.
GAIN = 2.0

#: Effective read noise of a fitted ramp, in electrons, before per-pixel scatter.
READ_NOISE = 5.0

#: Relative uncertainty of the flat field, applied to the whole signal.
FLAT_ERROR = 0.002

#: Full width at half maximum of the Gaussian point-spread function, arcsec.
PSF_FWHM = 0.15

#: Exposure time in seconds (46 reads of 3.04 s, a common imaging MA table length).
EXPOSURE_TIME = 139.8

#: Range of the uniform sky level in DN/s drawn for each exposure.
SKY_RANGE = (0.3, 1.5)

#: Relative standard deviation of each detector's sky about its exposure's
#: (residual bias, dark and flat-field differences between detectors).
DETECTOR_SKY_SCATTER = 0.1

#: Default source densities per square arcminute of the union footprint.
STAR_DENSITY = 55.0
GALAXY_DENSITY = 37.0

#: Default cosmic-ray hits per pixel per exposure that survived ramp fitting.
COSMIC_RAY_RATE = 1.0e-4

#: Default fraction of hot pixels on a detector.
HOT_PIXEL_FRACTION = 2.0e-5

#: MJy/sr per DN/s by filter. Plausible magnitudes only: with 0.40 in F158 a
#: 20th-magnitude star gives about 320 DN/s; the wide F146 collects more light.
CONVERSION_MEGAJANSKYS = {
    "F062": 0.36,
    "F087": 0.42,
    "F106": 0.40,
    "F129": 0.39,
    "F146": 0.17,
    "F158": 0.40,
    "F184": 0.55,
    "F213": 0.60,
}


def conversion_for(filter_name):
    """Return the DN/s to MJy/sr conversion of a filter.

    Parameters
    ----------
    filter_name : str
        WFI imaging filter, e.g. ``"F158"`` (case-insensitive).

    Returns
    -------
    float
        MJy/sr per DN/s.

    Raises
    ------
    KeyError
        If the filter is not an imaging filter of the WFI.
    """
    return CONVERSION_MEGAJANSKYS[filter_name.upper()]


def abmag_to_njy(mag):
    """Convert AB magnitudes to flux densities in nJy.

    Parameters
    ----------
    mag : float or array-like
        AB magnitude(s).

    Returns
    -------
    float or numpy.ndarray
        Flux density in nJy (3631 Jy at magnitude 0).
    """
    return 3631.0e9 * 10.0 ** (-0.4 * np.asarray(mag, dtype=float))

#: Standard deviation (mag) of the sources' colours in a two-band simulation
#: (``second_filter``): broad enough that a flux copied from the wrong band shows.
COLOUR_SCATTER = 0.3
