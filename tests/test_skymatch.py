"""Sky matching: clipped statistics, the cell map, the four methods, and the step.

Accuracy is checked on simulated associations where every detector of every
exposure has a sky of its own: the recovered levels against the truth table,
and the background of the resampled mosaic across regions covered by
different sets of images.
"""

import logging

import numpy as np
import pytest
import roman_datamodels.datamodels as rdm

from romosaic.errors import RomosaicInputError
from romosaic.library import ModelLibrary
from romosaic.resample.pixmap import map_pixels, node_positions
from romosaic.simulate import make_image_models, simulate_association
from romosaic.simulate.checks import coverage_regions, source_mask
from romosaic.simulate.wcs import ImageGeometry, plan_layout
from romosaic.skymatch import (
    SkyStatisticsParameters,
    _statistics,
    cell_grid,
    grouped_sky_statistics,
    match_sky,
)
from romosaic.skymatch.cells import _NODE_STEP, _label_cells, _label_cells_exactly
from romosaic.steps import FluxStep, OutlierDetectionStep, ResampleStep
from romosaic.steps.skymatch_step import SkyMatchStep

from .conftest import NATIVE_SCALE_ARCSEC, make_image_model

# ---------------------------------------------------------------------------
# Clipped statistics, against a plain implementation of the same definitions
# ---------------------------------------------------------------------------


def _direct_statistics(values, p):
    """The reference definitions, one group at a time, with plain numpy."""
    x = np.sort(np.asarray(values, dtype=np.float32)).astype(np.float64)
    lower = -np.inf if p.lower is None else p.lower
    upper = np.inf if p.upper is None else p.upper
    lo, hi = lower, upper
    for iteration in range(p.nclip + 1):
        sel = x[(x >= lo) & (x <= hi)]
        mean, std = sel.mean(), sel.std(ddof=1)
        if iteration < p.nclip:
            lo, hi = max(lower, mean - p.lsigma * std), min(upper, mean + p.usigma * std)
    if p.skystat == "mean":
        return mean, sel.size
    if p.skystat == "median":
        return np.median(sel), sel.size
    width = p.binwidth * std
    nbins = int((sel.max() - sel.min()) / width) + 1
    counts, edges = np.histogram(sel, bins=sel.min() + width * np.arange(nbins + 1))
    if p.skystat == "midpt":
        cumulative = np.cumsum(counts)
        k = int(np.searchsorted(cumulative, 0.5 * sel.size))
        before = cumulative[k] - counts[k]
        return edges[k] + (0.5 * sel.size - before) / counts[k] * width, sel.size
    k = int(np.argmax(counts))
    cm, c0, cp = counts[k - 1], counts[k], counts[k + 1]
    vertex = 0.5 * (cp - cm) / (2 * c0 - cm - cp)
    return edges[k] + (0.5 + vertex) * width, sel.size


@pytest.mark.parametrize("skystat", ["mean", "median", "mode", "midpt"])
def test_grouped_statistics_follow_the_reference_definitions(skystat):
    rng = np.random.default_rng(7)
    groups = []
    for sky in (1.0, 2.5, -0.3):
        values = rng.normal(sky, 0.1, 3000)
        values[:60] += rng.exponential(2.0, 60)  # sources: a bright tail
        values[60:63] = [50.0, -40.0, 1e4]  # cosmic ray, dead pixel
        groups.append(values.astype(np.float32))
    values = np.concatenate(groups)
    labels = np.repeat(np.arange(3), 3000)
    p = SkyStatisticsParameters(skystat=skystat, upper=1e3)
    result = grouped_sky_statistics(values, labels, 4, p)
    for g, group in enumerate(groups):
        expected, npix = _direct_statistics(group, p)
        assert result.npix[g] == npix
        # Sums in float64 of float32 data: agreement to rounding.
        assert result.value[g] == pytest.approx(expected, abs=1e-6)
    assert np.isnan(result.value[3]) and result.npix[3] == 0


