"""The flagging kernels equal plain numpy forms of the same arithmetic, to the bit.

The references below are the straightforward whole-array formulations (one
new array per operation); the package computes the same values in place
(`outlier_mask`), in one compiled pass over an image's rows
(`masked_outliers`), the sky level by a bracketed selection instead of a
full sort, and a group's typical weight partly with compiled sums.
"""

import numpy as np
import pytest
from scipy import ndimage

from romosaic.outlier import detect, flagging
from romosaic.resample.inputs import ResampleInput

# The odd values on purpose (NaN, infinities, negative and overflowing
# variances) make numpy warn, in the package and in the references alike.
pytestmark = pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered")


def _reference_sky_level(blot):
    finite = np.isfinite(blot)
    if not finite.any():
        return None
    return np.float32(np.median(blot[finite]))


def _reference_derivative(blot):
    blot = np.asarray(blot, dtype=np.float32)
    deriv = np.zeros_like(blot)
    with np.errstate(invalid="ignore"):
        for axis in (0, 1):
            step = np.abs(np.diff(blot, axis=axis))
            step = np.where(np.isnan(step), 0.0, step)
            lead, trail = [slice(None)] * 2, [slice(None)] * 2
            lead[axis], trail[axis] = slice(1, None), slice(None, -1)
            deriv[tuple(lead)] = np.maximum(deriv[tuple(lead)], step)
            deriv[tuple(trail)] = np.maximum(deriv[tuple(trail)], step)
    return deriv


def _reference_signal(blot, level):
    finite = np.isfinite(blot)
    if level is None:
        level = _reference_sky_level(blot)
    if level is None or not finite.any():
        return np.zeros_like(blot)
    with np.errstate(invalid="ignore", over="ignore"):
        signal = np.where(finite, np.maximum(blot - np.float32(level), 0.0), 0.0)
    return ndimage.maximum_filter(signal.astype(np.float32), size=3, mode="constant",
                                  cval=-np.inf)


def _reference_mask(data, blot, noise, *, snr, scale, backg=0.0, model_error=0.0,
                    usable=None, sky_level=None):
    data, blot, noise = (np.asarray(a, dtype=np.float32) for a in (data, blot, noise))
    deriv = _reference_derivative(blot)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(data - blot - np.float32(backg))
        model_term = np.float32(model_error) * _reference_signal(blot, sky_level)
        first = diff > np.float32(scale[0]) * deriv + np.float32(snr[0]) * noise + model_term
        second = diff > np.float32(scale[1]) * deriv + np.float32(snr[1]) * noise + model_term
    valid = np.isfinite(diff) & np.isfinite(noise)
    grown = ndimage.binary_dilation(first & valid, np.ones((3, 3), bool))
    mask = grown & second & valid
    return mask if usable is None else mask & usable


def _reference_noise(image):
    variance = np.zeros(image.shape, np.float32)
    for name in ("var_rnoise", "var_poisson", "var_flat"):
        plane = image.variances.get(name)
        if plane is not None:
            variance += np.nan_to_num(np.asarray(plane).astype(np.float32), nan=0.0)
    return np.sqrt(variance)


