"""Outlier detection: cosmic rays flagged, bright stars kept, on_disk, options."""

import warnings

import numpy as np
import pytest
from roman_datamodels.dqflags import pixel

from romosaic.errors import RomosaicInputError
from romosaic.library import ModelLibrary
from romosaic.outlier import nanmedian_stack, outlier_mask
from romosaic.simulate import make_image_models, simulate_association
from romosaic.simulate.checks import aperture_sum, cosmic_ray_recovery
from romosaic.steps import FluxStep, OutlierDetectionStep, ResampleStep, SkyMatchStep

OUTLIER = int(pixel.OUTLIER)


def _prepared(models):
    """Flux-converted, sky-matched library of in-memory models."""
    return SkyMatchStep.call(FluxStep.call(ModelLibrary(models)))


@pytest.mark.parametrize("n_exposures", [4, 8])
def test_cosmic_rays_are_flagged_and_absent_from_the_coadd(n_exposures):
    size = 384
    models, _, _, cosmic_rays = make_image_models(
        n_exposures=n_exposures, n_detectors=2, size=size, seed=11, cosmic_ray_rate=3e-4)
    library = OutlierDetectionStep.call(_prepared(models))
    flagged, eligible = cosmic_ray_recovery(library, cosmic_rays)
    assert eligible > 500
    assert flagged / eligible >= 0.995, (flagged, eligible)
    # Flagged pixels carry DO_NOT_USE too, so resample leaves them out: the
    # coadd holds no pixel far above its neighbours at a cosmic ray's place.
    with library:
        model = library.borrow(0)
        assert np.all((model.dq[model.dq & OUTLIER > 0] & pixel.DO_NOT_USE) > 0)
        assert model.meta.cal_step.outlier_detection == "COMPLETE"
        library.shelve(model, 0, modify=False)
    mosaic = ResampleStep.call(library)
    hits = cosmic_rays[cosmic_rays["value_dn_s"] > 5.0]
    first = hits[hits["filename"] == hits["filename"][0]]
    wcs = next(model.meta.wcs for _, model in library.iter_models()
               if model.meta.filename == first["filename"][0])
    sky_median = np.nanmedian(mosaic.data)
    sky_spread = np.nanpercentile(mosaic.data, 84) - sky_median
    sky = wcs(np.asarray(first["x"], float), np.asarray(first["y"], float))
    x, y = mosaic.meta.wcs.invert(*sky)
    values = mosaic.data[np.rint(y).astype(int), np.rint(x).astype(int)]
    # Some hits land on sources; most must read as ordinary sky.
    assert np.mean(values < sky_median + 5 * sky_spread) > 0.9