@pytest.mark.parametrize("skystat", ["mean", "median", "mode", "midpt"])
def test_grouped_statistics_of_many_groups_of_every_size(skystat):
    # Group sizes on both sides of the compiled sort's switch from insertion
    # to radix sorting, negative and positive skies (the order-preserving
    # keys flip negative floats), and labels in no order.
    rng = np.random.default_rng(11)
    sizes = [1, 2, 3, 47, 48, 49, 200, 5000]
    skies = [-3.0, 0.0, 2.0, -0.5, 7.0, 1e3, -1e-3, 0.25]
    groups = []
    for size, sky in zip(sizes, skies, strict=True):
        values = rng.normal(sky, 0.2 + abs(sky) * 0.01, size)
        values[: size // 20] += rng.exponential(3.0, size // 20)
        if skystat in ("mean", "median"):
            # Ties; the histogram statistics are left without, as values on a
            # bin edge fall on either side in numpy's histogram.
            values = np.round(values, 2)
        groups.append(values.astype(np.float32))
    labels = np.concatenate([np.full(g.size, i) for i, g in enumerate(groups)])
    values = np.concatenate(groups)
    order = rng.permutation(values.size)
    p = SkyStatisticsParameters(skystat=skystat, nclip=3)
    result = grouped_sky_statistics(values[order], labels[order], len(groups), p)
    for g, group in enumerate(groups):
        if group.size < (2 if skystat in ("mean", "median") else 40):
            # The direct definitions need a standard deviation, and the
            # histogram ones a histogram (not a degenerate one of 2 pixels).
            continue
        expected, npix = _direct_statistics(group, p)
        assert result.npix[g] == npix
        assert result.value[g] == pytest.approx(expected, abs=1e-6 * max(1.0, abs(expected)))
    assert result.npix[0] == 1 and result.value[0] == groups[0][0] and result.stddev[0] == 0


@pytest.mark.parametrize("skystat", ["mean", "mode", "midpt"])
def test_one_group_without_sorting_agrees_with_the_sorted_groups(skystat):
    # One group (a whole image) is measured by sweeps over the unsorted
    # values; with a second, empty group the same pixels go through the
    # sorting path. Same pixels used, same statistics to rounding.
    rng = np.random.default_rng(9)
    values = (3e3 + rng.normal(0.0, 2.0, 200_000)).astype(np.float32)
    values[:4000] += rng.exponential(40.0, 4000).astype(np.float32)
    labels = np.where(rng.random(values.size) < 0.1, -1, 0)
    p = SkyStatisticsParameters(skystat=skystat)
    one = grouped_sky_statistics(values, labels, 1, p)
    two = grouped_sky_statistics(values, labels, 2, p)
    assert one.npix[0] == two.npix[0] and one.members[0] == two.members[0]
    assert one.value[0] == pytest.approx(two.value[0], rel=1e-9, abs=1e-9)
    assert one.stddev[0] == pytest.approx(two.stddev[0], rel=1e-9)


def test_grouped_statistics_leave_out_negative_labels():
    values = np.array([1.0, np.nan, 2.0, 50.0, 3.0, np.inf], np.float32)
    labels = np.array([0, -1, 0, -7, 0, -1])
    p = SkyStatisticsParameters(skystat="median", nclip=0)
    result = grouped_sky_statistics(values, labels, 2, p)
    assert result.value[0] == 2.0 and result.npix[0] == 3 and result.members.tolist() == [3, 0]
    assert np.isnan(result.value[1]) and result.npix[1] == 0


def test_grouped_statistics_refuse_labels_out_of_range():
    values = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="label at index 2 is not below the number of groups"):
        grouped_sky_statistics(values, np.array([0, 1, 5, 0]), 2, SkyStatisticsParameters())


