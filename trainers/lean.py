"""Stage 1b without the language model: the captioner's alignment parts, loaded and saved on their own.

Alignment runs the frozen vision tower and the trained audio tower + `audio_to_vision`, nothing else. A
[`LlavaAudioAlignmentModel`] holds only those three parts, under the captioner's own weight names
(`model.vision_tower.*`, `model.audio_tower.*`, `model.audio_to_vision.*`), so that:

- `from_pretrained(folder)` reads only their tensors from the captioner's safetensors files: shards without them are
  not opened, and no other tensor is sliced, let alone read (the language model, `lm_head`, the projectors and the
  prefix never exist in memory);
- `save_pretrained(folder)` writes a complete captioner: its own tensors, and every other tensor of the folder it was
  loaded from, memory-mapped from there and written through `LlavaAudioForConditionalGeneration.save_pretrained`
  (same config, remote code, pipeline and shard layout as a save of the whole model);
- a Trainer checkpoint (a complete captioner) is resumed by reading only these parts back ([`load_alignment_weights`]).

A captioner already in memory is aligned through the same model: `LlavaAudioAlignmentModel.from_captioner(captioner)`
shares its three parts (no copy) and saves through it.

The token functions are the captioner's own (`LlavaAudioTokensMixin.get_image_tokens` / `get_audio_tokens`), so the
alignment losses and gradients are those of the whole model.
"""

import copy
import json
import os
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModel, GenerationConfig
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.modeling_outputs import ModelOutput
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..modeling.modeling_llava_audio import (
    LlavaAudioForConditionalGeneration,
    LlavaAudioPreTrainedModel,
    LlavaAudioTokensMixin,
    build_audio_encoder,
)

__all__ = ["ALIGNMENT_PARTS", "LlavaAudioAlignmentModel", "LlavaAudioTokensOutput", "load_alignment_model",
           "load_alignment_weights"]

ALIGNMENT_PARTS = ("vision_tower", "audio_tower", "audio_to_vision")
_PREFIXES = tuple(f"model.{part}." for part in ALIGNMENT_PARTS)


def is_alignment_key(key: str) -> bool:
    """Whether a captioner weight name belongs to the parts that alignment runs."""
    return key.startswith(_PREFIXES)


@dataclass
class LlavaAudioTokensOutput(ModelOutput):
    """The two token sets that DALI aligns, [batch, tokens, vision width]: `get_audio_tokens` and `get_image_tokens`."""

    audio_tokens: torch.FloatTensor | None = None
    image_tokens: torch.FloatTensor | None = None


class LlavaAudioAlignmentParts(LlavaAudioTokensMixin, LlavaAudioPreTrainedModel):
    """The captioner's `model` reduced to the vision tower, the audio tower and `audio_to_vision`."""

    def __init__(self, config):
        super().__init__(config)
        layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.audio_tower = build_audio_encoder(config.audio_config)
        self.audio_to_vision = nn.Linear(config.audio_config.hidden_size, config.vision_config.hidden_size * layers)
        self.post_init()


