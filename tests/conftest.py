"""Shared fixtures: small synthetic Level-2 images built in memory.

The package's simulator (romosaic.simulate) makes realistic datasets; these
helpers make tiny, exactly known images for unit tests of the algorithms.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import roman_datamodels.datamodels as rdm
from astropy.time import Time

from romosaic.steps.base import ensure_cal_step
from romosaic.wcs_utils import affine_tan_wcs, cd_from_orientation

SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
NATIVE_SCALE_ARCSEC = 0.11


#: Skip where /proc/self/status does not exist (anything but Linux).
linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                                reason="needs Linux's /proc")


def proc_status_mib(field):
    """This process's ``field`` of /proc/self/status (e.g. "VmRSS") in MiB,
    or None where /proc says nothing of it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return None


def make_image_model(
    *,
    shape=(64, 64),
    crval=(80.0, -30.0),
    crpix=None,
    orientation=0.0,
    scale_arcsec=NATIVE_SCALE_ARCSEC,
    data=None,
    var_rnoise=1e-2,
    var_poisson=1e-2,
    conversion=1.0,
    exptime=100.0,
    observation_id="obs1",
    filename="image_cal.asdf",
    filter_name="F158",
    flux_complete=False,
):
    """An ImageModel with a TAN WCS and uniform, exactly known arrays."""
    ny, nx = shape
    model = rdm.ImageModel.create_fake_data(shape=shape)
    if crpix is None:
        crpix = ((nx - 1) / 2, (ny - 1) / 2)
    cd = cd_from_orientation(scale_arcsec / 3600.0, orientation)
    model.meta.wcs = affine_tan_wcs(crval=crval, crpix=crpix, cd=cd, shape=shape)
    model.data = (np.ones(shape) if data is None else np.asarray(data)).astype(np.float32)
    model.dq = np.zeros(shape, np.uint32)
    model.var_rnoise = np.full(shape, var_rnoise, np.float16)
    model.var_poisson = np.full(shape, var_poisson, np.float16)
    model.err = np.sqrt(model.var_rnoise.astype(np.float32) +
                        model.var_poisson.astype(np.float32)).astype(np.float16)
    model.meta.photometry.conversion_megajanskys = conversion
    model.meta.photometry.pixel_area = (scale_arcsec / 206264.806) ** 2
    model.meta.exposure.exposure_time = exptime
    model.meta.exposure.start_time = Time("2027-01-01T00:00:00")
    model.meta.exposure.end_time = Time(model.meta.exposure.start_time.mjd + exptime / 86400.0,
                                         format="mjd")
    model.meta.observation.observation_id = observation_id
    model.meta.instrument.optical_element = filter_name
    model.meta.filename = filename
    ensure_cal_step(model)
    if flux_complete:
        model.meta.cal_step["flux"] = "COMPLETE"
    return model


@pytest.fixture
def image_model_factory():
    return make_image_model


def require_shared_fixtures(*parts):
    """The path of a shared golden fixture; skip without it, except on CI.

    Continuous integration sets ``CI=true`` and must have the fixtures: a
    missing folder there fails the test instead of silently skipping it.
    """
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.exists():
        message = f"shared golden fixtures are not available ({path})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def shared_fixtures():
    return require_shared_fixtures()


@pytest.fixture
def clean_env(tmp_path):
    """An environment for subprocesses with no variables but PATH and HOME."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
