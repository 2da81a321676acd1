"""CAV-MAE audio encoder: a port of the audio path of CAV-MAE (Gong et al., ICLR 2023), which DALI trains.

The computation is the reference `forward` for audio: the filterbank, seen as a one-channel image with
frequency as height and time as width, is cut into patches by a strided convolution; a fixed 2-D sine-cosine
position embedding and a learned modality embedding are added; then come pre-norm ViT blocks (audio-only
blocks, then the shared blocks with their audio LayerNorms) and the final audio LayerNorm.
`dali_hf.convert_official` maps the authors' weight names.

It is written as transformers writes its encoders (ViT, AST): attention goes through the attention interface
(`config._attn_implementation`: "eager", "sdpa", "flash_attention_2", "flex_attention", or a registered kernel),
and hidden states and attentions are recorded by transformers' output-capturing hooks (`_can_record_outputs`).
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_cav_mae import CavMaeAudioConfig

__all__ = ["CavMaeAudioModel", "CavMaeAudioPreTrainedModel", "sincos_position_embedding"]


def sincos_position_embedding(hidden_size: int, grid_height: int, grid_width: int) -> torch.Tensor:
    """The fixed 2-D sine-cosine table of MAE / CAV-MAE, [grid_height * grid_width, hidden_size] in float32.

    Token `row * grid_width + column` gets the 1-D embedding of its column in the first half of its vector and
    that of its row in the second half; a 1-D embedding of position p is [sin(p w_i), cos(p w_i)] with
    w_i = 10000^(-i / (hidden_size / 4)). Computed in float64, as the reference does with numpy.
    """
    quarter = hidden_size // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, columns = torch.meshgrid(
        torch.arange(grid_height, dtype=torch.float64),
        torch.arange(grid_width, dtype=torch.float64),
        indexing="ij",
    )

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(columns), encode(rows)], dim=1).float()


class CavMaeAudioEmbeddings(nn.Module):
    """Patch embedding + fixed position embedding + modality embedding."""

    def __init__(self, config: CavMaeAudioConfig):
        super().__init__()
        self.grid_size = (config.num_mel_bins // config.patch_size, config.target_length // config.patch_size)
        self.patch_embedding = nn.Conv2d(
            1, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        # Fixed, not trained: a persistent buffer, saved with the weights (the released checkpoint stores it).
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.register_buffer("position_embedding", torch.zeros(1, num_patches, config.hidden_size))
        self.modality_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        # [batch, frames, bins] -> one-channel image [batch, 1, bins, frames]: frequency is height, time width
        image = input_features.transpose(1, 2).unsqueeze(1).to(self.patch_embedding.weight.dtype)
        # Row-major over the (frequency, time) patch grid: token = frequency_patch * time_patches + time_patch
        patches = self.patch_embedding(image).flatten(2).transpose(1, 2)
        return patches + self.position_embedding + self.modality_embedding


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling + mask) v written out, the "eager" implementation: the only one that returns the
    attention weights. Inputs [batch, heads, tokens, head_dim]; returns ([batch, tokens, heads, head_dim], weights)."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class CavMaeAudioAttention(nn.Module):
    """Multi-head self-attention with a fused query/key/value projection (the release's `qkv`), computed by the
    implementation that `config._attn_implementation` names. Every token attends to every token."""

    def __init__(self, config: CavMaeAudioConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        query, key, value = (
            self.qkv(hidden_states)
            .view(batch, length, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, None, scaling=self.scaling, dropout=0.0, **kwargs  # no mask: all tokens
        )
        return self.proj(attn_output.reshape(batch, length, -1)), attn_weights


class CavMaeAudioMLP(nn.Module):
    def __init__(self, config: CavMaeAudioConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class CavMaeAudioLayer(GradientCheckpointingLayer):
    """Pre-norm ViT block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: CavMaeAudioConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = CavMaeAudioAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CavMaeAudioMLP(config)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attended, _ = self.attention(self.layernorm_before(hidden_states), **kwargs)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.layernorm_after(hidden_states))


class CavMaeAudioPreTrainedModel(PreTrainedModel):
    config: CavMaeAudioConfig
    config_class = CavMaeAudioConfig
    base_model_prefix = "cav_mae_audio"
    main_input_name = "input_features"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CavMaeAudioEmbeddings", "CavMaeAudioLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # the embeddings and every block's output (before the final LayerNorm), and every block's attention weights;
    # negative `output_hidden_states` indices count the audio-only and the shared blocks
    _can_record_outputs = {
        "hidden_states": OutputRecorder(CavMaeAudioLayer, num_hidden_layers_key="num_layers"),
        "attentions": OutputRecorder(CavMaeAudioAttention, index=1),
    }

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CavMaeAudioEmbeddings):
            table = sincos_position_embedding(self.config.hidden_size, *module.grid_size)
            init.copy_(module.position_embedding, table.unsqueeze(0))
            init.normal_(module.modality_embedding, std=self.config.initializer_range)


class CavMaeAudioModel(CavMaeAudioPreTrainedModel):
    """The CAV-MAE audio encoder: [batch, target_length, num_mel_bins] filterbanks (see
    [`CavMaeFeatureExtractor`]) to [batch, (num_mel_bins / patch_size) * (target_length / patch_size),
    hidden_size] tokens.

    `layers` holds the `num_hidden_layers` audio-only blocks followed by the `num_shared_layers` shared blocks
    (whose audio LayerNorms are their `layernorm_before` / `layernorm_after`); `layernorm` is the final audio
    LayerNorm.
    """

    def __init__(self, config: CavMaeAudioConfig):
        super().__init__(config)
        self.embeddings = CavMaeAudioEmbeddings(config)
        self.layers = nn.ModuleList([CavMaeAudioLayer(config) for _ in range(config.num_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Conv2d:
        return self.embeddings.patch_embedding

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_features: torch.Tensor,
        input_features_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        r"""
        Args:
            input_features (`torch.Tensor` of shape `(batch_size, target_length, num_mel_bins)`):
                Normalised log-mel filterbanks, as [`CavMaeFeatureExtractor`] returns them.
            input_features_mask (`torch.Tensor` of shape `(batch_size, target_length)`, *optional*):
                Accepted for a uniform audio-encoder interface and ignored: like the reference, CAV-MAE
                attends to all tokens, those of the padding included (it was trained that way).
            output_hidden_states (`bool`, *optional*):
                Also return the embeddings and the output of every block (before the final LayerNorm).
            output_attentions (`bool`, *optional*):
                Also return every block's attention weights, [batch, heads, tokens, tokens] (only the "eager"
                attention implementation computes them).
            return_dict (`bool`, *optional*):
                Return a [`BaseModelOutput`] (default) rather than a tuple.
        """
        expected = (self.config.target_length, self.config.num_mel_bins)
        if input_features.dim() != 3 or tuple(input_features.shape[1:]) != expected:
            raise ValueError(
                f"CavMaeAudioModel expects input_features of shape [batch, {expected[0]}, {expected[1]}] "
                f"(frames, mel bins), got {list(input_features.shape)}. Compute them with "
                f"CavMaeFeatureExtractor(num_mel_bins={expected[1]}, target_length={expected[0]})."
            )
        hidden_states = self.embeddings(input_features)
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        return BaseModelOutput(last_hidden_state=self.layernorm(hidden_states))
