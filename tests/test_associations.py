"""Association files: validation errors and the asn-from-list command."""

import json

import pytest

from romosaic.associations import (
    load_association,
    make_association,
    product_name_from_filename,
    science_member_paths,
    validate_association,
)
from romosaic.cli import main as romosaic_main
from romosaic.errors import AssociationError


def _write(tmp_path, content, name="bad_asn.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _asn(members, name="prod"):
    return {"products": [{"name": name, "members": members}]}


@pytest.fixture
def two_files(tmp_path):
    for name in ("a_cal.asdf", "b_cal.asdf"):
        (tmp_path / name).write_text("placeholder")
    return tmp_path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ({}, "no products"),
        ({"products": []}, "no products"),
        ({"products": [{"name": "x", "members": []}]}, "no members"),
        (_asn([{"expname": "a_cal.asdf", "exptype": "background"}]), "no science members"),
        (_asn([{"exptype": "science"}]), "no 'expname'"),
        (_asn([{"expname": "missing_cal.asdf", "exptype": "science"}]),
         "member file not found: missing_cal.asdf"),
        (_asn([{"expname": "a_cal.asdf"}, {"expname": "./a_cal.asdf"}]),
         "listed more than once"),
        (_asn([{"expname": "a_cal.asdf"}], name="../escape"), "not a plain file name"),
        (_asn([{"expname": "a_cal.asdf"}], name="dir/prod"), "not a plain file name"),
        ({"products": [_asn([])["products"][0], _asn([])["products"][0]]}, "2 products"),
    ],
)
def test_bad_associations_name_file_and_problem(two_files, content, message):
    path = _write(two_files, content)
    with pytest.raises(AssociationError) as info:
        load_association(path)
    text = str(info.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


def test_missing_association_file(tmp_path):
    with pytest.raises(AssociationError, match="association file not found"):
        load_association(tmp_path / "nope_asn.json")


def test_valid_association_keeps_science_members_in_order(two_files):
    asn = _asn([{"expname": "b_cal.asdf", "exptype": "SCIENCE"},
                {"expname": "a_cal.asdf", "exptype": "background"},
                {"expname": "a_cal.asdf"}])
    validate_association(asn, base_dir=two_files)
    paths = science_member_paths(asn, two_files)
    assert [p.name for p in paths] == ["b_cal.asdf", "a_cal.asdf"]


def test_product_name_from_filename():
    assert product_name_from_filename("/x/r0001_wfi01_f158_cal.asdf") == "r0001_wfi01_f158"
    assert product_name_from_filename("field_asn.json") == "field"


def test_asn_from_list_writes_reference_format(two_files, capsys):
    out = two_files / "sub" / "mine_asn.json"
    out.parent.mkdir()
    status = romosaic_main([
        "asn-from-list", "-o", str(out), "--product-name", "mine", "--target", "270p65x70y49",
        str(two_files / "a_cal.asdf"), str(two_files / "b_cal.asdf"),
    ])
    assert status == 0
    asn = json.loads(out.read_text())
    assert asn["asn_type"] == "image"
    assert asn["asn_rule"] == "DMS_ELPP_Base"
    assert asn["target"] == "270p65x70y49"
    assert asn["skycell_wcs_info"] == "none"
    product = asn["products"][0]
    assert product["name"] == "mine"
    assert [m["expname"] for m in product["members"]] == ["../a_cal.asdf", "../b_cal.asdf"]
    assert all(m["exptype"] == "science" for m in product["members"])
    # The written association validates and resolves back to the files.
    loaded = load_association(out)
    assert [p.name for p in science_member_paths(loaded, out.parent)] == ["a_cal.asdf",
                                                                         "b_cal.asdf"]


def test_asn_from_list_rejects_missing_file(tmp_path, capsys):
    status = romosaic_main(["asn-from-list", "-o", str(tmp_path / "x_asn.json"),
                            "--product-name", "x", str(tmp_path / "nope_cal.asdf")])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope_cal.asdf: file not found" in err[0]
    assert not (tmp_path / "x_asn.json").exists()


def test_make_association_rejects_bad_product_name():
    with pytest.raises(AssociationError, match="plain file name"):
        make_association(["a_cal.asdf"], product_name="a/b")