@pytest.mark.parametrize("n_exposures", [4, 8])
def test_bright_stars_keep_their_flux(n_exposures):
    # No cosmic rays: any flux change is outlier detection clipping a star.
    models, sources, _, _ = make_image_models(
        n_exposures=n_exposures, n_detectors=2, size=512, seed=5, cosmic_ray_rate=0.0,
        n_stars=400)
    library = _prepared(models)
    without = ResampleStep.call(library)
    library = OutlierDetectionStep.call(library)
    with_detection = ResampleStep.call(library)
    stars = sources[sources["kind"] == "star"]
    brightest = stars[np.argsort(stars["mag_ab"])][: len(stars) // 10]
    ratios = []
    for star in brightest:
        a = aperture_sum(with_detection, star["ra"], star["dec"])
        b = aperture_sum(without, star["ra"], star["dec"])
        if np.isfinite(a) and np.isfinite(b) and b > 0:
            ratios.append(a / b)
    ratios = np.array(ratios)
    assert len(ratios) >= 30
    kept = np.mean(np.abs(ratios - 1) < 0.01)
    assert kept >= 0.99, (kept, np.sort(np.abs(ratios - 1))[-5:])


def test_on_disk_flags_equal_in_memory_and_persist(tmp_path):
    sim = simulate_association(tmp_path / "data", n_exposures=3, size=192, seed=2,
                               cosmic_ray_rate=5e-4)
    flags = {}
    for on_disk in (False, True):
        library = ModelLibrary(sim.asn_path, on_disk=on_disk, temp_directory=tmp_path)
        library = OutlierDetectionStep.call(SkyMatchStep.call(FluxStep.call(library)))
        flags[on_disk] = [model.dq.copy() for _, model in library.iter_models()]
        library.close()
    assert sum(int((f & OUTLIER).astype(bool).sum()) for f in flags[False]) > 20
    for a, b in zip(flags[False], flags[True], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob("romosaic-*"))


@pytest.mark.parametrize("on_disk", [False, True])
def test_two_workers_flag_exactly_what_one_does(tmp_path, on_disk):
    sim = simulate_association(tmp_path / "data", n_exposures=3, n_detectors=2, size=160,
                               seed=6, cosmic_ray_rate=5e-4)
    flags = {}
    for workers in (1, 2):
        library = ModelLibrary(sim.asn_path, on_disk=on_disk, temp_directory=tmp_path)
        library = OutlierDetectionStep.call(SkyMatchStep.call(FluxStep.call(library)),
                                            workers=workers, memory_budget=1.0)
        flags[workers] = [model.dq.copy() for _, model in library.iter_models()]
        library.close()
    assert sum(int((f & OUTLIER).astype(bool).sum()) for f in flags[1]) > 20
    for one, two in zip(flags[1], flags[2], strict=True):
        np.testing.assert_array_equal(one, two)
    assert not list(tmp_path.glob("*romosaic-tmp*"))


def test_single_exposure_group_is_skipped(caplog):
    models, _, _, _ = make_image_models(n_exposures=1, n_detectors=2, size=96, seed=1)
    library = OutlierDetectionStep.call(FluxStep.call(ModelLibrary(models)))
    assert "at least two exposure groups" in caplog.text
    with library:
        for i in range(len(library)):
            model = library.borrow(i)
            assert model.meta.cal_step.outlier_detection == "SKIPPED"
            assert not np.any(model.dq & OUTLIER)
            library.shelve(model, i, modify=False)


def test_raw_comparison_without_resampling():
    # Three exposures on one pixel grid (no dithers): resample_data=false.
    rng = np.random.default_rng(4)
    models, _, _, _ = make_image_models(n_exposures=1, size=64, seed=3, cosmic_ray_rate=0.0)
    base = models[0]
    copies = []
    for index in range(3):
        model = base.copy()
        model.data = (base.data + rng.normal(0, 0.01, base.data.shape)).astype(np.float32)
        model.meta.observation.observation_id = f"same{index}"
        model.meta.filename = f"same{index}_cal.asdf"
        copies.append(model)
    copies[1].data[20, 30] += 50.0
    library = OutlierDetectionStep.call(FluxStep.call(ModelLibrary(copies)), resample_data=False)
    flagged = [np.argwhere(model.dq & OUTLIER) for _, model in library.iter_models()]
    assert [len(f) for f in flagged] == [0, 1, 0]
    assert flagged[1].tolist() == [[20, 30]]


def test_intermediate_results_and_bad_parameters(tmp_path):
    sim = simulate_association(tmp_path, n_exposures=2, size=96, seed=9)
    OutlierDetectionStep.call(FluxStep.call(ModelLibrary(sim.asn_path)),
                              save_intermediate_results=True, output_dir=str(tmp_path / "out"))
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert any(name.endswith("_median.asdf") for name in saved)
    assert sum(name.endswith("_blot.asdf") for name in saved) == 2
    with pytest.raises(RomosaicInputError, match="snr must be two numbers"):
        OutlierDetectionStep.call(ModelLibrary(sim.asn_path), snr="5.0")


def test_median_kernel_matches_numpy():
    rng = np.random.default_rng(0)
    # 41 x 29 pixels: blocks of 256 and vectors of 4 with a tail; above 32
    # frames each pixel is sorted on its own.
    for n in [*range(1, 12), 32, 33, 70]:
        stack = rng.normal(size=(n, 41, 29)).astype(np.float32)
        stack[rng.random(stack.shape) < 0.25] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
            expected = np.nanmedian(stack, axis=0)
        np.testing.assert_allclose(nanmedian_stack(stack), expected, equal_nan=True)
        # Frames given one by one, where they lie, into a given output.
        out = np.empty((41, 29), np.float32)
        assert nanmedian_stack(list(stack), out=out) is out
        np.testing.assert_array_equal(out, nanmedian_stack(stack))
    assert np.isnan(nanmedian_stack(np.empty((0, 3, 2), np.float32))).all()
    with pytest.raises(ValueError, match="frame 1 has"):
        nanmedian_stack([np.zeros(4, np.float32), np.zeros(5, np.float32)])
    with pytest.raises(TypeError, match="out: expected a C-contiguous array of float32"):
        nanmedian_stack(np.zeros((2, 4), np.float32), out=np.zeros(4))


def test_outlier_mask_tests_and_growth():
    data = np.zeros((7, 7), np.float32)
    blot = np.zeros((7, 7), np.float32)
    noise = np.ones((7, 7), np.float32)
    data[3, 3] = 10.0  # above both thresholds
    data[3, 4] = 4.5  # only above the second, but next to a first-test pixel
    data[0, 0] = 4.5  # only above the second, alone
    mask = outlier_mask(data, blot, noise, snr=(5.0, 4.0), scale=(1.2, 0.7))
    assert np.argwhere(mask).tolist() == [[3, 3], [3, 4]]
    # A bright model raises the tolerance by model_error x its signal.
    blot[2:5, 2:5] = 20.0
    data[2:5, 2:5] = 20.0 + 0.5 * 20.0
    assert not outlier_mask(data, blot, noise, model_error=0.6)[3, 3]


# -- the tiled, sectioned kernels equal their whole-frame forms --------------


def _rotated_input(seed=0, shape=(300, 340), angle=35.0):
    """A ResampleInput on a TAN grid rotated by ``angle``, with sky, stars and holes."""
    from romosaic.resample.inputs import ResampleInput
    from romosaic.wcs_utils import affine_tan_wcs

    rng = np.random.default_rng(seed)
    scale = 0.11 / 3600
    theta = np.radians(angle)
    cd = scale * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    wcs = affine_tan_wcs(crval=(30.0, -20.0), crpix=(shape[1] / 2, shape[0] / 2), cd=cd,
                         shape=shape)
    data = rng.normal(1.0, 0.1, shape).astype(np.float32)
    y, x = np.indices(shape)
    for _ in range(20):
        cx, cy = rng.uniform(10, shape[1] - 10), rng.uniform(10, shape[0] - 10)
        data += (50 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 2.0)).astype(np.float32)
    dq = np.zeros(shape, np.uint32)
    dq[rng.random(shape) < 0.01] = pixel.DO_NOT_USE
    variances = {"var_rnoise": np.full(shape, 0.01, np.float16),
                 "var_poisson": (0.001 * np.abs(data)).astype(np.float16)}
    return ResampleInput(name="x_cal.asdf", data=data, dq=dq, wcs=wcs, exptime=100.0,
                         variances=variances)


