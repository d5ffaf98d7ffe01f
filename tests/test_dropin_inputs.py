"""Level-2 files the reference pipeline runs on, which romosaic must accept too.

* roman_datamodels' fake-data helper writes an exposure time of -999999;
* the Roman simulator writes a gwcs without an inverse (a polynomial
  distortion then a TAN projection, on which gwcs's numerical inverse
  fails), no ``var_rnoise``, and a pixel area and conversion that are
  negative (signed by the WCS's parity).

Images of both kinds are made here from romosaic's own simulation, without
the simulator as a dependency, and the mosaic's star fluxes are checked
against the truth.
"""

import logging
import math

import numpy as np
import pytest
import roman_datamodels.datamodels as rdm
from astropy import coordinates as coord
from astropy import units as u
from astropy.modeling import models
from gwcs import coordinate_frames as cf
from gwcs import wcs as gwcs_wcs

from romosaic.errors import RomosaicInputError
from romosaic.flux import resolve_conversion_factor
from romosaic.image_inverse import image_inverse
from romosaic.pipeline import MosaicPipeline
from romosaic.simulate import make_image_models
from romosaic.simulate.writer import write_association

from .test_pipeline import _star_fluxes_njy

NO_CATALOG = {"source_catalog": {"skip": True}}
SKY_DN_S = 0.8


def _simulated(n_exposures=3, size=256, n_stars=300):
    return make_image_models(n_exposures=n_exposures, size=size, seed=21, noise=False,
                             cosmic_ray_rate=0.0, sky_levels=[SKY_DN_S] * n_exposures,
                             distortion=True, n_hot_pixels=0, n_stars=n_stars)


def _tangent_plane(ra, dec, ra0, dec0):
    ra, dec, ra0, dec0 = (np.radians(v) for v in (ra, dec, ra0, dec0))
    cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cos_c
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cos_c
    return np.degrees(xi), np.degrees(eta)


def polynomial_tan_wcs(wcs, shape, degree=4):
    """``wcs`` rebuilt as the simulator builds one: polynomial then TAN, with no inverse.

    The polynomials are fitted to ``wcs``'s own tangent-plane coordinates
    about the image centre, so the two agree to far below a pixel.
    """
    ny, nx = shape
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    ra0, dec0 = (float(v) for v in wcs(cx, cy, with_bounding_box=False))
    x, y = (a.ravel() for a in np.meshgrid(np.linspace(-0.5, nx - 0.5, 30),
                                           np.linspace(-0.5, ny - 0.5, 30)))
    xi, eta = _tangent_plane(*wcs(x, y, with_bounding_box=False), ra0, dec0)
    powers = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]
    design = np.column_stack([(x - cx) ** i * (y - cy) ** j for i, j in powers])
    polynomials = []
    for target in (xi, eta):
        coefficients = np.linalg.lstsq(design, target, rcond=None)[0]
        polynomials.append(models.Polynomial2D(
            degree, **{f"c{i}_{j}": c for (i, j), c in zip(powers, coefficients, strict=True)}))
    transform = ((models.Shift(-cx) & models.Shift(-cy)) | models.Mapping((0, 1, 0, 1))
                 | (polynomials[0] & polynomials[1]) | models.Pix2Sky_TAN()
                 | models.RotateNative2Celestial(ra0, dec0, 180.0))
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    result = gwcs_wcs.WCS([(detector, transform), (world, None)])
    result.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return result


def _write(models_, directory):
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for model in models_:
        model.save(directory / model.meta.filename)
        names.append(str(model.meta.filename))
    asn = directory / "p_asn.json"
    write_association(asn, "p", names)
    return asn


def _check_star_fluxes(mosaic, sources, conversion):
    measured, truth = _star_fluxes_njy(mosaic, sources, SKY_DN_S * conversion)
    assert len(measured) >= 10
    ratio = measured / truth
    # As for the reference-format images (tests/test_pipeline.py): within 0.5%.
    assert np.all(np.abs(ratio - 1) < 0.005), ratio


