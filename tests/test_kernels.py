"""romosaic's compiled drizzle kernels against the ``drizzle`` package (the oracle)."""

import sys
import threading
import time
import warnings

import numpy as np
import pytest
from drizzle.resample import Drizzle

from romosaic.resample import _kernels
from romosaic.resample.kernels import KERNELS, drizzle_add

N_INPUTS = 3
N_VARIANCES = 2


def _pixmap(rng, shape, out_shape, scale, theta):
    """Input pixel centres on the output grid: rotation, scale, shift and a
    small quadratic distortion; ``scale`` is output over input pixel size."""
    ny, nx = shape
    y, x = np.indices(shape, dtype=float)
    xc, yc = x - nx / 2, y - ny / 2
    c, s = np.cos(theta), np.sin(theta)
    gx = (c * xc - s * yc) / scale + out_shape[1] / 2 + rng.uniform(-4, 4)
    gy = (s * xc + c * yc) / scale + out_shape[0] / 2 + rng.uniform(-4, 4)
    gx += 2e-4 * xc * yc / scale
    gy -= 1e-4 * xc * xc / scale
    return np.dstack([gx, gy])


def _scene(kernel, seed, native=False, fine=None):
    """Random inputs and geometry; the output grid cuts through the inputs'
    footprints (output edges). ``native``: output pixels of the input's size
    and a small rotation, as when dithers are drizzled at native scale.
    ``fine``: (lowest, highest) output over input pixel size, below 1, and a
    small rotation, as when outlier detection drizzles onto a grid twice as
    fine (drops over 3 x 3 output pixels and up to 4 x 4)."""
    rng = np.random.default_rng(seed)
    if fine:
        scale = rng.uniform(*fine)
    else:
        scale = rng.uniform(0.97, 1.03) if native else rng.uniform(0.5, 2.0)
    theta = rng.uniform(-0.05, 0.05) if native or fine else rng.uniform(0.0, 2 * np.pi)
    pixfrac = rng.uniform(0.5, 1.0)
    shape = (int(rng.integers(24, 44)), int(rng.integers(24, 44)))
    out_shape = (int(shape[0] / scale * rng.uniform(0.7, 1.2)),
                 int(shape[1] / scale * rng.uniform(0.7, 1.2)))
    inputs = []
    for _ in range(N_INPUTS):
        pixmap = _pixmap(rng, shape, out_shape, scale, theta + rng.normal(0.0, 0.03))
        data = rng.normal(1.0, 0.3, shape).astype(np.float32)
        weight = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        weight[rng.random(shape) < 0.05] = 0.0             # masked pixels
        data[rng.random(shape) < 0.03] = np.nan            # NaN data with a positive weight
        variances = [rng.uniform(0.1, 0.2, shape).astype(np.float32),
                     rng.uniform(0.01, 0.03, shape).astype(np.float32)]
        variances[1][rng.random(shape) < 0.02] = np.nan     # NaN variance counts as zero
        # A few flags per pixel, on some pixels only; propagated where they deposit.
        dq = np.where(rng.random(shape) < 0.1, 1 << rng.integers(0, 31, shape), 0)
        inputs.append((data, weight, variances, pixmap, dq.astype(np.uint32)))
    return dict(kernel=kernel, scale=scale, pixfrac=pixfrac, out_shape=out_shape, inputs=inputs)