def _window_for(image):
    from romosaic.resample import free_grid
    from romosaic.resample.engine import data_window

    grid = free_grid([(image.wcs, image.shape)], pixel_scale_ratio=0.5, rotation=0.0)
    return data_window(grid, [(image.wcs, image.shape)])


@pytest.mark.parametrize("on_disk", [False, True])
def test_group_drizzle_in_strips_equals_one_whole_window_drizzle(tmp_path, on_disk):
    from romosaic.outlier.detect import drizzle_group
    from romosaic.resample.engine import plan_strips
    from romosaic.resample.planes import PlaneStore

    images = [_rotated_input(seed) for seed in (1, 2)]
    window = _window_for(images[0])
    assert min(window.shape) > 600
    frames = {}
    for name, strips in (("strips", plan_strips(*window.shape, bytes_per_pixel=8,
                                                memory=8 * window.shape[1] * 100)),
                         ("whole", [(0, window.shape[0])])):
        store = PlaneStore(window.shape, directory=tmp_path if on_disk else None)
        drizzle_group(iter(images), window, store, name="g", n_images=2, strips=strips)
        frames[name] = store.read("g")
        store.close()
    assert np.isfinite(frames["whole"]).mean() > 0.5
    np.testing.assert_array_equal(frames["strips"], frames["whole"])
    assert not list(tmp_path.iterdir())  # on-disk frames removed by close()


