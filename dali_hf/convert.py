"""Conversion of the DALI authors' released checkpoints into a LlavaAudio model.

The release has `audio_backbone.pth` (the whole CAV-MAE, DataParallel-wrapped, with the audio-to-CLIP
projection `proj` and the attentive-OT scorers) and the stage outputs `prefixMLP.bin` / `prefix.bin` (the
original LLaVA repo's projector names and the learned prefix). The audio path is mapped onto
[`CavMaeAudioModel`] and the LlavaAudio audio parts; the unused branches (visual encoder, MAE decoder, CLIP
copy) are skipped and listed; the scorers, which only training uses, are kept apart under the names of
[`AttentiveMarginals`] (the alignment trainer's).

The authors' scorer names are swapped with respect to what the modules compute: their `image_scorer` takes the
audio queries (`a_q`) against the image keys and values (`i_k`, `i_v`) and gives the *audio* token weights, their
`audio_scorer` the image token weights. Ours are named by the weights they give, so `image_scorer.*` becomes
`audio_scorer.*` and the other way round ([`SCORER_NAMES`]); the pre-projections keep their names.
"""

import argparse
import copy
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file
from transformers.utils import logging

from .modeling import (
    CavMaeAudioConfig,
    CavMaeAudioModel,
    CavMaeFeatureExtractor,
    LlavaAudioForConditionalGeneration,
    LlavaAudioProcessor,
)
from .modeling.media import CHANNEL_POLICIES
from .modeling.vocabulary import PROMPT_PRESETS
from .trainers.alignment import SCORERS_NAME

__all__ = [
    "SCORER_NAMES",
    "OfficialWeights",
    "add_convert_subcommand",
    "convert_official",
    "convert_official_to_folder",
    "load_official_state_dict",
    "official_name",
    "split_official_state_dict",
]

logger = logging.get_logger(__name__)


# The original LLaVA repo's names in the stage files, and where they go in LlavaAudio
PROJECTOR_KEYS = {
    "model.mm_projector.0.weight": "model.audio_multi_modal_projector.linear_1.weight",
    "model.mm_projector.0.bias": "model.audio_multi_modal_projector.linear_1.bias",
    "model.mm_projector.2.weight": "model.audio_multi_modal_projector.linear_2.weight",
    "model.mm_projector.2.bias": "model.audio_multi_modal_projector.linear_2.bias",
}
PREFIX_KEY = "model.audio_tower.prefix"

# The authors' scorer modules -> ours (AttentiveMarginals): theirs are named for the other modality
SCORER_NAMES = {"image_scorer": "audio_scorer", "audio_scorer": "image_scorer",
                **{name: name for name in ("a_q", "a_k", "a_v", "i_q", "i_k", "i_v")}}

_SCORER = re.compile(r"^(audio_scorer|image_scorer|[ai]_[qkv])\.")
_UNUSED = re.compile(
    r"^(blocks_v|patch_embed_v|norm_v|norm|decoder_\w+|vision_tower)\."  # visual, joint norm, decoder, CLIP
    r"|^(pos_embed_v|modality_v|mask_token|decoder_\w+)$"
    r"|^blocks_a\.\d+\.norm[12]_[av]\."  # modality norms that the audio-only blocks do not use
    r"|^blocks_u\.\d+\.norm[12](_v)?\."  # joint and visual norms of the shared blocks
)
_BLOCK_PARTS = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention": "attn", "mlp": "mlp"}


class OfficialWeights(NamedTuple):
    """`audio_backbone.pth` sorted out: what LlavaAudio uses, what only training uses, and what is dropped."""

    audio_tower: dict[str, torch.Tensor]  # the [`CavMaeAudioModel`] state dict
    audio_to_vision: dict[str, torch.Tensor]  # `weight` and `bias` of the audio-to-CLIP projection
    scorers: dict[str, torch.Tensor]  # attentive-OT scorers, under AttentiveMarginals' names
    skipped: list[str]  # keys of the unused branches


