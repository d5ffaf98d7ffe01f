"""Assembling Level-2 `ImageModel`s and writing the association and truth tables."""

from dataclasses import dataclass

import numpy as np
from astropy.time import Time, TimeDelta
from roman_datamodels import datamodels

from .._atomic import atomic_output
from ..associations import make_association
from ..associations import write_association as save_association
from ..half import to_float16
from .instrument import PIXEL_AREA

__all__ = [
    "ExposureInfo",
    "build_image_model",
    "cal_filename",
    "observation_id",
    "write_association",
    "write_table",
]

#: Program, execution plan, pass, segment, observation and visit of every simulated file.
PROGRAM = 1
VISIT_ID = f"{PROGRAM:05d}01001001001001"

#: Start of the first exposure, and the slew-and-settle time between dithers.
VISIT_START = Time("2027-06-01T00:00:00", format="isot", scale="utc")
DITHER_OVERHEAD = 30.0

#: A 46-read ramp (3.04 s frames, 139.84 s) averaged into 8 resultants.
FRAME_TIME = 3.04
READ_PATTERN = [[1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
                list(range(18, 28)), list(range(28, 38)), list(range(38, 46)), [46]]

# The mosaic pipeline's own steps have not run on a Level-2 file.
_NOT_YET_RUN = ("flux", "skymatch", "outlier_detection")

_FLOAT16_MAX = float(np.finfo(np.float16).max)


def cal_filename(exposure, detector, filter_name):
    """Real-style name of a calibrated exposure file.

    Parameters
    ----------
    exposure, detector : int
        1-based exposure and detector numbers.
    filter_name : str
        Filter, e.g. ``"F158"``.

    Returns
    -------
    str
        e.g. ``r0000101001001001001_0001_wfi01_f158_cal.asdf``.
    """
    return f"r{VISIT_ID}_{exposure:04d}_wfi{detector:02d}_{filter_name.lower()}_cal.asdf"


def observation_id(exposure):
    """Observation identifier of an exposure: visit, visit-file statement, exposure."""
    return f"{VISIT_ID}01101{exposure:04d}"


@dataclass(frozen=True)
class ExposureInfo:
    """What the metadata needs to know about one exposure of one detector."""

    exposure: int
    detector: int
    n_exposures: int
    filter_name: str
    exposure_time: float
    conversion: float
    ra_target: float
    dec_target: float

    @property
    def start_time(self):
        """Start of this exposure: exposures follow each other with a short slew between."""
        step = self.exposure_time + DITHER_OVERHEAD
        return VISIT_START + TimeDelta((self.exposure - 1) * step, format="sec")

    @property
    def end_time(self):
        """End of this exposure."""
        return self.start_time + TimeDelta(self.exposure_time, format="sec")


def _cal_steps(detector):
    """Status of every Level-2 calibration step named by the installed schema."""
    try:
        from roman_datamodels import get_latest_schema

        _, schema = get_latest_schema("asdf://stsci.edu/datamodels/roman/schemas/meta/l2_cal_step")
        names = list(schema["properties"])
    except (ImportError, ValueError, KeyError):
        names = ["assign_wcs", "dark", "dark_decay", "dq_init", "flat_field", "flux", "linearity",
                 "outlier_detection", "photom", "source_catalog", "ramp_fit", "refpix",
                 "saturation", "skymatch", "tweakreg", "wfi18_transient"]
    steps = {name: "COMPLETE" for name in names}
    for name in _NOT_YET_RUN:
        if name in steps:
            steps[name] = "INCOMPLETE"
    if "wfi18_transient" in steps and detector != 18:
        steps["wfi18_transient"] = "N/A"
    return steps


def _meta(info, geometry):
    """The metadata tree of one image, in the shape of the schema."""
    placement = geometry.placement
    obs_id = observation_id(info.exposure)
    return {
        "filename": cal_filename(info.exposure, info.detector, info.filter_name),
        "file_date": info.end_time,
        "product_type": "l2",
        "instrument": {
            "name": "WFI",
            "detector": f"WFI{info.detector:02d}",
            "optical_element": info.filter_name.upper(),
        },
        "exposure": {
            "type": "WFI_IMAGE",
            "start_time": info.start_time,
            "end_time": info.end_time,
            "engineering_quality": "OK",
            "nresultants": len(READ_PATTERN),
            "data_problem": None,
            "frame_time": FRAME_TIME,
            "exposure_time": info.exposure_time,
            "effective_exposure_time": info.exposure_time,
            "read_pattern": READ_PATTERN,
            "truncated": False,
        },
        "observation": {
            "observation_id": obs_id,
            "visit_id": VISIT_ID,
            "program": PROGRAM,
            "execution_plan": 1,
            "pass": 1,
            "segment": 1,
            "observation": 1,
            "visit": 1,
            "visit_file_group": 1,
            "visit_file_sequence": 1,
            "visit_file_activity": "01",
            "exposure": info.exposure,
            "wfi_parallel": False,
        },
        "visit": {
            "dither": {"primary_name": "SIMULATED", "subpixel_name": None, "executed_pattern": []},
            "type": "SIMULATED",
            "start_time": VISIT_START,
            "nexposures": info.n_exposures,
            "internal_target": False,
        },
        "pointing": {
            "pa_aperture": float((placement.roll + placement.rotation) % 360.0),
            "pointing_engineering_source": "CALCULATED",
            "ra_v1": placement.ra_v1,
            "dec_v1": placement.dec_v1,
            "pa_v3": placement.roll,
            "target_aperture": "WFI_CEN",
            "target_ra": info.ra_target,
            "target_dec": info.dec_target,
        },
        "velocity_aberration": {
            "ra_reference": placement.ra_v1,
            "dec_reference": placement.dec_v1,
            "scale_factor": 1.0,
        },
        "wcsinfo": geometry.wcsinfo(),
        "photometry": {
            "conversion_megajanskys": info.conversion,
            "conversion_megajanskys_uncertainty": 0.01 * info.conversion,
            "pixel_area": PIXEL_AREA,
        },
        "cal_step": _cal_steps(info.detector),
        "wcs": geometry.wcs,
    }


def _float16(array):
    """Cast to float16, clipping values beyond its range instead of making them infinite."""
    return to_float16(np.clip(array, -_FLOAT16_MAX, _FLOAT16_MAX))


def build_image_model(arrays, geometry, info):
    """Assemble a valid Level-2 ImageModel from simulated arrays.

    Parameters
    ----------
    arrays : dict
        ``data``, ``dq``, ``err``, ``var_poisson``, ``var_rnoise``, ``var_flat``
        as returned by `romosaic.simulate.render.expose`.
    geometry : ImageGeometry
        The image's placement and gwcs.
    info : ExposureInfo
        Exposure and detector identification.

    Returns
    -------
    roman_datamodels.datamodels.ImageModel
        ``data`` float32 in DN/s, ``dq`` uint32, error and variances float16.
    """
    ny, nx = geometry.shape
    model = datamodels.ImageModel.create_fake_data(
        defaults={"meta": _meta(info, geometry)}, shape=(ny, nx)
    )
    model.data = np.asarray(arrays["data"], dtype=np.float32)
    model.dq = np.asarray(arrays["dq"], dtype=np.uint32)
    for name in ("err", "var_poisson", "var_rnoise", "var_flat"):
        setattr(model, name, _float16(arrays[name]))
    # Ramp-fitting by-products and reference pixels are required but carry no
    # information here; the reference-pixel cubes keep a single resultant so
    # files stay small.
    model.dq2 = np.zeros((ny, nx), dtype=np.uint32)
    model.chisq = np.zeros((ny, nx), dtype=np.float16)
    model.dumo = np.zeros((ny, nx), dtype=np.float16)
    model.amp33 = np.zeros((1, ny + 8, 128), dtype=np.uint16)
    for side, shape in (("left", (ny + 8, 4)), ("right", (ny + 8, 4)),
                        ("top", (4, nx + 8)), ("bottom", (4, nx + 8))):
        setattr(model, f"border_ref_pix_{side}", np.zeros((1, *shape), dtype=np.float32))
        setattr(model, f"dq_border_ref_pix_{side}", np.zeros(shape, dtype=np.uint32))
    return model


def write_association(path, product_name, members, *, program=PROGRAM):
    """Write an image association listing the simulated files.

    Parameters
    ----------
    path : pathlib.Path
        Output JSON file.
    product_name : str
        Name of the association's single product.
    members : list of str
        File names relative to the association's directory.
    program : int
        Program number.
    """
    association = make_association(members, product_name=product_name,
                                   program=f"{program:05d}")
    save_association(path, association)


def write_table(table, path):
    """Write a truth table as ECSV, replacing an older file atomically."""
    with atomic_output(path) as temp_path:
        table.write(temp_path, format="ascii.ecsv")