def test_simulator_like_images_make_a_mosaic(tmp_path, caplog):
    # Before romosaic accepted them: "WCS is not invertible ('Pix2Sky_Gnomonic'
    # object has no attribute '__name__')", then the var_rnoise and the
    # negative-conversion errors.
    images, sources, table, _ = _simulated()
    conversion = float(table["conversion_megajanskys"][0])
    for model in images:
        shape = model.data.shape
        true_wcs = model.meta.wcs
        model.meta.wcs = polynomial_tan_wcs(true_wcs, shape)
        x, y = np.meshgrid(np.linspace(0, shape[1] - 1, 9), np.linspace(0, shape[0] - 1, 9))
        ra, dec = model.meta.wcs(x, y)
        back = true_wcs.invert(ra, dec, with_bounding_box=False)
        assert np.hypot(back[0] - x, back[1] - y).max() < 1e-3
        with pytest.raises(AttributeError, match="__name__"):
            model.meta.wcs.invert(ra, dec)
        del model.var_rnoise
        model.meta.photometry.conversion_megajanskys *= -1
        model.meta.photometry.pixel_area = -abs(model.meta.photometry.pixel_area)
    asn = _write(images, tmp_path / "sim")
    with caplog.at_level(logging.WARNING):
        mosaic, _, _ = MosaicPipeline.call(str(asn), steps=NO_CATALOG)
    for model in images:
        assert any(str(model.meta.filename) in r.message and "both negative" in r.message
                   for r in caplog.records)
    assert float(np.nanmedian(mosaic.data)) > 0
    # The read noise derived from err: the mosaic's err is not just the Poisson part.
    assert float(np.nanmedian(mosaic.var_rnoise)) > 0
    _check_star_fluxes(mosaic, sources, conversion)


def _fake_data_copies(images):
    """The simulated images as models made by roman_datamodels' own fake-data helper."""
    copies = []
    for model in images:
        fake = rdm.ImageModel.create_fake_data(shape=model.data.shape)
        for name in ("data", "dq", "err", "var_poisson", "var_rnoise"):
            setattr(fake, name, getattr(model, name))
        fake.meta.wcs = model.meta.wcs
        fake.meta.filename = model.meta.filename
        fake.meta.instrument.optical_element = model.meta.instrument.optical_element
        fake.meta.photometry.conversion_megajanskys = (
            model.meta.photometry.conversion_megajanskys)
        fake.meta.photometry.pixel_area = model.meta.photometry.pixel_area
        fake.meta.observation.observation_id = model.meta.observation.observation_id
        copies.append(fake)
    return copies


def test_fake_data_exposure_time_is_not_refused(tmp_path, caplog):
    # Before: every run stopped at "exposure time -999999.0 is not a positive number".
    images, sources, table, _ = _simulated()
    conversion = float(table["conversion_megajanskys"][0])
    fakes = _fake_data_copies(images)
    assert all(f.meta.exposure.exposure_time == -999999 for f in fakes)
    asn = _write(fakes, tmp_path / "fake")
    with caplog.at_level(logging.WARNING):
        mosaic, _, _ = MosaicPipeline.call(str(asn), steps=NO_CATALOG)
    _check_star_fluxes(mosaic, sources, conversion)
    # A made-up time is left out of the exposure-time map, with a warning per file.
    assert mosaic.meta.coadd_info.exposure_time == 0.0
    assert mosaic.meta.coadd_info.max_exposure_time == 0.0
    for fake in fakes:
        assert sum(str(fake.meta.filename) in r.message and "exposure-time map" in r.message
                   for r in caplog.records) == 1
    # Where the time is used, a one-line error naming the file.
    with pytest.raises(RomosaicInputError, match=r"_cal\.asdf: weight_type 'exptime' needs a "
                                                 r"positive exposure time"):
        MosaicPipeline.call(str(asn), steps={**NO_CATALOG, "resample": {"weight_type": "exptime"}})


def test_exposure_time_map_leaves_out_made_up_times():
    from romosaic.resample import exposure_time_map
    context = np.array([[[1, 2, 3, 0]]], np.uint32)
    assert exposure_time_map(context, [50.0, -999999.0]).tolist() == [[50.0, 0.0, 50.0, 0.0]]


