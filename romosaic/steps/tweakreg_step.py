"""``tweakreg`` step: align the images' WCS to each other and to a reference catalogue.

The algorithm lives in `romosaic.align`. The step reads the library twice:
once to gather each image's WCS, exposure group and sources (from the
Level-2 catalog the model names, else found in its pixels), and once, after
the fit, to record the corrected WCS and the fit's record as edits of each
image (`~romosaic.library.ModelLibrary.update_meta`).
Input files are never written to; with ``save_results`` the aligned images
are written as new ``*_tweakreg.asdf`` files.
"""

import logging
from pathlib import Path

import numpy as np

from .._atomic import atomic_output
from ..align import (
    FIT_GEOMETRIES,
    AlignImage,
    MatchParameters,
    align_images,
    corrected_wcsinfo,
    detect_sources,
    read_image_catalog,
    read_reference_catalog,
)
from ..dq import good_pixel_mask
from ..errors import RomosaicInputError
from ..models import group_id_from_model, image_geometry
from ..parallel import resolve_workers
from .base import STEP_COMPLETE, STEP_SKIPPED, RomosaicStep

__all__ = ["TweakRegStep"]

log = logging.getLogger(__name__)

_GEOMETRIES = ", ".join(repr(g) for g in FIT_GEOMETRIES)