class LlavaAudioAlignmentModel(LlavaAudioPreTrainedModel):
    """What stage 1b runs of a LlavaAudio captioner, without the language model and `lm_head`.

    Load it from a captioner folder (`LlavaAudioAlignmentModel.from_pretrained(folder)`, same arguments as the
    captioner's); `save_pretrained` writes a complete captioner, taking the parts it does not hold from that folder,
    which must therefore stay where it is and cannot be the folder saved to. Built from a captioner in memory
    (`from_captioner`), it shares that captioner's parts and saves it. Its forward pass returns the two token sets
    that alignment compares ([`LlavaAudioTokensOutput`]).
    """

    def __init__(self, config):
        super().__init__(config)
        self.model = LlavaAudioAlignmentParts(config)
        self.post_init()
        self.source_files: list[str] = []  # the captioner's safetensors files, set by from_pretrained
        self.captioner_generation_config: GenerationConfig | None = None
        self.load_dtype: torch.dtype | None = None  # a dtype asked of from_pretrained: the other parts are saved in it
        # the whole captioner whose parts this model shares (from_captioner); kept out of the module tree, so its
        # language model is neither a submodule here nor moved, wrapped or saved as part of this model
        self.__dict__["captioner"] = None

    @classmethod
    def from_captioner(cls, captioner: LlavaAudioForConditionalGeneration) -> "LlavaAudioAlignmentModel":
        """The alignment parts of `captioner`, shared (training this model trains the captioner), with its config
        (the stage record goes into it); `save_pretrained` saves the whole captioner."""
        with torch.device("meta"):
            model = cls(captioner.config)
        for part in ALIGNMENT_PARTS:
            setattr(model.model, part, getattr(captioner.model, part))
        model.config = model.model.config = captioner.config
        model.__dict__["captioner"] = captioner
        return model

    def get_image_tokens(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        """See [`LlavaAudioModel.get_image_tokens`]."""
        return self.model.get_image_tokens(pixel_values, **kwargs)

    def get_audio_tokens(self, input_features: torch.Tensor,
                         input_features_mask: torch.Tensor | None = None) -> torch.Tensor:
        """See [`LlavaAudioModel.get_audio_tokens`]."""
        return self.model.get_audio_tokens(input_features, input_features_mask)

    def get_input_embeddings(self) -> None:
        """None: without the language model there are no token embeddings (accelerate's FSDP2 preparation asks)."""
        return None

    def forward(self, pixel_values: torch.Tensor | None = None, input_features: torch.Tensor | None = None,
                input_features_mask: torch.Tensor | None = None, **kwargs) -> LlavaAudioTokensOutput:
        """The captioner's forward pass without text: the audio tokens and/or the image tokens."""
        if kwargs.get("input_ids") is not None or kwargs.get("inputs_embeds") is not None:
            raise ValueError("LlavaAudioAlignmentModel has no language model: it takes pixel_values and/or "
                             "input_features only. Load the whole captioner (AutoModel.from_pretrained) to caption.")
        return LlavaAudioTokensOutput(
            audio_tokens=None if input_features is None else self.get_audio_tokens(input_features, input_features_mask),
            image_tokens=None if pixel_values is None else self.get_image_tokens(pixel_values),
        )

    # ---- loading only the alignment parts ------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "LlavaAudioAlignmentModel":
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.load_dtype = _requested_dtype(kwargs.get("dtype", kwargs.get("torch_dtype")))
        download = {name: kwargs[name] for name in ("revision", "token", "cache_dir", "local_files_only",
                                                   "subfolder") if name in kwargs}
        try:  # what a save of the whole captioner would write: its generation settings
            model.captioner_generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path,
                                                                                 **download)
        except OSError:
            model.captioner_generation_config = None
        return model

    @classmethod
    def _load_pretrained_model(cls, model, state_dict, checkpoint_files, load_config, expected_keys=None):
        """The Transformers loader, given lazy slices of the alignment parts' tensors only."""
        if state_dict is not None or not checkpoint_files or not all(
                f.endswith(".safetensors") for f in checkpoint_files):
            raise ValueError(f"{load_config.pretrained_model_name_or_path}: LlavaAudioAlignmentModel loads captioner "
                             "folders in safetensors format (save the model with save_pretrained first)")
        weight_map = (load_config.sharded_metadata or {}).get("weight_map")
        with ExitStack() as stack:
            slices = {}
            for file in _files_holding_alignment_keys(checkpoint_files, weight_map):
                handle = stack.enter_context(safe_open(file, framework="pt", device="cpu"))
                slices.update({key: handle.get_slice(key) for key in handle.keys() if is_alignment_key(key)})
            if is_deepspeed_zero3_enabled():  # that loader takes tensors, not lazy slices
                slices = {key: value[:] for key, value in slices.items()}
            loading_info, offload = super()._load_pretrained_model(model, slices, checkpoint_files, load_config,
                                                                   expected_keys)
        if loading_info.missing_keys:
            raise ValueError(f"{load_config.pretrained_model_name_or_path} is not a LlavaAudio captioner folder: it "
                             f"lacks {sorted(loading_info.missing_keys)[:5]} (of {len(loading_info.missing_keys)} "
                             "missing weights)")
        model.source_files = list(checkpoint_files)
        return loading_info, offload

    # ---- saving a complete captioner ---------------------------------------------------------------------------

    def save_pretrained(self, save_directory, *args, state_dict: dict | None = None, is_main_process: bool = True,
                        **kwargs):
        """Write a complete LlavaAudio captioner to `save_directory`: this model's tensors (or `state_dict`, e.g.
        gathered by FSDP), every other tensor of the captioner it was loaded from, and the captioner's config, code
        and generation settings, exactly as `LlavaAudioForConditionalGeneration.save_pretrained` writes them."""
        if self.captioner is not None:
            if state_dict is not None:  # e.g. gathered by FSDP: this model's parts, under the captioner's names
                state_dict = {**self.captioner.state_dict(), **state_dict}
            return self.captioner.save_pretrained(save_directory, *args, state_dict=state_dict,
                                                  is_main_process=is_main_process, **kwargs)
        if not self.source_files:
            raise ValueError("this LlavaAudioAlignmentModel was not loaded from a captioner folder, so it has no "
                             "language model to save with: load it with LlavaAudioAlignmentModel.from_pretrained")
        _refuse_overwriting_the_source(save_directory, self.source_files)
        own = self.state_dict() if state_dict is None else state_dict
        captioner = self._captioner_shell()
        with ExitStack() as stack:
            others = {}
            if is_main_process:  # the other ranks write nothing
                for file in self.source_files:
                    handle = stack.enter_context(safe_open(file, framework="pt", device="cpu"))
                    # memory-mapped: pages are read while the shard holding them is written, then dropped
                    others.update({key: self._as_loaded(handle.get_tensor(key)) for key in handle.keys()
                                   if key not in own})
            names = captioner.state_dict().keys()
            tied = captioner.all_tied_weights_keys  # rebuilt from their source on load: not saved
            missing = [name for name in names if name not in own and name not in others and name not in tied]
            if is_main_process and missing:
                raise ValueError(f"the captioner files {self.source_files} lack {missing[:5]}: they changed since "
                                 "this model was loaded from them")
            ordered = {name: own[name] if name in own else others[name] for name in names
                       if name in own or name in others}
            return captioner.save_pretrained(save_directory, *args, state_dict=ordered,
                                             is_main_process=is_main_process, **kwargs)

    def _as_loaded(self, tensor: torch.Tensor) -> torch.Tensor:
        """A stored tensor in the dtype the whole captioner would have been loaded in, and so saved in."""
        if self.load_dtype is None or not tensor.is_floating_point():
            return tensor
        return tensor.to(self.load_dtype)

    def _captioner_shell(self) -> LlavaAudioForConditionalGeneration:
        """The whole captioner on the meta device (no memory), with this model's config: what saves the folder."""
        with torch.device("meta"):
            captioner = LlavaAudioForConditionalGeneration(copy.deepcopy(self.config))
        captioner.to(self.dtype)  # the dtype a save records: its first parameter's, as for the whole model
        if self.captioner_generation_config is not None:
            captioner.generation_config = copy.deepcopy(self.captioner_generation_config)
        return captioner


