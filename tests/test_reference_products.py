"""The products' metadata written as the reference pipeline writes it.

Exposure times in ``meta.coadd_info``, the named parameters of the coadd's
gwcs, the catalog's ``aperture_radii`` (in the table and in the Parquet
file's ``source_catalog`` keys) and the orientation of free grids.
"""

import math

import asdf
import numpy as np
import pyarrow.parquet as pq
import pytest
import roman_datamodels.datamodels as rdm
from astropy import wcs as fitswcs
from astropy.modeling import models

from romosaic.library import ModelLibrary
from romosaic.resample import free_grid, skycell_grid
from romosaic.skycell import get_tessellation
from romosaic.steps import ResampleStep, SourceCatalogStep
from romosaic.wcs_utils import affine_tan_wcs, cd_from_orientation

from .conftest import make_image_model
from .test_source_catalog import _mosaic

SKYCELL = "270p65x70y49"


def _pair(**wcsinfo):
    """Two overlapping images (152.04 s exposures, 145.92 s effective)."""
    images = []
    for index, shift in enumerate((0.0, 3.0)):
        image = make_image_model(shape=(48, 40), crpix=(19.5 + shift, 23.5), exptime=152.04,
                                 orientation=10.0, observation_id=f"obs{index}",
                                 filename=f"image{index}_cal.asdf", flux_complete=True)
        image.meta.exposure.effective_exposure_time = 145.92
        image.meta.wcsinfo.update(wcsinfo)
        images.append(image)
    return images


def _sky_grid(wcs, shape, step=7):
    ny, nx = shape
    y, x = np.mgrid[-0.5:ny:step, -0.5:nx:step]
    return x.ravel(), y.ravel()


# -- meta.coadd_info ---------------------------------------------------------------------------


def test_exposure_times_are_effective_exposure_times():
    mosaic = ResampleStep.call(ModelLibrary(_pair()))
    info = mosaic.meta.coadd_info
    # Where both images contributed, 2 x 145.92 s (not 2 x 152.04 s).
    assert info.max_exposure_time == pytest.approx(2 * 145.92, rel=1e-6)
    covered = mosaic.weight > 0
    both = (mosaic.context[0] == 3)
    expected = (2 * 145.92 * both.sum() + 145.92 * (covered & ~both).sum()) / covered.sum()
    assert info.exposure_time == pytest.approx(expected, rel=1e-5)


def test_exposure_time_stands_in_for_a_missing_effective_time():
    images = _pair()
    for image in images:
        image.meta.exposure.effective_exposure_time = -999999.0
    mosaic = ResampleStep.call(ModelLibrary(images))
    assert mosaic.meta.coadd_info.max_exposure_time == pytest.approx(2 * 152.04, rel=1e-6)


# -- the coadd's gwcs ---------------------------------------------------------------------------


def _fits_wcs(crpix, crval, cdelt, pc):
    """The same projection by wcslib, from FITS keywords (1-based CRPIX)."""
    header = fitswcs.WCS(naxis=2)
    header.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    header.wcs.crpix = [crpix[0] + 1, crpix[1] + 1]
    header.wcs.crval = list(crval)
    header.wcs.cdelt = list(cdelt)
    header.wcs.pc = pc
    # gwcs puts the native pole at 180 for zenithal projections; FITS would
    # default to 0 for a tangent point on a celestial pole.
    header.wcs.lonpole = 180.0
    return header


def _check_named_parameters(wcs, wcsinfo, shape):
    forward = wcs.forward_transform
    crpix, crval = forward.crpix.value, forward.crval.value
    cdelt, pc = forward.cdelt.value, forward.pc.value
    assert crpix.tolist() == pytest.approx([wcsinfo["x_ref"], wcsinfo["y_ref"]], abs=1e-9)
    assert crval.tolist() == pytest.approx([wcsinfo["ra_ref"], wcsinfo["dec_ref"]], abs=1e-12)
    assert cdelt.tolist() == pytest.approx([wcsinfo["pixel_scale_ref"]] * 2, rel=1e-9)
    np.testing.assert_allclose(pc, wcsinfo["rotation_matrix"], atol=1e-9)
    # The parameters say where the pixels are: wcslib agrees to 1e-10 degree.
    x, y = _sky_grid(wcs, shape)
    ra, dec = wcs(x, y, with_bounding_box=False)
    ra_fits, dec_fits = _fits_wcs(crpix, crval, cdelt, pc).wcs_pix2world(x, y, 0)
    east = ((ra - ra_fits + 180) % 360 - 180) * math.cos(math.radians(crval[1]))
    np.testing.assert_allclose(east, 0.0, atol=1e-10)
    np.testing.assert_allclose(dec, dec_fits, atol=1e-10)


