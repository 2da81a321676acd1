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
from .modeling.pipeline_audio_captioning import AudioCaptioningPipeline

# Auto classes that give the captioner itself: the user's `AutoModel.from_pretrained("org/dali-...")` must
# caption, so AutoModel maps to the generation class too.
MODEL_AUTO_CLASSES = [AutoModel, AutoModelForImageTextToText]
if hasattr(transformers, "AutoModelForMultimodalLM"):
    MODEL_AUTO_CLASSES.append(transformers.AutoModelForMultimodalLM)


def register() -> None:
    """Register config, model and processor with the Auto classes, and mark them for remote-code saving."""
    AutoConfig.register(LlavaAudioConfig.model_type, LlavaAudioConfig, exist_ok=True)
    for auto_class in MODEL_AUTO_CLASSES:
        auto_class.register(LlavaAudioConfig, LlavaAudioForConditionalGeneration, exist_ok=True)
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
