"""Tests for romosaic.preview (``romosaic preview``)."""

import argparse
import logging
import warnings

import gwcs
import numpy as np
import pytest
from astropy import coordinates
from astropy import units as u
from astropy.modeling import models
from gwcs import coordinate_frames as cf
from matplotlib import image as mpimg
from matplotlib.colors import to_rgb
from roman_datamodels import datamodels as rdm

from romosaic import preview
from romosaic.errors import ModelTypeError, RomosaicInputError

PIXEL_SCALE = 0.1 / 3600  # deg
RA0, DEC0 = 150.1, 2.2

# Sources as (x, y, amplitude, sigma) in fractions of the mosaic size, so the
# same scene works at every shape.
SOURCES = [(0.25, 0.6, 400.0, 0.01), (0.7, 0.55, 150.0, 0.02), (0.4, 0.85, 80.0, 0.008)]
# NaN region as fractions (y0, y1, x0, x1): the lower-right corner, as in a
# skycell only partly covered by exposures.
NAN_REGION = (0.0, 0.2, 0.5, 1.0)


def make_tan_gwcs(shape, *, rotation_deg=15.0, bounding_box=False):
    """A north-up-ish TAN gwcs centred on the mosaic, east to the left."""
    ny, nx = shape
    angle = np.deg2rad(rotation_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    transform = (
        models.Shift(-(nx - 1) / 2) & models.Shift(-(ny - 1) / 2)
        | models.Scale(-PIXEL_SCALE) & models.Scale(PIXEL_SCALE)
        | models.AffineTransformation2D(matrix=rotation)
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(RA0, DEC0, 180.0)
    )
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=coordinates.ICRS(), name="icrs", unit=(u.deg, u.deg))
    wcs = gwcs.WCS([(detector, transform), (sky, None)])
    if bounding_box:
        wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return wcs


def make_mosaic(shape=(240, 320), *, sources=True, seed=1):
    """A MosaicModel with a real TAN gwcs, Gaussian sources, noise and a NaN corner."""
    ny, nx = shape
    model = rdm.MosaicModel.create_fake_data(shape=shape)
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 1.0, size=shape)
    if sources:
        y, x = np.mgrid[:ny, :nx]
        size = max(ny, nx)
        for fx, fy, amplitude, fsigma in SOURCES:
            r2 = (x - fx * nx) ** 2 + (y - fy * ny) ** 2
            data += amplitude * np.exp(-r2 / (2 * (fsigma * size) ** 2))
    y0, y1, x0, x1 = NAN_REGION
    data[int(y0 * ny) : int(y1 * ny), int(x0 * nx) : int(x1 * nx)] = np.nan
    model.data = data.astype(np.float32)
    model.meta.wcs = make_tan_gwcs(shape)
    model.meta.instrument.optical_element = "F158"
    return model


@pytest.fixture
def mosaic_file(tmp_path):
    path = tmp_path / "coadd.asdf"
    make_mosaic().save(path)
    return path


def nan_color_mask(png):
    """Pixels of a PNG (as read by imread) drawn in the preview's NaN colour."""
    return np.all(np.abs(png[..., :3] - np.array(to_rgb(preview.NAN_COLOR))) < 1.5 / 255, axis=-1)


# --- asinh_stretch -----------------------------------------------------------


def test_stretch_maps_robust_limits_to_zero_and_one_and_keeps_nan():
    data = np.linspace(0.0, 1000.0, 1001)
    data[::50] = np.nan
    finite = data[np.isfinite(data)]
    low, high = np.percentile(finite, [1.0, 99.5])

    stretched = preview.asinh_stretch(data)

    assert stretched.shape == data.shape
    assert np.array_equal(np.isnan(stretched), np.isnan(data))
    good = np.isfinite(data)
    assert np.all(stretched[good] >= 0.0) and np.all(stretched[good] <= 1.0)
    assert np.all(stretched[good & (data <= low)] == 0.0)
    assert np.all(stretched[good & (data >= high)] == 1.0)
    assert np.all(np.diff(stretched[good]) >= 0.0)
    # Values just inside the limits land just inside [0, 1].
    good_stretched = stretched[good]
    assert 0.0 < good_stretched[np.searchsorted(finite, low) + 2] < 0.05
    assert 0.99 < good_stretched[np.searchsorted(finite, high) - 2] < 1.0