def _oracle(scene):
    """``drizzle.resample.Drizzle`` as `DrizzleCoadd` drives it: cleaned
    inputs, an output padded by a margin (drizzle drops input pixels whose
    centre falls outside its output) and then cropped."""
    out_shape, scale = scene["out_shape"], scene["scale"]
    pad = int(np.ceil(3.0 / scale)) + 3
    padded = (out_shape[0] + 2 * pad, out_shape[1] + 2 * pad)
    driz = Drizzle(kernel=scene["kernel"], fillval="NaN", fillval2="NaN", out_shape=padded,
                   out_img2=[np.full(padded, np.nan, np.float32) for _ in range(N_VARIANCES)],
                   out_dq=np.zeros(padded, np.uint32), begin_ctx_id=0, max_ctx_id=N_INPUTS - 1)
    for data, weight, variances, pixmap, dq in scene["inputs"]:
        good = (weight > 0) & np.isfinite(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "not a flux-conserving kernel", pixfrac ignored
            driz.add_image(
                np.where(good, data, 0.0).astype(np.float32), exptime=1.0, pixmap=pixmap + pad,
                data2=[np.where(good & np.isfinite(v), v, 0.0).astype(np.float32)
                       for v in variances],
                weight_map=np.where(good, weight, 0.0).astype(np.float32), dq=dq,
                pixfrac=scene["pixfrac"], iscale=1.0, pixel_scale_ratio=scale, in_units="cps")
    inner = (slice(pad, pad + out_shape[0]), slice(pad, pad + out_shape[1]))
    return dict(data=driz.out_img[inner], weight=driz.out_wht[inner],
                variances=[plane[inner] for plane in driz.out_img2],
                context=driz.out_ctx[(slice(None), *inner)].view(np.uint32),
                dq=driz.out_dq[inner])


def _ours(scene, origin=(0, 0), out_shape=None):
    out_shape = out_shape or scene["out_shape"]
    out = dict(data=np.full(out_shape, np.nan, np.float32),
               weight=np.zeros(out_shape, np.float32),
               variances=[np.full(out_shape, np.nan, np.float32) for _ in range(N_VARIANCES)],
               context=np.zeros((1, *out_shape), np.uint32),
               dq=np.zeros(out_shape, np.uint32))
    for index, (data, weight, variances, pixmap, dq) in enumerate(scene["inputs"]):
        drizzle_add(data, pixmap, out["data"], out["weight"], weight=weight,
                    variances=variances, out_variances=out["variances"],
                    out_context=out["context"], context_index=index, dq=dq,
                    out_dq=out["dq"], kernel=scene["kernel"],
                    pixfrac=scene["pixfrac"], pixel_scale_ratio=scene["scale"], origin=origin)
    return out


def compare(ours, ref):
    """Largest differences, in units of float32 rounding where that applies.

    Pixels whose weight is at rounding level in both results (below 1e-6 of
    the median weight: drizzle's clipping residues next to a drop) are set
    apart and must stay at that level. Elsewhere the data and variances are
    compared relative to their value, allowing for the amplification of
    rounding where the kernel's negative lobes (lanczos) make the total
    weight small.
    """
    w_ref, w_ours = ref["weight"], ours["weight"]
    median = np.median(np.abs(w_ref[w_ref != 0]))
    tiny = 1e-6 * median
    real = (np.abs(w_ref) > tiny) | (np.abs(w_ours) > tiny)
    amplification = np.maximum(1.0, median / np.maximum(np.abs(w_ref), tiny))
    result = {"pixels": int(real.sum()),
              "residue_pixels": int((~real & ((w_ref != 0) | (w_ours != 0))).sum()),
              "weight": float(np.max(np.abs(w_ours - w_ref)[real] / median))}
    for name, a, b in [("data", ours["data"], ref["data"])] + [
            (f"variance{k}", ours["variances"][k], ref["variances"][k])
            for k in range(N_VARIANCES)]:
        assert np.array_equal(np.isnan(a[real]), np.isnan(b[real])), name
        ok = real & np.isfinite(b)
        rel = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]) * amplification[ok], 1e-30)
        result[name] = float(rel.max()) if rel.size else 0.0
    result["context_bits_differing"] = int(
        (ours["context"][:, real] != ref["context"][:, real]).sum())
    result["dq_differing"] = int((ours["dq"][real] != ref["dq"][real]).sum())
    result["dq_flagged"] = int((ref["dq"][real] != 0).sum())
    result["residue_weight"] = float(
        max(np.abs(w_ref[~real]).max(initial=0.0), np.abs(w_ours[~real]).max(initial=0.0))
        / median)
    return result


