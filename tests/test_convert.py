"""The converter of the authors' CAV-MAE release (audio_backbone.pth, prefixMLP.bin) into a captioner folder:
weights against the timm reference, the scorers' swapped names, the `convert-official` subcommand, skipped keys and
errors that name the key."""

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

from dali_hf import (
    CavMaeAudioConfig,
    CavMaeFeatureExtractor,
    LlavaAudioForConditionalGeneration,
    LlavaAudioProcessor,
    convert_official,
)
from dali_hf.convert import (
    SCORERS_NAME,
    add_convert_subcommand,
    convert_official_to_folder,
    load_official_state_dict,
    split_official_state_dict,
)
from dali_hf.testing import TINY_CAV_MAE, random_clip

VISION_WIDTH, TEXT_WIDTH = 32, 48  # of dali_hf.testing.tiny_llava


def _scorer_tensors(generator):
    tensors = {}
    for scorer in ("audio_scorer", "image_scorer"):
        tensors |= {
            f"{scorer}.in_proj_weight": (3 * VISION_WIDTH, VISION_WIDTH),
            f"{scorer}.in_proj_bias": (96,),
            f"{scorer}.out_proj.weight": (VISION_WIDTH, VISION_WIDTH),
            f"{scorer}.out_proj.bias": (32,),
        }
    for name in ("a_q", "a_k", "a_v", "i_q", "i_k", "i_v"):
        tensors |= {f"{name}.weight": (VISION_WIDTH, VISION_WIDTH), f"{name}.bias": (VISION_WIDTH,)}
    return {name: torch.randn(shape, generator=generator) for name, shape in tensors.items()}


# parts of the release that the audio path does not use (besides the shared block's own norm1 / norm2)
UNUSED = {
    "blocks_v.0.norm1.weight": (32,),
    "blocks_v.0.attn.qkv.weight": (96, 32),
    "blocks_a.0.norm1_a.weight": (32,),
    "blocks_a.1.norm2_v.bias": (32,),
    "blocks_u.0.norm1_v.weight": (32,),
    "blocks_u.0.norm2_v.bias": (32,),
    "patch_embed_v.proj.weight": (32, 3, 16, 16),
    "pos_embed_v": (1, 196, 32),
    "modality_v": (1, 1, 32),
    "norm_v.weight": (32,),
    "norm.bias": (32,),
    "decoder_embed.weight": (16, 32),
    "decoder_blocks.0.mlp.fc1.weight": (64, 16),
    "decoder_pos_embed_a": (1, 8, 16),
    "decoder_pred_a.weight": (256, 16),
    "mask_token": (1, 1, 16),
    "vision_tower.vision_tower.vision_model.embeddings.class_embedding": (32,),
}


@pytest.fixture(scope="module")
def release(tmp_path_factory, cav_mae_reference):
    """A tiny release: audio_backbone.pth (DataParallel names) and prefixMLP.bin, plus the reference."""
    config = CavMaeAudioConfig(**TINY_CAV_MAE)
    reference = cav_mae_reference(config, seed=3)
    generator = torch.Generator().manual_seed(4)
    scorers = _scorer_tensors(generator)
    backbone = (
        reference.state_dict()
        | scorers
        | {name: torch.randn(shape, generator=generator) for name, shape in UNUSED.items()}
    )
    stage2 = {
        "model.mm_projector.0.weight": torch.randn(TEXT_WIDTH, VISION_WIDTH, generator=generator),
        "model.mm_projector.0.bias": torch.randn(TEXT_WIDTH, generator=generator),
        "model.mm_projector.2.weight": torch.randn(TEXT_WIDTH, TEXT_WIDTH, generator=generator),
        "model.mm_projector.2.bias": torch.randn(TEXT_WIDTH, generator=generator),
        "model.audio_tower.prefix": torch.randn(16, TEXT_WIDTH, generator=generator),
    }
    folder = tmp_path_factory.mktemp("release")
    torch.save({f"module.{name}": tensor for name, tensor in backbone.items()}, folder / "audio_backbone.pth")
    torch.save(stage2, folder / "prefixMLP.bin")
    return folder, config, reference, backbone, scorers, stage2


