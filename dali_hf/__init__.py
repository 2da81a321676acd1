"""dali-hf: DALI zero-shot audio captioning (NeurIPS 2024) for the Hugging Face stack.

Layout, imports flowing one way (`tests/test_import_graph.py` checks it):

    modeling/      the model files the Hub gets (config, model, processor, feature extractor, pipeline, media,
                   and the words shared with the trainers and the CLI: vocabulary.py, importable without torch)
    model_cards/   the model card template and its rendering
    trainers/      the stages' Trainer subclasses, configs and objectives    imports modeling, model_cards
    dali_hf/*.py   the CLI, recipe, conversion, data, evaluation, metrics, Hub uploads and the tiny builders of
                   `testing`                                                  imports all of the above
    dali_hf/demo/  `make demo`: the toy world                                 imports anything; nothing imports it

The installed package is `dali_hf` with those folders inside it (`dali_hf.modeling`, `dali_hf.trainers`,
`dali_hf.model_cards`): wheels copy them in; in a checkout, dali_hf/modeling, dali_hf/trainers and dali_hf/model_cards
are links to them, which editors and static checkers follow (the editable install's import hook is invisible to them).

Importing the package registers `llava_audio` with the Auto classes and the "audio-captioning" pipeline task
(`dali_hf.modeling.auto_classes`, which also says what a saved folder carries for Pythons without dali_hf), so
`AutoConfig`, `AutoModel`, `AutoModelForImageTextToText`, `AutoProcessor` and `pipeline("audio-captioning")` load
DALI checkpoints without `trust_remote_code`.
The public names below are imported on first use (and under `TYPE_CHECKING`, for static checkers).
"""

import importlib
import os
import sys
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "CHAT_TEMPLATE": ".modeling",
    "DEFAULT_PROMPT": ".modeling",
    "CavMaeAudioConfig": ".modeling",
    "CavMaeAudioModel": ".modeling",
    "CavMaeFeatureExtractor": ".modeling",
    "LlavaAudioConfig": ".modeling",
    "LlavaAudioForConditionalGeneration": ".modeling",
    "LlavaAudioModel": ".modeling",
    "LlavaAudioPreTrainedModel": ".modeling",
    "LlavaAudioProcessor": ".modeling",
    "audio_token_count": ".modeling",
    "convert_official": ".convert",
    "register": ".modeling.auto_classes",
}
__all__ = [  # the keys of _PUBLIC, written out so that linters see the names imported under TYPE_CHECKING as exported
    "CHAT_TEMPLATE",
    "DEFAULT_PROMPT",
    "CavMaeAudioConfig",
    "CavMaeAudioModel",
    "CavMaeFeatureExtractor",
    "LlavaAudioConfig",
    "LlavaAudioForConditionalGeneration",
    "LlavaAudioModel",
    "LlavaAudioPreTrainedModel",
    "LlavaAudioProcessor",
    "audio_token_count",
    "convert_official",
    "register",
]

if TYPE_CHECKING:  # what static checkers and editors read for the names above, imported on first use at run time
    from .convert import convert_official
    from .modeling import (
        CHAT_TEMPLATE,
        DEFAULT_PROMPT,
        CavMaeAudioConfig,
        CavMaeAudioModel,
        CavMaeFeatureExtractor,
        LlavaAudioConfig,
        LlavaAudioForConditionalGeneration,
        LlavaAudioModel,
        LlavaAudioPreTrainedModel,
        LlavaAudioProcessor,
        audio_token_count,
    )
    from .modeling.auto_classes import register


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


# Registering imports torch and transformers: the `dali-hf` command registers once a command that loads a model has
# parsed its arguments, so that `--help` and argument errors answer at once; anywhere else, importing the package
# registers. What registration does, and what a saved folder carries instead: modeling/auto_classes.py.
if os.path.basename(getattr(sys, "argv", None) and sys.argv[0] or "") != "dali-hf":
    from .modeling.auto_classes import register

    register()