#: Scenes besides random ones: native scale; grids twice as fine with
#: pixfrac 1 (drops over 3 x 3 output pixels, nearly all of a row: the
#: square kernel takes them by blocks); grids 0.5-0.75 times the input pixel
#: with pixfrac 0.5-1 (drops over 2 x 2 to 3 x 3, mixed in a row); grids
#: down to a quarter (drops up to 4 x 4 and beyond).
SCENES = {"native": dict(seed=4, native=True),
          "fine": dict(seed=5, fine=(0.49, 0.51), pixfrac=1.0),
          "fine-pixfrac": dict(seed=6, fine=(0.5, 0.75)),
          "finest": dict(seed=8, fine=(0.26, 0.4))}


def _named_scene(kernel, name):
    if name not in SCENES:
        return _scene(kernel, name)
    options = dict(SCENES[name])
    pixfrac = options.pop("pixfrac", None)
    scene = _scene(kernel, **options)
    if pixfrac is not None:
        scene["pixfrac"] = pixfrac
    return scene


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("seed", [1, 2, 3, "native"])
def test_kernel_matches_drizzle_package(kernel, seed):
    _check_against_drizzle_package(_named_scene(kernel, seed))


@pytest.mark.parametrize("seed", ["fine", "fine-pixfrac", "finest", 9, 10])
def test_square_kernel_matches_drizzle_package_on_finer_grids(seed):
    scene = (_named_scene("square", seed) if seed in SCENES
             else _scene("square", seed, fine=(0.45, 0.75)))
    _check_against_drizzle_package(scene)


def _check_against_drizzle_package(scene):
    diff = compare(_ours(scene), _oracle(scene))
    assert diff["pixels"] > 100
    assert diff["weight"] < 1e-6, diff
    for name in ("data", "variance0", "variance1"):
        assert diff[name] < 4e-6, (name, diff)
    assert diff["context_bits_differing"] == 0, diff
    assert diff["dq_flagged"] > 10 and diff["dq_differing"] == 0, diff
    assert diff["residue_weight"] < 1e-6, diff


@pytest.mark.parametrize(("kernel", "seed"), [("square", 7), ("lanczos3", 7), ("turbo", 7),
                                             ("square", "fine"), ("square", "fine-pixfrac")])