def test_grouped_statistics_run_in_threads_at_once():
    import concurrent.futures

    rng = np.random.default_rng(5)
    values = rng.normal(10.0, 1.0, 400_000).astype(np.float32)
    labels = rng.integers(0, 300, values.size)
    p = SkyStatisticsParameters()
    expected = grouped_sky_statistics(values, labels, 300, p).value
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: grouped_sky_statistics(values, labels, 300, p).value,
                                range(4)))
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_statistics_edge_cases():
    p = SkyStatisticsParameters(skystat="mode")
    constant = grouped_sky_statistics(np.full(100, 3.25, np.float32), None, 1, p)
    assert constant.value[0] == 3.25 and constant.stddev[0] == 0
    # A large zero point does not cost precision in the clipping.
    rng = np.random.default_rng(1)
    values = (1.0e4 + rng.normal(0, 1.0, 20000)).astype(np.float32)
    stats = grouped_sky_statistics(values, None, 1, SkyStatisticsParameters(skystat="mean"))
    assert stats.stddev[0] == pytest.approx(np.std(values.astype(float), ddof=1), rel=0.02)
    # Limits outside the data leave nothing to measure.
    empty = grouped_sky_statistics(values, None, 1, SkyStatisticsParameters(lower=2e4))
    assert np.isnan(empty.value[0]) and empty.npix[0] == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"skystat": "average"}, "skystat must be one of"),
    ({"lower": 2.0, "upper": 1.0}, "must not exceed upper"),
    ({"nclip": -1}, "nclip must be"),
    ({"binwidth": 0.0}, "binwidth must be a positive"),
])
def test_statistics_parameters_are_checked(kwargs, message):
    with pytest.raises(RomosaicInputError, match=message):
        SkyStatisticsParameters(**kwargs)


# ---------------------------------------------------------------------------
# The cell map
# ---------------------------------------------------------------------------


def _distorted_detector(size, distortion, seed=3):
    placement = plan_layout(np.random.default_rng(seed), ra=80.0, dec=-30.0, n_exposures=1,
                            n_detectors=1, size=size, distortion=distortion)[0]
    geometry = ImageGeometry(placement)
    return geometry, cell_grid([(geometry.wcs, geometry.shape)])


def _numpy_cell_labels(wcs, shape, grid, good):
    """The interpolated cell labels in numpy, operation for operation (the
    compiled labels' oracle): whole-grid labels, then renumbered in the box."""
    ny, nx = shape
    gny, gnx = grid.shape
    xn, yn = node_positions(nx, _NODE_STEP), node_positions(ny, _NODE_STEP)
    gx, gy = map_pixels(wcs, grid.wcs, *np.meshgrid(xn, yn))
    x_all = np.arange(nx, dtype=float)
    rows_x, rows_y = (np.stack([np.interp(x_all, xn, row) for row in v]) for v in (gx, gy))
    rows = np.arange(ny, dtype=float)
    j = np.clip(np.searchsorted(yn, rows, side="right") - 1, 0, yn.size - 2)
    t = ((rows - yn[j]) / (yn[j + 1] - yn[j]))[:, None]
    cells = []
    for node_rows, n in ((rows_x, gnx), (rows_y, gny)):
        g = node_rows[j + 1] - node_rows[j]
        g *= t
        g += node_rows[j]
        cells.append(np.clip(np.floor(g + 0.5), 0, n - 1).astype(np.int32))
    ix, iy = cells
    if not good.any():
        return None, None
    x0, x1, y0, y1 = ix[good].min(), ix[good].max(), iy[good].min(), iy[good].max()
    labels = np.where(good, (iy - y0) * (x1 - x0 + 1) + ix - x0, -1).astype(np.int32)
    return labels, (int(x0), int(x1), int(y0), int(y1))


@pytest.mark.parametrize(("size", "distortion", "seed"), [(512, 12.0, 3), (300, 0.5, 7),
                                                          (1024, 3.0, 11)])