def test_blot_in_bands_and_compiled_flags_equal_whole_image_forms(monkeypatch):
    from scipy import ndimage

    from romosaic.outlier import detect
    from romosaic.resample.pixmap import PixelMapper
    from romosaic.resample.planes import PlaneStore

    image = _rotated_input(3)
    window = _window_for(image)
    rng = np.random.default_rng(4)
    median = rng.normal(1.0, 0.2, window.shape).astype(np.float32)
    median[100:140, 200:260] = np.nan
    store = PlaneStore(window.shape)
    store.new_plane("median")
    store.write("median", median)
    # Small pieces: many blot bands, some without data.
    monkeypatch.setattr(detect, "_BLOT_ROWS", 37)
    mapper = PixelMapper(image.wcs, window.grid.wcs, image.shape)
    blot = detect.blot_median(store, "median", mapper, window)
    pixmap = mapper.region()
    coordinates = np.array([pixmap[..., 1] - window.y0, pixmap[..., 0] - window.x0])
    holes = np.isnan(median)
    expected = ndimage.map_coordinates(np.where(holes, 0, median), coordinates, order=1,
                                       mode="constant", cval=np.nan, prefilter=False)
    expected[ndimage.map_coordinates(holes.astype(np.float32), coordinates, order=1,
                                     mode="constant", cval=1.0, prefilter=False) > 0] = np.nan
    assert np.isnan(blot).any() and np.isfinite(blot).mean() > 0.9
    np.testing.assert_array_equal(blot, expected.astype(np.float32))

    model = image.data - rng.normal(0, 0.05, image.shape)
    blot = np.where(np.isfinite(blot), model, blot)
    image.data = image.data.copy()
    image.data[rng.random(image.shape) < 0.002] += 40.0  # cosmic rays
    kwargs = dict(snr=(5.0, 4.0), scale=(1.2, 0.7), model_error=0.1)
    compiled = detect.masked_outliers(image, blot.astype(np.float32), **kwargs)
    whole = outlier_mask(image.data, blot.astype(np.float32), detect.image_noise(image),
                         usable=(image.dq & pixel.DO_NOT_USE) == 0, **kwargs)
    assert whole.sum() > 100
    np.testing.assert_array_equal(compiled, whole)