def _scene(rng, shape, *, holes=True, odd_values=True):
    """A blot with sky, stars and holes, and data = blot + noise + cosmic rays."""
    y, x = np.indices(shape)
    blot = rng.normal(1.0, 0.05, shape).astype(np.float32)
    for _ in range(max(1, shape[0] * shape[1] // 2000)):
        cx, cy = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
        blot += (rng.uniform(5, 500) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 3.0)).astype(
            np.float32)
    noise = rng.uniform(0.05, 0.2, shape).astype(np.float32)
    data = (blot + rng.normal(0, 1, shape).astype(np.float32) * noise).astype(np.float32)
    hits = rng.random(shape) < 0.003
    data[hits] += rng.uniform(1, 100, hits.sum()).astype(np.float32)
    if holes:
        blot[rng.random(shape) < 0.01] = np.nan
        blot[: shape[0] // 7, : shape[1] // 5] = np.nan
    if odd_values:
        for array in (data, blot, noise):
            for value in (np.nan, np.inf, -np.inf, 0.0, -0.0):
                array[rng.integers(0, shape[0], 3), rng.integers(0, shape[1], 3)] = value
        noise[rng.integers(0, shape[0], 3), rng.integers(0, shape[1], 3)] = -1.0
    return data, blot, noise


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2), (3, 5), (57, 83), (130, 200)])
def test_outlier_mask_equals_its_whole_array_form(shape):
    rng = np.random.default_rng(sum(shape))
    data, blot, noise = _scene(rng, shape)
    usable = rng.random(shape) > 0.05
    cases = [
        dict(snr=(5.0, 4.0), scale=(1.2, 0.7), model_error=0.1),
        dict(snr=(3.0, 2.5), scale=(0.5, 0.2), backg=0.3, model_error=0.0, usable=usable),
        dict(snr=(5.0, 4.0), scale=(1.2, 0.7), backg=-0.0, model_error=0.2,
             sky_level=np.float32(1.5)),
        dict(snr=(-1.0, 0.0), scale=(0.0, -1.0), model_error=1e30, sky_level=np.float32(-2.0)),
    ]
    # The compiled test takes variances: a float32 plane whose root is the noise.
    variance = (noise.astype(np.float64) ** 2).astype(np.float32)
    variance[noise < 0] = -1.0
    dq = np.where(usable, 0, 1).astype(np.uint32)
    for kwargs in cases:
        expected = _reference_mask(data, blot, noise, **kwargs)
        np.testing.assert_array_equal(flagging.outlier_mask(data, blot, noise, **kwargs),
                                      expected)
        compiled = dict(kwargs, usable=usable if "usable" in kwargs else None,
                        sky_level=kwargs.get("sky_level", _reference_sky_level(blot)))
        np.testing.assert_array_equal(
            _compiled_mask(data, blot, dq, (variance,), **compiled),
            _reference_mask(data, blot, np.sqrt(np.nan_to_num(variance, nan=0.0)), **compiled))
    assert _reference_mask(data, blot, noise, **cases[0]).any() or min(shape) < 50


def _compiled_mask(data, blot, dq, variances, *, snr, scale, backg=0.0, model_error=0.0,
                   usable=None, sky_level=None):
    """The compiled test with the keywords of `outlier_mask` (``usable`` from ``dq``)."""
    mask = np.empty(data.shape, bool)
    detect._kernels.flag(data, blot, dq, tuple(variances), mask, scale[0], scale[1], snr[0],
                         snr[1], backg, model_error,
                         None if sky_level is None else float(sky_level),
                         0 if usable is None else 1, detect._finite_half_to_single())
    return mask


@pytest.mark.parametrize("planes", ["float32", "float16", "three"])
def test_pixels_exactly_at_a_threshold_are_decided_as_the_reference_does(planes):
    # A threshold rounded differently (terms added in another order, a noise
    # converted or summed differently) changes only pixels whose difference
    # from the model is the threshold itself: make many such pixels, for
    # each of the two tests.
    rng = np.random.default_rng(11)
    shape = (60, 70)
    blot = rng.lognormal(0, 1, shape).astype(np.float32)
    if planes == "float32":
        variances = [(rng.uniform(0.05, 0.2, shape) ** 2).astype(np.float32)]
    elif planes == "float16":
        # Every positive finite float16, subnormal ones included.
        variances = [rng.integers(1, 0x7C00, shape).astype(np.uint16).view(np.float16)]
    else:
        variances = [rng.uniform(0, 0.02, shape).astype(np.float16),
                     rng.uniform(0, 0.02, shape).astype(np.float16), rng.uniform(0, 0.02, shape)]
    variance = np.zeros(shape, np.float32)
    for plane in variances:
        variance += plane.astype(np.float32)
    noise = np.sqrt(variance)
    kwargs = dict(snr=(5.0, 4.0), scale=(1.2, 0.7), model_error=0.1)
    deriv = _reference_derivative(blot)
    model = np.float32(0.1) * _reference_signal(blot, None)
    for test in (0, 1):
        threshold = (np.float32(kwargs["scale"][test]) * deriv
                     + np.float32(kwargs["snr"][test]) * noise + model)
        data = blot + threshold
        at_threshold = np.abs(data - blot) == threshold
        if test == 1:
            # Strong outliers on a sparse grid, whose growth the second test trims.
            data[::3, ::3] += 1e6
            at_threshold[::3, ::3] = False
        assert at_threshold.mean() > 0.3
        expected = _reference_mask(data, blot, noise, **kwargs)
        np.testing.assert_array_equal(flagging.outlier_mask(data, blot, noise, **kwargs),
                                      expected)
        np.testing.assert_array_equal(
            _compiled_mask(data, blot, np.zeros(shape, np.uint32), variances,
                           sky_level=_reference_sky_level(blot), **kwargs), expected)