def test_compiled_cell_labels_equal_their_numpy_form(size, distortion, seed):
    geometry, grid = _distorted_detector(size, distortion, seed)
    rng = np.random.default_rng(seed)
    good = rng.random(geometry.shape) > 0.1
    good[:, : size // 5] = False  # a box smaller than the image's
    labels = np.empty(geometry.shape, np.int32)
    bounds = _label_cells(geometry.wcs, geometry.shape, grid, good, labels)
    expected, expected_bounds = _numpy_cell_labels(geometry.wcs, geometry.shape, grid, good)
    assert bounds == expected_bounds
    np.testing.assert_array_equal(labels, expected)
    assert bounds[0] > 0  # the left fifth's cells are outside the box
    assert _label_cells(geometry.wcs, geometry.shape, grid, np.zeros_like(good),
                        labels) is None


def test_compiled_cell_labels_refuse_inconsistent_arrays():
    x_rows = np.zeros(4 * 10)
    with pytest.raises(ValueError, match="outside the nodes"):
        _statistics.cell_labels(x_rows, x_rows, np.array([3], np.int64), np.zeros(1),
                                np.ones(10, bool), np.empty(10, np.int32), 10, 5, 5)
    with pytest.raises(ValueError, match="inconsistent"):
        _statistics.cell_labels(x_rows, x_rows, np.array([0], np.int64), np.zeros(1),
                                np.ones(9, bool), np.empty(10, np.int32), 10, 5, 5)
    with pytest.raises(TypeError, match="labels"):
        _statistics.cell_labels(x_rows, x_rows, np.array([0], np.int64), np.zeros(1),
                                np.ones(10, bool), np.empty(10, np.int64), 10, 5, 5)


def test_interpolated_cell_map_matches_exact_wcs_on_a_distorted_detector():
    geometry, grid = _distorted_detector(512, 12.0)
    good = np.ones(geometry.shape, bool)
    interpolated = np.empty(geometry.shape, np.int32)
    exact = np.empty(geometry.shape, np.int32)
    assert (_label_cells(geometry.wcs, geometry.shape, grid, good, interpolated)
            == _label_cells_exactly(geometry.wcs, geometry.shape, grid, good, exact))
    differ = interpolated != exact
    assert differ.any()  # the interpolation does move boundaries a little
    x, y = np.meshgrid(np.arange(512.0), np.arange(512.0))
    ex, ey = map_pixels(geometry.wcs, grid.wcs, x[differ], y[differ])
    # Distance (in input pixels, 32 a cell) of each pixel labelled otherwise
    # to the nearest cell boundary: a 12-pixel corner distortion on a
    # 512-pixel detector (a hundred pixels at full size, far beyond the real
    # one) moves the boundaries by less than 0.1 pixel (coordinates were off
    # by 0.06 at most), the default distortion by 0.001 pixel.
    to_boundary = np.minimum(*(np.abs((g + 0.5) - np.round(g + 0.5)) for g in (ex, ey))) * 32
    assert to_boundary.max() < 0.1


# ---------------------------------------------------------------------------
# The methods on synthetic images with known skies
# ---------------------------------------------------------------------------

_SIZE = 128
_STEP_DEG = NATIVE_SCALE_ARCSEC / 3600.0


def _tile(sky, col, row, *, obs, name, rng, noise=0.002, dq=None):
    """A uniform image of ``sky`` + noise, placed ``col``, ``row`` tile steps away.

    Neighbouring tiles overlap by 48 pixels (a third of a tile step of 80).
    """
    crval = (80.0 - col * 80 * _STEP_DEG / np.cos(np.radians(30.0)), -30.0 + row * 80 * _STEP_DEG)
    data = sky + rng.normal(0.0, noise, (_SIZE, _SIZE))
    model = make_image_model(shape=(_SIZE, _SIZE), crval=crval, data=data, observation_id=obs,
                             filename=name, flux_complete=True)
    if dq is not None:
        model.dq = np.full((_SIZE, _SIZE), dq, np.uint32)
    return model


def _tiles(skies, positions, *, seed=0, groups=None):
    rng = np.random.default_rng(seed)
    groups = groups or [f"obs{i}" for i in range(len(skies))]
    return [_tile(s, c, r, obs=g, name=f"t{i}_cal.asdf", rng=rng)
            for i, (s, (c, r), g) in enumerate(zip(skies, positions, groups, strict=True))]


def _levels(library):
    out = []
    for _, model in library.iter_models():
        background = model.meta.get("background")
        out.append(None if not background else background["level"])
    return out


# The reference's first example: a 2 x 3 mosaic whose tiles overlap their neighbours.
_SKIES_6 = [1.00, 1.20, 1.05, 1.10, 1.05, 1.15]
_GRID_6 = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]


