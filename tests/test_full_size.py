"""The full-size captioner (LLaVA-1.5-7B + CAV-MAE scale++) built on the meta device, its parameter counts against
the published sizes and hand-computed ones, and the memory estimator against direct measurements."""

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from bench.memory import (
    audio_activation_fit,
    audio_tower_activation_bytes,
    language_model_activation_bytes,
    linear_activation_fit,
)
from dali_hf.testing import PUBLISHED_PARAMETERS, full_size_captioner, parameter_counts


def test_full_size_captioner_on_meta_has_the_published_sizes(capsys):
    model = full_size_captioner()
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in model.parameters())
    counts = parameter_counts(model)
    with capsys.disabled():
        print("\nfull-size LlavaAudio parameters:", {k: f"{v:,}" for k, v in counts.items()})
    llava = counts["vision_tower"] + counts["multi_modal_projector"] + counts["language_model"]
    assert llava == PUBLISHED_PARAMETERS["llava-1.5-7b"]
    assert counts["vision_tower"] == PUBLISHED_PARAMETERS["vision_tower"]
    assert counts["language_model"] == PUBLISHED_PARAMETERS["language_model+lm_head"]
    # by hand: the projector Linear(1024, 4096) + Linear(4096, 4096); CAV-MAE = patch conv + modality embedding
    # + 12 ViT-B blocks + final LayerNorm (the sin-cos table is a buffer); Linear(768, 1024); 16 x 4096 prefix
    projector = 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    block = (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768) + 4 * 768
    assert counts["multi_modal_projector"] == counts["audio_multi_modal_projector"] == projector
    assert counts["audio_tower"] == (16 * 16 * 768 + 768) + 768 + 12 * block + 2 * 768
    assert counts["audio_to_vision"] == 768 * 1024 + 1024
    assert counts["prefix_embeddings"] == 16 * 4096
    assert counts["total"] == llava + counts["audio_tower"] + counts["audio_to_vision"] + projector + 16 * 4096
    assert model.config.audio_seq_length == 512 and model.config.image_seq_length == 576


def test_full_size_settings_reach_every_part():
    model = full_size_captioner(attn_implementation="sdpa")
    model.activation_checkpointing_enable()
    for part in ("vision_tower", "language_model", "audio_tower"):
        layers = [m for m in getattr(model.model, part).modules() if isinstance(m, GradientCheckpointingLayer)]
        assert layers and all(layer.gradient_checkpointing for layer in layers), part
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.model.audio_tower.config._attn_implementation == "sdpa"


def test_activation_fits_equal_direct_measurements():
    from transformers import LlamaConfig

    from dali_hf import CavMaeAudioConfig

    text = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=172, num_hidden_layers=5,
                       num_attention_heads=4)
    per_example, _ = linear_activation_fit(lambda s, d: language_model_activation_bytes(text, s, d), real_depth=5,
                                           real_seq=70)
    assert per_example == language_model_activation_bytes(text, 70, 5)
    audio = CavMaeAudioConfig(hidden_size=64, num_hidden_layers=4, num_shared_layers=1, num_attention_heads=4,
                              intermediate_size=128, num_mel_bins=32, target_length=128)
    per_clip, _ = audio_activation_fit(audio, vision_width=96)
    assert per_clip == audio_tower_activation_bytes(audio, 96, depth=4) > 0
