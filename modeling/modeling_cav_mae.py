"""CAV-MAE audio encoder: a port of the audio path of CAV-MAE (Gong et al., ICLR 2023), which DALI trains.

The computation is the reference `forward` for audio: the filterbank, seen as a one-channel image with
frequency as height and time as width, is cut into patches by a strided convolution; a fixed 2-D sine-cosine
position embedding and a learned modality embedding are added; then come pre-norm ViT blocks (audio-only
blocks, then the shared blocks with their audio LayerNorms) and the final audio LayerNorm.
`dali_hf.convert_official` maps the authors' weight names.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils.generic import can_return_tuple

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


class CavMaeAudioAttention(nn.Module):
    """Multi-head self-attention with a fused query/key/value projection. Always computed with
    `torch.nn.functional.scaled_dot_product_attention` (the model declares SDPA support only)."""

    def __init__(self, config: CavMaeAudioConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        qkv = (
            self.qkv(hidden_states)
            .view(batch, length, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scaling)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, -1))


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

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(self.layernorm_before(hidden_states))
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
        num_layers = config.num_hidden_layers + config.num_shared_layers
        self.layers = nn.ModuleList([CavMaeAudioLayer(config) for _ in range(num_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Conv2d:
        return self.embeddings.patch_embedding

    @can_return_tuple
    def forward(
        self,
        input_features: torch.Tensor,
        input_features_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutput:
        r"""
        Args:
            input_features (`torch.Tensor` of shape `(batch_size, target_length, num_mel_bins)`):
                Normalised log-mel filterbanks, as [`CavMaeFeatureExtractor`] returns them.
            input_features_mask (`torch.Tensor` of shape `(batch_size, target_length)`, *optional*):
                Accepted for a uniform audio-encoder interface and ignored: like the reference, CAV-MAE
                attends to all tokens, those of the padding included (it was trained that way).
            output_hidden_states (`bool`, *optional*):
                Also return the embeddings and the output of every block.
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
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states

        hidden_states = self.embeddings(input_features)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        return BaseModelOutput(
            last_hidden_state=self.layernorm(hidden_states), hidden_states=all_hidden_states
        )