def _cav_processor(llava_processor, config):
    feature_extractor = CavMaeFeatureExtractor(
        num_mel_bins=config.num_mel_bins, target_length=config.target_length
    )
    return LlavaAudioProcessor.from_llava(llava_processor, feature_extractor, audio_config=config)


def test_convert_official_to_folder(release, llava_parts, tmp_path):
    folder, config, reference, _, scorers, stage2 = release
    llava, llava_processor = llava_parts
    out = tmp_path / "converted"
    convert_official_to_folder(
        folder / "audio_backbone.pth",
        llava,
        out,
        projector=folder / "prefixMLP.bin",
        audio_config=config,
        processor=_cav_processor(llava_processor, config),
    )

    loaded = AutoModel.from_pretrained(out).eval()
    assert type(loaded) is LlavaAudioForConditionalGeneration
    features = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        difference = (loaded.get_audio_tokens(features) - reference.proj(reference(features))).abs().max()
    assert difference < 1e-6
    parts = loaded.model
    assert torch.equal(parts.audio_tower.embeddings.position_embedding, reference.pos_embed_a)  # copied
    assert torch.equal(
        parts.audio_multi_modal_projector.linear_1.weight, stage2["model.mm_projector.0.weight"]
    )
    assert torch.equal(parts.audio_multi_modal_projector.linear_2.bias, stage2["model.mm_projector.2.bias"])
    assert torch.equal(parts.prefix_embeddings, stage2["model.audio_tower.prefix"])
    assert torch.equal(
        parts.multi_modal_projector.linear_1.weight, llava.model.multi_modal_projector.linear_1.weight
    )

    written = load_file(out / SCORERS_NAME)
    assert written.keys() == scorers.keys()
    swapped = {"audio_scorer": "image_scorer", "image_scorer": "audio_scorer"}  # the authors' names are swapped
    for name, tensor in scorers.items():
        module, rest = name.split(".", 1)
        assert torch.equal(written[f"{swapped.get(module, module)}.{rest}"], tensor), name
    # by default the folder reproduces the authors' code: their prompts, one projector, the first channel
    processor = AutoProcessor.from_pretrained(out)
    assert processor.prompt_preset == "reference" and processor.feature_extractor.channel_policy == "first"
    assert loaded.config.shared_projector is True
    assert type(AutoProcessor.from_pretrained(out).feature_extractor) is CavMaeFeatureExtractor