def official_name(name: str, config: CavMaeAudioConfig) -> str:
    """The authors' checkpoint name of the [`CavMaeAudioModel`] weight `name`, e.g. (full size)
    `layers.11.layernorm_before.weight` -> `blocks_u.0.norm1_a.weight` (shared blocks: their audio norms)."""
    if name == "embeddings.position_embedding":
        return "pos_embed_a"
    if name == "embeddings.modality_embedding":
        return "modality_a"
    if name.startswith("embeddings.patch_embedding."):
        return "patch_embed_a.proj." + name.removeprefix("embeddings.patch_embedding.")
    if name.startswith("layernorm."):
        return "norm_a." + name.removeprefix("layernorm.")
    _, index, part, rest = name.split(".", 3)
    index, part = int(index), _BLOCK_PARTS[part]
    if index < config.num_hidden_layers:
        return f"blocks_a.{index}.{part}.{rest}"
    if part.startswith("norm"):
        part += "_a"
    return f"blocks_u.{index - config.num_hidden_layers}.{part}.{rest}"


def load_official_state_dict(source: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """The tensors of one of the authors' files (a path, read with `torch.load(weights_only=True)`, or an
    already loaded state dict), with DataParallel's `module.` prefix removed."""
    if not isinstance(source, Mapping):
        source = torch.load(source, map_location="cpu", weights_only=True)
    return {key.removeprefix("module."): value for key, value in source.items()}


def split_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], audio_config: CavMaeAudioConfig | None = None
) -> OfficialWeights:
    """Sort the keys of `audio_backbone.pth` (`module.` already removed, see [`load_official_state_dict`]).

    Raises:
        ValueError: an audio-path key is missing, a key is neither used nor a known unused part, or a tensor's
            shape does not fit `audio_config` (default: the full-size `CavMaeAudioConfig()`).
    """
    config = audio_config or CavMaeAudioConfig()
    with torch.device("meta"):
        expected = {name: tensor.shape for name, tensor in CavMaeAudioModel(config).state_dict().items()}
    ours = {official_name(name, config): name for name in expected}

    missing = [key for key in [*ours, "proj.weight", "proj.bias"] if key not in state_dict]
    if missing:
        raise ValueError(
            f"audio_backbone lacks audio-path keys: {missing}. Expected the DALI release's "
            f"audio_backbone.pth (a CAV-MAE with {config.num_hidden_layers} audio and "
            f"{config.num_shared_layers} shared blocks); for another depth pass "
            "audio_config=CavMaeAudioConfig(...)."
        )
    tower, projection, scorers, skipped, unknown = {}, {}, {}, [], []
    for key, tensor in state_dict.items():
        if key in ours:
            tower[ours[key]] = tensor
        elif key in ("proj.weight", "proj.bias"):
            projection[key.removeprefix("proj.")] = tensor
        elif _SCORER.match(key):
            module, rest = key.split(".", 1)
            scorers[f"{SCORER_NAMES[module]}.{rest}"] = tensor
        elif _UNUSED.match(key):
            skipped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"audio_backbone has keys that are neither on the audio path nor known unused parts: {unknown}. "
            "If the checkpoint has more blocks than the audio config, pass a matching "
            "audio_config=CavMaeAudioConfig(...)."
        )
    for key, name in ours.items():
        if tower[name].shape != expected[name]:
            raise ValueError(
                f"audio_backbone key {key!r} has shape {list(tower[name].shape)} but the audio config needs "
                f"{list(expected[name])}: pass audio_config=CavMaeAudioConfig(...) matching the checkpoint."
            )
    if projection["weight"].shape[1:] != (config.hidden_size,):
        raise ValueError(
            f"audio_backbone key 'proj.weight' has shape {list(projection['weight'].shape)}: expected "
            f"[vision width, {config.hidden_size}]."
        )
    if scorers:
        _check_scorers(scorers, projection["weight"].shape[0])
    return OfficialWeights(tower, projection, scorers, sorted(skipped))


def _check_scorers(scorers: dict[str, torch.Tensor], width: int) -> None:
    """Fail unless the (renamed) scorer tensors are exactly the state dict of `AttentiveMarginals(width)`."""
    from .trainers.objectives import AttentiveMarginals

    with torch.device("meta"):
        expected = {name: t.shape for name, t in AttentiveMarginals(width).state_dict().items()}
    authors = {ours: theirs for theirs, ours in SCORER_NAMES.items()}

    def theirs(name):
        module, rest = name.split(".", 1)
        return f"{authors[module]}.{rest}"

    missing = sorted(theirs(name) for name in expected.keys() - scorers.keys())
    unexpected = sorted(theirs(name) for name in scorers.keys() - expected.keys())
    wrong = sorted(f"{theirs(name)} {list(scorers[name].shape)} (expected {list(expected[name])})"
                   for name in expected.keys() & scorers.keys() if scorers[name].shape != expected[name])
    if missing or unexpected or wrong:
        raise ValueError(
            f"audio_backbone's attentive-OT scorers do not have the expected layout (two MultiheadAttention({width}, "
            f"heads) `audio_scorer` / `image_scorer` and Linear({width}, {width}) `a_q` ... `i_v`): missing "
            f"{missing}, unexpected {unexpected}, wrong shapes {wrong}. Convert a checkpoint of the DALI release, or "
            "remove the scorer keys to convert the captioner without them."
        )


