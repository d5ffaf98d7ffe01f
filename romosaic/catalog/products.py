"""The catalog's data models: ``MosaicSourceCatalogModel`` and ``MosaicSegmentationMapModel``.

Both carry the mosaic's Level-3 metadata (what the catalog schemas require:
coordinates, coadd_info, instrument, observation, program, wcsinfo,
association, cal_step, resample) and ``meta.image`` naming the mosaic they
were measured on. The catalog model saves to Parquet
(``model.save("x_cat.parquet")``), the segmentation map to ASDF.
"""

import copy

import numpy as np
import roman_datamodels.datamodels as rdm
from astropy.time import Time

__all__ = ["catalog_model", "product_stem", "segmentation_model"]

# Mosaic metadata shared by the catalog products, where present.
_SHARED_META = (
    "calibration_software_name",
    "calibration_software_version",
    "product_type",
    "data_release_id",
    "coordinates",
    "coadd_info",
    "instrument",
    "observation",
    "program",
    "wcsinfo",
    "association",
    "cal_step",
    "resample",
)

_PRODUCT_SUFFIXES = ("_coadd", "_i2d", "_resample")


def product_stem(mosaic_filename):
    """The product name of a mosaic file: ``sim_f158_coadd.asdf`` → ``sim_f158``."""
    name = str(mosaic_filename or "mosaic").rsplit("/", 1)[-1]
    stem = name.split(".")[0] if name else "mosaic"
    for suffix in _PRODUCT_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def catalog_model(table, mosaic_meta):
    """A ``MosaicSourceCatalogModel`` holding ``table``.

    Parameters
    ----------
    table : astropy.table.Table
    mosaic_meta : roman_datamodels node
        The mosaic's ``meta``.

    Returns
    -------
    roman_datamodels.datamodels.MosaicSourceCatalogModel
    """
    model = rdm.MosaicSourceCatalogModel.create_minimal()
    _copy_meta(model, mosaic_meta)
    model.meta.filename = f"{product_stem(mosaic_meta.get('filename'))}_cat.parquet"
    model.source_catalog = table
    return model


def segmentation_model(labels, detection_image, mosaic_meta):
    """A ``MosaicSegmentationMapModel`` of a label image.

    Parameters
    ----------
    labels : numpy.ndarray
        uint32 labels, 0 where there is no source.
    detection_image : numpy.ndarray
        The smoothed, background-subtracted image that was thresholded.
    mosaic_meta : roman_datamodels node
        The mosaic's ``meta``.

    Returns
    -------
    roman_datamodels.datamodels.MosaicSegmentationMapModel
    """
    model = rdm.MosaicSegmentationMapModel.create_minimal()
    _copy_meta(model, mosaic_meta)
    model.meta.filename = f"{product_stem(mosaic_meta.get('filename'))}_segm.asdf"
    model.data = np.asarray(labels, dtype=np.uint32)
    model.detection_image = np.asarray(detection_image, dtype=np.float32)
    return model


def _copy_meta(model, mosaic_meta):
    for key in _SHARED_META:
        value = mosaic_meta.get(key)
        if value is not None:
            model.meta[key] = copy.deepcopy(value)
    file_date = mosaic_meta.get("file_date")
    model.meta.image = {
        "filename": str(mosaic_meta.get("filename") or "unknown"),
        "file_date": Time(file_date) if file_date is not None else Time.now(),
    }
