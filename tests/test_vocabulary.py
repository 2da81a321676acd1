"""One vocabulary (`dali_hf.modeling.vocabulary`): the command line's choices, the configs' types, the pipeline's and
the processor's checks and the texts that list the words all read the one definition, and the command line reads it
without torch."""

import argparse
import inspect
import re
import subprocess
import sys
import typing

import pytest

from dali_hf import cli, recipe
from dali_hf.metrics import ALL_METRICS
from dali_hf.modeling import pipeline_audio_captioning, processing_llava_audio
from dali_hf.modeling.vocabulary import (
    DECODING_PRESETS,
    LONG_AUDIO_POLICIES,
    MODES,
    PROMPT_PRESETS,
    STAGES,
    PromptPreset,
)
from dali_hf.trainers import DistillationConfig, PrefixTuningConfig, stages
from dali_hf.trainers.arguments import CaptionStageConfig


def quoted(text: str) -> set[str]:
    """The words written in double quotes in `text`."""
    return set(re.findall(r'"([\w-]+)"', text))


def subcommand_options() -> dict[str, dict[str, argparse.Action]]:
    """{subcommand: {option: its argparse action}} of the parser `dali-hf` builds (convert-official's included)."""
    from dali_hf.convert import add_convert_subcommand

    parser = cli.build_parser()
    commands = dict(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)
    convert = argparse.ArgumentParser()
    add_convert_subcommand(convert.add_subparsers())
    commands["convert-official"] = next(a for a in convert._actions
                                        if isinstance(a, argparse._SubParsersAction)).choices["convert-official"]
    return {name: {option: action for action in command._actions for option in action.option_strings}
            for name, command in commands.items()}


def test_the_command_line_offers_the_vocabulary():
    options = subcommand_options()
    for command in ("caption", "pseudo-caption", "convert-official"):
        assert list(options[command]["--prompt-preset"].choices) == list(PROMPT_PRESETS), command
    for command in ("caption", "pseudo-caption"):
        assert list(options[command]["--preset"].choices) == list(DECODING_PRESETS), command
    assert list(options["caption"]["--mode"].choices) == list(MODES)
    assert list(options["caption"]["--long-audio"].choices) == list(LONG_AUDIO_POLICIES)
    assert list(options["evaluate"]["--metrics"].choices) == list(ALL_METRICS)
    assert ", ".join(ALL_METRICS) in options["evaluate"]["--metrics"].help


def test_the_prompt_preset_help_names_each_preset_with_its_meaning():
    """The choices are listed in the vocabulary's order ({llava,reference}): a help that says what they mean in
    another order ("the authors' (default) or none") reads as if llava were the authors' texts."""
    options = subcommand_options()
    for command in ("caption", "pseudo-caption", "convert-official"):
        help_text = options[command]["--prompt-preset"].help
        assert re.findall(r"(\w+) \(", help_text.split(":", 1)[1]) == list(PROMPT_PRESETS), command
        assert re.search(r"llava \(none\)", help_text) and re.search(r"reference \(the authors'", help_text), command


def test_the_configs_type_the_prompt_presets():
    assert typing.get_args(PromptPreset) == tuple(PROMPT_PRESETS)
    for config_class in (CaptionStageConfig, PrefixTuningConfig, DistillationConfig):
        assert typing.get_type_hints(config_class)["prompt_preset"] == PromptPreset | None


def test_the_pipeline_and_the_processor_read_it():
    assert pipeline_audio_captioning.MODES is MODES
    assert pipeline_audio_captioning.LONG_AUDIO_POLICIES is LONG_AUDIO_POLICIES
    assert processing_llava_audio.PROMPT_PRESETS is PROMPT_PRESETS
    # each pipeline preset is the vocabulary's sampling, with one beam and 64 new tokens
    assert pipeline_audio_captioning.PRESETS == {
        "greedy": {"do_sample": False, "num_beams": 1, "max_new_tokens": 64},
        "paper": {"do_sample": True, "temperature": 0.2, "num_beams": 1, "max_new_tokens": 64}}
    assert {name: {k: v for k, v in preset.items() if k in ("do_sample", "temperature")}
            for name, preset in pipeline_audio_captioning.PRESETS.items()} == DECODING_PRESETS
    with pytest.raises(ValueError, match=r"prompt_preset must be one of \['llava', 'reference'\], got 'vicuna'"):
        processing_llava_audio._check_preset("vicuna")


def test_the_texts_that_list_the_words_list_all_of_them():
    """Help and docstrings that name the words name each of them (and no other)."""
    paper = DECODING_PRESETS["paper"]
    assert cli.PRESET_HELP == ("decoding: greedy (reproducible) or paper (temperature "
                               f"{paper['temperature']}, as the reference code)")
    assert set(re.findall(r"(\w+) \(", cli.PRESET_HELP)) == set(DECODING_PRESETS)
    pipeline_doc = inspect.getdoc(pipeline_audio_captioning.AudioCaptioningPipeline)
    assert quoted(re.search(r"`preset` \(([^)]*)\)", pipeline_doc).group(1)) == set(DECODING_PRESETS)
    assert quoted(re.search(r"`mode` \(([^)]*)\)", pipeline_doc).group(1)) == set(MODES)
    assert f'temperature {paper["temperature"]}' in pipeline_audio_captioning.__doc__
    processor_doc = " ".join(inspect.getdoc(processing_llava_audio.LlavaAudioProcessor).split())
    assert quoted(processor_doc.split("prompt_preset:", 1)[1]) == set(PROMPT_PRESETS)
    for config_class in (CaptionStageConfig, PrefixTuningConfig, DistillationConfig):
        help_text = next(f for f in config_class.__dataclass_fields__.values() if f.name == "prompt_preset")
        assert quoted(help_text.metadata["help"]) == set(PROMPT_PRESETS), config_class.__name__


def test_the_stages_table_is_the_vocabulary():
    table = re.findall(r"^    (\d[ab]) ([\w-]+) +(.+)$", stages.__doc__, flags=re.MULTILINE)
    assert table == [(stage.step, stage.name, stage.summary) for stage in STAGES]
    assert stages.STAGES is STAGES
    # the recipe runs every stage in order, and its config has one section per stage
    assert [step.stage for step in recipe.RECIPE] == [stage.name for stage in STAGES]
    assert set(recipe.SECTION_KEYS) == {stage.name for stage in STAGES}


@pytest.mark.slow  # a fresh interpreter
def test_the_vocabulary_and_the_parser_need_no_torch():
    script = ("import sys; sys.argv = ['dali-hf']\n"
              "from dali_hf.cli import build_parser\n"
              "from dali_hf.modeling.vocabulary import STAGES\n"
              "build_parser()\n"
              "print(sorted({'torch', 'transformers', 'numpy'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
