"""``romosaic export-fits``: mosaics and catalogs as FITS, read back with astropy."""

import math

import numpy as np
import pandas
import pytest
import roman_datamodels.datamodels as rdm
from astropy.coordinates import angular_separation
from astropy.io import fits
from astropy.modeling import models
from astropy.table import Table
from astropy.wcs import WCS

from romosaic import cli
from romosaic.errors import ModelTypeError, RomosaicInputError
from romosaic.export_fits import (
    export_fits,
    fits_wcs_header,
    measure_wcs_accuracy,
)
from romosaic.mosaic_planes import contributing_inputs
from romosaic.pipeline import MosaicPipeline
from romosaic.resample import exposure_time_map
from romosaic.simulate import simulate_association


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    """A small pipeline run: coadd, catalog and segmentation map."""
    sim = simulate_association(tmp_path_factory.mktemp("sim"), n_exposures=2, size=160, seed=11)
    out = tmp_path_factory.mktemp("products")
    MosaicPipeline.call(str(sim.asn_path), save_results=True, output_dir=str(out))
    return sim, out / f"{sim.product_name}_coadd.asdf", out / f"{sim.product_name}_cat.parquet"


def _exported(products, tmp_path, **kwargs):
    _, coadd, _ = products
    return export_fits(coadd, tmp_path / "mosaic.fits", **kwargs)


def _sky_error_pixels(gwcs_obj, fits_wcs, x, y, scale_deg):
    ra, dec = gwcs_obj(x, y, with_bounding_box=False)
    fits_ra, fits_dec = fits_wcs.pixel_to_world_values(x, y)
    separation = np.degrees(angular_separation(*np.radians([ra, dec, fits_ra, fits_dec])))
    back_x, back_y = fits_wcs.world_to_pixel_values(ra, dec)
    return separation.max() / scale_deg, np.hypot(back_x - x, back_y - y).max()


def _edge_grid(nx, ny, n):
    # Not the grid export_fits checks on (101 points), so this is an independent check.
    x, y = np.meshgrid(np.linspace(-0.5, nx - 0.5, n), np.linspace(-0.5, ny - 0.5, n))
    corners = np.array([[-0.5, -0.5], [nx - 0.5, -0.5], [-0.5, ny - 0.5], [nx - 0.5, ny - 0.5],
                        [0, 0], [nx - 1, ny - 1]], float)
    return np.r_[x.ravel(), corners[:, 0]], np.r_[y.ravel(), corners[:, 1]]


def test_arrays_and_metadata_round_trip(products, tmp_path):
    _, coadd, _ = products
    result = _exported(products, tmp_path)
    assert result.image == tmp_path / "mosaic.fits" and result.catalog is None
    with rdm.open(coadd) as model, fits.open(result.image) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "SCI", "ERR", "WHT", "EXPMAP", "NINPUTS",
                                          "CON"]
        np.testing.assert_array_equal(hdus["SCI"].data, model.data)
        np.testing.assert_array_equal(hdus["ERR"].data, model.err)
        np.testing.assert_array_equal(hdus["WHT"].data, model.weight)
        assert hdus["CON"].data.dtype == np.uint32
        np.testing.assert_array_equal(hdus["CON"].data, model.context)
        exptimes = list(model.meta.individual_image_meta["exposure"]["exposure_time"])
        expmap = hdus["EXPMAP"].data
        np.testing.assert_array_equal(expmap, exposure_time_map(model.context, exptimes))
        assert expmap.max() == pytest.approx(model.meta.coadd_info.max_exposure_time)
        ninputs = hdus["NINPUTS"].data
        assert ninputs.max() == 2 and (ninputs == 0).sum() < ninputs.size
        np.testing.assert_array_equal(ninputs > 0, model.context[0] > 0)

        primary = hdus[0].header
        assert primary["TELESCOP"] == "ROMAN" and primary["INSTRUME"] == "WFI"
        assert primary["FILTER"] == "F158" and primary["NCOMBINE"] == 2
        assert primary["FILENAME"] == coadd.name
        assert primary["EXPTIME"] == pytest.approx(model.meta.coadd_info.exposure_time)
        assert primary["DATE-BEG"].startswith(str(model.meta.coadd_info.time_first)[:19])
        for index, member in enumerate(model.meta.resample.members):
            assert primary[f"MEMB{index}"] == member
        assert hdus["SCI"].header["BUNIT"] == "MJy/sr"
        assert hdus["ERR"].header["BUNIT"] == "MJy/sr"
        assert hdus["EXPMAP"].header["BUNIT"] == "s"
        assert hdus["SCI"].header["FILTER"] == "F158"
        # The AB zero point turns a sum of SCI pixels into the AB magnitude of its flux.
        flux_jy = 1e6 * primary["PIXAR_SR"]
        assert primary["ABZP"] == pytest.approx(-2.5 * math.log10(flux_jy / 3631.0))
        assert primary["PIXSCALE"] == pytest.approx(model.meta.wcsinfo.pixel_scale * 3600,
                                                    rel=1e-6)


