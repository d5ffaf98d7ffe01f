"""The resampling algorithm on arrays: weights, variances, context, flux, grids."""

import math

import numpy as np
import pytest
from astropy import coordinates as coord
from astropy import units as u
from astropy.modeling import models
from gwcs import coordinate_frames as cf
from gwcs import wcs as gwcs_wcs
from scipy.special import erf

from romosaic.dq import bad_flags_mask, good_pixel_mask
from romosaic.errors import RomosaicInputError
from romosaic.resample import (
    DrizzleCoadd,
    OutputGrid,
    ResampleInput,
    build_mosaic_model,
    compute_pixmap,
    drizzle_images,
    exposure_time_map,
    free_grid,
    pixel_weights,
)
from romosaic.resample.mosaic_model import summarize_input
from romosaic.wcs_utils import (
    affine_tan_wcs,
    cd_from_orientation,
    footprint,
    local_cd_matrix,
    orientation_and_parity,
    pixel_scale_arcsec,
)

from .conftest import make_image_model

SCALE = 0.11 / 3600.0


def _tan(shape, *, crval=(150.0, 2.0), crpix=None, orientation=0.0, scale=SCALE):
    ny, nx = shape
    crpix = crpix if crpix is not None else ((nx - 1) / 2, (ny - 1) / 2)
    return affine_tan_wcs(crval=crval, crpix=crpix, cd=cd_from_orientation(scale, orientation),
                          shape=shape)


def _grid_like(wcs, shape):
    return OutputGrid(wcs=wcs, shape=shape, crval=(150.0, 2.0),
                      crpix=((shape[1] - 1) / 2, (shape[0] - 1) / 2), pixel_scale=0.11)


def _input(data, wcs, *, var_rnoise, var_poisson=None, dq=None, exptime=100.0, name="x"):
    data = np.asarray(data, np.float32)
    variances = {"var_rnoise": np.broadcast_to(np.float32(var_rnoise), data.shape).copy()}
    if var_poisson is not None:
        variances["var_poisson"] = np.broadcast_to(np.float32(var_poisson), data.shape).copy()
    return ResampleInput(name=name, data=data,
                         dq=np.zeros(data.shape, np.uint32) if dq is None else dq,
                         wcs=wcs, exptime=exptime, variances=variances)


# -- variance propagation: a case worked by hand ------------------------------


def test_variance_and_mean_match_hand_worked_case():
    # Two exposures on the same grid. ivm weights w = 1/var_rnoise = 1/4 and 1/1.
    #   data  = (0.25*2 + 1*7) / 1.25                        = 6.0
    #   var_rnoise  = (0.25**2*4 + 1**2*1) / 1.25**2          = 0.8
    #   var_poisson = (0.25**2*3 + 1**2*5) / 1.25**2          = 3.32
    #   err = sqrt(0.8 + 3.32)
    shape = (20, 20)
    wcs = _tan(shape)
    grid = _grid_like(wcs, shape)
    inputs = [
        _input(np.full(shape, 2.0), wcs, var_rnoise=4.0, var_poisson=3.0, name="a"),
        _input(np.full(shape, 7.0), wcs, var_rnoise=1.0, var_poisson=5.0, name="b"),
    ]
    result, _ = drizzle_images(iter(inputs), grid, 2, pixmap_stepsize=1)
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(result.data[inner], 6.0, rtol=1e-6)
    np.testing.assert_allclose(result.variances["var_rnoise"][inner], 0.8, rtol=1e-5)
    np.testing.assert_allclose(result.variances["var_poisson"][inner], 3.32, rtol=1e-5)
    np.testing.assert_allclose(result.weight[inner], 1.25, rtol=1e-6)

    summaries = [summarize_input(make_image_model(filename=n, observation_id=n)) for n in "ab"]
    mosaic = build_mosaic_model(
        result, grid, summaries, association_name="hand", pixfrac=1.0, weight_type="ivm",
        good_bits="~DO_NOT_USE", pixmap_stepsize=1, input_pixel_scale=0.11)
    np.testing.assert_allclose(mosaic.err[inner], math.sqrt(0.8 + 3.32), rtol=1e-5)
    assert mosaic.meta.resample.pointings == 2
    # err, the exposure-time summary and the statistics made at once: the same.
    threaded = build_mosaic_model(
        result, grid, summaries, association_name="hand", pixfrac=1.0, weight_type="ivm",
        good_bits="~DO_NOT_USE", pixmap_stepsize=1, input_pixel_scale=0.11, threads=3)
    np.testing.assert_array_equal(threaded.err, mosaic.err)
    assert dict(threaded.meta.coadd_info) == dict(mosaic.meta.coadd_info)
    assert dict(threaded.meta.statistics) == dict(mosaic.meta.statistics)
    assert mosaic.meta.coadd_info.max_exposure_time > 0


