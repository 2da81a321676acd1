"""Configuration of the CAV-MAE audio encoder, the CAV-MAE audio branch that DALI aligns to CLIP's tokens."""

from transformers import PreTrainedConfig

__all__ = ["CavMaeAudioConfig"]


class CavMaeAudioConfig(PreTrainedConfig):
    r"""
    Configuration of [`CavMaeAudioModel`], the audio path of CAV-MAE (Gong et al., ICLR 2023) as DALI uses
    it: `num_hidden_layers` audio-only ViT blocks, then `num_shared_layers` blocks of the audio-visual branch
    (run with their audio LayerNorms), then the final audio LayerNorm. The defaults are the released "scale++"
    encoder: a 1024-frame x 128-bin log-mel filterbank cut into 16 x 16 patches gives 8 x 64 = 512 tokens of
    width 768.

    Args:
        hidden_size (`int`, *optional*, defaults to 768):
            Token width.
        num_hidden_layers (`int`, *optional*, defaults to 11):
            Audio-only blocks.
        num_shared_layers (`int`, *optional*, defaults to 1):
            Shared (audio-visual) blocks that follow them.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per block.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Hidden width of the MLPs.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            MLP activation.
        num_mel_bins (`int`, *optional*, defaults to 128):
            Mel bins of the input filterbank (the patch grid's height).
        target_length (`int`, *optional*, defaults to 1024):
            Frames of the input filterbank (the patch grid's width).
        patch_size (`int`, *optional*, defaults to 16):
            Side of the square, non-overlapping patches.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            LayerNorm epsilon (`nn.LayerNorm`'s default, as in the reference code).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the random initialisation.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the fused query/key/value projection has a bias.
    """

    model_type = "cav_mae_audio"

    hidden_size: int = 768
    num_hidden_layers: int = 11
    num_shared_layers: int = 1
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    num_mel_bins: int = 128
    target_length: int = 1024
    patch_size: int = 16
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    qkv_bias: bool = True

    @property
    def num_layers(self) -> int:
        """The blocks the encoder runs: the `num_hidden_layers` audio-only ones, then the `num_shared_layers` shared
        ones."""
        return self.num_hidden_layers + self.num_shared_layers

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.hidden_size % 4:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of 4 for the 2-D sine-cosine position "
                "embedding."
            )
        if self.num_mel_bins % self.patch_size or self.target_length % self.patch_size:
            raise ValueError(
                f"num_mel_bins ({self.num_mel_bins}) and target_length ({self.target_length}) must be "
                f"multiples of patch_size ({self.patch_size})."
            )
