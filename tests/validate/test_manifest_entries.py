"""`jetcap validate` on a manifest lacking what validation needs: one line and exit 2, before any run.

Each case is a copy of a healthy sample bundle with one manifest entry removed (the session fixtures
themselves stay untouched).
"""
import json
import shutil

import pytest
from click.testing import CliRunner

from jetcap.cli import cli


def _without(bundle, tmp_path, *keys):
    """A copy of ``bundle`` whose manifest lacks ``manifest[keys[0]][keys[1]]...``."""
    copy = tmp_path / "bundle"
    shutil.copytree(str(bundle), str(copy))
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    holder = manifest
    for key in keys[:-1]:
        holder = holder[key]
    del holder[keys[-1]]
    path.write_text(json.dumps(manifest))
    return copy


CASES = [
    ("classifier_bundle", ("tolerances",), "classifier bundle lacks 'tolerances', needed to validate"),
    ("captioner_bundle", ("tolerances",), "captioner bundle lacks 'tolerances', needed to validate"),
    ("classifier_bundle", ("tolerances", "fp16"), "lacks 'tolerances' for the fp16 variant"),
    ("classifier_bundle", ("task_thresholds",), "classifier bundle lacks 'task_thresholds', needed to validate"),
    ("captioner_bundle", ("task_thresholds",), "captioner bundle lacks 'task_thresholds', needed to validate"),
    ("classifier_bundle", ("task_thresholds", "int8"), "lacks 'task_thresholds' for the int8 variant"),
    ("classifier_bundle", ("reference",), "classifier bundle lacks 'reference', needed to validate"),
]


@pytest.mark.parametrize("fixture,keys,expected", CASES, ids=["-".join((c[0].split("_")[0],) + c[1]) for c in CASES])
def test_missing_validation_entry_is_one_line_exit_2(request, tmp_path, fixture, keys, expected):
    original = request.getfixturevalue(fixture)
    before = (original / "manifest.json").read_text()
    bundle = _without(original, tmp_path, *keys)
    result = CliRunner().invoke(cli, ["validate", str(bundle), "--precision", "fp32"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a KeyError
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and "malformed manifest" in errors[0] and expected in errors[0], result.output
    assert "Traceback" not in result.output and "validating" not in result.output  # refused before any run
    assert (original / "manifest.json").read_text() == before
