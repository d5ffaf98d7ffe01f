"""One convention for every ``romosaic`` command: dashed options, -o, exit statuses."""

import argparse

import pytest

from romosaic.cli import _build_parser
from romosaic.cli import main as romosaic_main


def _subparsers(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_options_are_spelled_with_dashes():
    underscored = []
    for path, parser in _subparsers(_build_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and "_" in option:
                    underscored.append(f"romosaic {' '.join(path)} {option}")
    assert underscored == []


@pytest.mark.parametrize("arguments", [
    ["preview", "missing_coadd.asdf"],
    ["export-fits", "missing_coadd.asdf"],
    ["asn-from-list", "missing_cal.asdf", "-o", "x_asn.json", "--product-name", "x"],
    ["skycell", "info", "notacell"],
    ["skycell", "find", "--ra", "10"],
    ["skycell-asn", "missing_cal.asdf", "-o", "root"],
    ["pixtosky", "missing_cal.asdf", "1", "2"],
    ["convert-pars", "missing.asdf", "-o", "copy.asdf"],
    ["custom-mosaic", "missing.txt"],
    ["survey", "plan", "-o", "plan", "missing_cal.asdf"],
    ["survey", "status", "no_plan_here"],
])
def test_bad_input_exits_2_with_one_line(arguments, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert romosaic_main(arguments) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        romosaic_main(["preview"])
    assert exit_info.value.code == 2
    # Unknown options are refused, except by the commands that pass them to the pipeline.
    with pytest.raises(SystemExit) as exit_info:
        romosaic_main(["skycell", "info", "270p65x70y49", "--steps.resample.pixfrac=0.8"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
