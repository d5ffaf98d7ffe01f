"""``source_catalog`` step: detect and measure the sources of a mosaic or an image.

The step opens the mosaic (or a Level-2 image), hands its arrays to
`romosaic.catalog.make_source_catalog` and wraps the result in a
``MosaicSourceCatalogModel`` and a ``MosaicSegmentationMapModel`` (for an
image: an ``ImageSourceCatalogModel`` and a ``SegmentationMapModel``). The
algorithm lives in `romosaic.catalog`.
"""

import logging
from pathlib import Path

import numpy as np
import roman_datamodels.datamodels as rdm

from .._atomic import atomic_save_model
from ..errors import ModelTypeError, RomosaicInputError
from ..flux import resolve_conversion_factor
from ..models import open_roman_file
from ..resample.noise_correlation import NoiseCorrelation
from .base import STEP_COMPLETE, RomosaicStep

__all__ = ["SourceCatalogStep"]

log = logging.getLogger(__name__)

class SourceCatalogStep(RomosaicStep):
    """Detect the sources of a mosaic and measure their positions, shapes and fluxes.

    Input: a ``MosaicModel`` or the path of one. Returns
    ``(catalog, segmentation)``: a ``MosaicSourceCatalogModel`` (fluxes in
    nJy) and a ``MosaicSegmentationMapModel`` (uint32 labels and the
    detection image). Run by itself with ``save_results``, it writes
    ``<product>_<suffix>.parquet`` (``suffix`` is ``cat`` by default) and
    ``<product>_segm.asdf``.

    A Level-2 ``ImageModel`` (or its file) gives an ``ImageSourceCatalogModel``
    and a ``SegmentationMapModel`` instead, as the reference's Level-2
    catalog: the image is measured in MJy/sr (converted with
    ``meta.photometry.conversion_megajanskys`` unless the flux step already
    ran), pixels flagged DO_NOT_USE are left out, and detections sharper than
    a point source are rejected as cosmic rays, as where one input covers a
    mosaic. The input model and file are not changed, except that an
    ``ImageModel`` given in memory gets ``meta.cal_step.source_catalog``.
    """

    class_alias = "source_catalog"

    spec = """
    bkg_boxsize = integer(default=1000)  # Background box size in pixels (fitted to the mosaic)
    kernel_fwhm = float(default=None)  # Detection kernel FWHM in pixels (None: matched to the PSF)
    snr_threshold = float(default=6.0)  # Detection threshold in units of the smoothed image's noise
    npixels = integer(default=None)  # Minimum pixels of a source (None: min_area_arcsec2)
    min_area_arcsec2 = float(default=0.02)  # Minimum area of a source in arcsec2, unless npixels
    psf_fwhm_arcsec = float(default=None)  # Optical PSF FWHM in arcsec (None: the filter's)
    deblend = boolean(default=True)  # Split blended sources (the reference: False)
    fit_psf = boolean(default=True)  # Fit a PSF to every source (psf_* columns)
    psf_file = string(default='')  # ASDF/FITS ePSF file; empty: build one from the mosaic's stars
    aperture_corrections = string(default='')  # ECSV/ASDF file of encircled energy per radius
    forced_segmentation = string(default='')  # Another band's _segm.asdf: measure in its segments
    suffix = string(default='cat')  # Suffix of the catalog file: <product>_<suffix>.parquet
    """

    def process(self, input_data):
        self.check_parameters()
        # The path the user gave names the mosaic in errors about its grid.
        self._input_name = str(input_data) if isinstance(input_data, (str, Path)) else None
        mosaic, owned = _open_mosaic(input_data)
        try:
            if isinstance(mosaic, rdm.ImageModel):
                result = self._catalog(mosaic)
                if not owned:
                    self.record_status(mosaic, STEP_COMPLETE)
                return result
            return self._catalog(mosaic)
        finally:
            if owned:
                mosaic.close()

    def _catalog(self, mosaic):
        # The catalog package (photutils, scipy.signal: 0.4 s to import) is
        # loaded when a catalog is made, so that strun --help, the survey's
        # planning and runs that skip the catalog start without it.
        from ..catalog import (
            APERTURE_RADII_ARCSEC,
            coverage_from_context,
            forced_photometry,
            make_source_catalog,
            read_aperture_corrections,
            read_psf_file,
        )

        name = mosaic.meta.get("filename") or "mosaic"
        wcs = mosaic.meta.get("wcs")
        if wcs is None:
            raise RomosaicInputError(f"{name}: has no WCS (meta.wcs)")
        filter_name = mosaic.meta.get("instrument", {}).get("optical_element")
        correction = None
        if self.aperture_corrections:
            correction = read_aperture_corrections(
                self.aperture_corrections, APERTURE_RADII_ARCSEC,
                None if filter_name is None else str(filter_name))
        if isinstance(mosaic, rdm.ImageModel):
            data, err = _image_arrays(mosaic, name)
            weight = None
            # One exposure: cosmic rays that jump detection missed are
            # rejected as where one input covers a mosaic.
            coverage = np.ones(data.shape, np.uint8)
        else:
            data, err = mosaic.data, mosaic.err
            weight = getattr(mosaic, "weight", None)
            context = getattr(mosaic, "context", None)
            coverage = (None if context is None or weight is None else
                        coverage_from_context(context, np.asarray(weight)))
        noise_correlation = NoiseCorrelation.from_meta(mosaic.meta.get("resample"))
        if self.forced_segmentation:
            labels, detection_image = _read_forced_segmentation(
                self.forced_segmentation, mosaic, getattr(self, "_input_name", None) or name)
            result = forced_photometry(
                data, err, wcs, labels, detection_image,
                weight=None if weight is None else np.asarray(weight), coverage=coverage,
                pixel_scale_arcsec=_pixel_scale_arcsec(mosaic), bkg_boxsize=self.bkg_boxsize,
                noise_correlation=noise_correlation, aperture_correction=correction)
            return self._products(result, mosaic, name, self.forced_segmentation)
        result = make_source_catalog(
            data,
            err,
            wcs,
            weight=None if weight is None else np.asarray(weight),
            coverage=coverage,
            pixel_scale_arcsec=_pixel_scale_arcsec(mosaic),
            bkg_boxsize=self.bkg_boxsize,
            kernel_fwhm=self.kernel_fwhm,
            snr_threshold=self.snr_threshold,
            npixels=self.npixels,
            min_area_arcsec2=self.min_area_arcsec2,
            psf_fwhm_arcsec=self.psf_fwhm_arcsec,
            filter_name=None if filter_name is None else str(filter_name),
            deblend=self.deblend,
            aperture_correction=correction,
            noise_correlation=noise_correlation,
            fit_psf=self.fit_psf,
            psf_model=read_psf_file(self.psf_file, pixel_scale_arcsec=_pixel_scale_arcsec(mosaic))
            if self.fit_psf and self.psf_file else None,
            pixfrac=_pixfrac(mosaic),
        )
        return self._products(result, mosaic, name)

    def _products(self, result, mosaic, name, forced_segmentation=None):
        from ..catalog import catalog_model, segmentation_model

        catalog = catalog_model(result.table, mosaic.meta,
                                forced_segmentation=forced_segmentation)
        segmentation = segmentation_model(result.segmentation, result.detection_image,
                                          mosaic.meta)
        for model in (catalog, segmentation):
            self.record_status(model, STEP_COMPLETE)
        self._mosaic_filename = str(name)
        return catalog, segmentation

    def check_parameters(self):
        from ..catalog import check_catalog_parameters, read_psf_file

        check_catalog_parameters(bkg_boxsize=self.bkg_boxsize, kernel_fwhm=self.kernel_fwhm,
                                 snr_threshold=self.snr_threshold, npixels=self.npixels,
                                 deblend=self.deblend, psf_fwhm_arcsec=self.psf_fwhm_arcsec,
                                 min_area_arcsec2=self.min_area_arcsec2)
        if self.forced_segmentation and not Path(self.forced_segmentation).is_file():
            raise RomosaicInputError(
                f"{self.forced_segmentation}: forced_segmentation file not found")
        if self.aperture_corrections:
            path = Path(self.aperture_corrections)
            if not path.is_file():
                raise RomosaicInputError(f"{path}: aperture_corrections file not found")
            if path.suffix.lower() not in (".ecsv", ".asdf"):
                raise RomosaicInputError(
                    f"{path}: aperture_corrections must be an .ecsv or .asdf file")
        if self.fit_psf and self.psf_file:
            read_psf_file(self.psf_file)

    @property
    def catalog_suffix(self):
        """The catalog file's suffix: ``suffix``, or ``cat`` when that is empty."""
        return self.suffix or "cat"

    @classmethod
    def _datamodels_open(cls, init, **kwargs):
        if isinstance(init, (str, Path)):
            return _open_mosaic(init)[0]
        return init

    def save_model(self, model, suffix=None, idx=None, output_file=None, force=False,
                   **components):
        if isinstance(model, (rdm.MosaicSourceCatalogModel, rdm.ImageSourceCatalogModel,
                              rdm.ForcedMosaicSourceCatalogModel,
                              rdm.ForcedImageSourceCatalogModel)):
            suffix, ext = self.catalog_suffix, "parquet"
        elif isinstance(model, (rdm.MosaicSegmentationMapModel, rdm.SegmentationMapModel)):
            suffix, ext = "segm", "asdf"
        else:
            return super().save_model(model, suffix=suffix, idx=idx, output_file=output_file,
                                      force=force, **components)
        output_file = output_file or self.output_file
        if not force and not self.save_results and not output_file:
            return None
        # Both products are named after the mosaic (x_coadd.asdf → x_cat.parquet,
        # x_segm.asdf), not numbered like stpipe's default for tuple results.
        from ..catalog import product_stem

        basepath = output_file or getattr(self, "_mosaic_filename", None) or \
            f"{product_stem(model.meta.filename)}.asdf"
        path = self.make_output_path(basepath=basepath, suffix=suffix, ext=ext)
        atomic_save_model(model, path)
        log.info("Saved %s", path)
        return str(path)


