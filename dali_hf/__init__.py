"""dali-hf: DALI zero-shot audio captioning (NeurIPS 2024) for the Hugging Face stack.

Importing the package registers `llava_audio` with the Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForImageTextToText` and `AutoProcessor` load DALI checkpoints without `trust_remote_code`.
"""

from ._registration import register
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

register()

__version__ = "0.1.0"
__all__ = [
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
