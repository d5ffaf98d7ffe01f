"""Catalog purity: cosmic rays where a single input covers the mosaic are not sources.

Where only one exposure covers a mosaic (its margins, dither and detector
gaps), outlier detection cannot reject cosmic rays, and before the sharpness
test they entered the catalog: on the ``edges`` scene of
``benchmarks/accuracy_catalog.py`` drizzled to 0.055″ pixels, 23 of 188
entries (12 %) were cosmic rays, and 5 of 101 (5 %) on the ``bright`` scene.
The scene tests measure the catalog exactly as that script does (match radii
and blend rule in its docstring).
"""

import importlib.util
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import erf

from romosaic.wcs_utils import affine_tan_wcs, cd_from_orientation

ACCURACY_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_catalog.py"


def _load_accuracy():
    spec = importlib.util.spec_from_file_location("accuracy_catalog", ACCURACY_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


accuracy = _load_accuracy()


@pytest.fixture(scope="module", params=["edges", "bright"])
def scene(request):
    """A simulated scene drizzled to 0.055″ pixels, with its truth."""
    logging.disable(logging.INFO)
    try:
        models, sources, cosmic_rays = accuracy.simulate_scene(accuracy.SCENES[request.param])
        cr_ra, cr_dec = accuracy.cosmic_ray_positions(models, cosmic_rays)
        mosaic = accuracy.make_mosaic(models, pixel_scale_ratio=0.5)
    finally:
        logging.disable(logging.NOTSET)
    return request.param, mosaic, sources, cr_ra, cr_dec


def _evaluate(mosaic, sources, cr_ra, cr_dec, catalog, segmentation):
    return accuracy.evaluate(catalog, mosaic, sources, cr_ra, cr_dec,
                             segmentation=np.asarray(segmentation))


def test_few_spurious_sources_where_one_input_covers(scene):
    from romosaic.steps import SourceCatalogStep

    name, mosaic, sources, cr_ra, cr_dec = scene
    catalog, segmentation = SourceCatalogStep.call(mosaic)
    result = _evaluate(mosaic, sources, cr_ra, cr_dec, catalog.source_catalog,
                       segmentation.data)
    n_spurious = int(result["spurious"].sum())
    causes = sorted(set(result["cause"][result["spurious"]]))
    assert n_spurious < 0.02 * result["n_entries"], (name, n_spurious, causes)
    assert not np.any(result["cause"] == "cosmic ray")


def test_completeness_kept(scene):
    """Rejection removes cosmic rays only: every true source found without it is still found."""
    from romosaic.catalog import coverage_from_context, make_source_catalog

    name, mosaic, sources, cr_ra, cr_dec = scene
    arguments = (np.asarray(mosaic.data), np.asarray(mosaic.err), mosaic.meta.wcs)
    options = {"weight": np.asarray(mosaic.weight),
               "pixel_scale_arcsec": float(mosaic.meta.wcsinfo.pixel_scale) * 3600.0}
    with_rejection = make_source_catalog(
        *arguments, coverage=coverage_from_context(mosaic.context), **options)
    without = make_source_catalog(*arguments, **options)
    kept = _evaluate(mosaic, sources, cr_ra, cr_dec, with_rejection.table,
                     with_rejection.segmentation)
    before = _evaluate(mosaic, sources, cr_ra, cr_dec, without.table, without.segmentation)
    assert with_rejection.table.meta["cosmic_rays_rejected"] > 0
    assert len(with_rejection.table) == len(without.table) - \
        with_rejection.table.meta["cosmic_rays_rejected"]
    for (lo, _, found, total), (_, _, found_before, _) in zip(
            kept["completeness"], before["completeness"], strict=True):
        assert found == found_before, (name, lo, found, found_before, total)
    bin_23 = [c for c in kept["completeness"] if c[0] == 23.0][0]
    assert bin_23[2] >= 0.85 * bin_23[3], (name, bin_23)
    # Every rejected detection was spurious: the real entries (matches and blends) all remain.
    assert np.count_nonzero(~kept["spurious"]) == np.count_nonzero(~before["spurious"])


# -- the pieces, on exactly known images -----------------------------------------------------


def _gaussian_stamp(image, x, y, flux, sigma):
    """Add a pixel-integrated circular Gaussian."""
    ny, nx = image.shape
    edges_x = (np.arange(nx + 1) - 0.5 - x) / (math.sqrt(2.0) * sigma)
    edges_y = (np.arange(ny + 1) - 0.5 - y) / (math.sqrt(2.0) * sigma)
    image += flux * np.outer(np.diff(erf(edges_y)) / 2.0, np.diff(erf(edges_x)) / 2.0)


def _field(seed=3, n_stars=12, n_single_stars=3, n_hits=4, noise=1.0):
    """A 240² image: stars where two inputs overlap (left), stars and hits where one covers."""
    rng = np.random.default_rng(seed)
    shape = (240, 240)
    image = rng.normal(0.0, noise, shape)
    coverage = np.full(shape, 2, np.uint8)
    coverage[:, 160:] = 1
    stars = []
    for i in range(n_stars):
        x, y = 20 + 35 * (i % 4) + rng.uniform(-0.5, 0.5), 20 + 60 * (i // 4) + rng.uniform(0, 1)
        stars.append((x, y))
        _gaussian_stamp(image, x, y, 2000.0, 1.3)
    singles = []
    for i in range(n_single_stars):
        x, y = 175 + rng.uniform(-0.5, 0.5), 30 + 70 * i + rng.uniform(-0.5, 0.5)
        singles.append((x, y))
        _gaussian_stamp(image, x, y, 1500.0, 1.3)
    hits = []
    for i in range(n_hits):
        x, y = 215, 25 + 55 * i
        hits.append((x, y))
        # One input pixel drizzled onto pixels half its size: a 2 × 2 block.
        image[y:y + 2, x:x + 2] += 800.0
        if i % 2:
            image[y + 2:y + 4, x + 2:x + 4] += 600.0  # a short diagonal track
    return image.astype(np.float32), coverage, stars, singles, hits


def _catalog(image, coverage, scale=0.055, **kwargs):
    from romosaic.catalog import make_source_catalog

    ny, nx = image.shape
    wcs = affine_tan_wcs(crval=(80.0, -30.0), crpix=((nx - 1) / 2, (ny - 1) / 2),
                         cd=cd_from_orientation(scale / 3600.0, 0.0), shape=image.shape)
    err = np.ones_like(image)
    return make_source_catalog(image, err, wcs, coverage=coverage, pixel_scale_arcsec=scale,
                               **kwargs)


def _nearest(table, points):
    xy = np.column_stack([table["x_centroid"], table["y_centroid"]])
    return [float(np.min(np.hypot(*(xy - p).T))) for p in points]


def test_coverage_from_context_counts_inputs_over_planes():
    from romosaic.catalog import coverage_from_context

    context = np.zeros((2, 2, 3), np.uint32)
    context[0, 0, 0] = 0b1011
    context[0, 1, 2] = 0xFFFFFFFF
    context[1, 1, 2] = 0b1
    context[1, 0, 1] = 0b110
    np.testing.assert_array_equal(coverage_from_context(context), [[3, 2, 0], [0, 0, 33]])
    np.testing.assert_array_equal(coverage_from_context(context[0]), [[3, 0, 0], [0, 0, 32]])
    # A context that cannot describe the mosaic is no information.
    weight = np.ones((2, 3))
    assert coverage_from_context(context, weight).shape == (2, 3)
    assert coverage_from_context(context, np.ones((3, 2))) is None
    assert coverage_from_context(np.zeros((2, 3, 1), np.uint32), weight[:, :1]) is None
    assert coverage_from_context(np.zeros((1, 2, 3), np.uint32), weight) is None


def test_minor_moment_tells_a_pixel_from_a_point_source_across_cut_windows():
    from romosaic.catalog.detection import minor_moment

    image = np.zeros((60, 80), np.float32)
    positions = [(15.3, 15.2), (45.0, 15.0), (45.2, 44.9), (15.2, 45.1), (60.1, 40.2),
                 (78.0, 15.0), (1.2, 20.3)]
    for x, y in positions:
        if x == int(x) and y == int(y):
            image[int(y), int(x)] = 1000.0  # a single hot pixel or cosmic ray
        else:
            _gaussian_stamp(image, x, y, 1000.0, 1.3)
    no_data = np.zeros(image.shape, bool)
    no_data[30:, 47:54] = True  # two pixels from the third source, a straight edge
    no_data[30:, :11] = True  # five pixels from the fourth
    no_data[42:, 62:] = True  # a corner next to the fifth
    image[no_data] = 0.0
    labels = np.zeros(image.shape, np.int64)
    error = np.ones(image.shape, np.float32)
    peaks = np.round(np.array(positions)).astype(int)
    width, width_err, snr, clean, trusted, *_ = minor_moment(
        image, labels, error, no_data, peaks[:, 1], peaks[:, 0], np.arange(1, 8),
        window_sigma=1.7)
    star = width[0]
    assert width[1] < 0.3 * star
    assert np.all(width_err < 0.05 * star)
    assert np.all(snr > 100)
    assert list(clean) == [True, True, False, False, False, False, False]
    # Cut far out: unchanged. Cut close by a straight edge (the third source; the
    # array's edge for the last two): the moment along the edge keeps the width.
    # Cut at a corner: not to be trusted.
    assert list(trusted) == [True, True, True, True, False, True, True]
    assert width[2] == pytest.approx(star, rel=0.05)
    assert width[3] == pytest.approx(star, rel=0.03)
    assert width[5] < 0.3 * star
    assert width[6] == pytest.approx(star, rel=0.05)


def test_cosmic_rays_rejected_where_one_input_covers_and_stars_kept():
    from romosaic.catalog.flags import SINGLE_INPUT

    image, coverage, stars, singles, hits = _field()
    result = _catalog(image, coverage)
    table = result.table
    assert table.meta["cosmic_rays_rejected"] == len(hits)
    assert max(_nearest(table, stars + singles)) < 0.5
    assert min(_nearest(table, hits)) > 3.0
    assert len(table) == len(stars) + len(singles)
    # Labels stay consecutive and match the segmentation map.
    assert list(table["label"]) == list(range(1, len(table) + 1))
    assert set(np.unique(result.segmentation)) == {0, *table["label"]}
    single = (np.asarray(table["warning_flags"]) & SINGLE_INPUT) != 0
    assert np.all(single == (np.asarray(table["x_centroid"]) >= 159.5))
    assert "warning_flags_32" in table.meta["flags"]


def test_nothing_rejected_without_coverage_or_point_sources():
    from romosaic.catalog.flags import SINGLE_INPUT

    image, coverage, stars, singles, hits = _field()
    unknown = _catalog(image, None).table
    assert unknown.meta["cosmic_rays_rejected"] == 0
    assert len(unknown) == len(stars) + len(singles) + len(hits)
    assert not np.any(np.asarray(unknown["warning_flags"]) & SINGLE_INPUT)

    # Too few point sources where inputs overlap to measure the point-source
    # width: the PSF's stands in, and the hits still go.
    image, coverage, stars, singles, hits = _field(n_stars=3)
    result = _catalog(image, coverage)
    assert result.table.meta["cosmic_rays_rejected"] == len(hits)
    assert len(result.table) == len(stars) + len(singles)
    assert any("width is taken from the PSF" in note for note in result.notes)


def test_coverage_shape_checked():
    from romosaic.errors import RomosaicInputError

    image, coverage, *_ = _field()
    with pytest.raises(RomosaicInputError, match="coverage has shape"):
        _catalog(image, coverage[:10])


# -- cosmic rays drizzled onto pixels as large as the input's ---------------------------------


def _drizzled_axis(size, values_at, offset):
    """One axis of an input image drizzled onto an output grid of the same pixel size.

    Input pixel ``k`` covers output coordinates ``k + offset ± 0.5``: it gives
    ``1 - offset`` of itself to output pixel ``k`` and ``offset`` to ``k + 1``
    (pixfrac 1). ``values_at(centres)`` gives the input pixels' values.
    """
    inputs = values_at(np.arange(size) + offset)
    out = (1.0 - offset) * inputs
    out[1:] += offset * inputs[:-1]
    return out


def _gaussian_axis(position, sigma):
    def values_at(centres):
        edges = (centres[:, None] + np.array([-0.5, 0.5]) - position) / (math.sqrt(2.0) * sigma)
        return np.diff(erf(edges), axis=1)[:, 0] / 2.0
    return values_at


def _pixel_axis(*pixels):
    def values_at(centres):
        return np.isin(np.rint(centres - centres[0]).astype(int), pixels).astype(float)
    return values_at


def _native_scale_field(seed=4):
    """A 0.11″ mosaic of 0.11″ inputs: stars where two overlap, stars and hits where one does.

    Each object where one input covers the mosaic is drizzled from an input
    grid offset by ``(u, v)`` from the output grid; a star where two overlap
    is the mean of two such drizzles. The stars' optical PSF has the
    F158 FWHM the catalog assumes (0.128″, sigma 0.49 pixels): the
    narrowest, most pixel-like stars it must keep.
    """
    rng = np.random.default_rng(seed)
    shape = (300, 300)
    image = rng.normal(0.0, 1.0, shape)
    coverage = np.full(shape, 2, np.uint8)
    coverage[:, 190:] = 1
    sigma = 0.128 / 0.11 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    ny, nx = shape

    def add(x_axis, y_axis, flux, u, v):
        image[:] += flux * np.outer(_drizzled_axis(ny, y_axis, v), _drizzled_axis(nx, x_axis, u))

    stars = []
    for i in range(15):
        x, y = 20.0 + 35 * (i % 5) + rng.uniform(0, 1), 25.0 + 55 * (i // 5) + rng.uniform(0, 1)
        for u, v in rng.uniform(0, 1, (2, 2)):
            add(_gaussian_axis(x, sigma), _gaussian_axis(y, sigma), 1500.0, u, v)
        stars.append((x, y))
    # Where one input covers: stars at every kind of offset, among them the
    # most compact (centred on the corner of four input pixels of a grid
    # aligned with the output's) and a faint one.
    singles = []
    for i, (u, v, dx, dy, flux) in enumerate([
            (0.0, 0.0, 0.5, 0.5, 3000.0), (0.0, 0.0, 0.0, 0.0, 3000.0),
            (0.5, 0.5, 0.0, 0.0, 3000.0), (0.5, 0.5, 0.5, 0.5, 3000.0),
            (0.0, 0.5, 0.5, 0.0, 3000.0), (0.3, 0.8, 0.2, 0.6, 3000.0),
            (0.5, 0.5, 0.5, 0.5, 400.0)]):
        x, y = 200.0 + u + dx, 20.0 + 40 * i + v + dy
        add(_gaussian_axis(x, sigma), _gaussian_axis(y, sigma), flux, u, v)
        singles.append((x, y))
    # Cosmic rays: single input pixels and two-pixel tracks along rows or
    # columns, most of them half-way between output pixels, where they
    # measure nearly as wide as the stars.
    hits = []
    for i, (u, v, track, deposit) in enumerate([
            (0.5, 0.5, None, 1000.0), (0.45, 0.55, None, 300.0), (0.3, 0.5, None, 600.0),
            (0.5, 0.2, None, 1000.0), (0.1, 0.1, None, 1000.0), (0.5, 0.5, "x", 800.0),
            (0.4, 0.5, "y", 800.0)]):
        k, j = 260, 20 + 40 * i
        x_pixels, y_pixels = ((0, 1), (0,)) if track == "x" else \
            ((0,), (0, 1)) if track == "y" else ((0,), (0,))
        add(_shifted(_pixel_axis(*x_pixels), k), _shifted(_pixel_axis(*y_pixels), j), deposit,
            u, v)
        hits.append((k + u + 0.5 * (len(x_pixels) - 1), j + v + 0.5 * (len(y_pixels) - 1)))
    return image.astype(np.float32), coverage, stars, singles, hits


def _shifted(values_at, first):
    """``values_at`` of input pixels counted from input pixel ``first``."""
    def shifted(centres):
        out = np.zeros(centres.size)
        out[first:] = values_at(centres[first:])
        return out
    return shifted


def test_drizzled_pixel_has_no_excess_at_any_offset():
    """Half-way between output pixels a drizzled pixel is nearly a star's width, with no excess."""
    from romosaic.catalog.detection import minor_moment

    image = np.zeros((40, 160), np.float32)
    offsets = [(0.0, 0.0), (0.5, 0.5), (0.25, 0.5), (0.5, 0.1)]
    for i, (u, v) in enumerate(offsets):
        k = 20 + 40 * i
        image += 1000.0 * np.outer(_drizzled_axis(40, _shifted(_pixel_axis(0), 20), v),
                                   _drizzled_axis(160, _shifted(_pixel_axis(0), k), u))
    star = np.zeros_like(image)
    _gaussian_stamp(star, 60.0, 20.0, 1000.0, 0.49)
    peaks_x = np.array([20, 60, 100, 140])
    peaks_y = np.full(4, 20)
    no_data = np.zeros(image.shape, bool)
    moments = minor_moment(image, np.zeros(image.shape, np.int64), np.ones(image.shape), no_data,
                           peaks_y, peaks_x, np.arange(1, 5), 1.7, pixel_size=1.0)
    star_moments = minor_moment(star, np.zeros(image.shape, np.int64), np.ones(image.shape),
                                no_data, peaks_y[1:2], peaks_x[1:2], np.array([1]), 1.7,
                                pixel_size=1.0)
    # Half-way between pixels, the pixel's width is two-thirds of the star's ...
    assert moments.width[1] > 0.65 * star_moments.width[0]
    # ... but nothing of it is left once a drizzled pixel's is taken away.
    np.testing.assert_allclose(moments.excess, 0.0, atol=1e-6)
    assert star_moments.excess[0] > 0.3 * star_moments.width[0]
    # Without a pixel size there is no excess.
    assert np.all(np.isnan(minor_moment(image, np.zeros(image.shape, np.int64),
                                        np.ones(image.shape), no_data, peaks_y, peaks_x,
                                        np.arange(1, 5), 1.7).excess))


def test_cosmic_rays_at_sub_pixel_offsets_rejected_on_native_pixels_and_stars_kept():
    """At 0.11″ a cosmic ray half-way between pixels is 0.7 of a star's width: still rejected."""
    image, coverage, stars, singles, hits = _native_scale_field()
    result = _catalog(image, coverage, scale=0.11)
    table = result.table
    assert max(_nearest(table, stars + singles)) < 0.5
    assert min(_nearest(table, hits)) > 3.0, _nearest(table, hits)
    assert len(table) == len(stars) + len(singles)
    assert table.meta["cosmic_rays_rejected"] == len(hits)
    assert 0.0 < table.meta["cosmic_ray_excess_threshold_pix2"] < \
        table.meta["point_source_excess_floor_pix2"]


def test_excess_floor_is_the_most_pixel_like_star():
    """The floor is the excess of a star centred on an input pixel's corner, on an aligned grid."""
    from romosaic.catalog.detection import minor_moment, point_source_excess_floor

    sigma = 0.128 / 0.11 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    floor = point_source_excess_floor(0.128 / 0.11, 1.0, 1.0, 1.7)
    image = np.zeros((41, 41))
    image += np.outer(_drizzled_axis(41, _gaussian_axis(20.5, sigma), 0.0),
                      _drizzled_axis(41, _gaussian_axis(20.5, sigma), 0.0))
    corner = minor_moment(image, np.zeros(image.shape, np.int64), np.ones(image.shape),
                          np.zeros(image.shape, bool), np.array([20]), np.array([20]),
                          np.array([1]), 1.7, pixel_size=1.0).excess[0]
    assert corner == pytest.approx(floor, abs=0.003)
    # Narrower PSFs make stars more pixel-like: at 0.11″, F087's stars can
    # look like one pixel; on 0.055″ pixels nothing is close.
    floors = [point_source_excess_floor(fwhm / 0.11, 1.0, 1.0, 1.7)
              for fwhm in (0.073, 0.106, 0.128, 0.169)]
    assert floors == sorted(floors)
    assert abs(floors[0]) < 0.01 < floors[2]
    assert point_source_excess_floor(0.128 / 0.055, 2.0, 2.0, 1.7) > 5 * floor


def test_pixfrac_checked():
    from romosaic.errors import RomosaicInputError

    image, coverage, *_ = _field()
    with pytest.raises(RomosaicInputError, match="pixfrac"):
        _catalog(image, coverage, pixfrac=0.0)


def test_step_takes_pixfrac_from_the_mosaic():
    import roman_datamodels.datamodels as rdm

    from romosaic.steps.source_catalog_step import _pixfrac

    mosaic = rdm.MosaicModel.create_fake_data()
    assert _pixfrac(mosaic) == 1.0  # the placeholder -999999 is no pixfrac
    mosaic.meta.resample = {"pixfrac": 0.8}
    assert _pixfrac(mosaic) == 0.8
    del mosaic.meta["resample"]
    assert _pixfrac(mosaic) == 1.0
