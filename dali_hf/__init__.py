"""dali-hf: DALI zero-shot audio captioning (NeurIPS 2024) for the Hugging Face stack.

Layout, imports flowing one way (`tests/test_import_graph.py` checks it):

    modeling/      the model files the Hub gets (config, model, processor, feature extractor, pipeline, media,
                   and the words shared with the trainers and the CLI: vocabulary.py, importable without torch)
    model_cards/   the model card template and its rendering
    trainers/      the stages' Trainer subclasses, configs and objectives    imports modeling, model_cards
    dali_hf/*.py   the CLI, recipe, conversion, data, evaluation, metrics, Hub uploads, registration and the tiny
                   builders of `testing`                                      imports all of the above
    dali_hf/demo/  `make demo`: the toy world                                 imports anything; nothing imports it

Importing the package registers `llava_audio` with the Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForImageTextToText` and `AutoProcessor` load DALI checkpoints without `trust_remote_code`.
The public names below are imported on first use.
"""

import importlib
import os
import sys

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
    "register": "._registration",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


# The `dali-hf` command registers the classes itself once its arguments are parsed, so that `--help` and argument
# errors answer without importing torch and transformers; anywhere else, importing the package registers them.
if os.path.basename(getattr(sys, "argv", None) and sys.argv[0] or "") != "dali-hf":
    from ._registration import register

    register()
