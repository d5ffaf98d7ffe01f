"""The sky tessellation: conformance with the published table, geometry, lookups."""

import warnings

import numpy as np
import pytest

from romosaic.skycell import (
    ComputedTessellation,
    SkycellNotFoundError,
    get_tessellation,
    skycells_for_image,
)
from romosaic.skycell.table import TableTessellation
from romosaic.wcs_utils import affine_tan_wcs, cd_from_orientation, footprint


@pytest.fixture(scope="module")
def tessellation():
    return ComputedTessellation()


@pytest.fixture(scope="module")
def published(shared_fixtures_dir):
    import asdf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with asdf.open(shared_fixtures_dir / "skymap_subset.asdf", lazy_load=False) as af:
            regions = np.asarray(af["roman"]["projection_regions"]).copy()
            cells = np.asarray(af["roman"]["skycells"]).copy()
    return regions, cells


@pytest.fixture(scope="module")
def shared_fixtures_dir():
    from .conftest import require_shared_fixtures

    return require_shared_fixtures()


def _wrapped(a, b):
    return np.abs((np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0)


# -- conformance with the published table ------------------------------------------


def test_region_table_identical(tessellation, published):
    regions, _ = published
    for row in regions:
        region = tessellation.region(row["index"])
        start, end = tessellation.skycell_range(region.index)
        mine = {
            "index": region.index, "ra_tangent": region.ra_tangent,
            "dec_tangent": region.dec_tangent, "ra_min": region.ra_min, "ra_max": region.ra_max,
            "dec_min": region.dec_min, "dec_max": region.dec_max, "orientat": region.orientat,
            "x_tangent": region.x_tangent, "y_tangent": region.y_tangent, "nx": region.nx,
            "ny": region.ny, "skycell_start": start, "skycell_end": end,
        }
        for field, value in mine.items():
            assert value == row[field], (row["index"], field, value, row[field])


def test_skycells_match_published_rows(tessellation, published):
    regions, cells = published
    for row in regions:
        ours = tessellation.region_cells(row["index"])
        theirs = cells[row["skycell_start"]:row["skycell_end"]]
        assert list(ours.names) == list(theirs["name"].astype(str))
        x_tangent = [ours.skycell(i).x_tangent for i in range(len(ours))]
        y_tangent = [ours.skycell(i).y_tangent for i in range(len(ours))]
        assert np.array_equal(x_tangent, theirs["x_tangent"])
        assert np.array_equal(y_tangent, theirs["y_tangent"])
        assert _wrapped(ours.ra_center, theirs["ra_center"]).max() < 1e-8
        assert np.abs(ours.dec_center - theirs["dec_center"]).max() < 1e-8
        for corner in range(4):
            assert _wrapped(ours.corners[:, corner, 0], theirs[f"ra_corn{corner + 1}"]).max() < 1e-8
            assert np.abs(ours.corners[:, corner, 1] - theirs[f"dec_corn{corner + 1}"]).max() < 1e-8
        orientat = [ours.skycell(i).orientat for i in range(len(ours))]
        assert _wrapped(orientat, theirs["orientat"]).max() < 1e-5  # stored as float32


# The fixture names the roman_datamodels extension it was written with, a
# development version this environment does not have; the table is plain.
@pytest.mark.filterwarnings("ignore::asdf.exceptions.AsdfPackageVersionWarning")
def test_table_backend_answers_like_the_formula(tessellation, published, shared_fixtures_dir,
                                                monkeypatch):
    monkeypatch.setenv("SKYMAP_PATH", str(shared_fixtures_dir / "skymap_subset.asdf"))
    table = get_tessellation()
    assert isinstance(table, TableTessellation)
    for name in ("135p90x25y49", "000p86x25y47", "000p86x76y60", "135p90x50y50"):
        a, b = table.skycell(name), tessellation.skycell(name)
        assert (a.x_tangent, a.y_tangent, a.region.index) == (b.x_tangent, b.y_tangent,
                                                            b.region.index)
        assert abs(a.ra_center - b.ra_center) % 360 < 1e-8
        assert a.wcs(100.0, 200.0) == pytest.approx(b.wcs(100.0, 200.0), abs=1e-10)
    cell = tessellation.skycell("000p86x40y50")
    ra, dec = footprint(cell.wcs, cell.shape)
    from_table = [c.name for c in table.skycells_touching(ra, dec)]
    computed = [c.name for c in tessellation.skycells_touching(ra, dec)
                if c.region.index in (0, 1)]
    assert from_table == computed and "000p86x40y50" in from_table
    with pytest.raises(SkycellNotFoundError):
        table.skycell("000p86x99y50")


# -- published rows and geometry elsewhere on the sky --------------------------------


def test_published_rows_mid_declination_and_pole(tessellation):
    cell = tessellation.skycell("270p65x70y49")
    assert (cell.ra_center, cell.dec_center) == pytest.approx((269.8193, 66.0686), abs=5e-5)
    assert (cell.x_tangent, cell.y_tangent) == (7299.5, -93500.5)
    polar = tessellation.skycell("135p90x36y50")
    assert (polar.ra_center, polar.dec_center) == pytest.approx((135.0, 88.9734), abs=5e-5)
    ra0, _ = polar.wcs(0.0, 0.0)
    assert float(ra0) == pytest.approx(132.946, abs=5e-4)


@pytest.mark.parametrize("ra, dec", [(80.0, -30.0), (201.9512, 26.0012), (12.3, -67.5),
                                     (300.0, 0.0), (0.0005, 45.0), (359.9995, -45.0)])
def test_every_position_has_a_region_and_skycell(tessellation, ra, dec):
    region = tessellation.region_for(ra, dec)
    assert region.contains(ra, dec)
    # A point's skycells all contain it, and their names resolve back to them.
    cells = tessellation.skycells_touching([ra], [dec])
    assert cells
    for cell in cells:
        x, y = cell.wcs.invert(ra, dec, with_bounding_box=False)
        assert -0.5 <= x <= 4999.5 and -0.5 <= y <= 4999.5
        again = tessellation.skycell(cell.name)
        assert again.wcs(0.0, 0.0) == pytest.approx(cell.wcs(0.0, 0.0), abs=1e-12)
    sign = "m" if dec < 0 else "p"
    assert any(c.name[3] == sign for c in cells)


def test_ra_wrap_at_zero(tessellation):
    # A footprint straddling RA 0 on the equator: the ring's first region
    # spans 358.3°-1.7°, so its cells lie on both sides of 0°.
    ra = np.array([359.95, 0.05, 0.05, 359.95])
    dec = np.array([-0.01, -0.01, 0.01, 0.01])
    cells = tessellation.skycells_touching(ra, dec)
    ring = [r for r in tessellation.regions if r.dec_tangent == 0.0]
    assert {c.region.index for c in cells} == {ring[0].index}
    assert ring[0].ra_min > ring[0].ra_max  # 358.27 ... 1.73
    assert any(c.ra_center > 359.0 for c in cells) and any(c.ra_center < 1.0 for c in cells)
    assert all(c.name.startswith("000p00") for c in cells)
    assert tessellation.region_for(359.999, 0.0) is ring[0]
    assert tessellation.region_for(358.0, 0.0) is ring[-1]
    for cell in cells:
        x, y = cell.wcs.invert(ra, dec, with_bounding_box=False)
        assert x.max() >= -0.5 and x.min() <= 4999.5 and y.max() >= -0.5 and y.min() <= 4999.5


def test_polar_caps(tessellation):
    north = tessellation.region_for(17.0, 89.9)
    south = tessellation.region_for(17.0, -89.9)
    assert (north.index, south.index) == (0, 4057)
    assert (north.ra_tangent, north.dec_tangent) == (135.0, 90.0)
    assert (south.ra_tangent, south.dec_tangent) == (225.0, -90.0)
    south_cell = tessellation.skycells_touching([17.0], [-89.9])[0]
    assert south_cell.name.startswith("225m90")
    assert tessellation.skycell(south_cell.name).dec_center < -89.0
    assert len(tessellation.region_cells(0)) == len(tessellation.region_cells(4057)) == 1985


def test_unknown_names_are_clear_errors(tessellation):
    for name, message in [("270p65x99y49", "does not exist"), ("123p45x50y50", "no projection"),
                          ("M31", "not a skycell name")]:
        with pytest.raises(SkycellNotFoundError, match=message):
            tessellation.skycell(name)


def test_detector_footprint_search_matches_brute_force(tessellation):
    # A 4088² detector at 0.11": every skycell it touches, and only those.
    shape = (4088, 4088)
    wcs = affine_tan_wcs(crval=(80.02, -30.01), crpix=(2043.5, 2043.5),
                         cd=cd_from_orientation(0.11 / 3600, 33.0), shape=shape)
    found = {c.name for c in skycells_for_image(wcs, shape, tessellation=tessellation)}
    # Brute force: sample the detector every 16 pixels and find, in the plane
    # of each nearby region, which cells' 5000-pixel boxes hold the samples.
    y, x = np.mgrid[0:4088:16, 0:4088:16]
    ra, dec = wcs(x.ravel().astype(float), y.ravel().astype(float))
    sampled = set()
    for region in tessellation.regions:
        if not (region.dec_min - 0.2 <= -30.01 <= region.dec_max + 0.2):
            continue
        if _wrapped(region.ra_tangent, 80.02) > 360.0 / region.ring_size:
            continue
        px, py = region.sky_to_pixel(ra, dec)
        cells = tessellation.region_cells(region.index)
        for i in range(len(cells)):
            cx = region.x_tangent + 4800 * cells.cols[i]
            cy = region.y_tangent + 4800 * cells.rows[i]
            if np.any((np.abs(px - cx) <= 2500) & (np.abs(py - cy) <= 2500)):
                sampled.add(str(cells.names[i]))
    assert sampled <= found
    # Anything extra may only touch the detector's outer 16-pixel sampling gap.
    assert len(found - sampled) <= 2, found - sampled


@pytest.mark.slow
def test_whole_sky_totals():
    tessellation = ComputedTessellation(cache_regions=1)
    counts = [len(tessellation.region_cells(i)) for i in range(len(tessellation.regions))]
    assert len(counts) == 4058
    assert sum(counts) == 8_045_034
    assert (min(counts), max(counts)) == (1927, 2021)


def test_find_skycells_near_a_position():
    from romosaic.cli import main as romosaic_main
    from romosaic.skycell import find_skycells_near, get_tessellation

    cell = get_tessellation().skycell("270p65x70y49")
    found = find_skycells_near(cell.ra_center, cell.dec_center)
    assert [(c.name, inside) for c, _, inside in found] == [("270p65x70y49", True)]
    x, y = found[0][1]
    assert abs(x - 2499.5) < 2 and abs(y - 2499.5) < 2
    # Near the edge, in the band where neighbouring cells overlap: both hold it.
    ra, dec = cell.wcs(4980.0, 2500.0)
    holding = [c.name for c, _, inside in find_skycells_near(float(ra), float(dec)) if inside]
    assert "270p65x70y49" in holding and len(holding) == 2
    # A radius brings in the cells around, listed after those holding the position.
    near = find_skycells_near(cell.ra_center, cell.dec_center, radius_arcsec=200)
    assert len(near) == 9 and near[0][0].name == "270p65x70y49"
    assert [inside for _, _, inside in near[1:]] == [False] * 8
    # The command: one line per cell; bad use is status 2.
    assert romosaic_main(["skycell", "find", "--ra", str(cell.ra_center),
                          "--dec", str(cell.dec_center)]) == 0
    assert romosaic_main(["skycell", "find", "--ra", "10"]) == 2
    assert romosaic_main(["skycell", "find", "--ra", "10", "--dec", "95"]) == 2
