"""Point sources and extended sources: ``is_extended``.

A source's *concentration* is the ratio of its fluxes in the 0.4″ and 0.2″
circular apertures, ``C = F(0.4″) / F(0.2″)``. A point source has the PSF's
concentration ``C*``; anything resolved spreads more light beyond 0.2″ and
has a larger ``C``. As in the reference pipeline, a source is extended when
``C > 1.2 C*``. romosaic adds a significance test, ``C − C* > 3 σ_C``, so
that a faint star whose concentration is merely noisy is not called
extended: ``is_extended`` means *measurably* more extended than a point
source.

romosaic has no reference PSF model (its empirical PSF is built from the point
sources this module finds), so ``C*`` is measured from the mosaic itself:
the *half-sample mode* (the densest point) of the concentrations of bright,
unflagged sources. Stars, all sharing one concentration, form the tightest
clump; galaxies spread over larger values. Fewer than `MIN_LOCUS_SOURCES`
such sources and the locus cannot be found: ``C* = 1`` is used, the value
for a source whose light lies entirely inside 0.2″, and a warning is logged.
In a field with very few stars and many compact galaxies the mode may settle
on the galaxies; the value used is recorded in the catalog metadata
(``stellar_locus_concentration``).
"""

import logging
import math

import numpy as np

__all__ = [
    "EXTENDED_FACTOR",
    "EXTENDED_SIGNIFICANCE",
    "LOCUS_MIN_SNR",
    "MIN_LOCUS_SOURCES",
    "classify_extended",
    "half_sample_mode",
]

log = logging.getLogger(__name__)

#: ``C > EXTENDED_FACTOR × C*`` (the reference's criterion) ...
EXTENDED_FACTOR = 1.2
#: ... and ``C − C* > EXTENDED_SIGNIFICANCE × σ_C``.
EXTENDED_SIGNIFICANCE = 3.0
#: Sources defining the stellar locus have at least this S/N in the 0.2″ aperture ...
LOCUS_MIN_SNR = 30.0
#: ... and there must be at least this many of them.
MIN_LOCUS_SOURCES = 5


def half_sample_mode(values):
    """The half-sample mode of a set of numbers (Bickel & Frühwirth 2006).

    Repeatedly keeps the half of the sorted values that spans the shortest
    interval, until two or three remain. It finds the densest clump even
    when most values lie elsewhere.

    Parameters
    ----------
    values : array_like
        Finite numbers (at least one).

    Returns
    -------
    float
    """
    x = np.sort(np.asarray(values, dtype=float))
    while x.size > 3:
        half = int(math.ceil(x.size / 2))
        widths = x[half - 1:] - x[:x.size - half + 1]
        start = int(np.argmin(widths))
        x = x[start:start + half]
    if x.size == 3:
        # The closer pair; the middle value when both gaps are equal.
        low, high = x[1] - x[0], x[2] - x[1]
        if low < high:
            return float(np.mean(x[:2]))
        if high < low:
            return float(np.mean(x[1:]))
        return float(x[1])
    return float(np.mean(x))


def classify_extended(flux_small, err_small, flux_large, err_large, usable):
    """``is_extended`` for each source, and the stellar-locus concentration used.

    Parameters
    ----------
    flux_small, err_small : numpy.ndarray
        Flux and error in the 0.2″ aperture.
    flux_large, err_large : numpy.ndarray
        Flux and error in the 0.4″ aperture.
    usable : numpy.ndarray of bool
        Sources whose apertures are clean (no warning flags), eligible to
        define the stellar locus.

    Returns
    -------
    is_extended : numpy.ndarray of bool
    locus : float
        ``C*``.
    measured : bool
        Whether ``C*`` was measured (False: the fallback 1.0).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        concentration = flux_large / flux_small
        # The 0.4″ aperture is the 0.2″ one plus an annulus with independent
        # pixels, so C = 1 + F_annulus / F_small.
        annulus_var = np.clip(err_large**2 - err_small**2, 0.0, None)
        annulus_flux = flux_large - flux_small
        sigma = np.sqrt(annulus_var / flux_small**2
                        + (annulus_flux * err_small / flux_small**2) ** 2)
        snr_small = flux_small / err_small
    good = np.isfinite(concentration) & np.isfinite(sigma) & (flux_small > 0)
    bright = good & usable & (snr_small >= LOCUS_MIN_SNR)
    if np.count_nonzero(bright) >= MIN_LOCUS_SOURCES:
        locus = half_sample_mode(concentration[bright])
        measured = True
    else:
        locus = 1.0
        measured = False
        log.warning("only %d bright, clean sources: cannot measure the point-source "
                    "concentration; is_extended assumes C* = 1", np.count_nonzero(bright))
    is_extended = good & (concentration > EXTENDED_FACTOR * locus) & \
        (concentration - locus > EXTENDED_SIGNIFICANCE * sigma)
    return is_extended, float(locus), measured
