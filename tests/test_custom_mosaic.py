"""Custom mosaics: region choice, grid, naming, products and bad input."""

import hashlib
import json
import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import roman_datamodels.datamodels as rdm

from romosaic.associations import write_association
from romosaic.cli import main as romosaic_main
from romosaic.custom_mosaic import (
    Window,
    bounding_window,
    choose_on_disk,
    coarse_window,
    default_prefix,
    footprint_centre,
    nearest_region,
    perform,
    plan_custom_mosaic,
    read_inputs,
)
from romosaic.pipeline import MosaicPipeline
from romosaic.resample.grid import region_window_grid
from romosaic.simulate import simulate_association
from romosaic.skycell import get_tessellation, skycells_for_image
from romosaic.wcs_utils import footprint, sky_to_unit_vectors

# Skymatch and outlier detection give results that depend on the whole input
# set and on the grid of the outlier median (its weight threshold is
# relative to the window's typical weight), and the catalog is not compared;
# the pixel-equality test skips all three on both sides, so that both
# mosaics start from identical flux-calibrated inputs.
RESAMPLE_ONLY = {"skymatch": {"skip": True}, "outlier_detection": {"skip": True},
                 "source_catalog": {"skip": True}}


# -- grid arithmetic: plain functions ------------------------------------------------


def _region(**fields):
    from types import SimpleNamespace

    return SimpleNamespace(**fields)


def test_default_prefix_spells_region_and_tangent_point():
    assert default_prefix(_region(index=1974, ra_tangent=201.9512, dec_tangent=26.0012)) == \
        "skycell-p1974-ra201d9512-decn26d0012"
    assert default_prefix(_region(index=7, ra_tangent=3.46153846, dec_tangent=-0.5)) == \
        "skycell-p0007-ra003d4615-decs00d5000"
    # Rounding to four decimals carries into the whole degrees.
    assert default_prefix(_region(index=12, ra_tangent=9.99999, dec_tangent=-26.999996)) == \
        "skycell-p0012-ra010d0000-decs27d0000"
    regions = get_tessellation().regions
    assert default_prefix(regions[0]) == "skycell-p0000-ra135d0000-decn90d0000"
    assert default_prefix(regions[-1]) == "skycell-p4057-ra225d0000-decs90d0000"


def test_nearest_region_is_the_closest_tangent_point():
    regions = get_tessellation().regions
    vectors = sky_to_unit_vectors([r.ra_tangent for r in regions],
                                  [r.dec_tangent for r in regions])
    rng = np.random.default_rng(3)
    for ra, dec in zip(rng.uniform(0, 360, 40), np.degrees(np.arcsin(rng.uniform(-1, 1, 40))),
                       strict=True):
        chosen = nearest_region(regions, ra, dec)
        angles = np.arccos(np.clip(vectors @ sky_to_unit_vectors([ra], [dec])[0], -1, 1))
        assert angles[chosen.index] == pytest.approx(angles.min(), abs=1e-12)
    # At a tangent point, its own region.
    assert nearest_region(regions, regions[1974].ra_tangent,
                          regions[1974].dec_tangent).index == 1974


def test_footprint_centre_wraps_through_zero_ra():
    ra, dec = footprint_centre([([358.0, 2.0, 2.0, 358.0], [-1.0, -1.0, 1.0, 1.0])])
    assert min(ra, 360 - ra) < 1e-9
    assert dec == pytest.approx(0.0, abs=1e-9)


def test_bounding_window_holds_whole_pixels_and_reports_clipping():
    region = _region(nx=1000, ny=800)
    # Pixel i spans i - 0.5 ... i + 0.5: edges 99.5 and 200.5 give pixels 100-200.
    inside = ([99.5, 200.5, 200.5, 99.5], [10.2, 10.2, 50.7, 50.7])
    window = bounding_window(region, [inside])
    assert (window.x0, window.nx, window.y0, window.ny) == (100, 101, 10, 42)  # y: 10-51
    assert window.clipped == ()
    beyond = ([950.0, 1100.0], [700.0, 900.0])
    behind = ([np.nan, 1.0], [1.0, 2.0])
    window = bounding_window(region, [inside, beyond, behind])
    assert window.clipped == (1, 2)
    assert (window.x0 + window.nx, window.y0 + window.ny) == (1000, 800)
    with pytest.raises(ValueError, match="no input has any area"):
        bounding_window(region, [([2000.0, 2100.0], [0.0, 10.0]), behind])


