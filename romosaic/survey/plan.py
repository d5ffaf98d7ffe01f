"""Survey plans: one task per (skycell, filter) association, with a cost estimate.

A plan directory holds

* ``plan.json`` — the list of tasks (written last, so its presence means the
  plan is complete);
* ``asn/<task>_asn.json`` — one association per task, written by the same
  grouping as ``romosaic skycell-asn``.

The cost model (`estimate_task_cost`) and the plan document (`build_plan`)
are plain functions of the grouped images, so they can be tested without any
file; `write_plan` and `load_plan` do the I/O.
"""

import json
import logging
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..errors import RomosaicInputError

__all__ = [
    "ASSOCIATION_DIR",
    "PLAN_FILE",
    "PLAN_FORMAT",
    "PRODUCTS_DIR",
    "build_plan",
    "covered_pixels",
    "estimate_task_cost",
    "load_plan",
    "read_file_list",
    "write_plan",
]

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
PLAN_FORMAT = "romosaic-survey-plan"
PLAN_VERSION = 1
ASSOCIATION_DIR = "asn"
PRODUCTS_DIR = "products"

# Cost-model coefficients, fitted to the peak resident memory of `strun
# roman_mos` onto a full skycell: 1.50 GB with 2 inputs of 256^2 pixels and
# 1.60 GB with 8 inputs of 512^2 (simulated data). The estimate is meant for
# sizing workers; the manifest records each task's measured peak.
_BASE_MEMORY = 200e6  # interpreter, libraries, models' metadata
_BYTES_PER_OUTPUT_PIXEL = 50.0  # mosaic planes, drizzle accumulators, catalog images
_BYTES_PER_INPUT_PIXEL = 45.0  # inputs held in memory (data, dq, err, variances)
_BYTES_PER_INPUT_PIXEL_ON_DISK = 12.0  # one input at a time, plus its pixel map
# Bytes per covered output pixel of the written products: six float32 mosaic
# planes and the segmentation map's uint32 labels and float32 image. The
# arrays are stored compressed, so pixels no input reaches (constant fill
# values) take almost no room, while noisy float data hardly compresses.
_PRODUCT_BYTES_PER_PIXEL = 6 * 4 + 4 + 4
_CONTEXT_BITS_PER_PLANE = 32
# Side in output pixels of the cells in which `covered_pixels` counts coverage.
_COVERAGE_CELL = 10