def test_stretch_is_asinh_of_linear_scaling():
    data = np.array([0.0, 25.0, 50.0, 100.0])
    stretched = preview.asinh_stretch(
        data, lower_percentile=0.0, upper_percentile=100.0, softening=0.5
    )
    x = data / 100.0
    np.testing.assert_allclose(stretched, np.arcsinh(x / 0.5) / np.arcsinh(2.0))


def test_stretch_ignores_infinities_for_limits():
    data = np.array([np.inf, -np.inf, 0.0, 1.0, 2.0, np.nan])
    stretched = preview.asinh_stretch(data, lower_percentile=0.0, upper_percentile=100.0)
    assert np.all(np.isnan(stretched[[0, 1, 5]]))
    assert stretched[2] == 0.0 and stretched[4] == 1.0


def test_stretch_all_nan_and_constant_do_not_crash():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        all_nan = preview.asinh_stretch(np.full((4, 5), np.nan, dtype=np.float32))
        constant = preview.asinh_stretch(np.array([[3.0, 3.0], [np.nan, 3.0]]))
        empty = preview.asinh_stretch(np.zeros((0, 3)))
    assert all_nan.shape == (4, 5) and np.all(np.isnan(all_nan))
    np.testing.assert_array_equal(constant, [[0.0, 0.0], [np.nan, 0.0]])
    assert empty.shape == (0, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lower_percentile": 50.0, "upper_percentile": 50.0},
        {"lower_percentile": -1.0},
        {"upper_percentile": 101.0},
        {"softening": 0.0},
        {"softening": np.nan},
    ],
)
def test_stretch_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        preview.asinh_stretch(np.arange(10.0), **kwargs)


# --- block reduction and WCS --------------------------------------------------


def test_block_reduce_nanmean_ignores_nan_and_keeps_partial_blocks():
    data = np.arange(35, dtype=np.float64).reshape(5, 7)
    data[0, 0] = np.nan
    data[3:5, 6] = np.nan
    reduced = preview.block_reduce_nanmean(data, 2, chunk_pixels=8)  # several passes

    assert reduced.shape == (3, 4)
    assert reduced.dtype == np.float32
    assert reduced[0, 0] == pytest.approx((1 + 7 + 8) / 3)
    assert reduced[1, 1] == pytest.approx(data[2:4, 2:4].mean())
    assert reduced[2, 0] == pytest.approx((28 + 29) / 2)  # partial bottom row
    assert reduced[0, 3] == pytest.approx((6 + 13) / 2)  # partial right column
    assert np.isnan(reduced[2, 3])  # the only pixel in the block is NaN


def test_small_mosaic_is_not_reduced():
    model = make_mosaic()
    image = preview.prepare_preview(model, max_pixels=2000)
    assert image.block == 1
    assert image.mosaic_shape == (240, 320)
    np.testing.assert_array_equal(image.data, model.data)
    assert image.wcs is model.meta.wcs


def test_large_mosaic_is_block_reduced():
    model = make_mosaic(shape=(3000, 3000), sources=False)
    image = preview.prepare_preview(model)  # default max_pixels=2000
    assert image.block == 2
    assert image.data.shape == (1500, 1500)
    assert max(image.data.shape) <= preview.DEFAULT_MAX_PIXELS
    np.testing.assert_allclose(
        image.data[700, 900], model.data[1400:1402, 1800:1802].mean(), rtol=1e-6
    )

    image = preview.prepare_preview(model, max_pixels=700)
    assert image.block == 5
    assert image.data.shape == (600, 600)


