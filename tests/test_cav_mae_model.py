"""The CAV-MAE audio encoder port: outputs against an independent timm reference (tiny and full size), MAE's
sin-cos position table, gradient checkpointing, input errors, and the attention implementations of transformers'
attention interface (eager, SDPA, flex) with the attentions and hidden states they record."""

import numpy as np
import pytest
import torch

from dali_hf import CavMaeAudioConfig, CavMaeAudioModel
from dali_hf.convert import split_official_state_dict
from dali_hf.testing import TINY_CAV_MAE


def ported(reference, config: CavMaeAudioConfig) -> CavMaeAudioModel:
    with torch.device("meta"):
        model = CavMaeAudioModel(config)
    model.load_state_dict(split_official_state_dict(reference.state_dict(), config).audio_tower, assign=True)
    return model.eval()


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_port_matches_timm_reference(cav_mae_reference, size):
    config = CavMaeAudioConfig(**TINY_CAV_MAE) if size == "tiny" else CavMaeAudioConfig()
    reference = cav_mae_reference(config, seed=0)
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
    for config, grid in ((CavMaeAudioConfig(**narrow), (8, 64)), (CavMaeAudioConfig(**TINY_CAV_MAE), (2, 4))):
        table = CavMaeAudioModel(config).embeddings.position_embedding
        expected = torch.from_numpy(mae_sincos_table(config.hidden_size, *grid)).float().unsqueeze(0)
        torch.testing.assert_close(table, expected, rtol=0, atol=1e-6)
        assert not table.requires_grad


def test_gradient_checkpointing_and_errors(cav_mae_reference):
    config = CavMaeAudioConfig(**TINY_CAV_MAE)
    model = ported(cav_mae_reference(config, seed=2), config).train()
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


def test_attention_implementations_agree_and_eager_returns_each_blocks_attention(cav_mae_reference):
    """SDPA (the default) and eager give the same tokens (float32 rounding: within 1e-5); eager returns every block's
    attention, equal to softmax(q k^T / sqrt(head_dim)) computed by hand from the block's input."""
    config = CavMaeAudioConfig(**TINY_CAV_MAE)
    model = ported(cav_mae_reference(config, seed=3), config)
    features = torch.randn(2, config.target_length, config.num_mel_bins, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert model.config._attn_implementation == "sdpa"
        sdpa = model(features, output_hidden_states=True)
        model.set_attn_implementation("eager")
        eager = model(features, output_hidden_states=True, output_attentions=True)
        selected = model(features, output_hidden_states=[-1])  # counted over the audio-only and the shared blocks
    torch.testing.assert_close(eager.last_hidden_state, sdpa.last_hidden_state, rtol=0, atol=1e-5)
    assert len(eager.attentions) == config.num_layers == 3 and len(eager.hidden_states) == 1 + 3
    batch, tokens, heads, head_dim = 2, 8, config.num_attention_heads, config.hidden_size // config.num_attention_heads
    for layer, block_input, attention in zip(model.layers, eager.hidden_states, eager.attentions, strict=False):
        with torch.no_grad():
            qkv = layer.attention.qkv(layer.layernorm_before(block_input))
        query, key, _ = qkv.view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        by_hand = (query @ key.transpose(-1, -2) / head_dim**0.5).softmax(-1)
        assert attention.shape == (batch, heads, tokens, tokens)
        torch.testing.assert_close(attention, by_hand)
        torch.testing.assert_close(attention.sum(-1), torch.ones(batch, heads, tokens))
    assert selected.hidden_states[:3] == (None, None, None)
    assert torch.equal(selected.hidden_states[3], eager.hidden_states[3])


@pytest.mark.slow  # flex attention compiles its kernel
def test_flex_attention_gives_the_sdpa_tokens(cav_mae_reference):
    config = CavMaeAudioConfig(**TINY_CAV_MAE)
    model = ported(cav_mae_reference(config, seed=5), config)
    features = torch.randn(2, config.target_length, config.num_mel_bins, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        sdpa = model(features).last_hidden_state
        model.set_attn_implementation("flex_attention")
        assert model.config._attn_implementation == "flex_attention"
        flex = model(features).last_hidden_state
    torch.testing.assert_close(flex, sdpa, rtol=0, atol=1e-5)
