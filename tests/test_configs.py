"""The stage configs document every field they add or change (docstring and `--help`), and check their choices."""

import dataclasses
import inspect
import re
import typing

import pytest
from transformers import TrainingArguments

from dali_hf.cli import main
from dali_hf.modeling.processing_llava_audio import PROMPT_PRESETS
from dali_hf.trainers import AlignmentConfig, DistillationConfig, PrefixTuningConfig
from dali_hf.trainers.alignment import TRAINABLE
from dali_hf.trainers.arguments import CaptionStageConfig, PromptPreset

CONFIGS = {"align": AlignmentConfig, "prefix-tune": PrefixTuningConfig, "distill": DistillationConfig}
# every field whose value is one of a few words, and its words
CHOICES = {
    AlignmentConfig: {
        "objective": ("contrastive", "mmd", "ot", "attentive_ot"),
        "solver": ("exact", "sinkhorn"),
        "train_audio_parameters": ("all", "projection"),
        "attentive_ot_gradient": ("plan", "reference"),
    },
    PrefixTuningConfig: {"prompt_preset": ("llava", "reference")},
    DistillationConfig: {"prompt_preset": ("llava", "reference")},
}
# the defaults before the configs were documented: documenting them must not change them
DEFAULTS = {
    AlignmentConfig: dict(
        objective="attentive_ot", solver="exact", epsilon=None, contrastive_temperature=0.05, ot_overlap_chunks=1,
        uniform_epochs=1, lambda_values=[500.0, 400.0, 300.0, 200.0], lambda_final=100.0, scorer_learning_rate=1e-4,
        scorer_num_heads=8, scorer_temperature=20.0, scorer_uniform_mix=0.5, attentive_ot_gradient="plan",
        train_audio_parameters="all", augment=False, augment_noise_scale=0.1, augment_roll=True, learning_rate=1e-4,
        adam_beta1=0.95, weight_decay=5e-7, remove_unused_columns=False, ddp_find_unused_parameters=False),
    PrefixTuningConfig: dict(prompt=None, prompt_preset=None, learning_rate=1e-3, lr_scheduler_type="cosine",
                             warmup_steps=0.03, remove_unused_columns=False),
    DistillationConfig: dict(
        prompt=None, prompt_preset=None, use_prefix=False, lora_r=0, lora_alpha=16, lora_dropout=0.05,
        lora_target_modules=["q_proj", "v_proj"], learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03,
        num_train_epochs=1.0, remove_unused_columns=False),
}


def own_fields(config_class) -> list[dataclasses.Field]:
    """The fields a config adds to TrainingArguments or declares again (a changed default)."""
    declared = {name for cls in config_class.__mro__[:config_class.__mro__.index(TrainingArguments)]
                for name in vars(cls).get("__annotations__", {})}
    return [f for f in dataclasses.fields(config_class) if f.name in declared]


def documented_parameters(config_class) -> dict[str, str]:
    """Field name -> description, from the docstring's `Parameters:` section (TRL's layout)."""
    doc = inspect.cleandoc(config_class.__doc__)
    assert "Parameters:\n" in doc, f"{config_class.__name__} has no Parameters section"
    section = doc.split("Parameters:\n", 1)[1]
    entries = re.split(r"^    (\w+) \(.*\):\n", section, flags=re.MULTILINE)
    return {name: " ".join(text.split()) for name, text in zip(entries[1::2], entries[2::2], strict=True)}


def settings(tmp_path, **values):
    return dict(output_dir=str(tmp_path), report_to=[], use_cpu=True) | values


@pytest.mark.parametrize("config_class", [*CONFIGS.values(), CaptionStageConfig], ids=lambda c: c.__name__)
def test_every_field_is_documented_the_same_in_docstring_and_help(config_class):
    fields = own_fields(config_class)
    documented = documented_parameters(config_class)
    assert len(fields) >= 5
    for config_field in fields:
        help_text = " ".join(config_field.metadata.get("help", "").split())
        assert help_text, f"{config_class.__name__}.{config_field.name} has no help"
        assert config_field.name in documented, f"{config_field.name} is missing from the Parameters section"
        # the group headers ("> Parameters that control ...") end a description
        description = documented[config_field.name].split(" > ")[0]
        assert help_text == description, config_field.name
    assert set(documented) == {f.name for f in fields}, "the Parameters section lists what is not a field"


