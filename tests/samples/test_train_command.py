"""``python -m jetcap.samples.train``'s command line: options that apply, and nothing written elsewhere."""
import json

import pytest

from jetcap.samples import train
from jetcap.samples import sample_dir


def test_samples_out_writes_the_inputs_there_not_into_the_package(tmp_path, capsys):
    shipped = (sample_dir() / "samples.json").read_bytes()
    assert train.main(["samples", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "samples.json").read_bytes() == shipped  # the same fixed seed, written elsewhere
    assert sorted(p.name for p in (tmp_path / "images").iterdir())[:1] == ["sample_00.png"]
    assert json.loads(capsys.readouterr().out) == json.loads(shipped.decode("utf-8"))
    assert (sample_dir() / "samples.json").read_bytes() == shipped


@pytest.mark.parametrize("option", [["--seed", "3"], ["--steps", "10"], ["--minutes", "1"]])
def test_samples_refuses_training_options(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["samples"] + option)
    assert exit_info.value.code == 2
    assert "samples takes only --out" in capsys.readouterr().err