@pytest.mark.parametrize("method, expected", [
    ("local", _SKIES_6),
    ("global", [1.0] * 6),
    ("match", [s - 1.0 for s in _SKIES_6]),
    ("global+match", _SKIES_6),
])
def test_reference_example_of_a_connected_mosaic(method, expected):
    library = SkyMatchStep.call(_tiles(_SKIES_6, _GRID_6), skymethod=method)
    np.testing.assert_allclose(_levels(library), expected, atol=1e-3)
    for _, model in library.iter_models():
        assert model.meta.background.method == method
        assert model.meta.background.subtracted is False
        assert model.meta.cal_step.skymatch == "COMPLETE"
        model.validate()  # the Level-2 schema accepts what was written


def test_match_up_makes_the_highest_sky_the_reference():
    library = SkyMatchStep.call(_tiles(_SKIES_6, _GRID_6), match_down=False)
    np.testing.assert_allclose(_levels(library), [s - 1.2 for s in _SKIES_6], atol=1e-3)


def test_separate_sets_are_matched_within_each_set(caplog):
    # The reference's second example: a 2 x 2 mosaic and, far away, a strip of three.
    skies = [1.00, 1.20, 1.05, 1.10, 0.95, 0.90, 1.00]
    positions = [(0, 0), (1, 0), (0, 1), (1, 1), (10, 0), (11, 0), (12, 0)]
    with caplog.at_level(logging.WARNING, logger="romosaic"):
        matched = SkyMatchStep.call(_tiles(skies, positions))
    assert "form 2 separate overlapping sets" in caplog.text
    np.testing.assert_allclose(_levels(matched), [0, 0.2, 0.05, 0.1, 0.05, 0, 0.1], atol=1e-3)
    # With a baseline per set, every image ends at its own sky (the reference,
    # with one baseline for all, leaves one set offset).
    both = SkyMatchStep.call(_tiles(skies, positions), skymethod="global+match")
    np.testing.assert_allclose(_levels(both), skies, atol=1e-3)


def test_isolated_group_keeps_its_local_sky(caplog):
    skies = [1.0, 1.3, 0.7]
    with caplog.at_level(logging.WARNING, logger="romosaic"):
        library = SkyMatchStep.call(_tiles(skies, [(0, 0), (1, 0), (20, 20)]))
    assert "t2_cal.asdf overlaps no other image" in caplog.text
    np.testing.assert_allclose(_levels(library), [0.0, 0.3, 0.7], atol=1e-3)


def test_every_detector_is_matched_on_its_own():
    # Exposure A: two detectors whose skies differ (as real detectors' do);
    # exposure B: one detector overlapping both.
    rng = np.random.default_rng(4)
    models = [_tile(1.0, 0, 0, obs="A", name="a1_cal.asdf", rng=rng),
              _tile(1.2, 2, 0, obs="A", name="a2_cal.asdf", rng=rng),
              _tile(1.4, 1, 0, obs="B", name="b1_cal.asdf", rng=rng)]
    levels = _levels(SkyMatchStep.call(models))
    np.testing.assert_allclose(levels, [0.0, 0.2, 0.4], atol=1e-3)


def test_detectors_of_one_exposure_can_share_one_offset():
    # Exposure A: two detectors side by side; exposure B: one detector over
    # the first of them only. A's second detector has no overlap of its own,
    # and takes its exposure's offset when offsets are per exposure group.
    rng = np.random.default_rng(4)
    models = [_tile(1.0, 0, 0, obs="A", name="a1_cal.asdf", rng=rng),
              _tile(1.0, 2, 0, obs="A", name="a2_cal.asdf", rng=rng),
              _tile(1.4, 0.5, 0.3, obs="B", name="b1_cal.asdf", rng=rng)]
    levels = _levels(SkyMatchStep.call(models, per_exposure_group=True))
    np.testing.assert_allclose(levels, [0.0, 0.0, 0.4], atol=1e-3)


