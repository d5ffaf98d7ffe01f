"""Hostile inputs: each bad association, file, image, parameter or output location.

Every case runs through the Python API (``MosaicPipeline.call`` must raise a
specific exception with a one-line message naming the problem and the file
or parameter); one or two cases per category also run through ``strun
roman_mos`` (exit status, exactly one ERROR line, no traceback). After each
case: no product and no temporary file anywhere (output directory, working
directory, system temporary directory), and the inputs byte-identical.

The inputs are built once for the module: two simulated 128 x 128 exposures
and copies of them spoiled in one way each. The whole module runs in about a
minute; each ``strun`` start costs seconds, so the command-line cases are a
representative subset, run a few at a time.
"""

import errno
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asdf
import numpy as np
import pytest
import roman_datamodels.datamodels as rdm

from romosaic.errors import (
    INPUT_ERROR_EXIT_STATUS,
    OUTPUT_ERROR_EXIT_STATUS,
    AssociationError,
    ModelTypeError,
    OutputError,
    RomosaicInputError,
)
from romosaic.pipeline import MosaicPipeline
from romosaic.simulate import simulate_association
from romosaic.skycell import SkycellNotFoundError
from romosaic.wcs_utils import affine_tan_wcs, cd_from_orientation

STRUN = str(Path(sys.executable).parent / "strun")
SHAPE = (128, 128)
PRODUCT_SUFFIXES = ("_coadd.asdf", "_cat.parquet", "_segm.asdf")


def _digests(*directories):
    """sha256 of every file (hidden ones included) under the directories."""
    found = {}
    for directory in directories:
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                found[str(path)] = "directory"
    return found


def _entries(directory):
    directory = Path(directory)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- the inputs ------------------------------------------------------------------------


@dataclass
class Corpus:
    root: Path
    inputs: Path  # every input file, hashed before and after each case
    outside: Path  # a directory next to it, for members outside the association's
    good: list  # names of the two good exposures
    asn: Path  # their association

    def association(self, name, members, *, product="p", **extra):
        """Write an association listing ``members`` (names or member dicts)."""
        path = self.inputs / f"{name}_asn.json"
        members = [m if isinstance(m, dict) else {"expname": m, "exptype": "science"}
                   for m in members]
        path.write_text(json.dumps({"products": [{"name": product, "members": members}],
                                    **extra}))
        return path

    def digests(self):
        return _digests(self.inputs, self.outside)


def _spoil(corpus, name, change, *, observation="spoiled"):
    """A copy of the first good exposure, changed by ``change(model)``."""
    with rdm.open(corpus.inputs / corpus.good[0]) as model:
        model = model.copy()
    model.meta.observation.observation_id = observation
    change(model)
    model.save(corpus.inputs / name)
    return name


def _set(path, value):
    def change(model):
        node = model
        *parents, last = path.split(".")
        for part in parents:
            node = getattr(node, part)
        setattr(node, last, value)
    return change


