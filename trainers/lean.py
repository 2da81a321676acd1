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
- a Trainer checkpoint (a complete captioner) resumes through the Trainer's own loader: `load_state_dict` takes a
  whole captioner's state dict and keeps the tensors of these parts.

Attentive OT's scorers ([`AttentiveMarginals`]) are a submodule of this model (`scorers`, set by the alignment
trainer), so that the Trainer and every engine (DDP, FSDP2, DeepSpeed ZeRO-3) train, reduce, shard, checkpoint and
restore them with the model. They are no part of a captioner: `save_pretrained` writes them beside it
(`SCORERS_NAME`), and a captioner's state dict leaves them as they are.

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
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, GenerationConfig
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import set_zero3_state
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from ..modeling.modeling_llava_audio import (
    LlavaAudioForConditionalGeneration,
    LlavaAudioPreTrainedModel,
    LlavaAudioTokensMixin,
    build_audio_encoder,
)

__all__ = ["ALIGNMENT_PARTS", "SCORERS_NAME", "LlavaAudioAlignmentModel", "LlavaAudioTokensOutput",
           "load_alignment_model"]

ALIGNMENT_PARTS = ("vision_tower", "audio_tower", "audio_to_vision")
_PREFIXES = tuple(f"model.{part}." for part in ALIGNMENT_PARTS)
SCORERS_NAME = "attentive_ot_scorers.safetensors"  # the scorers' weights, beside the captioner's (also written by
# the converter of the authors' checkpoints)
_SCORERS = "scorers."


def is_alignment_key(key: str) -> bool:
    """Whether a captioner weight name belongs to the parts that alignment runs."""
    return key.startswith(_PREFIXES)


