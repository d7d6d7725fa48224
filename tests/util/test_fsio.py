"""--force replaces only what jetcap wrote; an interrupted swap is finished or undone by the next run."""
import json
import os

import pytest

from jetcap.errors import UsageError
from jetcap.util.fsio import atomic_directory, is_jetcap_output, recover_directory


def _bundle(path, marker="v1"):
    os.makedirs(str(path))
    (path / "manifest.json").write_text(json.dumps({"format": "jetcap-bundle", "marker": marker}))
    return path


def test_force_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a directory jetcap wrote"):
        with atomic_directory(str(notes), force=True):
            pytest.fail("the block must not run")
    assert (notes / "todo.txt").read_text() == "mine" and (notes / "sub").is_dir()
    assert sorted(os.listdir(str(tmp_path))) == ["notes"]  # no .tmp-* left


def test_force_replaces_a_bundle(tmp_path):
    out = _bundle(tmp_path / "b")
    with atomic_directory(str(out), force=True) as tmp:
        _bundle_path = os.path.join(tmp, "manifest.json")
        with open(_bundle_path, "w") as handle:
            json.dump({"format": "jetcap-bundle", "marker": "v2"}, handle)
    assert json.loads((out / "manifest.json").read_text())["marker"] == "v2"
    assert sorted(os.listdir(str(tmp_path))) == ["b"]
    assert is_jetcap_output(str(out)) and not is_jetcap_output(str(tmp_path))


def test_a_kill_between_the_renames_is_finished_by_the_next_run(tmp_path):
    # the state a kill leaves: old bundle moved aside, the complete new one not yet in place
    _bundle(tmp_path / ".old-b-999999-x", "old")
    _bundle(tmp_path / ".new-b-999999-y", "new")
    os.makedirs(str(tmp_path / ".tmp-b-999999-z"))
    done = recover_directory(str(tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["marker"] == "new"
    assert sorted(os.listdir(str(tmp_path))) == ["b"], done


def test_a_kill_before_the_new_one_was_complete_restores_the_old(tmp_path):
    _bundle(tmp_path / ".old-b-999999-x", "old")
    os.makedirs(str(tmp_path / ".tmp-b-999999-z"))
    with pytest.raises(FileExistsError):  # the next run without --force finds the restored bundle
        with atomic_directory(str(tmp_path / "b")):
            pass
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["marker"] == "old"
    assert sorted(os.listdir(str(tmp_path))) == ["b"]


def test_a_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(str(tmp_path / "b")) as tmp:
            open(os.path.join(tmp, "x"), "w").close()
            raise RuntimeError("boom")
    assert os.listdir(str(tmp_path)) == []