def test_derivative_signal_and_neighbourhood_equal_their_whole_array_forms():
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (1, 6), (6, 1), (40, 31)]:
        _, blot, _ = _scene(rng, shape)
        np.testing.assert_array_equal(flagging.blot_derivative(blot).view(np.uint32),
                                      _reference_derivative(blot).view(np.uint32))
        for level in (None, np.float32(0.9)):
            np.testing.assert_array_equal(flagging.source_signal(blot, level=level),
                                          _reference_signal(blot, level))
        values = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_array_equal(flagging.neighbourhood_3x3(values, np.maximum),
                                      ndimage.maximum_filter(values, size=3))


def test_sky_level_equals_the_median_of_finite_pixels(monkeypatch):
    rng = np.random.default_rng(5)
    n = 5 * flagging._LEVEL_SAMPLE
    arrays = [
        rng.normal(1, 0.1, n).astype(np.float32),
        rng.integers(0, 4, n).astype(np.float32),  # ties across the middle
        np.sort(rng.normal(size=n)).astype(np.float32),  # ordered
        np.repeat(rng.normal(size=n // 64), 64).astype(np.float32),
        rng.lognormal(0, 4, n).astype(np.float32),
        rng.normal(size=n),  # float64
        rng.normal(size=(n // 1000, 1000)).astype(np.float32),
    ]
    for index, values in enumerate(arrays):
        flat = values.reshape(-1)
        flat[rng.random(flat.size) < 0.1 * index] = np.nan
        flat[rng.integers(0, flat.size, 20)] = np.inf
        flat[rng.integers(0, flat.size, 30)] = -np.inf
        for even in (True, False):
            part = values if even else values.reshape(-1)[1:]
            level = flagging.sky_level(part)
            expected = _reference_sky_level(part)
            assert type(level) is np.float32
            assert level == expected and np.signbit(level) == np.signbit(expected)
    # A sample that misses the median (every sampled pixel is 5), mostly
    # NaN pixels, and none: the full selection.
    values = rng.normal(size=n).astype(np.float32)
    values[::values.size // flagging._LEVEL_SAMPLE | 1] = 5.0
    assert flagging._bracketed_median(values) is None
    assert flagging.sky_level(values) == _reference_sky_level(values)
    values[rng.random(n) < 0.95] = np.nan
    assert flagging.sky_level(values) == _reference_sky_level(values)
    assert flagging.sky_level(np.full(n, np.nan, np.float32)) is None
    assert flagging.sky_level(np.zeros((0, 3), np.float32)) is None


def _image(rng, data, variances):
    shape = data.shape
    dq = np.zeros(shape, np.uint32)
    dq[rng.random(shape) < 0.02] = 1  # DO_NOT_USE
    dq[rng.random(shape) < 0.02] = 4  # acceptable by default
    return ResampleInput(name="x", data=data, dq=dq, wcs=None, exptime=1.0,
                         variances=variances)


@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (8, 1), (2, 3), (150, 97)])
def test_masked_outliers_equals_the_whole_array_test_with_the_image_noise(shape):
    rng = np.random.default_rng(sum(shape))
    data, blot, noise = _scene(rng, shape)
    variances = {"var_rnoise": (noise ** 2 / 2).astype(np.float16),
                 "var_poisson": (noise ** 2 / 2).astype(np.float16),
                 "var_flat": np.full(shape, 1e-4)}
    odd = [np.nan, np.inf, -np.inf, 7e4, 0, -0.0, 65504, 3e-8, -2.0]
    variances["var_poisson"].reshape(-1)[:len(odd)] = odd[:data.size]
    variances["var_rnoise"].reshape(-1)[-len(odd):] = odd[-data.size:]
    image = _image(rng, data, variances)
    np.testing.assert_array_equal(detect.image_noise(image).view(np.uint32),
                                  _reference_noise(image).view(np.uint32))
    kinds = [variances,
             # float32 planes, a byte-swapped one, a non-contiguous one, and none
             {"var_rnoise": variances["var_rnoise"].astype(np.float32),
              "var_poisson": variances["var_poisson"].astype(">f4"),
              "var_flat": np.asfortranarray(variances["var_flat"])},
             {"var_rnoise": variances["var_rnoise"]},
             {}]
    for planes in kinds:
        image.variances = planes
        for good_bits in (None, "~DO_NOT_USE+NON_SCIENCE"):
            kwargs = dict(snr=(5.0, 4.0), scale=(1.2, 0.7), backg=0.1, model_error=0.1)
            usable = (image.dq & (0xFFFFFFFF if good_bits is None else 1 | 512)) == 0
            expected = _reference_mask(data, blot, _reference_noise(image), usable=usable,
                                       sky_level=_reference_sky_level(blot), **kwargs)
            assert expected.sum() > 20 or min(shape) < 50
            np.testing.assert_array_equal(
                detect.masked_outliers(image, blot, good_bits=good_bits, **kwargs), expected)
    # No finite model anywhere: no model term, nothing flagged against NaN.
    empty = np.full(shape, np.nan, np.float32)
    assert not detect.masked_outliers(image, empty, snr=(5.0, 4.0), scale=(1.2, 0.7)).any()


# -- the typical weight of a group drizzle ------------------------------------


def _exact_moments(values, lo, hi):
    """Count, sum and sum of squares of the float32 values in [lo, hi],
    correctly rounded (math.fsum; a float32's square is exact in double)."""
    import math

    values = np.asarray(values, np.float32).ravel()
    kept = values[(values >= lo) & (values <= hi)].astype(np.float64)
    return kept.size, math.fsum(kept), math.fsum(kept * kept)


def _reference_typical_weight(weights):
    """The clipped mean with correctly rounded sums over the whole frame."""
    import math

    low, high = float(np.nextafter(np.float32(0), np.float32(1))), np.inf
    count, total, squares = _exact_moments(weights, low, high)
    if count == 0:
        return 0.0
    for _ in range(3):
        mean = total / count
        std = math.sqrt(max(squares / count - mean * mean, 0.0))
        new = _exact_moments(weights, max(low, mean - 3 * std), min(high, mean + 3 * std))
        if new[0] == count or new[0] == 0:
            break
        low, high = max(low, mean - 3 * std), min(high, mean + 3 * std)
        count, total, squares = new
    return total / count


def _weight_frame(rng, shape, spread):
    """Weights as a drizzle leaves them: zero off the footprint, partial at its
    edges (down to tiny fractions), and ``spread`` about the typical value."""
    weights = (1e4 * rng.lognormal(0, spread, shape)).astype(np.float32)
    weights[:, : shape[1] // 6] = 0
    weights[: shape[0] // 9] = 0
    edge = (slice(shape[0] // 9, None), shape[1] // 6)
    weights[edge] *= rng.random(weights[edge].shape).astype(np.float32) ** 8
    weights[rng.random(shape) < 0.01] *= np.float32(1e-3)
    return weights


def test_typical_weight_is_the_clipped_mean_whatever_the_threads():
    rng = np.random.default_rng(21)
    frames = [_weight_frame(rng, (700, 300), spread) for spread in (0.01, 0.05, 0.3, 2.0)]
    frames.append(np.full((300, 200), 7.0, np.float32))  # one value
    frames.append(np.zeros((300, 200), np.float32))
    odd = _weight_frame(rng, (600, 250), 0.05)
    odd[5, :4] = [np.nan, np.inf, -1.0, -0.0]
    odd[7, :3] = np.nan
    frames.append(odd)
    frames.append(_weight_frame(rng, (600, 250), 0.05).astype(np.float64))
    frames.append(np.asfortranarray(_weight_frame(rng, (600, 250), 0.05)))
    for weights in frames:
        one = detect._typical_weight(weights, threads=1)
        # The sections' sums are added in the same order with any threads.
        assert detect._typical_weight(weights, threads=2) == one
        assert detect._typical_weight(weights, threads=3) == one
        expected = _reference_typical_weight(weights)
        if np.isfinite(expected):
            assert one == pytest.approx(expected, rel=1e-12, abs=0)
        else:  # an infinite weight makes the mean infinite, as numpy's would be
            assert one == expected
    assert detect._typical_weight(frames[4]) == 7.0
    assert detect._typical_weight(frames[5]) == 0.0


def test_compiled_weight_sums():
    rng = np.random.default_rng(22)
    for lo, hi in [(1.0, 1.9), (1000.0, 9000.0), (3e-15, 7e-14), (3e-20, 7e-19), (0.5, 100.0),
                   (1e-3, 1e3), (1e30, 2e30), (0.7, np.inf), (1e-45, 1.0)]:
        # Values across every binade of the interval and a few outside it, a
        # run of the bound itself, NaNs, and lengths that leave a tail after
        # the eight-value steps.
        low, high = np.log2(lo / 4), np.log2(min(hi * 4, 3e38))
        for size in (300_003, 8, 7, 0):
            values = np.exp2(rng.uniform(low, high, size)).astype(np.float32)
            values[rng.random(values.size) < 0.2] = np.float32(lo)
            values[rng.random(values.size) < 0.01] = np.nan
            count, total, squares = detect._kernels.weight_moments(values, lo, hi)
            expected = _exact_moments(values, lo, hi)
            assert count == expected[0]
            assert total == pytest.approx(expected[1], rel=1e-12, abs=0)
            assert squares == pytest.approx(expected[2], rel=1e-12, abs=0)
    # The bounds are rounded to float32 before comparing, as numpy does.
    values = np.array([1.0, np.nextafter(np.float32(1), np.float32(2))], np.float32)
    assert detect._kernels.weight_moments(values, 1.00000001, 2.0)[0] == 2


def test_compiled_masking_of_poorly_sampled_pixels_equals_numpys():
    rng = np.random.default_rng(23)
    weight = rng.uniform(-0.5, 2.0, (300, 401)).astype(np.float32)
    weight[::7] = 0.0
    weight[:, ::11] = np.nan
    weight[5, 5] = np.float32(0.7)  # on the threshold, rounded to float32 as numpy does
    data = rng.normal(size=weight.shape).astype(np.float32)
    for threshold in (0.7, 0.0, -1.0, float("nan"), 1e-30):
        expected = data.copy()
        poor = ~(weight >= threshold)
        if not threshold > 0:
            poor |= weight <= 0
        np.copyto(expected, np.float32(np.nan), where=poor)
        masked = data.copy()
        detect._kernels.mask_poor(masked, weight, threshold, not threshold > 0)
        np.testing.assert_array_equal(masked, expected)
        assert 0 < np.isnan(masked).sum() < masked.size or threshold != threshold
    with pytest.raises(TypeError, match="float32"):
        detect._kernels.mask_poor(data.astype(np.float64), weight, 0.5, False)
    with pytest.raises(ValueError, match="size"):
        detect._kernels.mask_poor(data[:10], weight, 0.5, False)