def test_pixel_mapper_regions_equal_the_whole_map():
    from romosaic.resample.pixmap import PixelMapper, compute_pixmap

    image = _rotated_input(5)
    window = _window_for(image)
    whole = compute_pixmap(image.wcs, window.grid.wcs, image.shape)
    mapper = PixelMapper(image.wcs, window.grid.wcs, image.shape)
    np.testing.assert_array_equal(mapper.region((17, 123), (40, 301)), whole[17:123, 40:301])
    # The input pieces for an output box hold every pixel landing in it...
    x_range, y_range = (300.0, 420.5), (250.0, 333.0)
    pieces = mapper.input_pieces_for(x_range, y_range)
    x, y = whole[..., 0], whole[..., 1]
    inside = (x >= x_range[0]) & (x <= x_range[1]) & (y >= y_range[0]) & (y <= y_range[1])
    rows, cols = np.nonzero(inside)
    assert rows.size > 1000
    covered = np.zeros(image.shape, bool)
    for (r0, r1), (c0, c1) in pieces:
        assert not covered[r0:r1].any()  # no row in two pieces...
        covered[r0:r1, c0:c1] = True
    assert covered[inside].all()
    assert [p[0] for p in pieces] == sorted(p[0] for p in pieces)  # ...in row order
    # ...with at most two node cells (10 pixels each) more each side.
    r0, r1 = pieces[0][0][0], pieces[-1][0][1]
    c0, c1 = min(p[1][0] for p in pieces), max(p[1][1] for p in pieces)
    assert r1 - r0 <= np.ptp(rows) + 1 + 2 * 21 and c1 - c0 <= np.ptp(cols) + 1 + 2 * 21
    assert mapper.input_pieces_for((1e6, 1e6 + 10), (0, 10)) == []
    # An image rotated by 35 degrees crosses a band of output rows along a
    # diagonal: the pieces hold far fewer pixels than the rectangle round them.
    band = (-1e6, 1e6), (250.0, 290.0)
    pieces = mapper.input_pieces_for(*band)
    held = sum((r1 - r0) * (c1 - c0) for (r0, r1), (c0, c1) in pieces)
    box = ((pieces[-1][0][1] - pieces[0][0][0])
           * (max(p[1][1] for p in pieces) - min(p[1][0] for p in pieces)))
    assert len(pieces) > 2 and held < 0.7 * box
    landing = (y >= band[1][0]) & (y <= band[1][1])
    covered[:] = False
    for (r0, r1), (c0, c1) in pieces:
        covered[r0:r1, c0:c1] = True
    assert covered[landing].all()


def _reference_interpolation(median, coordinates, dtype=np.float32):
    """What the compiled blot must give at ``coordinates`` (rows, columns):
    scipy's bilinear interpolation, and where that is NaN, the median with
    its holes set to zero, NaN where a hole has a non-zero weight. With
    ``dtype`` float64, the values before their rounding to float32."""
    from scipy import ndimage

    def interpolate(values, points, cval, output=dtype):
        return ndimage.map_coordinates(values, points, output=output, order=1,
                                       mode="constant", cval=cval, prefilter=False)

    values = interpolate(median, coordinates, np.nan)
    missing = np.isnan(values)
    holes = np.isnan(median)
    filled = interpolate(np.where(holes, np.float32(0), median), coordinates[:, missing], np.nan)
    filled[interpolate(holes.astype(np.float32), coordinates[:, missing], 1.0,
                       output=np.float32) > 0] = np.nan
    values[missing] = filled
    return values


