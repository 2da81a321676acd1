"""The LlavaAudio model folder: exactly the files `save_pretrained` copies for `trust_remote_code`.

Files here import only torch, transformers and each other (relative imports), so the Hub copy loads without dali_hf.
"""

from .configuration_llava_audio import LlavaAudioConfig, audio_token_count
from .modeling_llava_audio import (
    LlavaAudioForConditionalGeneration,
    LlavaAudioModel,
    LlavaAudioPreTrainedModel,
)
from .processing_llava_audio import CHAT_TEMPLATE, DEFAULT_PROMPT, LlavaAudioProcessor

__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_PROMPT",
    "LlavaAudioConfig",
    "LlavaAudioForConditionalGeneration",
    "LlavaAudioModel",
    "LlavaAudioPreTrainedModel",
    "LlavaAudioProcessor",
    "audio_token_count",
]