def convert_official(
    audio_backbone: str | os.PathLike | Mapping,
    llava,
    projector: str | os.PathLike | Mapping | None = None,
    prefix: str | os.PathLike | Mapping | None = None,
    audio_config: CavMaeAudioConfig | None = None,
    processor: LlavaAudioProcessor | None = None,
    shared_projector: bool = True,
    **kwargs,
) -> LlavaAudioForConditionalGeneration:
    """Build the DALI captioner from the authors' release around a llava-hf LLaVA-1.5.

    Args:
        audio_backbone: `audio_backbone.pth` (path or loaded state dict): the CAV-MAE audio path goes to
            `audio_tower`, `proj` to `audio_to_vision`. Skipped keys are logged; the attentive-OT scorers are
            not part of the model (see [`split_official_state_dict`] and [`convert_official_to_folder`]).
        llava: a llava-hf checkpoint (path or Hub id) or a `LlavaForConditionalGeneration`, kept as it is.
        projector: the stage-2 file (`prefixMLP.bin`): `model.mm_projector.{0,2}.*` go to
            `audio_multi_modal_projector` (without it, the audio projector is a copy of the image projector).
            A prefix in the same file is used too, unless `prefix` is given.
        prefix: the stage-1a file (`prefix.bin`) holding `model.audio_tower.prefix` [prefix tokens, text
            hidden] (without it or a prefix in `projector`, the prefix is newly initialised). A projector in
            the same file is used too, unless `projector` is given.
        audio_config: the CAV-MAE size; defaults to the released one, `CavMaeAudioConfig()` (the number of
            heads cannot be read from the weights).
        processor: the [`LlavaAudioProcessor`] whose `<audio>` / `<prefix>` ids the model uses. Needed when
            `llava` is a model object; for a path the ids are those `LlavaAudioProcessor.from_llava` assigns.
        shared_projector: `config.shared_projector`; True (default) sends images through the release's projector
            too, as the authors' code does with its single projector.
        **kwargs: passed to [`LlavaAudioForConditionalGeneration.from_llava`] (`dtype`, `revision`...).
    """
    audio_config = audio_config or CavMaeAudioConfig()
    weights = split_official_state_dict(load_official_state_dict(audio_backbone), audio_config)
    stage = _read_stage_files(projector, prefix)
    if processor is None and isinstance(llava, (str, os.PathLike)):
        processor = _processor_from_llava(llava, audio_config, stage)
    model = _assemble(weights, stage, llava, audio_config, processor, **kwargs)
    model.config.shared_projector = shared_projector
    return model


def convert_official_to_folder(
    audio_backbone: str | os.PathLike | Mapping,
    llava,
    output_dir: str | os.PathLike,
    projector: str | os.PathLike | Mapping | None = None,
    prefix: str | os.PathLike | Mapping | None = None,
    audio_config: CavMaeAudioConfig | None = None,
    processor: LlavaAudioProcessor | None = None,
    prompt_preset: str = "reference",
    shared_projector: bool = True,
    channel_policy: str = "first",
    **kwargs,
) -> LlavaAudioForConditionalGeneration:
    """[`convert_official`], then write the model folder: the LlavaAudio checkpoint, its processor (a copy of the
    given one or, for a `llava` path that has one, `LlavaAudioProcessor.from_llava(llava,
    CavMaeFeatureExtractor())`) and the attentive-OT scorers in `attentive_ot_scorers.safetensors` (when the
    checkpoint has them), where the alignment trainer finds them. Returns the model.

    By default the folder reproduces the authors' code end to end: the processor's `prompt_preset` is
    "reference" (their system texts), `config.shared_projector` is True (images through the release's projector)
    and the feature extractor's `channel_policy` is "first" (the first channel of multichannel audio). Pass
    "llava", False and "mean" for this package's own choices."""
    audio_config = audio_config or CavMaeAudioConfig()
    weights = split_official_state_dict(load_official_state_dict(audio_backbone), audio_config)
    stage = _read_stage_files(projector, prefix)
    if processor is None and isinstance(llava, (str, os.PathLike)):
        processor = _processor_from_llava(llava, audio_config, stage)
    if processor is not None:
        processor = _with_reference_settings(processor, prompt_preset, channel_policy)
    model = _assemble(weights, stage, llava, audio_config, processor, **kwargs)
    model.config.shared_projector = shared_projector

    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)
    if weights.scorers:
        save_file(
            {key: value.contiguous() for key, value in weights.scorers.items()}, output_dir / SCORERS_NAME
        )
    else:
        logger.warning("audio_backbone has no attentive-OT scorers: %s not written", SCORERS_NAME)
    return model


