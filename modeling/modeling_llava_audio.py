"""LlavaAudio: LLaVA-1.5 with an audio encoder whose tokens live in the CLIP token space (DALI).

The classes subclass LLaVA's (`LlavaModel`, `LlavaForConditionalGeneration`) and run their forward: the image path
(vision tower, `multi_modal_projector`, language model, `lm_head`) is LLaVA's, unchanged, and image-only inputs give
exactly what `LlavaForConditionalGeneration` gives. What is added is written into the prompt's embeddings before
LLaVA's forward takes them: the audio path `audio_tower -> audio_to_vision` (the space that DALI aligns to the CLIP
tokens) `-> audio_multi_modal_projector` (a separate copy of the image projector, fine-tuned in stage 2), and
`prefix_embeddings`, learned input embeddings placed wherever the processor put the prefix placeholder. Given
`input_ids`, the image features are written there too, by LLaVA's own methods, at the `<image>` ids: LLaVA's forward
receives embeddings, and would otherwise look `<image>` up among them.
"""

import copy

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import (
    LlavaCausalLMOutputWithPast,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaModelOutputWithPast,
    LlavaMultiModalProjector,
    LlavaPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import (
    ModelOutput,
    TransformersKwargs,
    is_torchdynamo_compiling,
    logging,
    torch_compilable_check,
)
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import select_hidden_states

from .auto_classes import prepare_remote_code, save_code
from .configuration_llava_audio import LlavaAudioConfig
from .modeling_cav_mae import CavMaeAudioModel

logger = logging.get_logger(__name__)

__all__ = [
    "LlavaAudioPreTrainedModel",
    "LlavaAudioModel",
    "LlavaAudioForConditionalGeneration",
]


class LlavaAudioPreTrainedModel(LlavaPreTrainedModel):
    """LLaVA's flags (attention backends, gradient checkpointing, `_can_compile_fullgraph`: decoding steps, one token
    and no media, run without data-dependent Python branches, so a static cache and a fullgraph `torch.compile` work
    as for LLaVA), with this config, the audio modality and the prefix's initialisation."""

    config: LlavaAudioConfig
    config_class = LlavaAudioConfig
    input_modalities = ("image", "audio", "text")

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LlavaAudioModel):
            _init_prefix(module.prefix_embeddings)


