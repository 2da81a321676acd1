"""LlavaAudioProcessor: LLaVA's tokenizer and CLIP image processor plus an audio feature extractor."""

import copy
import re

from transformers import AddedToken, AutoFeatureExtractor, AutoProcessor, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

from .configuration_llava_audio import audio_token_count
from .vocabulary import PROMPT_PRESETS

logger = logging.get_logger(__name__)

__all__ = ["LlavaAudioProcessor", "placeholder_token_ids", "CHAT_TEMPLATE", "DEFAULT_PROMPT", "PROMPT_PRESETS"]

AUDIO_TOKEN = "<audio>"
PREFIX_TOKEN = "<prefix>"
DEFAULT_PROMPT = "Describe the sound that can be heard in this scene."  # the reference code's prompt

# LLaVA-1.5's `llava_v1` template as llava-hf writes it, with audio and prefix placeholders right after the image
# (in DALI the prefix sits right after the modality tokens, before the prompt text). Image-only prompts are
# exactly LLaVA's: "USER: <image>\n{text} ASSISTANT:". An answer ends with </s> (llava_v1's separator after the
# assistant), inside `{% generation %}`: training on the assistant mask (TRL's `assistant_only_loss`, our collators)
# teaches the model to stop. As in LLaVA's, <s> is left to the tokenizer.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}{{ message['role'].upper() + ': ' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] + ' ' }}{%- else -%}"
    "{%- set ns = namespace(media=false) -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'image') -%}"
    "{{ '<image>' }}{%- set ns.media = true -%}{%- endfor -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'audio') -%}"
    "{{ '<audio>' }}{%- set ns.media = true -%}{%- endfor -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'prefix') -%}"
    "{{ '<prefix>' }}{%- set ns.media = true -%}{%- endfor -%}"
    "{%- if ns.media -%}{{ '\n' }}{%- endif -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}{{ content['text'] + eos_token }}{% endgeneration %}"
    "{%- else -%}{{ content['text'] + ' ' }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