def _with_reference_settings(processor, prompt_preset: str, channel_policy: str):
    """A copy of `processor` with the given prompt preset and, for a CAV-MAE feature extractor, channel policy."""
    processor = copy.deepcopy(processor)
    processor.prompt_preset = prompt_preset
    processor.caption_prompt(prompt_preset=prompt_preset)  # an unknown preset fails here, before any file is written
    if channel_policy not in CHANNEL_POLICIES:
        raise ValueError(f"channel_policy must be one of {CHANNEL_POLICIES}, got {channel_policy!r}")
    if isinstance(processor.feature_extractor, CavMaeFeatureExtractor):
        processor.feature_extractor.channel_policy = channel_policy
    return processor


def _read_stage_files(projector, prefix) -> dict[str, torch.Tensor]:
    """The projector and prefix tensors (authors' names) of the stage files; each file may hold both."""
    files = {"projector": {}, "prefix": {}}
    for argument, source in (("projector", projector), ("prefix", prefix)):
        if source is None:
            continue
        tensors = load_official_state_dict(source)
        unknown = [key for key in tensors if key not in PROJECTOR_KEYS and key != PREFIX_KEY]
        wanted = list(PROJECTOR_KEYS) if argument == "projector" else [PREFIX_KEY]
        missing = [key for key in wanted if key not in tensors]
        if unknown or missing:
            raise ValueError(
                f"The {argument} file has unexpected keys {unknown} / lacks keys {missing}: expected the "
                f"release's prefixMLP.bin or prefix.bin, with {list(PROJECTOR_KEYS)} and/or {PREFIX_KEY!r}."
            )
        files[argument] = tensors
    # Each part from its own argument's file, else from the other file
    mlp_file, prefix_file = (files["projector"] or files["prefix"]), (files["prefix"] or files["projector"])
    stage = {key: mlp_file[key] for key in PROJECTOR_KEYS if key in mlp_file}
    if stage and len(stage) != len(PROJECTOR_KEYS):
        raise ValueError(f"The prefix file holds only part of the projector: {sorted(stage)}.")
    if PREFIX_KEY in prefix_file:
        stage[PREFIX_KEY] = prefix_file[PREFIX_KEY]
    return stage


def _num_prefix(stage: dict[str, torch.Tensor]) -> int:
    return stage[PREFIX_KEY].shape[0] if PREFIX_KEY in stage else 16


def _processor_from_llava(llava, audio_config, stage) -> LlavaAudioProcessor | None:
    """`LlavaAudioProcessor.from_llava(llava, CavMaeFeatureExtractor())` for a LLaVA path or Hub id, or None (with
    a warning) when it has no processor files; the model then takes the placeholder ids its tokenizer gives."""
    feature_extractor = CavMaeFeatureExtractor(
        num_mel_bins=audio_config.num_mel_bins, target_length=audio_config.target_length
    )
    try:
        return LlavaAudioProcessor.from_llava(
            str(llava), feature_extractor, audio_config=audio_config, num_prefix_tokens=_num_prefix(stage)
        )
    except OSError as error:  # a LLaVA folder without processor files
        logger.warning("No processor written: cannot load LLaVA's processor from %s (%s)", llava, error)
        return None


