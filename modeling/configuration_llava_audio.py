"""Configuration of LlavaAudio: a LLaVA-1.5 captioner plus an audio encoder aligned to its image tokens (DALI)."""

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .auto_classes import pipelines_to_keep
from .configuration_cav_mae import CavMaeAudioConfig

__all__ = ["LlavaAudioConfig", "audio_token_count"]


class LlavaAudioConfig(PreTrainedConfig):
    r"""
    Configuration of [`LlavaAudioForConditionalGeneration`].

    The vision tower, image projector and language model are LLaVA's, with LLaVA's field names and defaults
    (LLaVA-1.5-7B). The audio side adds:

    audio_config (`dict` or `PreTrainedConfig`):
        Any transformers audio encoder (built with `AutoModel.from_config`; the encoder of an encoder-decoder
        such as Whisper). Defaults to the Audio Spectrogram Transformer.
    audio_token_id (`int`):
        Placeholder token that the processor repeats `audio_seq_length` times per clip.
    prefix_token_id (`int`):
        Placeholder token that the processor repeats `num_prefix_tokens` times where a prefix is wanted.
    num_prefix_tokens (`int`):
        Number of learned prefix embeddings (stage 1a of DALI), placed after the modality tokens.
    audio_seq_length (`int`, *optional*):
        Number of tokens the audio encoder gives per clip; computed from `audio_config` for the known encoders
        (see [`audio_token_count`]).
    base_model (`str`, *optional*):
        The LLaVA checkpoint the captioner was built from (model cards name it).
    shared_projector (`bool`, *optional*, defaults to `False`):
        Send the image tokens through `audio_multi_modal_projector` too, as the DALI authors' code does with its one
        projector (after stage 2, images then go through the distilled projector). Off: images go through LLaVA's
        own projector, so image captioning stays exactly LLaVA's.
    training_stages (`list[dict]`, *optional*):
        What trained this checkpoint: one record per DALI stage (name, objective, hyper-parameters), written by the
        trainers, read by the model card.
    """

    model_type = "llava_audio"
    # LLaVA's name for the image placeholder (llava-hf configs and LLaVA tooling read and write it)
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "intermediate_size": 4096,
                "hidden_size": 1024,
                "patch_size": 14,
                "image_size": 336,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "vocab_size": 32000,
                "projection_dim": 768,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="audio-spectrogram-transformer"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    audio_token_id: int = 32002
    prefix_token_id: int = 32003
    image_seq_length: int = 576
    audio_seq_length: int | None = None
    num_prefix_tokens: int = 16
    projector_hidden_act: str = "gelu"
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    vision_feature_layer: int | list[int] = -2
    multimodal_projector_bias: bool = True
    tie_word_embeddings: bool = False
    base_model: str | None = None
    shared_projector: bool = False
    training_stages: list[dict] | None = None

    def __post_init__(self, **kwargs):
        # llava-hf configs spell the image token `image_token_index` (also readable and settable, `attribute_map`)
        if "image_token_index" in kwargs:
            self.image_token_id = kwargs.pop("image_token_index")
        # CAV-MAE is this project's own encoder: its config is built here (remote code has no registration)
        audio_config = self.audio_config
        if isinstance(audio_config, dict) and audio_config.get("model_type") == CavMaeAudioConfig.model_type:
            self.audio_config = CavMaeAudioConfig(**audio_config)
        # the pipeline a saved folder names for Pythons without dali_hf, unless this Python has it registered
        custom_pipelines = pipelines_to_keep(kwargs.pop("custom_pipelines", None))
        if custom_pipelines:
            kwargs["custom_pipelines"] = custom_pipelines
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        if self.audio_seq_length is None:
            self.audio_seq_length = audio_token_count(self.audio_config)
        if len({self.image_token_id, self.audio_token_id, self.prefix_token_id}) != 3:
            raise ValueError(
                "image_token_id, audio_token_id and prefix_token_id must be three different tokens, got "
                f"{self.image_token_id}, {self.audio_token_id}, {self.prefix_token_id}."
            )


def audio_token_count(audio_config: PreTrainedConfig) -> int | None:
    """Tokens per clip that the audio encoder of `audio_config` outputs, or None for an encoder it does not know.

    Every supported encoder takes fixed-length input (padded or cut by its feature extractor), so the count is a
    property of the config: AST (patch grid + CLS + distillation token), the Whisper encoder
    (`max_source_positions`), CAV-MAE (frequency patches x time patches).
    """
    model_type = getattr(audio_config, "model_type", None)
    if model_type == "audio-spectrogram-transformer":
        c = audio_config
        freq = (c.num_mel_bins - c.patch_size) // c.frequency_stride + 1
        time = (c.max_length - c.patch_size) // c.time_stride + 1
        return freq * time + 2
    if model_type == "whisper":
        return audio_config.max_source_positions
    if model_type == "cav_mae_audio":
        c = audio_config
        return (c.num_mel_bins // c.patch_size) * (c.target_length // c.patch_size)
    return None
