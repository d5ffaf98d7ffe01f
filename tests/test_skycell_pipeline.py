"""Mosaics on skycell grids, and skycell associations, on simulated data."""

import json
import logging
import math
import subprocess

import numpy as np
import pytest
import roman_datamodels.datamodels as rdm

from romosaic.associations import write_association
from romosaic.cli import main as romosaic_main
from romosaic.errors import RomosaicInputError
from romosaic.pipeline import MosaicPipeline
from romosaic.resample.engine import data_window
from romosaic.resample.grid import skycell_grid
from romosaic.simulate import simulate_association
from romosaic.skycell import ComputedTessellation, get_tessellation

from .test_pipeline import STRUN


def _cell_near(ra, dec):
    tessellation = get_tessellation()
    cells = tessellation.skycells_touching([ra], [dec])
    return min(cells, key=lambda c: (c.ra_center - ra) ** 2 + (c.dec_center - dec) ** 2)


def _asn_with_target(sim, target, name="target"):
    asn = json.loads(sim.asn_path.read_text())
    asn["target"] = target
    path = sim.asn_path.parent / f"{name}_asn.json"
    write_association(path, asn)
    return path


@pytest.fixture(scope="module")
def skycell_sim(tmp_path_factory):
    cell = _cell_near(80.0, -30.0)
    sim = simulate_association(tmp_path_factory.mktemp("skycell"), n_exposures=2, size=384,
                               seed=21, ra=cell.ra_center, dec=cell.dec_center, noise=False,
                               cosmic_ray_rate=0.0, sky_levels=[0.8, 0.8])
    return cell, sim