@dataclass
class LlavaAudioTokensOutput(ModelOutput):
    """The two token sets that DALI aligns, [batch, tokens, vision width]: `get_audio_tokens` and `get_image_tokens`
    (or the image tokens given); with `token_weights`, attentive OT's token weights, [batch, tokens]: the scorers'
    (`audio_weights`, `image_weights`, what their entropy is computed on) and those the transport uses
    (`audio_transport_weights`, `image_transport_weights`: the same values; see `LlavaAudioAlignmentModel.forward`
    for their gradients)."""

    audio_tokens: torch.FloatTensor | None = None
    image_tokens: torch.FloatTensor | None = None
    audio_weights: torch.FloatTensor | None = None
    image_weights: torch.FloatTensor | None = None
    audio_transport_weights: torch.FloatTensor | None = None
    image_transport_weights: torch.FloatTensor | None = None


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
    that alignment compares ([`LlavaAudioTokensOutput`]) and, with `token_weights` and attentive OT's scorers set
    as `model.scorers`, their token weights; the scorers are saved beside the captioner (`SCORERS_NAME`).
    `load_state_dict` also takes a whole captioner's state dict (a Trainer checkpoint) and keeps its own tensors.
    """

    def __init__(self, config):
        super().__init__(config)
        self.model = LlavaAudioAlignmentParts(config)
        self.post_init()
        self.source_files: list[str] = []  # the captioner's safetensors files, set by from_pretrained
        self.captioner_generation_config: GenerationConfig | None = None
        self.load_dtype: torch.dtype | None = None  # a dtype asked of from_pretrained: the other parts are saved in it
        self.scorers: nn.Module | None = None  # attentive OT's scorers, set by the alignment trainer
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
                input_features_mask: torch.Tensor | None = None, image_tokens: torch.Tensor | None = None,
                token_weights: Literal["plan", "reference"] | None = None, **kwargs) -> LlavaAudioTokensOutput:
        """The captioner's forward pass without text: the audio tokens and/or the image tokens (`image_tokens`, if
        given, stand for those of `pixel_values`: cached targets of the frozen tower).

        With `token_weights`, the scorers also weigh both token sets (in float32, outside autocast). The image
        tokens are constants for them; what the audio tokens get is the alignment trainer's
        `attentive_ot_gradient`: with `"plan"` they are constants too; with `"reference"` the weights pass their
        gradient on to the audio tokens, and the transport weights twice (the authors' step backpropagates the
        scorers' loss, then the OT loss, into the same encoder gradients), while the scorers' parameters get each
        gradient once."""
        if kwargs.get("input_ids") is not None or kwargs.get("inputs_embeds") is not None:
            raise ValueError("LlavaAudioAlignmentModel has no language model: it takes pixel_values and/or "
                             "input_features only. Load the whole captioner (AutoModel.from_pretrained) to caption.")
        audio = None if input_features is None else self.get_audio_tokens(input_features, input_features_mask)
        image = image_tokens if pixel_values is None else self.get_image_tokens(pixel_values)
        output = LlavaAudioTokensOutput(audio_tokens=audio, image_tokens=image)
        if token_weights is not None:
            self._weigh_tokens(output, token_weights)
        return output

    def _weigh_tokens(self, output: LlavaAudioTokensOutput, mode: str) -> None:
        if self.scorers is None:
            raise ValueError("token_weights needs the attentive-OT scorers: set model.scorers (AttentiveMarginals)")
        if output.audio_tokens is None or output.image_tokens is None:
            raise ValueError("token_weights needs both token sets: pass input_features, and pixel_values or "
                             "image_tokens")
        if mode not in ("plan", "reference"):
            raise ValueError(f"token_weights must be 'plan' or 'reference'; got {mode!r}")
        dtype = next(self.scorers.parameters()).dtype
        image = output.image_tokens.detach().to(dtype)
        audio = output.audio_tokens.to(dtype)
        with torch.autocast(audio.device.type, enabled=False):
            if mode == "plan":
                alpha, beta = self.scorers(audio.detach(), image)
                alpha_ot, beta_ot = alpha, beta
            else:
                alpha, beta = self.scorers(audio, image)
                # a second pass, equal in value, whose gradient reaches the audio tokens twice and the parameters once
                alpha_ot, beta_ot = self.scorers(_plus_gradient(audio, audio), image)
        output.audio_weights, output.image_weights = alpha, beta
        output.audio_transport_weights, output.image_transport_weights = alpha_ot, beta_ot

    # ---- loading only the alignment parts ------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "LlavaAudioAlignmentModel":
        """The alignment parts of the captioner at `pretrained_model_name_or_path` (folder or Hub id), read from
        the safetensors files that hold them, and nothing else; other arguments as the captioner's."""
        if kwargs.get("state_dict") is not None:
            raise ValueError("LlavaAudioAlignmentModel.from_pretrained reads a captioner folder; to load a state dict, "
                             "build the model and call load_state_dict")
        download = {name: kwargs[name] for name in ("revision", "token", "cache_dir", "local_files_only",
                                                   "subfolder") if name in kwargs}
        files, holding = _captioner_weight_files(pretrained_model_name_or_path, download)
        tensors = {}
        for file in holding:
            with safe_open(file, framework="pt", device="cpu") as handle:
                tensors.update({key: handle.get_tensor(key) for key in handle.keys() if is_alignment_key(key)})
        if not tensors:
            raise ValueError(f"{pretrained_model_name_or_path} is not a LlavaAudio captioner folder: none of its "
                             f"weights belong to {', '.join(ALIGNMENT_PARTS)}")
        config = kwargs.pop("config", None)
        if config is None:
            config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **download)
        kwargs = {key: value for key, value in kwargs.items() if key not in download}
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(None, *args, config=config, state_dict=tensors, output_loading_info=True,
                                              **kwargs)
        missing = [key for key in info["missing_keys"] if not key.startswith(_SCORERS)]
        if missing:
            raise ValueError(f"{pretrained_model_name_or_path} is not a LlavaAudio captioner folder: it lacks "
                             f"{sorted(missing)[:5]} (of {len(missing)} missing weights)")
        model.source_files = files
        model.load_dtype = _requested_dtype(kwargs.get("dtype", kwargs.get("torch_dtype")))
        try:  # what a save of the whole captioner would write: its generation settings
            model.captioner_generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path,
                                                                                 **download)
        except OSError:
            model.captioner_generation_config = None
        return (model, info) if want_info else model

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`, which also takes a whole captioner's state dict (a Trainer checkpoint): the
        tensors of the parts this model does not hold are left out, and the scorers, which no captioner holds,
        count as missing only when the state dict has some of their tensors."""
        ours = {key for key in self.state_dict() if not key.startswith(_SCORERS)}
        has_scorers = any(key.startswith(_SCORERS) for key in state_dict)
        kept = {key: value for key, value in state_dict.items() if key in ours or key.startswith(_SCORERS)}
        result = super().load_state_dict(kept, strict=False, assign=assign)
        missing = [key for key in result.missing_keys if has_scorers or not key.startswith(_SCORERS)]
        result = type(result)(missing, result.unexpected_keys)
        if strict and (result.missing_keys or result.unexpected_keys):
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: missing "
                               f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
        return result

    # ---- saving a complete captioner ---------------------------------------------------------------------------

    def save_pretrained(self, save_directory, *args, state_dict: dict | None = None, is_main_process: bool = True,
                        **kwargs):
        """Write a complete LlavaAudio captioner to `save_directory`: this model's tensors (or `state_dict`, e.g.
        gathered by FSDP or DeepSpeed), every other tensor of the captioner it was loaded from, and the captioner's
        config, code and generation settings, exactly as `LlavaAudioForConditionalGeneration.save_pretrained`
        writes them; the scorers, if any, beside them (`SCORERS_NAME`)."""
        own = self.state_dict() if state_dict is None else state_dict
        scorers = {key[len(_SCORERS):]: value for key, value in own.items() if key.startswith(_SCORERS)}
        own = {key: value for key, value in own.items() if not key.startswith(_SCORERS)}
        if self.captioner is not None:
            result = self.captioner.save_pretrained(
                save_directory, *args, state_dict={**self.captioner.state_dict(), **own},
                is_main_process=is_main_process, **kwargs)
        else:
            result = self._save_with_source(save_directory, own, is_main_process, *args, **kwargs)
        if scorers and is_main_process:
            save_file({key: value.detach().contiguous() for key, value in scorers.items()},
                      os.path.join(save_directory, SCORERS_NAME))
        return result

    def _save_with_source(self, save_directory, own: dict, is_main_process: bool, *args, **kwargs):
        if not self.source_files:
            raise ValueError("this LlavaAudioAlignmentModel was not loaded from a captioner folder, so it has no "
                             "language model to save with: load it with LlavaAudioAlignmentModel.from_pretrained")
        _refuse_overwriting_the_source(save_directory, self.source_files)
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
        """The whole captioner on the meta device (no memory), with this model's config: what saves the folder.
        Under DeepSpeed ZeRO-3 only the saving rank builds it: `set_zero3_state` keeps its towers and language model
        out of `deepspeed.zero.Init`, whose collectives the other ranks would never join."""
        with torch.device("meta"), set_zero3_state():
            captioner = LlavaAudioForConditionalGeneration(copy.deepcopy(self.config))
        captioner.to(self.dtype)  # the dtype a save records: its first parameter's, as for the whole model
        if self.captioner_generation_config is not None:
            captioner.generation_config = copy.deepcopy(self.captioner_generation_config)
        return captioner


def load_alignment_model(pretrained_model_name_or_path, **kwargs) -> LlavaAudioAlignmentModel:
    """A LlavaAudio captioner folder (or Hub id) loaded for alignment, without its language model."""
    return LlavaAudioAlignmentModel.from_pretrained(pretrained_model_name_or_path, **kwargs)


def _requested_dtype(dtype) -> torch.dtype | None:
    """The dtype that `from_pretrained(dtype=...)` casts every weight to (None: each kept as stored)."""
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    return dtype if isinstance(dtype, torch.dtype) else None


def _captioner_weight_files(path, download: dict) -> tuple[list[str], list[str]]:
    """The captioner's safetensors files (what a save copies the other tensors from), and those of them that hold
    alignment weights (the only ones opened to load)."""
    try:
        index = cached_file(path, SAFE_WEIGHTS_INDEX_NAME, **download)
    except OSError:
        index = None
    if index is None:
        try:
            files = [cached_file(path, SAFE_WEIGHTS_NAME, **download)]
        except OSError as error:
            raise ValueError(f"{path}: LlavaAudioAlignmentModel loads captioner folders in safetensors format (save "
                             "the model with save_pretrained first)") from error
        return files, files
    with open(index, encoding="utf-8") as handle:
        weight_map = json.load(handle)["weight_map"]
    files = {shard: cached_file(path, shard, **download) for shard in sorted(set(weight_map.values()))}
    wanted = {shard for key, shard in weight_map.items() if is_alignment_key(key)}
    return list(files.values()), [file for shard, file in files.items() if shard in wanted]


def _refuse_overwriting_the_source(save_directory, source_files: list[str]) -> None:
    if not os.path.isdir(save_directory):
        return
    for file in source_files:
        if os.path.samefile(save_directory, os.path.dirname(file)):
            raise ValueError(f"cannot save to {save_directory}: the model was loaded from there, and its language "
                             "model is copied from those files while the new ones are written. Save to another folder.")


def _plus_gradient(value: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """`value`, whose backward also sends the incoming gradient through `extra` (a tensor of equal value)."""
    return value + (extra - extra.detach())