def test_exptime_weighting_gives_exposure_weighted_mean():
    shape = (12, 12)
    wcs = _tan(shape)
    inputs = [
        _input(np.full(shape, 1.0), wcs, var_rnoise=1.0, exptime=100.0),
        _input(np.full(shape, 4.0), wcs, var_rnoise=1.0, exptime=300.0),
    ]
    result, _ = drizzle_images(iter(inputs), _grid_like(wcs, shape), 2, weight_type="exptime",
                               pixmap_stepsize=1)
    np.testing.assert_allclose(result.data[3:-3, 3:-3], (100 * 1 + 300 * 4) / 400, rtol=1e-6)


def test_weights_exclude_flagged_nan_and_zero_variance():
    data = np.array([1.0, np.nan, 1.0, 1.0, 1.0])
    good = np.array([True, True, False, True, True])
    var = np.array([2.0, 2.0, 2.0, 0.0, np.inf])
    w = pixel_weights("ivm", data=data, good=good, var_rnoise=var)
    assert w.tolist() == [0.5, 0.0, 0.0, 0.0, 0.0]
    sky = pixel_weights("ivm-sky", data=np.ones(3), good=np.ones(3, bool),
                        var_rnoise=np.full(3, 1.0), var_poisson=np.array([1.0, 1.0, 9.0]))
    np.testing.assert_allclose(sky, 0.5)  # 1 / (1 + median Poisson variance 1)
    with pytest.raises(RomosaicInputError, match="weight_type"):
        pixel_weights("bogus", data=data, good=good, var_rnoise=var)


def test_good_bits_follow_reference_semantics():
    dq = np.array([0, 1, 512, 2048, 2048 | 1], np.uint32)
    assert good_pixel_mask(dq, "~DO_NOT_USE+NON_SCIENCE").tolist() == [
        True, False, False, True, False]
    assert good_pixel_mask(dq, 0).tolist() == [True, False, False, False, False]
    assert good_pixel_mask(dq, "HOT").tolist() == [True, False, False, True, False]
    assert bad_flags_mask(None) == 0xFFFFFFFF
    with pytest.raises(RomosaicInputError, match="good_bits"):
        bad_flags_mask("NOT_A_FLAG")


# -- context ---------------------------------------------------------------------


def test_context_marks_exactly_the_contributing_inputs_beyond_32():
    n_inputs, width, overlap = 40, 8, 3
    shape = (6, n_inputs * width + overlap)
    wcs = _tan(shape)
    good_sets = [set() for _ in range(shape[1])]
    inputs = []
    for index in range(n_inputs):
        # Input i is good in its own block of columns plus the first `overlap`
        # columns of the next block, so those columns have two contributors,
        # sometimes in different context planes (31 and 32).
        dq = np.ones(shape, np.uint32)
        columns = range(index * width, (index + 1) * width + overlap)
        dq[:, list(columns)] = 0
        for column in columns:
            good_sets[column].add(index)
        inputs.append(_input(np.full(shape, float(index)), wcs, var_rnoise=1.0, dq=dq))
    result, _ = drizzle_images(iter(inputs), _grid_like(wcs, shape), n_inputs,
                               pixmap_stepsize=1)
    assert result.context.dtype == np.uint32
    assert result.context.shape == (2, *shape)
    checked = 0
    for column in range(1, shape[1] - 1):
        # A drizzle drop on a block edge may touch its neighbour column by a
        # rounding error's width; judge columns away from edges.
        if not good_sets[column - 1] == good_sets[column] == good_sets[column + 1]:
            continue
        bits = result.context[:, 3, column]
        found = {32 * plane + bit for plane in range(2) for bit in range(32)
                 if int(bits[plane]) >> bit & 1}
        assert found == good_sets[column], column
        checked += 1
    assert checked > 150
    assert {31, 32} in [good_sets[c] for c in range(shape[1])]
    exptime = exposure_time_map(result.context, result.exptimes)
    assert exptime[3, 35 * width + 5] == 100.0
    assert exptime[3, 35 * width + 1] == 200.0


# -- flux conservation -------------------------------------------------------------


def _gaussian_star(shape, x0, y0, sigma, total):
    """Pixel-integrated Gaussian: the sum over pixels equals ``total``."""
    ny, nx = shape
    xe = np.arange(nx + 1) - 0.5
    ye = np.arange(ny + 1) - 0.5
    fx = np.diff(0.5 * (1 + erf((xe - x0) / (sigma * math.sqrt(2)))))
    fy = np.diff(0.5 * (1 + erf((ye - y0) / (sigma * math.sqrt(2)))))
    return total * np.outer(fy, fx)


