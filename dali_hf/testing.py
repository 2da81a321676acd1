"""Models and data without weights or downloads: for tests, benchmarks and the demo, not for the library.

- tiny parts built from configs (tokenizer, LLaVA-1.5, audio encoders, the captioner): the code paths are the
  full-size ones, only the sizes are small;
- the paper's full-size captioner on the meta device, with the published parameter counts;
- generated inputs (images, clips, audio-image pairs to align) and helpers for tests (a callback that stops
  training, a Python without dali_hf).
"""

import subprocess
import sys
import textwrap

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    TrainerCallback,
    WhisperConfig,
    WhisperFeatureExtractor,
)

__all__ = [
    "TINY_WORDS",
    "TINY_CAV_MAE",
    "tiny_tokenizer",
    "tiny_llava",
    "tiny_llava_processor",
    "tiny_llava_parts",
    "tiny_audio_encoder",
    "tiny_captioner",
    "saved_captioner",
    "LLAVA_1_5_7B",
    "PUBLISHED_PARAMETERS",
    "llava_1_5_7b_config",
    "cav_mae_scale_plus_config",
    "full_size_captioner",
    "parameter_counts",
    "random_image",
    "random_clip",
    "pairs_dataset",
    "StopAfterStep",
    "run_without_dali_hf",
]

# ---- tiny parts -----------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
# a CAV-MAE audio branch of 2 + 1 (shared) blocks over 64 frames of 32 mel bins: 8 tokens of width 32
TINY_CAV_MAE = dict(hidden_size=32, num_hidden_layers=2, num_shared_layers=1, num_attention_heads=4,
                    intermediate_size=64, num_mel_bins=32, target_length=64)
TINY_WORDS = (
    "USER ASSISTANT : . , ? ! a an the is are and of in on with sound sounds can be heard this scene describe "
    "what dog barks cat meows bird sings car engine rain falls water flows bell rings people talk music plays "
    "loud quiet soft noise image shows there it"
).split()


def tiny_tokenizer(words=TINY_WORDS, room: int = 2) -> tuple[PreTrainedTokenizerFast, int]:
    """A word-level tokenizer over `words` and the vocab size for a model using it, with `room` spare rows
    (so the `<audio>`/`<prefix>` placeholders fit without growing the embeddings, as in llava-hf's checkpoints)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(dict.fromkeys(words)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
    )
    return tokenizer, len(vocab) + room


def tiny_llava(vocab_size: int, image_token_id: int, image_size: int = 32, seed: int = 0, vision_hidden: int = 32,
               text_hidden: int = 48, vision_layers: int = 3, text_layers: int = 2):
    """A random LLaVA-1.5-shaped model: CLIP-style vision tower (patch 8, so 16 image tokens at 32 px), Llama
    decoder; pad/bos/eos are the ids of `tiny_tokenizer` (3, 1, 2)."""
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
        num_attention_heads=4, image_size=image_size, patch_size=8, projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=text_hidden, intermediate_size=2 * text_hidden, num_hidden_layers=text_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512,
        pad_token_id=3, bos_token_id=1, eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        image_seq_length=(image_size // 8) ** 2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 3
    model.generation_config.eos_token_id = 2
    return model


def tiny_llava_processor(tokenizer, image_size: int = 32) -> LlavaProcessor:
    """LLaVA's processor over `tokenizer` with a CLIP image processor at `image_size`."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def tiny_llava_parts(seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """(plain LLaVA, its processor) at tiny size, over `tiny_tokenizer`."""
    tokenizer, vocab_size = tiny_tokenizer()
    return tiny_llava(vocab_size, tokenizer.convert_tokens_to_ids("<image>"), seed=seed), tiny_llava_processor(tokenizer)


def tiny_audio_encoder(kind: str = "ast"):
    """(audio config, feature extractor) of a tiny audio encoder: "ast" (10 tokens), "whisper" (50 tokens) or
    "cav_mae" (`TINY_CAV_MAE`, 8 tokens)."""
    if kind == "ast":
        config = ASTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            patch_size=16, frequency_stride=16, time_stride=16, max_length=64, num_mel_bins=32,
        )
        return config, ASTFeatureExtractor(num_mel_bins=32, max_length=64)
    if kind == "whisper":
        config = WhisperConfig(
            d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, decoder_layers=1,
            decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=50,
            max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1,
        )
        return config, WhisperFeatureExtractor(feature_size=16, chunk_length=1, return_attention_mask=True)
    if kind == "cav_mae":
        from .modeling import CavMaeAudioConfig, CavMaeFeatureExtractor

        config = CavMaeAudioConfig(**TINY_CAV_MAE)
        return config, CavMaeFeatureExtractor(num_mel_bins=config.num_mel_bins, target_length=config.target_length)
    raise ValueError(f"unknown tiny audio encoder {kind!r}: use 'ast', 'whisper' or 'cav_mae'")