def _read_forced_segmentation(path, mosaic, mosaic_name):
    """The labels and detection image of a segmentation file made on the mosaic's grid.

    One-line errors naming the file when it is not a segmentation map of the
    mosaic's level, and naming both files when the grids differ.
    """
    from ..catalog import grid_difference

    path = Path(path)
    level2 = isinstance(mosaic, rdm.ImageModel)
    wanted = rdm.SegmentationMapModel if level2 else rdm.MosaicSegmentationMapModel
    model = open_roman_file(path)
    try:
        if type(model) is not wanted:
            raise ModelTypeError(
                f"{path}: is a {type(model).__name__}, but forced_segmentation of a "
                f"{'Level-2 image' if level2 else 'mosaic'} needs a {wanted.__name__}")
        labels = np.asarray(model.data)
        detection_image = model.get("detection_image")
        if detection_image is None or np.shape(detection_image) != labels.shape:
            raise RomosaicInputError(
                f"{path}: the segmentation map has no detection_image of its shape "
                f"{labels.shape}; forced photometry measures positions and apertures on it")
        difference = grid_difference(np.shape(mosaic.data), mosaic.meta.get("wcsinfo"),
                                     labels.shape, model.meta.get("wcsinfo"))
        if difference is not None:
            raise RomosaicInputError(
                f"{path}: forced_segmentation is not on the grid of {mosaic_name}: "
                f"{difference}")
        return labels.copy(), np.array(detection_image, dtype=np.float32)
    finally:
        model.close()