def _wcs(crval=(80.0, -30.0), cd=None):
    cd = cd_from_orientation(0.11 / 3600, 0.0) if cd is None else cd
    return affine_tan_wcs(crval=crval, crpix=((SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2), cd=cd,
                          shape=SHAPE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    inputs = root / "inputs"
    sim = simulate_association(inputs, n_exposures=2, size=SHAPE[0], seed=12,
                               product_name="good", cosmic_ray_rate=0.0)
    good = [p.name for p in sim.cal_paths]
    corpus = Corpus(root=root, inputs=inputs, outside=root / "outside", good=good,
                    asn=sim.asn_path)
    corpus.outside.mkdir()
    shutil.copy(inputs / good[1], corpus.outside / "stray_cal.asdf")

    spoil = {
        "all_nan_cal.asdf": _set("data", np.full(SHAPE, np.nan, np.float32)),
        "all_flagged_cal.asdf": _set("dq", np.ones(SHAPE, np.uint32)),  # DO_NOT_USE
        "zero_time_cal.asdf": _set("meta.exposure.exposure_time", 0.0),
        "negative_time_cal.asdf": _set("meta.exposure.exposure_time", -30.0),
        "no_wcs_cal.asdf": _set("meta.wcs", None),
        "point_wcs_cal.asdf": _set("meta.wcs", _wcs(cd=np.zeros((2, 2)))),
        "far_cal.asdf": _set("meta.wcs", _wcs(crval=(82.0, -28.0))),
        "f062_cal.asdf": _set("meta.instrument.optical_element", "F062"),
    }
    for name, change in spoil.items():
        _spoil(corpus, name, change, observation=name.split("_cal")[0])
    # A good exposure's bytes, cut short in the array blocks (the YAML header
    # still parses, so opening succeeds and only reading the data fails).
    data = (inputs / good[1]).read_bytes()
    (inputs / "truncated_cal.asdf").write_bytes(data[: len(data) * 2 // 3])
    (inputs / "cut_header_cal.asdf").write_bytes(data[:1500])
    corrupt = bytearray(data)
    corrupt[700:800] = b"\0" * 100
    (inputs / "corrupt_cal.asdf").write_bytes(bytes(corrupt))
    (inputs / "text_cal.asdf").write_text("this is not an ASDF file\n")
    (inputs / "empty_cal.asdf").write_bytes(b"")
    asdf.AsdfFile({"data": np.zeros((4, 4))}).write_to(inputs / "plain_asdf_cal.asdf")
    rdm.MosaicSegmentationMapModel.create_fake_data(shape=(8, 8)).save(
        inputs / "segmentation_cal.asdf")
    os.symlink(good[0], inputs / "alias_cal.asdf")
    # An input named like the product an association would write next to it.
    shutil.copy(inputs / good[0], inputs / "victim_coadd.asdf")
    return corpus


# -- the cases -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input and what the user must be told.

    ``make(corpus)`` returns the input path (writing any association it
    needs); ``params`` are dotted parameter names as on the command line;
    ``named(corpus)`` is the file or parameter the message must name.
    """

    name: str
    category: str
    make: object
    error: type
    message: str
    named: object
    params: dict = field(default_factory=dict)
    cli: bool = False


def _asn(members, **extra):
    return lambda c: c.association("case", members(c), **extra)


def _with_good(bad):
    return _asn(lambda c: [c.good[0], bad])


def _file(name):
    return lambda c: str(c.inputs / name)


CASES = [
    # association
    Case("asn_not_json", "association", lambda c: _write(c, "{oops"), AssociationError,
         "not valid JSON", lambda c: "case_asn.json"),
    Case("asn_empty", "association", lambda c: _write(c, ""), AssociationError,
         "association file is empty", lambda c: "case_asn.json"),
    Case("asn_no_products", "association", lambda c: _write(c, '{"products": []}'),
         AssociationError, "has no products", lambda c: "case_asn.json"),
    Case("asn_no_science", "association",
         _asn(lambda c: [{"expname": c.good[0], "exptype": "background"}]),
         AssociationError, "no science members", lambda c: "case_asn.json"),
    Case("asn_missing_member", "association", _asn(lambda c: [c.good[0], "gone_cal.asdf"]),
         AssociationError, "member file not found", lambda c: "gone_cal.asdf"),
    Case("asn_duplicate_by_symlink", "association",
         _asn(lambda c: [c.good[0], "alias_cal.asdf"]), AssociationError,
         "listed more than once", lambda c: "alias_cal.asdf"),
    Case("asn_member_url", "association",
         _asn(lambda c: [c.good[0], "https://example.org/x_cal.asdf"]), AssociationError,
         "not a local file path", lambda c: "https://example.org/x_cal.asdf"),
    Case("asn_member_escapes_relative", "association",
         _asn(lambda c: [c.good[0], "../outside/stray_cal.asdf"]), AssociationError,
         "lies outside the association's directory", lambda c: "../outside/stray_cal.asdf",
         params={"allow_external_members": False}, cli=True),
    Case("asn_member_escapes_absolute", "association",
         _asn(lambda c: [c.good[0], str(c.outside / "stray_cal.asdf")]), AssociationError,
         "lies outside the association's directory", lambda c: "stray_cal.asdf",
         params={"allow_external_members": False}),
    Case("asn_product_name_with_separator", "association",
         lambda c: c.association("case", c.good, product="../elsewhere/p"), AssociationError,
         "is not a plain file name", lambda c: "../elsewhere/p"),
    # files
    Case("file_truncated_arrays", "file", _with_good("truncated_cal.asdf"), RomosaicInputError,
         "cannot be read; the file is truncated or corrupt", lambda c: "truncated_cal.asdf",
         cli=True),
    Case("file_truncated_header", "file", _with_good("cut_header_cal.asdf"),
         RomosaicInputError, "not a readable Roman data file", lambda c: "cut_header_cal.asdf"),
    Case("file_corrupt_header", "file", _with_good("corrupt_cal.asdf"), RomosaicInputError,
         "not a readable Roman data file", lambda c: "corrupt_cal.asdf"),
    Case("file_not_asdf", "file", _with_good("text_cal.asdf"), RomosaicInputError,
         "not a readable Roman data file", lambda c: "text_cal.asdf"),
    Case("file_empty", "file", _with_good("empty_cal.asdf"), RomosaicInputError,
         "not a readable Roman data file", lambda c: "empty_cal.asdf"),
    Case("file_plain_asdf", "file", _with_good("plain_asdf_cal.asdf"), RomosaicInputError,
         "not a roman file", lambda c: "plain_asdf_cal.asdf"),
    Case("file_wrong_model_type", "file", _with_good("segmentation_cal.asdf"), ModelTypeError,
         "is a MosaicSegmentationMapModel", lambda c: "segmentation_cal.asdf"),
    Case("file_single_wrong_type", "file", _file("segmentation_cal.asdf"), ModelTypeError,
         "needs Level-2 calibrated images", lambda c: "segmentation_cal.asdf"),
    # image contents
    Case("image_only_all_nan", "image", _asn(lambda c: ["all_nan_cal.asdf"]),
         RomosaicInputError, "no usable input image", lambda c: "all_nan_cal.asdf"),
    Case("image_only_all_flagged", "image",
         _asn(lambda c: ["all_flagged_cal.asdf", "all_nan_cal.asdf"]), RomosaicInputError,
         "every pixel is flagged", lambda c: "all_flagged_cal.asdf"),
    Case("image_zero_exposure_time", "image", _with_good("zero_time_cal.asdf"),
         RomosaicInputError, "weight_type 'exptime' needs a positive exposure time",
         lambda c: "zero_time_cal.asdf", params={"steps.resample.weight_type": "exptime"}),
    Case("image_negative_exposure_time", "image", _with_good("negative_time_cal.asdf"),
         RomosaicInputError, "weight_type 'exptime' needs a positive exposure time",
         lambda c: "negative_time_cal.asdf",
         params={"steps.outlier_detection.weight_type": "exptime"}),
    Case("image_missing_wcs", "image", _with_good("no_wcs_cal.asdf"), RomosaicInputError,
         "has no WCS", lambda c: "no_wcs_cal.asdf"),
    Case("image_degenerate_wcs", "image", _with_good("point_wcs_cal.asdf"), RomosaicInputError,
         "WCS is not invertible (it maps the whole image to one sky position)",
         lambda c: "point_wcs_cal.asdf", cli=True),
    # geometry and grid
    Case("grid_scattered_inputs", "geometry", _with_good("far_cal.asdf"), RomosaicInputError,
         "exceeds steps.resample.max_output_pixels=400000000", lambda c: "case_asn.json",
         cli=True),
    Case("grid_limit_from_parameter", "geometry", lambda c: c.asn, RomosaicInputError,
         "exceeds steps.resample.max_output_pixels=1000", lambda c: "good_asn.json",
         params={"steps.resample.max_output_pixels": 1000}),
    Case("grid_huge_output_shape", "geometry", lambda c: c.asn, RomosaicInputError,
         "output grid of 1000000 x 1000000 pixels", lambda c: "max_output_pixels",
         params={"resample_on_skycell": False,
                 "steps.resample.output_shape": [1000000, 1000000]}),
    Case("grid_mixed_filters", "geometry", _with_good("f062_cal.asdf"), RomosaicInputError,
         "inputs are in different filters", lambda c: "f062_cal.asdf"),
    Case("grid_unknown_skycell", "geometry",
         lambda c: c.association("case", c.good, target="270p65x99y99"), SkycellNotFoundError,
         "skycell 270p65x99y99 does not exist", lambda c: "case_asn.json"),
    Case("grid_unknown_region", "geometry",
         lambda c: c.association("case", c.good, skycell_wcs_info={"name": "999p99x50y50"}),
         SkycellNotFoundError, "no projection region has the prefix 999p99",
         lambda c: "case_asn.json"),
    Case("grid_skycell_not_overlapping", "geometry",
         lambda c: c.association("case", c.good, target="270p65x70y49"), RomosaicInputError,
         "none of the inputs overlaps skycell 270p65x70y49", lambda c: "case_asn.json"),
    # parameters
    Case("param_negative_pixfrac", "parameters", lambda c: c.asn, RomosaicInputError,
         'the value "-0.5" is too small', lambda c: "steps.resample.pixfrac",
         params={"steps.resample.pixfrac": -0.5}, cli=True),
    Case("param_zero_pixfrac", "parameters", lambda c: c.asn, RomosaicInputError,
         "pixfrac must be in (0, 1], got 0.0", lambda c: "resample",
         params={"steps.resample.pixfrac": 0.0}),
    Case("param_unknown_kernel", "parameters", lambda c: c.asn, RomosaicInputError,
         "choose one of: square, point", lambda c: "steps.resample.kernel",
         params={"steps.resample.kernel": "boxcar"}),
    Case("param_malformed_snr", "parameters", lambda c: c.asn, RomosaicInputError,
         "snr must be two numbers", lambda c: "outlier_detection",
         params={"steps.outlier_detection.snr": "5.0 four"}),
    Case("param_max_output_pixels_zero", "parameters", lambda c: c.asn, RomosaicInputError,
         "too small", lambda c: "steps.resample.max_output_pixels",
         params={"steps.resample.max_output_pixels": 0}),
    # outputs
    Case("output_would_replace_input", "output",
         lambda c: c.association("case", [c.good[1], "victim_coadd.asdf"], product="victim"),
         RomosaicInputError,
         "would replace the input file", lambda c: "victim_coadd.asdf",
         params={"output_dir": "<inputs>"}),
    Case("output_dir_is_a_file", "output", lambda c: c.asn, OutputError,
         "output directory exists and is not a directory", lambda c: "good_asn.json",
         params={"output_dir": "<asn>"}, cli=True),
]


def _write(corpus, text):
    path = corpus.inputs / "case_asn.json"
    path.write_text(text)
    return path


# -- running a case --------------------------------------------------------------------


def _nested(params, corpus, out):
    """Keyword arguments of MosaicPipeline.call from dotted parameter names."""
    kwargs = {"save_results": True, "output_dir": str(out), "on_disk": True}
    for key, value in params.items():
        value = _placeholder(value, corpus)
        parts = key.split(".")
        node = kwargs
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return kwargs


def _placeholder(value, corpus):
    if value == "<inputs>":
        return str(corpus.inputs)
    if value == "<asn>":
        return str(corpus.asn)
    return value


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working directory and system temporary directory that must stay empty."""
    work = tmp_path / "work"
    temp = tmp_path / "systemp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return work, temp


def _assert_clean(corpus, before, out, *dirs):
    """No product, no temporary file anywhere, inputs unchanged."""
    assert _entries(out) == [], f"left in the output directory: {_entries(out)}"
    for directory in dirs:
        assert _entries(directory) == [], f"left in {directory}: {_entries(directory)}"
    assert corpus.digests() == before, "an input file or directory changed"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_raises_a_specific_one_line_error(case, corpus, tmp_path, sandbox):
    path = case.make(corpus)
    out = tmp_path / "out"
    kwargs = _nested(case.params, corpus, out)
    if case.params.get("output_dir"):
        out = tmp_path / "unused"
    before = corpus.digests()
    with pytest.raises(case.error) as info:
        MosaicPipeline.call(str(path), **kwargs)
    message = str(info.value)
    assert case.message in message
    assert case.named(corpus) in message
    assert "\n" not in message and "Traceback" not in message
    _assert_clean(corpus, before, out, *sandbox)


def test_every_category_has_command_line_cases():
    categories = {c.category for c in CASES}
    assert categories == {c.category for c in CASES if c.cli}


# -- the command line ------------------------------------------------------------------


def _strun_args(case, corpus, out):
    args = [STRUN, "roman_mos", str(case.make(corpus))]
    params = dict(case.params)
    args += ["--output_dir", str(_placeholder(params.pop("output_dir", str(out)), corpus))]
    for key, value in params.items():
        if isinstance(value, bool):
            value = str(value).lower()
        args.append(f"--{key}={value}")
    return args


def _run_cli(args, cwd, env, preexec_fn=None):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, preexec_fn=preexec_fn)


def _cli_environment(base, directory):
    env = dict(base, TMPDIR=str(directory / "systemp"))
    (directory / "systemp").mkdir(parents=True)
    (directory / "work").mkdir()
    return env


CLI_CASES = [c for c in CASES if c.cli]


@pytest.fixture(scope="module")
def cli_results(corpus, tmp_path_factory):
    """Run every command-line case, three at a time: (case name → result, dirs, before)."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path_factory.mktemp("home"))}
    # Each case writes its own association; make them all first, one name each.
    prepared = []
    for case in CLI_CASES:
        directory = tmp_path_factory.mktemp(case.name)
        env = _cli_environment(base, directory)
        args = _strun_args(case, corpus, directory / "out")
        stable = corpus.inputs / f"{case.name}_asn.json"
        if args[2].endswith("case_asn.json"):
            shutil.copy(args[2], stable)
            args[2] = str(stable)
        prepared.append((case, args, env, directory))
    before = corpus.digests()

    def run(item):
        case, args, env, directory = item
        return case.name, (_run_cli(args, directory / "work", env), directory)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(run, prepared))
    return results, before


def _assert_one_error_line(run, *expected):
    output = run.stdout + run.stderr
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in run.stderr.splitlines() if " - ERROR - " in line]
    assert len(errors) == 1, errors
    for text in expected:
        assert text in errors[0], (text, errors[0])
    return errors[0]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_bad_input_through_strun(case, corpus, cli_results):
    results, before = cli_results
    run, directory = results[case.name]
    status = OUTPUT_ERROR_EXIT_STATUS if issubclass(case.error, OutputError) \
        else INPUT_ERROR_EXIT_STATUS
    assert run.returncode == status, (run.returncode, run.stderr[-3000:])
    named = case.named(corpus)
    if named.endswith("case_asn.json"):
        named = f"{case.name}_asn.json"
    _assert_one_error_line(run, case.message, named)
    _assert_clean(corpus, before, directory / "out", directory / "work",
                  directory / "systemp")


# -- a sensible result: unusable images among good ones ----------------------------------


def test_unusable_images_among_good_ones_are_skipped_with_a_warning(corpus, tmp_path, sandbox,
                                                                   caplog):
    asn = corpus.association("skip", [corpus.good[0], "all_nan_cal.asdf", corpus.good[1],
                                      "all_flagged_cal.asdf"], product="skip")
    out = tmp_path / "out"
    before = corpus.digests()
    with caplog.at_level(logging.WARNING):
        mosaic, catalog, segmentation = MosaicPipeline.call(
            str(asn), save_results=True, output_dir=str(out), on_disk=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("all_nan_cal.asdf: skipped: every data value is NaN")
               for m in warnings), warnings
    assert any(m.startswith("all_flagged_cal.asdf: skipped: every pixel is flagged")
               for m in warnings), warnings
    # The mosaic is made of the good exposures alone.
    assert list(mosaic.meta.resample.members) == corpus.good
    assert mosaic.context.shape[0] == 1 and int(mosaic.context.max()) == 0b11
    assert np.isfinite(mosaic.data[mosaic.weight > 0]).all()
    assert _entries(out) == sorted(f"skip{s}" for s in PRODUCT_SUFFIXES)
    with rdm.open(out / "skip_coadd.asdf") as written:
        assert isinstance(written, rdm.MosaicModel)
        written.validate()
    assert corpus.digests() == before
    assert _entries(sandbox[0]) == [] and _entries(sandbox[1]) == []


# -- output locations that fail ---------------------------------------------------------


@pytest.fixture
def read_only_directory(tmp_path):
    """An existing directory nobody can create files in (chmod; chattr +i for root)."""
    directory = tmp_path / "read_only"
    directory.mkdir()
    directory.chmod(0o555)
    immutable = False
    if _can_create_in(directory) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(directory)],
                                   capture_output=True).returncode == 0
    try:
        if _can_create_in(directory):
            pytest.skip("cannot make a directory read-only here (root without chattr)")
        yield directory
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
        directory.chmod(0o755)


def _can_create_in(directory):
    try:
        (directory / "probe").mkdir()
    except OSError:
        return False
    (directory / "probe").rmdir()
    return True


@pytest.mark.parametrize("inside", [False, True], ids=["directory", "subdirectory"])
def test_unwritable_output_directory_fails_before_any_work(corpus, read_only_directory,
                                                          sandbox, inside, monkeypatch):
    out = read_only_directory / "new" if inside else read_only_directory
    opened = []
    monkeypatch.setattr(MosaicPipeline, "open_library",
                        lambda self, data: opened.append(data) or 1 / 0)
    before = corpus.digests()
    with pytest.raises(OutputError) as info:
        MosaicPipeline.call(str(corpus.asn), save_results=True, output_dir=str(out))
    assert str(read_only_directory) in str(info.value)
    assert "cannot write in this directory" in str(info.value)
    assert info.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    assert opened == []  # refused before reading any input
    assert _entries(read_only_directory) == []
    assert corpus.digests() == before


class _FullDisk:
    """Make every ASDF write fail with ENOSPC after its first few kilobytes."""

    def __init__(self, monkeypatch, *, allowed=4096):
        import asdf.generic_io as generic_io

        self.failures = 0
        original = generic_io.GenericFile.write
        written = {}

        def write(handle, content):
            done = written.get(id(handle), 0)
            if done + len(content) > allowed:
                self.failures += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written[id(handle)] = done + len(content)
            return original(handle, content)

        monkeypatch.setattr(generic_io.GenericFile, "write", write)


@pytest.fixture(scope="module")
def previous_products(corpus, tmp_path_factory):
    """A complete earlier run's products, to be left untouched by failed runs."""
    out = tmp_path_factory.mktemp("previous")
    MosaicPipeline.call(str(corpus.asn), save_results=True, output_dir=str(out))
    return out


@pytest.mark.parametrize("on_disk", [False, True], ids=["products", "on_disk_temporaries"])
def test_full_disk_leaves_the_previous_products(corpus, previous_products, tmp_path, sandbox,
                                                monkeypatch, on_disk):
    out = tmp_path / "out"
    shutil.copytree(previous_products, out)
    previous = _digests(out)
    before = corpus.digests()
    disk = _FullDisk(monkeypatch)
    with pytest.raises(OutputError) as info:
        MosaicPipeline.call(str(corpus.asn), save_results=True, output_dir=str(out),
                            on_disk=on_disk)
    assert disk.failures >= 1
    message = str(info.value)
    assert "No space left on device" in message and "\n" not in message
    assert info.value.errno == errno.ENOSPC
    assert str(out) in message
    if not on_disk:
        assert "good_coadd.asdf: cannot write" in message
    assert _digests(out) == previous  # same files, same bytes, nothing added
    assert corpus.digests() == before
    assert _entries(sandbox[0]) == [] and _entries(sandbox[1]) == []


def _limit_file_size(limit):
    def apply():
        # Ignored, SIGXFSZ no longer kills the process: the write fails with EFBIG.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_write_failure_through_strun(corpus, previous_products, tmp_path, clean_env):
    out = tmp_path / "out"
    shutil.copytree(previous_products, out)
    previous = _digests(out)
    env = _cli_environment(clean_env, tmp_path)
    before = corpus.digests()
    run = _run_cli([STRUN, "roman_mos", str(corpus.asn), "--output_dir", str(out)],
                   tmp_path / "work", env, preexec_fn=_limit_file_size(100_000))
    assert run.returncode == OUTPUT_ERROR_EXIT_STATUS, run.stderr[-3000:]
    _assert_one_error_line(run, "good_coadd.asdf: cannot write (File too large)")
    assert _digests(out) == previous
    assert corpus.digests() == before
    assert _entries(tmp_path / "work") == [] and _entries(tmp_path / "systemp") == []