def tiny_captioner(kind: str = "ast", seed: int = 1, llava_parts=None):
    """(LlavaAudio captioner, its processor, the plain LLaVA whose modules it reuses), tiny, from configs.

    `llava_parts`: (plain LLaVA, its processor) to build around, as `tiny_llava_parts` returns them; the captioner
    shares that LLaVA's modules. By default a new one, so that training the captioner touches no other model.
    """
    from .modeling import LlavaAudioForConditionalGeneration, LlavaAudioProcessor

    llava, llava_processor = llava_parts or tiny_llava_parts()
    audio_config, feature_extractor = tiny_audio_encoder(kind)
    processor = LlavaAudioProcessor.from_llava(llava_processor, feature_extractor, audio_config=audio_config)
    torch.manual_seed(seed)
    model = LlavaAudioForConditionalGeneration.from_llava(llava, audio_config, processor=processor).eval()
    return model, processor, llava


def saved_captioner(llava_parts, kind: str, folder):
    """`tiny_captioner(kind, llava_parts=llava_parts)`'s model and processor saved to `folder` (returned), as a
    user's captioner folder."""
    model, processor, _ = tiny_captioner(kind, llava_parts=llava_parts)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---- the full-size captioner, without its weights -------------------------------------------------------------
# LLaVA-1.5-7B's published configuration, CAV-MAE "scale++", and the DALI captioner built from them on the meta
# device (no memory), through the same `from_llava` that builds it from the real checkpoint:
#
#     model = LlavaAudioForConditionalGeneration.from_llava(
#         "llava-hf/llava-1.5-7b-hf", CavMaeAudioConfig(), dtype=torch.bfloat16, device_map="auto",
#         attn_implementation="sdpa")          # or "flash_attention_2" where installed
#     model.gradient_checkpointing_enable()    # every part that trains (and the frozen LM that gradients cross)

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


# ---- generated inputs --------------------------------------------------------------------------------------------


def random_image(seed: int, size=(40, 30)):
    """A PIL image of uniform noise, `size` = (height, width)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def random_clip(seed: int, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    """A mono float32 clip of quiet Gaussian noise."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32)


def pairs_dataset(n: int = 16, seed: int = 0):
    """A `datasets.Dataset` of `n` (audio, image) pairs where the tone's pitch follows the image's colour: something
    to align. Columns: "id", "audio" (1 s at 16 kHz), "image" (32 x 32)."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    t = np.arange(16000) / 16000
    for i in range(n):
        level = rng.uniform()
        tone = 0.3 * np.sin(2 * np.pi * (200 + 1800 * level) * t) + 0.01 * rng.standard_normal(len(t))
        colour = np.array([255 * level, 80, 255 * (1 - level)], dtype=np.uint8)
        rows.append({"id": f"clip{i}", "audio": {"array": tone.astype(np.float32), "sampling_rate": 16000},
                     "image": Image.fromarray(np.tile(colour, (32, 32, 1)))})
    features = datasets.Features({
        "id": datasets.Value("string"),
        "audio": {"array": datasets.List(datasets.Value("float32")), "sampling_rate": datasets.Value("int32")},
        "image": datasets.Image(),
    })
    return datasets.Dataset.from_list(rows, features=features)


# ---- helpers for tests -------------------------------------------------------------------------------------------


class StopAfterStep(TrainerCallback):
    """Stops training at the end of global step `step`, as if the run were killed there."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


BLOCK_DALI_HF = textwrap.dedent(
    """
    import importlib.abc
    import sys


    class _BlockDaliHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "dali_hf" or name.startswith("dali_hf."):
                raise ModuleNotFoundError(f"blocked: {name}")


    sys.meta_path.insert(0, _BlockDaliHf())
    """
)


def run_without_dali_hf(script: str, *args, tmp_path) -> subprocess.CompletedProcess:
    """Run `script` (with `args` as sys.argv[1:]) in a fresh offline Python where dali_hf cannot be imported, as on a
    machine without the package; `tmp_path` is its working folder and Hugging Face cache."""
    path = tmp_path / "without_dali_hf.py"
    path.write_text(BLOCK_DALI_HF + textwrap.dedent(script))
    return subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True, cwd=tmp_path,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")})