def load_alignment_model(pretrained_model_name_or_path, **kwargs) -> LlavaAudioAlignmentModel:
    """A LlavaAudio captioner folder (or Hub id) loaded for alignment, without its language model."""
    return LlavaAudioAlignmentModel.from_pretrained(pretrained_model_name_or_path, **kwargs)


def load_alignment_weights(model: LlavaAudioAlignmentModel, folder: str) -> None:
    """Read the alignment parts back from a captioner folder (a Trainer checkpoint), and nothing else."""
    index = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
        files = [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
    elif os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME)):
        weight_map, files = None, [os.path.join(folder, SAFE_WEIGHTS_NAME)]
    else:
        raise ValueError(f"{folder} holds no {SAFE_WEIGHTS_NAME} (nor its index): not a checkpoint of this model")
    tensors = {}
    for file in _files_holding_alignment_keys(files, weight_map):
        with safe_open(file, framework="pt", device="cpu") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys() if is_alignment_key(key)})
    result = model.load_state_dict(tensors, strict=False)
    if result.missing_keys:
        raise ValueError(f"{folder} lacks {result.missing_keys[:5]}: not a checkpoint of this model")


def _requested_dtype(dtype) -> torch.dtype | None:
    """The dtype that `from_pretrained(dtype=...)` casts every weight to (None: each kept as stored)."""
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    return dtype if isinstance(dtype, torch.dtype) else None


def _files_holding_alignment_keys(files: list[str], weight_map: dict | None) -> list[str]:
    if weight_map is None:
        return list(files)
    wanted = {name for key, name in weight_map.items() if is_alignment_key(key)}
    return [file for file in files if os.path.basename(file) in wanted]


def _refuse_overwriting_the_source(save_directory, source_files: list[str]) -> None:
    if not os.path.isdir(save_directory):
        return
    for file in source_files:
        if os.path.samefile(save_directory, os.path.dirname(file)):
            raise ValueError(f"cannot save to {save_directory}: the model was loaded from there, and its language "
                             "model is copied from those files while the new ones are written. Save to another folder.")