class LlavaAudioProcessor(ProcessorMixin):
    r"""
    Tokenizer + CLIP image processor + audio feature extractor, with the LLaVA-1.5 chat template.

    `processor(text=..., images=..., audio=..., sampling_rate=...)` expands every `<image>` to the image token count,
    every `<audio>` to `num_audio_tokens` and every `<prefix>` to `num_prefix_tokens`, and returns `input_ids`,
    `attention_mask`, `pixel_values`, `input_features` and `input_features_mask`. Prompts are padded on the left
    unless asked otherwise, as generation needs.

    `apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")` gives the same model-ready
    inputs from a conversation, as audio-LLM processors do: content items `{"type": "image", "path"/"url"/"image"}`,
    `{"type": "audio", "path"/"url"/"audio"}` (files are loaded and resampled to the feature extractor's rate),
    `{"type": "prefix"}` and `{"type": "text", "text"}`. The template is saved with the processor
    (`chat_template.jinja`).

    Args:
        image_processor: LLaVA's CLIP image processor.
        feature_extractor: the audio encoder's feature extractor.
        tokenizer: LLaVA's tokenizer, holding the `<image>`, `<audio>` and `<prefix>` tokens.
        chat_template: defaults to [`CHAT_TEMPLATE`].
        patch_size, vision_feature_select_strategy, num_additional_image_tokens: as in `LlavaProcessor`.
        num_audio_tokens: audio encoder tokens per clip.
        num_prefix_tokens: learned prefix length.
        default_prompt: the instruction [`caption_prompt`] uses.
        prompt_preset: the system texts [`caption_prompt`] uses, a key of [`PROMPT_PRESETS`]: "llava" (none) or
            "reference" (those of the DALI authors' code, which their released checkpoints were trained with).
    """

    def __init__(
        self,
        image_processor=None,
        feature_extractor=None,
        tokenizer=None,
        chat_template=None,
        patch_size=None,
        vision_feature_select_strategy=None,
        num_additional_image_tokens=0,
        num_audio_tokens=None,
        num_prefix_tokens=16,
        image_token="<image>",
        audio_token=AUDIO_TOKEN,
        prefix_token=PREFIX_TOKEN,
        default_prompt=DEFAULT_PROMPT,
        prompt_preset="llava",
        **kwargs,
    ):
        _check_preset(prompt_preset)
        self.prompt_preset = prompt_preset
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        self.num_audio_tokens = num_audio_tokens
        self.num_prefix_tokens = num_prefix_tokens
        self.image_token = image_token
        self.audio_token = audio_token
        self.prefix_token = prefix_token
        self.default_prompt = default_prompt
        for token in (image_token, audio_token, prefix_token):
            if token not in tokenizer.get_vocab():
                raise ValueError(
                    f"The tokenizer has no {token} token. Build the processor with LlavaAudioProcessor.from_llava(...), "
                    "which adds the audio and prefix placeholders."
                )
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        self.prefix_token_id = tokenizer.convert_tokens_to_ids(prefix_token)
        super().__init__(
            image_processor, feature_extractor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs
        )

    @classmethod
    def from_llava(
        cls,
        llava_processor,
        feature_extractor,
        num_audio_tokens: int | None = None,
        audio_config=None,
        num_prefix_tokens: int = 16,
        **kwargs,
    ) -> "LlavaAudioProcessor":
        """Extend a LLaVA processor (object, path or Hub id) with an audio feature extractor (object, path or id).

        `<audio>` and `<prefix>` are added to a copy of the tokenizer (ids `len(tokenizer)`, `len(tokenizer) + 1`,
        which llava-hf's 7B/13B embedding matrices already have room for). The audio token count per clip comes from
        `num_audio_tokens` or is computed from `audio_config`.
        """
        if isinstance(llava_processor, str):
            llava_processor = AutoProcessor.from_pretrained(llava_processor)
        if isinstance(feature_extractor, str):
            feature_extractor = AutoFeatureExtractor.from_pretrained(feature_extractor)
        if num_audio_tokens is None and audio_config is not None:
            num_audio_tokens = audio_token_count(audio_config)
        if num_audio_tokens is None:
            raise ValueError(
                "Cannot tell how many tokens the audio encoder gives per clip: pass num_audio_tokens= or the "
                "encoder's audio_config= (AST, Whisper and CAV-MAE configs are understood)."
            )
        tokenizer = copy.deepcopy(llava_processor.tokenizer)
        add_placeholder_tokens(tokenizer)
        return cls(
            image_processor=llava_processor.image_processor,
            feature_extractor=feature_extractor,
            tokenizer=tokenizer,
            patch_size=llava_processor.patch_size,
            vision_feature_select_strategy=llava_processor.vision_feature_select_strategy,
            num_additional_image_tokens=getattr(llava_processor, "num_additional_image_tokens", 0),
            image_token=llava_processor.image_token,
            num_audio_tokens=num_audio_tokens,
            num_prefix_tokens=num_prefix_tokens,
            **kwargs,
        )

    def __call__(self, text=None, images=None, audio=None, **kwargs) -> BatchFeature:
        if text is None:
            raise ValueError(
                "LlavaAudioProcessor needs `text`: a prompt with <image>/<audio>/<prefix> placeholders, e.g. "
                "processor.caption_prompt(audio=True)."
            )
        text = [text] if isinstance(text, str) else list(text)
        if audio is not None and "sampling_rate" not in kwargs | kwargs.get("audio_kwargs", {}):
            # transformers' convention (Whisper, CLAP...), which its pipelines rely on: they decode at the feature
            # extractor's rate and say nothing. Rates that cannot be right still fail in the feature extractor.
            kwargs["sampling_rate"] = self.feature_extractor.sampling_rate
            logger.warning(
                f"No sampling_rate given with the audio: it is taken to be the feature extractor's "
                f"{kwargs['sampling_rate']} Hz. Pass sampling_rate= for audio at another rate (it is then resampled)."
            )
        # Padding and truncation are the text's: the audio feature extractor keeps its own (fixed-length encoders),
        # also when callers such as TRL's collators or the any-to-any pipeline pass them for every modality.
        text_kwargs = dict(kwargs.pop("text_kwargs", {}))
        for key, default in (("padding", True), ("padding_side", "left"), ("truncation", None),
                             ("max_length", None), ("pad_to_multiple_of", None)):
            value = kwargs.pop(key, default)
            if value is not None:
                text_kwargs.setdefault(key, value)
        kwargs["text_kwargs"] = text_kwargs
        return super().__call__(images=images, text=text, audio=audio, **kwargs)

    def get_text_with_replacements(
        self, text: list[str], images_replacements=(), videos_replacements=(), audio_replacements=()
    ) -> tuple[list[str], list[list[dict]]]:
        """`ProcessorMixin.get_text_with_replacements`, which also expands every `<prefix>` to `num_prefix_tokens`
        of them and records it as it records the media placeholders, so that offsets into the unexpanded text (the
        chat template's assistant masks) stay aligned."""
        prefix_expanded, prefix_records = [], []
        replacement = self.prefix_token * self.num_prefix_tokens
        for sample in text:
            records, gain = [], 0
            for match in re.finditer(re.escape(self.prefix_token), sample):
                start = match.start() + gain
                records.append({"type": "prefix", "span": match.span(), "new_span": (start, start + len(replacement)),
                                "text": self.prefix_token, "replacement": replacement})
                gain += len(replacement) - len(self.prefix_token)
            prefix_expanded.append(sample.replace(self.prefix_token, replacement))
            prefix_records.append(records)
        expanded, media_records = super().get_text_with_replacements(
            prefix_expanded, list(images_replacements), list(videos_replacements), list(audio_replacements)
        )
        media_records = media_records or [[] for _ in text]
        return expanded, [_merge_replacement_records(prefix, media)
                          for prefix, media in zip(prefix_records, media_records, strict=True)]

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        height, width = image_inputs["pixel_values"][image_idx].shape[-2:]
        count = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            count -= 1
        return self.image_token * count

    def _process_audio(self, audio, **kwargs):
        features = self.feature_extractor(audio, **kwargs)
        if "input_values" in features:  # AST-style extractors
            features["input_features"] = features.pop("input_values")
        if "attention_mask" in features:
            features["input_features_mask"] = features.pop("attention_mask")
        return features, [self.audio_token * self.num_audio_tokens] * len(audio)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "input_features", "input_features_mask"]

    def caption_prompt(
        self, image: bool = False, audio: bool = False, prefix: bool = False, prompt: str | None = None,
        prompt_preset: str | None = None, training: bool = False,
    ) -> str:
        """The single-turn prompt for captioning with the given inputs, e.g. for image + audio + prefix:
        "USER: <image><audio><prefix>\\nDescribe the sound that can be heard in this scene. ASSISTANT:".

        `prompt_preset` (default: the processor's) puts its system text first, the training one when `training`
        (prefix tuning, distillation), e.g. with "reference": "A chat between a curious human ... questions. USER:
        ..."."""
        messages = self.caption_messages(image=image, audio=audio, prefix=prefix, prompt=prompt,
                                         prompt_preset=prompt_preset, training=training)
        return self.apply_chat_template(messages, add_generation_prompt=True)

    def caption_messages(
        self, image=False, audio=False, prefix: bool = False, prompt: str | None = None,
        prompt_preset: str | None = None, training: bool = False, caption: str | None = None,
    ) -> list[dict]:
        """The conversation behind [`caption_prompt`]; with `caption`, followed by that answer (a training row).

        `image` and `audio` are booleans, or the image / the audio (an array at the feature extractor's rate, or a
        path) to put in the content, for `apply_chat_template(..., tokenize=True)`."""
        preset = _check_preset(prompt_preset or self.prompt_preset)
        system = PROMPT_PRESETS[preset]["training" if training else "inference"]
        content = []
        for kind, value in (("image", image), ("audio", audio)):
            if value is True:
                content.append({"type": kind})
            elif value is not None and value is not False:
                content.append({"type": kind, kind: value})
        if prefix:
            content.append({"type": "prefix"})
        content.append({"type": "text", "text": prompt or self.default_prompt})
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": content})
        if caption is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": caption}]})
        return messages