def test_tile_receives_exactly_what_the_whole_grid_does(kernel, seed):
    scene = _named_scene(kernel, seed)
    whole = _ours(scene)
    ny, nx = scene["out_shape"]
    y0, x0 = ny // 3, nx // 4
    tile_shape = (ny // 2, nx // 2)
    tile = _ours(scene, origin=(x0, y0), out_shape=tile_shape)
    inner = (slice(y0, y0 + tile_shape[0]), slice(x0, x0 + tile_shape[1]))
    np.testing.assert_array_equal(tile["weight"], whole["weight"][inner])
    np.testing.assert_array_equal(tile["data"], whole["data"][inner])
    for k in range(N_VARIANCES):
        np.testing.assert_array_equal(tile["variances"][k], whole["variances"][k][inner])
    np.testing.assert_array_equal(tile["context"], whole["context"][(slice(None), *inner)])
    np.testing.assert_array_equal(tile["dq"], whole["dq"][inner])


def test_square_kernel_copies_agree_to_the_bit():
    """Where the CPU has AVX2, the square kernel runs rows whose drops are the
    usual one at native size in its AVX2 copy; the plain copy must give the
    same values to the bit."""
    scene = _named_scene("square", "native")
    scene["pixfrac"] = 1.0  # the usual drop: one corner in each of 2 x 2 pixels
    previous = _kernels.use_vector_copies(True)
    try:
        if not _kernels.use_vector_copies(True):
            pytest.skip("no AVX2 copy on this CPU or compiler")
        vector = _ours(scene)
        _kernels.use_vector_copies(False)
        plain = _ours(scene)
    finally:
        _kernels.use_vector_copies(previous)
    assert np.count_nonzero(plain["weight"]) > 0.5 * plain["weight"].size
    for key in ("data", "weight", "context", "dq"):
        np.testing.assert_array_equal(vector[key], plain[key])
    for k in range(N_VARIANCES):
        np.testing.assert_array_equal(vector["variances"][k], plain["variances"][k])


def test_flat_input_gives_the_same_surface_brightness_at_any_scale():
    for scale in (0.5, 1.0, 2.0):
        rng = np.random.default_rng(5)
        pixmap = _pixmap(rng, (40, 40), (60, 60), scale, 0.4)
        out = np.full((60, 60), np.nan, np.float32)
        weight = np.zeros((60, 60), np.float32)
        used = drizzle_add(np.full((40, 40), 0.3), pixmap, out, weight, pixel_scale_ratio=scale)
        assert used > 0
        covered = weight > 0.5 * np.median(weight[weight > 0])
        np.testing.assert_allclose(out[covered], 0.3, rtol=1e-6)


def test_arguments_are_checked():
    data = np.ones((5, 5), np.float32)
    pixmap = np.dstack(np.meshgrid(np.arange(5.0), np.arange(5.0)))
    out, weight = np.full((5, 5), np.nan, np.float32), np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match="unknown kernel"):
        drizzle_add(data, pixmap, out, weight, kernel="boxcar")
    with pytest.raises(ValueError, match="C-contiguous"):
        drizzle_add(data, pixmap, np.full((5, 10), np.nan, np.float32)[:, ::2], weight)
    with pytest.raises(TypeError):
        drizzle_add(data, pixmap, out.astype(np.float64), weight)
    with pytest.raises(ValueError, match="shape"):
        drizzle_add(data, pixmap[:4], out, weight)
    with pytest.raises(ValueError, match="plane"):
        drizzle_add(data, pixmap, out, weight, out_context=np.zeros((1, 5, 5), np.uint32),
                    context_index=32)
    # a pixel without a position, and one placed absurdly far away (whose
    # neighbours' drops would span the output): left out, not an error
    broken = pixmap.copy()
    broken[2, 2] = np.nan
    broken[0, 4] = -1e9
    assert drizzle_add(data, broken, out, weight) < 25
    out[:], weight[:] = np.nan, 0.0
    # an identity map with the square kernel copies the input
    assert drizzle_add(data * 2, pixmap, out, weight) == 25
    np.testing.assert_array_equal(out, 2.0)
    np.testing.assert_array_equal(weight, 1.0)


def _thread_scene(size=700):
    rng = np.random.default_rng(11)
    pixmap = _pixmap(rng, (size, size), (size + 40, size + 40), 1.0, 0.3)
    data = rng.normal(1.0, 0.1, (size, size)).astype(np.float32)
    weight = rng.uniform(0.5, 1.5, (size, size)).astype(np.float32)
    variances = [rng.uniform(0.1, 0.2, (size, size)).astype(np.float32) for _ in range(2)]
    return data, weight, variances, pixmap, (size + 40, size + 40)


def _thread_run(scene, out, index):
    data, weight, variances, pixmap, _ = scene
    drizzle_add(data, pixmap, out["data"], out["weight"], weight=weight, variances=variances,
                out_variances=out["variances"], out_context=out["context"], context_index=index)


def _empty(shape):
    return dict(data=np.full(shape, np.nan, np.float32), weight=np.zeros(shape, np.float32),
                variances=[np.full(shape, np.nan, np.float32) for _ in range(2)],
                context=np.zeros((1, *shape), np.uint32))


