"""CAV-MAE audio encoder: the port against a timm reference, the converter of the authors' release, the
feature extractor against torchaudio's Kaldi fbank, and the captioner built on it (save, load, remote
code without dali_hf)."""

import argparse
import json
import textwrap

import numpy as np
import pytest
import torch
import torchaudio
from safetensors.torch import load_file
from timm.models.vision_transformer import Block
from torch import nn
from transformers import AutoFeatureExtractor, AutoModel, AutoProcessor

from dali_hf import (
    CavMaeAudioConfig,
    CavMaeAudioModel,
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
from dali_hf.testing import random_clip, run_without_dali_hf

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_shared_layers=1,
    num_attention_heads=4,
    intermediate_size=64,
    num_mel_bins=32,
    target_length=64,
)
VISION_WIDTH, TEXT_WIDTH = 32, 48  # of dali_hf.testing.tiny_llava


# ---- an independent reference: the CAV-MAE audio path from timm blocks, under the authors' names -----------


class SharedBlock(Block):
    """A shared CAV-MAE block run for audio: timm's block with the audio LayerNorms `norm1_a` / `norm2_a` (its
    own `norm1` / `norm2`, for the joint stream, stay unused as in the release)."""

    def __init__(self, dim, *args, **kwargs):
        super().__init__(dim, *args, **kwargs)
        self.norm1_a, self.norm2_a = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1_a(x))
        return x + self.mlp(self.norm2_a(x))


class ReferenceCavMae(nn.Module):
    def __init__(self, config: CavMaeAudioConfig, seed: int):
        super().__init__()
        dim, patch = config.hidden_size, config.patch_size
        block = dict(
            num_heads=config.num_attention_heads,
            mlp_ratio=config.intermediate_size / dim,
            qkv_bias=True,
            norm_layer=nn.LayerNorm,
        )  # nn.LayerNorm: eps 1e-5, as CAV-MAE (timm's default is 1e-6)
        self.patch_embed_a = nn.Module()
        self.patch_embed_a.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        tokens = (config.num_mel_bins // patch) * (config.target_length // patch)
        self.pos_embed_a = nn.Parameter(torch.zeros(1, tokens, dim))
        self.modality_a = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks_a = nn.ModuleList([Block(dim, **block) for _ in range(config.num_hidden_layers)])
        self.blocks_u = nn.ModuleList([SharedBlock(dim, **block) for _ in range(config.num_shared_layers)])
        self.norm_a = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, VISION_WIDTH)
        for blk in [*self.blocks_a, *self.blocks_u]:
            blk.attn.fused_attn = False  # timm's explicit softmax(q k^T * scale) v, not SDPA
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # random everything, LayerNorms and the position table included
            for name, param in self.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(1 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.02 * noise)
        self.eval()

    def forward(self, fbank):
        """CAV-MAE's audio forward: [batch, frames, bins] -> [batch, tokens, width]."""
        a = self.patch_embed_a.proj(fbank.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)
        a = a + self.pos_embed_a + self.modality_a
        for blk in self.blocks_a:
            a = blk(a)
        for blk in self.blocks_u:
            a = blk(a)
        return self.norm_a(a)