@pytest.mark.parametrize("config_class", CONFIGS.values(), ids=lambda c: c.__name__)
def test_defaults_are_the_reference_settings(config_class, tmp_path):
    config = config_class(**settings(tmp_path))
    assert {name: getattr(config, name) for name in DEFAULTS[config_class]} == DEFAULTS[config_class]
    assert set(DEFAULTS[config_class]) == {f.name for f in own_fields(config_class)}


@pytest.mark.parametrize(("config_class", "name"), [(c, n) for c, fields in CHOICES.items() for n in fields],
                         ids=lambda value: getattr(value, "__name__", value))
def test_choices_are_literals_checked_once_with_a_clear_error(config_class, name, tmp_path):
    choices = CHOICES[config_class][name]
    hint = typing.get_type_hints(config_class)[name]
    assert choices in (typing.get_args(hint), *(typing.get_args(arg) for arg in typing.get_args(hint)))
    for choice in choices:
        assert getattr(config_class(**settings(tmp_path, **{name: choice})), name) == choice
    with pytest.raises(ValueError) as error:
        config_class(**settings(tmp_path, **{name: "bogus"}))
    message = str(error.value)
    assert message.startswith(f"{name} must be one of") and "'bogus'" in message
    assert all(repr(choice) in message for choice in choices)


def test_optional_choice_accepts_none_and_says_so(tmp_path):
    assert PrefixTuningConfig(**settings(tmp_path, prompt_preset=None)).prompt_preset is None
    with pytest.raises(ValueError, match=r"prompt_preset must be one of 'llava', 'reference' or None; got 'vicuna'"):
        DistillationConfig(**settings(tmp_path, prompt_preset="vicuna"))


def test_choices_match_what_uses_them():
    assert set(typing.get_args(PromptPreset)) == set(PROMPT_PRESETS)
    hint = typing.get_type_hints(AlignmentConfig)["train_audio_parameters"]
    assert set(typing.get_args(hint)) == set(TRAINABLE)


@pytest.mark.parametrize("command", CONFIGS)
def test_cli_help_lists_every_field_and_the_choices(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for config_field in own_fields(CONFIGS[command]):
        assert f"--{config_field.name}" in out
        assert " ".join(config_field.metadata["help"].split())[:60] in out
    for name, choices in CHOICES[CONFIGS[command]].items():
        assert f"--{name} {{{','.join(choices)}}}" in out


def test_cli_rejects_a_bad_choice_before_loading_anything(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["align", "--model", str(tmp_path / "none"), "--data", str(tmp_path / "none"), "--output_dir",
              str(tmp_path), "--objective", "wasserstein"])
    assert done.value.code == 2
    error = capsys.readouterr().err
    assert "argument --objective: invalid choice: 'wasserstein'" in error
    assert "'attentive_ot'" in error


@pytest.mark.parametrize("config_class", [PrefixTuningConfig, DistillationConfig], ids=lambda c: c.__name__)
def test_the_caption_stages_share_their_base(config_class, tmp_path):
    """The prompt preset and the authors' schedule are declared once, in CaptionStageConfig (as TRL's configs share
    `_BaseConfig`); a saved config (the Trainer's training_args.bin, a pickle) loads back the same."""
    import pickle

    assert issubclass(config_class, CaptionStageConfig)
    assert not {"prompt_preset", "lr_scheduler_type", "warmup_steps"} & set(vars(config_class)["__annotations__"])
    config = config_class(**settings(tmp_path, prompt_preset="reference", warmup_steps=5))
    assert pickle.loads(pickle.dumps(config)).to_dict() == config.to_dict()