@pytest.mark.parametrize("shape", [(40, 50), (1, 7), (6, 1), (2, 2)])
def test_interpolation_equals_zero_filled_map_coordinates_at_holes_edges_and_grid_points(shape):
    from types import SimpleNamespace

    from romosaic.outlier.detect import _blot_rows

    rng = np.random.default_rng(6)
    ny, nx = shape
    median = rng.normal(1.0, 0.2, shape).astype(np.float32)
    if shape == (40, 50):
        median[10:13, 20:24] = np.nan
        median[0, :] = np.nan
        median[:, -1] = np.nan
        median[30, 30] = np.inf
    else:
        median[-1, -1] = np.nan
    # Random points, points on pixel rows and columns (a hole next to them
    # gets zero weight), points on and beyond the edges, and no position.
    grid_y = np.repeat(np.arange(-1.0, ny + 1), nx + 1)
    grid_x = np.tile(np.arange(-1.0, nx), ny + 2)
    between = grid_x + 0.5  # on pixel rows between columns
    y = np.concatenate([rng.uniform(-2, ny + 2, 3000), grid_y, grid_y,
                        np.full(8, ny - 1.0), rng.uniform(0, ny - 1, 8),
                        np.full(8, np.nextafter(ny - 1.0, 0)), [np.nan, 1.0, 0.0]])
    x = np.concatenate([rng.uniform(-2, nx + 2, 3000), grid_x, between,
                        rng.uniform(0, nx - 1, 8), np.full(8, nx - 1.0),
                        rng.uniform(0, nx - 1, 8), [1.0, np.nan, -0.0]])
    if shape == (40, 50):
        # Where the interpolation is the second weight alone, its rounding shows.
        median[5, :2] = (0.0, 1.0)
        y = np.concatenate([y, np.full(5, 5.0)])
        x = np.concatenate([x, [1e-20, 0.1, 0.3, 1 / 3, 0.7]])
    # The kernel subtracts the window's offsets from grid positions (with
    # none, positions below 1 keep all their bits).
    for window in (SimpleNamespace(y0=7, x0=-3), SimpleNamespace(y0=0, x0=0)):
        pixmap = np.stack([x + window.x0, y + window.y0], axis=-1)[None]
        coordinates = np.array([pixmap[0, :, 1] - window.y0, pixmap[0, :, 0] - window.x0])
        # float32 is what the blot keeps; float64, before the rounding, shows
        # any difference in the arithmetic.
        for dtype, bits in ((np.float32, np.uint32), (np.float64, np.uint64)):
            expected = _reference_interpolation(median, coordinates, dtype)
            values = np.empty((1, x.size), dtype)
            _blot_rows(median, window, values, 0, pixmap=pixmap)
            assert np.isnan(values).any() and np.isfinite(values).any()
            np.testing.assert_array_equal(values[0].view(bits), expected.view(bits))


def test_blot_of_a_distorted_map_equals_scipy_splines_and_map_coordinates():
    from romosaic.outlier import detect
    from romosaic.resample.pixmap import PixelMapper
    from romosaic.resample.planes import PlaneStore
    from romosaic.simulate import make_image_models

    models, _, _, _ = make_image_models(n_exposures=1, size=200, seed=2, distortion=3.0,
                                        cosmic_ray_rate=0.0, n_stars=5, n_galaxies=0)
    image_wcs, shape = models[0].meta.wcs, models[0].data.shape
    window = _window_for(SimpleNamespaceImage(image_wcs, shape))
    rng = np.random.default_rng(8)
    median = rng.normal(1.0, 0.2, window.shape).astype(np.float32)
    median[rng.random(window.shape) < 0.01] = np.nan
    store = PlaneStore(window.shape)
    store.new_plane("median")
    store.write("median", median)
    mapper = PixelMapper(image_wcs, window.grid.wcs, shape)
    assert mapper.spline_coefficients() is not None
    blot = detect.blot_median(store, "median", mapper, window)
    # scipy's splines on the whole image (FITPACK's bispev), then its
    # interpolation; the map itself to the bit, and the blot before and
    # after its rounding to float32.
    pixmap = mapper.region()
    spline_map = np.empty_like(pixmap)
    detect._kernels.pixel_map(mapper.spline_coefficients(), 0, spline_map)
    np.testing.assert_array_equal(spline_map.view(np.uint64), pixmap.view(np.uint64))
    coordinates = np.array([pixmap[..., 1] - window.y0, pixmap[..., 0] - window.x0])
    expected = _reference_interpolation(median, coordinates)
    assert np.isnan(blot).any() and np.isfinite(blot).mean() > 0.9
    np.testing.assert_array_equal(blot.view(np.uint32), expected.view(np.uint32))
    unrounded = np.empty(shape)
    detect._blot_rows(median, window, unrounded, 0, spline=mapper.spline_coefficients())
    np.testing.assert_array_equal(
        unrounded.view(np.uint64),
        _reference_interpolation(median, coordinates, np.float64).view(np.uint64))
    # An exact map (no splines) goes through the same interpolation.
    exact = PixelMapper(image_wcs, window.grid.wcs, shape, stepsize=1)
    pixmap = exact.region()
    expected = _reference_interpolation(
        median, np.array([pixmap[..., 1] - window.y0, pixmap[..., 0] - window.x0]))
    np.testing.assert_array_equal(detect.blot_median(store, "median", exact, window)
                                  .view(np.uint32), expected.view(np.uint32))


