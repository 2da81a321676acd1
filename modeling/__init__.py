"""The LlavaAudio model folder, what the Hub gets: config, model, processor, feature extractor, pipeline and the media
rules they share (`media.py`); `save_pretrained` copies these files for `trust_remote_code`.

Files here import only torch, transformers, numpy and each other (relative imports), so the Hub copy loads without
dali_hf; the media decoders (torchaudio, torchcodec, soundfile, PIL) are imported inside the functions that decode.
Nothing here imports the rest of dali_hf.

The models are written as transformers writes its own: the CAV-MAE encoder attends through transformers' attention
interface (`attn_implementation`: "eager", "sdpa", "flash_attention_2", "flex_attention", settable per sub-config of
the captioner) and records hidden states and attentions with transformers' output-capturing hooks; the captioner calls
any audio tower as transformers' audio encoders are called, `(features, mask, **kwargs)`.
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