def _image_arrays(image, name):
    """A Level-2 image's data and err in MJy/sr, NaN where flagged DO_NOT_USE (copies)."""
    from roman_datamodels.dqflags import pixel

    data = np.array(image.data, dtype=np.float32)
    err = np.array(image.err, dtype=np.float32)
    if (image.meta.get("cal_step") or {}).get("flux") != "COMPLETE":
        photometry = image.meta.get("photometry") or {}
        factor, problem, warning = resolve_conversion_factor(
            photometry.get("conversion_megajanskys"), photometry.get("pixel_area"))
        if problem:
            raise RomosaicInputError(f"{name}: {problem}")
        if warning:
            log.warning("%s: %s", name, warning)
        data *= np.float32(factor)
        err *= np.float32(factor)
    dq = getattr(image, "dq", None)
    if dq is not None:
        bad = (np.asarray(dq) & pixel.DO_NOT_USE) != 0
        data[bad] = np.nan
        err[bad] = np.nan
    return data, err


def _pixel_scale_arcsec(mosaic):
    """The mosaic's pixel size from ``meta.wcsinfo.pixel_scale`` (degrees), if usable.

    Level-2 images record no such scale (None: measured from the WCS).
    """
    if isinstance(mosaic, rdm.ImageModel):
        return None
    try:
        scale = float(mosaic.meta.wcsinfo.pixel_scale) * 3600.0
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return scale if np.isfinite(scale) and scale > 0 else None


def _pixfrac(mosaic):
    """The drizzle's ``pixfrac`` from ``meta.resample``; 1 when not recorded or unusable.

    A Level-2 image was not drizzled: each pixel is its own.
    """
    if isinstance(mosaic, rdm.ImageModel):
        return 1.0
    resample = mosaic.meta.get("resample")
    try:
        pixfrac = float(resample.get("pixfrac"))
    except (AttributeError, KeyError, TypeError, ValueError):
        return 1.0
    return pixfrac if np.isfinite(pixfrac) and pixfrac > 0 else 1.0


def _open_mosaic(input_data):
    """The input as a ``MosaicModel`` or ``ImageModel``, and whether this step opened it."""
    if isinstance(input_data, (rdm.MosaicModel, rdm.ImageModel)):
        return input_data, False
    if isinstance(input_data, (str, Path)):
        path = Path(input_data)
        model = open_roman_file(path)
        if not isinstance(model, (rdm.MosaicModel, rdm.ImageModel)):
            kind = type(model).__name__
            model.close()
            raise ModelTypeError(
                f"{path}: is a {kind}, but source_catalog needs a mosaic (MosaicModel) or "
                "a Level-2 image (ImageModel)")
        return model, True
    name = getattr(getattr(input_data, "meta", None), "filename", None) or "input"
    raise ModelTypeError(
        f"{name}: is a {type(input_data).__name__}, but source_catalog needs a mosaic "
        "(MosaicModel) or a Level-2 image (ImageModel)")