def test_image_without_usable_pixels_is_skipped(caplog):
    rng = np.random.default_rng(5)
    models = [_tile(1.0, 0, 0, obs="o0", name="good0_cal.asdf", rng=rng),
              _tile(1.2, 1, 0, obs="o1", name="good1_cal.asdf", rng=rng),
              _tile(1.1, 0, 1, obs="o2", name="flagged_cal.asdf", rng=rng, dq=1)]
    with caplog.at_level(logging.WARNING, logger="romosaic"):
        library = SkyMatchStep.call(models)
    assert "flagged_cal.asdf: no usable pixels" in caplog.text
    levels = _levels(library)
    assert levels[2] is None
    np.testing.assert_allclose(levels[:2], [0.0, 0.2], atol=1e-3)
    statuses = [m.meta.cal_step.skymatch for _, m in library.iter_models()]
    assert statuses == ["COMPLETE", "COMPLETE", "SKIPPED"]


def test_subtract_then_refuse_to_subtract_again():
    models = _tiles(_SKIES_6[:2], _GRID_6[:2])
    before = [np.array(m.data) for m in models]
    library = SkyMatchStep.call(models, subtract=True)
    levels = _levels(library)
    for (_, model), data, level in zip(library.iter_models(), before, levels, strict=True):
        assert model.meta.background.subtracted is True
        np.testing.assert_allclose(model.data, data - np.float32(level), atol=1e-6)
    with pytest.raises(RomosaicInputError, match=r"t0_cal.asdf: sky level .* already "
                                                 r"subtracted .* refusing to subtract again"):
        SkyMatchStep.call(library, subtract=True)
    # Refused before touching anything; without subtract, the residual is recorded.
    again = SkyMatchStep.call(library)
    for (_, model), data, level in zip(again.iter_models(), before, levels, strict=True):
        np.testing.assert_allclose(model.data, data - np.float32(level), atol=1e-6)
        assert model.meta.background.subtracted is False
    np.testing.assert_allclose(_levels(again), [0.0, 0.0], atol=1e-3)


def test_match_sky_rejects_unknown_method():
    with pytest.raises(RomosaicInputError, match="skymethod must be one of"):
        match_sky([], [], skymethod="median")


@pytest.mark.parametrize("kwargs, message", [
    ({"dqbits": "NOT_A_FLAG"}, "skymatch: dqbits 'NOT_A_FLAG' is not understood"),
    ({"lower": 3.0, "upper": 1.0}, "skymatch: lower .* must not exceed upper"),
    ({"lsigma": 0.0}, "skymatch: lsigma must be a positive number"),
])
def test_step_parameters_are_checked(kwargs, message):
    with pytest.raises(RomosaicInputError, match=message):
        SkyMatchStep(**kwargs).check_parameters()


def test_step_defaults_are_the_reference_pipelines():
    step = SkyMatchStep()
    assert (step.skymethod, step.match_down, step.subtract, step.skystat) == (
        "match", True, False, "mode")
    assert step.dqbits == "~DO_NOT_USE+NON_SCIENCE"
    assert (step.lower, step.upper, step.nclip) == (None, None, 5)
    assert (step.lsigma, step.usigma, step.binwidth) == (4.0, 4.0, 0.1)
    assert step.per_exposure_group is False  # romosaic's own option, off as in the reference
    assert SkyMatchStep.class_alias == "skymatch"


# ---------------------------------------------------------------------------
# Simulated associations: recovered offsets and seams in the mosaic
# ---------------------------------------------------------------------------


def _simulated(n_exposures, n_detectors, *, seed, size=256, **options):
    """Simulated images in MJy/sr, each detector with its own sky (the default)."""
    models, sources, images, _ = make_image_models(
        n_exposures=n_exposures, n_detectors=n_detectors, size=size, seed=seed, **options)
    return FluxStep.call(models), sources, np.asarray(images["sky_mjysr"], dtype=float)


def test_simulated_detectors_have_skies_of_their_own():
    _, _, truth = _simulated(4, 2, seed=2, size=64)
    per_exposure = truth.reshape(4, 2)
    assert np.all(np.abs(per_exposure[:, 0] - per_exposure[:, 1]) > 1e-4)


