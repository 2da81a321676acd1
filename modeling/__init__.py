"""The LlavaAudio model folder, what the Hub gets: config, model, processor, feature extractor, pipeline, the media
rules they share (`media.py`) and the words they share with the trainers and the command line (`vocabulary.py`);
`save_pretrained` copies these files for `trust_remote_code`. `auto_classes.py` is the one place that says how the
classes are found: registered with transformers' Auto classes and pipeline registry where dali_hf is installed
(`register`), named in a saved folder's config.json (`auto_map`, `custom_pipelines`) where it is not.

Files here import only torch, transformers, numpy and each other (relative imports), so the Hub copy loads without
dali_hf; the media decoders (torchaudio, torchcodec, soundfile, PIL) are imported inside the functions that decode.
Nothing here imports the rest of dali_hf.

The model classes subclass transformers' LLaVA classes (`LlavaModel`, `LlavaForConditionalGeneration`) and run
their forward; what they add writes the audio features and the learned prefix (and, given ids, the image features,
with LLaVA's `get_image_features` and `get_placeholder_mask`) into the prompt's embeddings. They are
written as transformers writes its own: the CAV-MAE encoder attends through transformers' attention interface
(`attn_implementation`: "eager", "sdpa", "flash_attention_2", "flex_attention", settable per sub-config of the
captioner) and records hidden states and attentions with transformers' output-capturing hooks; the captioner calls
any audio tower as transformers' audio encoders are called, `(features, mask, **kwargs)`.

The names below are imported on first use (as transformers' model folders do), so that `dali_hf.modeling.vocabulary`
is read without torch: `dali-hf --help` takes its choices from it.
"""

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_PROMPT",
    "CavMaeAudioConfig",
    "CavMaeAudioModel",
    "CavMaeAudioPreTrainedModel",
    "CavMaeFeatureExtractor",
    "LlavaAudioConfig",
    "LlavaAudioForConditionalGeneration",
    "LlavaAudioModel",
    "LlavaAudioPreTrainedModel",
    "LlavaAudioProcessor",
    "audio_token_count",
]

if TYPE_CHECKING:
    from .configuration_cav_mae import CavMaeAudioConfig
    from .configuration_llava_audio import LlavaAudioConfig, audio_token_count
    from .feature_extraction_cav_mae import CavMaeFeatureExtractor
    from .modeling_cav_mae import CavMaeAudioModel, CavMaeAudioPreTrainedModel
    from .modeling_llava_audio import (
        LlavaAudioForConditionalGeneration,
        LlavaAudioModel,
        LlavaAudioPreTrainedModel,
    )
    from .processing_llava_audio import CHAT_TEMPLATE, DEFAULT_PROMPT, LlavaAudioProcessor

# the module of each name above
_MODULES = {
    ".configuration_cav_mae": ("CavMaeAudioConfig",),
    ".configuration_llava_audio": ("LlavaAudioConfig", "audio_token_count"),
    ".feature_extraction_cav_mae": ("CavMaeFeatureExtractor",),
    ".modeling_cav_mae": ("CavMaeAudioModel", "CavMaeAudioPreTrainedModel"),
    ".modeling_llava_audio": ("LlavaAudioForConditionalGeneration", "LlavaAudioModel", "LlavaAudioPreTrainedModel"),
    ".processing_llava_audio": ("CHAT_TEMPLATE", "DEFAULT_PROMPT", "LlavaAudioProcessor"),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