def ported(reference: ReferenceCavMae, config: CavMaeAudioConfig) -> CavMaeAudioModel:
    with torch.device("meta"):
        model = CavMaeAudioModel(config)
    model.load_state_dict(split_official_state_dict(reference.state_dict(), config).audio_tower, assign=True)
    return model.eval()


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_port_matches_timm_reference(size):
    config = CavMaeAudioConfig(**TINY) if size == "tiny" else CavMaeAudioConfig()
    reference = ReferenceCavMae(config, seed=0)
    model = ported(reference, config)
    batch = 2 if size == "tiny" else 1
    features = torch.randn(
        batch, config.target_length, config.num_mel_bins, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        expected, ours = reference(features), model(features).last_hidden_state
    tokens = (config.num_mel_bins // 16) * (config.target_length // 16)
    assert ours.shape == (batch, tokens, config.hidden_size)
    assert (ours - expected).abs().max() < 1e-5


def mae_sincos_table(dim, grid_h, grid_w):
    """MAE's get_2d_sincos_pos_embed, written out with numpy: the first half encodes the column (time), the
    second the row (frequency)."""

    def one_d(positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
        out = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    columns, rows = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
    return np.concatenate([one_d(columns), one_d(rows)], axis=1)


def test_random_init_uses_the_mae_sincos_table():
    # the released 8 x 64 patch grid (a narrow, one-block encoder) and the tiny 2 x 4 one
    narrow = dict(
        hidden_size=64, num_hidden_layers=1, num_shared_layers=0, num_attention_heads=4, intermediate_size=64
    )
    for config, grid in ((CavMaeAudioConfig(**narrow), (8, 64)), (CavMaeAudioConfig(**TINY), (2, 4))):
        table = CavMaeAudioModel(config).embeddings.position_embedding
        expected = torch.from_numpy(mae_sincos_table(config.hidden_size, *grid)).float().unsqueeze(0)
        torch.testing.assert_close(table, expected, rtol=0, atol=1e-6)
        assert not table.requires_grad


def test_gradient_checkpointing_and_errors():
    config = CavMaeAudioConfig(**TINY)
    model = ported(ReferenceCavMae(config, seed=2), config).train()
    features = torch.randn(2, 64, 32)

    def gradients():
        model.zero_grad()
        model(features).last_hidden_state.square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    model.activation_checkpointing_enable()
    for expected, got in zip(plain, gradients(), strict=True):
        torch.testing.assert_close(got, expected)
    outputs = model.eval()(features, output_hidden_states=True)
    assert len(outputs.hidden_states) == 1 + 3
    with pytest.raises(ValueError, match=r"\[batch, 64, 32\].*got \[2, 32, 64\]"):
        model(features.transpose(1, 2))
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        CavMaeAudioConfig(hidden_size=30, num_attention_heads=4)


# ---- conversion of the authors' release --------------------------------------------------------------------


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
def release(tmp_path_factory):
    """A tiny release: audio_backbone.pth (DataParallel names) and prefixMLP.bin, plus the reference."""
    config = CavMaeAudioConfig(**TINY)
    reference = ReferenceCavMae(config, seed=3)
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
    (tmp_path / "audio_config.json").write_text(json.dumps(TINY))
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


# ---- the feature extractor ---------------------------------------------------------------------------------


def reference_features(waveform: torch.Tensor, num_mel_bins=128, target_length=1024) -> torch.Tensor:
    """The reference loader's steps on a mono 16 kHz float32 waveform: mean removal, Kaldi fbank, zero padding
    of the fbank (ZeroPad2d) or cutting, normalisation."""
    waveform = waveform - waveform.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform.unsqueeze(0),
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=10,
    )
    pad = target_length - fbank.shape[0]
    fbank = torch.nn.ZeroPad2d((0, 0, 0, pad))(fbank) if pad > 0 else fbank[:target_length]
    return (fbank - (-5.081)) / 4.4849


def test_feature_extractor_matches_kaldi_fbank():
    extractor = CavMaeFeatureExtractor()
    short, long = random_clip(0, seconds=1.0), random_clip(1, seconds=12.0)
    out = extractor([short, torch.from_numpy(long)], sampling_rate=16000, return_tensors="pt")
    assert out["input_features"].shape == (2, 1024, 128) and out["input_features"].dtype == torch.float32
    assert torch.equal(out["input_features"][0], reference_features(torch.from_numpy(short)))
    assert torch.equal(out["input_features"][1], reference_features(torch.from_numpy(long)))
    frames = 1 + (16000 - 400) // 160  # 98 frames in one second
    assert out["input_features_mask"][0].tolist() == [1] * frames + [0] * (1024 - frames)
    assert out["input_features_mask"][1].all()

    # 44.1 kHz stereo, either layout: averaged over channels, then resampled to 16 kHz
    stereo = np.stack([random_clip(2, rate=44100), random_clip(3, rate=44100)])
    mono = torchaudio.functional.resample(torch.from_numpy(stereo).mean(0), 44100, 16000)
    for layout in (stereo, stereo.T):
        features = extractor(layout, sampling_rate=44100, return_tensors="pt")["input_features"]
        assert torch.equal(features[0], reference_features(mono))

    # processor options are accepted and leave the output as it is
    again = extractor(
        [short, long.tolist()],
        sampling_rate=16000,
        return_tensors="pt",
        padding="longest",
        truncation=False,
        max_length=10,
        return_attention_mask=False,
    )
    assert all(torch.equal(again[key], out[key]) for key in out)


def test_feature_extractor_errors_and_round_trip(tmp_path):
    extractor = CavMaeFeatureExtractor(num_mel_bins=32, target_length=64)
    clip = random_clip(0, seconds=0.5)
    with pytest.raises(ValueError, match="sampling_rate="):
        extractor(clip)
    with pytest.raises(ValueError, match="clip 1 is empty"):
        extractor([clip, np.zeros(0, np.float32)], sampling_rate=16000)
    with pytest.raises(ValueError, match="clip 0 holds non-finite samples"):
        extractor(np.where(np.arange(clip.size) == 7, np.nan, clip), sampling_rate=16000)
    with pytest.raises(ValueError, match="Pass a batch as a list"):
        extractor(np.stack([clip] * 16), sampling_rate=16000)

    extractor.save_pretrained(tmp_path)
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(loaded) is CavMaeFeatureExtractor and loaded.to_dict() == extractor.to_dict()
    expected = extractor(clip, sampling_rate=16000, return_tensors="np")["input_features"]
    assert np.array_equal(loaded(clip, sampling_rate=16000, return_tensors="np")["input_features"], expected)


# ---- the captioner around the CAV-MAE encoder --------------------------------------------------------------


@pytest.fixture(scope="module")
def cav_captioner(llava_parts):
    llava, llava_processor = llava_parts
    config = CavMaeAudioConfig(**TINY)
    processor = _cav_processor(llava_processor, config)
    torch.manual_seed(6)
    model = LlavaAudioForConditionalGeneration.from_llava(llava, config, processor=processor).eval()
    return model, processor


def _audio_inputs(processor):
    return processor(
        text=[processor.caption_prompt(audio=True, prefix=True), processor.caption_prompt(audio=True)],
        audio=[random_clip(7), random_clip(8, seconds=0.3)],
        sampling_rate=16000,
        return_tensors="pt",
    )


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    folder = sys.argv[1]
    import numpy as np
    import torch
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    for part in (model, model.model.audio_tower, processor.feature_extractor):
        assert "dali_hf" not in type(part).__module__, type(part).__module__
    clips = [(0.1 * np.random.default_rng(seed).standard_normal(16000)).astype(np.float32) for seed in (7, 8)]
    clips[1] = clips[1][:4800]
    prompts = [processor.caption_prompt(audio=True, prefix=True), processor.caption_prompt(audio=True)]
    inputs = processor(text=prompts, audio=clips, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        torch.save(model(**inputs).logits, sys.argv[2])
    print(type(model.model.audio_tower).__name__, type(processor.feature_extractor).__name__)
    """
)


def test_captioner_generates_saves_and_loads_as_remote_code(cav_captioner, tmp_path):
    model, processor = cav_captioner
    inputs = _audio_inputs(processor)
    assert inputs["input_features"].shape == (2, 64, 32)
    generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 4)

    folder = tmp_path / "dali-cav"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for name in ("configuration_cav_mae.py", "modeling_cav_mae.py", "feature_extraction_cav_mae.py"):
        assert (folder / name).is_file(), name
    with torch.no_grad():
        expected = model(**inputs).logits
        loaded = AutoModel.from_pretrained(folder).eval()
        assert torch.equal(loaded(**_audio_inputs(AutoProcessor.from_pretrained(folder))).logits, expected)

    out = tmp_path / "logits.pt"
    result = run_without_dali_hf(REMOTE_SCRIPT, folder, out, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CavMaeAudioModel CavMaeFeatureExtractor" in result.stdout
    assert torch.equal(torch.load(out), expected)


def test_short_clips_are_padded_to_one_frame_and_integer_pcm_is_scaled(tmp_path):
    """A clip shorter than one 25 ms window gives one frame (its mean-removed samples zero-padded to 400), and int16
    samples give the features of the same audio read back by soundfile as float."""
    import soundfile

    extractor = CavMaeFeatureExtractor(num_mel_bins=32, target_length=64)
    short = random_clip(3, seconds=0.5)[:160]  # 10 ms, as the tail of a 10.25 s file
    out = extractor(short, sampling_rate=16000, return_tensors="np")
    padded = np.pad(short - short.mean(), (0, 240))
    reference = torchaudio.compliance.kaldi.fbank(
        torch.from_numpy(padded)[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=32, dither=0.0, frame_shift=10)
    assert out["input_features_mask"][0].sum() == 1
    np.testing.assert_allclose(out["input_features"][0, 0], ((reference[0] + 5.081) / 4.4849).numpy(), atol=1e-5)

    pcm = (random_clip(4, seconds=0.5) * 20000).astype(np.int16)
    soundfile.write(tmp_path / "pcm.wav", pcm, 16000, subtype="PCM_16")
    as_read = soundfile.read(tmp_path / "pcm.wav", dtype="float32")[0]
    np.testing.assert_array_equal(extractor(pcm, sampling_rate=16000)["input_features"][0],
                                  extractor(as_read, sampling_rate=16000)["input_features"][0])