@pytest.mark.parametrize("pixfrac", [1.0, 0.7])
@pytest.mark.parametrize("scale_ratio", [1.0, 0.5])
def test_flux_and_surface_brightness_conserved(pixfrac, scale_ratio):
    shape = (80, 80)
    wcs = _tan(shape, orientation=23.0)
    # Surface brightness: flux per pixel over the pixel's solid angle.
    pixel_sr = (SCALE * math.pi / 180) ** 2
    star_flux = 5e-11  # MJy
    sky_sb = 0.3  # MJy/sr
    star_sb = _gaussian_star(shape, 40.3, 38.6, 1.2, star_flux) / pixel_sr
    inputs = [_input(star_sb + sky_sb, wcs, var_rnoise=1.0)]
    geometry = [(wcs, shape)]
    grid = free_grid(geometry, pixel_scale_ratio=scale_ratio, rotation=0.0)
    result, _ = drizzle_images(iter(inputs), grid, 1, pixfrac=pixfrac)
    out_pixel_sr = (grid.pixel_scale / 3600 * math.pi / 180) ** 2

    covered = result.weight > 0
    # Surface brightness is preserved: the sky reads the same in and out.
    interior = np.abs(result.data - sky_sb) < 1e-3
    assert interior.sum() > 0.3 * covered.sum()
    np.testing.assert_allclose(np.median(result.data[interior]), sky_sb, rtol=1e-5)
    # Flux is conserved: star flux = sum of (SB - sky) x pixel solid angle.
    star_out = np.nansum(result.data[covered] - sky_sb) * out_pixel_sr
    assert star_out == pytest.approx(star_flux, rel=2e-3)


# -- pixel maps and grids -------------------------------------------------------


def _distorted_wcs(shape, crval=(150.0, 2.0)):
    ny, nx = shape
    # A few pixels of quadratic distortion at the corners, like a wide-field camera.
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    c = 3.0 / (cx * cx)
    dist_x = models.Polynomial2D(2, c0_0=0, c1_0=1.0, c2_0=c, c0_2=c * 0.5)
    dist_y = models.Polynomial2D(2, c0_0=0, c0_1=1.0, c1_1=c * 0.7, c0_2=c * 0.3)
    shift = models.Shift(-cx) & models.Shift(-cy)
    distortion = shift | models.Mapping((0, 1, 0, 1)) | dist_x & dist_y
    sky = (models.AffineTransformation2D(matrix=cd_from_orientation(SCALE, 12.0))
           | models.Pix2Sky_TAN() | models.RotateNative2Celestial(*crval, 180.0))
    detector = cf.Frame2D(name="detector", axes_order=(0, 1))
    world = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    return gwcs_wcs.WCS([(detector, distortion | sky), (world, None)])


def test_sparse_pixmap_matches_exact_evaluation_with_distortion():
    shape = (512, 512)
    wcs = _distorted_wcs(shape)
    grid = free_grid([(wcs, shape)], rotation=0.0)
    exact = compute_pixmap(wcs, grid.wcs, shape, stepsize=1)
    sparse = compute_pixmap(wcs, grid.wcs, shape, stepsize=10)
    error = np.abs(sparse - exact).max()
    assert error < 1e-4, error
    # The distortion is real: the map differs from an affine one by pixels.
    assert np.ptp(exact[..., 0] - exact[0, 0, 0] - np.arange(512)[None, :] *
                  (exact[0, 1, 0] - exact[0, 0, 0])) > 1.0


def test_free_grid_covers_every_input_and_honours_rotation_and_scale():
    shape = (100, 150)
    inputs = [
        (_tan(shape, crval=(150.0, 2.0), orientation=30.0), shape),
        (_tan(shape, crval=(150.004, 2.003), orientation=31.0), shape),
    ]
    grid = free_grid(inputs, pixel_scale=0.05, rotation=0.0)
    ny, nx = grid.shape
    for wcs, input_shape in inputs:
        ra, dec = footprint(wcs, input_shape)
        x, y = grid.wcs.invert(ra, dec, with_bounding_box=False)
        assert np.all(x >= -0.5 - 1e-6) and np.all(x <= nx - 0.5 + 1e-6)
        assert np.all(y >= -0.5 - 1e-6) and np.all(y <= ny - 0.5 + 1e-6)
    cd = local_cd_matrix(grid.wcs, nx / 2, ny / 2)
    orientation, parity = orientation_and_parity(cd)
    assert orientation == pytest.approx(0.0, abs=1e-6)
    assert parity == -1
    assert pixel_scale_arcsec(cd) == pytest.approx(0.05, rel=1e-6)

    # Default orientation follows the first input.
    grid = free_grid(inputs)
    orientation, _ = orientation_and_parity(local_cd_matrix(grid.wcs, 0, 0))
    assert orientation == pytest.approx(30.0, abs=0.01)


