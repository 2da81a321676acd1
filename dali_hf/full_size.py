"""The paper's full-size captioner without its weights: LLaVA-1.5-7B's published configuration, CAV-MAE "scale++",
and the DALI captioner built from them on the meta device (no memory), through the same `from_llava` that builds it
from the real checkpoint:

    model = LlavaAudioForConditionalGeneration.from_llava(
        "llava-hf/llava-1.5-7b-hf", CavMaeAudioConfig(), dtype=torch.bfloat16, device_map="auto",
        attn_implementation="sdpa")          # or "flash_attention_2" where installed
    model.gradient_checkpointing_enable()    # every part that trains (and the frozen LM that gradients cross)
"""

import torch

__all__ = ["LLAVA_1_5_7B", "PUBLISHED_PARAMETERS", "cav_mae_scale_plus_config", "full_size_captioner",
           "llava_1_5_7b_config", "parameter_counts"]

LLAVA_1_5_7B = "llava-hf/llava-1.5-7b-hf"

# Published sizes: llava-hf/llava-1.5-7b-hf's safetensors index (total_size 14,126,854,144 bytes in fp16), CLIP
# ViT-L/14's vision encoder (303,179,776 at 224 px; 336 px adds 320 position embeddings of width 1024), Llama-2-7B /
# Vicuna-7B v1.5 (6,738,415,616 with 32,000 tokens; llava-hf pads the vocabulary to 32,064).
PUBLISHED_PARAMETERS = {
    "llava-1.5-7b": 14_126_854_144 // 2,
    "vision_tower": 303_179_776 + 320 * 1024,
    "language_model+lm_head": 6_738_415_616 + 64 * 4096 * 2,
}


def llava_1_5_7b_config():
    """`LlavaConfig` of llava-hf/llava-1.5-7b-hf, with its published values (CLIP ViT-L/14-336, Vicuna-7B v1.5)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5, vocab_size=32000)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", pad_token_id=32001,
                       tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, image_seq_length=576,
                       projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
                       pad_token_id=32001, tie_word_embeddings=False)


def cav_mae_scale_plus_config():
    """The released CAV-MAE "scale++" audio branch: 11 + 1 blocks of width 768, 512 tokens per 10.24 s clip."""
    from .modeling import CavMaeAudioConfig

    return CavMaeAudioConfig()


def full_size_captioner(dtype: torch.dtype = torch.bfloat16, attn_implementation: str = "sdpa"):
    """The full DALI captioner on the meta device, built by `from_llava` from a LLaVA-1.5-7B made from its config
    (the real checkpoint goes through the same call with a path instead)."""
    from transformers import LlavaForConditionalGeneration

    from .modeling import LlavaAudioForConditionalGeneration

    config = llava_1_5_7b_config()
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config).to(dtype)
    # the ids LlavaAudioProcessor.from_llava gives llava-hf's tokenizer (32,002 tokens): the next two
    return LlavaAudioForConditionalGeneration.from_llava(llava, cav_mae_scale_plus_config(), audio_token_id=32002,
                                                         prefix_token_id=32003)


def parameter_counts(model) -> dict[str, int]:
    """Parameters per part of a LlavaAudio model (the language model's count includes `lm_head`)."""
    parts = model.model
    counts = {name: sum(p.numel() for p in getattr(parts, name).parameters())
              for name in ("vision_tower", "multi_modal_projector", "language_model", "audio_tower",
                           "audio_to_vision", "audio_multi_modal_projector")}
    counts["language_model"] += model.lm_head.weight.numel()
    counts["prefix_embeddings"] = parts.prefix_embeddings.numel()
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