def test_fits_wcs_matches_the_gwcs_over_the_whole_image(products, tmp_path):
    _, coadd, _ = products
    result = _exported(products, tmp_path)
    with rdm.open(coadd) as model, fits.open(result.image) as hdus:
        ny, nx = model.data.shape
        header = hdus["SCI"].header
        # A plain TAN: no polynomial needed once CRPIX is the tangent point.
        assert header["CTYPE1"] == "RA---TAN" and "A_ORDER" not in header
        fits_wcs = WCS(header)
        x, y = _edge_grid(nx, ny, 37)
        sky, round_trip = _sky_error_pixels(model.meta.wcs, fits_wcs, x, y,
                                            model.meta.wcsinfo.pixel_scale)
        assert sky < 1e-6 and round_trip < 1e-6
        assert header["WCSERR"] < 1e-6 and header["WCSRTERR"] < 1e-6
        assert result.wcs_accuracy.max_error < 1e-6
        # The context cube's first two axes have the same celestial WCS.
        cube = WCS(hdus["CON"].header)
        assert cube.naxis == 3
        np.testing.assert_allclose(cube.celestial.pixel_to_world_values(x, y),
                                   fits_wcs.pixel_to_world_values(x, y), rtol=0, atol=1e-12)


def _tan_gwcs(nx, ny, *, crpix, distortion=None):
    import gwcs
    from astropy import coordinates
    from gwcs import coordinate_frames as cf

    scale = 0.11 / 3600
    pixel = models.Shift(-crpix[0]) & models.Shift(-crpix[1])
    if distortion is not None:
        pixel = pixel | distortion
    transform = (pixel | models.Scale(scale) & models.Scale(scale)
                 | models.Rotation2D(30.0) | models.Pix2Sky_TAN()
                 | models.RotateNative2Celestial(80.0, -30.0, 180.0))
    detector = cf.Frame2D(name="detector")
    sky = cf.CelestialFrame(reference_frame=coordinates.ICRS(), name="world")
    wcs = gwcs.WCS([(detector, transform), (sky, None)])
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return wcs


def test_skycell_sized_tan_far_from_its_tangent_point_is_exact():
    # A skycell of a projection region: 5000 pixels, tangent point off the image.
    wcs = _tan_gwcs(5000, 5000, crpix=(-2000.0, 7000.0))
    header, accuracy = fits_wcs_header(wcs, (5000, 5000), tangent_point=(80.0, -30.0))
    assert header["CTYPE1"] == "RA---TAN" and accuracy.sip_degree == 0
    x, y = _edge_grid(5000, 5000, 53)
    sky, round_trip = _sky_error_pixels(wcs, WCS(header), x, y, 0.11 / 3600)
    assert sky < 1e-6 and round_trip < 1e-6
    assert accuracy.max_error < 1e-6
    # Without the tangent point the reference pixel is the image centre, where
    # a TAN differs at second order: SIP terms make up for it.
    header, accuracy = fits_wcs_header(wcs, (5000, 5000))
    assert header["CTYPE1"] == "RA---TAN-SIP" and accuracy.sip_degree >= 2
    sky, round_trip = _sky_error_pixels(wcs, WCS(header), x, y, 0.11 / 3600)
    assert max(sky, round_trip) < 0.01


def test_distorted_wcs_gets_sip_within_the_requested_error():
    distortion = models.Mapping((0, 1, 0, 1)) | (
        models.Polynomial2D(2, c0_0=0, c1_0=1, c2_0=2e-5, c0_2=-1e-5)
        & models.Polynomial2D(2, c0_0=0, c0_1=1, c1_1=3e-5))
    wcs = _tan_gwcs(1200, 900, crpix=(600.0, 450.0), distortion=distortion)
    header, accuracy = fits_wcs_header(wcs, (900, 1200), max_error=0.001,
                                       tangent_point=(80.0, -30.0))
    assert header["CTYPE1"] == "RA---TAN-SIP" and accuracy.sip_degree >= 2
    x, y = _edge_grid(1200, 900, 61)
    sky, round_trip = _sky_error_pixels(wcs, WCS(header), x, y, 0.11 / 3600)
    # 2e-5 px^-1 x 600^2 px: the distortion moves the corners by several pixels.
    plain_sky, _ = _sky_error_pixels(_tan_gwcs(1200, 900, crpix=(600.0, 450.0)), WCS(header),
                                     x, y, 0.11 / 3600)
    assert plain_sky > 1
    assert sky < 0.001 and round_trip < 0.001
    assert measure_wcs_accuracy(wcs, header, (900, 1200)) == accuracy