class LlavaAudioTokensMixin:
    """The two token sets that DALI aligns, for any module holding `vision_tower`, `audio_tower` and
    `audio_to_vision` (the captioner's `LlavaAudioModel`, and the alignment stage's model without the language
    model): one definition, so both give the same tokens."""

    @merge_with_config_defaults
    @select_hidden_states("vision_feature_layer")
    def get_image_tokens(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The vision tower's tokens at `vision_feature_layer` (CLS dropped by the "default" strategy), before the
        projector: the alignment target. Shape [batch, image tokens, vision width]."""
        outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        return _select_image_tokens(outputs, vision_feature_layer, vision_feature_select_strategy)

    def get_audio_tokens(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The audio encoder's tokens mapped to the vision width (`audio_to_vision`), before any projector: the
        tokens that alignment trains. Shape [batch, audio tokens, vision width]."""
        return self._to_vision_width(self._encode_audio(input_features, input_features_mask).last_hidden_state)

    def _encode_audio(self, input_features, input_features_mask=None, **kwargs) -> ModelOutput:
        """The audio tower's output. Every supported tower (AST, the Whisper encoder, CAV-MAE) has the signature of
        transformers' audio encoders, `forward(features, mask, **kwargs)`: the frame mask goes second, positionally,
        as each names it its own way (`attention_mask`, `input_features_mask`), and `kwargs` (`output_hidden_states`,
        `output_attentions`) reach their output-capturing hooks. Unset values are left out, so that the tower's
        config decides."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return self.audio_tower(
            input_features.to(self.audio_tower.dtype), input_features_mask, return_dict=True, **kwargs
        )

    def _to_vision_width(self, audio_hidden_states: torch.Tensor) -> torch.Tensor:
        # parts may differ in dtype (a trained part kept in float32 inside a bf16 model)
        return self.audio_to_vision(audio_hidden_states.to(self.audio_to_vision.weight.dtype))


class LlavaAudioModel(LlavaAudioTokensMixin, LlavaAudioPreTrainedModel, LlavaModel):
    """`LlavaModel` (its three parts and its forward) plus `audio_tower`, `audio_to_vision`,
    `audio_multi_modal_projector` and `prefix_embeddings`."""

    def __init__(self, config: LlavaAudioConfig):
        # Not LlavaModel.__init__: its post_init would initialise LLaVA's parts before the audio parts and the prefix
        # exist. LLaVA's parts are built as it builds them, then all are initialised together.
        super(LlavaModel, self).__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)

        self.audio_tower = build_audio_encoder(config.audio_config)
        vision_width = config.vision_config.hidden_size * _num_feature_layers(config)
        self.audio_to_vision = nn.Linear(config.audio_config.hidden_size, vision_width)
        self.audio_multi_modal_projector = LlavaMultiModalProjector(config)
        self.prefix_embeddings = nn.Parameter(torch.empty(config.num_prefix_tokens, config.text_config.hidden_size))
        self.post_init()
        self.reset_audio_projector()

    @torch.no_grad()
    def reset_audio_projector(self):
        """Copy the image projector into the audio projector (how DALI initialises it before stage 2)."""
        self.audio_multi_modal_projector.load_state_dict(self.multi_modal_projector.state_dict())

    # ---- features placed into the language model's input ---------------------------------------------------

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """LLaVA's image features, as `LlavaModel.get_image_features` returns them: the vision tower's output whose
        `pooler_output` is one [image tokens, text hidden size] tensor per image (the image tokens through
        `multi_modal_projector`, or `audio_multi_modal_projector` with `config.shared_projector`), with the tower's
        hidden states and attentions when asked for."""
        if image_sizes is not None:  # as LLaVA: passed only when given, not every vision tower takes it
            kwargs["image_sizes"] = image_sizes
        image_outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        image_tokens = _select_image_tokens(image_outputs, vision_feature_layer, vision_feature_select_strategy)
        projector = self.audio_multi_modal_projector if self.config.shared_projector else self.multi_modal_projector
        image_outputs.pooler_output = list(projector(image_tokens))
        return image_outputs

    @can_return_tuple
    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """The audio encoder's output whose `pooler_output` is [clips, audio tokens, text hidden size]: its tokens
        through `audio_to_vision` and `audio_multi_modal_projector`, what the language model receives. Hidden states
        and attentions are the encoder's, when asked for (`output_hidden_states=True`, `output_attentions=True`)."""
        audio_outputs = self._encode_audio(input_features, input_features_mask, **kwargs)
        tokens = self._to_vision_width(audio_outputs.last_hidden_state)
        features = self.audio_multi_modal_projector(tokens.to(self.audio_multi_modal_projector.linear_1.weight.dtype))
        return BaseModelOutputWithPooling(
            last_hidden_state=audio_outputs.last_hidden_state,
            pooler_output=features,
            hidden_states=audio_outputs.get("hidden_states"),
            attentions=audio_outputs.get("attentions"),
        )

    def _audio_outputs(self, input_features, input_features_mask, encoded_audio, **kwargs):
        """The audio encoder's output that a forward places: `get_audio_features(input_features)`, or the one given
        already encoded (`mm_encoder_outputs["audio"]`); None without audio."""
        if input_features is None:
            return encoded_audio
        if encoded_audio is not None:
            raise ValueError("Pass either input_features or mm_encoder_outputs['audio'], not both.")
        return self.get_audio_features(
            input_features, input_features_mask, return_dict=True,
            **{k: kwargs.get(k) for k in ("output_hidden_states", "output_attentions")},
        )

    def _placeholder_positions(self, input_ids, prompt_embeds, token_id) -> torch.Tensor:
        """[batch, sequence] mask of where `token_id` sits: read from `input_ids`, or without them found as the rows
        of `prompt_embeds` equal to that token's embedding (as `LlavaModel.get_placeholder_mask` finds `<image>`)."""
        if input_ids is not None:
            return (input_ids == token_id).to(prompt_embeds.device)
        token_embedding = self.get_input_embeddings()(
            torch.full((), token_id, dtype=torch.long, device=prompt_embeds.device)
        )
        return (prompt_embeds == token_embedding).all(-1)

    def _place_audio(self, input_ids, prompt_embeds, audio_features):
        """`audio_features` written over the `<audio>` placeholders, found in `input_ids` or `prompt_embeds`."""
        token_id = self.config.audio_token_id
        mask = self._placeholder_positions(input_ids, prompt_embeds, token_id)
        n_tokens = mask.sum()
        torch_compilable_check(
            n_tokens * prompt_embeds.shape[-1] == audio_features.numel(),
            f"audio features and audio placeholder tokens do not match: {n_tokens} tokens (id {token_id}) in "
            f"{'inputs_embeds' if input_ids is None else 'input_ids'} but "
            f"{audio_features.numel() // audio_features.shape[-1]} feature vectors. Build the inputs with "
            "LlavaAudioProcessor, which expands each <audio> placeholder to the right count.",
        )
        features = audio_features.to(prompt_embeds.device, prompt_embeds.dtype)
        return prompt_embeds.masked_scatter(mask.unsqueeze(-1), features)

    def _place_prefix(self, input_ids, prompt_embeds, inputs_embeds):
        """The learned prefix written over every run of exactly `num_prefix_tokens` `<prefix>` placeholders (the
        processor writes one such run per `<prefix>`). Any other `<prefix>` id stays a plain token, as LLaVA leaves
        `<image>` ids alone when no image is given: decoding steps and generated ids never receive the prefix, even
        when generating without a cache. Tensor operations only, so compiled decoding steps have no data-dependent
        Python branch."""
        size = self.config.num_prefix_tokens
        if inputs_embeds.shape[1] == 1 and size > 1:  # a decoding step with a cache: no run can be placed or warned
            return inputs_embeds                     # about (a shape, not data: no branch on values)
        mask = self._placeholder_positions(input_ids, prompt_embeds, self.config.prefix_token_id)
        position = _position_in_run(mask)
        run_length = position + _position_in_run(mask.flip(-1)).flip(-1) - 1
        if not is_torchdynamo_compiling() and (mask & (run_length > 1) & (run_length != size)).any():
            logger.warning_once(
                f"A run of <prefix> placeholders (id {self.config.prefix_token_id}) is not {size} long "
                "(num_prefix_tokens): it is read as plain tokens. Build prompts with the LlavaAudioProcessor saved "
                "with this model, whose num_prefix_tokens is the model's; when generating with prefill_chunk_size, "
                "a chunk may have cut the run in two: generate with prefill_chunk_size=None."
            )
        rows = self.prefix_embeddings.to(inputs_embeds.device, inputs_embeds.dtype)[(position - 1).clamp(0, size - 1)]
        return torch.where((mask & (run_length == size)).unsqueeze(-1), rows, inputs_embeds)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LlavaModelOutputWithPast:
        """`LlavaModel.forward` given the prompt's embeddings with the audio features and the learned prefix already
        written over their placeholders. With `input_ids`, the image features are written too, at the `<image>` ids
        (LLaVA's `get_image_features` and `get_placeholder_mask`), as LLaVA places them given ids: its forward, given
        embeddings, would look `<image>` up among them, which fails where the embedding layer's output changes from
        call to call (NEFTune's noise in training). With `inputs_embeds`, LLaVA places them, as for any embeddings.
        LLaVA's forward then runs the language model.

        Returns LLaVA's output object, with the audio encoder's output in `audio_outputs` (the field transformers'
        multimodal outputs have for it; its `pooler_output` holds the features placed), set on the object LLaVA's
        forward built: copying it into an output class of this model's own would cost every decoding step a second
        construction that plain LLaVA does not pay."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        encoded = {modality: output for modality, output in (mm_encoder_outputs or {}).items() if output is not None}
        audio_outputs = self._audio_outputs(input_features, input_features_mask, encoded.pop("audio", None), **kwargs)
        if mm_encoder_outputs is not None and audio_outputs is not None:
            mm_encoder_outputs["audio"] = audio_outputs  # for the caller, as LlavaModel.forward adds the image's
        # placeholders are looked up in the prompt, before any feature overwrites them
        prompt_embeds = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        inputs_embeds = prompt_embeds
        if audio_outputs is not None:
            inputs_embeds = self._place_audio(input_ids, prompt_embeds, audio_outputs.pooler_output)
        inputs_embeds = self._place_prefix(input_ids, prompt_embeds, inputs_embeds)
        image_outputs = None
        if input_ids is not None:
            image_outputs = self._image_outputs(pixel_values, encoded.pop("image", None), vision_feature_layer,
                                                vision_feature_select_strategy, **kwargs)
            pixel_values = None
        if image_outputs is not None:
            image_features = torch.cat(image_outputs.pooler_output, dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=image_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)

        outputs = super().forward(
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            mm_encoder_outputs=encoded or None,
            return_dict=True,
            **kwargs,
        )
        if image_outputs is not None:
            outputs["image_outputs"] = image_outputs
        if audio_outputs is not None:
            outputs["audio_outputs"] = audio_outputs
        return outputs

    def _image_outputs(self, pixel_values, encoded_image, vision_feature_layer, vision_feature_select_strategy,
                       **kwargs):
        """The image encoder's output that a forward places, as `LlavaModel.forward` gets it:
        `get_image_features(pixel_values)`, or the one given already encoded (`mm_encoder_outputs["image"]`); None
        without an image."""
        if pixel_values is None:
            return encoded_image
        if encoded_image is not None:  # LLaVA's words
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs at the same time")
        return self.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            return_dict=True,
            **kwargs,
        )


class LlavaAudioForConditionalGeneration(LlavaAudioPreTrainedModel, LlavaForConditionalGeneration):
    """The DALI captioner: `LlavaForConditionalGeneration` (its head, tied weights, parallel plan, forward) on a
    [`LlavaAudioModel`].

    Inputs may be image only (then it is exactly LLaVA), audio only, or image and audio; a `<prefix>` placeholder in
    the prompt adds the learned prefix.
    """

    def __init__(self, config: LlavaAudioConfig):
        # Not LlavaForConditionalGeneration.__init__, which would build a LlavaModel: the same parts, on LlavaAudioModel
        super(LlavaForConditionalGeneration, self).__init__(config)
        self.model = LlavaAudioModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        _suppress_placeholders(self.generation_config, config)

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`, writing the weights under the names this model uses by default.

        The library's default (`save_original_format=True`) writes the audio tower under its original checkpoint
        names (AST's `encoder.layer.N.attention.attention.key`, ...). `from_pretrained` reads both, but
        `Trainer(resume_from_checkpoint=...)` loads the raw file with a non-strict `load_state_dict`, which would
        silently skip those tensors and resume with a fresh audio tower. Pass `save_original_format=True` to get
        the library's format. The folder also gets the code that loads it without dali_hf (`auto_classes`)."""
        prepare_remote_code(self)  # before anything is written: a save that cannot complete writes nothing
        saved = super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)
        if kwargs.get("is_main_process", True):
            save_code(self, save_directory)
        return saved

    def get_image_tokens(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        """See [`LlavaAudioModel.get_image_tokens`]."""
        return self.model.get_image_tokens(pixel_values, **kwargs)

    def get_audio_tokens(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """See [`LlavaAudioModel.get_audio_tokens`]."""
        return self.model.get_audio_tokens(input_features, input_features_mask)

    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """See [`LlavaAudioModel.get_audio_features`]."""
        return self.model.get_audio_features(input_features, input_features_mask, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LlavaCausalLMOutputWithPast:
        r"""Captioning forward pass: `LlavaForConditionalGeneration.forward`, whose model ([`LlavaAudioModel`])
        scatters the audio features and the learned prefix into the sequence at their placeholder tokens. Returns
        LLaVA's output object with `audio_outputs` set, as [`LlavaAudioModel.forward`] does. The token sets that DALI
        aligns come from `get_audio_tokens` and `get_image_tokens`."""
        # The model encodes the audio inside its own call (so that wrappers which hold its parameters between calls,
        # FSDP units, have them at hand) and adds the encoder's output to this dict, which LLaVA's forward hands it.
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        outputs = super().forward(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            labels=labels,
            logits_to_keep=logits_to_keep,
            mm_encoder_outputs=mm_encoder_outputs,
            input_features=input_features,
            input_features_mask=input_features_mask,
            return_dict=True,
            **kwargs,
        )
        audio_outputs = mm_encoder_outputs.get("audio")
        if audio_outputs is not None:
            outputs["audio_outputs"] = audio_outputs
        return outputs

    @classmethod
    def from_llava(
        cls,
        llava,
        audio_encoder,
        num_prefix_tokens: int = 16,
        processor=None,
        audio_token_id: int | None = None,
        prefix_token_id: int | None = None,
        **kwargs,
    ) -> "LlavaAudioForConditionalGeneration":
        """Build the DALI captioner around a LLaVA-1.5 model, keeping every LLaVA weight bit for bit.

        Args:
            llava: a path / Hub id of a llava-hf checkpoint (legacy weight names load too) or a
                `LlavaForConditionalGeneration`. Its modules are reused, not copied.
            audio_encoder: a path / Hub id, a `PreTrainedModel` (its weights are kept) or a `PretrainedConfig`
                (random weights).
            num_prefix_tokens: learned prefix length (16 in the paper).
            processor: the [`LlavaAudioProcessor`] built for this captioner (`LlavaAudioProcessor.from_llava`), whose
                `<audio>` and `<prefix>` token ids the model uses; or give `audio_token_id` and `prefix_token_id`.
            **kwargs: passed to `from_pretrained` for paths (`dtype`, `device_map`, `revision`...);
                `attn_implementation` also sets the attention of an audio tower built from a config.
        """
        if processor is not None:
            audio_token_id, prefix_token_id = processor.audio_token_id, processor.prefix_token_id
        if audio_token_id is None or prefix_token_id is None:
            raise ValueError(
                "from_llava needs the <audio> and <prefix> token ids: pass processor=LlavaAudioProcessor.from_llava("
                "llava, feature_extractor) (build the processor first), or audio_token_id= and prefix_token_id=."
            )
        if isinstance(llava, str):
            llava = LlavaForConditionalGeneration.from_pretrained(llava, **kwargs)
        if isinstance(audio_encoder, str):
            audio_encoder = AutoModel.from_pretrained(audio_encoder, **kwargs)

        audio_config = audio_encoder.config if isinstance(audio_encoder, PreTrainedModel) else audio_encoder
        config = LlavaAudioConfig(
            vision_config=llava.config.vision_config,
            text_config=llava.config.text_config,
            audio_config=audio_config,
            image_token_id=llava.config.image_token_id,
            audio_token_id=audio_token_id,
            prefix_token_id=prefix_token_id,
            num_prefix_tokens=num_prefix_tokens,
            base_model=llava.config.name_or_path or None,
            **{field: getattr(llava.config, field) for field in _LLAVA_FIELDS},
        )
        with torch.device("meta"):
            model = cls(config)
        # LLaVA's parts are taken over as they are (no copy); only the audio parts are new.
        parts = model.model
        parts.vision_tower = llava.model.vision_tower
        parts.multi_modal_projector = llava.model.multi_modal_projector
        parts.language_model = llava.model.language_model
        model.lm_head = llava.lm_head
        model.generation_config = _suppress_placeholders(copy.deepcopy(llava.generation_config), config)

        device, dtype = llava.lm_head.weight.device, llava.lm_head.weight.dtype
        if isinstance(audio_encoder, PreTrainedModel):
            tower = _audio_tower_of(audio_encoder)
        else:
            with torch.device(device):
                tower = build_audio_encoder(audio_config)
            if isinstance(kwargs.get("attn_implementation"), str):  # a tower built here attends as the loaded parts
                tower.set_attn_implementation(kwargs["attn_implementation"])
        parts.audio_tower = tower.to(device=device, dtype=dtype)
        parts.audio_to_vision = nn.Linear(
            audio_config.hidden_size, parts.audio_to_vision.out_features, device=device, dtype=dtype
        )
        model._init_weights(parts.audio_to_vision)
        parts.audio_multi_modal_projector = copy.deepcopy(parts.multi_modal_projector)
        parts.prefix_embeddings = nn.Parameter(
            torch.empty(num_prefix_tokens, config.text_config.hidden_size, device=device, dtype=dtype)
        )
        _init_prefix(parts.prefix_embeddings)
        still_meta = [name for name, p in model.named_parameters() if p.is_meta]
        if still_meta and device.type != "meta":  # a bug here, never a user error (a meta LLaVA gives a meta model)
            raise RuntimeError(f"from_llava left parameters unbuilt: {still_meta[:5]}")
        return model


def _init_prefix(prefix_embeddings: torch.Tensor) -> None:
    """N(0, 1e-4), as DALI initialises its prefix."""
    init.normal_(prefix_embeddings, mean=0.0, std=1e-4)


def _suppress_placeholders(generation_config, config: LlavaAudioConfig):
    """Never generate `<audio>` or `<prefix>`: a generated placeholder would be re-read as part of the prompt when
    generating without a cache. `<image>` is left to LLaVA's own generation config (image-only output stays
    LLaVA's). Returns `generation_config`, changed in place."""
    placeholders = [config.audio_token_id, config.prefix_token_id]
    if generation_config is not None:
        already = list(generation_config.suppress_tokens or [])
        generation_config.suppress_tokens = already + [t for t in placeholders if t not in already]
    return generation_config


def build_audio_encoder(audio_config):
    """The audio tower for `audio_config`, with random weights: of `AutoModel.from_config(audio_config)`, what
    `from_llava` keeps of a given encoder (`_audio_tower_of`). CAV-MAE, this project's own encoder, is built directly,
    so that remote code needs no Auto registration (matched by model type: remote code may load the config class
    from another copy of its file)."""
    if audio_config.model_type == CavMaeAudioModel.config_class.model_type:
        return CavMaeAudioModel._from_config(audio_config)
    return _audio_tower_of(AutoModel.from_config(audio_config))


def _audio_tower_of(audio_model: PreTrainedModel) -> nn.Module:
    """The part of an audio model that the captioner keeps as its `audio_tower`: the base model of a model with a
    head (an AST classifier's AST), and of an encoder-decoder (Whisper) only the encoder."""
    base = audio_model.base_model
    return base.get_encoder() if getattr(audio_model.config, "is_encoder_decoder", False) else base


# LLaVA settings that the captioner keeps as they are
_LLAVA_FIELDS = (
    "image_seq_length",
    "projector_hidden_act",
    "vision_feature_select_strategy",
    "vision_feature_layer",
    "multimodal_projector_bias",
    "tie_word_embeddings",
)


def _select_image_tokens(vision_outputs, vision_feature_layer, vision_feature_select_strategy) -> torch.Tensor:
    """LLaVA's choice of vision tokens: the hidden states at `vision_feature_layer` (concatenated over a list of
    layers), without CLS for the "default" strategy."""
    layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else vision_feature_layer
    hidden = [vision_outputs.hidden_states[i] for i in layers]
    if vision_feature_select_strategy == "default":
        hidden = [h[:, 1:] for h in hidden]
    return hidden[0] if len(hidden) == 1 else torch.cat(hidden, dim=-1)


def _position_in_run(mask: torch.Tensor) -> torch.Tensor:
    """For a [batch, sequence] bool mask: each True's 1-based position in its run of consecutive Trues (0 where
    False), by tensor operations only."""
    count = mask.long().cumsum(-1)
    count_at_last_false = torch.where(mask, 0, count).cummax(-1).values
    return (count - count_at_last_false) * mask


def _num_feature_layers(config) -> int:
    return 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