def covered_pixels(geometry, grid_wcs, grid_shape, *, cell=_COVERAGE_CELL):
    """Output pixels that at least one input reaches, counted in cells of ``cell`` pixels.

    Each input's outline (its edges sampled through its WCS) is mapped onto
    the grid; a cell counts when its centre lies inside an outline. Overlaps
    between inputs are counted once.

    Parameters
    ----------
    geometry : list of (wcs, shape)
        Each input's WCS and array shape ``(ny, nx)``.
    grid_wcs : gwcs.wcs.WCS
        The output grid's WCS.
    grid_shape : (int, int)
    cell : int, optional

    Returns
    -------
    int

    Examples
    --------
    >>> from romosaic.wcs_utils import affine_tan_wcs
    >>> scale = 0.1 / 3600
    >>> grid = affine_tan_wcs(crval=(10, 0), crpix=(499.5, 499.5),
    ...                       cd=[[-scale, 0], [0, scale]], shape=(1000, 1000))
    >>> image = affine_tan_wcs(crval=(10, 0), crpix=(99.5, 99.5),
    ...                        cd=[[-2 * scale, 0], [0, 2 * scale]], shape=(200, 200))
    >>> covered_pixels([(image, (200, 200))], grid, (1000, 1000))  # 400 x 400 of 1000 x 1000
    160000
    """
    ny, nx = (int(v) for v in grid_shape)
    rows, cols = math.ceil(ny / cell), math.ceil(nx / cell)
    inside = np.zeros((rows, cols), bool)
    for wcs, shape in geometry:
        ra, dec = wcs(*_outline(shape))
        x, y = grid_wcs.invert(ra, dec, with_bounding_box=False)
        x, y = np.asarray(x, float), np.asarray(y, float)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            continue
        # Only the cells within the outline's box are tested.
        c0, c1 = (int(np.clip(v, 0, cols)) for v in ((x.min() + 0.5) // cell,
                                                     (x.max() + 0.5) // cell + 1))
        r0, r1 = (int(np.clip(v, 0, rows)) for v in ((y.min() + 0.5) // cell,
                                                     (y.max() + 0.5) // cell + 1))
        if c0 >= c1 or r0 >= r1:
            continue
        cy, cx = np.mgrid[r0:r1, c0:c1]
        hit = _inside_polygon((cx.ravel() + 0.5) * cell - 0.5, (cy.ravel() + 0.5) * cell - 0.5,
                              x, y)
        inside[r0:r1, c0:c1] |= hit.reshape(cy.shape)
    # Cells on the grid's far edges may be partly outside it.
    width = np.minimum(cell, nx - np.arange(cols) * cell)
    height = np.minimum(cell, ny - np.arange(rows) * cell)
    return int(np.sum(inside * height[:, None] * width[None, :]))


def _outline(shape, points_per_edge=9):
    """Pixel coordinates going once round an image's outer pixel edges."""
    ny, nx = shape
    t = np.linspace(0.0, 1.0, points_per_edge)[:-1]
    x0, x1, y0, y1 = -0.5, nx - 0.5, -0.5, ny - 0.5
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full_like(t, x1), x1 - (x1 - x0) * t,
                         np.full_like(t, x0)])
    ys = np.concatenate([np.full_like(t, y0), y0 + (y1 - y0) * t, np.full_like(t, y1),
                         y1 - (y1 - y0) * t])
    return xs, ys


def _inside_polygon(px, py, vx, vy):
    """Whether each point ``(px, py)`` lies inside the polygon ``(vx, vy)`` (even-odd rule)."""
    inside = np.zeros(px.size, bool)
    for (xa, ya), (xb, yb) in zip(zip(vx, vy, strict=True),
                                  zip(np.roll(vx, -1), np.roll(vy, -1), strict=True),
                                  strict=True):
        crosses = (ya > py) != (yb > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = xa + (py - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (px < x_cross)
    return inside


def estimate_task_cost(input_shapes, output_shape, *, on_disk=False, covered=None):
    """Estimate what one mosaic task needs.

    Parameters
    ----------
    input_shapes : sequence of tuple of int
        ``(ny, nx)`` of each input image.
    output_shape : tuple of int
        ``(ny, nx)`` of the mosaic (5000 × 5000 for a skycell).
    on_disk : bool, optional
        Whether the pipeline will run with ``on_disk=True``, which keeps one
        input in memory at a time.
    covered : int, optional
        Output pixels the inputs reach (`covered_pixels`); default: all.

    Returns
    -------
    dict
        ``n_inputs``; ``input_pixels`` and ``output_pixels``; ``work``, a
        relative measure of compute time (input plus output pixels: drizzling
        scales with the first, background and catalog with the second);
        ``output_bytes``, the products' size on disk (the covered pixels at
        full size; the rest compresses to almost nothing); ``memory_bytes``,
        the expected peak resident memory.
    """
    n_inputs = len(input_shapes)
    input_pixels = sum(int(ny) * int(nx) for ny, nx in input_shapes)
    output_pixels = int(output_shape[0]) * int(output_shape[1])
    context_planes = max(1, math.ceil(n_inputs / _CONTEXT_BITS_PER_PLANE))
    covered = output_pixels if covered is None else min(int(covered), output_pixels)
    output_bytes = covered * (_PRODUCT_BYTES_PER_PIXEL + 4 * context_planes)
    per_input = _BYTES_PER_INPUT_PIXEL_ON_DISK if on_disk else _BYTES_PER_INPUT_PIXEL
    memory = (_BASE_MEMORY + _BYTES_PER_OUTPUT_PIXEL * output_pixels
              + 4 * context_planes * output_pixels + per_input * input_pixels)
    return {
        "n_inputs": n_inputs,
        "input_pixels": input_pixels,
        "output_pixels": output_pixels,
        "work": input_pixels + output_pixels,
        "output_bytes": int(output_bytes),
        "memory_bytes": int(memory),
    }


def build_plan(groups, *, plan_dir, product_type, data_release_id):
    """The plan document for grouped images.

    Parameters
    ----------
    groups : dict
        Task name → ``(skycell, [ImageGeometry, ...])``, as returned by
        `romosaic.skycell.skycell_asn.plan_skycell_associations` (names
        without directory).
    plan_dir : pathlib.Path
        The plan directory; paths in the plan are relative to it.
    product_type, data_release_id : str
        Recorded for reference.

    Returns
    -------
    dict
        The JSON-ready plan: ``tasks`` sorted by name, each with ``name``,
        ``association``, ``skycell``, ``filter``, ``inputs`` and ``cost``,
        and ``totals`` summing the costs.
    """
    plan_dir = Path(plan_dir)
    tasks = []
    for name, (cell, members) in sorted(groups.items()):
        covered = covered_pixels([(m.wcs, m.shape) for m in members], cell.wcs, cell.shape)
        cost = estimate_task_cost([m.shape for m in members], cell.shape, covered=covered)
        tasks.append({
            "name": name,
            "association": f"{ASSOCIATION_DIR}/{name}_asn.json",
            "skycell": cell.name,
            "filter": members[0].filter_name.upper(),
            "inputs": [_relative(m.path, plan_dir) for m in members],
            "cost": cost,
        })
    totals = {key: sum(t["cost"][key] for t in tasks)
              for key in ("input_pixels", "output_pixels", "work", "output_bytes")}
    totals["max_memory_bytes"] = max((t["cost"]["memory_bytes"] for t in tasks), default=0)
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "romosaic_version": _version(),
        "product_type": product_type,
        "data_release_id": data_release_id,
        "products_dir": PRODUCTS_DIR,
        "n_tasks": len(tasks),
        "totals": totals,
        "tasks": tasks,
    }


def _relative(path, start):
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def _version():
    from .. import __version__

    return __version__


def read_file_list(path):
    """Read a list of input files, one per line.

    Blank lines and lines starting with ``#`` are ignored; relative paths are
    relative to the list file's directory.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    list of pathlib.Path
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RomosaicInputError(f"{path}: cannot read the file list ({error})") from None
    files = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line)
            files.append(entry if entry.is_absolute() else path.parent / entry)
    return files


def write_plan(plan_dir, files, *, product_type="visit", data_release_id="p", root="survey",
               force=False):
    """Group Level-2 files into skycell tasks and write the plan directory.

    Every input's metadata is read before anything is written, so a bad
    input leaves no partial plan; each file is written atomically and
    ``plan.json`` last.

    Parameters
    ----------
    plan_dir : str or os.PathLike
        Directory to create (or reuse when ``force``).
    files : sequence of str or os.PathLike
        Level-2 ``*_cal.asdf`` files; duplicates are dropped.
    product_type : {"visit", "pass", "full"}
        One task per skycell and filter, and per visit or pass unless "full".
    data_release_id : str
        Data release id in the task names.
    root : str
        First part of the task names.
    force : bool
        Replace an existing plan in ``plan_dir``.

    Returns
    -------
    dict
        The plan written.

    Raises
    ------
    RomosaicInputError
        For no inputs, an unreadable input, inputs touching no skycell, an
        existing plan without ``force``, or a plan that a run is using.
    """
    from .._atomic import atomic_write_text
    from ..associations import make_association, write_association
    from ..skycell.skycell_asn import plan_skycell_associations, read_image_geometry

    plan_dir = Path(plan_dir)
    plan_path = plan_dir / PLAN_FILE
    if plan_path.exists() and not force:
        raise RomosaicInputError(
            f"{plan_path}: a plan already exists (use --force to replace it)")
    from .runner import run_in_progress

    if run_in_progress(plan_dir):
        raise RomosaicInputError(f"{plan_dir}: a `romosaic survey run` is using this plan")
    if not root or "/" in root or os.sep in root:
        raise RomosaicInputError(f"name root {root!r} must be a plain name")
    unique = list(dict.fromkeys(Path(f).resolve() for f in files))
    if not unique:
        raise RomosaicInputError("no input files given")
    images = [read_image_geometry(path) for path in unique]
    groups = plan_skycell_associations(images, root=root, product_type=product_type,
                                       data_release_id=data_release_id)
    if not groups:
        raise RomosaicInputError("none of the inputs touches a skycell")
    plan = build_plan(groups, plan_dir=plan_dir, product_type=product_type,
                      data_release_id=data_release_id)
    asn_dir = plan_dir / ASSOCIATION_DIR
    for name, (cell, members) in groups.items():
        asn_path = asn_dir / f"{name}_asn.json"
        asn = make_association(
            [image.path for image in members],
            product_name=name,
            target=cell.name,
            relative_to=asn_dir,
            program=members[0].visit_id[:5],
            data_release_id=data_release_id,
            skycell_wcs_info=cell.wcs_info(),
        )
        write_association(asn_path, asn)
    atomic_write_text(plan_path, json.dumps(plan, indent=1) + "\n")
    # Associations of a replaced plan that this one no longer has would
    # otherwise look like tasks to someone reading asn/.
    keep = {f"{name}_asn.json" for name in groups}
    for stale in asn_dir.glob("*_asn.json"):
        if stale.name not in keep:
            stale.unlink()
    log.info("wrote %s: %d tasks from %d inputs", plan_path, len(groups), len(images))
    return plan


def load_plan(plan_dir):
    """Read and check a plan directory's ``plan.json``.

    Parameters
    ----------
    plan_dir : str or os.PathLike

    Returns
    -------
    dict
        The plan, with each task's ``association`` checked to exist.

    Raises
    ------
    RomosaicInputError
        For a missing or malformed plan, or a missing association.
    """
    plan_dir = Path(plan_dir)
    path = plan_dir / PLAN_FILE
    if not path.is_file():
        raise RomosaicInputError(f"{plan_dir}: not a survey plan directory (no {PLAN_FILE}; "
                                 "make one with `romosaic survey plan`)")
    try:
        plan = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RomosaicInputError(f"{path}: cannot read the plan ({error})") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise RomosaicInputError(f"{path}: not a romosaic survey plan")
    if plan.get("version") != PLAN_VERSION:
        raise RomosaicInputError(
            f"{path}: plan version {plan.get('version')!r} is not supported "
            f"(this romosaic reads version {PLAN_VERSION})")
    tasks = plan.get("tasks")
    if not isinstance(tasks, list):
        raise RomosaicInputError(f"{path}: the plan has no task list")
    names = set()
    for index, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("name"), str) \
                or not isinstance(task.get("association"), str):
            raise RomosaicInputError(f"{path}: task {index} has no name or association")
        if task["name"] in names:
            raise RomosaicInputError(f"{path}: task {task['name']} is listed twice")
        names.add(task["name"])
        if not (plan_dir / task["association"]).is_file():
            raise RomosaicInputError(
                f"{plan_dir / task['association']}: association of task {task['name']} "
                "not found")
        task.setdefault("cost", {})
    return plan