def test_free_grid_rejects_nonsense_scales():
    shape = (10, 10)
    with pytest.raises(RomosaicInputError, match="pixel_scale"):
        free_grid([(_tan(shape), shape)], pixel_scale=-1.0)
    with pytest.raises(RomosaicInputError, match="too large"):
        free_grid([(_tan(shape), shape)], pixel_scale=1e-7)


def test_coadd_refuses_more_inputs_than_sized_for():
    y, x = np.indices((3, 3), dtype=float)
    coadd = DrizzleCoadd((3, 3), 1)
    coadd.add(np.ones((3, 3)), np.dstack([x, y]), weight=np.ones((3, 3)), exptime=1.0)
    with pytest.raises(ValueError, match="sized for 1"):
        coadd.add(np.ones((3, 3)), np.dstack([x, y]), weight=np.ones((3, 3)), exptime=1.0)


def test_world_to_pixel_is_the_wcs_inverse_composed_once_per_wcs(monkeypatch):
    import gwcs.wcs
    from astropy.modeling import models

    from romosaic.simulate.wcs import build_gwcs, plan_layout
    from romosaic.wcs_utils import world_to_pixel

    placement = plan_layout(np.random.default_rng(3), ra=80.0, dec=-30.0, n_exposures=1,
                            n_detectors=1, size=64, distortion=True)[0]
    wcs = build_gwcs(placement)
    x, y = np.meshgrid(np.linspace(-10, 74, 15), np.linspace(-10, 74, 15))
    ra, dec = wcs(x, y, with_bounding_box=False)
    expected = wcs.invert(ra, dec, with_bounding_box=False)

    composed = []
    real = gwcs.wcs.WCS.backward_transform

    def counting(self):
        composed.append(self)
        return real.fget(self)

    monkeypatch.setattr(gwcs.wcs.WCS, "backward_transform", property(counting))
    for _ in range(3):
        got = world_to_pixel(wcs, ra, dec)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    assert len(composed) == 1

    # A WCS whose pipeline changes (as an alignment correction does) is composed again.
    wcs.insert_transform(wcs.input_frame, models.Shift(1.0) & models.Shift(-2.0), after=True)
    moved = world_to_pixel(wcs, ra, dec)
    assert len(composed) == 2
    np.testing.assert_allclose(moved[0], expected[0] - 1.0, atol=1e-6)
    np.testing.assert_allclose(moved[1], expected[1] + 2.0, atol=1e-6)


@pytest.mark.parametrize("weight_type", ["ivm", "ivm-sky"])
def test_compiled_smoothed_weights_equal_their_numpy_form(weight_type):
    from romosaic.resample import _kernels
    from romosaic.resample import weights as weights_module

    rng = np.random.default_rng(8)
    shape = (301, 257)  # partial blocks, and a band of rows left over
    data = rng.normal(size=shape).astype(np.float32)
    data[rng.random(shape) < 0.01] = np.nan
    good = rng.random(shape) > 0.05
    variance = rng.lognormal(0, 0.3, shape).astype(np.float32)
    variance[rng.random(shape) < 0.01] = 0.0
    variance[:40, :40] = np.nan  # a block with no usable variance
    var_poisson = (rng.random(shape) + 0.5).astype(np.float32)
    weights = weights_module.pixel_weights(weight_type, data=data, good=good,
                                           var_rnoise=variance, var_poisson=var_poisson)

    along, first, frac = weights_module._smoothing(
        variance, lambda r0, r1: good[r0:r1] & np.isfinite(data[r0:r1]))
    smoothed = (along[first] * (1 - frac)[:, None]
                + along[first + 1] * frac[:, None]).astype(np.float32)
    if weight_type == "ivm-sky":
        usable = good & np.isfinite(data)
        smoothed = smoothed + np.float32(np.median(var_poisson[usable]))
    usable = good & np.isfinite(data) & np.isfinite(smoothed) & (smoothed > 0)
    expected = np.zeros(shape, np.float32)
    np.divide(np.float32(1.0), smoothed, out=expected, where=usable)
    np.testing.assert_array_equal(weights.view(np.uint32), expected.view(np.uint32))
    # Pixels without a variance of their own take their block's fill.
    inside = good[:40, :40] & np.isfinite(data[:40, :40])
    assert inside.any() and (weights[:40, :40][inside] > 0).all()

    out = np.empty((4, shape[1]), np.float32)
    with pytest.raises(ValueError, match="give both or neither"):
        _kernels.smoothed_rows(along, first, frac, 0, out, data=data[:4])
    with pytest.raises(TypeError, match="wrong element type"):
        _kernels.smoothed_rows(along, first, frac, 0, out, data=data[:4],
                               good=good[:4].astype(np.uint8))
    with pytest.raises(ValueError, match="rows beyond the image"):
        _kernels.smoothed_rows(along, first, frac, shape[0] - 2, out)