@pytest.mark.parametrize("block", [1, 2, 3, 8])
def test_preview_wcs_matches_mosaic_gwcs(block):
    ny, nx = 3 * 1000 // 8, 1000
    model = make_mosaic(shape=(ny, nx), sources=False)
    image = preview.prepare_preview(model, max_pixels=-(-nx // block))
    assert image.block == block

    x = np.array([0.0, 10.0, image.data.shape[1] - 1.0, 17.3])
    y = np.array([0.0, image.data.shape[0] - 1.0, 5.0, 20.6])
    ra, dec = image.wcs.pixel_to_world_values(x, y)
    # Preview pixel p is the centre of mosaic pixels block*p ... block*p + block - 1.
    offset = (block - 1) / 2
    ra_ref, dec_ref = model.meta.wcs.pixel_to_world_values(block * x + offset, block * y + offset)
    np.testing.assert_allclose(ra, ra_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dec, dec_ref, rtol=0, atol=1e-6)
    # WCSAxes also goes from the sky to pixels (e.g. for overlays).
    back_x, back_y = image.wcs.world_to_pixel_values(ra_ref, dec_ref)
    np.testing.assert_allclose(back_x, x, atol=1e-6)
    np.testing.assert_allclose(back_y, y, atol=1e-6)


def test_bounding_box_is_rescaled_with_the_blocks(tmp_path):
    model = make_mosaic(shape=(300, 400))
    model.meta.wcs = make_tan_gwcs((300, 400), bounding_box=True)
    image = preview.prepare_preview(model, max_pixels=100)
    assert image.block == 4
    # Mosaic pixel edges -0.5 and 399.5 are preview pixel edges -0.5 and 99.5.
    assert image.wcs.bounding_box.bounding_box(order="F") == ((-0.5, 99.5), (-0.5, 74.5))
    assert image.wcs.array_shape == (75, 100)
    assert np.all(np.isnan(image.wcs.pixel_to_world_values(100.0, 10.0)))
    assert preview.write_preview(model, tmp_path / "bbox.png", max_pixels=100).is_file()


def test_mosaic_without_wcs_previews_in_pixels(tmp_path, caplog):
    model = make_mosaic()
    del model.meta["wcs"]
    with caplog.at_level(logging.WARNING, logger="romosaic.preview"):
        out = preview.write_preview(model, tmp_path / "nowcs.png")
    assert out.is_file()
    assert "no WCS" in caplog.text


# --- write_preview --------------------------------------------------------------


def test_write_preview_writes_png_with_sources_and_nan_colour(mosaic_file, tmp_path):
    out = tmp_path / "preview.png"
    result = preview.write_preview(mosaic_file, out)

    assert result == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = mpimg.imread(out)
    height, width = png.shape[:2]
    # 320 x 240 pixels are magnified to 600 on the long side, plus labelled margins.
    assert 600 < width < 1000
    assert 450 < height < 900
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # Locate the image in the PNG through the NaN rectangle, whose extent in
    # mosaic pixels is known, then compare a source with empty sky.
    ny, nx = 240, 320
    rows, cols = np.nonzero(nan_color_mask(png))
    assert rows.size > 0
    y0, y1, x0, x1 = NAN_REGION
    scale = (cols.max() + 1 - cols.min()) / ((x1 - x0) * nx)
    assert scale == pytest.approx(600 / nx, rel=0.02)

    def png_pixel(x, y):
        column = cols.min() + (x + 0.5 - x0 * nx) * scale
        row = rows.max() + 1 - (y + 0.5 - y0 * ny) * scale  # PNG rows run downwards
        return int(row), int(column)

    brightest_x, brightest_y = SOURCES[0][0] * nx, SOURCES[0][1] * ny
    source = png[png_pixel(brightest_x, brightest_y)][:3].mean()
    sky = np.median([png[png_pixel(x, y)][:3].mean() for x, y in [(40, 40), (100, 20), (40, 100)]])
    assert source > 0.9
    assert source > sky + 0.5


def test_write_preview_default_title_and_metadata(tmp_path):
    model = make_mosaic()
    path = tmp_path / "r0001_f158_coadd.asdf"
    model.save(path)
    out = preview.write_preview(path, tmp_path / "p.png")

    from PIL import Image

    with Image.open(out) as png:
        title = png.info["Title"]
    assert "r0001_f158_coadd.asdf" in title
    assert "F158" in title
    assert "(240, 320)" in title

    out = preview.write_preview(model, tmp_path / "q.png", title="My mosaic")
    with Image.open(out) as png:
        assert png.info["Title"] == "My mosaic"


def test_axes_are_ra_dec():
    image = preview.prepare_preview(make_mosaic())
    figure = preview._draw(np.zeros((*image.data.shape, 4), np.uint8), image.wcs, "t", "c", dpi=100)
    (axes,) = figure.axes
    labels = {axes.coords[i].get_axislabel() for i in range(2)}
    assert labels == {"RA (ICRS)", "Dec (ICRS)"}
    assert axes.wcs is image.wcs


def test_large_mosaic_png_size_is_bounded(tmp_path):
    model = make_mosaic(shape=(900, 1200))
    out = preview.write_preview(model, tmp_path / "big.png", max_pixels=300, dpi=80)
    height, width = mpimg.imread(out).shape[:2]
    # 1200 x 900 averaged in 4 x 4 blocks is 300 x 225, magnified to 600 x 450.
    assert 600 < width < 900
    assert 450 < height < 800


def test_blank_mosaic_warns_and_still_writes(tmp_path, caplog):
    model = make_mosaic(sources=False)
    model.data[...] = np.nan
    with caplog.at_level(logging.WARNING, logger="romosaic.preview"):
        out = preview.write_preview(model, tmp_path / "blank.png")
    assert out.is_file()
    assert "no finite pixels" in caplog.text
    png = mpimg.imread(out)
    assert nan_color_mask(png).sum() > 600 * 400


def test_failed_write_leaves_no_temporary_and_keeps_old_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    out = tmp_path / "p.png"
    out.write_bytes(b"old")

    def broken_savefig(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        preview.write_preview(make_mosaic(), out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


# --- input errors ---------------------------------------------------------------


def test_missing_file_raises_input_error(tmp_path):
    missing = tmp_path / "nope.asdf"
    with pytest.raises(RomosaicInputError, match="nope.asdf") as info:
        preview.write_preview(missing, tmp_path / "p.png")
    assert "not found" in str(info.value)
    assert "\n" not in str(info.value)


def test_wrong_model_type_raises_input_error(tmp_path):
    path = tmp_path / "cal.asdf"
    rdm.ImageModel.create_fake_data(shape=(16, 16)).save(path)
    with pytest.raises(ModelTypeError, match="cal.asdf") as info:
        preview.write_preview(path, tmp_path / "p.png")
    assert isinstance(info.value, RomosaicInputError)
    assert "ImageModel" in str(info.value) and "MosaicModel" in str(info.value)
    assert not (tmp_path / "p.png").exists()

    with pytest.raises(ModelTypeError, match="ImageModel"):
        preview.write_preview(rdm.ImageModel.create_fake_data(shape=(16, 16)), tmp_path / "q.png")


def test_unreadable_file_raises_input_error(tmp_path):
    path = tmp_path / "junk.asdf"
    path.write_text("not asdf at all\nsecond line\n")
    with pytest.raises(RomosaicInputError, match="junk.asdf") as info:
        preview.write_preview(path, tmp_path / "p.png")
    assert "\n" not in str(info.value)


def test_bad_output_and_parameters_raise_input_error(mosaic_file, tmp_path):
    with pytest.raises(RomosaicInputError, match="directory does not exist"):
        preview.write_preview(mosaic_file, tmp_path / "missing" / "p.png")
    with pytest.raises(RomosaicInputError, match="overwrite the input"):
        preview.write_preview(mosaic_file, mosaic_file)
    with pytest.raises(RomosaicInputError, match="max_pixels"):
        preview.write_preview(mosaic_file, tmp_path / "p.png", max_pixels=0)


# --- command line ----------------------------------------------------------------


def _preview_parser():
    parser = argparse.ArgumentParser(prog="romosaic")
    preview.add_cli_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_parser_runs_preview(mosaic_file, tmp_path, capsys):
    out = tmp_path / "cli.png"
    args = _preview_parser().parse_args(
        ["preview", str(mosaic_file), "-o", str(out), "--max-pixels", "100"]
    )
    assert args.max_pixels == 100
    assert args.run(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert mpimg.imread(out).ndim == 3


def test_cli_default_output_replaces_asdf_with_png(mosaic_file, capsys):
    args = _preview_parser().parse_args(["preview", str(mosaic_file)])
    assert args.run(args) == 0
    expected = mosaic_file.with_name("coadd.png")
    assert expected.is_file()
    assert capsys.readouterr().out.strip() == str(expected)


def test_cli_rejects_non_positive_max_pixels(mosaic_file, capsys):
    with pytest.raises(SystemExit) as info:
        _preview_parser().parse_args(["preview", str(mosaic_file), "--max-pixels", "0"])
    assert info.value.code == 2


def _romosaic_cli_available():
    # romosaic.cli imports every sub-command module while building its parser;
    # until all of them exist the full command cannot be exercised.
    from romosaic import cli

    try:
        cli._build_parser()
    except ImportError:
        return False
    return True


needs_full_cli = pytest.mark.skipif(
    not _romosaic_cli_available(), reason="other romosaic sub-command modules missing"
)


@needs_full_cli
def test_romosaic_main_preview(mosaic_file, tmp_path, capsys):
    from romosaic.cli import main

    out = tmp_path / "main.png"
    assert main(["preview", str(mosaic_file), "-o", str(out)]) == 0
    assert out.is_file()
    assert capsys.readouterr().out.strip() == str(out)


@needs_full_cli
def test_romosaic_main_reports_missing_file(tmp_path, capsys):
    from romosaic.cli import main

    missing = tmp_path / "missing.asdf"
    assert main(["preview", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "missing.asdf" in err
    assert len(err.strip().splitlines()) == 1


# -- planes, colour bar and compass -----------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_products(tmp_path_factory):
    """A coadd with its segmentation map, made by the pipeline."""
    from romosaic.pipeline import MosaicPipeline
    from romosaic.simulate import simulate_association

    root = tmp_path_factory.mktemp("preview_planes")
    sim = simulate_association(root / "inputs", n_exposures=2, size=128, seed=8)
    MosaicPipeline.call(str(sim.asn_path), save_results=True, output_dir=str(root))
    return root / f"{sim.product_name}_coadd.asdf"


def _captured_figure(monkeypatch):
    captured = {}
    original = preview._save_png_atomically

    def save(figure, output_path, **kwargs):
        captured["figure"] = figure
        original(figure, output_path, **kwargs)

    monkeypatch.setattr(preview, "_save_png_atomically", save)
    return captured


@pytest.mark.parametrize("plane", list(preview.PLANES))
def test_every_plane_has_its_colour_bar_and_a_compass(plane, pipeline_products, tmp_path,
                                                      monkeypatch):
    captured = _captured_figure(monkeypatch)
    output = preview.write_preview(pipeline_products, tmp_path / f"{plane}.png", plane=plane)
    assert output.is_file()
    figure = captured["figure"]
    image_axes = figure.axes[0]
    labels = [axes.get_ylabel() for axes in figure.axes[1:]]
    if plane == "segm":
        assert labels == []  # labels have no scale
    else:
        assert labels == [preview.PLANES[plane][0]]
    assert {text.get_text() for text in image_axes.texts} - {""} == {"N", "E"}
    assert plane in image_axes.get_title() or plane == "data"


def test_compass_points_north_and_east(pipeline_products, tmp_path, monkeypatch):
    captured = _captured_figure(monkeypatch)
    preview.write_preview(pipeline_products, tmp_path / "c.png")
    axes = captured["figure"].axes[0]
    with rdm.open(pipeline_products) as model:
        image = preview.prepare_preview(model)
    arrows = {text.get_text(): text.get_position() for text in axes.texts}
    # The label sits along its arrow: moving from the compass origin towards
    # it raises the declination for N and the right ascension for E.
    ny, nx = image.data.shape
    origin = (0.2 * nx, 0.82 * ny)
    ra0, dec0 = image.wcs(*origin)
    ra_n, dec_n = image.wcs(*arrows["N"])
    ra_e, dec_e = image.wcs(*arrows["E"])
    assert dec_n > dec0 and abs(dec_e - dec0) < abs(dec_n - dec0) / 10
    assert ((ra_e - ra0 + 180) % 360 - 180) > 0


def test_colour_bar_mapping_inverts_the_stretch():
    mapping = preview._colorbar_mapping("asinh", (1.0, 5.0), "x")
    values = np.array([1.0, 1.5, 3.0, 5.0])
    shown = mapping.norm(values)
    np.testing.assert_allclose(mapping.norm.inverse(shown), values, rtol=1e-9)
    np.testing.assert_allclose(shown[[0, -1]], [0.0, 1.0])
    assert preview._colorbar_mapping("linear", None, "x") is None


def test_planes_that_cannot_be_shown_say_why(pipeline_products, tmp_path):
    with pytest.raises(RomosaicInputError, match="no exposure time"):
        preview.write_preview(make_mosaic(), tmp_path / "e.png", plane="exptime")
    with pytest.raises(RomosaicInputError, match="unknown plane"):
        preview.write_preview(pipeline_products, tmp_path / "x.png", plane="nonsense")
    lonely = tmp_path / "lonely_coadd.asdf"
    lonely.write_bytes(pipeline_products.read_bytes())
    with pytest.raises(RomosaicInputError, match="lonely_segm.asdf"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the copy's recorded file name differs from its own
        preview.write_preview(lonely, tmp_path / "s.png", plane="segm")
    assert not (tmp_path / "e.png").exists() and not (tmp_path / "s.png").exists()


def test_cli_plane_option_names_the_output(pipeline_products, capsys):
    from romosaic.cli import main as romosaic_main

    assert romosaic_main(["preview", str(pipeline_products), "--plane", "context"]) == 0
    expected = pipeline_products.with_name(pipeline_products.stem + "_context.png")
    assert capsys.readouterr().out.strip() == str(expected)
    assert expected.is_file()
