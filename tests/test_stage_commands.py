"""The training commands' inputs: `--resume_from_checkpoint PATH` is honoured or refused before anything loads, and
distillation's pairs may already have a `caption` column, which the pseudo-captions replace. (Runs resumed from a
PATH under each engine: test_engines.py.)"""

import json
import logging

import datasets
import pytest

from dali_hf.cli import main
from dali_hf.recipe import checkpoint_to_resume
from dali_hf.trainers import PrefixTuningConfig, attach_captions


def _args(tmp_path, **overrides):
    return PrefixTuningConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, **overrides)


@pytest.mark.parametrize("kind", ["missing", "model folder"])
def test_a_resume_path_that_is_no_checkpoint_is_refused_before_loading(tmp_path, kind, capsys):
    path = tmp_path / "nowhere"
    if kind == "model folder":
        path.mkdir()
        (path / "config.json").write_text("{}")
    # --model does not exist either: the error is the checkpoint's, said before the model is read
    with pytest.raises(SystemExit) as stop:
        main(["prefix-tune", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"),
              "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", str(path), "--use_cpu", "true"])
    expected = ("no such folder; pass a checkpoint-N folder" if kind == "missing" else
                "is not a Trainer checkpoint (it has no trainer_state.json); pass a checkpoint-N folder")
    assert expected in str(stop.value) and str(path) in str(stop.value)


def test_the_checkpoint_to_resume(tmp_path):
    assert checkpoint_to_resume(_args(tmp_path)) is None  # a fresh run
    for step in (2, 10):
        (tmp_path / "out" / f"checkpoint-{step}").mkdir(parents=True)
        (tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({}))
    last = str(tmp_path / "out" / "checkpoint-10")
    assert checkpoint_to_resume(_args(tmp_path)) == last  # the last one in output_dir
    assert checkpoint_to_resume(_args(tmp_path, resume_from_checkpoint="true")) == last
    elsewhere = str(tmp_path / "out" / "checkpoint-2")
    assert checkpoint_to_resume(_args(tmp_path, resume_from_checkpoint=elsewhere)) == elsewhere  # the one given
    with pytest.raises(ValueError, match="holds no checkpoint-N folder"):
        checkpoint_to_resume(PrefixTuningConfig(output_dir=str(tmp_path / "new"), report_to=[], use_cpu=True,
                                                resume_from_checkpoint="true"))


def test_pseudo_captions_replace_the_pairs_own_captions(caplog):
    pairs = datasets.Dataset.from_dict({"id": ["a", "b", "c"], "audio": [1, 2, 3], "caption": ["x", "y", "z"]})
    captions = datasets.Dataset.from_dict({"id": ["c", "a"], "caption": ["rain falls", "a dog barks"]})
    with caplog.at_level(logging.WARNING):
        joined = attach_captions(pairs, captions)
    assert joined.column_names == ["id", "audio", "caption"]
    assert joined.to_dict() == {"id": ["a", "c"], "audio": [1, 3], "caption": ["a dog barks", "rain falls"]}
    assert "the pairs already have a 'caption' column: the pseudo-captions replace it" in caplog.text
    caplog.clear()
    attach_captions(pairs.remove_columns("caption"), captions)
    assert "replace" not in caplog.text