def test_strun_onto_a_mid_declination_skycell(skycell_sim, tmp_path, clean_env):
    cell, sim = skycell_sim
    asn_path = _asn_with_target(sim, cell.name)
    run = subprocess.run([STRUN, "roman_mos", str(asn_path), "--output_dir", str(tmp_path)],
                         env=clean_env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    with rdm.open(tmp_path / "sim_f158_coadd.asdf") as mosaic:
        assert mosaic.data.shape == (5000, 5000)
        assert mosaic.meta.wcsinfo.skycell_name == cell.name
        assert mosaic.meta.wcsinfo.pixel_scale_ref * 3600 == pytest.approx(0.055, rel=1e-12)
        # The mosaic's WCS is the skycell's, pixel for pixel.
        for x, y in [(0, 0), (4999, 0), (2500.5, 1234.25), (4999, 4999)]:
            assert mosaic.meta.wcs(x, y) == pytest.approx(cell.wcs(x, y), abs=1e-11)
        offsets = _star_offsets_arcsec(mosaic, sim)
    assert len(offsets) >= 5
    assert np.max(offsets) < 0.01, offsets


def _star_offsets_arcsec(mosaic, sim):
    """Distance between measured and true positions of bright isolated stars."""
    sky = float(sim.images["sky_mjysr"][0])
    stars = sim.sources[(sim.sources["kind"] == "star") & sim.sources["isolated"]
                        & (sim.sources["mag_ab"] < 23.0)]
    x, y = mosaic.meta.wcs.invert(np.asarray(stars["ra"]), np.asarray(stars["dec"]))
    offsets = []
    radius = 9  # 0.5" at 0.055"/pixel
    for star, xc, yc in zip(stars, x, y, strict=True):
        i, j = int(round(xc)), int(round(yc))
        box = (slice(j - radius, j + radius + 1), slice(i - radius, i + radius + 1))
        cut = mosaic.data[box] - sky
        context = mosaic.context[0][box]
        if cut.shape != (2 * radius + 1,) * 2 or np.any(context != context[radius, radius]) \
                or context[radius, radius] == 0:
            continue
        yy, xx = np.mgrid[box]
        total = cut.sum()
        mx, my = (cut * xx).sum() / total, (cut * yy).sum() / total
        ra, dec = mosaic.meta.wcs(mx, my)
        dra = (float(ra) - star["ra"]) * math.cos(math.radians(star["dec"]))
        offsets.append(math.hypot(dra, float(dec) - star["dec"]) * 3600)
    return np.array(offsets)


def test_target_rules(skycell_sim, tmp_path, caplog):
    cell, sim = skycell_sim
    # A name of skycell form that does not exist: a clear error naming it.
    bad = _asn_with_target(sim, cell.name[:6] + "x99y99", name="bad")
    with pytest.raises(RomosaicInputError, match=cell.name[:6] + "x99y99"):
        MosaicPipeline.call(str(bad))
    # An object name: a free grid, and a line saying why.
    named = _asn_with_target(sim, "NGC 1851", name="object")
    with caplog.at_level(logging.INFO, logger="romosaic"):
        mosaic, _, _ = MosaicPipeline.call(str(named))
    assert mosaic.data.shape != (5000, 5000)
    assert mosaic.meta.wcsinfo.skycell_name is None
    assert "'NGC 1851' is not a skycell name" in caplog.text
    # resample_on_skycell=false: always a free grid.
    good = _asn_with_target(sim, cell.name, name="good")
    mosaic, _, _ = MosaicPipeline.call(str(good), resample_on_skycell=False)
    assert mosaic.data.shape != (5000, 5000)


def test_inputs_elsewhere_on_the_sky_are_refused(skycell_sim):
    cell, sim = skycell_sim
    far = get_tessellation().skycells_touching([10.0], [10.0])[0]
    asn_path = _asn_with_target(sim, far.name, name="far")
    with pytest.raises(RomosaicInputError, match=f"none of the inputs overlaps skycell {far.name}"):
        MosaicPipeline.call(str(asn_path))


@pytest.fixture(scope="module")
def straddling(tmp_path_factory):
    """Exposures centred on the overlap band between two neighbouring skycells."""
    tessellation = ComputedTessellation()
    cell = _cell_near(80.0, -30.0)
    region = cell.region
    x = region.x_tangent + 4800 * cell.col + 2400
    y = region.y_tangent + 4800 * cell.row + 1000
    ra, dec = region.pixel_to_sky(x, y)
    sim = simulate_association(tmp_path_factory.mktemp("straddle"), n_exposures=2, n_detectors=2,
                               size=256, seed=8, ra=float(ra), dec=float(dec),
                               cosmic_ray_rate=0.0)
    return tessellation, cell, sim


def test_skycell_asn_lists_exactly_the_touching_files(straddling, tmp_path, capsys):
    tessellation, cell, sim = straddling
    root = tmp_path / "asn" / "r00001"
    status = romosaic_main(["skycell-asn", "-o", str(root), "--product-type", "full",
                            *map(str, sim.cal_paths)])
    assert status == 0
    written = sorted((tmp_path / "asn").glob("*_asn.json"))
    assert len(written) >= 2
    for path in written:
        asn = json.loads(path.read_text())
        name = asn["target"]
        assert path.name == f"r00001_p_full_{name}_f158_asn.json"
        assert asn["skycell_wcs_info"]["name"] == name
        members = {(path.parent / m["expname"]).resolve() for m in asn["products"][0]["members"]}
        expected = {p.resolve() for p in sim.cal_paths if _touches(p, tessellation.skycell(name))}
        assert members == expected, name


def _touches(path, cell):
    with rdm.open(path) as model:
        y, x = np.mgrid[-0.5:256:4, -0.5:256:4]
        ra, dec = model.meta.wcs(x.ravel(), y.ravel(), with_bounding_box=False)
    cx, cy = cell.wcs.invert(ra, dec, with_bounding_box=False)
    return bool(np.any((cx >= -0.5) & (cx <= 4999.5) & (cy >= -0.5) & (cy <= 4999.5)))


def test_neighbouring_skycell_mosaics_agree_in_their_overlap(straddling, tmp_path, clean_env):
    tessellation, cell, sim = straddling
    neighbour = tessellation.skycell(f"{cell.name[:6]}x{50 + cell.row:02d}y{51 + cell.col:02d}")
    root = tmp_path / "r00001"
    assert romosaic_main(["skycell-asn", "-o", str(root), "--product-type", "full",
                          *map(str, sim.cal_paths)]) == 0
    # The two skycells run side by side, as a survey would run them (the
    # mosaics are compared, so no catalogs are made).
    runs = [subprocess.Popen([STRUN, "roman_mos", f"r00001_p_full_{skycell.name}_f158_asn.json",
                              "--steps.source_catalog.skip=true"],
                             cwd=tmp_path, env=clean_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
            for skycell in (cell, neighbour)]
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
    mosaics = {skycell.name: rdm.open(tmp_path / f"r00001_p_full_{skycell.name}_f158_coadd.asdf")
               for skycell in (cell, neighbour)}
    left, right = mosaics[cell.name], mosaics[neighbour.name]
    # The neighbour's pixel (x, y) is this cell's (x + 4800, y): the overlap is
    # columns 4800-4999 here and 0-199 there.
    a = left.data[:, 4800:]
    b = right.data[:, :200]
    covered_a = left.weight[:, 4800:] > 0
    covered_b = right.weight[:, :200] > 0
    assert covered_a.sum() > 10000
    assert np.array_equal(covered_a, covered_b)
    np.testing.assert_allclose(a[covered_a], b[covered_a], rtol=1e-5, atol=1e-6)


def _median_and_flags(sim, cell, tmp_path):
    """Outlier detection on the skycell: its saved median (WCS, offset,
    shape) and each input's outlier mask."""
    import asdf
    from roman_datamodels.dqflags import pixel

    from romosaic.library import ModelLibrary
    from romosaic.steps import FluxStep, OutlierDetectionStep

    library = FluxStep.call(ModelLibrary(str(_asn_with_target(sim, cell.name))))
    library = OutlierDetectionStep.call(library, save_intermediate_results=True,
                                        output_dir=str(tmp_path / "out"))
    (median_path,) = (tmp_path / "out").glob("*_median.asdf")
    with asdf.open(median_path) as saved:
        median = (saved["wcs"], tuple(saved["grid_offset"]), saved["data"].shape)
    flags = {}
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            flags[model.meta.filename] = (np.asarray(model.dq) & pixel.OUTLIER) != 0
            library.shelve(model, index, modify=False)
    return median, flags


def _cosmic_rays_caught(sim, cell, flags, wcs, shape):
    """Fraction of the first image's cosmic rays well inside the skycell that are flagged."""
    name = sim.cal_paths[0].name
    hits = sim.cosmic_rays[sim.cosmic_rays["filename"] == name]
    hx, hy = np.asarray(hits["x"], float), np.asarray(hits["y"], float)
    cx, cy = cell.wcs.invert(*wcs(hx, hy), with_bounding_box=False)
    inner = ((cx > 50) & (cx < 4950) & (cy > 50) & (cy < 4950) & (hx > 20)
             & (hx < shape[1] - 20) & (hy > 20) & (hy < shape[0] - 20))
    assert inner.sum() >= 10
    return flags[name][hy[inner].astype(int), hx[inner].astype(int)].mean()


@pytest.mark.parametrize("where", ["inside", "astride the edge"])
def test_outlier_median_on_a_skycell_grid_or_one_along_the_inputs(where, tmp_path):
    # Two exposures at an angle to the skycell's axes. Inside the skycell,
    # the median is made on a grid of its pixel size along the inputs' axes,
    # where a drop is square and the window holds only the inputs (312 481
    # pixels, against 581 640 on the skycell's grid); astride its edge,
    # the box of the skycell's footprint on that grid clips nothing, and the
    # skycell's own window, clipped at its edge, is the smaller (238 784
    # pixels against 312 481) and is used.
    cell = _cell_near(80.0, -30.0)
    x, roll = (2500.0, 60.0) if where == "inside" else (4999.5, 10.0)
    ra, dec = (float(v) for v in cell.wcs(x, 2500.0, with_bounding_box=False))
    sim = simulate_association(tmp_path / "data", n_exposures=2, size=256, seed=5, ra=ra,
                               dec=dec, roll=roll, cosmic_ray_rate=2e-3)
    (median_wcs, (x0, y0), (ny, nx)), flags = _median_and_flags(sim, cell, tmp_path)
    with rdm.open(sim.cal_paths[0]) as model:
        wcs, shape = model.meta.wcs, model.data.shape
    gx, gy = median_wcs.invert(*wcs([100.0, 200.0], [100.0, 100.0]), with_bounding_box=False)
    # The skycell's pixel size either way: 0.11" input pixels, 0.055" ones.
    assert math.hypot(gx[1] - gx[0], gy[1] - gy[0]) == pytest.approx(200.0, rel=1e-3)
    # Whichever grid is used, its window is the smaller of the two.
    geometry = []
    for path in sim.cal_paths:
        with rdm.open(path) as model:
            geometry.append((model.meta.wcs, model.data.shape))
    on_cell = data_window(skycell_grid(cell.name), geometry).shape
    assert nx * ny <= on_cell[0] * on_cell[1]
    if where == "inside":
        assert abs(gy[1] - gy[0]) < 0.01  # the input's rows are the grid's rows
        assert (x0, y0) == (0, 0) and nx * ny < on_cell[0] * on_cell[1]
    else:
        # The skycell's own grid: its WCS, and a window ending at its edge.
        for point in [(0.0, 0.0), (4999.0, 2500.0)]:
            assert median_wcs(*point) == pytest.approx(cell.wcs(*point), abs=1e-10)
        assert x0 + nx == 5000 and x0 > 4000
    # Every input pixel on the skycell lands in the window.
    px, py = np.meshgrid(np.arange(0, shape[1], 5.0), np.arange(0, shape[0], 5.0))
    sky = wcs(px, py)
    cx, cy = cell.wcs.invert(*sky, with_bounding_box=False)
    mx, my = median_wcs.invert(*sky, with_bounding_box=False)
    on_cell = (cx >= -0.5) & (cx <= 4999.5) & (cy >= -0.5) & (cy <= 4999.5)
    assert on_cell.any() and (where == "inside" or not on_cell.all())
    in_window = ((mx >= x0 - 0.5) & (mx <= x0 + nx - 0.5)
                 & (my >= y0 - 0.5) & (my <= y0 + ny - 0.5))
    assert in_window[on_cell].all()
    assert _cosmic_rays_caught(sim, cell, flags, wcs, shape) > 0.8