class TweakRegStep(RomosaicStep):
    """Correct the WCS of every image so that its sources line up.

    Relative alignment first: with two or more exposure groups, the groups'
    sources are matched to each other and one linear correction per group
    (all detectors of an exposure together) is fitted. Then, with
    ``abs_refcat`` (a local ECSV, Parquet or FITS table with RA/Dec), the
    aligned set is fitted to the reference catalogue. A group whose fit fails
    keeps its WCS, with a warning. Each model gets ``meta.wcs`` corrected in
    memory, ``meta.wcs_fit_results`` (the fits) and
    ``meta.cal_step.tweakreg``.
    """

    class_alias = "tweakreg"

    spec = f"""
    catalog_format = string(default='ascii.ecsv')  # Format of catalog files without a known extension, and of the saved abs catalog
    catalog_path = string(default='')  # Directory for the saved abs catalog (default: output_dir)
    enforce_user_order = boolean(default=False)  # Align exposure groups in input order?
    expand_refcat = boolean(default=False)  # Add aligned groups' sources to the relative reference?
    minobj = integer(min=1, default=15)  # Fewest matches a relative fit accepts
    searchrad = float(min=0.0, default=2.0)  # Search radius for relative matches, arcsec
    use2dhist = boolean(default=True)  # Find the relative offset from a 2-D histogram?
    separation = float(min=0.0, default=1.0)  # Minimum source separation, arcsec
    tolerance = float(min=0.0, default=0.7)  # Relative matching tolerance, arcsec
    fitgeometry = option({_GEOMETRIES}, default='rshift')  # Relative fit geometry
    nclip = integer(min=0, default=3)  # Clipping iterations of the relative fit
    sigma = float(min=0.0, default=3.0)  # Clipping limit of the relative fit, in RMS
    abs_refcat = string(default='')  # Reference catalogue file (ECSV, Parquet, FITS with RA/Dec); empty: relative only
    save_abs_catalog = boolean(default=False)  # Write the reference sources used
    abs_minobj = integer(min=1, default=15)  # Fewest matches an absolute fit accepts
    abs_searchrad = float(min=0.0, default=6.0)  # Search radius for absolute matches, arcsec
    abs_use2dhist = boolean(default=True)  # Find the absolute offset from a 2-D histogram?
    abs_separation = float(min=0.0, default=0.1)  # Minimum reference source separation, arcsec
    abs_tolerance = float(min=0.0, default=0.7)  # Absolute matching tolerance, arcsec
    abs_fitgeometry = option({_GEOMETRIES}, default='rshift')  # Absolute fit geometry
    abs_nclip = integer(min=0, default=3)  # Clipping iterations of the absolute fit
    abs_sigma = float(min=0.0, default=3.0)  # Clipping limit of the absolute fit, in RMS
    snr_threshold = float(min=0.0, default=10.0)  # Peak S/N of sources found in the pixels
    max_sources = integer(min=1, default=2000)  # Brightest sources used per detector
    good_bits = string(default='~DO_NOT_USE+NON_SCIENCE')  # DQ flags of usable pixels
    workers = integer(min=0, default=0)  # Threads finding sources (0: one per usable core)
    output_use_model = boolean(default=True)  # Name saved files after meta.filename
    """  # noqa: E501

    @staticmethod
    def remove_suffix(name):
        # Aligned copies are named x_tweakreg.asdf; aligning one again gives
        # x_tweakreg.asdf, not x_tweakreg_tweakreg.asdf.
        if name.endswith("_tweakreg"):
            return name[: -len("_tweakreg")], "_"
        return RomosaicStep.remove_suffix(name)

    def check_parameters(self):
        self._reference_catalog()

    def _reference_catalog(self):
        """The reference catalogue, read once; None when ``abs_refcat`` is empty."""
        name = (self.abs_refcat or "").strip()
        if not name:
            return None
        cached = getattr(self, "_refcat_cache", None)
        if cached is not None and cached[0] == name:
            return cached[1]
        table = read_reference_catalog(name)
        self._refcat_cache = (name, table)
        return table

    def process(self, input_data):
        refcat = self._reference_catalog()
        library = self.open_library(input_data)
        self._input_files = self._input_paths(library)
        self._input_directory = (Path(library._asn_dir) if library._asn_dir is not None
                                 else None)
        if self.save_results:
            self._check_outputs(library)
        images = library.map_models(self._gather, threads=resolve_workers(self.workers))
        groups = {image.group_id for image in images}
        log.info("%d image(s) in %d exposure group(s)%s", len(images), len(groups),
                 f"; reference catalogue {self.abs_refcat}" if refcat is not None else "")
        if len(groups) < 2 and refcat is None:
            log.warning("only one exposure group and no reference catalogue (abs_refcat): "
                        "nothing to align; WCS unchanged")
            for index, model in library.iter_models(modify=False):
                self.record_status(model, STEP_SKIPPED, library=library, index=index)
            return self.step_result(library, input_data)

        result = align_images(
            images, refcat=refcat,
            relative=self._match_parameters(""), absolute=self._match_parameters("abs_"),
            enforce_user_order=self.enforce_user_order, expand_refcat=self.expand_refcat,
            refcat_name=str(self.abs_refcat).strip() or "refcat",
        )
        for message in result.messages:
            log.warning("%s", message)
        self._report(images, result)
        for index, model in library.iter_models(modify=False):
            self._record(library, index, model, result.wcs[index], result.fits[index])
        if self.save_abs_catalog and result.refcat is not None:
            self._save_refcat(result.refcat, library)
        return self.step_result(library, input_data)

    def _match_parameters(self, prefix):
        def value(name):
            return getattr(self, prefix + name)

        return MatchParameters(
            searchrad=float(value("searchrad")), use2dhist=bool(value("use2dhist")),
            separation=float(value("separation")), tolerance=float(value("tolerance")),
            fitgeometry=str(value("fitgeometry")), nclip=int(value("nclip")),
            sigma=float(value("sigma")), minobj=int(value("minobj")),
        )

    # -- sources ---------------------------------------------------------------

    def _gather(self, index, model):
        """An `AlignImage` for one model: WCS, shape, group and sources."""
        name = str(model.meta.filename)
        image_geometry(model.meta, model.data.shape)
        catalog_file = self._catalog_file(model)
        if catalog_file is not None:
            catalog = read_image_catalog(catalog_file, catalog_format=self._read_format(
                catalog_file))
            how = f"from {catalog_file}"
        else:
            good = good_pixel_mask(model.dq, self.good_bits) if model.dq is not None else None
            catalog = detect_sources(model.data, good, snr=self.snr_threshold,
                                     max_sources=self.max_sources)
            how = "found in the image"
        if len(catalog) == 0:
            log.warning("%s: no sources %s; its exposure group is aligned with the sources "
                        "of its other detectors, if any", name, how)
        else:
            log.info("%s: %d sources %s", name, len(catalog), how)
        group = group_id_from_model(model) or name
        return AlignImage(name=name, wcs=model.meta.wcs, shape=model.data.shape,
                          group_id=group, catalog=catalog)

    def _catalog_file(self, model):
        """The Level-2 catalog file the model names, if it exists."""
        source_catalog = model.meta.get("source_catalog")
        name = source_catalog.get("tweakreg_catalog_name") if source_catalog else None
        if not name:
            return None
        path = Path(str(name))
        candidates = [path]
        directory = getattr(self, "_input_directory", None)
        if directory is not None and not path.is_absolute():
            candidates.insert(0, directory / path)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        log.info("%s: names catalog %s, which does not exist; finding sources in the image",
                 model.meta.filename, name)
        return None

    def _read_format(self, path):
        suffix = "".join(Path(path).suffixes).lower()
        known = (".ecsv", ".parquet", ".pq", ".fits", ".fit", ".fits.gz", ".fts")
        return None if suffix.endswith(known) else self.catalog_format

    # -- results ---------------------------------------------------------------

    def _report(self, images, result):
        reported = set()
        for image, fit in zip(images, result.fits, strict=True):
            key = (image.group_id, fit["status"])
            if key in reported:
                continue
            reported.add(key)
            for stage in ("relative", "absolute"):
                record = fit.get(stage)
                if record and record["status"] == "SUCCESS":
                    log.info("exposure group %s: %s fit: shift (%.4f, %.4f) arcsec, rotation "
                             "%.5f deg, rms %.4f arcsec, %d matches", image.group_id, stage,
                             *record["shift"], record["rotation"], record["rmse"],
                             record["nmatches"])
            status = fit["status"]
            if status == "REFERENCE":
                log.info("exposure group %s: reference of the relative alignment",
                         image.group_id)
            elif status != "SUCCESS":
                log.warning("%s (exposure group %s): %s; WCS %s", image.name, image.group_id,
                            status, "relatively aligned only" if "(relative alignment kept)"
                            in status else "unchanged")

    def _record(self, library, index, model, wcs, fit):
        updates = {}
        if wcs is not None:
            # The pointing keywords and footprint follow the corrected WCS,
            # so that aligned copies describe where the image really is.
            wcsinfo = model.meta.get("wcsinfo")
            if wcsinfo is not None:
                for key, value in corrected_wcsinfo(wcsinfo, model.meta.wcs, wcs,
                                                    model.data.shape).items():
                    updates[f"wcsinfo.{key}"] = value
            updates["wcs"] = wcs
        updates["wcs_fit_results"] = _plain(fit)
        library.update_meta(index, updates)
        aligned = wcs is not None or fit["status"] == "REFERENCE"
        self.record_status(model, STEP_COMPLETE if aligned else STEP_SKIPPED,
                           library=library, index=index)

    # -- outputs ---------------------------------------------------------------

    def _input_paths(self, library):
        if library._asn_dir is None:
            return []
        return [Path(library._member_to_filename(member))
                for member in library.asn["products"][0]["members"]]

    def _check_outputs(self, library):
        """Refuse, before any work, to write an aligned copy over an input file."""
        inputs = [p for p in self._input_paths(library) if p.exists()]
        for path in inputs:
            target = Path(self.make_output_path(basepath=path.name, suffix=self._suffix()))
            for source in inputs:
                if target.exists() and target.samefile(source):
                    raise RomosaicInputError(
                        f"{target}: writing the aligned copy would replace the input file "
                        f"{source}; choose another output_dir or suffix")

    def _suffix(self):
        return self.suffix or self.default_suffix()

    def save_model(self, model, suffix=None, idx=None, output_file=None, force=False,
                   **components):
        from stpipe.datamodel import AbstractDataModel

        if isinstance(model, AbstractDataModel) and (force or self.save_results or output_file):
            # Checked again at writing time: the library may hold models
            # whose names differ from the association's member names.
            target = Path(self.make_output_path(basepath=str(model.meta.filename),
                                                suffix=suffix or self._suffix()))
            for source in getattr(self, "_input_files", []):
                if target.exists() and source.exists() and target.samefile(source):
                    raise RomosaicInputError(
                        f"{target}: writing the aligned copy would replace the input file "
                        f"{source}; choose another output_dir or suffix")
        return super().save_model(model, suffix=suffix, idx=idx, output_file=output_file,
                                  force=force, **components)

    def _save_refcat(self, refcat, library):
        directory = Path(self.catalog_path or self.output_dir or ".")
        directory.mkdir(parents=True, exist_ok=True)
        fmt = self.catalog_format or "ascii.ecsv"
        extension = {"ascii.ecsv": "ecsv", "parquet": "parquet", "fits": "fits"}.get(fmt, "ecsv")
        path = directory / f"{library.product_name}_abs_refcat.{extension}"
        table = refcat.copy()
        table.rename_columns(["RA", "DEC"], ["ra", "dec"])
        with atomic_output(path) as temp_path:
            table.write(temp_path, format=fmt)
        log.info("Saved the reference sources used (%d) in %s", len(table), path)


def _plain(value):
    """Plain Python values (lists, floats, str) that ASDF and the schema accept."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return str(value) if value is not None else None
