"""The catalog's data models: ``MosaicSourceCatalogModel`` and ``MosaicSegmentationMapModel``.

Both carry the mosaic's Level-3 metadata (what the catalog schemas require:
coordinates, coadd_info, instrument, observation, program, wcsinfo,
association, cal_step, resample) and ``meta.image`` naming the mosaic they
were measured on. The catalog model saves to Parquet
(``model.save("x_cat.parquet")``), the segmentation map to ASDF.

Measured on a Level-2 ``ImageModel``, they are an ``ImageSourceCatalogModel``
and a ``SegmentationMapModel`` carrying the image's Level-2 metadata
(exposure, photometry, pointing, visit, ...), as the reference's Level-2
catalog.
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

# Metadata of a Level-2 image the Level-2 catalog products carry, where present.
_SHARED_META_L2 = (
    "calibration_software_name",
    "calibration_software_version",
    "prd_version",
    "sdf_software_version",
    "product_type",
    "coordinates",
    "exposure",
    "instrument",
    "observation",
    "photometry",
    "pointing",
    "program",
    "ref_file",
    "visit",
    "wcsinfo",
)

_PRODUCT_SUFFIXES = ("_coadd", "_i2d", "_resample", "_cal")


def product_stem(mosaic_filename):
    """The product name of a mosaic file: ``sim_f158_coadd.asdf`` → ``sim_f158``."""
    name = str(mosaic_filename or "mosaic").rsplit("/", 1)[-1]
    stem = name.split(".")[0] if name else "mosaic"
    for suffix in _PRODUCT_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def catalog_model(table, mosaic_meta, forced_segmentation=None):
    """A ``MosaicSourceCatalogModel`` holding ``table``.

    Parameters
    ----------
    table : astropy.table.Table
    mosaic_meta : roman_datamodels node
        The mosaic's ``meta`` (or a Level-2 image's).
    forced_segmentation : str, optional
        For a forced catalog (`romosaic.catalog.forced`): the segmentation
        file it was forced on, recorded as ``meta.image.forced_segmentation``.

    Returns
    -------
    roman_datamodels.datamodels.MosaicSourceCatalogModel
        An ``ImageSourceCatalogModel`` for a Level-2 image; the
        ``Forced...`` models for a forced catalog.
    """
    level2 = _is_level2(mosaic_meta)
    if forced_segmentation:
        kind = rdm.ForcedImageSourceCatalogModel if level2 else \
            rdm.ForcedMosaicSourceCatalogModel
    else:
        kind = rdm.ImageSourceCatalogModel if level2 else rdm.MosaicSourceCatalogModel
    model = kind.create_minimal()
    _copy_meta(model, mosaic_meta)
    if forced_segmentation:
        model.meta.image.forced_segmentation = str(forced_segmentation)
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
        A ``SegmentationMapModel`` for a Level-2 image.
    """
    model = (rdm.SegmentationMapModel if _is_level2(mosaic_meta)
             else rdm.MosaicSegmentationMapModel).create_minimal()
    _copy_meta(model, mosaic_meta)
    model.meta.filename = f"{product_stem(mosaic_meta.get('filename'))}_segm.asdf"
    model.data = np.asarray(labels, dtype=np.uint32)
    model.detection_image = np.asarray(detection_image, dtype=np.float32)
    return model


def _is_level2(meta):
    """Whether ``meta`` is a Level-2 image's (it has an exposure, a mosaic has coadd_info)."""
    return meta.get("exposure") is not None and meta.get("coadd_info") is None


def _copy_meta(model, mosaic_meta):
    level2 = _is_level2(mosaic_meta)
    for key in _SHARED_META_L2 if level2 else _SHARED_META:
        value = mosaic_meta.get(key)
        if value is not None:
            model.meta[key] = copy.deepcopy(value)
    if level2:
        # Version strings the Level-2 schemas require; "?" is roman_datamodels'
        # placeholder for a value not known.
        for key in ("calibration_software_version", "prd_version", "sdf_software_version",
                    "product_type"):
            if model.meta.get(key) is None:
                model.meta[key] = "?"
    file_date = mosaic_meta.get("file_date")
    model.meta.image = {
        "filename": str(mosaic_meta.get("filename") or "unknown"),
        "file_date": Time(file_date) if file_date is not None else Time.now(),
    }