def _assemble(weights, stage, llava, audio_config, processor, **kwargs) -> LlavaAudioForConditionalGeneration:
    if isinstance(llava, os.PathLike):
        llava = str(llava)
    model = LlavaAudioForConditionalGeneration.from_llava(
        llava, audio_config, num_prefix_tokens=_num_prefix(stage), processor=processor, **kwargs
    )
    sources = {  # model key -> (key in the authors' files, tensor)
        f"model.audio_tower.{name}": (official_name(name, audio_config), tensor)
        for name, tensor in weights.audio_tower.items()
    }
    sources |= {
        f"model.audio_to_vision.{name}": (f"proj.{name}", t) for name, t in weights.audio_to_vision.items()
    }
    sources |= {PROJECTOR_KEYS[key]: (key, tensor) for key, tensor in stage.items() if key in PROJECTOR_KEYS}
    if PREFIX_KEY in stage:
        sources["model.prefix_embeddings"] = (PREFIX_KEY, stage[PREFIX_KEY])

    current = model.state_dict()
    for target, (key, tensor) in sources.items():
        if tensor.shape != current[target].shape:
            raise ValueError(
                f"{key!r} has shape {list(tensor.shape)} but {target} of the model built around this LLaVA "
                f"needs {list(current[target].shape)}: are the files and the LLaVA checkpoint of one release?"
            )
    model.load_state_dict({target: tensor for target, (_, tensor) in sources.items()}, strict=False)
    if PROJECTOR_KEYS.keys().isdisjoint(stage):
        logger.info("No stage-2 projector given: the audio projector is a copy of the image projector.")
    if PREFIX_KEY not in stage:
        logger.info("No prefix given: the prefix embeddings are newly initialised.")
    logger.info(
        "Skipped %d keys of unused branches of audio_backbone: %s", len(weights.skipped), weights.skipped
    )
    return model.eval()


def add_convert_subcommand(subparsers) -> argparse.ArgumentParser:
    """Add `convert-official` to an argparse subparsers object; the parsed namespace's `func(args)` runs
    it."""
    parser = subparsers.add_parser(
        "convert-official",
        help="convert the DALI authors' released checkpoints into a LlavaAudio model folder",
        description="Convert audio_backbone.pth (+ prefixMLP.bin / prefix.bin) of the DALI release and a "
        "llava-hf LLaVA-1.5 into a LlavaAudio folder (model, processor, attentive-OT scorers).",
    )
    parser.add_argument("--audio-backbone", required=True, help="the release's audio_backbone.pth")
    parser.add_argument(
        "--llava", default="llava-hf/llava-1.5-7b-hf", help="llava-hf checkpoint: path or Hub id"
    )
    parser.add_argument("--projector", help="stage-2 file with the projector (prefixMLP.bin)")
    parser.add_argument("--prefix", help="stage-1a file with the prefix (prefix.bin)")
    parser.add_argument("--output-dir", required=True, help="folder to write the converted model to")
    parser.add_argument(
        "--audio-config", help="JSON file of CavMaeAudioConfig fields, for a checkpoint of another size"
    )
    parser.add_argument(
        "--prompt-preset", default="reference", choices=list(PROMPT_PRESETS),
        help="system texts of the prompts (processor prompt_preset): llava (none) or reference (the authors', the "
             "default)",
    )
    parser.add_argument(
        "--shared-projector", default=True, action=argparse.BooleanOptionalAction,
        help="images through the release's projector too, as in the authors' code (config shared_projector)",
    )
    parser.add_argument(
        "--channel-policy", default="first", choices=["first", "mean"],
        help="multichannel audio: the first channel, as the authors' code (default), or the channels' mean",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="dtype of the model",
    )
    parser.set_defaults(func=run_convert_official)
    return parser


def run_convert_official(args: argparse.Namespace) -> None:
    """Run `convert-official` with parsed arguments."""
    audio_config = None
    if args.audio_config:
        audio_config = CavMaeAudioConfig(**json.loads(Path(args.audio_config).read_text()))
    convert_official_to_folder(
        args.audio_backbone,
        args.llava,
        args.output_dir,
        projector=args.projector,
        prefix=args.prefix,
        audio_config=audio_config,
        prompt_preset=args.prompt_preset,
        shared_projector=args.shared_projector,
        channel_policy=args.channel_policy,
        dtype=args.dtype if args.dtype == "auto" else getattr(torch, args.dtype),
    )
    print(f"wrote {args.output_dir}")