class SimpleNamespaceImage:
    """The WCS and shape of an image, as `_window_for` reads them."""

    def __init__(self, wcs, shape):
        self.wcs, self.shape = wcs, shape


def test_neighbourhood_half_precision_and_median_shortcuts_equal_their_references():
    from scipy import ndimage

    from romosaic.outlier.detect import _single_precision
    from romosaic.outlier.flagging import neighbourhood_3x3

    rng = np.random.default_rng(7)
    for shape in [(1, 1), (1, 6), (6, 1), (2, 2), (9, 13)]:
        values = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_array_equal(neighbourhood_3x3(values, np.maximum),
                                      ndimage.maximum_filter(values, size=3))
        seeds = rng.random(shape) < 0.2
        np.testing.assert_array_equal(neighbourhood_3x3(seeds, np.logical_or),
                                      ndimage.binary_dilation(seeds, np.ones((3, 3), bool)))
    half = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    np.testing.assert_array_equal(_single_precision(half).view(np.uint32),
                                  half.astype(np.float32).view(np.uint32))
    # The median's selection by masked copies equals indexing by position.
    for n in (2, 4, 5, 9):
        stack = rng.normal(size=(n, 30, 20)).astype(np.float32)
        stack[rng.random(stack.shape) < 0.3] = np.nan
        ordered = np.sort(stack, axis=0)
        counts = np.count_nonzero(~np.isnan(stack), axis=0)
        for low in (False, True):
            lower = np.take_along_axis(ordered, (np.maximum(counts - 1, 0) // 2)[None], 0)[0]
            upper = lower if low else np.take_along_axis(
                ordered, np.minimum(counts // 2, n - 1)[None], 0)[0]
            expected = np.where(counts == 0, np.float32(np.nan), (lower + upper) * 0.5)
            np.testing.assert_array_equal(nanmedian_stack(stack, low=low).view(np.uint32),
                                          expected.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("threads", [1, 2])
def test_one_stream_over_the_groups_equals_a_drizzle_per_group(threads):
    from romosaic.outlier.detect import drizzle_group, median_of_group_drizzles, median_of_planes
    from romosaic.resample.engine import plan_strips
    from romosaic.resample.planes import PlaneStore

    images = [_rotated_input(seed) for seed in (11, 12, 13)]
    window = _window_for(images[0])
    groups = [("a", 1, images[:1]), ("b", 2, images[1:])]
    store = PlaneStore(window.shape)
    median_of_group_drizzles([(g, n, iter(i)) for g, n, i in groups], window, store,
                             threads=threads)
    strips = plan_strips(*window.shape, bytes_per_pixel=8, threads=threads)
    expected = PlaneStore(window.shape)
    names = [drizzle_group(iter(i), window, expected, name=g, n_images=n, strips=strips,
                           threads=threads) for g, n, i in groups]
    median_of_planes(expected, names, "median", threads=threads)
    assert np.isfinite(store.read("median")).mean() > 0.5
    np.testing.assert_array_equal(store.read("median"), expected.read("median"))
    assert store.names() == ["median"]
    for miscounted in ([("a", 2, images[:1]), ("b", 2, images[1:])],
                       [("a", 1, images[:2]), ("b", 1, images[2:])]):
        other = PlaneStore(window.shape)
        with pytest.raises(ValueError, match="images"):
            median_of_group_drizzles([(g, n, iter(i)) for g, n, i in miscounted], window,
                                     other, threads=threads)
        other.close()