def test_convert_official_subcommand_from_llava_folder(release, llava_parts, tmp_path):
    folder, config, reference, _, _, _ = release
    llava, llava_processor = llava_parts
    llava.save_pretrained(tmp_path / "llava")
    llava_processor.save_pretrained(tmp_path / "llava")
    (tmp_path / "audio_config.json").write_text(json.dumps(TINY_CAV_MAE))
    parser = argparse.ArgumentParser()
    add_convert_subcommand(parser.add_subparsers())
    args = parser.parse_args(
        [
            "convert-official",
            "--audio-backbone",
            str(folder / "audio_backbone.pth"),
            "--llava",
            str(tmp_path / "llava"),
            "--prefix",
            str(folder / "prefixMLP.bin"),
            "--audio-config",
            str(tmp_path / "audio_config.json"),
            "--output-dir",
            str(tmp_path / "out"),
            "--prompt-preset",
            "llava",
            "--no-shared-projector",
            "--channel-policy",
            "mean",
        ]
    )
    args.func(args)

    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert (processor.audio_token_id, processor.num_audio_tokens) == (model.config.audio_token_id, 8)
    assert (processor.prompt_preset, processor.feature_extractor.channel_policy) == ("llava", "mean")
    assert model.config.shared_projector is False
    inputs = processor(
        text=processor.caption_prompt(audio=True),
        audio=random_clip(9),
        sampling_rate=16000,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = reference.proj(reference(inputs["input_features"]))
        assert (model.get_audio_tokens(inputs["input_features"]) - expected).abs().max() < 1e-6
    assert (tmp_path / "out" / SCORERS_NAME).is_file()


def test_convert_official_from_a_llava_path_builds_the_processor(release, llava_parts, tmp_path):
    """The Python API takes a LLaVA folder without a processor, as its docstring says and the CLI does: the model's
    placeholder ids are those `LlavaAudioProcessor.from_llava` gives that folder."""
    folder, config, reference, _, _, stage2 = release
    llava, llava_processor = llava_parts
    llava.save_pretrained(tmp_path / "llava")
    llava_processor.save_pretrained(tmp_path / "llava")
    model = convert_official(
        folder / "audio_backbone.pth", tmp_path / "llava", projector=folder / "prefixMLP.bin", audio_config=config
    )
    expected = _cav_processor(llava_processor, config)
    assert (model.config.audio_token_id, model.config.prefix_token_id) == (
        expected.audio_token_id, expected.prefix_token_id
    )
    assert torch.equal(model.model.prefix_embeddings, stage2["model.audio_tower.prefix"])
    features = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (model.get_audio_tokens(features) - reference.proj(reference(features))).abs().max() < 1e-6


def test_conversion_lists_skipped_keys_and_takes_separate_stage_files(release, llava_parts):
    folder, config, reference, backbone, scorers, stage2 = release
    weights = split_official_state_dict(load_official_state_dict(folder / "audio_backbone.pth"), config)
    shared_joint_norms = {f"blocks_u.0.norm{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert weights.skipped == sorted(UNUSED.keys() | shared_joint_norms)
    assert weights.scorers.keys() == scorers.keys()

    llava, llava_processor = llava_parts
    prefix_only = {"model.audio_tower.prefix": torch.zeros(8, TEXT_WIDTH)}
    model = convert_official(
        backbone,
        llava,
        projector=stage2,
        prefix=prefix_only,
        audio_config=config,
        processor=LlavaAudioProcessor.from_llava(
            llava_processor,
            CavMaeFeatureExtractor(num_mel_bins=32, target_length=64),
            audio_config=config,
            num_prefix_tokens=8,
        ),
    )
    assert model.config.num_prefix_tokens == 8 and not model.model.prefix_embeddings.any()
    assert torch.equal(
        model.model.audio_multi_modal_projector.linear_2.weight, stage2["model.mm_projector.2.weight"]
    )


def test_conversion_errors_name_the_key(release, llava_parts):
    _, config, _, backbone, _, stage2 = release
    missing = {k: v for k, v in backbone.items() if k != "blocks_u.0.attn.proj.bias"}
    with pytest.raises(ValueError, match=r"lacks audio-path keys: \['blocks_u.0.attn.proj.bias'\]"):
        split_official_state_dict(missing, config)
    for unknown in ("blocks_a.2.norm1.weight", "cls_token"):
        with pytest.raises(ValueError, match=rf"neither on the audio path.*'{unknown}'"):
            split_official_state_dict(backbone | {unknown: torch.zeros(32)}, config)
    with pytest.raises(ValueError, match=r"'modality_a' has shape \[1, 1, 16\] but .* needs \[1, 1, 32\]"):
        split_official_state_dict(backbone | {"modality_a": torch.zeros(1, 1, 16)}, config)
    with pytest.raises(
        ValueError, match=r"lacks audio-path keys: \['blocks_a.2.norm1.weight'.*pass audio_config="
    ):
        split_official_state_dict(backbone)  # the default config is the full-size one

    llava, llava_processor = llava_parts
    processor = _cav_processor(llava_processor, config)
    without_scorers = {k: v for k, v in backbone.items() if k not in release[4]}  # scorers of width 32 would fail first
    narrow = without_scorers | {"proj.weight": torch.zeros(40, 32), "proj.bias": torch.zeros(40)}
    with pytest.raises(
        ValueError, match=r"'proj.weight' has shape \[40, 32\] but model.audio_to_vision.weight"
    ):
        convert_official(narrow, llava, audio_config=config, processor=processor)
    with pytest.raises(ValueError, match=r"unexpected keys \['model.embed_tokens.weight'\]"):
        convert_official(
            backbone,
            llava,
            projector=stage2 | {"model.embed_tokens.weight": torch.zeros(1)},
            audio_config=config,
            processor=processor,
        )
