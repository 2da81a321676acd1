"""The LlavaAudio model folder: exactly the files `save_pretrained` copies for `trust_remote_code`.

Files here import only torch, torchaudio, numpy, transformers and each other (relative imports), so the Hub copy
loads without dali_hf.
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
