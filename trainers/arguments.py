"""What the stage configs share: the check of their `Literal` choices, and the base of the two captioning stages'
configs (`CaptionStageConfig`: the prompt and the authors' schedule), as TRL's configs share `_BaseConfig`."""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from ..modeling.processing_llava_audio import DEFAULT_PROMPT
from ..modeling.vocabulary import PromptPreset

__all__ = ["CaptionStageConfig", "PromptPreset", "check_choices", "keep_columns_field", "prompt_field"]


def check_choices(config) -> None:
    """Raise a ValueError naming the field, its value and the choices, for the first field of the dataclass `config`
    typed `Literal[...]` (or `Literal[...] | None`) whose value is not one of the choices."""
    hints = typing.get_type_hints(type(config))
    for config_field in dataclasses.fields(config):
        choices, optional = _literal_choices(hints[config_field.name])
        value = getattr(config, config_field.name)
        if choices is None or value in choices or (optional and value is None):
            continue
        allowed = ", ".join(repr(choice) for choice in choices) + (" or None" if optional else "")
        raise ValueError(f"{config_field.name} must be one of {allowed}; got {value!r}")


def _literal_choices(hint) -> tuple[tuple | None, bool]:
    """(choices, whether None is allowed too) of a `Literal[...]` or `Literal[...] | None` hint; (None, False) for
    any other hint."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint), False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        literals = [member for member in members if typing.get_origin(member) is Literal]
        if len(literals) == 1 and set(members) == {literals[0], type(None)}:
            return typing.get_args(literals[0]), True
    return None, False


def prompt_field(after: str):
    """The `prompt` field of a captioning stage whose prompt follows `after` (e.g. "the audio tokens")."""
    return field(
        default=None,
        metadata={"help": f"Instruction after {after}; `None` means the processor's `default_prompt` "
                          f"(\"{DEFAULT_PROMPT}\")."},
    )


def keep_columns_field(columns: str):
    """`remove_unused_columns` off, for a stage whose collator reads `columns` (e.g. "`audio` and `caption`")."""
    return field(
        default=False,
        metadata={"help": f"Keep every dataset column: the collator reads {columns}, which the model's forward does "
                          "not name."},
    )


@dataclass
class CaptionStageConfig(TrainingArguments):
    r"""
    Base configuration class of the captioning stages, [`PrefixTuningConfig`] (1a) and [`DistillationConfig`] (2b):
    both train one part of the model with the language-model loss on captions, after the same kind of prompt, on the
    authors' schedule. The subclasses document these fields again, as their own `--help` shows them, and set
    `prompt` and `remove_unused_columns` again (with [`prompt_field`] and [`keep_columns_field`]) to say what their
    prompt follows and which columns their collator reads.

    Parameters:
        > Parameters that control the prompt

        prompt (`str` or `None`, *optional*, defaults to `None`):
            Instruction after the media tokens; `None` means the processor's `default_prompt` ("Describe the sound
            that can be heard in this scene.").
        prompt_preset (`str` or `None`, *optional*, defaults to `None`):
            System text put before the prompt: `"llava"` (none) or `"reference"` (that of the authors' training
            code); `None` means the processor's `prompt_preset`.

        > Parameters whose defaults differ from TrainingArguments

        lr_scheduler_type (`str`, *optional*, defaults to `"cosine"`):
            Learning-rate schedule (the authors' code: cosine).
        warmup_steps (`float`, *optional*, defaults to `0.03`):
            Linear warm-up of the learning rate from 0: below 1, a share of the optimiser steps (the authors' code:
            0.03); 1 or more, a number of steps. The model card records the steps it came to.
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep every dataset column: the collator reads the media and `caption` columns, which the model's forward
            does not name.
    """

    # Parameters that control the prompt
    prompt: str | None = prompt_field("the media tokens")
    prompt_preset: PromptPreset | None = field(
        default=None,
        metadata={"help": "System text put before the prompt: `\"llava\"` (none) or `\"reference\"` (that of the "
                          "authors' training code); `None` means the processor's `prompt_preset`."},
    )

    # Parameters whose defaults differ from TrainingArguments
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "Learning-rate schedule (the authors' code: cosine)."}
    )
    warmup_steps: float = field(
        default=0.03,
        metadata={"help": "Linear warm-up of the learning rate from 0: below 1, a share of the optimiser steps (the "
                          "authors' code: 0.03); 1 or more, a number of steps. The model card records the steps it came "
                          "to."},
    )
    remove_unused_columns: bool = keep_columns_field("the media and `caption` columns")

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