def test_coarse_window_is_made_of_aligned_two_by_two_blocks():
    rng = np.random.default_rng(1)
    for _ in range(50):
        fine = Window(x0=int(rng.integers(0, 500)), y0=int(rng.integers(0, 500)),
                      nx=int(rng.integers(1, 300)), ny=int(rng.integers(1, 300)))
        coarse = coarse_window(fine)
        # Covers the fine window, reaching at most one fine pixel beyond each side.
        assert 2 * coarse.x0 <= fine.x0 <= 2 * coarse.x0 + 1
        assert 2 * coarse.y0 <= fine.y0 <= 2 * coarse.y0 + 1
        end_x, end_y = 2 * (coarse.x0 + coarse.nx), 2 * (coarse.y0 + coarse.ny)
        assert fine.x0 + fine.nx <= end_x <= fine.x0 + fine.nx + 1
        assert fine.y0 + fine.ny <= end_y <= fine.y0 + fine.ny + 1


def test_region_window_grids_line_up_with_skycells_and_each_other():
    tessellation = get_tessellation()
    cell = tessellation.skycells_touching([80.0], [-30.0])[0]
    region = cell.region
    # The skycell's pixel (0, 0) is region pixel (x_t - cell x_t, ...): whole numbers.
    dx = region.x_tangent - cell.x_tangent
    dy = region.y_tangent - cell.y_tangent
    assert dx == int(dx) and dy == int(dy)
    x0, y0 = int(dx) + 1234, int(dy) + 777
    fine = region_window_grid(region, x0=x0, y0=y0, nx=3000, ny=2000)
    assert fine.pixel_scale == pytest.approx(0.055)
    for x, y in [(0, 0), (2999, 1999), (100.25, 1500.75)]:
        assert fine.wcs(x, y) == pytest.approx(cell.wcs(x + 1234, y + 777), abs=1e-11)
        ra, dec = region.pixel_to_sky(x + x0, y + y0)
        assert fine.wcs(x, y) == pytest.approx((float(ra), float(dec)), abs=1e-10)
    # A coarse pixel is a 2 x 2 block of region pixels starting on even ones.
    coarse = region_window_grid(region, x0=x0 // 2, y0=y0 // 2, nx=1500, ny=1000, block=2)
    assert coarse.pixel_scale == pytest.approx(0.11)
    for i, j in [(0, 0), (10, 20), (1499, 999)]:
        # Corner (-0.5, -0.5) of coarse pixel (i, j) is the corner of region pixel (2i, 2j).
        corner = coarse.wcs(i - 0.5, j - 0.5)
        rx, ry = 2 * (x0 // 2 + i), 2 * (y0 // 2 + j)
        assert corner == pytest.approx(
            fine.wcs(rx - x0 - 0.5, ry - y0 - 0.5, with_bounding_box=False), abs=1e-11)
        centre = coarse.wcs(i, j)
        assert centre == pytest.approx(
            fine.wcs(rx - x0 + 0.5, ry - y0 + 0.5, with_bounding_box=False), abs=1e-11)


def test_on_disk_decision_follows_the_memory_estimate():
    memory = 24 * 2**30
    assert choose_on_disk(36 * 4088**2, 36, 15000**2, memory)
    assert not choose_on_disk(8 * 512**2, 4, 3000**2, memory)
    # Many groups on a large grid alone tip the balance.
    assert choose_on_disk(4 * 512**2, 40, 15000**2, memory)


# -- simulated data on a corner of four skycells -------------------------------------------


def _corner_of_four_skycells():
    cell = get_tessellation().skycells_touching([80.0], [-30.0])[0]
    region = cell.region
    x = region.x_tangent + 4800 * cell.col + 2400
    y = region.y_tangent + 4800 * cell.row + 2400
    ra, dec = region.pixel_to_sky(x, y)
    return float(ra), float(dec)


def _digest(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def corner_sim(tmp_path_factory):
    ra, dec = _corner_of_four_skycells()
    return simulate_association(tmp_path_factory.mktemp("corner"), n_exposures=3, n_detectors=2,
                                size=256, seed=11, ra=ra, dec=dec, cosmic_ray_rate=0.0)


def test_one_mosaic_equals_the_skycell_mosaics_pixel_for_pixel(corner_sim, tmp_path):
    sim = corner_sim
    before = _digest(sim.cal_paths)
    out = tmp_path / "out"
    # A small memory budget puts the planes in files, drizzled in several strips.
    # Without alignment, as the skycell mosaics it is compared with.
    status = perform([str(p) for p in sim.cal_paths], log_level="info", output_dir=out,
                     steps=RESAMPLE_ONLY, memory_budget=2, align=False)
    assert status == 0
    images = read_inputs(sim.cal_paths)
    plan = plan_custom_mosaic(images)
    region, window = plan.region, plan.window
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{plan.prefix}.log", f"{plan.prefix}_f158_coadd.asdf"]
    assert plan.prefix == default_prefix(region)
    log_text = (out / f"{plan.prefix}.log").read_text()
    strips = int(re.search(r"in (\d+) strip\(s\)", log_text).group(1))
    assert strips > 1

    cells = {c.name: c for p in images for c in skycells_for_image(p.wcs, p.shape)}
    assert len(cells) >= 4
    assert {c.region.index for c in cells.values()} == {region.index}

    with rdm.open(out / f"{plan.prefix}_f158_coadd.asdf") as mosaic:
        assert mosaic.data.shape == (window.ny, window.nx)
        # The WCS is the region's grid, shifted by whole pixels.
        for x, y in [(0, 0), (window.nx - 1, window.ny - 1), (17.25, 300.5)]:
            ra, dec = region.pixel_to_sky(x + window.x0, y + window.y0)
            assert mosaic.meta.wcs(x, y) == pytest.approx((float(ra), float(dec)), abs=1e-10)
        # Every input lies inside the mosaic.
        for image in images:
            x, y = mosaic.meta.wcs.invert(*footprint(image.wcs, image.shape),
                                          with_bounding_box=False)
            assert np.min(x) >= -0.5 and np.max(x) <= window.nx - 0.5
            assert np.min(y) >= -0.5 and np.max(y) <= window.ny - 0.5
        custom = {name: np.array(getattr(mosaic, name)) for name in
                  ("data", "weight", "err", "var_rnoise", "var_poisson")}
        custom_context = np.array(mosaic.context)

    asn = json.loads(sim.asn_path.read_text())
    # Two diagonally opposite skycells (each 5000 x 5000, so a few seconds to
    # make) between them hold every pair of skycell overlaps: the corner
    # square shared by all four, and two of the four bands.
    names = sorted(cells)
    for cell in (cells[names[0]], cells[names[-1]]):
        asn["target"] = cell.name
        asn_path = sim.asn_path.parent / f"cell_{cell.name}_asn.json"
        write_association(asn_path, asn)
        skycell_mosaic, _, _ = MosaicPipeline.call(str(asn_path), steps=RESAMPLE_ONLY)
        # Custom pixel (x, y) is region pixel (x + x0, y + y0); the skycell's
        # pixel (0, 0) is region pixel (x_t - cell x_t, y_t - cell y_t).
        sx = int(region.x_tangent - cell.x_tangent) - window.x0
        sy = int(region.y_tangent - cell.y_tangent) - window.y0
        ys = slice(max(0, sy), min(window.ny, sy + 5000))
        xs = slice(max(0, sx), min(window.nx, sx + 5000))
        cs = (slice(ys.start - sy, ys.stop - sy), slice(xs.start - sx, xs.stop - sx))
        covered = custom["weight"][ys, xs] > 0
        assert covered.sum() > 1000, cell.name
        np.testing.assert_array_equal(np.asarray(skycell_mosaic.weight)[cs] > 0, covered)
        for name, values in custom.items():
            # Equal to float32 rounding: drizzle computes the overlap areas in
            # each grid's own pixel coordinates, so the last bits may differ.
            np.testing.assert_array_max_ulp(
                np.asarray(getattr(skycell_mosaic, name))[cs][covered], values[ys, xs][covered],
                maxulp=8)
        np.testing.assert_array_equal(np.asarray(skycell_mosaic.context)[:, cs[0], cs[1]],
                                      custom_context[:, ys, xs])
    assert _digest(sim.cal_paths) == before


# -- full pipeline: mixed filters, -o, --coarse, the command line --------------------


def test_command_line_mixed_filters_prefix_and_coarse(corner_sim, tmp_path, capsys):
    ra, dec = _corner_of_four_skycells()
    data = corner_sim.asn_path.parent
    other = simulate_association(tmp_path / "f062", n_exposures=2, size=192, seed=12, ra=ra,
                                 dec=dec, filter_name="F062", cosmic_ray_rate=0.0)
    listing = tmp_path / "inputs.txt"
    listing.write_text("# two filters\n" + "\n".join(
        [str(p) for p in corner_sim.cal_paths] + [str(p.relative_to(tmp_path))
                                                  for p in other.cal_paths]) + "\n\n")
    # -o is a path prefix (relative to --output-dir); step options as for strun.
    status = romosaic_main(["custom-mosaic", str(listing), "-o", "products/myfield",
                            "--coarse", "--output-dir", str(tmp_path), "-l", "warning",
                            "--steps.resample.pixfrac=0.8"])
    out = tmp_path / "products"
    assert status == 0, capsys.readouterr().err
    expected = {"myfield.log"}
    for band in ("f062", "f158"):
        for kind in ("", "_coarse"):
            expected |= {f"myfield_{band}{kind}{suffix}"
                         for suffix in ("_coadd.asdf", "_cat.parquet", "_segm.asdf")}
    assert {p.name for p in out.iterdir()} == expected
    # At level warning, neither the screen nor the log file has INFO lines.
    assert "INFO" not in (out / "myfield.log").read_text()
    assert "INFO" not in capsys.readouterr().err

    for band in ("f062", "f158"):
        with rdm.open(out / f"myfield_{band}_coadd.asdf") as fine, \
                rdm.open(out / f"myfield_{band}_coarse_coadd.asdf") as coarse:
            assert isinstance(fine, rdm.MosaicModel) and isinstance(coarse, rdm.MosaicModel)
            assert fine.meta.instrument.optical_element == band.upper()
            assert fine.meta.resample.pixfrac == pytest.approx(0.8)
            assert fine.meta.wcsinfo.pixel_scale_ref * 3600 == pytest.approx(0.055, rel=1e-9)
            assert coarse.meta.wcsinfo.pixel_scale_ref * 3600 == pytest.approx(0.11, rel=1e-9)
            # Coarse pixel (i, j) is a 2 x 2 block of fine pixels: its corners
            # are fine pixel corners.
            def fine_pixel(x, y):
                sky = coarse.meta.wcs(x, y, with_bounding_box=False)
                return fine.meta.wcs.invert(*sky, with_bounding_box=False)

            # The first coarse pixel starts on a fine pixel's edge (or one before
            # the mosaic's first pixel: blocks start on even region pixels).
            start = np.asarray(fine_pixel(-0.5, -0.5)) + 0.5
            assert start == pytest.approx(np.round(start), abs=1e-6)
            assert set(np.round(start)) <= {0.0, -1.0}
            for i, j in [(0, 0), (40, 70), (coarse.data.shape[1] - 1, 3)]:
                assert fine_pixel(i, j) == pytest.approx(
                    (start[0] + 2 * i + 0.5, start[1] + 2 * j + 0.5), abs=1e-6)
            assert 2 * coarse.data.shape[0] - fine.data.shape[0] in (0, 1, 2)
            assert 2 * coarse.data.shape[1] - fine.data.shape[1] in (0, 1, 2)
            # Both hold the same sky: the block-averaged fine image matches the coarse one.
            assert np.nanmedian(coarse.data) == pytest.approx(np.nanmedian(fine.data), rel=0.02)
        for kind in ("", "_coarse"):
            catalog = pq.read_table(out / f"myfield_{band}{kind}_cat.parquet")
            assert catalog.num_rows > 5
            recorded = catalog.schema.metadata[b"roman.meta.filename"]
            assert recorded == f"myfield_{band}{kind}_cat.parquet".encode()
    # One region for both filters: the same grid origin.
    with rdm.open(out / "myfield_f062_coadd.asdf") as a, \
            rdm.open(out / "myfield_f158_coadd.asdf") as b:
        assert a.data.shape == b.data.shape
        assert a.meta.wcs(10, 20) == pytest.approx(b.meta.wcs(10, 20), abs=1e-12)
    assert data.is_dir()


# -- inputs straddling two regions ------------------------------------------------------


@pytest.fixture(scope="module")
def straddling_sim(tmp_path_factory):
    """Exposures across the RA boundary of two regions, near its equatorward end.

    There the region's pixel grid ends just past its RA bound, so the part of
    the exposures in the neighbouring region reaches beyond it.
    """
    tessellation = get_tessellation()
    here = nearest_region(tessellation.regions, 80.0, -30.0)
    ra_bound = here.ra_tangent + 180.0 / here.ring_size
    x_bound, y_bound = here.sky_to_pixel(ra_bound, -29.25)
    ra, dec = here.pixel_to_sky(x_bound - 150, y_bound)
    sim = simulate_association(tmp_path_factory.mktemp("straddle"), n_exposures=2, size=256,
                               seed=5, ra=float(ra), dec=float(dec), roll=0.0,
                               cosmic_ray_rate=0.0)
    return here, sim


def test_straddling_inputs_use_the_nearer_region_and_report_clipping(straddling_sim, tmp_path,
                                                                    capsys):
    here, sim = straddling_sim
    regions = get_tessellation().regions
    images = read_inputs(sim.cal_paths)
    # The exposures lie in two regions.
    touched = set()
    for image in images:
        ra, dec = footprint(image.wcs, image.shape)
        for region in regions[here.index - 1:here.index + 2]:
            if region.contains(ra, dec).any():
                touched.add(region.index)
    assert touched == {here.index, here.index + 1}
    centre = footprint_centre([footprint(i.wcs, i.shape) for i in images])
    distances = {r.index: _angle(centre, (r.ra_tangent, r.dec_tangent)) for r in
                 (regions[here.index], regions[here.index + 1])}
    assert min(distances, key=distances.get) == here.index

    status = perform(str(sim.asn_path.parent / "*_cal.asdf"), output_dir=tmp_path)
    assert status == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("WARNING") and "lose area" in line]
    assert len(warnings) == 1
    assert f"projection region {here.index}" in warnings[0]
    for path in sim.cal_paths:
        assert path.name in warnings[0]
    prefix = default_prefix(here)
    assert "lose area" in (tmp_path / f"{prefix}.log").read_text()
    with rdm.open(tmp_path / f"{prefix}_f158_coadd.asdf") as mosaic:
        plan = plan_custom_mosaic(images)
        # Clipped at the region grid's last column.
        assert plan.window.x0 + plan.window.nx == here.nx
        assert mosaic.data.shape == plan.window.shape
        assert (np.asarray(mosaic.weight)[:, -1] > 0).any()


def _angle(a, b):
    va, vb = sky_to_unit_vectors([a[0], b[0]], [a[1], b[1]])
    return math.degrees(math.acos(min(1.0, float(va @ vb))))


# -- bad input -------------------------------------------------------------------------


def _bad_inputs(tmp_path, corner_sim):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    missing = tmp_path / "missing.txt"
    missing.write_text(f"{corner_sim.cal_paths[0]}\nnot_there_cal.asdf\n")
    text = tmp_path / "notes_cal.asdf"
    text.write_text("these are notes, not ASDF\n")
    not_images = tmp_path / "not_images.txt"
    not_images.write_text(f"{corner_sim.cal_paths[0]}\n{text}\n")
    mosaic = tmp_path / "m_coadd.asdf"
    rdm.MosaicModel.create_fake_data(shape=(8, 8)).save(mosaic)
    mosaic_list = tmp_path / "mosaic.txt"
    mosaic_list.write_text(f"{mosaic}\n")
    return [
        (str(empty), "empty.txt: the list of input files is empty"),
        (str(missing), "not_there_cal.asdf: file not found"),
        (str(tmp_path / "nowhere" / "*_cal.asdf"), "the pattern matches no file"),
        (str(not_images), "notes_cal.asdf: not a readable Roman data file"),
        (str(mosaic_list), "m_coadd.asdf: is a WfiMosaic, not a Level-2 calibrated image"),
    ]


def test_bad_input_fails_with_one_message_and_no_output(corner_sim, tmp_path, capsys):
    for number, (source, message) in enumerate(_bad_inputs(tmp_path, corner_sim)):
        out = tmp_path / f"out{number}"
        assert perform(source, output_dir=out) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "ERROR" in line]
        assert len(errors) == 1, errors
        assert message in errors[0]
        assert not out.exists()
    # The command returns the same status: 2, bad input, as every romosaic command.
    assert romosaic_main(["custom-mosaic", str(tmp_path / "empty.txt")]) == 2
    assert "the list of input files is empty" in capsys.readouterr().err
    # Pipeline options are checked before any work, as by survey run.
    assert romosaic_main(["custom-mosaic", str(tmp_path / "empty.txt"),
                          "--steps.resample.kernel=nonsense"]) == 2
    assert "kernel" in capsys.readouterr().err
    assert romosaic_main(["custom-mosaic", str(tmp_path / "empty.txt"),
                          "--output_dir=elsewhere"]) == 2
    assert "set by `romosaic custom-mosaic` itself" in capsys.readouterr().err


def test_failure_after_planning_leaves_only_the_log(corner_sim, tmp_path, capsys):
    out = tmp_path / "out"
    # A parameter the resample step refuses, found once the pipeline runs.
    status = perform([str(p) for p in corner_sim.cal_paths], output_dir=out,
                     steps={"resample": {"pixfrac": 0.0}})
    assert status == 2  # a parameter value: bad input
    errors = [line for line in capsys.readouterr().err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "pixfrac" in errors[0]
    assert [p.suffix for p in out.iterdir()] == [".log"]