def test_two_threads_overlap_in_time_and_agree():
    """Two threads drizzle at once, each into its own arrays, and each result
    equals a serial run's, bit for bit. The second starts a little after the
    first; the two calls overlap in time only if the kernel releases the
    interpreter lock (the switch interval is raised so that a thread holding
    the lock is never made to give it up)."""
    scene = _thread_scene()
    shape = scene[4]
    serial = _empty(shape)
    _thread_run(scene, serial, 0)

    outputs = [_empty(shape), _empty(shape)]
    spans = [None, None]
    barrier = threading.Barrier(2)

    def worker(k):
        barrier.wait()
        if k == 1:
            time.sleep(0.005)
        start = time.perf_counter()
        _thread_run(scene, outputs[k], 0)
        spans[k] = (start, time.perf_counter())

    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    overlap = min(spans[0][1], spans[1][1]) - max(spans[0][0], spans[1][0])
    shortest = min(end - start for start, end in spans)
    assert overlap > 0.25 * shortest, f"the calls overlapped {overlap:.3f} s of {shortest:.3f} s"
    for out in outputs:
        for name in ("data", "weight", "context"):
            np.testing.assert_array_equal(out[name], serial[name])
        for k in range(2):
            np.testing.assert_array_equal(out["variances"][k], serial["variances"][k])


def _mapped_scene(size=(130, 150), distortion=True, seed=3, pixel_scale_ratio=1.0):
    """A distorted simulator detector onto a free grid, with its mapper."""
    from romosaic.resample import free_grid
    from romosaic.resample.pixmap import PixelMapper
    from romosaic.simulate.wcs import build_gwcs, plan_layout

    placements = plan_layout(np.random.default_rng(seed), ra=80.0, dec=-30.0, n_exposures=2,
                             n_detectors=1, size=max(size), distortion=distortion)
    wcs_a, wcs_b = (build_gwcs(p) for p in placements)
    grid = free_grid([(wcs_a, size), (wcs_b, size)], pixel_scale_ratio=pixel_scale_ratio)
    mapper = PixelMapper(wcs_b, grid.wcs, size, stepsize=10)
    rng = np.random.default_rng(seed)
    data = rng.normal(1.0, 0.3, size).astype(np.float32)
    weight = rng.uniform(0.5, 2.0, size).astype(np.float32)
    variances = [rng.uniform(0.1, 0.2, size).astype(np.float32) for _ in range(N_VARIANCES)]
    return mapper, grid.shape, data, weight, variances


@pytest.mark.parametrize(("pixfrac", "scale"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.5), (0.7, 0.5)])
def test_square_kernel_on_a_mapper_matches_its_pixel_map(pixfrac, scale):
    """Given a PixelMapper, the square kernel evaluates its splines row by
    row; the result is that of the mapper's pixel map to within the rounding
    of the spline evaluation, for the whole image and for a rectangle of it,
    on a grid as fine as the input and on one twice as fine."""
    mapper, out_shape, data, weight, variances = _mapped_scene(pixel_scale_ratio=scale)
    assert mapper.spline_coefficients() is not None
    ny, nx = mapper.shape
    for rows, cols in [((0, ny), (0, nx)), ((17, 101), (40, 133))]:
        cut = (slice(*rows), slice(*cols))
        results = []
        for pixmap, origin in [(mapper, (cols[0], rows[0])), (mapper.region(rows, cols), (0, 0))]:
            out = _empty(out_shape)
            used = drizzle_add(data[cut], pixmap, out["data"], out["weight"], weight=weight[cut],
                               variances=[v[cut] for v in variances],
                               out_variances=out["variances"], out_context=out["context"],
                               pixfrac=pixfrac, input_origin=origin)
            results.append((used, out))
        (used_a, a), (used_b, b) = results
        assert used_a == used_b > 0
        np.testing.assert_array_equal(a["context"], b["context"])
        for x, y in [(a["data"], b["data"]), (a["weight"], b["weight"])] + list(
                zip(a["variances"], b["variances"], strict=True)):
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
            np.testing.assert_allclose(x, y, rtol=3e-7, atol=0)


def test_other_kernels_take_a_mapper_through_its_pixel_map():
    mapper, out_shape, data, weight, _ = _mapped_scene()
    for pixmap in (mapper, mapper.region()):
        out = _empty(out_shape)
        drizzle_add(data, pixmap, out["data"], out["weight"], weight=weight, kernel="turbo")
        if pixmap is mapper:
            first = out
    np.testing.assert_array_equal(first["data"], out["data"])
    np.testing.assert_array_equal(first["weight"], out["weight"])