def test_free_grid_mosaic_wcs_has_the_reference_parameter_names(tmp_path):
    mosaic = ResampleStep.call(ModelLibrary(_pair()), rotation=25.0)
    _check_named_parameters(mosaic.meta.wcs, mosaic.meta.wcsinfo, mosaic.data.shape)
    # The names survive the file.
    path = tmp_path / "named_coadd.asdf"
    mosaic.save(path)
    with rdm.open(path) as saved:
        saved.validate()
        x, y = _sky_grid(saved.meta.wcs, mosaic.data.shape)
        assert saved.meta.wcs.forward_transform.cdelt.value.tolist() == pytest.approx(
            mosaic.meta.wcs.forward_transform.cdelt.value.tolist(), rel=0)
        np.testing.assert_array_equal(saved.meta.wcs(x, y), mosaic.meta.wcs(x, y))


def test_skycell_wcs_has_the_reference_parameter_names():
    cell = get_tessellation().skycell(SKYCELL)
    grid = skycell_grid(SKYCELL)
    forward = grid.wcs.forward_transform
    assert forward.crpix.value.tolist() == [cell.x_tangent, cell.y_tangent]
    assert forward.crval.value.tolist() == [cell.region.ra_tangent, cell.region.dec_tangent]
    assert forward.cdelt.value.tolist() == [0.055 / 3600] * 2
    assert forward.pc.value.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert grid.wcs.name == SKYCELL
    wcsinfo = {"x_ref": cell.x_tangent, "y_ref": cell.y_tangent,
               "ra_ref": cell.region.ra_tangent, "dec_ref": cell.region.dec_tangent,
               "pixel_scale_ref": 0.055 / 3600, "rotation_matrix": np.eye(2)}
    _check_named_parameters(grid.wcs, wcsinfo, grid.shape)


def test_named_parameters_map_pixels_where_the_cd_chain_did():
    """Splitting CD into CDELT x PC moves no pixel on the sky (a 5000-pixel skycell span)."""
    cd = cd_from_orientation(0.055 / 3600, 33.3)
    crval, crpix = (269.8, 66.07), (7299.5, -93500.5)
    named = affine_tan_wcs(crval=crval, crpix=crpix, cd=cd, shape=(5000, 5000))
    chain = (models.Shift(-crpix[0]) & models.Shift(-crpix[1])
             | models.AffineTransformation2D(matrix=cd)
             | models.Pix2Sky_TAN() | models.RotateNative2Celestial(*crval, 180.0))
    x, y = _sky_grid(named, (5000, 5000), step=250)
    ra, dec = named(x, y, with_bounding_box=False)
    ra0, dec0 = chain(x, y)
    assert np.max(np.abs(ra - ra0)) * math.cos(math.radians(66.07)) < 1e-11
    assert np.max(np.abs(dec - dec0)) < 1e-11
    u, v = named.invert(ra0, dec0, with_bounding_box=False)
    assert np.max(np.hypot(u - x, v - y)) < 1e-6


def test_output_wcs_file_keeps_its_own_transform(tmp_path):
    """A user's grid (here a free grid written to a file) is used as given."""
    grid = free_grid([(w.meta.wcs, w.data.shape) for w in _pair()], rotation=0.0)
    path = tmp_path / "grid.asdf"
    asdf.AsdfFile({"wcs": grid.wcs}).write_to(path)
    mosaic = ResampleStep.call(ModelLibrary(_pair()), output_wcs=str(path))
    assert mosaic.meta.wcs.forward_transform.cdelt.value.tolist() == pytest.approx(
        grid.wcs.forward_transform.cdelt.value.tolist(), rel=0)


