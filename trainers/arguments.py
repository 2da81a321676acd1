"""What the stage configs share: the check of their `Literal` choices and the prompt-preset choice."""

import dataclasses
import types
import typing
from typing import Literal

__all__ = ["PromptPreset", "check_choices"]

# the keys of the processor's PROMPT_PRESETS: "llava" (no system text) or "reference" (the authors' system texts)
PromptPreset = Literal["llava", "reference"]


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