def test_a_wcs_fits_cannot_represent_is_a_one_line_error():
    # A wave along x no polynomial of degree 9 follows to a micro-pixel.
    sine = models.Sine1D(amplitude=0.5, frequency=1 / 37)
    wave = (models.Identity(1) + sine) & models.Identity(1)
    wcs = _tan_gwcs(400, 400, crpix=(200.0, 200.0), distortion=wave)
    with pytest.raises(RomosaicInputError, match="max-wcs-error") as error:
        fits_wcs_header(wcs, (400, 400), max_error=1e-6)
    assert "\n" not in str(error.value)


def test_contributing_inputs_counts_bits_across_planes():
    context = np.zeros((2, 1, 3), np.uint32)
    context[0, 0] = [0, 0xFFFFFFFF, 5]
    context[1, 0] = [1, 1, 0]
    assert contributing_inputs(context).tolist() == [[1, 33, 2]]


def test_catalog_as_fits_table(products, tmp_path):
    _, coadd, catalog = products
    result = _exported(products, tmp_path, catalog=True)
    assert result.catalog == tmp_path / catalog.with_suffix(".fits").name
    parquet = Table.read(catalog)
    table = Table.read(result.catalog)
    assert table.colnames == parquet.colnames and len(table) == len(parquet) > 0
    np.testing.assert_array_equal(table["kron_flux"], parquet["kron_flux"])
    assert table["kron_flux"].unit == "nJy" and table["ra_centroid"].unit == "deg"
    assert table["kron_abmag"].unit == "mag"
    with fits.open(result.catalog) as hdus:
        header = hdus["CATALOG"].header
        index = parquet.colnames.index("kron_flux") + 1
        assert header[f"TCOMM{index}"] == parquet["kron_flux"].description
        abmag = parquet.colnames.index("kron_abmag") + 1
        assert "AB" in header[f"TCOMM{abmag}"]
        assert header["source_catalog.flux_unit"] == "nJy"
        assert header["FILTER"] == "F158" and hdus[0].header["FILENAME"] == coadd.name


def test_catalog_opens_in_astropy_and_pandas(products):
    # Both need pandas: astropy's Parquet reader refuses to run without it.
    _, _, catalog = products
    table = Table.read(catalog)
    assert table["kron_flux"].unit == "nJy" and table["ra_centroid"].unit == "deg"
    assert "Kron" in table["kron_flux"].description
    frame = pandas.read_parquet(catalog)
    assert list(frame.columns) == table.colnames
    np.testing.assert_array_equal(frame["kron_flux"].to_numpy(), np.asarray(table["kron_flux"]))


def test_cli_writes_beside_the_input_and_prints_paths(products, tmp_path, capsys):
    _, coadd, catalog = products
    for source in (coadd, catalog):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    local = tmp_path / coadd.name
    assert cli.main(["export-fits", str(local), "--catalog"]) == 0
    printed = capsys.readouterr().out.split()
    expected = [local.with_suffix(".fits"), tmp_path / catalog.with_suffix(".fits").name]
    assert printed == [str(p) for p in expected]
    assert all(p.is_file() for p in expected)
    # Nothing else is left behind: no temporary files.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [coadd.name, catalog.name] + [p.name for p in expected])


@pytest.mark.parametrize("case", ["missing", "not_mosaic", "overwrite", "no_dir",
                                  "no_catalog", "bad_error"])
def test_bad_input_is_a_one_line_error_naming_the_file(products, tmp_path, capsys, case):
    sim, coadd, _ = products
    args = {
        "missing": ([str(tmp_path / "nope_coadd.asdf")], "nope_coadd.asdf: file not found"),
        "not_mosaic": ([str(sim.cal_paths[0])], "not a mosaic"),
        "overwrite": ([str(coadd), "-o", str(coadd)], "would overwrite the input"),
        "no_dir": ([str(coadd), "-o", str(tmp_path / "a" / "b.fits")], "does not exist"),
        "no_catalog": ([str(coadd), "-o", str(tmp_path / "x.fits"), "--catalog",
                        str(tmp_path / "cat.parquet")], "cat.parquet: file not found"),
        "bad_error": ([str(coadd), "-o", str(tmp_path / "x.fits"), "--max-wcs-error", "1e-12"],
                      "max-wcs-error"),
    }[case]
    before = sorted(coadd.parent.iterdir())
    status = cli.main(["export-fits", *args[0]])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("romosaic export-fits: error: ") and err.count("\n") == 1
    assert args[1] in err
    assert sorted(coadd.parent.iterdir()) == before
    assert not list(tmp_path.glob("*.fits"))


def test_python_api_raises_the_typed_errors(products, tmp_path):
    sim, coadd, _ = products
    with pytest.raises(ModelTypeError, match=sim.cal_paths[0].name):
        export_fits(sim.cal_paths[0], tmp_path / "x.fits")
    with pytest.raises(RomosaicInputError, match="positive number"):
        export_fits(coadd, tmp_path / "x.fits", max_wcs_error=0)