# -- the catalog's aperture radii ----------------------------------------------------------------


def test_catalog_records_aperture_radii_as_the_reference(tmp_path):
    mosaic = _mosaic(stars=[(60.0, 70.0, 3000.0), (110.0, 40.0, 2000.0)])
    catalog, _ = SourceCatalogStep.call(mosaic, save_results=True, output_dir=str(tmp_path))
    meta = catalog.source_catalog.meta
    radii = meta["aperture_radii"]
    assert list(radii) == ["circle_pix", "annulus_pix", "circle_arcsec", "annulus_arcsec"]
    np.testing.assert_allclose(radii["circle_arcsec"], [0.1, 0.2, 0.4, 0.8, 1.6])
    np.testing.assert_allclose(radii["annulus_arcsec"], [2.4, 2.8])
    scale = meta["pixel_scale_arcsec"]
    assert scale == pytest.approx(0.055, rel=1e-6)
    np.testing.assert_allclose(radii["circle_pix"], radii["circle_arcsec"] / scale)
    np.testing.assert_allclose(radii["annulus_pix"], radii["annulus_arcsec"] / scale)
    assert meta["aperture_mask_method"] == "correct"
    assert {"romosaic", "photutils", "numpy", "astropy"} <= set(meta["versions"])
    # The Parquet file's key-value metadata: one "source_catalog.<key>" per
    # entry, arrays written whole (as roman_datamodels flattens the reference's).
    keys = pq.read_schema(tmp_path / "synthetic_cat.parquet").metadata
    assert keys[b"source_catalog.aperture_radii.circle_arcsec"] == b"[0.1 0.2 0.4 0.8 1.6]"
    assert keys[b"source_catalog.aperture_radii.annulus_arcsec"] == b"[2.4 2.8]"
    assert b"source_catalog.aperture_radii.circle_pix" in keys
    assert keys[b"source_catalog.aperture_mask_method"] == b"correct"
    assert keys[b"source_catalog.kron_params.0"] == b"2.5"
    assert b"source_catalog.versions.photutils" in keys


# -- the free grid's orientation ----------------------------------------------------------------


def _orientation(mosaic):
    return mosaic.meta.wcsinfo.orientation_ref


def test_free_grid_is_oriented_by_the_recorded_roll():
    # The WCS's +y points 10.0 deg east of north; the pointing records the
    # aperture's y axis at 10.3 deg (roll_ref + v3yangle for vparity -1), as
    # a distortion that turns the detector against its ideal frame would.
    images = _pair(roll_ref=70.3, v3yangle=-60.0, vparity=-1)
    mosaic = ResampleStep.call(ModelLibrary(images))
    assert _orientation(mosaic) == pytest.approx(10.3, abs=1e-6)
    theta = math.radians(10.3)
    np.testing.assert_allclose(mosaic.meta.wcs.forward_transform.pc.value,
                               [[-math.cos(theta), math.sin(theta)],
                                [math.sin(theta), math.cos(theta)]], atol=1e-12)
    # The grid still holds all of both inputs.
    assert np.count_nonzero(mosaic.weight) >= 48 * 43


def test_free_grid_falls_back_to_the_wcs_without_a_recorded_roll():
    # Placeholder pointing values (-999999) say nothing about the orientation.
    mosaic = ResampleStep.call(ModelLibrary(_pair(roll_ref=-999999.0, v3yangle=-999999.0)))
    assert _orientation(mosaic) == pytest.approx(10.0, abs=1e-6)


def test_rotation_parameter_still_wins():
    mosaic = ResampleStep.call(ModelLibrary(_pair(roll_ref=70.3, v3yangle=-60.0, vparity=-1)),
                               rotation=-42.0)
    assert _orientation(mosaic) == pytest.approx(-42.0, abs=1e-6)
    assert np.linalg.det(mosaic.meta.wcs.forward_transform.pc.value) == pytest.approx(-1.0)
