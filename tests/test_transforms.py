"""Tests of the coordinate transforms (`romosaic.transforms`) and their commands."""

import warnings

import asdf
import numpy as np
import pytest
import roman_datamodels.datamodels as rdm
from astropy.table import Table

from romosaic.cli import main
from romosaic.errors import RomosaicInputError
from romosaic.resample.grid import free_grid
from romosaic.simulate import make_image_models
from romosaic.transforms import (
    OutsideBoundingBoxWarning,
    get_wcs,
    pixtopix,
    pixtosky,
    read_positions,
    skytopix,
)

SIZE = 96


def _separation_arcsec(ra1, dec1, ra2, dec2):
    """Angular separation (haversine, accurate at micro-arcseconds)."""
    ra1, dec1, ra2, dec2 = (np.deg2rad(v) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.rad2deg(2 * np.arcsin(np.sqrt(h))) * 3600


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A distorted Level-2 image and a mosaic grid (half its pixel size, north up) on disk."""
    outdir = tmp_path_factory.mktemp("transforms")
    models, *_ = make_image_models(n_exposures=1, size=SIZE, seed=7, distortion=True,
                                   n_galaxies=0, n_stars=3, noise=False, cosmic_ray_rate=0.0)
    image = models[0]
    image_path = outdir / "image_cal.asdf"
    image.save(image_path)
    grid = free_grid([(image.meta.wcs, image.data.shape)], pixel_scale_ratio=0.5, rotation=0.0)
    mosaic = rdm.MosaicModel.create_fake_data(shape=grid.shape)
    mosaic.meta.wcs = grid.wcs
    mosaic_path = outdir / "mosaic_coadd.asdf"
    mosaic.save(mosaic_path)
    return {"image": image, "image_path": image_path, "mosaic": mosaic,
            "mosaic_path": mosaic_path, "dir": outdir}


def _inside_points(n=200, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.4, size - 0.6, n), rng.uniform(-0.4, size - 0.6, n)


# --- Exactness ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["image", "mosaic"])
def test_sky_pixel_sky_round_trip(files, which):
    model = files[which]
    ny, nx = model.data.shape
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, nx - 1, 300), rng.uniform(0, ny - 1, 300)
    ra, dec = model.meta.wcs(x, y, with_bounding_box=False)
    x1, y1 = skytopix(model, ra, dec)
    ra1, dec1 = pixtosky(model, x1, y1)
    assert np.max(_separation_arcsec(ra, dec, ra1, dec1)) < 1e-6
    assert np.max(np.hypot(x1 - x, y1 - y)) < 1e-6


def test_pixtosky_is_the_gwcs(files):
    image = files["image"]
    x, y = _inside_points()
    ra, dec = pixtosky(image, x, y)
    ra0, dec0 = image.meta.wcs(x, y)
    assert np.array_equal(ra, ra0) and np.array_equal(dec, dec0)


def test_skytopix_beats_the_fitted_inverse(files):
    """The distortion's inverse is a fitted polynomial; skytopix is exact to the forward gwcs."""
    wcs = files["image"].meta.wcs
    x, y = _inside_points(seed=2)
    ra, dec = wcs(x, y)
    xs, ys = skytopix(wcs, ra, dec)
    xi, yi = wcs.invert(ra, dec)
    assert np.max(np.hypot(xs - xi, ys - yi)) < 1e-3  # the same answer...
    assert np.max(np.hypot(xs - x, ys - y)) < 1e-7  # ...made exact
    assert np.max(np.hypot(xs - x, ys - y)) <= np.max(np.hypot(xi - x, yi - y))


def test_files_models_and_wcs_agree(files):
    x, y = _inside_points(20)
    from_model = pixtosky(files["image"], x, y)
    from_file = pixtosky(files["image_path"], x, y)
    from_wcs = pixtosky(get_wcs(files["image_path"]), x, y)
    assert np.array_equal(from_model, from_file)
    assert np.array_equal(from_model, from_wcs)


def test_pixtopix_is_the_composition_both_ways(files):
    image, mosaic = files["image_path"], files["mosaic_path"]
    x, y = _inside_points(100, seed=3)
    xm, ym = pixtopix(image, mosaic, x, y)
    expected = skytopix(mosaic, *pixtosky(image, x, y))
    assert np.array_equal(xm, expected[0]) and np.array_equal(ym, expected[1])
    # The mosaic has half the pixel size: distances double.
    assert np.hypot(xm[1] - xm[0], ym[1] - ym[0]) == pytest.approx(
        2 * np.hypot(x[1] - x[0], y[1] - y[0]), rel=2e-3)
    xb, yb = pixtopix(mosaic, image, xm, ym)
    assert np.max(np.hypot(xb - x, yb - y)) < 1e-6


def test_scalars_origin_and_broadcasting(files):
    image = files["image"]
    ra, dec = pixtosky(image, 10.0, 20.0)
    assert isinstance(ra, float) and isinstance(dec, float)
    assert pixtosky(image, 11.0, 21.0, origin=1) == (ra, dec)
    x, y = skytopix(image, ra, dec, origin=1)
    assert (x, y) == pytest.approx((11.0, 21.0), abs=1e-7)
    ra2, dec2 = pixtosky(image, [[10.0, 30.0]], 20.0)
    assert ra2.shape == (1, 2) and ra2[0, 0] == ra
    with pytest.raises(RomosaicInputError, match="origin"):
        pixtosky(image, 1.0, 1.0, origin=2)


def test_outside_the_bounding_box_is_nan_with_a_warning(files):
    image = files["image"]
    with pytest.warns(OutsideBoundingBoxWarning, match="1 of 3 pixel positions"):
        ra, dec = pixtosky(image, [10.0, SIZE - 0.5, SIZE + 5.0], [10.0, 10.0, 10.0])
    assert np.isfinite(ra[:2]).all() and np.isnan(ra[2]) and np.isnan(dec[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ra_out, dec_out = pixtosky(image, SIZE + 5.0, 10.0, bounding_box=False)
        assert np.isfinite(ra_out)
    with pytest.warns(OutsideBoundingBoxWarning, match="image_cal.asdf"):
        x, y = skytopix(files["image_path"], ra_out, dec_out)
    assert np.isnan(x) and np.isnan(y)
    x, y = skytopix(image, ra_out, dec_out, bounding_box=False)
    assert (x, y) == pytest.approx((SIZE + 5.0, 10.0), abs=1e-6)


# --- Bad input ---------------------------------------------------------------------------


def test_bad_sources_are_one_line_errors(files, tmp_path):
    with pytest.raises(RomosaicInputError, match=r"missing\.asdf: file not found"):
        pixtosky(tmp_path / "missing.asdf", 1, 1)
    junk = tmp_path / "junk.asdf"
    junk.write_text("this is not ASDF\n")
    with pytest.raises(RomosaicInputError, match=r"junk\.asdf: not a readable ASDF file") as error:
        skytopix(junk, 80.0, -30.0)
    assert "\n" not in str(error.value)
    no_wcs = tmp_path / "no_wcs.asdf"
    asdf.AsdfFile({"data": np.zeros(3)}).write_to(no_wcs)
    with pytest.raises(RomosaicInputError, match=r"no_wcs\.asdf: has no WCS"):
        pixtopix(files["image_path"], no_wcs, 1, 1)
    with pytest.raises(RomosaicInputError, match="not a WCS"):
        pixtosky(object(), 1, 1)


# --- Command line ------------------------------------------------------------------------


def test_cli_single_positions(files, capsys):
    image, mosaic = str(files["image_path"]), str(files["mosaic_path"])
    assert main(["pixtosky", image, "10", "20"]) == 0
    printed = Table.read(capsys.readouterr().out, format="ascii.basic")
    assert printed.colnames == ["x", "y", "ra", "dec"]
    ra, dec = pixtosky(files["image"], 10.0, 20.0)
    assert printed["ra"][0] == pytest.approx(ra, abs=1e-10)
    assert printed["dec"][0] == pytest.approx(dec, abs=1e-10)

    assert main(["skytopix", image, repr(ra), repr(dec), "--origin", "1"]) == 0
    printed = Table.read(capsys.readouterr().out, format="ascii.basic")
    assert (printed["x"][0], printed["y"][0]) == pytest.approx((11.0, 21.0), abs=1e-5)

    assert main(["pixtopix", image, mosaic, "10", "20"]) == 0
    printed = Table.read(capsys.readouterr().out, format="ascii.basic")
    expected = pixtopix(image, mosaic, 10.0, 20.0)
    assert (printed["x_out"][0], printed["y_out"][0]) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("extension", ["ecsv", "csv", "parquet"])
def test_cli_tables(files, tmp_path, capsys, extension):
    image, mosaic = str(files["image_path"]), str(files["mosaic_path"])
    x, y = _inside_points(5, seed=4)
    ra, dec = pixtosky(image, x, y)
    table_in = tmp_path / f"stars.{extension}"
    Table({"id": np.arange(5), "RA_deg": ra, "Dec_deg": dec}).write(table_in)
    out = tmp_path / f"pixels.{extension}"
    assert main(["skytopix", mosaic, "--table", str(table_in), "--columns", "RA_deg", "Dec_deg",
                 "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    result, *_ = read_positions(out, ("x", "y"))  # astropy's Parquet reader needs pandas
    assert result.colnames == ["id", "RA_deg", "Dec_deg", "x", "y"]
    expected = pixtopix(image, mosaic, x, y)
    assert np.allclose(result["x"], expected[0], rtol=0, atol=1e-9)
    assert np.allclose(result["y"], expected[1], rtol=0, atol=1e-9)

    # The written table feeds the next command: mosaic pixels back to the image.
    assert main(["pixtopix", mosaic, image, "--table", str(out),
                 "--output-columns", "x_image", "y_image"]) == 0
    printed = Table.read(capsys.readouterr().out, format="ascii.basic")
    assert np.allclose(printed["x_image"], x, atol=1e-5)
    assert np.allclose(printed["y_image"], y, atol=1e-5)


def test_cli_warns_outside(files, capsys):
    assert main(["pixtosky", str(files["image_path"]), "500", "3"]) == 0
    captured = capsys.readouterr()
    assert "romosaic pixtosky: warning: 1 of 1 pixel positions are outside" in captured.err
    assert "nan" in captured.out.lower()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["pixtosky", "{dir}/missing_cal.asdf", "1", "2"], "missing_cal.asdf: file not found"),
        (["pixtosky", "{image}", "1"], "give a position (two numbers) or --table FILE"),
        (["pixtosky", "{image}", "one", "2"], "X must be a number, not 'one'"),
        (["skytopix", "{image}", "--table", "{dir}/t.xyz"], "t.xyz: file not found"),
        (["skytopix", "{image}", "--table", "{table}"], "no column 'ra' (columns: a, b)"),
        (["pixtosky", "{image}", "--table", "{table}", "--columns", "a", "b",
          "--output-columns", "a", "dec"], "already has a column 'a'"),
        (["pixtosky", "{image}", "1", "2", "-o", "{dir}/out.xlsx"], "unknown table format"),
        (["pixtopix", "{image}", "{table}", "1", "2"], "not a readable ASDF file"),
    ],
)
def test_cli_bad_input(files, capsys, arguments, message):
    table = files["dir"] / "ab.ecsv"
    if not table.exists():
        Table({"a": [1.0], "b": [2.0]}).write(table)
    names = {"dir": files["dir"], "image": files["image_path"], "table": table}
    assert main([a.format(**names) for a in arguments]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"romosaic {arguments[0]}: error: ")
    assert message in err