@pytest.mark.parametrize("n_exposures, n_detectors, seed", [(4, 1, 1), (8, 2, 2)])
def test_recovered_levels_match_the_truth(n_exposures, n_detectors, seed):
    library, _, truth = _simulated(n_exposures, n_detectors, seed=seed)
    levels = np.array(_levels(SkyMatchStep.call(library)))
    largest_step = truth.max() - truth.min()
    error = np.abs(levels - (truth - truth.min()))
    # Noise, sources, cosmic rays and hot pixels at the default exposure time;
    # one offset per exposure group misses the detectors' own skies by 10-20 %
    # of the largest step.
    assert error.max() < 0.01 * largest_step
    assert levels.min() == 0.0


@pytest.mark.parametrize("n_exposures, n_detectors, seed", [(4, 1, 1), (8, 2, 3), (16, 4, 5)])
def test_no_steps_between_images_in_the_mosaic(n_exposures, n_detectors, seed):
    # Deep (10x) exposures: the background medians of regions of a few
    # hundred pixels must be known to well under 1 % of the unmatched spread,
    # which the default depth does not allow.
    library, sources, _ = _simulated(n_exposures, n_detectors, seed=seed,
                                     exposure_time=1398.0)
    unmatched = ResampleStep.call(library)
    matched = ResampleStep.call(SkyMatchStep.call(library))
    mask = source_mask(unmatched, sources)
    before, after = coverage_regions(unmatched, mask), coverage_regions(matched, mask)
    large = before.large(300)
    np.testing.assert_array_equal(large, after.large(300))
    assert large.size >= 5
    spread_before = np.ptp(before.median[large])
    spread_after = np.ptp(after.median[large])
    assert spread_before > 0.05  # MJy/sr: the unmatched mosaic does have steps
    # Measured: 0.1-0.3 % of the unmatched spread; one offset per exposure
    # group leaves 5-15 %.
    assert spread_after < 0.01 * spread_before


def test_no_region_stands_out_from_its_neighbours():
    # The whole chain at the default depth: edges seen by a single image
    # (where outlier detection cannot work and partial pixels are drizzled)
    # must sit at their neighbours' background. With one offset per exposure
    # group, a region seen through one detector differs from its neighbours
    # by tens of sigma.
    library, sources, _ = _simulated(8, 2, seed=3)
    coadd = ResampleStep.call(OutlierDetectionStep.call(SkyMatchStep.call(library)))
    regions = coverage_regions(coadd, source_mask(coadd, sources))
    a, b = regions.neighbours.T
    both = (regions.npix[a] >= 300) & (regions.npix[b] >= 300)
    a, b = a[both], b[both]
    assert a.size >= 20 and (regions.n_inputs[np.concatenate([a, b])] == 1).any()
    sigma = np.abs(regions.median[a] - regions.median[b]) / np.hypot(regions.noise[a],
                                                                     regions.noise[b])
    assert sigma.max() < 3.0


def test_on_disk_library_and_workers_give_identical_levels(tmp_path):
    sim = simulate_association(tmp_path / "sim", n_exposures=4, n_detectors=2, size=128,
                               seed=6)
    in_memory = SkyMatchStep.call(FluxStep.call(ModelLibrary(sim.asn_path)), workers=1)
    two_workers = SkyMatchStep.call(FluxStep.call(ModelLibrary(sim.asn_path)), workers=2)
    assert _levels(two_workers) == _levels(in_memory)
    on_disk = ModelLibrary(sim.asn_path, on_disk=True, temp_directory=tmp_path)
    try:
        SkyMatchStep.call(FluxStep.call(on_disk), workers=2)
        # Read back from the temporary files.
        assert _levels(on_disk) == _levels(in_memory)
        assert all(level is not None for level in _levels(on_disk))
    finally:
        on_disk.close()
    # The input files are not modified.
    with rdm.open(sim.cal_paths[0]) as original:
        assert original.meta.get("background") is None


def test_single_exposure_uses_its_local_sky(caplog):
    with caplog.at_level(logging.WARNING, logger="romosaic"):
        library = SkyMatchStep.call(_tiles([1.3], [(0, 0)]))
    assert "only one image (t0_cal.asdf): nothing to match" in caplog.text
    np.testing.assert_allclose(_levels(library), [1.3], atol=1e-3)