def _check_preset(preset: str) -> str:
    if preset not in PROMPT_PRESETS:
        raise ValueError(f"prompt_preset must be one of {sorted(PROMPT_PRESETS)}, got {preset!r}")
    return preset


def _merge_replacement_records(prefix_records: list[dict], media_records: list[dict]) -> list[dict]:
    """One sample's replacement records in text order, all with `span` in the original text and `new_span` in the
    fully expanded one, from the prefix's (original -> prefix-expanded) and the media's (prefix-expanded -> final)."""
    events = sorted([(r["new_span"][0], 0, r) for r in prefix_records] + [(r["span"][0], 1, r) for r in media_records],
                    key=lambda event: event[:2])
    merged, prefix_gain, media_gain = [], 0, 0
    for start, is_media, record in events:  # `start` is in the prefix-expanded text
        gain = len(record["replacement"]) - len(record["text"])
        if is_media:
            original = start - prefix_gain
            merged.append({**record, "span": (original, original + len(record["text"]))})
            media_gain += gain
        else:
            new_start = start + media_gain
            merged.append({**record, "new_span": (new_start, new_start + len(record["replacement"]))})
            prefix_gain += gain
    return merged


def placeholder_token_ids(tokenizer) -> tuple[int, int]:
    """The ids that `<audio>` and `<prefix>` have, or will get from [`add_placeholder_tokens`], in `tokenizer`."""
    vocab, next_id, ids = tokenizer.get_vocab(), len(tokenizer), []
    for token in (AUDIO_TOKEN, PREFIX_TOKEN):
        if token in vocab:
            ids.append(vocab[token])
        else:
            ids.append(next_id)
            next_id += 1
    return ids[0], ids[1]


def add_placeholder_tokens(tokenizer) -> tuple[int, int]:
    """Add `<audio>` and `<prefix>` as special tokens (no-op for those present); returns their ids."""
    expected = placeholder_token_ids(tokenizer)
    missing = [t for t in (AUDIO_TOKEN, PREFIX_TOKEN) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_TOKEN, PREFIX_TOKEN))
    if ids != expected:  # would desynchronise processor and model
        raise RuntimeError(f"placeholder ids {ids} differ from the expected {expected}")
    return ids