@pytest.mark.parametrize("factor, area, wcs_area, expected, problem", [
    (-0.75, -2.8e-13, 2.8e-13, 0.75, None),
    (-0.75, -2.8e-13, None, 0.75, None),
    (-0.75, 2.8e-13, 2.8e-13, None, "invalid photometric conversion -0.75"),
    (-0.75, None, 2.8e-13, None, "invalid photometric conversion -0.75"),
    (-0.75, -1.0e-13, 2.8e-13, None, "is not the WCS's"),
    (-999999.0, -999999.0, 2.8e-13, None, "is not the WCS's"),
    (0.75, -2.8e-13, 2.8e-13, 0.75, None),
])
def test_conversion_sign_flipped_with_the_pixel_area(factor, area, wcs_area, expected, problem):
    value, why, warning = resolve_conversion_factor(factor, area, wcs_area)
    assert value == expected
    assert (why is None) == (problem is None)
    if problem:
        assert problem in why
    assert (warning is not None) == (expected is not None and factor < 0)


def test_image_inverse_fitted_when_the_wcs_has_none_or_a_wrong_one():
    images, *_ = _simulated(n_exposures=1, size=128, n_stars=40)
    true_wcs = images[0].meta.wcs
    shape = images[0].data.shape
    wrong = polynomial_tan_wcs(true_wcs, shape)
    x, y = np.meshgrid(np.linspace(-0.5, 127.5, 17), np.linspace(-0.5, 127.5, 17))
    for wcs in (wrong, true_wcs):
        inverse = image_inverse(wcs, shape, "x_cal.asdf")
        xb, yb = inverse(*wcs(x, y, with_bounding_box=False))
        assert np.hypot(xb - x, yb - y).max() < 1e-3


def test_image_inverse_refuses_a_wcs_it_cannot_invert():
    # A forward transform folding the image onto itself has no inverse at all.
    fold = (models.Shift(-64) & models.Shift(0)) | models.Mapping((0, 1, 0, 1)) | (
        models.Polynomial2D(2, c2_0=1.0 / 3600 * 0.11 / 64) & models.Polynomial2D(
            1, c0_1=0.11 / 3600))
    transform = fold | models.Pix2Sky_TAN() | models.RotateNative2Celestial(80, -30, 180)
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    wcs = gwcs_wcs.WCS([(detector, transform), (world, None)])
    with pytest.raises(RomosaicInputError, match=r"^fold_cal\.asdf: WCS cannot be inverted"):
        image_inverse(wcs, (128, 128), "fold_cal.asdf")
    assert math.isfinite(float(wcs(0.0, 0.0)[0]))


def test_skytopix_on_a_wcs_without_an_inverse():
    from romosaic.transforms import pixtosky, skytopix

    images, *_ = _simulated(n_exposures=1, size=128, n_stars=40)
    wcs = polynomial_tan_wcs(images[0].meta.wcs, images[0].data.shape)
    with pytest.raises(Exception, match="__name__|inverse"):
        wcs.invert(10.0, 20.0)  # gwcs alone cannot do it
    x, y = np.meshgrid(np.linspace(0, 127, 9), np.linspace(0, 127, 9))
    xb, yb = skytopix(wcs, *pixtosky(wcs, x, y))
    assert np.hypot(xb - x, yb - y).max() < 1e-4


def test_alignment_maps_sky_to_pixels_on_a_wcs_without_an_inverse():
    from romosaic.align.corrector import SkyTangentCorrector

    images, *_ = _simulated(n_exposures=1, size=128, n_stars=40)
    wcs = polynomial_tan_wcs(images[0].meta.wcs, images[0].data.shape)
    ra0, dec0 = (float(v) for v in wcs(63.5, 63.5))
    corrector = SkyTangentCorrector(wcs, ra0, dec0, shape=(128, 128))
    x, y = np.meshgrid(np.linspace(0, 127, 7), np.linspace(0, 127, 7))
    xb, yb = corrector.world_to_det(*corrector.det_to_world(x, y))
    assert np.hypot(xb - x, yb - y).max() < 1e-4
