"""The LlavaAudio model folder, what the Hub gets: config, model, processor, feature extractor, pipeline and the media
rules they share (`media.py`); `save_pretrained` copies these files for `trust_remote_code`.

Files here import only torch, transformers, numpy and each other (relative imports), so the Hub copy loads without
dali_hf; the media decoders (torchaudio, torchcodec, soundfile, PIL) are imported inside the functions that decode.
Nothing here imports the rest of dali_hf.

The model classes subclass transformers' LLaVA classes (`LlavaModel`, `LlavaForConditionalGeneration`) and run
their forward; what they add writes the audio features and the learned prefix into the prompt's embeddings.
"""

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
