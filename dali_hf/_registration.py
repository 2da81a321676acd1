"""Registration of the LlavaAudio classes with the transformers Auto classes (done once, on import)."""

import transformers
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling import (
    CavMaeAudioConfig,
    CavMaeAudioModel,
    CavMaeFeatureExtractor,
    LlavaAudioConfig,
    LlavaAudioForConditionalGeneration,
    LlavaAudioProcessor,
)
from .modeling.modeling_llava_audio import CAPTIONER_AUTO_CLASSES
from .modeling.pipeline_audio_captioning import AudioCaptioningPipeline


def register() -> None:
    """Register config, model and processor with the Auto classes, and mark them for remote-code saving."""
    AutoConfig.register(LlavaAudioConfig.model_type, LlavaAudioConfig, exist_ok=True)
    # the Auto classes that give the captioner itself (AutoModel too: `AutoModel.from_pretrained("org/dali-...")`
    # must caption); the same list that saved folders name in their `auto_map`
    for name in CAPTIONER_AUTO_CLASSES:
        if hasattr(transformers, name):  # AutoModelForMultimodalLM is recent
            getattr(transformers, name).register(LlavaAudioConfig, LlavaAudioForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(LlavaAudioConfig, LlavaAudioProcessor, exist_ok=True)

    # `save_pretrained` then copies the modeling/ files and writes `auto_map`.
    LlavaAudioConfig.register_for_auto_class()
    LlavaAudioForConditionalGeneration.register_for_auto_class("AutoModel")
    LlavaAudioProcessor.register_for_auto_class()

    # The CAV-MAE audio encoder, on its own and inside LlavaAudio checkpoints
    AutoConfig.register(CavMaeAudioConfig.model_type, CavMaeAudioConfig, exist_ok=True)
    AutoModel.register(CavMaeAudioConfig, CavMaeAudioModel, exist_ok=True)
    AutoFeatureExtractor.register(CavMaeAudioConfig, CavMaeFeatureExtractor, exist_ok=True)
    CavMaeAudioConfig.register_for_auto_class()
    CavMaeAudioModel.register_for_auto_class("AutoModel")
    CavMaeFeatureExtractor.register_for_auto_class()

    # pipeline("audio-captioning")
    if "audio-captioning" not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline("audio-captioning", pipeline_class=AudioCaptioningPipeline,
                                            pt_model=AutoModelForImageTextToText, type="multimodal")
    LlavaAudioConfig.locally_registered_tasks = ("audio-captioning",)
