"""One vocabulary of stages (`dali_hf.trainers.stages.STAGES`): the CLI, the recipe, the trainers, the cards and the
memory table all use its names."""

import json
from types import SimpleNamespace

import pytest

from dali_hf import cli, recipe
from dali_hf.model_cards import record_stage, render_model_card
from dali_hf.trainers import AudioVisualDistillationTrainer, DistributionAlignmentTrainer, PrefixTuningTrainer
from dali_hf.trainers.stages import STAGES, stage_named

NAMES = [stage.name for stage in STAGES]


def test_the_cli_subcommands_are_the_stage_names():
    assert list(cli.TRAINING_STAGES) + ["pseudo-caption"] == ["prefix-tune", "align", "distill", "pseudo-caption"]
    assert sorted(list(cli.TRAINING_STAGES) + ["pseudo-caption"]) == sorted(NAMES)
    helps = {name: text for name, (_, _, text) in cli.TRAINING_STAGES.items()} | {
        "pseudo-caption": cli.PSEUDO_CAPTION_HELP}
    for stage in STAGES:
        assert helps[stage.name].startswith(f"stage {stage.step}: {stage.summary}"), stage


def test_trainers_record_their_stage_by_name():
    trainers = {PrefixTuningTrainer: "1a", DistributionAlignmentTrainer: "1b", AudioVisualDistillationTrainer: "2b"}
    for trainer, step in trainers.items():
        assert stage_named(trainer.stage_name).step == step
    with pytest.raises(ValueError, match="unknown stage 'alignment': the stages are prefix-tune, align"):
        stage_named("alignment")


def test_folders_and_card_titles_use_the_names(tmp_path):
    assert [stage.folder for stage in STAGES] == ["1a-prefix-tune", "1b-align", "2a-pseudo-caption", "2b-distill"]
    config = SimpleNamespace(training_stages=None)
    args = SimpleNamespace(world_size=1, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                           learning_rate=1e-4, num_train_epochs=1, max_steps=-1, seed=0, objective="ot")
    record_stage(config, "align", args, 10, ("objective",), step="1b")
    (tmp_path / "config.json").write_text(json.dumps({"training_stages": config.training_stages,
                                                      "audio_config": {"model_type": "cav_mae_audio"}}))
    card = str(render_model_card(tmp_path, repo_id="org/x"))
    assert "**Stages:** 1b align" in card and "| 1b align | " in card and "objective=ot" in card


def test_the_recipe_names_its_sections_as_the_stages(tmp_path):
    with pytest.raises(ValueError, match="rename 'prefix' to 'prefix-tune', 'pseudo_caption' to 'pseudo-caption'"):
        recipe.run_recipe({"model": "m", "output_dir": str(tmp_path), "prefix": {}, "pseudo_caption": {}})


def test_a_recipe_with_the_old_names_is_a_cli_error_that_says_what_to_rename(tmp_path, capsys):
    (tmp_path / "old.yaml").write_text("model: m\noutput_dir: out\nprefix: {data: x}\nalign: {data: y}\n")
    with pytest.raises(SystemExit, match="old.yaml: the recipe's sections are named as the stages: rename 'prefix' "
                                         "to 'prefix-tune'"):
        cli.main(["train", "--config", str(tmp_path / "old.yaml")])
    with pytest.raises(ValueError, match=r"the recipe lacks prefix-tune, align.data"):
        recipe.check_recipe({"model": "m", "output_dir": "o", "align": {}})
    with pytest.raises(ValueError, match=r"unknown recipe section\(s\) \['distil'\]"):
        recipe.check_recipe({"model": "m", "output_dir": "o", "prefix-tune": {"data": 1}, "align": {"data": 2},
                             "distil": {}})
